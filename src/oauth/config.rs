//! `[oauth]`: the OAuth proxy's settings, checked into [`OAuthSettings`] (the proxy's keys
//! derived from `oauth.keys` included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_CIMD_CACHE_CAPACITY, DEFAULT_MEMORY_STORE_BYTES, MIN_KEY_BYTES, ProxyKeys};
use crate::entra::is_loopback_url;
use crate::error::ConfigProblem;
use crate::setting::{Secret, capacity, check_secrets, parse_duration};

/// `[oauth]`: the OAuth proxy that lets MCP clients register (dynamic client registration,
/// or a client-id metadata document) and sign in through Entra, which offers neither.
///
/// It uses the app's credential from `[obo]` to redeem codes at Entra.
///
/// ```toml
/// [oauth]
/// keys = ["…at least 32 random bytes…"]   # first seals and signs; others still open
/// access_token_lifetime = "15m"
/// consent_scopes = ["https://graph.microsoft.com/User.Read"]
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The proxy's issuer URL, default: the origin of `token.resource`.
    pub issuer: Option<String>,
    /// The API's delegated scopes clients sign in for (short names, qualified with
    /// `token.identifier_uri` towards Entra), default `token.required_scopes`.
    pub scopes: Option<Vec<String>>,
    /// Secrets (at least 32 bytes each) the proxy derives its keys from. The first seals
    /// and signs; the others still open and verify, for rotation. Required.
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// Lifetime of idguard-issued access tokens, default
    /// [`DEFAULT_ACCESS_TOKEN_LIFETIME`] (never beyond the Entra token behind them).
    pub access_token_lifetime: Option<String>,
    /// Lifetime of refresh tokens and sessions, default [`DEFAULT_REFRESH_TOKEN_LIFETIME`].
    pub refresh_token_lifetime: Option<String>,
    /// Downstream scopes (e.g. Graph's) requested when the user signs in, so consent for
    /// on-behalf-of is given up front. Default: the non-`.default` scopes of `[obo.apis]`.
    pub consent_scopes: Option<Vec<String>>,
    /// Accept client-id metadata documents (URL-shaped client ids), default true.
    pub cimd: Option<bool>,
    /// Development only: let metadata documents be fetched from loopback addresses, also
    /// over plain http. Private, link-local and metadata addresses stay refused.
    #[serde(default)]
    pub cimd_allow_loopback: bool,
    /// Hosts that `https` redirect URIs may name (exact host names); empty: any host.
    /// Loopback redirect URIs are always allowed: they reach only the user's machine.
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
    /// Dynamic registrations accepted per minute (all clients together), default 60.
    pub registration_rate_limit: Option<u32>,
    /// Bytes the in-memory state store may hold, default
    /// [`DEFAULT_MEMORY_STORE_BYTES`](crate::oauth::DEFAULT_MEMORY_STORE_BYTES).
    pub store_max_bytes: Option<u64>,
    /// Client-id metadata documents cached (and as many recent fetch failures), default
    /// [`DEFAULT_CIMD_CACHE_CAPACITY`](crate::oauth::DEFAULT_CIMD_CACHE_CAPACITY).
    pub cimd_cache_capacity: Option<u64>,
}

/// Default lifetime of idguard-issued access tokens.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of proxy refresh tokens (and of the session behind them).
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// `[oauth]`, checked.
#[derive(Clone, Debug)]
pub(crate) struct OAuthSettings {
    pub(crate) issuer: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) keys: Arc<ProxyKeys>,
    pub(crate) access_token_lifetime: Duration,
    pub(crate) refresh_token_lifetime: Duration,
    pub(crate) consent_scopes: Vec<String>,
    pub(crate) cimd: bool,
    pub(crate) cimd_allow_loopback: bool,
    pub(crate) allowed_redirect_hosts: Vec<String>,
    pub(crate) registration_rate_limit: u32,
    pub(crate) store_max_bytes: u64,
    pub(crate) cimd_cache_capacity: u64,
}

/// What `[oauth]` needs from the rest of the configuration.
pub(crate) struct OAuthContext<'a> {
    /// `token.resource`: the issuer's default origin.
    pub(crate) resource: &'a str,
    /// Whether `[obo]` is there: its credential redeems codes at Entra.
    pub(crate) has_credential: bool,
    /// `token.required_scopes`: the default of `oauth.scopes`.
    pub(crate) required_scopes: &'a [String],
    /// `obo.apis`: the default of `oauth.consent_scopes`.
    pub(crate) obo_apis: Option<&'a BTreeMap<String, Vec<String>>>,
}

