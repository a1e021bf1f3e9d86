#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Items the `internals` module re-exports for idguard's own crates are `pub` in private
// modules; without the feature nothing reaches them.
#![cfg_attr(
    not(feature = "internals"),
    allow(
        unreachable_pub,
        reason = "reachable through `internals` when it is on"
    )
)]

mod config;
mod entra;
mod error;
mod guard;
mod principal;
mod seal;
mod setting;
mod store;
mod token;

pub mod gateway;
pub mod mcp;
pub mod oauth;
pub mod obo;
pub mod policy;

#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;

pub use config::{IdGuardConfig, ResolvedConfig, ServerConfig};
pub use entra::{DEFAULT_AUTHORITY, TenantMode};
pub use error::{ConfigError, ConfigProblem, Rejection, RejectionKind, StartupError, TokenError};
pub use guard::{IdGuard, IdGuardBuilder, StoreStatus};
pub use mcp::config::McpConfig;
pub use oauth::config::{
    DEFAULT_ACCESS_TOKEN_LIFETIME, DEFAULT_REFRESH_TOKEN_LIFETIME, OAuthConfig,
};
pub use obo::config::OboConfig;
pub use principal::{MissingPrincipal, Principal, TokenVersion};
pub use store::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX,
    DEFAULT_SESSION_CACHE_TTL, StoreConfig,
};
pub use token::config::{
    DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_LEEWAY,
    DEFAULT_TOKEN_CACHE_CAPACITY, TokenConfig,
};
pub use token::layer::{ValidateToken, ValidateTokenLayer};
pub use token::{MAX_TOKEN_BYTES, TokenStats};

/// Response futures of the layers.
pub mod future {
    pub use crate::token::layer::ResponseFuture as ValidateTokenFuture;
}
