//! Signing keys: a lock-free snapshot for the hot path, and a single-flight, rate-limited
//! refresh for the rare unknown `kid`.
//!
//! Readers `load()` an `Arc<KeySet>` from an [`ArcSwap`] and never wait. A refresh takes a
//! tokio mutex (never held by readers), fetches, and swaps in a new set with a higher
//! generation. Callers that queued behind a refresh see the generation change and retry
//! without fetching again, and on-demand refreshes are at most one per minimum interval,
//! so a flood of unknown `kid`s costs one fetch. A failed fetch keeps the last good keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::entra::without_url;
use crate::error::StartupError;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

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
    Unavailable,
}

struct RefreshState {
    last_on_demand: Option<Instant>,
    last_failed: bool,
}

/// The shared key store of one [`IdGuard`](crate::IdGuard).
pub(crate) struct KeyStore {
    current: ArcSwap<KeySet>,
    jwks_uri: String,
    client: reqwest::Client,
    min_interval: Duration,
    refresh: Mutex<RefreshState>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("jwks_uri", &self.jwks_uri)
            .field("keys", &*self.current.load())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Fetches the keys once; start-up fails if that does not work.
    pub(crate) async fn load(
        client: reqwest::Client,
        jwks_uri: String,
        min_interval: Duration,
    ) -> Result<Self, StartupError> {
        let set = fetch(&client, &jwks_uri, 1)
            .await
            .map_err(|reason| StartupError::Jwks {
                url: jwks_uri.clone(),
                reason,
            })?;
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            jwks_uri,
            client,
            min_interval,
            refresh: Mutex::new(RefreshState {
                last_on_demand: None,
                last_failed: false,
            }),
        })
    }

    /// The current key set. Lock-free.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// Refreshes because a token named a `kid` missing from generation `seen`.
    pub(crate) async fn refresh_for_unknown_kid(&self, seen: u64) -> Refresh {
        let mut state = self.refresh.lock().await;
        if self.current.load().generation() != seen {
            return Refresh::Updated;
        }
        if let Some(at) = state.last_on_demand
            && at.elapsed() < self.min_interval
        {
            return if state.last_failed {
                Refresh::Unavailable
            } else {
                Refresh::RateLimited
            };
        }
        state.last_on_demand = Some(Instant::now());
        match self.fetch_and_swap(seen).await {
            Ok(()) => {
                state.last_failed = false;
                Refresh::Updated
            }
            Err(()) => {
                state.last_failed = true;
                Refresh::Unavailable
            }
        }
    }

    /// The periodic background refresh. Failures keep the last good keys.
    pub(crate) async fn refresh_periodic(&self) {
        let _state = self.refresh.lock().await;
        let seen = self.current.load().generation();
        let _ = self.fetch_and_swap(seen).await;
    }

    async fn fetch_and_swap(&self, seen: u64) -> Result<(), ()> {
        match fetch(&self.client, &self.jwks_uri, seen + 1).await {
            Ok(set) => {
                tracing::debug!(target: "idguard::jwks", generation = set.generation(), "signing keys refreshed");
                self.current.store(Arc::new(set));
                Ok(())
            }
            Err(reason) => {
                tracing::error!(target: "idguard::jwks", url = %self.jwks_uri, %reason, "signing key refresh failed; keeping the last good keys");
                Err(())
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str, generation: u64) -> Result<KeySet, String> {
    let mut res = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", without_url(&e)))?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("document is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body, generation)
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
    fn empty_or_junk_documents_fail() {
        assert!(KeySet::parse(br#"{"keys":[]}"#, 1).is_err());
        assert!(KeySet::parse(b"<html>", 1).is_err());
    }
}
