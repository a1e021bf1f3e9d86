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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::entra::{TenantMode, is_guid, is_loopback_url};
use crate::error::{ConfigError, ConfigProblem};
use crate::obo::OboSettings;
use crate::obo::{
    ClientCredential, DEFAULT_GRAPH_URL, DEFAULT_OBO_CACHE_CAPACITY, DEFAULT_OBO_MAX_RETRIES,
    DEFAULT_OBO_SKEW, DEFAULT_OBO_TIMEOUT, GRAPH_API, Secret,
};

/// The public Entra authority host.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// How often signing keys are re-fetched in the background (Microsoft suggests ≤ 24 h).
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Minimum gap between two key fetches caused by unknown `kid`s (Microsoft's default).
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How many validated tokens are cached. Each entry costs about 5 KiB of resident memory
/// in practice (`benches/load/README.md`); a miss costs one RS256 verification (~25 µs).
pub const DEFAULT_TOKEN_CACHE_CAPACITY: u64 = 10_000;

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
    /// Most connections open at once, default 1024 (keep it below the process's open-file
    /// limit). Beyond it, new connections wait in the listen backlog until one closes (an
    /// idle or stalled one closes after `header_timeout`).
    pub max_connections: Option<u64>,
    /// Time a client has to send a request's headers, and how long an idle keep-alive
    /// connection stays open, default `"10s"`. Then the connection is closed.
    pub header_timeout: Option<String>,
    /// Longest wait for the next part of a request body, default `"30s"`; then `408`.
    pub body_timeout: Option<String>,
    /// After SIGTERM or Ctrl-C, how long requests already received may take to finish,
    /// default `"30s"`; connections still open then are closed.
    pub shutdown_grace: Option<String>,
    /// Reverse proxies (addresses, or ranges like `10.0.0.0/8`) whose `X-Forwarded-For`
    /// names the client's address, which limits per address use. Default none: the peer
    /// address counts.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Gateway mode: longest wait for a connection to the upstream, default `"5s"`; then
    /// `502`.
    pub upstream_connect_timeout: Option<String>,
    /// Gateway mode: longest wait for the upstream's reply to start, default `"120s"`;
    /// then `504`.
    pub upstream_timeout: Option<String>,
    /// Gateway mode: longest silence within an upstream reply (between the events of a
    /// stream), default `"300s"`; then the reply ends (a stream's client reconnects).
    pub upstream_idle_timeout: Option<String>,
}

/// Default of `server.upstream_connect_timeout`.
pub(crate) const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of `server.max_connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `server.header_timeout`.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server.body_timeout`.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `server.shutdown_grace`.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `[server]`'s connection limits and timeouts, checked.
#[derive(Clone, Debug)]
#[cfg_attr(
    not(all(feature = "dev", feature = "rmcp")),
    allow(dead_code, reason = "read by the `idguard` binary only")
)]
pub(crate) struct ServerSettings {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) trusted_proxies: Vec<IpRange>,
    pub(crate) upstream_connect_timeout: Duration,
    pub(crate) upstream_timeout: Duration,
    pub(crate) upstream_idle_timeout: Duration,
}

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    #[cfg_attr(
        not(all(feature = "dev", feature = "rmcp")),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let mask = |bits: u32, prefix: u8| -> u128 {
            if prefix == 0 {
                0
            } else {
                u128::MAX << (bits - u32::from(prefix).min(bits))
            }
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = mask(32, self.prefix);
                (u128::from(u32::from(a)) & m) == (u128::from(u32::from(b)) & m)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = mask(128, self.prefix);
                (u128::from(a) & m) == (u128::from(b) & m)
            }
            _ => false,
        }
    }
}

