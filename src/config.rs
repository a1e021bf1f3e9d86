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
    /// A second policy directory decided alongside `policies` for comparison only (shadow
    /// policies: counted, logged and traced, never enforced), hot-reloaded the same way;
    /// default none.
    pub shadow_policies: Option<String>,
    /// The app role whose holders may use the admin endpoints (`GET /admin/decisions`, the
    /// live decision trace); default none: no admin endpoints (dev mode: `Tools.Admin`).
    pub admin_role: Option<String>,
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

/// The port of the default `server.listen` (`127.0.0.1:8400`).
pub(crate) const DEFAULT_PORT: u16 = 8400;

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
    not(feature = "internals"),
    allow(dead_code, reason = "read by the `idguard` binary only")
)]
pub struct ServerSettings {
    /// `server.listen`, default `127.0.0.1:8400`.
    pub listen: std::net::SocketAddr,
    /// `server.mcp_path`, default `/mcp`.
    pub mcp_path: String,
    /// `server.policies`, default `policies`.
    pub policies: PathBuf,
    /// `server.upstream`: gateway mode.
    pub upstream: Option<url::Url>,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.header_timeout`.
    pub header_timeout: Duration,
    /// `server.body_timeout`.
    pub body_timeout: Duration,
    /// `server.shutdown_grace`.
    pub shutdown_grace: Duration,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<IpRange>,
    /// `server.upstream_connect_timeout`.
    pub upstream_connect_timeout: Duration,
    /// `server.upstream_timeout`.
    pub upstream_timeout: Duration,
    /// `server.upstream_idle_timeout`.
    pub upstream_idle_timeout: Duration,
}

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<Self> {
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
        not(feature = "internals"),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
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
    #[cfg(test)]
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
        let listen = match &self.listen {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            Some(text) => text.trim().parse().unwrap_or_else(|_| {
                problems.push(ConfigProblem::new(
                    "server.listen",
                    format!("`{text}` is not an address and port like `127.0.0.1:8400` or `0.0.0.0:8400`"),
                ));
                std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
            }),
        };
        let mcp_path = self.mcp_path.clone().unwrap_or_else(|| "/mcp".into());
        let path_ok = mcp_path.len() >= 2
            && mcp_path.starts_with('/')
            && !mcp_path.ends_with('/')
            && !mcp_path.contains("//")
            && mcp_path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'));
        if !path_ok {
            problems.push(ConfigProblem::new(
                "server.mcp_path",
                format!("`{mcp_path}` must be a path like `/mcp`: starts with `/`, not `/` alone, no trailing `/`, letters, digits and `-_.~` only"),
            ));
        }
        let policies = PathBuf::from(self.policies.as_deref().unwrap_or("policies"));
        if policies.as_os_str().is_empty() {
            problems.push(ConfigProblem::new(
                "server.policies",
                "is empty: the policy directory, e.g. `policies`",
            ));
        }
        let upstream = self.upstream.as_deref().and_then(|text| {
            let parsed = url::Url::parse(text.trim()).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none()
            });
            if parsed.is_none() {
                problems.push(ConfigProblem::new(
                    "server.upstream",
                    format!("`{text}` must be an http or https URL with a host, e.g. `http://127.0.0.1:9000/mcp`"),
                ));
            }
            parsed
        });
        ServerSettings {
            listen,
            mcp_path,
            policies,
            upstream,
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
    /// Callers whose list decisions are cached, default
    /// [`DEFAULT_LIST_CACHE_CAPACITY`](crate::policy::DEFAULT_LIST_CACHE_CAPACITY) (see
    /// [`PolicyCacheCapacities`](crate::policy::PolicyCacheCapacities)).
    pub list_cache_capacity: Option<u64>,
    /// Call decisions cached, default
    /// [`DEFAULT_CALL_CACHE_CAPACITY`](crate::policy::DEFAULT_CALL_CACHE_CAPACITY).
    pub call_cache_capacity: Option<u64>,
    /// Decision entities cached, default
    /// [`DEFAULT_ENTITY_CACHE_CAPACITY`](crate::policy::DEFAULT_ENTITY_CACHE_CAPACITY).
    pub entity_cache_capacity: Option<u64>,
    /// Policy slices cached, default
    /// [`DEFAULT_SLICE_CACHE_CAPACITY`](crate::policy::DEFAULT_SLICE_CACHE_CAPACITY).
    pub slice_cache_capacity: Option<u64>,
    /// Tools whose annotations are known by name, default
    /// [`DEFAULT_CATALOG_CAPACITY`](crate::mcp::DEFAULT_CATALOG_CAPACITY) (see
    /// [`McpCacheCapacities`](crate::mcp::McpCacheCapacities)).
    pub catalog_capacity: Option<u64>,
    /// Names the server did not list, remembered, default
    /// [`DEFAULT_UNLISTED_CAPACITY`](crate::mcp::DEFAULT_UNLISTED_CAPACITY).
    pub unlisted_capacity: Option<u64>,
    /// Parsed list results kept, default
    /// [`DEFAULT_LIST_RESULT_CAPACITY`](crate::mcp::DEFAULT_LIST_RESULT_CAPACITY).
    pub list_result_capacity: Option<u64>,
    /// MCP sessions whose decided requests are remembered (to filter replayed streams),
    /// default [`DEFAULT_SESSION_RECORD_CAPACITY`](crate::mcp::DEFAULT_SESSION_RECORD_CAPACITY).
    pub session_record_capacity: Option<u64>,
    /// Decided requests remembered per session, default
    /// [`DEFAULT_REQUESTS_PER_SESSION`](crate::mcp::DEFAULT_REQUESTS_PER_SESSION); replayed
    /// replies to requests forgotten are dropped, and their ids stay used (8 bytes each, at
    /// most 64 times this many per session; a session beyond that ends with `404`).
    pub requests_per_session: Option<u64>,
}

