#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod entra;
mod error;
mod guard;
mod principal;
mod token;

pub mod gateway;
pub mod mcp;
pub mod oauth;
pub mod obo;
pub mod policy;

#[cfg(feature = "dev")]
#[cfg_attr(docsrs, doc(cfg(feature = "dev")))]
pub mod dev;

#[cfg(feature = "rmcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "rmcp")))]
pub mod demo;

#[cfg(all(feature = "dev", feature = "rmcp"))]
#[doc(hidden)]
pub mod cli;

pub use config::{
    DEFAULT_ACCESS_TOKEN_LIFETIME, DEFAULT_AUTHORITY, DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
    DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_LEEWAY, DEFAULT_REFRESH_TOKEN_LIFETIME,
    DEFAULT_TOKEN_CACHE_CAPACITY, IdGuardConfig, McpConfig, OAuthConfig, OboConfig, ResolvedConfig,
    ServerConfig, TokenConfig,
};
pub use entra::TenantMode;
pub use error::{ConfigError, ConfigProblem, Rejection, RejectionKind, StartupError, TokenError};
pub use guard::{IdGuard, IdGuardBuilder};
pub use principal::{MissingPrincipal, Principal, TokenVersion};
pub use token::layer::{ValidateToken, ValidateTokenLayer};
pub use token::{MAX_TOKEN_BYTES, TokenStats};

/// Response futures of the layers.
pub mod future {
    pub use crate::token::layer::ResponseFuture as ValidateTokenFuture;
}