impl ServerConfig {
    /// Checks the connection limits and timeouts of `[server]`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every problem, each naming its key.
    #[cfg_attr(
        not(all(feature = "dev", feature = "rmcp")),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub(crate) fn settings(&self) -> Result<ServerSettings, ConfigError> {
        let mut problems = Vec::new();
        let settings = self.check(&mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::from_problems(problems))
        }
    }

    /// [`Self::settings`], adding each problem under its key.
    fn check(&self, problems: &mut Vec<ConfigProblem>) -> ServerSettings {
        let mut duration = |key: &str, value: Option<&String>, default: Duration| {
            let d = match value {
                None => return default,
                Some(v) => match parse_duration(v) {
                    Ok(d) => d,
                    Err(msg) => {
                        problems.push(ConfigProblem::new(key, msg));
                        return default;
                    }
                },
            };
            if key != "server.shutdown_grace" && d.is_zero() {
                problems.push(ConfigProblem::new(key, "must be more than zero"));
                return default;
            }
            d
        };
        let header_timeout = duration(
            "server.header_timeout",
            self.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        let body_timeout = duration(
            "server.body_timeout",
            self.body_timeout.as_ref(),
            DEFAULT_BODY_TIMEOUT,
        );
        let shutdown_grace = duration(
            "server.shutdown_grace",
            self.shutdown_grace.as_ref(),
            DEFAULT_SHUTDOWN_GRACE,
        );
        let upstream_connect_timeout = duration(
            "server.upstream_connect_timeout",
            self.upstream_connect_timeout.as_ref(),
            DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        );
        let upstream_timeout = duration(
            "server.upstream_timeout",
            self.upstream_timeout.as_ref(),
            crate::gateway::DEFAULT_RESPONSE_TIMEOUT,
        );
        let upstream_idle_timeout = duration(
            "server.upstream_idle_timeout",
            self.upstream_idle_timeout.as_ref(),
            crate::gateway::DEFAULT_IDLE_TIMEOUT,
        );
        let max_connections = match self.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n @ 1..=1_000_000) => usize::try_from(n).unwrap_or(DEFAULT_MAX_CONNECTIONS),
            Some(n) => {
                problems.push(ConfigProblem::new(
                    "server.max_connections",
                    format!("`{n}` is not between 1 and 1000000"),
                ));
                DEFAULT_MAX_CONNECTIONS
            }
        };
        let mut trusted_proxies = Vec::new();
        for p in &self.trusted_proxies {
            match IpRange::parse(p) {
                Some(range) => trusted_proxies.push(range),
                None => problems.push(ConfigProblem::new(
                    "server.trusted_proxies",
                    format!("`{p}` is not an address or a range like `10.0.0.0/8`"),
                )),
            }
        }
        ServerSettings {
            max_connections,
            header_timeout,
            body_timeout,
            shutdown_grace,
            trusted_proxies,
            upstream_connect_timeout,
            upstream_timeout,
            upstream_idle_timeout,
        }
    }
}

/// `[mcp]`: MCP interception.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Largest JSON-RPC request body, default 4 MiB.
    pub max_body_bytes: Option<u64>,
    /// Largest JSON reply (or one SSE event) idguard reads and filters, default 16 MiB.
    pub max_reply_bytes: Option<u64>,
    /// `"hidden"` (default: denied calls look like unknown ones) or `"visible"`.
    pub denials: Option<String>,
    /// `"refuse"` (default: requests with a method idguard does not mediate get `-32601`,
    /// such notifications are not forwarded) or `"pass"`.
    pub unknown_methods: Option<String>,
    /// Secrets (at least 32 bytes each) that bind MCP session and task ids to their callers;
    /// the first signs, all verify. Replicas need the same ones. Default: a random key per
    /// process (sessions then end with the process).
    #[serde(default)]
    pub session_keys: Vec<Secret>,
    /// Hosts (`host` or `host:port`) the MCP endpoint answers to besides the host of
    /// `token.resource` (DNS-rebinding protection: `Host` and `Origin` must name one).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 11] = [
    "audiences",
    "trusted_proxies",
    "session_keys",
    "allowed_hosts",
    "allowed_tenants",
    "required_scopes",
    "required_roles",
    "keys",
    "consent_scopes",
    "scopes",
    "allowed_redirect_hosts",
];

/// Sections of the configuration, as written in the file.
const SECTIONS: [&str; 5] = ["token", "server", "mcp", "obo", "oauth"];

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

