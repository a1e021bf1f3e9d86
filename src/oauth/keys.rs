//! The proxy's key material: sealing (AES-256-GCM) and MACs (HMAC-SHA256), both derived
//! with HKDF-SHA256 from the configured secrets (`oauth.keys`).
//!
//! The first key seals and signs; every key opens and verifies, so a new key can be put
//! first while the old one still reads what it sealed (rotation). Each sealed value and
//! each MAC names its key by a short id derived from the key. A purpose string goes into
//! every seal (as associated data) and every MAC, so a value sealed as one thing (a client
//! registration) never opens as another (a session).

use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::{digest, hkdf, hmac, rand};

use crate::seal;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The shortest secret accepted in `oauth.keys`, in bytes.
pub(crate) const MIN_KEY_BYTES: usize = seal::MIN_SECRET_BYTES;

/// Length of the secrets [`ProxyKeys::secrets`] derives (HMAC-SHA256's output length).
pub(crate) const SECRET_BYTES: usize = 32;

/// What a sealed value or MAC is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A registered client, carried in its client id.
    Client,
    /// An authorization request waiting for consent, at rest in the store.
    Pending,
    /// The Entra leg of an approved request, at rest in the store.
    State,
    /// An authorization code's record, at rest in the store.
    Code,
    /// The Entra tokens of a session, at rest in the store.
    Session,
    /// idguard-issued access tokens.
    AccessToken,
    /// idguard-issued refresh tokens.
    RefreshToken,
    /// The consent page's CSRF token.
    Csrf,
    /// The cookie binding a browser to the consent it gave.
    Consent,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Client => b"idguard/oauth/client/v1",
            Self::Pending => b"idguard/oauth/pending/v1",
            Self::State => b"idguard/oauth/state/v1",
            Self::Code => b"idguard/oauth/code/v1",
            Self::Session => b"idguard/oauth/session/v1",
            Self::AccessToken => b"idguard/oauth/access-token/v1",
            Self::RefreshToken => b"idguard/oauth/refresh-token/v1",
            Self::Csrf => b"idguard/oauth/csrf/v1",
            Self::Consent => b"idguard/oauth/consent/v1",
        }
    }
}

struct Material {
    id: String,
    seal: LessSafeKey,
    mac: hmac::Key,
    /// The key's HKDF pseudorandom key, for [`ProxyKeys::secrets`].
    prk: hkdf::Prk,
}

/// The derived keys, first one current.
pub(crate) struct ProxyKeys {
    keys: Vec<Material>,
}

impl std::fmt::Debug for ProxyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("ProxyKeys").field("ids", &ids).finish()
    }
}

/// Cryptographically random bytes, base64url (`n` bytes of entropy); `None` only if the
/// operating system's generator fails, and then nothing may be issued.
pub fn random_token(n: usize) -> Option<String> {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(buf))
}

/// SHA-256, base64url: how secrets are named in the store.
pub(crate) fn digest_b64(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, value.as_bytes()))
}

/// Equality in time independent of where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Associated data: the purpose label, a separator, the context.
fn aad(purpose: Purpose, context: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(purpose.label().len() + 1 + context.len());
    v.extend_from_slice(purpose.label());
    v.push(0);
    v.extend_from_slice(context);
    v
}

