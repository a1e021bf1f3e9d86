//! Signing keys: a lock-free snapshot for the hot path, and a single-flight, rate-limited
//! refresh for the rare unknown `kid`.
//!
//! Readers `load()` an `Arc<KeySet>` from an [`ArcSwap`] and never wait. A refresh takes a
//! tokio mutex (never held by readers), fetches, and swaps in a new set with a higher
//! generation. Callers that queued behind a fetch share its outcome instead of fetching
//! again, and wait at most [`MAX_WAIT`] (not at all while fetches are failing); a fetch is
//! abandoned after [`FETCH_TIMEOUT`].
//! After a successful on-demand fetch the next one waits for the minimum interval, so a
//! flood of unknown `kid`s costs one fetch.
//!
//! A failed fetch keeps the last good keys and does not use up that interval: the next
//! attempt may come after a back-off of 1 s, doubling per consecutive failure up to
//! [`MAX_FAILURE_BACKOFF`] (or the minimum interval, if shorter), and a background task
//! retries on that schedule until a fetch succeeds. `Retry-After` on the `503` of an
//! unknown `kid` during an outage names the time left until that next attempt.
//!
//! With `token.jwks_cache_file`, every fetched key set is written to that file (with the
//! discovery results it belongs to), and a start-up that cannot reach the identity
//! provider starts from the file instead of failing; the background retry then replaces
//! those keys as soon as the provider answers.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::config::KeySettings;
use crate::entra::{discovery_url, fetch_metadata, v1_discovery_url, without_url};
use crate::error::StartupError;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Longest a key fetch may take before it counts as failed.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a request with an unknown `kid` waits for a fetch another request started.
pub(crate) const MAX_WAIT: Duration = FETCH_TIMEOUT;

/// Longest back-off between fetch attempts while they fail.
pub(crate) const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// The first back-off after a failed fetch.
const FIRST_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// The format tag of the key cache file.
const CACHE_FORMAT: &str = "idguard-jwks-cache/1";

/// One verification key and the issuer it is bound to (Entra's per-key `issuer`).
pub(crate) struct Key {
    decoding: DecodingKey,
    issuer: Option<String>,
}

impl Key {
    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    pub(crate) fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }
}

/// An immutable set of keys by `kid`.
pub(crate) struct KeySet {
    keys: HashMap<String, Key>,
    generation: u64,
    fetched_at: Instant,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("generation", &self.generation)
            .finish()
    }
}

impl KeySet {
    /// The same keys, dated `age` ago (keys read from the cache file).
    fn aged(mut self, age: Duration) -> Self {
        self.fetched_at = Instant::now().checked_sub(age).unwrap_or(self.fetched_at);
        self
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Time since these keys were fetched.
    pub(crate) fn age(&self) -> Duration {
        self.fetched_at.elapsed()
    }

    /// Parses a JWKS document, keeping the RSA signing keys. Keys of other types or uses
    /// are skipped; a document with no usable key is an error.
    pub(crate) fn parse(json: &[u8], generation: u64) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<RawKey>,
        }
        #[derive(Deserialize)]
        struct RawKey {
            kty: String,
            #[serde(rename = "use")]
            use_: Option<String>,
            alg: Option<String>,
            kid: Option<String>,
            n: Option<String>,
            e: Option<String>,
            issuer: Option<String>,
        }
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for k in raw.keys {
            let usable = k.kty == "RSA"
                && k.use_.as_deref().is_none_or(|u| u == "sig")
                && k.alg.as_deref().is_none_or(|a| a == "RS256");
            let (true, Some(kid), Some(n), Some(e)) = (usable, k.kid, k.n, k.e) else {
                continue;
            };
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(decoding) => {
                    keys.insert(
                        kid,
                        Key {
                            decoding,
                            issuer: k.issuer,
                        },
                    );
                }
                Err(err) => tracing::debug!(target: "idguard::jwks", %kid, %err, "skipping key"),
            }
        }
        if keys.is_empty() {
            return Err("no RSA signing key in the document".into());
        }
        Ok(Self {
            keys,
            generation,
            fetched_at: Instant::now(),
        })
    }
}

/// What an on-demand refresh achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// A newer key set is in place (fetched now or by a concurrent caller): look again.
    Updated,
    /// Refreshed too recently; the key set stays as it is.
    RateLimited,
    /// The keys cannot be fetched right now; the last good set stays.
    /// [`KeyStore::retry_after`] tells when the next attempt may come.
    Unavailable,
}

