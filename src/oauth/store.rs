//! Where the OAuth proxy keeps its short-lived state: pending authorizations, the state
//! of the Entra leg, authorization codes, and sessions (the Entra tokens behind a client's
//! tokens, with the refresh-token generation).
//!
//! Every value is sealed by the proxy (AES-256-GCM, bound to its kind and key) before it
//! reaches the store, and secrets used as lookup keys (codes) are stored under their
//! SHA-256: a store needs to be trusted for availability, not for confidentiality or
//! integrity. The default [`MemoryStore`] is bounded in bytes per kind and expires
//! entries; a deployment with several replicas plugs in a shared store (Redis, a database)
//! by implementing [`OAuthStore`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

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
    /// An authorization code issued to a client (single use; kept, marked used, to
    /// detect replays).
    Code,
    /// A session: the sealed Entra tokens behind a refresh-token family.
    Session,
}

const KINDS: [RecordKind; 4] = [
    RecordKind::Pending,
    RecordKind::State,
    RecordKind::Code,
    RecordKind::Session,
];

/// A store failure: the backend is unreachable or full. The proxy answers it with
/// `temporarily_unavailable` and never treats it as an answer.
#[derive(Debug, thiserror::Error)]
#[error("OAuth state store: {0}")]
pub struct StoreError(pub String);

/// Storage for the proxy's state. Every method must be safe to call concurrently, and an
/// expired value must never be returned. [`take`](Self::take) and
/// [`swap`](Self::swap) must be atomic: they are what make states and codes single use
/// and refresh-token rotation exact.
pub trait OAuthStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `value` under `(kind, key)` for `ttl`, replacing any previous value. A full
    /// store must fail rather than drop other records silently.
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
    /// Replaces the value under `(kind, key)` with `new` (for `ttl`) only if it is still
    /// `current`; `false` when it was changed or removed meanwhile (compare-and-set).
    fn swap<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        current: &'a [u8],
        new: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Removes the value under `(kind, key)`, if any.
    fn remove(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, ()>;
}

/// The in-memory [`OAuthStore`]: bounded in bytes for each kind of record, so a flood of
/// unfinished sign-ins cannot crowd out sessions; expired entries are never returned and
/// are swept when space runs out; a full kind refuses new records (fail closed) instead of
/// evicting live ones. State is lost on restart and not shared between replicas.
pub struct MemoryStore {
    shelves: [RwLock<Shelf>; 4],
}

struct Shelf {
    map: HashMap<String, Slot>,
    bytes: usize,
    budget: usize,
    /// No sweep before this instant after one that freed too little (bounds the work a
    /// flood can cause).
    next_sweep: Instant,
}

struct Slot {
    value: Vec<u8>,
    deadline: Instant,
}

/// Bytes a default [`MemoryStore`] may hold (all kinds together).
pub const DEFAULT_MEMORY_STORE_BYTES: u64 = 256 * 1024 * 1024;

/// Per mille of the budget for each kind, in [`KINDS`] order.
const SHARES: [usize; 4] = [150, 150, 100, 600];
/// Accounting overhead per entry (map slot, key and value headers).
const ENTRY_OVERHEAD: usize = 96;

impl MemoryStore {
    /// A store holding at most `max_bytes` (keys and values, approximately).
    pub fn new(max_bytes: u64) -> Self {
        let total = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let now = Instant::now();
        Self {
            shelves: SHARES.map(|share| {
                RwLock::new(Shelf {
                    map: HashMap::new(),
                    bytes: 0,
                    budget: total / 1000 * share,
                    next_sweep: now,
                })
            }),
        }
    }

    fn shelf(&self, kind: RecordKind) -> &RwLock<Shelf> {
        let [pending, state, code, session] = &self.shelves;
        match kind {
            RecordKind::Pending => pending,
            RecordKind::State => state,
            RecordKind::Code => code,
            RecordKind::Session => session,
        }
    }
}