/// `[obo]`: the middle tier's credential and the downstream APIs it calls for its callers.
///
/// ```toml
/// [obo]
/// client_secret = "…"            # or certificate_file + private_key_file, or federated_token_file
/// skew = "5m"
/// [obo.apis]
/// graph = ["https://graph.microsoft.com/.default"]
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OboConfig {
    /// A client secret of this API's app registration.
    pub client_secret: Option<Secret>,
    /// A PEM certificate registered on the app (with `private_key_file`).
    pub certificate_file: Option<PathBuf>,
    /// The certificate's PKCS#8 RSA private key, PEM.
    pub private_key_file: Option<PathBuf>,
    /// A file holding a federated assertion (workload identity, or a managed identity token
    /// for `api://AzureADTokenExchange`), re-read when it changes.
    pub federated_token_file: Option<PathBuf>,
    /// Downstream APIs by name: the scopes (of one resource) to request, e.g.
    /// `graph = ["https://graph.microsoft.com/.default"]`.
    #[serde(default)]
    pub apis: BTreeMap<String, Vec<String>>,
    /// How long before expiry a cached token stops being used, default
    /// [`DEFAULT_OBO_SKEW`](crate::obo::DEFAULT_OBO_SKEW).
    pub skew: Option<String>,
    /// Cached downstream tokens, default
    /// [`DEFAULT_OBO_CACHE_CAPACITY`](crate::obo::DEFAULT_OBO_CACHE_CAPACITY).
    pub cache_capacity: Option<u64>,
    /// Budget of one exchange with retries, default
    /// [`DEFAULT_OBO_TIMEOUT`](crate::obo::DEFAULT_OBO_TIMEOUT).
    pub timeout: Option<String>,
    /// Retries of `5xx`/network failures, default
    /// [`DEFAULT_OBO_MAX_RETRIES`](crate::obo::DEFAULT_OBO_MAX_RETRIES).
    pub max_retries: Option<u32>,
    /// Microsoft Graph's base URL, default
    /// [`DEFAULT_GRAPH_URL`](crate::obo::DEFAULT_GRAPH_URL).
    pub graph_url: Option<String>,
    /// Resolve group membership through Graph for tokens with a groups overage, before
    /// policies see the caller (needs an API named `graph` with `GroupMember.Read.All`).
    #[serde(default)]
    pub resolve_group_overage: bool,
    /// With `resolve_group_overage`: the group ids policies reference, checked with
    /// `checkMemberGroups`; empty: the full transitive membership.
    #[serde(default)]
    pub overage_group_ids: Vec<String>,
}

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
    pub(crate) keys: Arc<crate::oauth::ProxyKeys>,
    pub(crate) access_token_lifetime: Duration,
    pub(crate) refresh_token_lifetime: Duration,
    pub(crate) consent_scopes: Vec<String>,
    pub(crate) cimd: bool,
    pub(crate) cimd_allow_loopback: bool,
    pub(crate) allowed_redirect_hosts: Vec<String>,
    pub(crate) registration_rate_limit: u32,
    pub(crate) store_max_bytes: u64,
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
    pub(crate) obo: Option<OboSettings>,
    pub(crate) oauth: Option<OAuthSettings>,
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
        self.server.check(&mut problems);
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
        let oauth = self.oauth.map(|o| {
            resolve_oauth(
                o,
                &OAuthContext {
                    resource: &resource,
                    has_credential: self.obo.is_some(),
                    required_scopes: &t.required_scopes,
                    obo_apis: self.obo.as_ref().map(|o| &o.apis),
                },
                &mut problems,
            )
        });
        let obo = self.obo.map(|o| resolve_obo(o, &mut problems));

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
                obo: obo.flatten(),
                oauth: oauth.flatten(),
            }),
            _ => Err(ConfigError::from_problems(problems)),
        }
    }
}

/// What `[oauth]` needs from the rest of the configuration.
struct OAuthContext<'a> {
    resource: &'a str,
    has_credential: bool,
    required_scopes: &'a [String],
    obo_apis: Option<&'a BTreeMap<String, Vec<String>>>,
}

