//! What idguard's own crates use beyond the public API: the binary (`idguard-cli`) and the
//! dev emulator (`idguard-dev`). Behind the `internals` feature, hidden from the docs, with
//! no stability promise: library users never need it.

pub use crate::config::{
    Checked, DEFAULT_SCOPE, IpRange, Origins, Overrides, ServerSettings, check_binary,
    edit_distance,
};
pub use crate::entra::{
    admin_consent_endpoint, discovery_url, is_guid, is_loopback_url, without_url,
};
pub use crate::guard::resource_metadata_url;
pub use crate::mcp::config::McpSettings;
pub use crate::oauth::html::escape;
pub use crate::oauth::keys::random_token;
pub use crate::oauth::metadata::as_reached;
pub use crate::oauth::proxy::ClientAddress;
pub use crate::token::jwks::{KeySource, KeyStatus};

/// The resource (Application ID URI) that `scopes` belong to, as Entra reads them.
pub fn resource_of(scopes: &[String]) -> String {
    crate::obo::resource_of(scopes)
}

/// The signing keys' source, age and fetch failures, for `/healthz` and `/metrics`.
pub fn key_status(guard: &crate::IdGuard) -> KeyStatus {
    guard.key_status()
}

/// A rejection of `kind` without a challenge.
pub fn rejection(kind: crate::RejectionKind) -> crate::Rejection {
    crate::Rejection::new(kind, None)
}

/// The tenant segment of discovery URLs: the tenant id, `organizations` or `common`.
pub fn discovery_segment(tenant: &crate::TenantMode) -> &str {
    tenant.discovery_segment()
}

/// The secret's value.
pub fn expose(secret: &crate::obo::Secret) -> &str {
    secret.expose()
}
