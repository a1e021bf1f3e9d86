//! The validated-token cache.
//!
//! Keyed by the SHA-256 digest of the token (the token text is never stored), holding the
//! [`Principal`], bounded in size, and expiring each entry at its token's `exp`. A hit is
//! re-checked against the clock, so an entry is never served past `exp` even before the
//! cache evicts it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use moka::Expiry;
use moka::sync::Cache;

use crate::principal::Principal;

/// The cache key: SHA-256 of the token.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest_token(token: &str) -> TokenDigest {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[derive(Debug)]
pub(crate) struct TokenCache {
    cache: Cache<TokenDigest, Principal>,
}

struct UntilExp;

impl Expiry<TokenDigest, Principal> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Principal,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(Duration::from_secs(value.expires_at().saturating_sub(now)))
    }
}

impl TokenCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            cache: Cache::builder()
                .name("idguard-validated-tokens")
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// The cached principal, if there is one and its token has not expired at `now`.
    pub(crate) fn get(&self, key: &TokenDigest, now: u64) -> Option<Principal> {
        let principal = self.cache.get(key)?;
        if now < principal.expires_at() {
            Some(principal)
        } else {
            self.cache.invalidate(key);
            None
        }
    }

    /// Caches a freshly validated principal, unless its token is already past `exp`.
    pub(crate) fn insert(&self, key: TokenDigest, principal: Principal, now: u64) {
        if now < principal.expires_at() {
            self.cache.insert(key, principal);
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, key: &TokenDigest) -> bool {
        self.cache.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(exp: u64) -> Principal {
        Principal::from_unvalidated_claims(&json!({
            "tid": "t", "oid": "o", "scp": "x", "exp": exp
        }))
        .unwrap()
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn hit_honours_exp_exactly() {
        let cache = TokenCache::new(10);
        let key = digest_token("a.b.c");
        let now = unix_now();
        cache.insert(key, principal(now + 100), now);
        assert!(cache.get(&key, now + 99).is_some());
        // moka would keep it for another 100 s; the hit check does not.
        assert!(cache.get(&key, now + 100).is_none());
        assert!(!cache.contains(&key));
    }

    #[test]
    fn expired_principals_are_not_inserted() {
        let cache = TokenCache::new(10);
        let key = digest_token("a.b.c");
        cache.insert(key, principal(1_000), 1_000);
        assert!(cache.get(&key, 10).is_none());
    }

    #[test]
    fn digest_is_stable_and_tells_tokens_apart() {
        let d = digest_token("header.payload.signature");
        assert_eq!(d, digest_token("header.payload.signature"));
        assert_ne!(d, digest_token("header.payload.signaturf"));
    }
}