/// The largest cache capacity a key accepts (a guard against a typo's extra zeros).
const MAX_CACHE_CAPACITY: u64 = 10_000_000;

/// A cache capacity key: its value, or `default` when it is not set or out of range (a
/// problem then names `key`).
fn capacity(key: &str, value: Option<u64>, default: u64, problems: &mut Vec<ConfigProblem>) -> u64 {
    match value {
        None => default,
        Some(n @ 1..=MAX_CACHE_CAPACITY) => n,
        Some(n) => {
            problems.push(ConfigProblem::new(
                key,
                format!("`{n}` is not between 1 and {MAX_CACHE_CAPACITY}"),
            ));
            default
        }
    }
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

/// `[mcp]`, checked.
#[derive(Clone, Debug)]
#[cfg_attr(
    not(feature = "internals"),
    allow(dead_code, reason = "read by the `idguard` binary only")
)]
pub struct McpSettings {
    /// `mcp.denials`.
    pub denials: crate::mcp::Denials,
    /// `mcp.unknown_methods`.
    pub unknown_methods: crate::mcp::UnknownMethods,
    /// `mcp.list_cache_capacity`, `call_…`, `entity_…`, `slice_…`.
    pub policy_caches: crate::policy::PolicyCacheCapacities,
    /// `mcp.catalog_capacity`, `unlisted_…`, `list_result_…`, `session_record_…`,
    /// `requests_per_session`.
    pub caches: crate::mcp::McpCacheCapacities,
}

