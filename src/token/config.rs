//! `[token]`: how inbound Entra access tokens are validated, checked into [`TokenSettings`],
//! and what the key store ([`KeySettings`]) and the authenticator ([`AuthSettings`]) take of it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::entra::{DEFAULT_AUTHORITY, TenantMode, is_guid, is_loopback_url};
use crate::error::ConfigProblem;
use crate::setting::parse_duration;

/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// How often signing keys are re-fetched in the background (Microsoft suggests ≤ 24 h).
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Minimum gap between two key fetches caused by unknown `kid`s (Microsoft's default).
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How many validated tokens are cached. Each entry costs about 5 KiB of resident memory
/// in practice (`benches/load/README.md`); a miss costs one RS256 verification (~25 µs).
pub const DEFAULT_TOKEN_CACHE_CAPACITY: u64 = 10_000;

/// `[token]`: how inbound Entra access tokens are validated.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Authority host, default [`DEFAULT_AUTHORITY`]. Sovereign clouds and the dev emulator
    /// set their own. Must be https, except on loopback.
    pub authority: Option<String>,
    /// A tenant id (single tenant) or `organizations` (multi-tenant). Required.
    pub tenant: Option<String>,
    /// With `tenant = "organizations"`: the tenant ids accepted (empty: any organization).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// The application (client) id of this API's app registration. Required.
    pub client_id: Option<String>,
    /// Accepted `aud` values; default: the client id (what v2 tokens carry).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept v1.0 tokens too (default false).
    #[serde(default)]
    pub accept_v1: bool,
    /// Clock skew on `exp`/`nbf`, e.g. `"60s"`; default [`DEFAULT_LEEWAY`].
    pub leeway: Option<String>,
    /// Any one of these delegated scopes (short names, as in `scp`) is required.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Any one of these app roles is required (with `required_scopes`: either suffices).
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// The canonical URL of the protected resource, e.g. `https://mcp.contoso.com/mcp`.
    /// Required: it is the `resource` of the protected-resource metadata.
    pub resource: Option<String>,
    /// The Application ID URI that prefixes scopes in challenges and metadata
    /// (default `api://{client_id}`).
    pub identifier_uri: Option<String>,
    /// Background key refresh period, default [`DEFAULT_JWKS_REFRESH_INTERVAL`].
    pub jwks_refresh_interval: Option<String>,
    /// Minimum gap between unknown-`kid` refreshes, default
    /// [`DEFAULT_JWKS_MIN_REFRESH_INTERVAL`].
    pub jwks_min_refresh_interval: Option<String>,
    /// Validated-token cache size, default [`DEFAULT_TOKEN_CACHE_CAPACITY`]; `0` turns the
    /// cache off (every request then verifies a signature).
    pub cache_capacity: Option<u64>,
    /// A file where the last signing keys fetched are kept (with the discovery results
    /// they belong to). A start that cannot reach the identity provider starts from it
    /// instead of failing. Default: none. Public keys only, but whoever can write it can
    /// add keys: give it the permissions of the configuration file.
    pub jwks_cache_file: Option<PathBuf>,
}

/// `[token]`, checked: what [`ResolvedConfig`](crate::ResolvedConfig) carries of it.
/// `client_id` and `resource` are as written (`resolve` lowercases and trims them once the
/// other sections have read them); `tenant` is `None` when it is missing or wrong.
#[derive(Debug)]
pub(crate) struct TokenSettings {
    pub(crate) authority: String,
    pub(crate) tenant: Option<TenantMode>,
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
}

/// What loading the signing keys needs of `[token]`.
#[derive(Clone, Debug)]
pub(crate) struct KeySettings {
    /// `token.authority`.
    pub(crate) authority: String,
    /// `token.tenant`: the discovery documents' tenant segment.
    pub(crate) tenant: TenantMode,
    /// `token.accept_v1`: the v1.0 issuer is discovered too.
    pub(crate) accept_v1: bool,
    /// `token.jwks_cache_file`.
    pub(crate) jwks_cache_file: Option<PathBuf>,
    /// `token.jwks_min_refresh_interval`.
    pub(crate) jwks_min_refresh_interval: Duration,
}