impl MemoryStore {
    fn read(&self, kind: RecordKind) -> std::sync::RwLockReadGuard<'_, Shelf> {
        self.shelf(kind)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, kind: RecordKind) -> std::sync::RwLockWriteGuard<'_, Shelf> {
        self.shelf(kind)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Shelf {
    /// Makes room for `needed` more bytes, sweeping expired entries when short.
    fn reserve(&mut self, needed: usize, now: Instant) -> Result<(), StoreError> {
        if self.bytes + needed <= self.budget {
            return Ok(());
        }
        if now >= self.next_sweep {
            let mut freed = 0;
            self.map.retain(|k, slot| {
                let keep = slot.deadline > now;
                if !keep {
                    freed += size(k, &slot.value);
                }
                keep
            });
            self.bytes -= freed;
            if self.bytes + needed <= self.budget {
                return Ok(());
            }
            self.next_sweep = now + Duration::from_secs(1);
        }
        Err(StoreError(
            "the in-memory store is full for this kind of record".into(),
        ))
    }

    fn insert(&mut self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let old = self.map.remove(key).map_or(0, |s| size(key, &s.value));
        self.bytes -= old;
        self.reserve(size(key, &value), now)?;
        self.bytes += size(key, &value);
        self.map.insert(
            key.to_owned(),
            Slot {
                value,
                deadline: now + ttl,
            },
        );
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.bytes -= size(key, &slot.value);
        Some(slot)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_STORE_BYTES)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemoryStore");
        for (kind, shelf) in KINDS.iter().zip(&self.shelves) {
            if let Ok(s) = shelf.read() {
                d.field(&format!("{kind:?}"), &(s.map.len(), s.bytes, s.budget));
            }
        }
        d.finish()
    }
}

fn ready<T: Send + 'static>(value: Result<T, StoreError>) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl OAuthStore for MemoryStore {
    fn put(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'_, ()> {
        let mut shelf = self.write(kind);
        ready(shelf.insert(key, value, ttl))
    }

    fn get(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let shelf = self.read(kind);
        let now = Instant::now();
        let found = shelf
            .map
            .get(key)
            .filter(|s| s.deadline > now)
            .map(|s| s.value.clone());
        ready(Ok(found))
    }

    fn take(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let mut shelf = self.write(kind);
        let now = Instant::now();
        let found = shelf
            .remove(key)
            .filter(|s| s.deadline > now)
            .map(|s| s.value);
        ready(Ok(found))
    }

    fn swap<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        current: &'a [u8],
        new: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let mut shelf = self.write(kind);
        let now = Instant::now();
        let same = shelf
            .map
            .get(key)
            .is_some_and(|s| s.deadline > now && s.value == current);
        if !same {
            return ready(Ok(false));
        }
        ready(shelf.insert(key, new, ttl).map(|()| true))
    }

    fn remove(&self, kind: RecordKind, key: &str) -> StoreFuture<'_, ()> {
        let mut shelf = self.write(kind);
        shelf.remove(key);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn take_is_single_use_and_kinds_are_separate() {
        let store = MemoryStore::default();
        store
            .put(RecordKind::Code, "k", b"v".to_vec(), HOUR)
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

    #[tokio::test(start_paused = true)]
    async fn expired_values_are_never_returned() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(120);
        for key in ["a", "b", "c"] {
            store
                .put(RecordKind::Code, key, b"v".to_vec(), ttl)
                .await
                .unwrap();
        }
        tokio::time::advance(ttl + Duration::from_secs(1)).await;
        assert!(store.get(RecordKind::Code, "a").await.unwrap().is_none());
        assert!(store.take(RecordKind::Code, "b").await.unwrap().is_none());
        assert!(
            !store
                .swap(RecordKind::Code, "c", b"v", b"w".to_vec(), ttl)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn swap_is_compare_and_set() {
        let store = MemoryStore::default();
        store
            .put(RecordKind::Session, "s", b"1".to_vec(), HOUR)
            .await
            .unwrap();
        assert!(
            store
                .swap(RecordKind::Session, "s", b"1", b"2".to_vec(), HOUR)
                .await
                .unwrap()
        );
        assert!(
            !store
                .swap(RecordKind::Session, "s", b"1", b"3".to_vec(), HOUR)
                .await
                .unwrap()
        );
        assert_eq!(
            store.get(RecordKind::Session, "s").await.unwrap().unwrap(),
            b"2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_kind_refuses_until_entries_expire_and_leaves_others_alone() {
        // 10 000 bytes: Pending gets 1 500.
        let store = MemoryStore::new(10_000);
        let ttl = Duration::from_secs(600);
        let value = vec![0u8; 400];
        let mut stored = 0;
        while store
            .put(
                RecordKind::Pending,
                &format!("p{stored}"),
                value.clone(),
                ttl,
            )
            .await
            .is_ok()
        {
            stored += 1;
        }
        assert!(stored >= 2, "{stored}");
        // What was stored is still there: nothing live was evicted.
        for i in 0..stored {
            assert!(
                store
                    .get(RecordKind::Pending, &format!("p{i}"))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        // Sessions have their own budget.
        store
            .put(RecordKind::Session, "s", value.clone(), ttl)
            .await
            .unwrap();
        // Once the pending records expire, there is room again.
        tokio::time::advance(ttl + Duration::from_secs(2)).await;
        store
            .put(RecordKind::Pending, "late", value, ttl)
            .await
            .unwrap();
    }
}