impl McpConfig {
    /// Checks `[mcp]`, adding each problem under its key.
    fn check(&self, problems: &mut Vec<ConfigProblem>) -> McpSettings {
        use crate::mcp::{Denials, UnknownMethods};
        let denials = match self.denials.as_deref() {
            None | Some("hidden") => Denials::Hidden,
            Some("visible") => Denials::Visible,
            Some(other) => {
                problems.push(ConfigProblem::new(
                    "mcp.denials",
                    format!("`{other}` is not `hidden` or `visible`"),
                ));
                Denials::Hidden
            }
        };
        let unknown_methods = match self.unknown_methods.as_deref() {
            None | Some("refuse") => UnknownMethods::Refuse,
            Some("pass") => UnknownMethods::Pass,
            Some(other) => {
                problems.push(ConfigProblem::new(
                    "mcp.unknown_methods",
                    format!("`{other}` is not `refuse` or `pass`"),
                ));
                UnknownMethods::Refuse
            }
        };
        for (key, value) in [
            ("mcp.max_body_bytes", self.max_body_bytes),
            ("mcp.max_reply_bytes", self.max_reply_bytes),
        ] {
            if value == Some(0) {
                problems.push(ConfigProblem::new(key, "must be more than zero"));
            }
        }
        check_secrets(
            "mcp.session_keys",
            &self.session_keys,
            MIN_SESSION_KEY_BYTES,
            problems,
        );
        for host in &self.allowed_hosts {
            let ok = !host.is_empty()
                && !host.contains(['/', '@', ' ', '?', '#'])
                && url::Url::parse(&format!("http://{host}"))
                    .is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
            if !ok {
                problems.push(ConfigProblem::new(
                    "mcp.allowed_hosts",
                    format!("`{host}` is not a host or `host:port` (no scheme, no path)"),
                ));
            }
        }
        let mut size =
            |key: &str, value: Option<u64>, default: u64| capacity(key, value, default, problems);
        let policy_caches = crate::policy::PolicyCacheCapacities::default()
            .with_lists(size(
                "mcp.list_cache_capacity",
                self.list_cache_capacity,
                crate::policy::DEFAULT_LIST_CACHE_CAPACITY,
            ))
            .with_calls(size(
                "mcp.call_cache_capacity",
                self.call_cache_capacity,
                crate::policy::DEFAULT_CALL_CACHE_CAPACITY,
            ))
            .with_entities(size(
                "mcp.entity_cache_capacity",
                self.entity_cache_capacity,
                crate::policy::DEFAULT_ENTITY_CACHE_CAPACITY,
            ))
            .with_slices(size(
                "mcp.slice_cache_capacity",
                self.slice_cache_capacity,
                crate::policy::DEFAULT_SLICE_CACHE_CAPACITY,
            ));
        let caches = crate::mcp::McpCacheCapacities::default()
            .with_catalog_tools(size(
                "mcp.catalog_capacity",
                self.catalog_capacity,
                crate::mcp::DEFAULT_CATALOG_CAPACITY,
            ))
            .with_unlisted_tools(size(
                "mcp.unlisted_capacity",
                self.unlisted_capacity,
                crate::mcp::DEFAULT_UNLISTED_CAPACITY,
            ))
            .with_list_results(size(
                "mcp.list_result_capacity",
                self.list_result_capacity,
                crate::mcp::DEFAULT_LIST_RESULT_CAPACITY,
            ))
            .with_sessions(size(
                "mcp.session_record_capacity",
                self.session_record_capacity,
                crate::mcp::DEFAULT_SESSION_RECORD_CAPACITY,
            ))
            .with_requests_per_session(size(
                "mcp.requests_per_session",
                self.requests_per_session,
                crate::mcp::DEFAULT_REQUESTS_PER_SESSION,
            ));
        McpSettings {
            denials,
            unknown_methods,
            policy_caches,
            caches,
        }
    }
}

/// Shortest `mcp.session_keys` secret.
const MIN_SESSION_KEY_BYTES: usize = 32;

/// Whether a secret is the placeholder of an example rather than a secret: the example
/// file's `change-me-…`, `<…>` and the like.
fn is_placeholder(secret: &str) -> bool {
    let s = secret.trim().to_ascii_lowercase();
    s.starts_with('<')
        || s.contains('…')
        || s.contains("...")
        || [
            "change-me",
            "changeme",
            "change_me",
            "replace-me",
            "replaceme",
            "placeholder",
            "your-secret",
            "random-bytes",
        ]
        .iter()
        .any(|p| s.contains(p))
}

