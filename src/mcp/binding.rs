//! Handles that belong to one caller: MCP session ids and task ids.
//!
//! The server's own session and task ids never reach the caller. idguard hands out
//! `idg1.<id>.<mac>` instead, where `<mac>` is an HMAC-SHA256 (truncated to 128 bits) over
//! the kind of handle, the caller (tenant and object id) and the server's id, under a key
//! from the configuration. Any replica holding the key verifies a handle without shared
//! state; a handle presented by anyone else, forged, or minted under a retired key is
//! unknown (`404` for a session, "not found" for a task).

use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::principal::Principal;

/// Prefix of every handle idguard issues.
const PREFIX: &str = "idg1.";
/// Longest server id idguard wraps (longer ones are refused: the handle must stay a header).
pub(crate) const MAX_SERVER_ID: usize = 512;
/// Bytes of the MAC kept in a handle.
const MAC_LEN: usize = 16;

/// What a handle names; part of the MAC, so a session id is never accepted as a task id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handle {
    Session,
    Task,
}

impl Handle {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Session => b"idguard mcp session\0",
            Self::Task => b"idguard mcp task\0",
        }
    }
}

/// Keys that bind handles to callers: the first signs, all verify (rotation).
#[derive(Clone)]
pub(crate) struct Binder {
    keys: Arc<[hmac::Key]>,
}

/// The HMAC key for handles from a configured secret, domain-separated from every other
/// use of the same secret.
fn derive(secret: &[u8]) -> hmac::Key {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        b"idguard handle key v1",
    );
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The caller a handle is bound to.
pub(crate) fn owner(p: &Principal) -> String {
    format!("{}/{}", p.tenant_id(), p.object_id())
}

impl Binder {
    /// A binder from secrets (each at least 32 bytes); `None` when there are none.
    pub(crate) fn new(secrets: &[&[u8]]) -> Option<Self> {
        if secrets.is_empty() || secrets.iter().any(|s| s.len() < 32) {
            return None;
        }
        Some(Self {
            keys: secrets.iter().map(|s| derive(s)).collect(),
        })
    }

    /// A binder with a random key: handles are valid in this process only.
    pub(crate) fn random() -> Self {
        let mut secret = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            // Not expected on any supported system; a key from the clock and this process
            // is still unknown to callers, and handles stay bound to this process.
            tracing::error!(target: "idguard::mcp", "no system randomness for the handle key");
            let seed = format!("{:?}/{}", std::time::SystemTime::now(), std::process::id());
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
            secret.copy_from_slice(digest.as_ref().get(..32).unwrap_or(&[0; 32]));
        }
        Self {
            keys: Arc::new([derive(&secret)]),
        }
    }

    fn mac(key: &hmac::Key, kind: Handle, owner: &str, id: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(kind.label());
        ctx.update(&(owner.len() as u64).to_be_bytes());
        ctx.update(owner.as_bytes());
        ctx.update(id.as_bytes());
        ctx.sign()
    }

    /// The handle the caller `owner` sees for the server's `id`; `None` for an id too long.
    pub(crate) fn wrap(&self, kind: Handle, owner: &str, id: &str) -> Option<String> {
        if id.len() > MAX_SERVER_ID {
            return None;
        }
        let key = self.keys.first()?;
        let tag = Self::mac(key, kind, owner, id);
        let mac = tag.as_ref().get(..MAC_LEN)?;
        Some(format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(id),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// The server's id behind `handle` if `owner` holds it; `None` for anything else.
    pub(crate) fn unwrap(&self, kind: Handle, owner: &str, handle: &str) -> Option<String> {
        let rest = handle.strip_prefix(PREFIX)?;
        let (id, mac) = rest.split_once('.')?;
        let id = String::from_utf8(URL_SAFE_NO_PAD.decode(id).ok()?).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if mac.len() != MAC_LEN || id.len() > MAX_SERVER_ID {
            return None;
        }
        self.keys
            .iter()
            .any(|key| {
                let tag = Self::mac(key, kind, owner, &id);
                tag.as_ref().get(..MAC_LEN).is_some_and(|t| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(t, &mac).is_ok()
                })
            })
            .then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_opens_for_its_owner_and_kind_only() {
        let b = Binder::new(&[&[7u8; 32]]).unwrap();
        let h = b.wrap(Handle::Session, "t/alice", "abc-123").unwrap();
        assert!(h.starts_with("idg1.") && h.bytes().all(|c| c.is_ascii_graphic()));
        assert_eq!(
            b.unwrap(Handle::Session, "t/alice", &h).as_deref(),
            Some("abc-123")
        );
        assert_eq!(b.unwrap(Handle::Session, "t/bob", &h), None);
        assert_eq!(b.unwrap(Handle::Task, "t/alice", &h), None);
        assert_eq!(b.unwrap(Handle::Session, "t/alice", "abc-123"), None);
        let mut forged = h.clone();
        forged.pop();
        forged.push('A');
        assert_eq!(b.unwrap(Handle::Session, "t/alice", &forged), None);
        // Another process with the same key verifies it; one with another key does not.
        let same = Binder::new(&[&[1u8; 32], &[7u8; 32]]).unwrap();
        assert!(same.unwrap(Handle::Session, "t/alice", &h).is_some());
        assert!(
            Binder::random()
                .unwrap(Handle::Session, "t/alice", &h)
                .is_none()
        );
        // Owner and id cannot be shifted into each other.
        let h2 = b.wrap(Handle::Task, "t/a", "lice").unwrap();
        assert_eq!(b.unwrap(Handle::Task, "t/al", &h2), None);
        assert!(Binder::new(&[b"short"]).is_none());
        assert!(
            b.wrap(Handle::Task, "o", &"x".repeat(MAX_SERVER_ID + 1))
                .is_none()
        );
    }
}
