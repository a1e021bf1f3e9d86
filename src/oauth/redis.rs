//! [`RedisStore`]: the OAuth proxy's records in Redis, shared by every replica.
//!
//! - Values arrive sealed (AES-256-GCM, bound to kind and key) and codes under their
//!   SHA-256, as with every store: Redis is trusted for availability only.
//! - Expiry is Redis's (`SET … PX`): an expired record is gone for every replica at once.
//! - [`take`](OAuthStore::take) is `GETDEL` (in a script that also updates the kind's
//!   index): a state or code is redeemed once across replicas.
//! - [`swap`](OAuthStore::swap) is a compare-and-set script: refresh-token rotation is
//!   exact across replicas, and a replayed generation revokes the family everywhere.
//! - Limits per kind fail closed: a value larger than the kind's bound, or a new record
//!   when the kind already holds its count of live records, is refused (the proxy answers
//!   `503`) instead of evicting anything. Each kind's count is a sorted set of its keys by
//!   deadline (`ZCARD` after dropping the expired ones), so a flood of unfinished sign-ins
//!   cannot crowd out sessions. The server itself must run `maxmemory-policy noeviction`
//!   (docs/production.md): an evicting server could drop a session or a used-code marker.
//! - Every command runs under `store.command_timeout`; a failure is a
//!   [`StoreError`], answered `503`, never a skipped check.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::store::{OAuthStore, RecordKind, StoreError, StoreFuture};
use crate::error::ConfigError;
use crate::store::StoreConfig;
use crate::store::redis::{Shared, Unavailable};

/// The OAuth proxy's state in Redis (or Valkey), shared by replicas (feature `redis`).
///
/// [`IdGuard`](crate::IdGuard) builds one itself when the configuration has `[store]`;
/// build one yourself for [`IdGuardBuilder::oauth_store`](crate::IdGuardBuilder::oauth_store).
///
/// ```no_run
/// # fn run() -> Result<(), idguard::ConfigError> {
/// let store = idguard::oauth::RedisStore::new(idguard::StoreConfig {
///     redis_url: Some("redis://127.0.0.1:6379/0".into()),
///     ..Default::default()
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

/// The largest sealed value each kind accepts, in [`KINDS`](super::store) order: a pending
/// request, the Entra leg (a pending request and a claims challenge), a code, a session
/// (two Entra tokens).
const MAX_VALUE_BYTES: [usize; 4] = [16 * 1024, 32 * 1024, 8 * 1024, 64 * 1024];
/// Live records each kind may hold, in the same order.
const MAX_RECORDS: [u64; 4] = [200_000, 200_000, 200_000, 2_000_000];

fn index(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Pending => 0,
        RecordKind::State => 1,
        RecordKind::Code => 2,
        RecordKind::Session => 3,
    }
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Pending => "pending",
        RecordKind::State => "state",
        RecordKind::Code => "code",
        RecordKind::Session => "session",
    }
}

/// The server's clock in milliseconds (scripts may read `TIME` since Redis 5: effects
/// replication).
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// KEYS: record, index. ARGV: value, ttl ms, max records. 1 stored, 0 full.
fn put_script() -> Script {
    Script::new(&format!(
        "{NOW}
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        if not redis.call('ZSCORE', KEYS[2], KEYS[1]) and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
          return 0
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1])
        return 1"
    ))
}

/// KEYS: record, index. ARGV: current, new, ttl ms. 1 swapped, 0 changed meanwhile.
fn swap_script() -> Script {
    Script::new(&format!(
        "{NOW}
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
          return 0
        end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), KEYS[1])
        return 1"
    ))
}

/// KEYS: record, index. The value, removed.
const TAKE: &str =
    "local v = redis.call('GETDEL', KEYS[1]) redis.call('ZREM', KEYS[2], KEYS[1]) return v";

/// KEYS: record, index.
const REMOVE: &str = "redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], KEYS[1]) return 1";

/// The scripts, hashed once.
struct Scripts {
    put: Script,
    swap: Script,
    take: Script,
    remove: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        put: put_script(),
        swap: swap_script(),
        take: Script::new(TAKE),
        remove: Script::new(REMOVE),
    })
}