/// Checks a list of secrets: each long enough and not an example's placeholder. Never
/// quotes a secret.
fn check_secrets(key: &str, secrets: &[Secret], min: usize, problems: &mut Vec<ConfigProblem>) {
    for (i, secret) in secrets.iter().enumerate() {
        let n = i + 1;
        if is_placeholder(secret.expose()) {
            problems.push(ConfigProblem::new(
                key,
                format!("secret {n} is an example's placeholder: generate one, e.g. `openssl rand -base64 48`"),
            ));
        } else if secret.expose().len() < min {
            problems.push(ConfigProblem::new(
                key,
                format!("secret {n} is shorter than {min} bytes (e.g. `openssl rand -base64 48`)"),
            ));
        }
    }
}

/// What the `idguard` binary runs with, every key checked. `idguard serve` and `idguard
/// config check` both build it with [`check_binary`], so a configuration `config check`
/// accepts is one `serve` starts with.
#[cfg(feature = "internals")]
#[derive(Debug)]
pub struct Checked {
    /// The configuration as read.
    pub config: IdGuardConfig,
    /// `None` in dev mode: the emulator stands in for `[token]`, `[obo]` and `[oauth]`.
    pub resolved: Option<ResolvedConfig>,
    /// `[server]`, checked.
    pub server: ServerSettings,
    /// `[mcp]`, checked.
    pub mcp: McpSettings,
    /// Where each key came from.
    pub origins: Origins,
}

