//! The dev API's client certificate credential: a self-signed RSA certificate with its
//! private key, in PEM, named by its `x5t#S256` thumbprint
//! ([`DevEntra::client_certificate`](crate::DevEntra::client_certificate) registers one).

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::DevError;

/// A client certificate for the dev API's certificate credential, with its private key.
#[derive(Clone)]
pub struct DevCertificate {
    cert_pem: String,
    key_pem: String,
    thumbprint: String,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for DevCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCertificate")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl DevCertificate {
    /// Makes a self-signed RSA 2048 certificate (not registered anywhere).
    ///
    /// # Errors
    ///
    /// [`DevError::Crypto`] if key generation fails.
    pub fn generate() -> Result<Self, DevError> {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(|e| DevError::Crypto(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "idguard dev api");
        let cert = params
            .self_signed(&key)
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&key.serialize_der())
            .map_err(|e| DevError::Crypto(e.to_string()))?;
        use aws_lc_rs::signature::KeyPair as _;
        Ok(Self {
            thumbprint: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert.der())),
            cert_pem: to_pem("CERTIFICATE", cert.der()),
            key_pem: to_pem("PRIVATE KEY", &key.serialize_der()),
            public_key_der: pair.public_key().as_ref().to_vec(),
        })
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The PKCS#8 private key, PEM.
    pub fn private_key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `x5t#S256`: base64url SHA-256 of the certificate DER.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    ///
    /// # Errors
    ///
    /// [`DevError::Io`] when the files cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf), DevError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }

    /// The certificate's public key (DER), which verifies its assertions.
    pub(crate) fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }
}

/// PEM armour: base64 in 64-character lines.
fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn pem_lines_are_64_characters() {
        let pem = to_pem("TEST", &[7u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN TEST-----"));
        assert_eq!(lines.last(), Some(&"-----END TEST-----"));
        let body = &lines[1..lines.len() - 1];
        assert!(body.iter().rev().skip(1).all(|l| l.len() == 64), "{pem}");
        let b64: String = body.concat();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(der, [7u8; 100]);
    }

    #[test]
    fn a_certificate_is_named_by_its_sha256_thumbprint() {
        let cert = DevCertificate::generate().unwrap();
        assert!(
            cert.certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        assert!(
            cert.private_key_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert_eq!(cert.thumbprint_s256().len(), 43);
        assert!(!cert.public_key_der().is_empty());
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }
}
