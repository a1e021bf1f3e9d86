//! `[mcp]`: MCP interception, checked into [`McpSettings`] (denials, unknown methods and the
//! sizes of the policy and MCP caches).

use serde::Deserialize;

use crate::error::ConfigProblem;
use crate::setting::{Secret, capacity, check_secrets};

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
    pub(crate) fn check(&self, problems: &mut Vec<ConfigProblem>) -> McpSettings {
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
            self.session_keys.iter().map(Secret::expose),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdGuardConfig;
    use crate::config::testing::env;

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
}
