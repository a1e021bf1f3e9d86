//! The second level of the on-behalf-of token cache: Redis (or a wire-compatible server
//! such as Valkey), shared by every replica.
//!
//! moka stays the first level. On a first-level miss the token is read from Redis; on a
//! Redis miss one replica takes a short lock (`SET NX PX`), exchanges, writes the token with
//! `PX` = its remaining lifetime and releases the lock (compare-and-delete); the others poll
//! Redis for the token meanwhile, and take the lock themselves (and exchange) once its TTL
//! has elapsed, that is when its holder died. Tokens are sealed (AES-256-GCM, see
//! `crate::seal`) under a key derived with HKDF from the configured keys, bound to the
//! Redis key they live under: a value copied to another key does not open, so a token is
//! never served for another caller, scope set, client or tenant.
//!
//! Redis unreachable: no exchange around it; the caller gets
//! [`OboError::SharedCacheUnavailable`] (`503` with `Retry-After`). The connection manager
//! reconnects by itself, and answers resume when Redis is back.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::hkdf;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::OboError;
use super::cache::{CacheKey, Cached};
use super::client::{Load, OboClient, OboToken, SHARED_HITS};
use crate::error::{ConfigError, ConfigProblem};
use crate::seal;
use crate::setting::Secret;

/// How long the lock a replica takes to exchange a token lives, unless released earlier:
/// how long the others wait before exchanging themselves when its holder died.
pub const DEFAULT_SHARED_LOCK_TTL: Duration = Duration::from_secs(5);

/// Associated data of every sealed token: this label, then the Redis key.
const AAD_LABEL: &[u8] = b"idguard/obo/token/v1\0";
/// HKDF salt: keys derived from the same secrets as the OAuth proxy's differ from them.
const SALT: &[u8] = b"idguard obo shared cache";
/// The first pause of a replica waiting for another's exchange; it doubles up to
/// [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);
/// Deletes the lock only if it still holds our value (it may have expired and been taken).
const UNLOCK: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The on-behalf-of token cache's second level, in Redis: give it to
/// [`IdGuardBuilder::obo_shared_cache`](crate::IdGuardBuilder::obo_shared_cache) on every
/// replica. Cloning is cheap.
///
/// `Debug` shows the key prefix and the key ids, never a key.
///
/// # Security
///
/// Redis is trusted for availability only: tokens are sealed under a key derived from
/// `keys` and bound to their Redis key, never stored or named in clear.
#[derive(Clone)]
pub struct SharedTokenCache {
    inner: Arc<Inner>,
    lock_ttl: Duration,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    /// Current key first: it seals, every key opens.
    keys: Vec<(String, LessSafeKey)>,
    command_timeout: Duration,
    unlock: redis::Script,
    /// The binary's `[store]` connection, when built from it: commands go through it, so
    /// their failures show in the store's health (`/healthz`, `/metrics`).
    store: Option<crate::store::SharedStore>,
}

impl fmt::Debug for SharedTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.inner.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SharedTokenCache")
            .field("prefix", &self.inner.prefix)
            .field("key_ids", &ids)
            .field("command_timeout", &self.inner.command_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .finish_non_exhaustive()
    }
}

/// What Redis holds, sealed.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The access token.
    t: String,
    /// The granted scopes.
    s: String,
    /// Entra's `expires_in`, seconds.
    e: u64,
    /// When it stops being served, Unix milliseconds.
    d: u64,
    /// Entra's proactive-refresh point (`refresh_in`), Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<u64>,
}

impl SharedTokenCache {
    /// A second level on `connection`, its keys named `{key_prefix}obo:{hex}` (the lock
    /// `{key_prefix}obo-lock:{hex}`), tokens sealed under a key derived from `keys` (at
    /// least 32 bytes each; the first seals, every one opens, so a new key goes first while
    /// the old one still opens what it sealed). Every Redis command gets `command_timeout`;
    /// the lock lives [`DEFAULT_SHARED_LOCK_TTL`] (see [`with_lock_ttl`](Self::with_lock_ttl)).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `keys` is empty or a key is shorter than 32 bytes.
    pub fn new(
        connection: ConnectionManager,
        key_prefix: &str,
        keys: &[Secret],
        command_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        Self::build(connection, key_prefix, keys, command_timeout, None)
    }

