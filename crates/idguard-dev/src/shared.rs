//! The state the [`DevEntra`](crate::DevEntra) handle shares with its server task: the
//! directory, the keys, the credentials, the failure modes, the sign-in state and the
//! request counters, with the few operations every endpoint needs (signing, issuers,
//! lookups).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::keys::KeyRing;
use crate::sign_in::SignIn;
use crate::{DevApp, DevEndpoint, DevError, DevGraphFailure, DevOboFailure, DevTenant, DevUser};

/// How many [`DevEndpoint`]s are counted.
const ENDPOINTS: usize = 5;

/// Requests served, per [`DevEndpoint`].
#[derive(Debug, Default)]
pub(crate) struct Counters([AtomicU64; ENDPOINTS]);

impl Counters {
    /// Counts one request to `endpoint`.
    pub(crate) fn count(&self, endpoint: DevEndpoint) {
        if let Some(c) = self.0.get(endpoint as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many requests `endpoint` has served.
    pub(crate) fn get(&self, endpoint: DevEndpoint) -> u64 {
        self.0
            .get(endpoint as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// State shared by the handle and the server task.
pub(crate) struct Shared {
    pub(crate) base_url: String,
    pub(crate) tenants: Vec<DevTenant>,
    pub(crate) users: Vec<DevUser>,
    pub(crate) apps: Vec<DevApp>,
    /// Other APIs' confidential clients that may do on-behalf-of ([`DevApi`]).
    pub(crate) apis: Vec<crate::DevApi>,
    pub(crate) api_client_id: String,
    /// Extra Application ID URIs of the dev API (besides `api://{api_client_id}`).
    pub(crate) identifier_uris: Vec<String>,
    pub(crate) keys: RwLock<KeyRing>,
    pub(crate) jwks_available: AtomicBool,
    pub(crate) counters: Counters,
    pub(crate) client_secret: String,
    /// Registered client certificates: (`x5t#S256`, public key DER).
    pub(crate) certificates: RwLock<Vec<(String, Vec<u8>)>>,
    pub(crate) federated_subject: String,
    pub(crate) used_jti: Mutex<HashSet<String>>,
    pub(crate) obo_failures: Mutex<HashMap<String, DevOboFailure>>,
    pub(crate) graph_failures: Mutex<HashMap<String, DevGraphFailure>>,
    pub(crate) downstream_lifetime: AtomicU64,
    pub(crate) refresh_in: AtomicU64,
    /// Redirect URIs, the default user, sign-in failures, codes and refresh tokens.
    pub(crate) sign_in: SignIn,
}

impl std::fmt::Debug for Shared {
    // The client secret, keys, assertions' `jti`s, codes and refresh tokens stay out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("base_url", &self.base_url)
            .field("tenants", &self.tenants)
            .field("users", &self.users.len())
            .field("apps", &self.apps.len())
            .field("apis", &self.apis)
            .field("api_client_id", &self.api_client_id)
            .field("identifier_uris", &self.identifier_uris)
            .field("sign_in", &self.sign_in)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Counts one request to `endpoint`.
    pub(crate) fn count(&self, endpoint: DevEndpoint) {
        self.counters.count(endpoint);
    }

    /// The v2 issuer of tenant `tid`.
    pub(crate) fn issuer_v2(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.base_url)
    }

    pub(crate) fn knows_tenant(&self, tid: &str) -> bool {
        self.tenants.iter().any(|t| t.id == tid)
    }

    /// Signs `claims` (RS256) with the active key.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, DevError> {
        let key = {
            let ring = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ring.find(&ring.active)
                .cloned()
                .ok_or_else(|| DevError::UnknownKey(ring.active.clone()))?
        };
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": key.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    pub(crate) fn user_oid(&self, key: &str) -> Result<String, DevError> {
        self.users
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.object_id.clone())
            .ok_or_else(|| DevError::UnknownPrincipal(key.to_owned()))
    }
}

/// The v1 issuer of tenant `tid` (Entra's `https://sts.windows.net/{tid}/`).
pub(crate) fn issuer_v1(tid: &str) -> String {
    format!("https://sts.windows.net/{tid}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_each_endpoint_apart() {
        let counters = Counters::default();
        counters.count(DevEndpoint::Jwks);
        counters.count(DevEndpoint::Jwks);
        counters.count(DevEndpoint::Authorize);
        assert_eq!(counters.get(DevEndpoint::Jwks), 2);
        assert_eq!(counters.get(DevEndpoint::Authorize), 1);
        assert_eq!(counters.get(DevEndpoint::Discovery), 0);
        assert_eq!(counters.get(DevEndpoint::Token), 0);
        assert_eq!(counters.get(DevEndpoint::Graph), 0);
    }

    #[test]
    fn the_v1_issuer_is_entras() {
        assert_eq!(issuer_v1("t"), "https://sts.windows.net/t/");
    }
}