/// Command-line options that stand in for keys (`--port`, `--policies`, `--denials`,
/// `--unknown-methods`); problems with them are named by the option.
#[cfg(feature = "internals")]
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--port`.
    pub port: Option<u16>,
    /// `--policies`.
    pub policies: Option<PathBuf>,
    /// `--denials`.
    pub denials: Option<crate::mcp::Denials>,
    /// `--unknown-methods`.
    pub unknown_methods: Option<crate::mcp::UnknownMethods>,
}

/// Reads and checks everything the binary needs: the file and the `IDGUARD_*`
/// environment (unknown keys, types), `[server]` and `[mcp]`, the policy directory (it
/// must load), and outside dev mode [`IdGuardConfig::resolve`]. Every problem at once, each
/// named as the operator wrote it: `IDGUARD_MCP_DENIALS` when the environment set it,
/// `mcp.denials` when the file did, `--policies` for an option.
///
/// # Errors
///
/// A [`ConfigError`] with every problem.
#[cfg(feature = "internals")]
pub fn check_binary(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
    dev: bool,
) -> Result<Checked, ConfigError> {
    let Loaded {
        config,
        origins,
        mut problems,
    } = IdGuardConfig::read(path, env)?;
    let mut server = config.server.check(&mut problems);
    let mut mcp = config.mcp.check(&mut problems);
    let resolved = if dev {
        None
    } else {
        match config.clone().resolve() {
            Ok(r) => Some(r),
            Err(e) => {
                // A key left out for its type shows once, not again as "required".
                let known: Vec<String> = problems.iter().map(|p| p.key().to_owned()).collect();
                for p in e.problems() {
                    if !known.iter().any(|k| k == p.key()) && !problems.contains(p) {
                        problems.push(p.clone());
                    }
                }
                None
            }
        }
    };
    if let Some(port) = overrides.port {
        server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    }
    let policies_key = if overrides.policies.is_some() {
        "--policies"
    } else {
        "server.policies"
    };
    if let Some(dir) = &overrides.policies {
        server.policies.clone_from(dir);
    }
    if let Some(d) = overrides.denials {
        mcp.denials = d;
    }
    if let Some(u) = overrides.unknown_methods {
        mcp.unknown_methods = u;
    }
    let dir = &server.policies;
    if !dir.as_os_str().is_empty() {
        if !dir.is_dir() {
            problems.push(ConfigProblem::new(
                policies_key,
                format!(
                    "`{}` is not a directory: the Cedar policies (`schema.cedarschema` and `*.cedar`; start from a copy of idguard's `policies/`)",
                    dir.display()
                ),
            ));
        } else if let Err(e) = crate::policy::PolicyEngine::from_dir(dir) {
            let mut message = format!(
                "the policies in `{}` do not load (`idguard policy validate {}` shows them):",
                dir.display(),
                dir.display()
            );
            for p in e.problems() {
                message.push_str(&format!("\n      {}/{p}", dir.display()));
            }
            problems.push(ConfigProblem::new(policies_key, message));
        }
    }
    if problems.is_empty() {
        Ok(Checked {
            config,
            resolved,
            server,
            mcp,
            origins,
        })
    } else {
        Err(ConfigError::from_problems(origins.rename(problems)))
    }
}

/// Where the keys of a configuration came from, so that problems name what the operator
/// wrote: the environment variable (`IDGUARD_MCP_DENIALS`) or the file's key
/// (`mcp.denials`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// `section.key` → the environment variable that set it.
    env: BTreeMap<String, String>,
}

impl Origins {
    /// `key` (`section.key`, or a deeper one such as `obo.apis.graph`) as the operator
    /// wrote it: the variable that set it, else the key itself.
    pub fn name(&self, key: &str) -> String {
        if let Some(var) = self.env.get(key) {
            return var.clone();
        }
        self.env
            .iter()
            .find(|(k, _)| {
                key.strip_prefix(k.as_str())
                    .is_some_and(|r| r.starts_with('.'))
            })
            .map_or_else(|| key.to_owned(), |(_, var)| var.clone())
    }

    /// The same problems, each under the name the operator wrote.
    pub fn rename(&self, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        problems
            .into_iter()
            .map(|p| ConfigProblem::new(self.name(p.key()), p.message().to_owned()))
            .collect()
    }

    /// The configuration variables set in the environment.
    #[cfg(feature = "internals")]
    pub fn variables(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.env.values().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A configuration as read, with what was wrong with it. Keys that could not be read
/// (unknown, or of the wrong type) are left out and their problems recorded, so the rest
/// can still be checked: every problem is reported at once.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub config: IdGuardConfig,
    pub origins: Origins,
    /// Problems by `section.key` (see [`Origins::rename`]).
    pub problems: Vec<ConfigProblem>,
}

/// Keys holding secrets: their type errors never quote the value.
const SECRET_KEYS: [&str; 3] = ["client_secret", "keys", "session_keys"];

impl IdGuardConfig {
    /// Reads `path` (TOML; optional) and applies `IDGUARD_<SECTION>_<KEY>` environment
    /// overrides (`IDGUARD_TOKEN_CLIENT_ID` sets `token.client_id`; list keys take
    /// comma-separated values). `IDGUARD_LOG` is the log filter, not configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming every unknown key, unreadable file or badly typed value, each
    /// as the operator wrote it: the environment variable when one set it.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let loaded = Self::read(path, env)?;
        if loaded.problems.is_empty() {
            Ok(loaded.config)
        } else {
            Err(ConfigError::from_problems(
                loaded.origins.rename(loaded.problems),
            ))
        }
    }

    /// [`load`](Self::load), keeping what could be read when some keys could not.
    ///
    /// # Errors
    ///
    /// Only a file that cannot be read or is not TOML.
    pub(crate) fn read(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut problems = Vec::new();
        let mut origins = Origins::default();
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
        // Sections first: an unknown one, or one that is not a table, is left out whole.
        let names: Vec<String> = table.keys().cloned().collect();
        for name in names {
            if !SECTIONS.contains(&name.as_str()) {
                table.remove(&name);
                let hint = suggestion(&name, SECTIONS.iter().copied());
                problems.push(ConfigProblem::new(name, format!("unknown section{hint}")));
            } else if !table.get(&name).is_some_and(toml::Value::is_table) {
                table.remove(&name);
                let message = format!("must be a section: `[{name}]` and its keys");
                problems.push(ConfigProblem::new(name, message));
            }
        }
        // The environment wins over the file; each value remembers its variable.
        let mut raw_env: BTreeMap<String, String> = BTreeMap::new();
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
                    .filter(|k| !k.is_empty())
                    .map(|k| (*s, k))
            }) else {
                problems.push(ConfigProblem::new(
                    name,
                    "not a configuration variable: idguard reads `IDGUARD_<SECTION>_<KEY>` (sections `token`, `server`, `mcp`, `obo`, `oauth`) and `IDGUARD_LOG`",
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
                toml::Value::String(value.clone())
            };
            let dotted = format!("{section}.{key}");
            origins.env.insert(dotted.clone(), name);
            raw_env.insert(dotted, value);
            if let toml::Value::Table(sec) = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                sec.insert(key.to_owned(), parsed);
            }
        }
        // Then every key on its own: unknown keys and type errors are all reported, and
        // left out so that the rest can still be checked.
        for (section, value) in &mut table {
            let Some(keys) = value.as_table_mut() else {
                continue;
            };
            let names: Vec<String> = keys.keys().cloned().collect();
            for key in names {
                let dotted = format!("{section}.{key}");
                let Some(v) = keys.get(&key) else { continue };
                let Err(message) = check_key(section, &key, v) else {
                    continue;
                };
                // A variable's value that read as a number or boolean may be a string.
                if let Some(raw) = raw_env.get(&dotted)
                    && !v.is_str()
                    && !v.is_array()
                {
                    let text = toml::Value::String(raw.clone());
                    if check_key(section, &key, &text).is_ok() {
                        keys.insert(key, text);
                        continue;
                    }
                }
                keys.remove(&key);
                let message = if let Some(expected) = message.strip_prefix("unknown field `") {
                    let known = expected
                        .split('`')
                        .skip(2)
                        .step_by(2)
                        .filter(|k| !k.is_empty());
                    let hint = suggestion(&key, known);
                    if origins.env.contains_key(&dotted) {
                        format!(
                            "not a configuration variable: `[{section}]` has no key `{key}`{hint}"
                        )
                    } else {
                        format!("unknown key{hint}")
                    }
                } else if SECRET_KEYS.contains(&key.as_str()) {
                    if key == "client_secret" {
                        "must be a string in quotes".to_owned()
                    } else {
                        "must be a list of strings, like `[\"…\"]`".to_owned()
                    }
                } else {
                    type_problem(&key, &message)
                };
                problems.push(ConfigProblem::new(dotted, message));
            }
        }
        let config = match toml::Value::Table(table).try_into::<IdGuardConfig>() {
            Ok(c) => c,
            Err(e) => {
                problems.push(ConfigProblem::new(
                    "configuration",
                    e.message().trim().to_owned(),
                ));
                IdGuardConfig::default()
            }
        };
        Ok(Loaded {
            config,
            origins,
            problems,
        })
    }
}

