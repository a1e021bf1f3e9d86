//! Configuration: one serde struct, resolved once into a validated value.
//!
//! [`IdGuardConfig`] mirrors the `idguard.toml` file; [`IdGuardConfig::resolve`] checks every
//! key at once and is the only way to obtain a [`ResolvedConfig`]. There is no switch that
//! turns off signature, issuer or audience checks.
//!
//! ```toml
//! [token]
//! tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"   # or "organizations"
//! client_id = "8c1a5e6f-0000-4000-8000-000000000001"
//! resource = "https://mcp.contoso.com/mcp"
//! ```
//!
//! Each section is checked by its owner and this module only composes them: `[token]` in
//! `crate::token`, `[server]` in `server`, `[mcp]` in `crate::mcp`, `[obo]` in `crate::obo`,
//! `[oauth]` in `crate::oauth`, `[upstream]` in `crate::gateway`, `[store]` in `crate::store`. Reading the file and the `IDGUARD_*` environment (unknown
//! keys, type errors, "did you mean") is `load`; what the `idguard` binary checks on top
//! (`check_binary`) is `binary`. The sections' raw and checked types live with their owners,
//! which do not come back here for them.

#[cfg(feature = "internals")]
mod binary;
mod load;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::entra::TenantMode;
use crate::error::{ConfigError, ConfigProblem};
use crate::mcp::config::McpConfig;
use crate::oauth::config::{OAuthConfig, OAuthContext, OAuthSettings};
use crate::obo::OboSettings;
use crate::obo::config::OboConfig;
use crate::store::{StoreConfig, StoreSettings};
use crate::token::config::{AuthSettings, KeySettings, TokenConfig};

#[cfg(feature = "internals")]
pub use binary::{Checked, Overrides, check_binary};
#[cfg(feature = "internals")]
pub use load::{Origins, edit_distance};
pub use server::ServerConfig;
#[cfg(feature = "internals")]
pub use server::{IpRange, ServerSettings};

/// The whole configuration, as written in `idguard.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdGuardConfig {
    /// Inbound token validation (`[token]`).
    #[serde(default)]
    pub token: TokenConfig,
    /// The `idguard` binary: listen address, upstream, policies (`[server]`).
    #[serde(default)]
    pub server: ServerConfig,
    /// MCP interception (`[mcp]`).
    #[serde(default)]
    pub mcp: McpConfig,
    /// On-behalf-of calls to downstream APIs (`[obo]`); off when absent.
    #[serde(default)]
    pub obo: Option<OboConfig>,
    /// The OAuth proxy for MCP clients (`[oauth]`); off when absent.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
    /// The gateway's upstream: what it receives to know who is calling (`[upstream]`), or
    /// several upstreams behind one endpoint (`[[upstream]]` entries).
    #[serde(default)]
    pub upstream: crate::gateway::Upstreams,
    /// The Redis server replicas share (`[store]`); in-memory stores when absent.
    #[serde(default)]
    pub store: Option<StoreConfig>,
}

/// A configuration that passed every check. Built only by [`IdGuardConfig::resolve`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ResolvedConfig {
    pub(crate) authority: String,
    pub(crate) tenant: TenantMode,
    pub(crate) client_id: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) accept_v1: bool,
    pub(crate) leeway: Duration,
    pub(crate) required_scopes: Vec<String>,
    pub(crate) required_roles: Vec<String>,
    pub(crate) resource: String,
    pub(crate) identifier_uri: String,
    pub(crate) jwks_refresh_interval: Duration,
    pub(crate) jwks_min_refresh_interval: Duration,
    pub(crate) cache_capacity: u64,
    pub(crate) jwks_cache_file: Option<PathBuf>,
    pub(crate) obo: Option<OboSettings>,
    pub(crate) oauth: Option<OAuthSettings>,
    pub(crate) store: Option<StoreSettings>,
}

impl ResolvedConfig {
    /// The authority host URL (no trailing slash).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Which tenants are accepted.
    pub fn tenant(&self) -> &TenantMode {
        &self.tenant
    }

    /// The API's application (client) id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The canonical URL of the protected resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The Application ID URI used to qualify scopes.
    pub fn identifier_uri(&self) -> &str {
        &self.identifier_uri
    }

    /// What loading the signing keys needs.
    pub(crate) fn key_settings(&self) -> KeySettings {
        KeySettings {
            authority: self.authority.clone(),
            tenant: self.tenant.clone(),
            accept_v1: self.accept_v1,
            jwks_cache_file: self.jwks_cache_file.clone(),
            jwks_min_refresh_interval: self.jwks_min_refresh_interval,
        }
    }