    fn build(
        connection: ConnectionManager,
        key_prefix: &str,
        keys: &[Secret],
        command_timeout: Duration,
        store: Option<crate::store::SharedStore>,
    ) -> Result<Self, ConfigError> {
        let bad = |message: &str| {
            ConfigError::from_problems(vec![ConfigProblem::new("obo shared cache keys", message)])
        };
        if keys.is_empty() {
            return Err(bad("at least one key is needed to seal tokens in redis"));
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT);
        let mut derived = Vec::with_capacity(keys.len());
        for key in keys {
            let secret = key.expose().as_bytes();
            if secret.len() < seal::MIN_SECRET_BYTES {
                return Err(bad("each key must be at least 32 bytes"));
            }
            derived.push(
                seal::key_from(&salt.extract(secret))
                    .ok_or_else(|| bad("cannot derive a sealing key"))?,
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                prefix: key_prefix.to_owned(),
                keys: derived,
                command_timeout,
                unlock: redis::Script::new(UNLOCK),
                store,
            }),
            lock_ttl: DEFAULT_SHARED_LOCK_TTL,
        })
    }

    /// The second level `[store]` describes: its connection, key prefix and command
    /// timeout, tokens sealed under `store.keys` (or `oauth.keys`).
    pub(crate) fn from_store(
        store: &crate::store::SharedStore,
        keys: &[Secret],
    ) -> Result<Self, ConfigError> {
        Self::build(
            store.connection(),
            store.key_prefix(),
            keys,
            store.command_timeout(),
            Some(Arc::clone(store)),
        )
    }

    /// How long a replica's exchange lock lives (default [`DEFAULT_SHARED_LOCK_TTL`]):
    /// longer than a usual exchange, short enough that the others do not wait long for a
    /// replica that died holding it. At least 1 ms.
    #[must_use]
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The token for `key`: from Redis, else from `fetch` (one replica at a time per key),
    /// written to Redis for the others. For a [`Load::Refresh`], a token in Redis that is
    /// itself due for a refresh counts as absent.
    pub(crate) async fn load(
        &self,
        key: &CacheKey,
        client: &OboClient,
        why: Load,
        fetch: impl Future<Output = Result<Cached, OboError>>,
    ) -> Result<Cached, OboError> {
        let (name, lock) = self.names(key);
        if let Some(hit) = self.read(&name, client, why).await? {
            return Ok(hit);
        }
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let give_up = Instant::now() + self.lock_ttl.saturating_mul(2);
        let mut pause = POLL_FIRST;
        let locked = loop {
            if self.try_lock(&lock, &holder).await? {
                // Written between our read and our lock?
                if let Some(hit) = self.read(&name, client, why).await? {
                    self.unlock(&lock, &holder).await;
                    return Ok(hit);
                }
                break true;
            }
            if Instant::now() >= give_up {
                tracing::warn!(target: "idguard::obo", "another replica holds the exchange lock too long; exchanging here");
                break false;
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(POLL_MAX);
            if let Some(hit) = self.read(&name, client, why).await? {
                return Ok(hit);
            }
        };
        let fetched = fetch.await;
        if let Ok(fresh) = &fetched {
            // The token is ours either way; a failed write only costs the others an exchange.
            let _ = self.write(&name, fresh, client).await;
        }
        if locked {
            self.unlock(&lock, &holder).await;
        }
        fetched
    }

    fn names(&self, key: &CacheKey) -> (String, String) {
        let hex = key.hex();
        let prefix = &self.inner.prefix;
        (
            format!("{prefix}obo:{hex}"),
            format!("{prefix}obo-lock:{hex}"),
        )
    }

    async fn read(
        &self,
        name: &str,
        client: &OboClient,
        why: Load,
    ) -> Result<Option<Cached>, OboError> {
        let sealed: Option<String> = self.query(redis::cmd("GET").arg(name)).await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let record = seal::open(|id| self.key(id), &aad(name), &sealed)
            .and_then(|plain| serde_json::from_slice::<Record>(&plain).ok());
        let Some(record) = record else {
            tracing::warn!(target: "idguard::obo", "a token in the shared cache does not open (sealed by a key no longer configured, or altered); exchanging anew");
            return Ok(None);
        };
        let now_ms = client.unix_now_ms();
        let left = record.d.saturating_sub(now_ms);
        if left == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let ttl = Duration::from_millis(left);
        let deadline = now + ttl;
        let refresh_at = record
            .r
            .map(|r| now + Duration::from_millis(r.saturating_sub(now_ms)))
            .filter(|at| *at < deadline);
        if why == Load::Refresh && refresh_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        client.count(SHARED_HITS);
        Ok(Some(Cached {
            token: OboToken::new(record.t, record.s, Duration::from_secs(record.e)),
            deadline,
            refresh_at,
            ttl,
            refreshing: Arc::new(AtomicBool::new(false)),
        }))
    }

    async fn write(&self, name: &str, fresh: &Cached, client: &OboClient) -> Result<(), OboError> {
        let now = Instant::now();
        let left = millis(fresh.deadline.saturating_duration_since(now));
        if left == 0 {
            return Ok(());
        }
        let now_ms = client.unix_now_ms();
        let record = Record {
            t: fresh.token.expose_secret().to_owned(),
            s: fresh.token.scope().to_owned(),
            e: fresh.token.expires_in().as_secs(),
            d: now_ms.saturating_add(left),
            r: fresh
                .refresh_at
                .map(|at| now_ms.saturating_add(millis(at.saturating_duration_since(now)))),
        };
        let sealed = serde_json::to_vec(&record).ok().and_then(|plain| {
            let (id, key) = self.inner.keys.first()?;
            seal::seal(id, key, &aad(name), &plain)
        });
        let Some(sealed) = sealed else {
            tracing::error!(target: "idguard::obo", "cannot seal a token for the shared cache; not shared");
            return Ok(());
        };
        self.query::<()>(redis::cmd("SET").arg(name).arg(sealed).arg("PX").arg(left))
            .await
    }

    async fn try_lock(&self, lock: &str, holder: &str) -> Result<bool, OboError> {
        let ttl = millis(self.lock_ttl).max(1);
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(lock)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Best effort: a lock left behind expires with its TTL.
    async fn unlock(&self, lock: &str, holder: &str) {
        let mut connection = self.inner.connection.clone();
        let mut call = self.inner.unlock.key(lock);
        call.arg(holder);
        let done = tokio::time::timeout(
            self.inner.command_timeout,
            call.invoke_async::<i64>(&mut connection),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::debug!(target: "idguard::obo", "cannot release an exchange lock; it expires with its ttl");
        }
    }

    /// One command, within the command timeout; a failure is logged once here and becomes
    /// [`OboError::SharedCacheUnavailable`].
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, OboError> {
        if let Some(store) = &self.inner.store {
            // Counted and logged (rate-limited) by the store.
            return store
                .query(command)
                .await
                .map_err(|_| OboError::SharedCacheUnavailable);
        }
        let mut connection = self.inner.connection.clone();
        match tokio::time::timeout(
            self.inner.command_timeout,
            command.query_async::<T>(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!(target: "idguard::obo", kind = ?e.kind(), "redis unreachable: on-behalf-of answers 503 until it is back");
                Err(OboError::SharedCacheUnavailable)
            }
            Err(_) => {
                tracing::error!(target: "idguard::obo", timeout_ms = millis(self.inner.command_timeout), "redis did not answer in time: on-behalf-of answers 503 until it is back");
                Err(OboError::SharedCacheUnavailable)
            }
        }
    }

    fn key(&self, id: &str) -> Option<&LessSafeKey> {
        self.inner
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, key)| key)
    }
}

fn aad(name: &str) -> Vec<u8> {
    [AAD_LABEL, name.as_bytes()].concat()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
