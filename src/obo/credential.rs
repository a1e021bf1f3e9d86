//! The middle tier's client credential: a secret, a certificate (PS256 client assertion),
//! or a federated assertion read from a file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::{digest, rsa, signature};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::json;

use super::OboError;

/// A secret value: no `Display`, and `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the middle tier proves its identity to Entra in the on-behalf-of request.
#[derive(Clone)]
pub struct ClientCredential(Kind);

#[derive(Clone)]
enum Kind {
    Secret(Secret),
    Certificate(Arc<Certificate>),
    Federated(Arc<FederatedFile>),
}

struct Certificate {
    key: rsa::KeyPair,
    thumbprint: String,
}

struct FederatedFile {
    path: PathBuf,
    /// The last read: (modified, length, content).
    last: Mutex<Option<(SystemTime, u64, Secret)>>,
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Secret(_) => f.write_str("ClientCredential::Secret(***)"),
            Kind::Certificate(c) => write!(f, "ClientCredential::Certificate({})", c.thumbprint),
            Kind::Federated(file) => {
                write!(f, "ClientCredential::FederatedTokenFile({:?})", file.path)
            }
        }
    }
}

/// The fields a credential adds to the token request.
pub(crate) enum ClientAuth {
    Secret(Secret),
    Assertion(Secret),
}

impl ClientCredential {
    /// A client secret (`client_secret` in the request body).
    pub fn secret(secret: Secret) -> Self {
        Self(Kind::Secret(secret))
    }

    /// A certificate credential from PEM text: the certificate and its PKCS#8 RSA key.
    /// Each request carries a fresh client assertion (PS256, `x5t#S256`, 5 min lifetime).
    ///
    /// # Errors
    ///
    /// [`OboError::Credential`] when either PEM cannot be read.
    pub fn certificate_pem(certificate: &str, private_key: &str) -> Result<Self, OboError> {
        let cert_der = pem_block(certificate, "CERTIFICATE")
            .ok_or_else(|| OboError::Credential("the certificate is not PEM".into()))?;
        let key_der = pem_block(private_key, "PRIVATE KEY").ok_or_else(|| {
            OboError::Credential("the private key is not a PKCS#8 PEM (`PRIVATE KEY`)".into())
        })?;
        let key = rsa::KeyPair::from_pkcs8(&key_der)
            .map_err(|_| OboError::Credential("the private key is not an RSA key".into()))?;
        let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &cert_der));
        Ok(Self(Kind::Certificate(Arc::new(Certificate {
            key,
            thumbprint,
        }))))
    }

    /// A certificate credential from PEM files.
    ///
    /// # Errors
    ///
    /// [`OboError::Credential`] when a file cannot be read or parsed.
    pub fn certificate_files(certificate: &Path, private_key: &Path) -> Result<Self, OboError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| OboError::Credential(format!("cannot read `{}`: {e}", p.display())))
        };
        Self::certificate_pem(&read(certificate)?, &read(private_key)?)
    }

    /// A federated credential: the client assertion is the token in `path` (a workload
    /// identity or managed identity token for `api://AzureADTokenExchange`), re-read
    /// whenever the file changes.
    pub fn federated_token_file(path: impl Into<PathBuf>) -> Self {
        Self(Kind::Federated(Arc::new(FederatedFile {
            path: path.into(),
            last: Mutex::new(None),
        })))
    }

    /// The secret or a fresh client assertion for `token_endpoint`.
    pub(crate) fn client_auth(
        &self,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<ClientAuth, OboError> {
        match &self.0 {
            Kind::Secret(s) => Ok(ClientAuth::Secret(s.clone())),
            Kind::Certificate(c) => c
                .assertion(client_id, token_endpoint)
                .map(ClientAuth::Assertion),
            Kind::Federated(f) => f.read().map(ClientAuth::Assertion),
        }
    }
}

impl Certificate {
    fn assertion(&self, client_id: &str, aud: &str) -> Result<Secret, OboError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = json!({
            "aud": aud,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 300,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PSS_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| OboError::Credential("cannot sign the client assertion".into()))?;
        Ok(Secret(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))))
    }
}

impl FederatedFile {
    /// The file's token; read again only when its modification time or length changed.
    /// A small synchronous read, only on a cache miss.
    fn read(&self) -> Result<Secret, OboError> {
        let fail = |e: std::io::Error| {
            OboError::Credential(format!(
                "cannot read the federated token file `{}`: {e}",
                self.path.display()
            ))
        };
        let meta = std::fs::metadata(&self.path).map_err(fail)?;
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((m, len, token)) = last.as_ref()
            && *m == modified
            && *len == meta.len()
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path).map_err(fail)?;
        let token = Secret(token.trim().to_owned());
        if token.0.is_empty() {
            return Err(OboError::Credential(format!(
                "the federated token file `{}` is empty",
                self.path.display()
            )));
        }
        *last = Some((modified, meta.len(), token.clone()));
        Ok(token)
    }
}

/// The DER inside the first `-----BEGIN {label}-----` block.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let rest = pem.get(start..)?;
    let stop = rest.find(&end)?;
    let body: String = rest
        .get(..stop)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        let c = ClientCredential::secret(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(pem, "CERTIFICATE"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block(pem, "PRIVATE KEY"), None);
    }
}