    /// What authenticating requests needs.
    pub(crate) fn auth_settings(&self) -> AuthSettings {
        AuthSettings {
            scope: self.advertised_scopes().join(" "),
            cache_capacity: self.cache_capacity,
            required_scopes: self.required_scopes.clone(),
            required_roles: self.required_roles.clone(),
            leeway: self.leeway,
        }
    }

    /// The scopes clients are told to request, fully qualified with the identifier URI
    /// (`api://…/mcp.tools`): the protected-resource metadata's `scopes_supported` and the
    /// challenges' `scope`. `token.required_scopes`; without them the OAuth proxy's
    /// `oauth.scopes`; without either [`DEFAULT_SCOPE`], the scope `idguard entra
    /// manifest` exposes. A client that asks Entra for no scope of this API gets a token
    /// for another one.
    pub(crate) fn advertised_scopes(&self) -> Vec<String> {
        let short: Vec<&str> = if !self.required_scopes.is_empty() {
            self.required_scopes.iter().map(String::as_str).collect()
        } else if let Some(o) = self.oauth.as_ref().filter(|o| !o.scopes.is_empty()) {
            o.scopes.iter().map(String::as_str).collect()
        } else {
            vec![DEFAULT_SCOPE]
        };
        short
            .into_iter()
            .map(|s| format!("{}/{s}", self.identifier_uri))
            .collect()
    }
}

/// The delegated scope `idguard entra manifest` exposes when `token.required_scopes` names
/// none, and that metadata and challenges then advertise.
pub const DEFAULT_SCOPE: &str = "mcp.tools";