/// Refuses a value larger than its kind allows (fail closed: nothing is evicted for it).
fn fits(kind: RecordKind, value: &[u8]) -> Result<(), StoreError> {
    let max = MAX_VALUE_BYTES.get(index(kind)).copied().unwrap_or(0);
    if value.len() > max {
        return Err(StoreError(format!(
            "a {} record of {} bytes is larger than the {max} bytes its kind allows",
            kind_name(kind),
            value.len()
        )));
    }
    Ok(())
}

fn failed(e: Unavailable) -> StoreError {
    StoreError(e.0)
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// A store for `[store]`; it connects on first use (no I/O here) and reconnects by
    /// itself when the server comes back.
    ///
    /// # Errors
    ///
    /// The section's problems, each naming its key (`store.redis_url`, …).
    pub fn new(config: StoreConfig) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let settings = config.check(&mut problems);
        let shared = settings
            .filter(|_| problems.is_empty())
            .map(|s| Shared::new(&s));
        match shared {
            Some(Ok(shared)) => Ok(Self::from_shared(Arc::new(shared))),
            Some(Err(e)) => Err(ConfigError::from_problems(vec![
                crate::error::ConfigProblem::new("store.redis_url", e),
            ])),
            None => Err(ConfigError::from_problems(problems)),
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The connection (a clone of the shared manager), for other users of the store
    /// (the on-behalf-of second level).
    #[allow(
        dead_code,
        reason = "for the on-behalf-of second level (`obo/shared.rs`), built alongside"
    )]
    pub(crate) fn connection(&self) -> redis::aio::ConnectionManager {
        self.shared.connection()
    }

    /// `store.key_prefix`.
    #[allow(
        dead_code,
        reason = "for the on-behalf-of second level (`obo/shared.rs`), built alongside"
    )]
    pub(crate) fn key_prefix(&self) -> &str {
        self.shared.key_prefix()
    }

    /// The record's key and its kind's index.
    fn keys(&self, kind: RecordKind, key: &str) -> (String, String) {
        (
            self.record(kind, key),
            self.shared.key(&["oauth", "index", kind_name(kind)]),
        )
    }

    fn record(&self, kind: RecordKind, key: &str) -> String {
        self.shared.key(&["oauth", kind_name(kind), key])
    }
}

impl OAuthStore for RedisStore {
    fn put(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'_, ()> {
        let (record, idx) = self.keys(kind, key);
        Box::pin(async move {
            fits(kind, &value)?;
            let limit = MAX_RECORDS.get(index(kind)).copied().unwrap_or(0);
            let mut inv = scripts().put.prepare_invoke();
            inv.key(&record)
                .key(&idx)
                .arg(value)
                .arg(millis(ttl))
                .arg(limit);
            let stored: i64 = self.shared.script(inv).await.map_err(failed)?;
            if stored == 1 {
                Ok(())
            } else {
                Err(StoreError(format!(
                    "the store holds its limit of {limit} live {} records",
                    kind_name(kind)
                )))
            }
        })
    }

    fn get(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let record = self.record(kind, key);
        Box::pin(async move {
            self.shared
                .query(redis::cmd("GET").arg(&record))
                .await
                .map_err(failed)
        })
    }

    fn take(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let (record, idx) = self.keys(kind, key);
        Box::pin(async move {
            let mut inv = scripts().take.prepare_invoke();
            inv.key(&record).key(&idx);
            self.shared.script(inv).await.map_err(failed)
        })
    }

    fn swap<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        current: &'a [u8],
        new: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let (record, idx) = self.keys(kind, key);
        Box::pin(async move {
            fits(kind, &new)?;
            let mut inv = scripts().swap.prepare_invoke();
            inv.key(&record)
                .key(&idx)
                .arg(current)
                .arg(new)
                .arg(millis(ttl));
            let swapped: i64 = self.shared.script(inv).await.map_err(failed)?;
            Ok(swapped == 1)
        })
    }

    fn remove(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, ()> {
        let (record, idx) = self.keys(kind, key);
        Box::pin(async move {
            let mut inv = scripts().remove.prepare_invoke();
            inv.key(&record).key(&idx);
            let _: i64 = self.shared.script(inv).await.map_err(failed)?;
            Ok(())
        })
    }
}