/// Where the keys in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched from the identity provider.
    Network,
    /// Read from `token.jwks_cache_file` at start-up (the provider could not be reached).
    CacheFile,
}

impl KeySource {
    #[cfg_attr(
        not(feature = "internals"),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    /// The source as `/metrics` and `/healthz` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "identity_provider",
            Self::CacheFile => "cache_file",
        }
    }
}

/// The key store's health, for `/healthz`, `/readyz` and metrics.
#[derive(Debug, Clone)]
#[cfg_attr(
    not(feature = "internals"),
    allow(dead_code, reason = "read by the `idguard` binary only")
)]
pub struct KeyStatus {
    /// Where the keys in force came from.
    pub source: KeySource,
    /// Time since the keys in force were fetched (for the cache file: since it was written).
    pub age: Duration,
    /// Fetches that failed in a row (0: the last one worked).
    pub failures: u32,
    /// Why the last fetch failed, while `failures > 0`.
    pub last_error: Option<String>,
    /// Time until the next attempt may come, while `failures > 0`.
    pub retry_in: Option<Duration>,
    /// Why the cache file could not be written, if the last write failed.
    pub cache_error: Option<String>,
}

/// Outcome bookkeeping. A std mutex: never held across an `.await`.
struct RefreshState {
    /// Fetch attempts finished, so a caller that waited can tell one ended meanwhile.
    attempts: u64,
    /// The last successful on-demand fetch: the rate limit counts from it.
    last_on_demand_success: Option<Instant>,
    /// Fetches that failed in a row.
    failures: u32,
    /// No fetch before this (set by a failure).
    retry_at: Option<Instant>,
    last_error: Option<String>,
    source: KeySource,
    cache_error: Option<String>,
}

/// The shared key store of one [`IdGuard`](crate::IdGuard).
pub(crate) struct KeyStore {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<KeySet>,
    jwks_uri: String,
    client: reqwest::Client,
    min_interval: Duration,
    /// Held while a fetch is in flight (single flight). Readers never take it.
    flight: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<RefreshState>,
    /// Where fetched keys are saved, with what they belong to.
    cache: Option<CacheTarget>,
    /// A background retry is running.
    recovering: AtomicBool,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("jwks_uri", &self.shared.jwks_uri)
            .field("keys", &*self.shared.current.load())
            .finish_non_exhaustive()
    }
}

/// What discovery found, besides the keys.
#[derive(Debug, Clone)]
pub(crate) struct Discovered {
    /// The v2 issuer (the `{tenantid}` template for multi-tenant).
    pub(crate) issuer: String,
    /// The v1 issuer, when v1 tokens are accepted.
    pub(crate) v1_issuer: Option<String>,
}

impl KeyStore {
    /// Start-up: discovery and the keys from the identity provider; when that fails and
    /// `token.jwks_cache_file` holds keys saved for this authority and tenant, those.
    ///
    /// # Errors
    ///
    /// The discovery or key error when the provider cannot be reached and there is no
    /// usable cache file.
    pub(crate) async fn start(
        client: &reqwest::Client,
        config: &KeySettings,
    ) -> Result<(Self, Discovered), StartupError> {
        let segment = config.tenant.discovery_segment();
        let mut target = config.jwks_cache_file.as_ref().map(|path| CacheTarget {
            path: path.clone(),
            authority: config.authority.clone(),
            tenant: segment.to_owned(),
            issuer: String::new(),
            v1_issuer: None,
            jwks_uri: String::new(),
        });
        match discover(client, config).await {
            Ok((discovered, jwks_uri, set, body)) => {
                if let Some(t) = &mut target {
                    t.issuer.clone_from(&discovered.issuer);
                    t.v1_issuer.clone_from(&discovered.v1_issuer);
                    t.jwks_uri.clone_from(&jwks_uri);
                }
                let store = Self::with_keys(
                    client.clone(),
                    jwks_uri,
                    config.jwks_min_refresh_interval,
                    set,
                    KeySource::Network,
                    target,
                );
                store.shared.save(body);
                Ok((store, discovered))
            }
            Err(e) => {
                let Some(mut target) = target else {
                    return Err(e);
                };
                let saved = match SavedKeys::read(&target.path, config) {
                    Ok(saved) => saved,
                    Err(why) => {
                        tracing::error!(target: "idguard::jwks", file = %target.path.display(), %why, "the key cache file cannot be used");
                        return Err(e);
                    }
                };
                let age = Duration::from_secs(unix_now().saturating_sub(saved.saved_at));
                let set = KeySet::parse(saved.jwks.get().as_bytes(), 1)
                    .map_err(|reason| StartupError::Jwks {
                        url: target.path.display().to_string(),
                        reason,
                    })?
                    .aged(age);
                tracing::warn!(target: "idguard::jwks", error = %e, file = %target.path.display(), age_secs = age.as_secs(), "identity provider unreachable at start: using the signing keys saved in the cache file; retrying in the background");
                let discovered = Discovered {
                    issuer: saved.issuer.clone(),
                    v1_issuer: saved.v1_issuer.clone(),
                };
                target.issuer = saved.issuer;
                target.v1_issuer = saved.v1_issuer;
                target.jwks_uri.clone_from(&saved.jwks_uri);
                let store = Self::with_keys(
                    client.clone(),
                    saved.jwks_uri,
                    config.jwks_min_refresh_interval,
                    set,
                    KeySource::CacheFile,
                    Some(target),
                );
                store.shared.failed(e.to_string());
                Ok((store, discovered))
            }
        }
    }