impl ProxyKeys {
    /// Derives the keys; `None` when `secrets` is empty or a secret is too short.
    pub(crate) fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Self> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"idguard oauth proxy");
        let mut keys = Vec::with_capacity(secrets.len());
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.len() < MIN_KEY_BYTES {
                return None;
            }
            let prk = salt.extract(secret);
            let (id, seal) = seal::key_from(&prk)?;
            let mac = prk
                .expand(&[b"mac"], hmac::HMAC_SHA256)
                .ok()
                .map(hmac::Key::from)?;
            keys.push(Material { id, seal, mac, prk });
        }
        (!keys.is_empty()).then_some(Self { keys })
    }

    fn current(&self) -> Option<&Material> {
        self.keys.first()
    }

    fn by_id(&self, id: &str) -> Option<&Material> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Each key's id and a 32-byte secret derived from it for `purpose`, current key
    /// first: for algorithms that take raw key bytes (the access tokens' HS256, whose MAC
    /// cannot carry the purpose label, so the key does). `None` if derivation fails.
    pub(crate) fn secrets(&self, purpose: Purpose) -> Option<Vec<(&str, [u8; SECRET_BYTES])>> {
        self.keys
            .iter()
            .map(|k| {
                let mut secret = [0u8; SECRET_BYTES];
                k.prk
                    .expand(&[b"secret\0", purpose.label()], hmac::HMAC_SHA256)
                    .ok()?
                    .fill(&mut secret)
                    .ok()?;
                Some((k.id.as_str(), secret))
            })
            .collect()
    }

    /// `{key id}.{base64url(nonce ‖ ciphertext ‖ tag)}`, bound to `purpose` and `context`
    /// (e.g. the store key the value lives under: moved elsewhere, it does not open).
    pub(crate) fn seal(
        &self,
        purpose: Purpose,
        context: &[u8],
        plaintext: &[u8],
    ) -> Option<String> {
        let key = self.current()?;
        seal::seal(&key.id, &key.seal, &aad(purpose, context), plaintext)
    }

    /// The plaintext of a [`seal`](Self::seal)ed value; `None` if it was tampered with,
    /// sealed for another purpose or context, or by a key no longer configured.
    pub(crate) fn open(&self, purpose: Purpose, context: &[u8], sealed: &str) -> Option<Vec<u8>> {
        seal::open(
            |id| self.by_id(id).map(|k| &k.seal),
            &aad(purpose, context),
            sealed,
        )
    }

    /// HMAC of `data` with the current key: `(key id, base64url tag)`.
    pub(crate) fn sign(&self, purpose: Purpose, data: &[u8]) -> Option<(&str, String)> {
        let key = self.current()?;
        Some((key.id.as_str(), Self::tag(key, purpose, data)))
    }

    /// Whether `tag` is the HMAC of `data` by key `id`.
    pub(crate) fn verify(&self, purpose: Purpose, id: &str, data: &[u8], tag: &str) -> bool {
        let Some(key) = self.by_id(id) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let mut ctx = hmac::Context::with_key(&key.mac);
        ctx.update(purpose.label());
        ctx.update(&[0]);
        ctx.update(data);
        constant_time_eq(ctx.sign().as_ref(), &tag)
    }

    fn tag(key: &Material, purpose: Purpose, data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&key.mac);
        ctx.update(purpose.label());
        ctx.update(&[0]);
        ctx.update(data);
        URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }

    /// A self-verifying value: `{key id}.{tag}` over `data` (cookies, CSRF tokens).
    pub(crate) fn stamp(&self, purpose: Purpose, data: &[u8]) -> Option<String> {
        let (id, tag) = self.sign(purpose, data)?;
        Some(format!("{id}.{tag}"))
    }

    /// Whether `stamp` is a [`stamp`](Self::stamp) of `data`.
    pub(crate) fn check_stamp(&self, purpose: Purpose, data: &[u8], stamp: &str) -> bool {
        stamp
            .split_once('.')
            .is_some_and(|(id, tag)| self.verify(purpose, id, data, tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn seal_opens_only_for_its_purpose_and_keys() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let sealed = keys.seal(Purpose::Client, b"k1", b"hello").unwrap();
        assert_eq!(
            keys.open(Purpose::Client, b"k1", &sealed).unwrap(),
            b"hello"
        );
        assert!(keys.open(Purpose::Session, b"k1", &sealed).is_none());
        assert!(
            keys.open(Purpose::Client, b"k2", &sealed).is_none(),
            "bound to its context"
        );
        // Rotation: a new first key still opens what the old one sealed.
        let rotated = ProxyKeys::new(&[B, A]).unwrap();
        assert_eq!(
            rotated.open(Purpose::Client, b"k1", &sealed).unwrap(),
            b"hello"
        );
        let retired = ProxyKeys::new(&[B]).unwrap();
        assert!(retired.open(Purpose::Client, b"k1", &sealed).is_none());
        // Any flipped character is refused.
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(keys.open(Purpose::Client, b"k1", &tampered).is_none());
    }

    #[test]
    fn stamps_bind_purpose_and_data() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let s = keys.stamp(Purpose::Csrf, b"txn-1").unwrap();
        assert!(keys.check_stamp(Purpose::Csrf, b"txn-1", &s));
        assert!(!keys.check_stamp(Purpose::Csrf, b"txn-2", &s));
        assert!(!keys.check_stamp(Purpose::Consent, b"txn-1", &s));
        assert!(!keys.check_stamp(Purpose::Csrf, b"txn-1", "x.y"));
    }

    #[test]
    fn derived_secrets_are_per_key_and_purpose() {
        let keys = ProxyKeys::new(&[B, A]).unwrap();
        let secrets = keys.secrets(Purpose::AccessToken).unwrap();
        assert_eq!(secrets.len(), 2);
        let (current, _) = secrets[0];
        assert_eq!(
            current,
            keys.sign(Purpose::Csrf, b"").unwrap().0,
            "current key first"
        );
        assert_ne!(secrets[0].1, secrets[1].1);
        // Stable for a key, whatever else is configured; other for another purpose.
        let alone = ProxyKeys::new(&[A]).unwrap();
        assert_eq!(alone.secrets(Purpose::AccessToken).unwrap()[0], secrets[1]);
        assert_ne!(
            alone.secrets(Purpose::RefreshToken).unwrap()[0].1,
            secrets[1].1
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ProxyKeys::new(&[b"short"]).is_none());
        assert!(ProxyKeys::new::<&[u8]>(&[]).is_none());
    }
}