/// Checks `[oauth]`, adding each problem under its key.
fn resolve_oauth(
    o: OAuthConfig,
    cx: &OAuthContext<'_>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<OAuthSettings> {
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
    let keys = if o.keys.is_empty() {
        problem(
            "oauth.keys",
            format!(
                "required: at least one secret of {} or more bytes (e.g. `openssl rand -base64 48`)",
                crate::oauth::MIN_KEY_BYTES
            ),
        );
        None
    } else {
        let secrets: Vec<&[u8]> = o.keys.iter().map(|k| k.expose().as_bytes()).collect();
        let keys = crate::oauth::ProxyKeys::new(&secrets);
        if keys.is_none() {
            problem(
                "oauth.keys",
                format!(
                    "every key must be at least {} bytes",
                    crate::oauth::MIN_KEY_BYTES
                ),
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
        store_max_bytes: o
            .store_max_bytes
            .unwrap_or(crate::oauth::DEFAULT_MEMORY_STORE_BYTES),
    })
}

/// Checks `[obo]`, adding each problem under its key.
fn resolve_obo(o: OboConfig, problems: &mut Vec<ConfigProblem>) -> Option<OboSettings> {
    let before = problems.len();
    let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
    let certificate = o.certificate_file.is_some() || o.private_key_file.is_some();
    let given = usize::from(o.client_secret.is_some())
        + usize::from(certificate)
        + usize::from(o.federated_token_file.is_some());
    let credential = match (
        given,
        o.client_secret,
        o.certificate_file,
        o.private_key_file,
        o.federated_token_file,
    ) {
        (0, ..) => {
            problem(
                "obo",
                "a client credential is required: `client_secret`, `certificate_file` + `private_key_file`, or `federated_token_file`".into(),
            );
            None
        }
        (2.., ..) => {
            problem("obo.client_secret", "set only one client credential".into());
            None
        }
        (_, Some(secret), ..) if secret.expose().trim().is_empty() => {
            problem("obo.client_secret", "is empty".into());
            None
        }
        (_, Some(secret), ..) => Some(ClientCredential::secret(secret)),
        (_, _, Some(cert), Some(key), _) => {
            match ClientCredential::certificate_files(&cert, &key) {
                Ok(c) => Some(c),
                Err(e) => {
                    problem("obo.certificate_file", e.to_string());
                    None
                }
            }
        }
        (_, _, None, Some(_), _) => {
            problem(
                "obo.certificate_file",
                "required with `private_key_file`".into(),
            );
            None
        }
        (_, _, Some(_), None, _) => {
            problem(
                "obo.private_key_file",
                "required with `certificate_file`".into(),
            );
            None
        }
        (_, _, _, _, Some(file)) => Some(ClientCredential::federated_token_file(file)),
        _ => None,
    };
    let mut apis = BTreeMap::new();
    for (name, scopes) in o.apis {
        let key = format!("obo.apis.{name}");
        if scopes.is_empty()
            || scopes
                .iter()
                .any(|s| s.trim().is_empty() || s.contains(' '))
        {
            problem(
                &key,
                "needs scopes, each non-empty and without spaces".into(),
            );
            continue;
        }
        let resources: std::collections::BTreeSet<String> = scopes
            .iter()
            .filter(|s| !matches!(s.as_str(), "openid" | "profile" | "offline_access"))
            .map(|s| crate::obo::resource_of(std::slice::from_ref(s)))
            .collect();
        if resources.len() > 1 {
            problem(
                &key,
                "scopes must all be of one resource (one token per resource)".into(),
            );
            continue;
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        apis.insert(name, Arc::<[String]>::from(scopes));
    }
    let mut duration = |key: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(v) => parse_duration(&v).unwrap_or_else(|msg| {
            problem(key, msg);
            default
        }),
    };
    let skew = duration("obo.skew", o.skew, DEFAULT_OBO_SKEW);
    let timeout = duration("obo.timeout", o.timeout, DEFAULT_OBO_TIMEOUT);
    if timeout.is_zero() {
        problem("obo.timeout", "must be more than zero".into());
    }
    let graph_url = o
        .graph_url
        .unwrap_or_else(|| DEFAULT_GRAPH_URL.to_owned())
        .trim_end_matches('/')
        .to_owned();
    if !(graph_url.starts_with("https://") || is_loopback_url(&graph_url)) {
        problem(
            "obo.graph_url",
            format!("`{graph_url}` must be an https URL (plain http only on loopback)"),
        );
    }
    if o.resolve_group_overage && !apis.contains_key(GRAPH_API) {
        problem(
            "obo.resolve_group_overage",
            "needs an api named `graph` in `obo.apis` (with `GroupMember.Read.All`)".into(),
        );
    }
    for id in &o.overage_group_ids {
        if !is_guid(id) {
            problem(
                "obo.overage_group_ids",
                format!("`{id}` is not a group id (a GUID)"),
            );
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(OboSettings {
        credential: credential?,
        apis,
        skew,
        cache_capacity: o.cache_capacity.unwrap_or(DEFAULT_OBO_CACHE_CAPACITY),
        timeout,
        max_retries: o.max_retries.unwrap_or(DEFAULT_OBO_MAX_RETRIES),
        graph_url,
        overage: o.resolve_group_overage.then_some(o.overage_group_ids),
    })
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
    fn obo_problems_name_their_keys() {
        let obo = OboConfig {
            client_secret: Some(Secret::new("s")),
            federated_token_file: Some("/var/run/token".into()),
            apis: BTreeMap::from([(
                "mixed".to_owned(),
                vec![
                    "https://graph.microsoft.com/User.Read".to_owned(),
                    "api://other/x".to_owned(),
                ],
            )]),
            skew: Some("soon".into()),
            graph_url: Some("http://graph.example.com".into()),
            resolve_group_overage: true,
            ..OboConfig::default()
        };
        let err = IdGuardConfig {
            token: valid(),
            obo: Some(obo),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            [
                "obo.client_secret",
                "obo.apis.mixed",
                "obo.skew",
                "obo.graph_url",
                "obo.resolve_group_overage"
            ]
        );
        assert!(
            !err.to_string().contains("`s`"),
            "the secret is never echoed"
        );
    }

    #[test]
    fn obo_credential_problems() {
        let resolve = |obo: OboConfig| {
            IdGuardConfig {
                token: valid(),
                obo: Some(obo),
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| (p.key().to_owned(), p.message().to_owned()))
            .collect::<Vec<_>>()
        };
        let none = resolve(OboConfig::default());
        assert_eq!(none[0].0, "obo");
        let half = resolve(OboConfig {
            private_key_file: Some("/nonexistent/key.pem".into()),
            ..OboConfig::default()
        });
        assert_eq!(half[0].0, "obo.certificate_file");
        let missing = resolve(OboConfig {
            certificate_file: Some("/nonexistent/cert.pem".into()),
            private_key_file: Some("/nonexistent/key.pem".into()),
            ..OboConfig::default()
        });
        assert_eq!(missing[0].0, "obo.certificate_file");
        assert!(
            missing[0].1.contains("cannot read `/nonexistent/cert.pem`"),
            "{missing:?}"
        );
    }

    #[test]
    fn obo_section_from_toml() {
        let cfg: IdGuardConfig = toml::from_str(
            r#"
            [token]
            tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "8c1a5e6f-0000-4000-8000-000000000001"
            resource = "https://mcp.contoso.com/mcp"
            [obo]
            client_secret = "s3cr3t"
            skew = "2m"
            [obo.apis]
            graph = ["https://graph.microsoft.com/User.Read", "https://graph.microsoft.com/GroupMember.Read.All"]
            "#,
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let r = cfg.resolve().unwrap();
        let obo = r.obo.unwrap();
        assert_eq!(obo.skew, Duration::from_secs(120));
        assert_eq!(
            obo.apis["graph"].as_ref(),
            [
                "https://graph.microsoft.com/GroupMember.Read.All",
                "https://graph.microsoft.com/User.Read"
            ]
        );
        let bad = toml::from_str::<IdGuardConfig>("[obo]\nclient_secret = \"x\"\nverify = false\n");
        assert!(bad.unwrap_err().to_string().contains("verify"));
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

    #[test]
    fn server_limits_default_and_name_their_keys() {
        let s = ServerConfig::default().settings().unwrap();
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.body_timeout, Duration::from_secs(30));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(s.trusted_proxies.is_empty());

        let env = [
            ("IDGUARD_SERVER_MAX_CONNECTIONS", "64"),
            ("IDGUARD_SERVER_HEADER_TIMEOUT", "2s"),
            ("IDGUARD_SERVER_SHUTDOWN_GRACE", "0s"),
            ("IDGUARD_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let s = IdGuardConfig::load(None, env)
            .unwrap()
            .server
            .settings()
            .unwrap();
        assert_eq!(s.max_connections, 64);
        assert_eq!(s.header_timeout, Duration::from_secs(2));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert!(s.trusted_proxies[0].contains("10.200.0.1".parse().unwrap()));
        assert!(s.trusted_proxies[0].contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!s.trusted_proxies[0].contains("11.0.0.1".parse().unwrap()));
        assert!(s.trusted_proxies[1].contains("::1".parse().unwrap()));

        let bad = ServerConfig {
            max_connections: Some(0),
            header_timeout: Some("0s".into()),
            body_timeout: Some("soon".into()),
            trusted_proxies: vec!["10.0.0.0/33".into(), "proxy.local".into()],
            ..ServerConfig::default()
        };
        let err = bad.clone().settings().unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(
            keys,
            [
                "server.header_timeout",
                "server.body_timeout",
                "server.max_connections",
                "server.trusted_proxies",
                "server.trusted_proxies"
            ]
        );
        // `resolve` (and so `idguard config check`) reports them too.
        let err = IdGuardConfig {
            token: valid(),
            server: bad,
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(err.problems().len(), 5);
    }
}
