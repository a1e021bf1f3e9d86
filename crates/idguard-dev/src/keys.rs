//! The emulator's signing keys: RSA 2048 keys with self-signed certificates, published in
//! Entra's JWKS shape (`kid` = `x5t` = base64url SHA-1 of the certificate).

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _};
use aws_lc_rs::{digest, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::DevError;

/// One RSA signing key of the emulator.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pair: Arc<rsa::KeyPair>,
    n: String,
    e: String,
    x5c: String,
    /// A tenant this key is bound to (its JWKS entry names that tenant's issuer).
    pub(crate) bound_tenant: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("bound_tenant", &self.bound_tenant)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub(crate) fn generate(bound_tenant: Option<String>) -> Result<Self, DevError> {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(|e| DevError::Crypto(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "accounts.accesscontrol.windows.net",
        );
        let cert = params
            .self_signed(&key)
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        let pair = rsa::KeyPair::from_pkcs8(&key.serialize_der())
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let der: &[u8] = cert.der();
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der));
        Ok(Self {
            kid,
            pair: Arc::new(pair),
            n,
            e,
            x5c: STANDARD.encode(der),
            bound_tenant,
        })
    }

    /// RS256 over `signing_input` (`base64url(header).base64url(claims)`).
    pub(crate) fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, DevError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input,
                &mut sig,
            )
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        Ok(sig)
    }

    /// The public key as a DER `RSAPublicKey` (for verifying what this key signed).
    pub(crate) fn public_key_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The JWKS entry. `issuer` is the v2 per-key issuer, or `None` in v1 documents.
    pub(crate) fn jwk(&self, issuer: Option<String>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
            "x5c": [self.x5c],
            "cloud_instance_name": "microsoftonline.com",
        });
        if let (Some(issuer), Some(map)) = (issuer, jwk.as_object_mut()) {
            map.insert("issuer".into(), Value::String(issuer));
        }
        jwk
    }
}

/// Published keys, the key that signs new tokens, and keys made but not published.
#[derive(Debug, Default)]
pub(crate) struct KeyRing {
    pub(crate) published: Vec<SigningKey>,
    pub(crate) unpublished: Vec<SigningKey>,
    pub(crate) active: String,
}

impl KeyRing {
    pub(crate) fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.published
            .iter()
            .chain(&self.unpublished)
            .find(|k| k.kid == kid)
    }
}
