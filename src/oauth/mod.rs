//! OAuth endpoints served next to the protected resource
//! ([`IdGuard::oauth_router`](crate::IdGuard::oauth_router)):
//!
//! - RFC 9728 protected-resource metadata, always;
//! - with `[oauth]`, the **OAuth proxy**: an authorization server in front of Entra that
//!   gives MCP clients what Entra lacks — dynamic client registration (RFC 7591) and
//!   client-id metadata documents — with per-client consent, PKCE on both legs, exact
//!   redirect-URI matching, single-use state and codes, refresh-token rotation with reuse
//!   detection, and RFC 9207 `iss` in authorization responses. Clients get idguard-issued
//!   access tokens (audience: the MCP resource); the Entra tokens stay server-side, sealed,
//!   and on-behalf-of uses them as the caller's assertion.
//!
//! The proxy keeps short-lived state in an [`OAuthStore`]; the default [`MemoryStore`]
//! suits one replica. Registrations need no store: a client id carries its registration,
//! sealed with the proxy key.

mod cimd;
mod client;
pub(crate) mod config;
pub(crate) mod html;
pub(crate) mod keys;
pub(crate) mod metadata;
pub(crate) mod proxy;
#[cfg(feature = "redis")]
mod redis;
mod store;

pub use cimd::DEFAULT_CIMD_CACHE_CAPACITY;
pub(crate) use keys::{MIN_KEY_BYTES, ProxyKeys};
pub use metadata::ProtectedResourceMetadata;
pub use proxy::OAuthStats;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;
pub use store::{
    DEFAULT_MEMORY_STORE_BYTES, MemoryStore, OAuthStore, RecordKind, StoreError, StoreFuture,
};
