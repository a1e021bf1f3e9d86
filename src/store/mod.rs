//! `[store]`: where replicas share state. Without the section every store is in memory
//! (per process); with it, a Redis server (or a wire-compatible one such as Valkey) holds
//! the OAuth proxy's records and rate limits, and the on-behalf-of cache's second level.
//!
//! This module owns the section's check ([`StoreConfig`] → [`StoreSettings`]) and, with the
//! `redis` feature, the connection every user shares (`redis::Shared`): one
//! `ConnectionManager` (reconnects by itself), the key prefix, a timeout on every command,
//! and the store's health (reachable, errors). What is stored, and how, is each user's
//! business (`oauth::RedisStore`, the proxy's limits).
//!
//! The client is redis-rs (`redis` on crates.io): the maintained async Redis client, on
//! tokio, whose `ConnectionManager` reconnects after a server restart, with cluster support
//! available (`cluster-async`) and Valkey compatible.

#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigProblem;
use crate::setting::{Secret, parse_duration};

/// The connection replicas share, as the store's users hold it (nothing without the
/// `redis` feature).
#[cfg(feature = "redis")]
pub(crate) type SharedStore = std::sync::Arc<redis::Shared>;
/// The connection replicas share: none without the `redis` feature.
#[cfg(not(feature = "redis"))]
#[derive(Clone, Debug)]
pub(crate) enum SharedStore {}

/// `[store]`: a Redis (or Valkey) server the replicas share. Absent: in-memory stores, each
/// process its own.
///
/// ```toml
/// [store]
/// redis_url = "rediss://redis.internal:6380/0"   # TLS; no password in the URL
/// username = "idguard"
/// password_file = "/run/secrets/redis-password"   # or IDGUARD_STORE_PASSWORD
/// key_prefix = "idguard:"
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://host:port/db`, or `rediss://…` for TLS. Required. A password in the URL
    /// is refused (URLs end up in logs and process listings): use `password_file` or
    /// `IDGUARD_STORE_PASSWORD`.
    pub redis_url: Option<String>,
    /// The ACL user name, if the server has users.
    pub username: Option<String>,
    /// The password; set it with `IDGUARD_STORE_PASSWORD` rather than in the file.
    pub password: Option<Secret>,
    /// A file holding the password (one line).
    pub password_file: Option<String>,
    /// What every key starts with, default [`DEFAULT_KEY_PREFIX`]: deployments sharing a
    /// server use different prefixes.
    pub key_prefix: Option<String>,
    /// How long connecting may take, default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Option<String>,
    /// How long one command may take, default [`DEFAULT_COMMAND_TIMEOUT`]; beyond it the
    /// command counts as failed (`503`, never an answer).
    pub command_timeout: Option<String>,
    /// How long a replica may reuse a session it read from the store, default
    /// [`DEFAULT_SESSION_CACHE_TTL`]: a session revoked on another replica is refused here
    /// within this bound. `"0s"` reads the store on every request.
    pub session_cache_ttl: Option<String>,
    /// Secrets (at least 32 bytes each) that seal the on-behalf-of tokens the replicas
    /// share in Redis: the first seals, every one opens (put a new one first, drop the old
    /// one once its tokens expired, within an hour). Default: `oauth.keys`. Required with
    /// `[obo]` when there is no `[oauth]`.
    #[serde(default)]
    pub keys: Vec<Secret>,
}

impl std::fmt::Debug for StoreConfig {
    /// The URL without a password (one in it is refused, but may be there before the check).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self
            .redis_url
            .as_deref()
            .map(|text| match url::Url::parse(text) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("redacted"));
                    }
                    u.to_string()
                }
                Err(_) => "(not a URL)".to_owned(),
            });
        f.debug_struct("StoreConfig")
            .field("redis_url", &url)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("session_cache_ttl", &self.session_cache_ttl)
            .field("keys", &self.keys)
            .finish()
    }
}

/// Default `store.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "idguard:";
/// Default `store.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `store.command_timeout`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `store.session_cache_ttl`.
pub const DEFAULT_SESSION_CACHE_TTL: Duration = Duration::from_secs(5);

/// The longest key prefix accepted.
const MAX_PREFIX: usize = 64;

/// `[store]`, checked.
#[derive(Clone, Debug)]
#[cfg_attr(
    not(feature = "redis"),
    expect(dead_code, reason = "read only by the Redis store")
)]
pub(crate) struct StoreSettings {
    /// The URL, without credentials.
    pub(crate) url: url::Url,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) session_cache_ttl: Duration,
    /// `store.keys`, or `oauth.keys` when it is empty (see [`IdGuardConfig::resolve`]).
    ///
    /// [`IdGuardConfig::resolve`]: crate::config::IdGuardConfig::resolve
    pub(crate) keys: Vec<Secret>,
}