impl IdGuardConfig {
    /// Checks every key and returns the validated configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every problem, each naming its key (`token.client_id`, …).
    pub fn resolve(self) -> Result<ResolvedConfig, ConfigError> {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        self.server.check(&mut problems);
        self.mcp.check(&mut problems);
        self.upstream.check(&mut problems);
        let t = self.token.check(&mut problems);
        let oauth_keys = self.oauth.as_ref().map(|o| o.keys.clone());
        let oauth = self.oauth.map(|o| {
            o.check(
                &OAuthContext {
                    resource: &t.resource,
                    has_credential: self.obo.is_some(),
                    required_scopes: &t.required_scopes,
                    obo_apis: self.obo.as_ref().map(|o| &o.apis),
                },
                &mut problems,
            )
        });
        let obo = self.obo.map(|o| o.check(&mut problems));
        let mut store = self.store.and_then(|s| s.check(&mut problems));
        if let Some(store) = &mut store {
            // The on-behalf-of tokens replicas share are sealed under `store.keys`, by
            // default the OAuth proxy's keys; without either they would be shared in clear.
            if store.keys.is_empty() {
                store.keys = oauth_keys.unwrap_or_default();
            }
            if store.keys.is_empty() && obo.as_ref().is_some_and(Option::is_some) {
                problems.push(ConfigProblem::new(
                    "store.keys",
                    "required with `[obo]` and no `[oauth]`: secrets of 32 bytes or more that seal the on-behalf-of tokens replicas share (e.g. `openssl rand -base64 48`)",
                ));
            }
        }
        match t.tenant {
            Some(tenant) if problems.is_empty() => Ok(ResolvedConfig {
                authority: t.authority,
                tenant,
                client_id: t.client_id.to_ascii_lowercase(),
                audiences: t.audiences,
                accept_v1: t.accept_v1,
                leeway: t.leeway,
                required_scopes: t.required_scopes,
                required_roles: t.required_roles,
                resource: t.resource.trim_end_matches('/').to_owned(),
                identifier_uri: t.identifier_uri,
                jwks_refresh_interval: t.jwks_refresh_interval,
                jwks_min_refresh_interval: t.jwks_min_refresh_interval,
                cache_capacity: t.cache_capacity,
                jwks_cache_file: t.jwks_cache_file,
                obo: obo.flatten(),
                oauth: oauth.flatten(),
                store,
            }),
            _ => Err(ConfigError::from_problems(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setting::{Secret, is_placeholder};
    use crate::{DEFAULT_AUTHORITY, DEFAULT_LEEWAY};
    use testing::valid;

    #[test]
    fn defaults_fill_in() {
        let r = IdGuardConfig {
            token: valid(),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(r.audiences, ["8c1a5e6f-0000-4000-8000-000000000001"]);
        assert_eq!(
            r.identifier_uri,
            "api://8c1a5e6f-0000-4000-8000-000000000001"
        );
        assert_eq!(r.leeway, DEFAULT_LEEWAY);
        assert_eq!(r.authority, DEFAULT_AUTHORITY);
        assert!(matches!(r.tenant, TenantMode::Single(_)));
    }

    #[test]
    #[cfg(feature = "redis")]
    fn shared_obo_tokens_are_sealed_under_store_keys_or_oauth_keys() {
        let store = || StoreConfig {
            redis_url: Some("redis://127.0.0.1:6379/0".into()),
            ..StoreConfig::default()
        };
        let obo = || OboConfig {
            client_secret: Some(Secret::new("a-client-secret")),
            ..OboConfig::default()
        };
        // `[obo]` and `[store]` without `[oauth]`: `store.keys` is required.
        let err = IdGuardConfig {
            token: valid(),
            obo: Some(obo()),
            store: Some(store()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.problems().iter().any(|p| p.key() == "store.keys"),
            "{err}"
        );
        // Short keys are named, never quoted.
        let err = IdGuardConfig {
            token: valid(),
            obo: Some(obo()),
            store: Some(StoreConfig {
                keys: vec![Secret::new("short-store-key")],
                ..store()
            }),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("store.keys"), "{err}");
        assert!(!err.to_string().contains("short-store-key"), "{err}");
        // `oauth.keys` is the default.
        let oauth_key = "k3Jx9Qv0P1u5e8ZbN2m7R4t6Y0w3S5d8F1h4J7l0Z2x5C8v1B4n7M0q3W6e9R2t5";
        let resolved = IdGuardConfig {
            token: valid(),
            obo: Some(obo()),
            oauth: Some(OAuthConfig {
                keys: vec![Secret::new(oauth_key)],
                scopes: Some(vec!["mcp.tools".into()]),
                ..OAuthConfig::default()
            }),
            store: Some(store()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let keys = &resolved.store.unwrap().keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].expose(), oauth_key);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml_like(r#"{"token": {"tenant": "x", "validate_signature": false}}"#);
        assert!(err.contains("validate_signature"), "{err}");
    }

    fn toml_like(json: &str) -> String {
        serde_json::from_str::<IdGuardConfig>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn placeholders_are_not_secrets() {
        for placeholder in [
            "change-me-to-48-random-bytes-from-openssl-rand-base64-48",
            "<at least 32 random bytes, e.g. openssl rand -base64 48>",
            "…at least 32 random bytes…",
        ] {
            assert!(is_placeholder(placeholder), "{placeholder}");
        }
        assert!(!is_placeholder(
            "k3Jx9Qv0P1u5e8ZbN2m7R4t6Y0w3S5d8F1h4J7l0Z2x5C8v1B4n7M0q3W6e9R2t5"
        ));
        let err = IdGuardConfig {
            token: valid(),
            mcp: McpConfig {
                session_keys: vec![Secret::new("change-me-change-me-change-me-change-me")],
                ..McpConfig::default()
            },
            obo: Some(OboConfig {
                client_secret: Some(Secret::new("change-me")),
                ..OboConfig::default()
            }),
            oauth: Some(OAuthConfig {
                keys: vec![Secret::new(
                    "change-me-to-48-random-bytes-from-openssl-rand-base64-48",
                )],
                scopes: Some(vec!["mcp.tools".into()]),
                ..OAuthConfig::default()
            }),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(
            keys,
            ["mcp.session_keys", "oauth.keys", "obo.client_secret"],
            "{err}"
        );
        assert!(!err.to_string().contains("change-me-to"), "{err}");
    }

    #[test]
    fn server_and_mcp_keys_serve_reads_are_checked_by_resolve() {
        let err = IdGuardConfig {
            token: valid(),
            server: ServerConfig {
                listen: Some("8400".into()),
                mcp_path: Some("mcp".into()),
                upstream: Some("127.0.0.1:9000/mcp".into()),
                ..ServerConfig::default()
            },
            mcp: McpConfig {
                denials: Some("loud".into()),
                unknown_methods: Some("ignore".into()),
                session_keys: vec![Secret::new("short")],
                allowed_hosts: vec!["https://mcp.contoso.com/".into()],
                ..McpConfig::default()
            },
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.mcp_path",
                "server.upstream",
                "mcp.denials",
                "mcp.unknown_methods",
                "mcp.session_keys",
                "mcp.allowed_hosts"
            ],
            "{err}"
        );
        assert!(!err.to_string().contains("`short`"), "{err}");
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fixtures the sections' tests share.

    use super::TokenConfig;

    /// A `[token]` that resolves.
    pub(crate) fn valid() -> TokenConfig {
        TokenConfig {
            tenant: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            client_id: Some("8c1a5e6f-0000-4000-8000-000000000001".into()),
            resource: Some("https://mcp.contoso.com/mcp".into()),
            ..TokenConfig::default()
        }
    }

    /// Environment variables from pairs.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}
