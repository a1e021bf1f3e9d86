//! The downstream-token cache: moka, keyed by a digest, per-entry expiry.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use moka::Expiry;

use super::client::OboToken;

/// SHA-256 over (assertion digest, sorted scopes, client id, tenant): never the raw token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey([u8; 32]);

impl CacheKey {
    /// `scopes` must already be sorted (the API table keeps them so).
    pub(crate) fn new(
        assertion_digest: &[u8; 32],
        scopes: &[String],
        client_id: &str,
        tenant: &str,
    ) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(assertion_digest);
        for part in scopes.iter().map(String::as_str).chain([client_id, tenant]) {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// Lower-case hex of the digest: how the key is named in a shared store.
    #[cfg_attr(
        not(feature = "redis"),
        expect(dead_code, reason = "the redis second level")
    )]
    pub(crate) fn hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// A cached token with its deadline (tokio's clock, so tests can pause time) and the
/// proactive-refresh point Entra asked for with `refresh_in`.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    pub(crate) token: OboToken,
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) refresh_at: Option<tokio::time::Instant>,
    pub(crate) ttl: Duration,
    pub(crate) refreshing: Arc<AtomicBool>,
}

pub(crate) type TokenCache = moka::future::Cache<CacheKey, Cached>;

/// Each entry lives for its own `ttl`, also when replaced by a proactive refresh.
struct UntilDeadline;

impl Expiry<CacheKey, Cached> for UntilDeadline {
    fn expire_after_create(&self, _k: &CacheKey, v: &Cached, _at: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _k: &CacheKey,
        v: &Cached,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub(crate) fn token_cache(capacity: u64) -> TokenCache {
    moka::future::Cache::builder()
        .name("idguard-obo-tokens")
        .max_capacity(capacity)
        .expire_after(UntilDeadline)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separates_every_part() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let base = CacheKey::new(&a, &s(&["x", "y"]), "c", "t");
        assert_eq!(base, CacheKey::new(&a, &s(&["x", "y"]), "c", "t"));
        assert_ne!(base, CacheKey::new(&b, &s(&["x", "y"]), "c", "t"));
        assert_ne!(base, CacheKey::new(&a, &s(&["x"]), "c", "t"));
        assert_ne!(base, CacheKey::new(&a, &s(&["x", "y"]), "d", "t"));
        assert_ne!(base, CacheKey::new(&a, &s(&["x", "y"]), "c", "u"));
        assert_ne!(
            CacheKey::new(&a, &s(&["ab", "c"]), "c", "t"),
            CacheKey::new(&a, &s(&["a", "bc"]), "c", "t")
        );
    }
}