/// A type error in the operator's words: what the key takes, and what was found.
fn type_problem(key: &str, message: &str) -> String {
    let found = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split(", expected").next())
        .map(|f| format!(" (found {f})"))
        .unwrap_or_default();
    let duration = ["leeway", "timeout", "interval", "lifetime", "skew", "grace"]
        .iter()
        .any(|d| key.contains(d));
    let wants = if message.contains("expected a string") && duration {
        "must be a duration in quotes, like `\"60s\"`, `\"5m\"` or `\"12h\"`"
    } else if message.contains("expected a string") {
        "must be a string in quotes"
    } else if message.contains("expected u64")
        || message.contains("expected u32")
        || message.contains("expected i64")
    {
        "must be a whole number"
    } else if message.contains("expected a boolean") {
        "must be `true` or `false`"
    } else if message.contains("expected a sequence") {
        "must be a list, like `[\"a\", \"b\"]`"
    } else if message.contains("expected a map") {
        "must be a table"
    } else {
        return message.to_owned();
    };
    format!("{wants}{found}")
}

/// Whether `value` alone deserializes as key `key` of section `section`; the problem if not.
fn check_key(section: &str, key: &str, value: &toml::Value) -> Result<(), String> {
    let mut one = toml::Table::new();
    one.insert(key.to_owned(), value.clone());
    let one = toml::Value::Table(one);
    let result = match section {
        "token" => one.try_into::<TokenConfig>().map(drop),
        "server" => one.try_into::<ServerConfig>().map(drop),
        "mcp" => one.try_into::<McpConfig>().map(drop),
        "obo" => one.try_into::<OboConfig>().map(drop),
        "oauth" => one.try_into::<OAuthConfig>().map(drop),
        _ => Ok(()),
    };
    result.map_err(|e| e.message().trim().replace('\n', " "))
}

