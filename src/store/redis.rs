//! The Redis connection the replicas' shared state goes through: one `ConnectionManager`
//! (multiplexed; reconnects by itself after an I/O error, e.g. a server restart), the key
//! prefix, a timeout on every command, and the store's health for `/healthz` and
//! `/metrics`. A failed or late command is an [`Unavailable`], which every caller answers
//! with `503`: never an answer, never a skipped check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, FromRedisValue, IntoConnectionInfo};

use super::StoreSettings;

/// A store command that failed, timed out, or found the server unreachable. Its text names
/// the failure, never a key's value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub(crate) String);

/// Seconds between two logged store failures (the rest are counted).
const LOG_EVERY_SECS: u64 = 10;

/// The shared connection and what every user of it needs.
pub(crate) struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// The URL without credentials, for logs and `Debug`.
    shown: String,
    errors: AtomicU64,
    reachable: AtomicBool,
    /// Unix seconds of the last logged failure.
    logged_at: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &self.shown)
            .field("key_prefix", &self.prefix)
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The connection `settings` describe. Connects lazily: no I/O here, so a server that
    /// is down at start delays nothing but the first command (which answers `503`).
    pub(crate) fn new(settings: &StoreSettings) -> Result<Self, String> {
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("`store.redis_url`: {e}"))?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = &settings.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &settings.password {
            redis = redis.set_password(password.expose());
        }
        let client = Client::open(info.set_redis_settings(redis))
            .map_err(|e| format!("`store.redis_url`: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            // A reconnection is tried again on the next command; keep each attempt short.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        Ok(Self {
            conn,
            prefix: settings.key_prefix.clone(),
            timeout: settings.command_timeout,
            shown: settings.url.to_string(),
            errors: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            logged_at: AtomicU64::new(0),
        })
    }

    /// A clone of the connection (cheap: the manager is shared).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// What every key starts with (`store.key_prefix`).
    pub(crate) fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// `store.command_timeout`.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// `{prefix}{parts joined by ':'}`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// Runs `cmd` under the command timeout.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.outcome(result)
    }

    /// Runs a script under the command timeout (`EVALSHA`, loading it after a restart).
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        let result =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await;
        self.outcome(result)
    }

    fn outcome<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Unavailable> {
        let failure = match result {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(target: "idguard::store", url = %self.shown, "Redis store reachable again");
                }
                return Ok(value);
            }
            Ok(Err(e)) => format!("Redis command failed: {}", e.kind_name()),
            Err(_) => format!(
                "Redis command took longer than `store.command_timeout` ({} ms)",
                self.timeout.as_millis()
            ),
        };
        self.failed(&failure);
        Err(Unavailable(failure))
    }

    /// Counts a failure and logs it, at most once per [`LOG_EVERY_SECS`].
    fn failed(&self, failure: &str) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        self.reachable.store(false, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.logged_at.load(Ordering::Relaxed);
        if now >= last.saturating_add(LOG_EVERY_SECS)
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(target: "idguard::store", url = %self.shown, errors, "{failure}: the OAuth proxy and on-behalf-of answer 503 until the store is back (further failures within {LOG_EVERY_SECS}s are counted, not logged)");
        }
    }

    /// Sends `PING` (the health probe): whether the server answered.
    pub(crate) async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
    }

    /// Whether the last command reached the server, and the failures so far.
    pub(crate) fn health(&self) -> (bool, u64) {
        (
            self.reachable.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for redis::RedisError {
    /// The class of failure, never the server's text (which may quote a value).
    fn kind_name(&self) -> &'static str {
        if self.is_timeout() {
            "timed out"
        } else if self.is_connection_refusal() {
            "connection refused"
        } else if self.is_io_error() || self.is_connection_dropped() {
            "connection lost"
        } else if self.kind() == redis::ErrorKind::AuthenticationFailed {
            "authentication failed"
        } else {
            match self.code() {
                Some("OOM") => "the server is out of memory (maxmemory)",
                Some("NOPERM") => "the user lacks a permission",
                Some("READONLY") => "the server is a read-only replica",
                Some("NOSCRIPT") => "script not loaded",
                Some(_) => "the server refused the command",
                None => "unexpected reply",
            }
        }
    }
}