impl StoreConfig {
    /// Checks `[store]`, adding each problem under its key.
    pub(crate) fn check(self, problems: &mut Vec<ConfigProblem>) -> Option<StoreSettings> {
        let before = problems.len();
        let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
        if cfg!(not(feature = "redis")) {
            problem(
                "store",
                "this build of idguard has no Redis support: build it with the `redis` feature (the `idguard` binary has it), or remove `[store]` for in-memory stores".into(),
            );
        }
        let url = match self.redis_url.as_deref().map(str::trim) {
            None | Some("") => {
                problem(
                    "store.redis_url",
                    "required: `redis://host:6379/0`, or `rediss://…` for TLS".into(),
                );
                None
            }
            Some(text) => match url::Url::parse(text) {
                Err(e) => {
                    problem(
                        "store.redis_url",
                        format!("is not a URL ({e}): `redis://host:6379/0` or `rediss://…`"),
                    );
                    None
                }
                Ok(u) if u.password().is_some() => {
                    // Never quote the URL: it holds the password.
                    problem(
                        "store.redis_url",
                        "holds a password: URLs end up in logs and process listings; put the password in `store.password_file` or `IDGUARD_STORE_PASSWORD`".into(),
                    );
                    None
                }
                Ok(u) if !matches!(u.scheme(), "redis" | "rediss") => {
                    problem(
                        "store.redis_url",
                        format!(
                            "`{text}` must start with `redis://`, or `rediss://` for TLS (unix sockets are not supported)"
                        ),
                    );
                    None
                }
                Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                    problem("store.redis_url", format!("`{text}` names no host"));
                    None
                }
                Ok(u)
                    if !u.path().trim_start_matches('/').is_empty()
                        && u.path().trim_start_matches('/').parse::<u16>().is_err() =>
                {
                    problem(
                        "store.redis_url",
                        format!("`{text}`: the path is the database number, like `/0`"),
                    );
                    None
                }
                Ok(u) => Some(u),
            },
        };
        let username = match (self.username, url.as_ref().map(url::Url::username)) {
            (Some(name), Some(in_url)) if !in_url.is_empty() && in_url != name => {
                problem(
                    "store.username",
                    "differs from the user named in `store.redis_url`: name it once".into(),
                );
                None
            }
            (Some(name), _) if name.trim().is_empty() => {
                problem(
                    "store.username",
                    "is empty: remove it, or name the ACL user".into(),
                );
                None
            }
            (Some(name), _) => Some(name),
            (None, Some(in_url)) if !in_url.is_empty() => Some(in_url.to_owned()),
            (None, _) => None,
        };
        let password = match (self.password, self.password_file) {
            (Some(_), Some(_)) => {
                problem(
                    "store.password",
                    "set either `store.password` (IDGUARD_STORE_PASSWORD) or `store.password_file`, not both".into(),
                );
                None
            }
            (Some(p), None) if p.expose().is_empty() => {
                problem(
                    "store.password",
                    "is empty: remove it, or set the password".into(),
                );
                None
            }
            (Some(p), None) => Some(p),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if text.trim().is_empty() => {
                    problem("store.password_file", format!("`{path}` is empty"));
                    None
                }
                Ok(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']))),
                Err(e) => {
                    problem("store.password_file", format!("cannot read `{path}`: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        let key_prefix = self
            .key_prefix
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        if key_prefix.is_empty()
            || key_prefix.len() > MAX_PREFIX
            || key_prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '{' | '}' | '*'))
        {
            problem(
                "store.key_prefix",
                format!(
                    "`{key_prefix}` must be 1 to {MAX_PREFIX} visible characters without spaces, braces or `*`, like `idguard:`"
                ),
            );
        }
        let mut duration =
            |key: &str, value: Option<String>, default: Duration, zero: bool| match value
                .as_deref()
                .map(parse_duration)
            {
                None => default,
                Some(Ok(d)) if d.is_zero() && !zero => {
                    problem(key, "must be longer than zero".into());
                    default
                }
                Some(Ok(d)) => d,
                Some(Err(msg)) => {
                    problem(key, msg);
                    default
                }
            };
        let connect_timeout = duration(
            "store.connect_timeout",
            self.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let command_timeout = duration(
            "store.command_timeout",
            self.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
            false,
        );
        let session_cache_ttl = duration(
            "store.session_cache_ttl",
            self.session_cache_ttl,
            DEFAULT_SESSION_CACHE_TTL,
            true,
        );
        if session_cache_ttl > Duration::from_secs(60) {
            problem(
                "store.session_cache_ttl",
                "is how late a revocation may be seen: at most `60s` (default `5s`)".into(),
            );
        }
        crate::setting::check_secrets(
            "store.keys",
            self.keys.iter().map(Secret::expose),
            crate::seal::MIN_SECRET_BYTES,
            problems,
        );
        let mut url = url?;
        if problems.len() > before {
            return None;
        }
        // The user lives in `username` from here on; the URL is safe to show.
        let _ = url.set_username("");
        Some(StoreSettings {
            url,
            username,
            password,
            key_prefix,
            connect_timeout,
            command_timeout,
            session_cache_ttl,
            keys: self.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_password() {
        let config = StoreConfig {
            redis_url: Some("redis://idguard:hunter2@redis.internal:6379/0".into()),
            password: Some(Secret::new("also-secret")),
            ..StoreConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("also-secret"),
            "{shown}"
        );
        assert!(shown.contains("redis.internal"), "{shown}");
    }

    fn check(config: StoreConfig) -> Result<StoreSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let settings = config.check(&mut problems);
        if problems.is_empty() {
            Ok(settings.unwrap())
        } else {
            Err(problems)
        }
    }

    fn url(u: &str) -> StoreConfig {
        StoreConfig {
            redis_url: Some(u.into()),
            ..StoreConfig::default()
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn defaults_fill_in() {
        let s = check(url("redis://127.0.0.1:6379")).unwrap();
        assert_eq!(s.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(s.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.session_cache_ttl, DEFAULT_SESSION_CACHE_TTL);
        assert!(s.password.is_none() && s.username.is_none());
        let s = check(StoreConfig {
            username: Some("idguard".into()),
            session_cache_ttl: Some("0s".into()),
            command_timeout: Some("250ms".into()),
            ..url("rediss://redis.internal:6380/3")
        })
        .unwrap();
        assert_eq!(s.url.scheme(), "rediss");
        assert_eq!(s.session_cache_ttl, Duration::ZERO);
        assert_eq!(s.command_timeout, Duration::from_millis(250));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_password_in_the_url_is_refused_without_quoting_it() {
        let problems = check(url("redis://user:hunter2-secret@127.0.0.1:6379")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key(), "store.redis_url");
        let text = problems[0].message();
        assert!(text.contains("password_file"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_password_comes_from_a_file_and_never_shows() {
        let dir = std::env::temp_dir().join(format!("idguard-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret-pass\n").unwrap();
        let s = check(StoreConfig {
            password_file: Some(file.display().to_string()),
            ..url("redis://127.0.0.1:6379")
        })
        .unwrap();
        assert_eq!(s.password.as_ref().unwrap().expose(), "s3cret-pass");
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
        let missing = check(StoreConfig {
            password_file: Some(dir.join("nope").display().to_string()),
            ..url("redis://127.0.0.1:6379")
        })
        .unwrap_err();
        assert_eq!(missing[0].key(), "store.password_file");
        let both = check(StoreConfig {
            password: Some(Secret::new("x")),
            password_file: Some(file.display().to_string()),
            ..url("redis://127.0.0.1:6379")
        })
        .unwrap_err();
        assert_eq!(both[0].key(), "store.password");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let problems = check(StoreConfig {
            redis_url: Some("http://127.0.0.1:6379".into()),
            key_prefix: Some("has space".into()),
            connect_timeout: Some("soon".into()),
            command_timeout: Some("0s".into()),
            session_cache_ttl: Some("10m".into()),
            ..StoreConfig::default()
        })
        .unwrap_err();
        let mut keys: Vec<&str> = problems.iter().map(ConfigProblem::key).collect();
        keys.retain(|k| *k != "store");
        assert_eq!(
            keys,
            [
                "store.redis_url",
                "store.key_prefix",
                "store.connect_timeout",
                "store.command_timeout",
                "store.session_cache_ttl"
            ]
        );
        let problems = check(StoreConfig::default()).unwrap_err();
        assert!(problems.iter().any(|p| p.key() == "store.redis_url"));
        let problems = check(url("redis://127.0.0.1:6379/x")).unwrap_err();
        assert!(problems.iter().any(|p| p.key() == "store.redis_url"));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_environment_sets_the_section_and_the_password() {
        use crate::config::IdGuardConfig;
        use crate::config::testing::env;
        let loaded = IdGuardConfig::read(
            None,
            env(&[
                ("IDGUARD_STORE_REDIS_URL", "redis://127.0.0.1:6379/2"),
                ("IDGUARD_STORE_PASSWORD", "12345678"),
                ("IDGUARD_STORE_COMMAND_TIMEOUT", "300ms"),
            ]),
        )
        .unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let s = check(loaded.config.store.unwrap()).unwrap();
        assert_eq!(
            s.password.unwrap().expose(),
            "12345678",
            "a number read as text"
        );
        assert_eq!(s.command_timeout, Duration::from_millis(300));
        assert_eq!(s.url.path(), "/2");
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_feature_the_section_is_refused() {
        let problems = check(url("redis://127.0.0.1:6379")).unwrap_err();
        assert_eq!(problems[0].key(), "store");
    }
}
