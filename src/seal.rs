//! AES-256-GCM sealing under keys derived with HKDF-SHA256: the one implementation behind
//! the OAuth proxy's sealed records (`oauth/keys.rs`) and the on-behalf-of token cache's
//! second level (`obo/shared.rs`).
//!
//! A sealed value is `{key id}.{base64url(nonce ‖ ciphertext ‖ tag)}`: the key id (derived
//! from the key, never the secret itself) tells which configured key opens it, so a new key
//! can seal while older ones still open (rotation). The caller's associated data binds the
//! value to what it is and where it lives.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The shortest secret a sealing key is derived from, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// HKDF output length of key ids.
struct IdLen;

impl hkdf::KeyType for IdLen {
    fn len(&self) -> usize {
        6
    }
}

/// The sealing key and its public id, both expanded from `prk`.
pub(crate) fn key_from(prk: &hkdf::Prk) -> Option<(String, LessSafeKey)> {
    let key = prk
        .expand(&[b"seal"], &AES_256_GCM)
        .ok()
        .map(UnboundKey::from)
        .map(LessSafeKey::new)?;
    // The key id is published next to sealed values: derived, not a hash of the secret.
    let mut raw_id = [0u8; 6];
    prk.expand(&[b"key id"], IdLen)
        .ok()?
        .fill(&mut raw_id)
        .ok()?;
    Some((URL_SAFE_NO_PAD.encode(raw_id), key))
}

/// `{id}.{base64url(nonce ‖ ciphertext ‖ tag)}` under `key`, bound to `aad`; `None` only if
/// the system's random generator fails.
pub(crate) fn seal(id: &str, key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Option<String> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce).ok()?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .ok()?;
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Some(format!("{id}.{}", URL_SAFE_NO_PAD.encode(out)))
}

/// The plaintext of a [`seal`]ed value, with the key `key_for` finds for its id; `None` if
/// the id is unknown, or the value was tampered with or sealed with other `aad`.
pub(crate) fn open<'k>(
    key_for: impl FnOnce(&str) -> Option<&'k LessSafeKey>,
    aad: &[u8],
    sealed: &str,
) -> Option<Vec<u8>> {
    let (id, body) = sealed.split_once('.')?;
    let key = key_for(id)?;
    let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
    let (nonce, ciphertext) = raw.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = ciphertext.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> (String, LessSafeKey) {
        key_from(&hkdf::Salt::new(hkdf::HKDF_SHA256, b"test").extract(secret)).unwrap()
    }

    #[test]
    fn opens_only_with_its_key_and_associated_data() {
        let (id, k) = key(b"0123456789abcdef0123456789abcdef");
        let (other_id, other) = key(b"fedcba9876543210fedcba9876543210");
        assert_ne!(id, other_id);
        let sealed = seal(&id, &k, b"here", b"token").unwrap();
        assert!(sealed.starts_with(&format!("{id}.")));
        assert!(!sealed.contains("token"));
        assert_eq!(open(|_| Some(&k), b"here", &sealed).unwrap(), b"token");
        assert!(open(|_| Some(&k), b"there", &sealed).is_none());
        assert!(open(|_| Some(&other), b"here", &sealed).is_none());
        assert!(open(|_| None, b"here", &sealed).is_none());
        assert!(open(|_| Some(&k), b"here", "no-dot").is_none());
        assert!(open(|_| Some(&k), b"here", &format!("{id}.AAAA")).is_none());
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(sealed, seal(&id, &k, b"here", b"token").unwrap());
    }
}
