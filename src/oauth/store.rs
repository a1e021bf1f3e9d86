//! Where the OAuth proxy keeps its short-lived state: pending authorizations, the state
//! of the Entra leg, authorization codes, refresh tokens and sessions (the Entra tokens).
//!
//! Values are opaque bytes; what must stay secret (the Entra tokens) is sealed before it
//! reaches the store, and secrets used as lookup keys (codes, refresh tokens) are stored
//! under their SHA-256. The default [`MemoryStore`] is bounded and expires entries; a
//! deployment with several replicas plugs in a shared store (Redis, a database) by
//! implementing [`OAuthStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A boxed future returned by [`OAuthStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Which kind of record a key names (a namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// An authorization request waiting for the user's consent (10 minutes).
    Pending,
    /// The Entra leg of an approved request, by its `state` (10 minutes, single use).
    State,
    /// An authorization code issued to a client (single use).
    Code,
    /// A redeemed code, kept to detect replays.
    UsedCode,
    /// A refresh token issued to a client (single use: rotated on every refresh).
    RefreshToken,
    /// A rotated refresh token, kept to detect reuse.
    UsedRefreshToken,
    /// A session: the sealed Entra tokens behind a refresh-token family.
    Session,
}

/// A store failure (the backend is unreachable, a value cannot be written).
#[derive(Debug, thiserror::Error)]
#[error("OAuth state store: {0}")]
pub struct StoreError(pub String);

/// Storage for the proxy's state. Every method must be safe to call concurrently;
/// [`take`](Self::take) must be atomic (two concurrent takes of one key: at most one gets
/// the value), which is what makes codes, states and refresh tokens single use.
pub trait OAuthStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `value` under `(kind, key)` for `ttl`, replacing any previous value.
    fn put(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'_, ()>;
    /// The value under `(kind, key)`, if present and not expired.
    fn get(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Removes and returns the value under `(kind, key)`, atomically.
    fn take(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Removes the value under `(kind, key)`, if any.
    fn remove(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, ()>;
}

/// The in-memory [`OAuthStore`]: bounded (least recently used entries go first) and
/// expiring. State is lost on restart and not shared between replicas.
pub struct MemoryStore {
    cache: moka::sync::Cache<(RecordKind, String), Entry>,
}

#[derive(Clone)]
struct Entry {
    value: std::sync::Arc<[u8]>,
    ttl: Duration,
}

struct PerEntry;

impl moka::Expiry<(RecordKind, String), Entry> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &(RecordKind, String),
        value: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &(RecordKind, String),
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Entries a default [`MemoryStore`] holds.
pub const DEFAULT_MEMORY_STORE_CAPACITY: u64 = 100_000;

impl MemoryStore {
    /// A store holding at most `capacity` records.
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_STORE_CAPACITY)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl OAuthStore for MemoryStore {
    fn put(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'_, ()> {
        self.cache.insert(
            (kind, key.to_owned()),
            Entry {
                value: value.into(),
                ttl,
            },
        );
        Box::pin(std::future::ready(Ok(())))
    }

    fn get(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let found = self
            .cache
            .get(&(kind, key.to_owned()))
            .map(|e| e.value.to_vec());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn take(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let found = self
            .cache
            .remove(&(kind, key.to_owned()))
            .map(|e| e.value.to_vec());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn remove(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, ()> {
        self.cache.invalidate(&(kind, key.to_owned()));
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn take_is_single_use_and_kinds_are_separate() {
        let store = MemoryStore::default();
        let hour = Duration::from_secs(3600);
        store
            .put(RecordKind::Code, "k", b"v".to_vec(), hour)
            .await
            .unwrap();
        assert!(store.get(RecordKind::State, "k").await.unwrap().is_none());
        assert_eq!(
            store.get(RecordKind::Code, "k").await.unwrap().unwrap(),
            b"v"
        );
        assert_eq!(
            store.take(RecordKind::Code, "k").await.unwrap().unwrap(),
            b"v"
        );
        assert!(store.take(RecordKind::Code, "k").await.unwrap().is_none());
    }
}