/// What authentication needs of `[token]` (and the scopes challenges advertise).
#[derive(Clone, Debug)]
pub(crate) struct AuthSettings {
    /// The scopes clients are told to request, space-separated.
    pub(crate) scope: String,
    /// `token.cache_capacity`; `0`: no cache.
    pub(crate) cache_capacity: u64,
    /// `token.required_scopes`.
    pub(crate) required_scopes: Vec<String>,
    /// `token.required_roles`.
    pub(crate) required_roles: Vec<String>,
    /// `token.leeway`.
    pub(crate) leeway: Duration,
}

impl TokenConfig {
    /// Checks `[token]`, adding each problem under its key.
    pub(crate) fn check(self, problems: &mut Vec<ConfigProblem>) -> TokenSettings {
        let t = self;
        let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));

        let authority = t
            .authority
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(authority.starts_with("https://") || is_loopback_url(&authority)) {
            problem(
                "token.authority",
                format!("`{authority}` must be an https URL (plain http only on loopback)"),
            );
        }

        let tenant = match t.tenant.as_deref() {
            None | Some("") => {
                problem(
                    "token.tenant",
                    "required: a tenant id, or `organizations` for a multi-tenant API".into(),
                );
                None
            }
            Some("organizations") => {
                let mut ok = true;
                for tid in &t.allowed_tenants {
                    if !is_guid(tid) {
                        problem(
                            "token.allowed_tenants",
                            format!("`{tid}` is not a tenant id (a GUID)"),
                        );
                        ok = false;
                    }
                }
                match (ok, t.allowed_tenants.is_empty()) {
                    (false, _) => None,
                    (true, true) => Some(TenantMode::AnyOrganization),
                    (true, false) => Some(TenantMode::AllowList(
                        t.allowed_tenants
                            .iter()
                            .map(|s| s.to_ascii_lowercase())
                            .collect(),
                    )),
                }
            }
            Some("common" | "consumers") => {
                problem(
                    "token.tenant",
                    "personal Microsoft accounts are not supported: use a tenant id or `organizations`"
                        .into(),
                );
                None
            }
            Some(tid) if is_guid(tid) => {
                if !t.allowed_tenants.is_empty() {
                    problem(
                        "token.allowed_tenants",
                        "only with `tenant = \"organizations\"`".into(),
                    );
                }
                Some(TenantMode::Single(tid.to_ascii_lowercase()))
            }
            Some(other) => {
                problem(
                    "token.tenant",
                    format!("`{other}` is not a tenant id (a GUID) nor `organizations`"),
                );
                None
            }
        };

        let client_id = t.client_id.unwrap_or_default();
        if client_id.is_empty() {
            problem(
                "token.client_id",
                "required: the application (client) id of this API".into(),
            );
        } else if !is_guid(&client_id) {
            problem(
                "token.client_id",
                format!("`{client_id}` is not an application id (a GUID)"),
            );
        }

        let audiences = if t.audiences.is_empty() {
            vec![client_id.clone()]
        } else {
            if t.audiences.iter().any(String::is_empty) {
                problem("token.audiences", "an audience is empty".into());
            }
            t.audiences
        };

        let mut duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|msg| {
                problem(key, msg);
                default
            }),
        };
        let leeway = duration("token.leeway", t.leeway, DEFAULT_LEEWAY);
        let jwks_refresh_interval = duration(
            "token.jwks_refresh_interval",
            t.jwks_refresh_interval,
            DEFAULT_JWKS_REFRESH_INTERVAL,
        );
        let jwks_min_refresh_interval = duration(
            "token.jwks_min_refresh_interval",
            t.jwks_min_refresh_interval,
            DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        );
        if leeway > Duration::from_secs(600) {
            problem("token.leeway", "must be at most 10m".into());
        }
        if jwks_refresh_interval < Duration::from_secs(60) {
            problem("token.jwks_refresh_interval", "must be at least 1m".into());
        }

        let resource = t.resource.unwrap_or_default();
        if resource.is_empty() {
            problem(
                "token.resource",
                "required: the canonical URL clients use, e.g. `https://mcp.contoso.com/mcp`"
                    .into(),
            );
        } else if !(resource.starts_with("https://") || is_loopback_url(&resource))
            || resource.contains('#')
        {
            problem(
                "token.resource",
                format!(
                    "`{resource}` must be an https URL without fragment (http only on loopback)"
                ),
            );
        }

        let identifier_uri = t
            .identifier_uri
            .unwrap_or_else(|| format!("api://{client_id}"))
            .trim_end_matches('/')
            .to_owned();
        for (key, list) in [
            ("token.required_scopes", &t.required_scopes),
            ("token.required_roles", &t.required_roles),
        ] {
            if list
                .iter()
                .any(|s| s.is_empty() || s.contains([' ', '"', '\\']))
            {
                problem(
                    key,
                    "values must be non-empty and contain no spaces or quotes".into(),
                );
            }
        }
        // A scope as the token carries it (`scp` holds short names): a qualified one would
        // never match, and challenges would qualify it twice.
        for s in &t.required_scopes {
            if let Some((_, short)) = s.rsplit_once('/').filter(|_| s.contains(['/', ':'])) {
                problem(
                    "token.required_scopes",
                    format!(
                        "`{s}`: write the scope's short name as tokens carry it in `scp` (`{short}`); challenges and metadata qualify it with `token.identifier_uri`"
                    ),
                );
            }
        }
        let cache_capacity = t.cache_capacity.unwrap_or(DEFAULT_TOKEN_CACHE_CAPACITY);
        TokenSettings {
            authority,
            tenant,
            client_id,
            audiences,
            accept_v1: t.accept_v1,
            leeway,
            required_scopes: t.required_scopes,
            required_roles: t.required_roles,
            resource,
            identifier_uri,
            jwks_refresh_interval,
            jwks_min_refresh_interval,
            cache_capacity,
            jwks_cache_file: t.jwks_cache_file.filter(|p| !p.as_os_str().is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdGuardConfig;
    use crate::config::testing::valid;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let cfg = TokenConfig {
            authority: Some("http://login.example.com".into()),
            tenant: Some("contoso".into()),
            client_id: None,
            resource: None,
            leeway: Some("ten".into()),
            ..TokenConfig::default()
        };
        let err = IdGuardConfig {
            token: cfg,
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            [
                "token.authority",
                "token.tenant",
                "token.client_id",
                "token.leeway",
                "token.resource"
            ]
        );
        assert!(err.to_string().contains("`token.tenant`"));
    }

    #[test]
    fn multi_tenant_allow_list() {
        let mut cfg = valid();
        cfg.tenant = Some("organizations".into());
        cfg.allowed_tenants = vec!["72F988BF-86F1-41AF-91AB-2D7CD011DB47".into()];
        let r = IdGuardConfig {
            token: cfg,
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            r.tenant,
            TenantMode::AllowList(vec!["72f988bf-86f1-41af-91ab-2d7cd011db47".into()])
        );
    }

    #[test]
    fn scopes_are_short_names_and_the_default_is_advertised() {
        let err = IdGuardConfig {
            token: TokenConfig {
                required_scopes: vec![
                    "api://8c1a5e6f-0000-4000-8000-000000000001/mcp.tools".into(),
                ],
                ..valid()
            },
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(err.problems()[0].key(), "token.required_scopes");
        assert!(
            err.problems()[0].message().contains("(`mcp.tools`)"),
            "{err}"
        );
        let r = IdGuardConfig {
            token: valid(),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            r.advertised_scopes(),
            ["api://8c1a5e6f-0000-4000-8000-000000000001/mcp.tools"]
        );
    }
}
