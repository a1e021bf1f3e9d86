//! What the proxy keeps in its [`OAuthStore`](crate::oauth::OAuthStore): the four records of a sign-in (a pending
//! request, the Entra leg, the client's code, the session), each sealed with the proxy
//! key and bound to its kind and store key, so a record read back is the one written
//! there, unaltered.

use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::super::keys::{ProxyKeys, Purpose};
use super::super::store::RecordKind;
use super::{OAuthError, Proxy, store_failed, unix_now};

/// An authorization request waiting for consent.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The address `/authorize` came from (what [`SignIns`](super::limits::SignIns)
    /// counts), if known.
    #[serde(default)]
    pub(super) origin: Option<IpAddr>,
    pub(super) client_id: String,
    pub(super) client_name: String,
    pub(super) metadata_document: bool,
    pub(super) redirect_uri: String,
    /// Whether the client sent `redirect_uri` (then `/token` must repeat it).
    pub(super) redirect_presented: bool,
    pub(super) state: Option<String>,
    pub(super) challenge: String,
    pub(super) scopes: Vec<String>,
}

/// The Entra leg of an approved request.
#[derive(Serialize, Deserialize)]
pub(super) struct Leg {
    pub(super) pending: Pending,
    pub(super) verifier: String,
    pub(super) claims: Option<String>,
    /// Claims challenges answered so far (bounded: no loops).
    pub(super) rounds: u8,
}

/// An authorization code issued to a client; kept after redemption, marked used, so a
/// replay revokes what the first redemption issued.
#[derive(Serialize, Deserialize)]
pub(super) struct Code {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) redirect_presented: bool,
    pub(super) challenge: String,
    pub(super) sid: String,
    pub(super) used: bool,
    /// Unix seconds after which the code no longer redeems (the record itself lives
    /// longer, to recognise a replay).
    pub(super) expires_at: u64,
}

/// The Entra tokens behind a client's tokens, and the refresh-token generation.
#[derive(Serialize, Deserialize)]
pub(super) struct Session {
    pub(super) client_id: String,
    pub(super) scopes: Vec<String>,
    pub(super) oid: String,
    pub(super) access_token: String,
    pub(super) refresh_token: Option<String>,
    pub(super) expires_at: u64,
    /// The generation of the one valid refresh token; older ones are reuse.
    pub(super) generation: u64,
    /// When the session (and its refresh tokens) end.
    pub(super) ends_at: u64,
    /// When the refresh token was last rotated.
    #[serde(default)]
    pub(super) rotated_at: u64,
}

impl Session {
    /// How long the session's record is kept: until it ends (at least a second).
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_secs(self.ends_at.saturating_sub(unix_now()).max(1))
    }
}

fn purpose_of(kind: RecordKind) -> Purpose {
    match kind {
        RecordKind::Pending => Purpose::Pending,
        RecordKind::State => Purpose::State,
        RecordKind::Code => Purpose::Code,
        RecordKind::Session => Purpose::Session,
    }
}

/// `value` as JSON, sealed for `kind` under the store key `key`.
fn seal<T: Serialize>(keys: &ProxyKeys, kind: RecordKind, key: &str, value: &T) -> Option<Vec<u8>> {
    let json = serde_json::to_vec(value).ok()?;
    keys.seal(purpose_of(kind), key.as_bytes(), &json)
        .map(String::into_bytes)
}

/// The record sealed for `kind` under `key`; `None` if it was altered, sealed for another
/// kind or key, by a key no longer configured, or is not a `T`.
fn open<T: DeserializeOwned>(
    keys: &ProxyKeys,
    kind: RecordKind,
    key: &str,
    bytes: &[u8],
) -> Option<T> {
    let sealed = std::str::from_utf8(bytes).ok()?;
    let json = keys.open(purpose_of(kind), key.as_bytes(), sealed)?;
    serde_json::from_slice(&json).ok()
}

impl Proxy {
    fn seal_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, OAuthError> {
        seal(&self.keys, kind, key, value)
            .ok_or_else(|| OAuthError::new("server_error", "cannot seal a record"))
    }

