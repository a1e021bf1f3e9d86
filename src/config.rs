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

use std::time::Duration;

use serde::Deserialize;

use crate::entra::{TenantMode, is_guid, is_loopback_url};
use crate::error::{ConfigError, ConfigProblem};

/// The public Entra authority host.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// How often signing keys are re-fetched in the background (Microsoft suggests ≤ 24 h).
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Minimum gap between two key fetches caused by unknown `kid`s (Microsoft's default).
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How many validated tokens are cached.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: u64 = 50_000;

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
}

/// `[server]`: what `idguard serve` runs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, default `127.0.0.1:8400`.
    pub listen: Option<String>,
    /// URL of an upstream MCP server (gateway mode); without it the demo tools are served.
    pub upstream: Option<String>,
    /// Path of the MCP endpoint, default `/mcp`.
    pub mcp_path: Option<String>,
    /// Policy directory, default `policies`.
    pub policies: Option<String>,
}

/// `[mcp]`: MCP interception.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Largest JSON-RPC request body, default 4 MiB.
    pub max_body_bytes: Option<u64>,
    /// `"hidden"` (default: denied calls look like unknown ones) or `"visible"`.
    pub denials: Option<String>,
}

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 4] = [
    "audiences",
    "allowed_tenants",
    "required_scopes",
    "required_roles",
];

/// Sections of the configuration, as written in the file.
const SECTIONS: [&str; 4] = ["token", "server", "mcp", "obo"];

impl IdGuardConfig {
    /// Reads `path` (TOML; optional) and applies `IDGUARD_<SECTION>_<KEY>` environment
    /// overrides (`IDGUARD_TOKEN_CLIENT_ID` sets `token.client_id`; list keys take
    /// comma-separated values). `IDGUARD_LOG` is the log filter, not configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming every unknown key, unreadable file or badly typed value.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut table = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(ConfigError::from_problems(vec![ConfigProblem::new(
                            p.display().to_string(),
                            e.to_string().trim().replace('\n', " "),
                        )]));
                    }
                },
                Err(e) => {
                    return Err(ConfigError::from_problems(vec![ConfigProblem::new(
                        p.display().to_string(),
                        format!("cannot read: {e}"),
                    )]));
                }
            },
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("IDGUARD_") else {
                continue;
            };
            if rest == "LOG" {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                lower
                    .strip_prefix(s)
                    .and_then(|k| k.strip_prefix('_'))
                    .map(|k| (*s, k))
            }) else {
                problems.push(ConfigProblem::new(
                    name,
                    "not a configuration key".to_owned(),
                ));
                continue;
            };
            let parsed = if LIST_KEYS.contains(&key) {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_owned()))
                        .collect(),
                )
            } else if let Ok(b) = value.parse::<bool>() {
                toml::Value::Boolean(b)
            } else if let Ok(i) = value.parse::<i64>() {
                toml::Value::Integer(i)
            } else {
                toml::Value::String(value)
            };
            if let toml::Value::Table(sec) = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                sec.insert(key.to_owned(), parsed);
            }
        }
        // Report every unknown key, not just the first serde meets.
        loop {
            match toml::Value::Table(table.clone()).try_into::<IdGuardConfig>() {
                Ok(config) if problems.is_empty() => return Ok(config),
                Ok(_) => return Err(ConfigError::from_problems(problems)),
                Err(e) => {
                    let message = e.message().to_owned();
                    let unknown = message
                        .strip_prefix("unknown field `")
                        .and_then(|m| m.split('`').next())
                        .map(str::to_owned);
                    let Some(field) = unknown else {
                        problems.push(ConfigProblem::new(
                            key_of(&table, &message),
                            message.trim().to_owned(),
                        ));
                        return Err(ConfigError::from_problems(problems));
                    };
                    let section = if table.contains_key(&field) {
                        None
                    } else {
                        table
                            .iter()
                            .find(|(_, v)| v.as_table().is_some_and(|t| t.contains_key(&field)))
                            .map(|(k, _)| k.clone())
                    };
                    match section {
                        Some(sec) => {
                            if let Some(toml::Value::Table(t)) = table.get_mut(&sec) {
                                t.remove(&field);
                            }
                            problems.push(ConfigProblem::new(
                                format!("{sec}.{field}"),
                                "unknown key".to_owned(),
                            ));
                        }
                        None => {
                            table.remove(&field);
                            problems.push(ConfigProblem::new(field, "unknown section".to_owned()));
                        }
                    }
                }
            }
        }
    }
}