/// ` (did you mean `x`?)` when one of `known` is one or two edits away from `name`.
fn suggestion<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance (names are short).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = row.get(j).copied().unwrap_or(usize::MAX);
            let value = (prev + usize::from(ca != *cb))
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            prev = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = value;
            }
        }
    }
    row.last().copied().unwrap_or(0)
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
    pub(crate) keys: Arc<crate::oauth::ProxyKeys>,
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
        let mut problems = Vec::new();
        self.server.check(&mut problems);
        self.mcp.check(&mut problems);
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
                jwks_cache_file: t.jwks_cache_file.filter(|p| !p.as_os_str().is_empty()),
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
    let placeholders = problems.len();
    check_secrets("oauth.keys", &o.keys, crate::oauth::MIN_KEY_BYTES, problems);
    let bad_keys = problems.len() > placeholders;
    let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
    let keys = if bad_keys {
        None
    } else if o.keys.is_empty() {
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
    let cimd_cache_capacity = capacity(
        "oauth.cimd_cache_capacity",
        o.cimd_cache_capacity,
        crate::oauth::DEFAULT_CIMD_CACHE_CAPACITY,
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
        store_max_bytes: o
            .store_max_bytes
            .unwrap_or(crate::oauth::DEFAULT_MEMORY_STORE_BYTES),
        cimd_cache_capacity,
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
        (_, Some(secret), ..) if is_placeholder(secret.expose()) => {
            problem(
                "obo.client_secret",
                "is an example's placeholder: a client secret of the app registration (prefer a certificate or a federated credential)".into(),
            );
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

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn problems_name_the_variable_that_set_a_key() {
        let err = IdGuardConfig::load(
            None,
            env(&[
                ("IDGUARD_MCP_URL", "http://127.0.0.1:8400/mcp"),
                ("IDGUARD_SERVER_MAX_CONNECTIONS", "many"),
                ("IDGUARD_TOKEN", "eyJ"),
            ]),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(
            keys,
            [
                "IDGUARD_TOKEN",
                "IDGUARD_MCP_URL",
                "IDGUARD_SERVER_MAX_CONNECTIONS"
            ],
            "{err}"
        );
        assert!(!err.to_string().contains("mcp.url"), "{err}");
        assert!(
            !err.to_string().contains("eyJ"),
            "values are not echoed: {err}"
        );
        // Resolution problems too: the variable, not the file.
        let loaded =
            IdGuardConfig::read(None, env(&[("IDGUARD_TOKEN_TENANT", "contoso")])).unwrap();
        let err = loaded.config.resolve().unwrap_err();
        let named = loaded.origins.rename(err.problems().to_vec());
        assert!(
            named.iter().any(|p| p.key() == "IDGUARD_TOKEN_TENANT"),
            "{named:?}"
        );
    }

    #[test]
    fn a_variable_that_reads_as_a_number_may_be_a_string() {
        let config = IdGuardConfig::load(
            None,
            env(&[
                ("IDGUARD_OBO_CLIENT_SECRET", "12345"),
                ("IDGUARD_SERVER_MAX_CONNECTIONS", "64"),
                ("IDGUARD_TOKEN_ACCEPT_V1", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.obo.unwrap().client_secret.unwrap().expose(), "12345");
        assert_eq!(config.server.max_connections, Some(64));
    }

    #[test]
    fn every_type_error_and_unknown_key_is_reported_and_the_rest_still_read() {
        let dir = std::env::temp_dir().join(format!("idguard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idguard.toml");
        std::fs::write(
            &path,
            "[token]\ntenant = \"organizations\"\nleeway = 5\ncache_capacity = \"lots\"\n[server]\nmax_connections = \"many\"\n[mcp]\ndenyals = \"visible\"\n[oauth]\nkeys = [1]\n",
        )
        .unwrap();
        let loaded = IdGuardConfig::read(Some(&path), []).unwrap();
        let problems: Vec<(&str, &str)> = loaded
            .problems
            .iter()
            .map(|p| (p.key(), p.message()))
            .collect();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        for key in [
            "token.leeway",
            "token.cache_capacity",
            "server.max_connections",
            "mcp.denyals",
            "oauth.keys",
        ] {
            assert!(keys.contains(&key), "{key} in {problems:?}");
        }
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "mcp.denyals" && m.contains("did you mean `denials`"))
        );
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "token.leeway" && m.contains("duration in quotes"))
        );
        // What could be read was read.
        assert_eq!(loaded.config.token.tenant.as_deref(), Some("organizations"));
        std::fs::remove_dir_all(dir).unwrap();
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

    #[test]
    fn cache_capacities_default_read_and_name_their_keys() {
        let mut problems = Vec::new();
        let s = McpConfig::default().check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            s.policy_caches,
            crate::policy::PolicyCacheCapacities::default()
        );
        assert_eq!(s.caches, crate::mcp::McpCacheCapacities::default());
        assert_eq!(s.caches.requests_per_session(), 1024);
        assert_eq!(s.policy_caches.entities(), 2_000);

        let dir = std::env::temp_dir().join(format!("idguard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idguard.toml");
        std::fs::write(
            &path,
            "[mcp]\nlist_cache_capacity = 100\ncall_cache_capacity = 200\nentity_cache_capacity = 300\nslice_cache_capacity = 400\ncatalog_capacity = 500\nunlisted_capacity = 600\nlist_result_capacity = 7\nsession_record_capacity = 800\n",
        )
        .unwrap();
        let variables = env(&[("IDGUARD_MCP_REQUESTS_PER_SESSION", "2")]);
        let config = IdGuardConfig::load(Some(&path), variables).unwrap();
        let s = config.mcp.check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let p = s.policy_caches;
        assert_eq!(
            (p.lists(), p.calls(), p.entities(), p.slices()),
            (100, 200, 300, 400)
        );
        let c = s.caches;
        assert_eq!(
            (
                c.catalog_tools(),
                c.unlisted_tools(),
                c.list_results(),
                c.sessions(),
                c.requests_per_session()
            ),
            (500, 600, 7, 800, 2)
        );

        // Zero, too large, not a number, a near miss: each named by its key or variable.
        std::fs::write(
            &path,
            "[mcp]\ncall_cache_capacity = 0\ncatalog_capacity = 100000000\nsession_record_capacity = \"lots\"\ncatalog_capacty = 5\n[oauth]\ncimd_cache_capacity = -1\n",
        )
        .unwrap();
        let loaded = IdGuardConfig::read(
            Some(&path),
            env(&[("IDGUARD_MCP_REQUESTS_PER_SESSION", "0")]),
        )
        .unwrap();
        let mut problems = loaded.problems.clone();
        loaded.config.mcp.check(&mut problems);
        let named = loaded.origins.rename(problems);
        let found: Vec<(&str, &str)> = named.iter().map(|p| (p.key(), p.message())).collect();
        for (key, says) in [
            ("mcp.session_record_capacity", "must be a whole number"),
            ("mcp.catalog_capacty", "did you mean `catalog_capacity`"),
            ("oauth.cimd_cache_capacity", "must be a whole number"),
            (
                "mcp.call_cache_capacity",
                "`0` is not between 1 and 10000000",
            ),
            (
                "mcp.catalog_capacity",
                "`100000000` is not between 1 and 10000000",
            ),
            ("IDGUARD_MCP_REQUESTS_PER_SESSION", "`0` is not between 1"),
        ] {
            assert!(
                found.iter().any(|(k, m)| *k == key && m.contains(says)),
                "{key}: {says} in {found:?}"
            );
        }
        assert_eq!(found.len(), 6, "{found:?}");
        std::fs::remove_dir_all(dir).unwrap();
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

    #[test]
    fn suggestions_are_close_names() {
        assert_eq!(edit_distance("denyals", "denials"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggestion("sever", SECTIONS.iter().copied()),
            " (did you mean `server`?)"
        );
        assert_eq!(suggestion("zzz", SECTIONS.iter().copied()), "");
    }
}