    fn with_keys(
        client: reqwest::Client,
        jwks_uri: String,
        min_interval: Duration,
        set: KeySet,
        source: KeySource,
        cache: Option<CacheTarget>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(set),
                jwks_uri,
                client,
                min_interval,
                flight: tokio::sync::Mutex::new(()),
                state: std::sync::Mutex::new(RefreshState {
                    attempts: 0,
                    last_on_demand_success: None,
                    failures: 0,
                    retry_at: None,
                    last_error: None,
                    source,
                    cache_error: None,
                }),
                cache,
                recovering: AtomicBool::new(false),
            }),
        }
    }

    /// The current key set. Lock-free.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.shared.current.load()
    }

    /// Refreshes because a token named a `kid` missing from generation `seen`.
    pub(crate) async fn refresh_for_unknown_kid(&self, seen: u64) -> Refresh {
        let sh = &self.shared;
        if sh.current.load().generation() != seen {
            return Refresh::Updated;
        }
        let attempts = sh.state().attempts;
        // Single flight: wait for a fetch in flight, but not without bound, and not at all
        // during an outage (the fetch in flight is then a retry that will most likely fail
        // as well: answer now, with the time of the next attempt).
        let _flight = match sh.flight.try_lock() {
            Ok(flight) => flight,
            Err(_) if sh.state().failures > 0 => return Refresh::Unavailable,
            Err(_) => match tokio::time::timeout(MAX_WAIT, sh.flight.lock()).await {
                Ok(flight) => flight,
                Err(_) => return Refresh::Unavailable,
            },
        };
        if sh.current.load().generation() != seen {
            return Refresh::Updated;
        }
        {
            let st = sh.state();
            let now = Instant::now();
            if st.attempts != attempts {
                // A fetch ended while this caller waited; it did not bring new keys.
                return if st.failures > 0 {
                    Refresh::Unavailable
                } else {
                    Refresh::RateLimited
                };
            }
            if st.failures > 0 && st.retry_at.is_some_and(|at| now < at) {
                return Refresh::Unavailable;
            }
            if st.failures == 0
                && st
                    .last_on_demand_success
                    .is_some_and(|at| now.duration_since(at) < sh.min_interval)
            {
                return Refresh::RateLimited;
            }
        }
        match sh.fetch_and_swap(seen).await {
            Ok(()) => {
                sh.state().last_on_demand_success = Some(Instant::now());
                Refresh::Updated
            }
            Err(()) => Refresh::Unavailable,
        }
    }

    /// The periodic background refresh. Failures keep the last good keys (and start the
    /// background retry).
    pub(crate) async fn refresh_periodic(&self) {
        let _flight = self.shared.flight.lock().await;
        let seen = self.shared.current.load().generation();
        let _ = self.shared.fetch_and_swap(seen).await;
    }

    /// Whole seconds until the next fetch may be tried (at least 1): the `Retry-After` of
    /// a `503` for keys that cannot be fetched.
    pub(crate) fn retry_after(&self) -> u64 {
        let st = self.shared.state();
        let left = st
            .retry_at
            .filter(|_| st.failures > 0)
            .map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            });
        (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
    }

    /// Source, age and failures of the keys.
    #[cfg_attr(
        not(feature = "internals"),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub(crate) fn status(&self) -> KeyStatus {
        let age = self.snapshot().age();
        let st = self.shared.state();
        let failing = st.failures > 0;
        KeyStatus {
            source: st.source,
            age,
            failures: st.failures,
            last_error: st.last_error.clone().filter(|_| failing),
            retry_in: st
                .retry_at
                .filter(|_| failing)
                .map(|at| at.saturating_duration_since(Instant::now())),
            cache_error: st.cache_error.clone(),
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, RefreshState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches and swaps in the keys. The caller holds `flight`.
    async fn fetch_and_swap(self: &Arc<Self>, seen: u64) -> Result<(), ()> {
        let fetched = match tokio::time::timeout(
            FETCH_TIMEOUT,
            fetch(&self.client, &self.jwks_uri, seen + 1),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
        };
        match fetched {
            Ok((set, body)) => {
                tracing::debug!(target: "idguard::jwks", generation = set.generation(), "signing keys refreshed");
                self.current.store(Arc::new(set));
                {
                    let mut st = self.state();
                    st.attempts += 1;
                    if st.failures > 0 {
                        tracing::info!(target: "idguard::jwks", failures = st.failures, "signing keys fetched again after failures");
                    }
                    st.failures = 0;
                    st.retry_at = None;
                    st.last_error = None;
                    st.source = KeySource::Network;
                }
                self.save(body);
                Ok(())
            }
            Err(reason) => {
                tracing::error!(target: "idguard::jwks", url = %self.jwks_uri, %reason, "signing key refresh failed; keeping the last good keys");
                self.failed(reason);
                Err(())
            }
        }
    }

    /// Records a failed fetch: the back-off until the next attempt, and the background
    /// retry.
    fn failed(self: &Arc<Self>, reason: String) {
        {
            let mut st = self.state();
            st.attempts += 1;
            st.failures = st.failures.saturating_add(1);
            st.retry_at = Some(Instant::now() + backoff(st.failures, self.min_interval));
            st.last_error = Some(reason);
        }
        self.spawn_recovery();
    }

    /// Retries in the background, on the back-off schedule, until a fetch succeeds. One
    /// such task at a time; it ends with the store.
    fn spawn_recovery(self: &Arc<Self>) {
        if self.recovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(sh) = weak.upgrade() else { return };
                    let st = sh.state();
                    st.retry_at.map_or(Duration::ZERO, |at| {
                        at.saturating_duration_since(Instant::now())
                    })
                };
                tokio::time::sleep(wait).await;
                let Some(sh) = weak.upgrade() else { return };
                let _flight = sh.flight.lock().await;
                let (failing, due) = {
                    let st = sh.state();
                    (
                        st.failures > 0,
                        st.retry_at.is_none_or(|at| at <= Instant::now()),
                    )
                };
                if !failing {
                    sh.recovering.store(false, Ordering::Release);
                    return;
                }
                if !due {
                    // Another attempt failed meanwhile and moved the schedule.
                    continue;
                }
                let seen = sh.current.load().generation();
                if sh.fetch_and_swap(seen).await.is_ok() {
                    sh.recovering.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// Writes the fetched document to the cache file, if one is configured, off the
    /// runtime and without waiting: a slow or failing disk never holds up a refresh.
    fn save(self: &Arc<Self>, jwks: Vec<u8>) {
        let Some(target) = &self.cache else { return };
        let Ok(jwks) = String::from_utf8(jwks)
            .map_err(|e| e.to_string())
            .and_then(|s| RawValue::from_string(s).map_err(|e| e.to_string()))
        else {
            return;
        };
        let saved = SavedKeys {
            format: CACHE_FORMAT.to_owned(),
            authority: target.authority.clone(),
            tenant: target.tenant.clone(),
            issuer: target.issuer.clone(),
            v1_issuer: target.v1_issuer.clone(),
            jwks_uri: target.jwks_uri.clone(),
            saved_at: unix_now(),
            jwks,
        };
        let path = target.path.clone();
        let weak = Arc::downgrade(self);
        tokio::task::spawn_blocking(move || {
            let result = saved.write(&path);
            if let Err(e) = &result {
                tracing::warn!(target: "idguard::jwks", file = %path.display(), error = %e, "cannot write the key cache file");
            }
            if let Some(sh) = weak.upgrade() {
                sh.state().cache_error = result.err();
            }
        });
    }
}

/// The back-off after `failures` failed fetches in a row: 1 s, doubling, at most
/// [`MAX_FAILURE_BACKOFF`] or `min_interval`, whichever is shorter.
fn backoff(failures: u32, min_interval: Duration) -> Duration {
    let cap = MAX_FAILURE_BACKOFF
        .min(min_interval)
        .max(FIRST_FAILURE_BACKOFF);
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_FAILURE_BACKOFF
        .saturating_mul(1 << doublings)
        .min(cap)
}

/// Discovery (v2, and v1 when accepted) and the keys, from the identity provider.
async fn discover(
    client: &reqwest::Client,
    config: &KeySettings,
) -> Result<(Discovered, String, KeySet, Vec<u8>), StartupError> {
    let segment = config.tenant.discovery_segment();
    let v2_url = discovery_url(&config.authority, segment);
    let v2 = fetch_metadata(client, &v2_url).await?;
    let v1_issuer = if config.accept_v1 {
        let v1_url = v1_discovery_url(&config.authority, segment);
        Some(fetch_metadata(client, &v1_url).await?.issuer)
    } else {
        None
    };
    let (set, body) =
        fetch(client, &v2.jwks_uri, 1)
            .await
            .map_err(|reason| StartupError::Jwks {
                url: v2.jwks_uri.clone(),
                reason,
            })?;
    let discovered = Discovered {
        issuer: v2.issuer,
        v1_issuer,
    };
    Ok((discovered, v2.jwks_uri, set, body))
}

/// Where and for what the fetched keys are saved.
struct CacheTarget {
    path: PathBuf,
    authority: String,
    tenant: String,
    issuer: String,
    v1_issuer: Option<String>,
    jwks_uri: String,
}

/// The key cache file: the JWKS document as fetched, and the discovery results it belongs
/// to. It holds public keys only.
#[derive(Serialize, Deserialize)]
struct SavedKeys {
    format: String,
    authority: String,
    tenant: String,
    issuer: String,
    #[serde(default)]
    v1_issuer: Option<String>,
    jwks_uri: String,
    /// Seconds since the epoch.
    saved_at: u64,
    jwks: Box<RawValue>,
}

impl SavedKeys {
    /// Reads the file and checks it was saved for this configuration.
    fn read(path: &Path, config: &KeySettings) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let saved: Self =
            serde_json::from_slice(&text).map_err(|e| format!("not a key cache file: {e}"))?;
        if saved.format != CACHE_FORMAT {
            return Err(format!("unknown format `{}`", saved.format));
        }
        if saved.authority != config.authority || saved.tenant != config.tenant.discovery_segment()
        {
            return Err(format!(
                "saved for `{}/{}`, not this authority and tenant",
                saved.authority, saved.tenant
            ));
        }
        if config.accept_v1 && saved.v1_issuer.is_none() {
            return Err("saved without the v1 issuer that `token.accept_v1` needs".into());
        }
        Ok(saved)
    }

    /// Writes the file atomically: a temporary file next to it, then a rename.
    fn write(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        // A name of its own per write: two writes in flight never share a temporary file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.to_string()
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fetches and parses the JWKS document; returns the keys and the document.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    generation: u64,
) -> Result<(KeySet, Vec<u8>), String> {
    let res = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", without_url(&e)))?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    let body = crate::entra::body_capped(res, MAX_JWKS_BYTES).await?;
    let set = KeySet::parse(&body, generation)?;
    Ok((set, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_unusable_keys() {
        let doc = br#"{"keys":[
            {"kty":"EC","kid":"ec","crv":"P-256","x":"a","y":"b"},
            {"kty":"RSA","use":"enc","kid":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"nokid-n"},
            {"kty":"RSA","use":"sig","kid":"k1","n":"sXch","e":"AQAB","issuer":"https://x/{tenantid}/v2.0"}
        ]}"#;
        let set = KeySet::parse(doc, 7).unwrap();
        assert_eq!(set.generation(), 7);
        assert!(set.get("k1").is_some());
        assert_eq!(
            set.get("k1").unwrap().issuer(),
            Some("https://x/{tenantid}/v2.0")
        );
        assert!(set.get("ec").is_none() && set.get("enc").is_none());
    }

    #[test]
    fn failures_back_off_from_one_second_to_the_cap() {
        let five_min = Duration::from_secs(300);
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n, five_min).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX, five_min), MAX_FAILURE_BACKOFF);
        // Never longer than the interval meant for successful fetches.
        assert_eq!(backoff(5, Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn empty_or_junk_documents_fail() {
        assert!(KeySet::parse(br#"{"keys":[]}"#, 1).is_err());
        assert!(KeySet::parse(b"<html>", 1).is_err());
    }
}