/// Best effort: the key a type error is about (`section.key` when the message names it).
fn key_of(table: &toml::Table, message: &str) -> String {
    for (section, value) in table {
        if let Some(t) = value.as_table() {
            for key in t.keys() {
                if message.contains(&format!("`{key}`")) || message.contains(key.as_str()) {
                    return format!("{section}.{key}");
                }
            }
        }
    }
    "configuration".to_owned()
}

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
}

impl IdGuardConfig {
    /// Checks every key and returns the validated configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every problem, each naming its key (`token.client_id`, …).
    pub fn resolve(self) -> Result<ResolvedConfig, ConfigError> {
        let mut problems = Vec::new();
        let t = self.token;
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
        let cache_capacity = t.cache_capacity.unwrap_or(DEFAULT_TOKEN_CACHE_CAPACITY);

        match tenant {
            Some(tenant) if problems.is_empty() => Ok(ResolvedConfig {
                authority,
                tenant,
                client_id: client_id.to_ascii_lowercase(),
                audiences,
                accept_v1: t.accept_v1,
                leeway,
                required_scopes: t.required_scopes,
                required_roles: t.required_roles,
                resource: resource.trim_end_matches('/').to_owned(),
                identifier_uri,
                jwks_refresh_interval,
                jwks_min_refresh_interval,
                cache_capacity,
            }),
            _ => Err(ConfigError::from_problems(problems)),
        }
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"12h"` or `"1d"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like `30s`, `5m` or `12h`"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}` is not a duration like `30s`, `5m` or `12h`")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> TokenConfig {
        TokenConfig {
            tenant: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            client_id: Some("8c1a5e6f-0000-4000-8000-000000000001".into()),
            resource: Some("https://mcp.contoso.com/mcp".into()),
            ..TokenConfig::default()
        }
    }

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
    fn load_reports_every_unknown_key_and_applies_env() {
        let dir = std::env::temp_dir().join(format!("idguard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idguard.toml");
        std::fs::write(
            &path,
            "[token]\ntenant = \"organizations\"\nvalidate_signature = false\nskip_audience = true\n[sever]\nlisten = \"x\"\n",
        )
        .unwrap();
        let err = IdGuardConfig::load(Some(&path), []).unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(ConfigProblem::key).collect();
        assert!(keys.contains(&"token.validate_signature"), "{keys:?}");
        assert!(keys.contains(&"token.skip_audience"), "{keys:?}");
        assert!(keys.contains(&"sever"), "{keys:?}");

        std::fs::write(&path, "[token]\ntenant = \"organizations\"\n").unwrap();
        let env = [
            (
                "IDGUARD_TOKEN_CLIENT_ID".to_owned(),
                "8c1a5e6f-0000-4000-8000-000000000001".to_owned(),
            ),
            (
                "IDGUARD_TOKEN_REQUIRED_SCOPES".to_owned(),
                "a, b".to_owned(),
            ),
            ("IDGUARD_TOKEN_ACCEPT_V1".to_owned(), "true".to_owned()),
            ("IDGUARD_LOG".to_owned(), "debug".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let config = IdGuardConfig::load(Some(&path), env).unwrap();
        assert_eq!(
            config.token.client_id.as_deref(),
            Some("8c1a5e6f-0000-4000-8000-000000000001")
        );
        assert_eq!(config.token.required_scopes, ["a", "b"]);
        assert!(config.token.accept_v1);
        let err = IdGuardConfig::load(Some(&path), [("IDGUARD_NOPE".to_owned(), "1".to_owned())])
            .unwrap_err();
        assert_eq!(err.problems()[0].key(), "IDGUARD_NOPE");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
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
}