impl OAuthConfig {
    /// Checks `[oauth]`, adding each problem under its key.
    pub(crate) fn check(
        self,
        cx: &OAuthContext<'_>,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<OAuthSettings> {
        let o = self;
        let before = problems.len();
        let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
        if !cx.has_credential {
            problem(
            "oauth",
            "needs the app's client credential to redeem codes at Entra: add `[obo]` with `client_secret`, `certificate_file` + `private_key_file`, or `federated_token_file`".into(),
        );
        }
        let scopes = o.scopes.unwrap_or_else(|| cx.required_scopes.to_vec());
        if scopes.is_empty() {
            problem(
            "oauth.scopes",
            "the API's scopes clients sign in for are required (default: `token.required_scopes`), e.g. `[\"mcp.tools\"]`".into(),
        );
        } else if scopes
            .iter()
            .any(|s| s.is_empty() || s.contains([' ', '"', '/', '\\']))
        {
            problem(
                "oauth.scopes",
                "short scope names (no spaces, quotes or slashes)".into(),
            );
        }
        let issuer = o
            .issuer
            .unwrap_or_else(|| {
                url::Url::parse(cx.resource)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_default()
            })
            .trim_end_matches('/')
            .to_owned();
        // The proxy's routes live at the root, so the issuer is an origin: no path.
        let issuer_ok = url::Url::parse(&issuer).is_ok_and(|u| {
            u.query().is_none()
                && u.fragment().is_none()
                && u.path() == "/"
                && (u.scheme() == "https" || is_loopback_url(&issuer))
        });
        if !issuer_ok {
            problem(
                "oauth.issuer",
                format!(
                    "`{issuer}` must be an https origin, without path, query or fragment (http only on loopback)"
                ),
            );
        }
        if o.cimd_allow_loopback && !is_loopback_url(&issuer) {
            problem(
                "oauth.cimd_allow_loopback",
                "is for development only: allowed when the issuer is on loopback".into(),
            );
        }
        let placeholders = problems.len();
        check_secrets(
            "oauth.keys",
            o.keys.iter().map(Secret::expose),
            MIN_KEY_BYTES,
            problems,
        );
        let bad_keys = problems.len() > placeholders;
        let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
        let keys = if bad_keys {
            None
        } else if o.keys.is_empty() {
            problem(
                "oauth.keys",
                format!(
                    "required: at least one secret of {} or more bytes (e.g. `openssl rand -base64 48`)",
                    MIN_KEY_BYTES
                ),
            );
            None
        } else {
            let secrets: Vec<&[u8]> = o.keys.iter().map(|k| k.expose().as_bytes()).collect();
            let keys = ProxyKeys::new(&secrets);
            if keys.is_none() {
                problem(
                    "oauth.keys",
                    format!("every key must be at least {} bytes", MIN_KEY_BYTES),
                );
            }
            keys
        };
        let mut duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|msg| {
                problem(key, msg);
                default
            }),
        };
        let access = duration(
            "oauth.access_token_lifetime",
            o.access_token_lifetime,
            DEFAULT_ACCESS_TOKEN_LIFETIME,
        );
        let refresh = duration(
            "oauth.refresh_token_lifetime",
            o.refresh_token_lifetime,
            DEFAULT_REFRESH_TOKEN_LIFETIME,
        );
        if access < Duration::from_secs(60) || access > Duration::from_secs(24 * 3600) {
            problem(
                "oauth.access_token_lifetime",
                "must be between 1m and 1d".into(),
            );
        }
        if refresh < access {
            problem(
                "oauth.refresh_token_lifetime",
                "must be at least `access_token_lifetime`".into(),
            );
        }
        let consent_scopes = o.consent_scopes.unwrap_or_else(|| {
            cx.obo_apis
                .into_iter()
                .flat_map(|apis| apis.values().flatten())
                .filter(|s| !s.ends_with("/.default"))
                .filter(|s| !matches!(s.as_str(), "openid" | "profile" | "offline_access"))
                .cloned()
                .collect()
        });
        if consent_scopes
            .iter()
            .any(|s| s.is_empty() || s.contains([' ', '"']))
        {
            problem(
                "oauth.consent_scopes",
                "values must be non-empty and contain no spaces or quotes".into(),
            );
        }
        let registration_rate_limit = o.registration_rate_limit.unwrap_or(60);
        if registration_rate_limit == 0 {
            problem(
                "oauth.registration_rate_limit",
                "must be at least 1 per minute".into(),
            );
        }
        let cimd_cache_capacity = capacity(
            "oauth.cimd_cache_capacity",
            o.cimd_cache_capacity,
            DEFAULT_CIMD_CACHE_CAPACITY,
            problems,
        );
        if problems.len() > before {
            return None;
        }
        Some(OAuthSettings {
            issuer,
            scopes,
            keys: Arc::new(keys?),
            access_token_lifetime: access,
            refresh_token_lifetime: refresh,
            consent_scopes,
            cimd: o.cimd.unwrap_or(true),
            cimd_allow_loopback: o.cimd_allow_loopback,
            allowed_redirect_hosts: o
                .allowed_redirect_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            registration_rate_limit,
            store_max_bytes: o.store_max_bytes.unwrap_or(DEFAULT_MEMORY_STORE_BYTES),
            cimd_cache_capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::valid;
    use crate::error::ConfigProblem;
    use crate::obo::config::OboConfig;
    use crate::{IdGuardConfig, McpConfig, TokenConfig};

    #[test]
    fn oauth_problems_name_their_keys() {
        let err = IdGuardConfig {
            token: valid(),
            oauth: Some(OAuthConfig {
                keys: vec![Secret::new("too short")],
                access_token_lifetime: Some("5s".into()),
                issuer: Some("http://mcp.contoso.com".into()),
                ..OAuthConfig::default()
            }),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        for key in [
            "oauth",
            "oauth.scopes",
            "oauth.issuer",
            "oauth.keys",
            "oauth.access_token_lifetime",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        let ok = IdGuardConfig {
            token: TokenConfig {
                required_scopes: vec!["mcp.tools".into()],
                ..valid()
            },
            obo: Some(OboConfig {
                client_secret: Some(Secret::new("s")),
                apis: BTreeMap::from([(
                    "graph".to_owned(),
                    vec!["https://graph.microsoft.com/User.Read".to_owned()],
                )]),
                ..OboConfig::default()
            }),
            oauth: Some(OAuthConfig {
                keys: vec![Secret::new("k".repeat(32))],
                ..OAuthConfig::default()
            }),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let o = ok.oauth.unwrap();
        assert_eq!(o.issuer, "https://mcp.contoso.com");
        assert_eq!(o.scopes, ["mcp.tools"]);
        assert_eq!(o.consent_scopes, ["https://graph.microsoft.com/User.Read"]);
    }

    #[test]
    fn the_cimd_cache_capacity_is_checked_by_resolve() {
        let resolve = |capacity: Option<u64>| {
            IdGuardConfig {
                token: TokenConfig {
                    required_scopes: vec!["mcp.tools".into()],
                    ..valid()
                },
                obo: Some(OboConfig {
                    client_secret: Some(Secret::new("s")),
                    ..OboConfig::default()
                }),
                oauth: Some(OAuthConfig {
                    keys: vec![Secret::new("k".repeat(32))],
                    cimd_cache_capacity: capacity,
                    ..OAuthConfig::default()
                }),
                ..Default::default()
            }
            .resolve()
        };
        let default = resolve(None).unwrap().oauth.unwrap();
        assert_eq!(
            default.cimd_cache_capacity,
            crate::oauth::DEFAULT_CIMD_CACHE_CAPACITY
        );
        assert_eq!(
            resolve(Some(50))
                .unwrap()
                .oauth
                .unwrap()
                .cimd_cache_capacity,
            50
        );
        let err = resolve(Some(0)).unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(keys, ["oauth.cimd_cache_capacity"], "{err}");
        // `[mcp]` capacities are checked by `resolve` too (so by `idguard config check`).
        let err = IdGuardConfig {
            token: valid(),
            mcp: McpConfig {
                requests_per_session: Some(0),
                ..McpConfig::default()
            },
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(err.problems()[0].key(), "mcp.requests_per_session");
    }
}
