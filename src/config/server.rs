//! `[server]`: what `idguard serve` runs (listen address, upstream, policies, connection
//! limits and timeouts). Read by the binary and the gateway, checked here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigProblem;
use crate::setting::parse_duration;

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
pub(crate) const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration =
    crate::gateway::DEFAULT_CONNECT_TIMEOUT;

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
    pub(crate) fn settings(&self) -> Result<ServerSettings, crate::error::ConfigError> {
        let mut problems = Vec::new();
        let settings = self.check(&mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(crate::error::ConfigError::from_problems(problems))
        }
    }

    /// [`Self::settings`], adding each problem under its key.
    pub(crate) fn check(&self, problems: &mut Vec<ConfigProblem>) -> ServerSettings {
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
            let parsed = crate::gateway::upstream_url(text);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdGuardConfig;
    use crate::config::testing::valid;

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