    pub(super) async fn put_sealed<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), OAuthError> {
        let bytes = self.seal_record(kind, key, value)?;
        self.store
            .put(kind, key, bytes, ttl)
            .await
            .map_err(|e| store_failed(&e))
    }

    /// The record and its stored bytes (for [`OAuthStore::swap`](crate::oauth::OAuthStore::swap)).
    pub(super) async fn get_sealed<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<(T, Vec<u8>)>, OAuthError> {
        let found = self
            .store
            .get(kind, key)
            .await
            .map_err(|e| store_failed(&e))?;
        Ok(found.and_then(|b| open(&self.keys, kind, key, &b).map(|v| (v, b))))
    }

    pub(super) async fn take_sealed<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<T>, OAuthError> {
        let found = self
            .store
            .take(kind, key)
            .await
            .map_err(|e| store_failed(&e))?;
        Ok(found.and_then(|b| open(&self.keys, kind, key, &b)))
    }

    /// Replaces a record only if it is unchanged since it was read; `false` otherwise.
    pub(super) async fn swap_sealed<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        current: &[u8],
        value: &T,
        ttl: Duration,
    ) -> Result<bool, OAuthError> {
        let bytes = self.seal_record(kind, key, value)?;
        if kind == RecordKind::Session {
            self.forget_session(key);
        }
        self.store
            .swap(kind, key, current, bytes, ttl)
            .await
            .map_err(|e| store_failed(&e))
    }

    /// Removes the session `sid` (its access and refresh tokens stop working).
    pub(super) async fn end_session(&self, sid: &str) -> Result<(), OAuthError> {
        self.forget_session(sid);
        self.store
            .remove(RecordKind::Session, sid)
            .await
            .map_err(|e| store_failed(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn code() -> Code {
        Code {
            client_id: "client".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_presented: true,
            challenge: "challenge".into(),
            sid: "sid".into(),
            used: false,
            expires_at: 42,
        }
    }

    #[test]
    fn a_record_opens_where_it_was_sealed() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let bytes = seal(&keys, RecordKind::Code, "k1", &code()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("client"),
            "sealed, not merely encoded"
        );
        let back: Code = open(&keys, RecordKind::Code, "k1", &bytes).unwrap();
        assert_eq!(back.client_id, "client");
        assert_eq!(back.sid, "sid");
        assert!(back.redirect_presented && !back.used);
        assert_eq!(back.expires_at, 42);
        // Rotation: a new current key still opens it.
        let rotated = ProxyKeys::new(&[B, A]).unwrap();
        assert!(open::<Code>(&rotated, RecordKind::Code, "k1", &bytes).is_some());
    }

    #[test]
    fn a_record_is_refused_elsewhere_or_altered() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let bytes = seal(&keys, RecordKind::Code, "k1", &code()).unwrap();
        // Under another store key, or as another kind of record.
        assert!(open::<Code>(&keys, RecordKind::Code, "k2", &bytes).is_none());
        assert!(open::<Code>(&keys, RecordKind::Session, "k1", &bytes).is_none());
        // By a key no longer configured.
        let retired = ProxyKeys::new(&[B]).unwrap();
        assert!(open::<Code>(&retired, RecordKind::Code, "k1", &bytes).is_none());
        // Any altered byte.
        for i in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            assert!(
                open::<Code>(&keys, RecordKind::Code, "k1", &tampered).is_none(),
                "byte {i}"
            );
        }
        // Not UTF-8, or not a record of this type.
        assert!(open::<Code>(&keys, RecordKind::Code, "k1", &[0xff, 0xfe]).is_none());
        let other = seal(&keys, RecordKind::Code, "k1", &"a string").unwrap();
        assert!(open::<Code>(&keys, RecordKind::Code, "k1", &other).is_none());
    }

    #[test]
    fn records_written_before_a_field_was_added_still_open() {
        // `rotated_at` (sessions) and `origin` (pending requests) default when absent.
        let keys = ProxyKeys::new(&[A]).unwrap();
        let session = serde_json::json!({
            "client_id": "c", "scopes": [], "oid": "o", "access_token": "at",
            "refresh_token": null, "expires_at": 1, "generation": 2, "ends_at": 3,
        });
        let bytes = seal(&keys, RecordKind::Session, "s", &session).unwrap();
        let s: Session = open(&keys, RecordKind::Session, "s", &bytes).unwrap();
        assert_eq!((s.generation, s.rotated_at), (2, 0));
        let pending = serde_json::json!({
            "client_id": "c", "client_name": "n", "metadata_document": false,
            "redirect_uri": "r", "redirect_presented": false, "state": null,
            "challenge": "x", "scopes": [],
        });
        let bytes = seal(&keys, RecordKind::Pending, "p", &pending).unwrap();
        let p: Pending = open(&keys, RecordKind::Pending, "p", &bytes).unwrap();
        assert!(p.origin.is_none());
    }

    #[test]
    fn a_session_record_lives_until_the_session_ends() {
        let mut s = Session {
            client_id: String::new(),
            scopes: Vec::new(),
            oid: String::new(),
            access_token: String::new(),
            refresh_token: None,
            expires_at: 0,
            generation: 0,
            ends_at: unix_now() + 3600,
            rotated_at: 0,
        };
        let ttl = s.ttl().as_secs();
        assert!((3599..=3600).contains(&ttl), "{ttl}");
        s.ends_at = 0;
        assert_eq!(s.ttl(), Duration::from_secs(1), "ended: at least a second");
    }
}
