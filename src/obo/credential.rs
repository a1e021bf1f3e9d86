//! The middle tier's client credential: a secret, a certificate (PS256 client assertion),
//! or a federated assertion read from a file.
//!
//! Credential files are read again when they change: each use compares, per file, the
//! resolved path (symbolic links followed), the size and the modification time. A
//! Kubernetes Secret or projected-token volume updates files by swapping a `..data` link,
//! which changes the resolved path. A certificate pair that does not parse (say, one file
//! of the pair written before the other) keeps the last good certificate in use until the
//! files change again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::{digest, rsa, signature};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::OboError;
use crate::setting::Secret;

/// How the middle tier proves its identity to Entra in the on-behalf-of request.
#[derive(Clone)]
pub struct ClientCredential(Kind);

#[derive(Clone)]
enum Kind {
    Secret(Secret),
    Certificate(Arc<Certificate>),
    CertificateFiles(Arc<CertificateFiles>),
    Federated(Arc<FederatedFile>),
}

/// What identifies a version of a file: where it resolves to, its size and modification
/// time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    target: Option<PathBuf>,
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            target: std::fs::canonicalize(path).ok(),
            len: meta.len(),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
        })
    }
}

/// A certificate credential read from files, read again when they change.
struct CertificateFiles {
    certificate: PathBuf,
    private_key: PathBuf,
    /// The files' stamps when last read, and the last good certificate.
    current: Mutex<(Stamp, Stamp, Arc<Certificate>)>,
}

struct Certificate {
    key: rsa::KeyPair,
    thumbprint: String,
}

struct FederatedFile {
    path: PathBuf,
    /// The last read: the file's stamp and content.
    last: Mutex<Option<(Stamp, Secret)>>,
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Secret(_) => f.write_str("ClientCredential::Secret(***)"),
            Kind::Certificate(c) => write!(f, "ClientCredential::Certificate({})", c.thumbprint),
            Kind::CertificateFiles(c) => write!(
                f,
                "ClientCredential::CertificateFiles({:?}, {:?})",
                c.certificate, c.private_key
            ),
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
        Certificate::from_pem(certificate, private_key)
            .map(|c| Self(Kind::Certificate(Arc::new(c))))
    }

    /// A certificate credential from PEM files, read again whenever they change (a
    /// renewed certificate is used without a restart).
    ///
    /// # Errors
    ///
    /// [`OboError::Credential`] when a file cannot be read or parsed now.
    pub fn certificate_files(certificate: &Path, private_key: &Path) -> Result<Self, OboError> {
        let (cert_stamp, key_stamp, cert) = CertificateFiles::load(certificate, private_key)?;
        Ok(Self(Kind::CertificateFiles(Arc::new(CertificateFiles {
            certificate: certificate.to_path_buf(),
            private_key: private_key.to_path_buf(),
            current: Mutex::new((cert_stamp, key_stamp, Arc::new(cert))),
        }))))
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
            Kind::CertificateFiles(c) => c
                .get()
                .assertion(client_id, token_endpoint)
                .map(ClientAuth::Assertion),
            Kind::Federated(f) => f.read().map(ClientAuth::Assertion),
        }
    }
}

impl CertificateFiles {
    /// Reads and parses the pair, with the stamps taken before reading.
    fn load(
        certificate: &Path,
        private_key: &Path,
    ) -> Result<(Stamp, Stamp, Certificate), OboError> {
        let fail = |p: &Path, e: std::io::Error| {
            OboError::Credential(format!("cannot read `{}`: {e}", p.display()))
        };
        let cert_stamp = Stamp::of(certificate).map_err(|e| fail(certificate, e))?;
        let key_stamp = Stamp::of(private_key).map_err(|e| fail(private_key, e))?;
        let cert_pem = std::fs::read_to_string(certificate).map_err(|e| fail(certificate, e))?;
        let key_pem = std::fs::read_to_string(private_key).map_err(|e| fail(private_key, e))?;
        let cert = Certificate::from_pem(&cert_pem, &key_pem)?;
        Ok((cert_stamp, key_stamp, cert))
    }

    /// The certificate to sign with: read again when either file changed; the last good
    /// one when the files cannot be read or parsed (reported once per change).
    /// Small synchronous reads, only on an on-behalf-of cache miss.
    fn get(&self) -> Arc<Certificate> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamps = (Stamp::of(&self.certificate), Stamp::of(&self.private_key));
        let (Ok(cert_stamp), Ok(key_stamp)) = stamps else {
            return current.2.clone();
        };
        if cert_stamp == current.0 && key_stamp == current.1 {
            return current.2.clone();
        }
        match Self::load(&self.certificate, &self.private_key) {
            Ok((cert_stamp, key_stamp, cert)) => {
                tracing::info!(target: "idguard::obo", thumbprint = %cert.thumbprint, "client certificate reloaded");
                *current = (cert_stamp, key_stamp, Arc::new(cert));
            }
            Err(e) => {
                tracing::error!(target: "idguard::obo", error = %e, "client certificate files changed but do not load; keeping the last good certificate");
                current.0 = cert_stamp;
                current.1 = key_stamp;
            }
        }
        current.2.clone()
    }
}

impl Certificate {
    fn from_pem(certificate: &str, private_key: &str) -> Result<Self, OboError> {
        let cert_der = pem_block(certificate, "CERTIFICATE")
            .ok_or_else(|| OboError::Credential("the certificate is not PEM".into()))?;
        let key_der = pem_block(private_key, "PRIVATE KEY").ok_or_else(|| {
            OboError::Credential("the private key is not a PKCS#8 PEM (`PRIVATE KEY`)".into())
        })?;
        let key = rsa::KeyPair::from_pkcs8(&key_der)
            .map_err(|_| OboError::Credential("the private key is not an RSA key".into()))?;
        let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &cert_der));
        Ok(Self { key, thumbprint })
    }

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
        Ok(Secret::new(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(sig)
        )))
    }
}

impl FederatedFile {
    /// The file's token; read again only when the file changed (see the module docs).
    /// A small synchronous read, only on a cache miss.
    fn read(&self) -> Result<Secret, OboError> {
        let fail = |e: std::io::Error| {
            OboError::Credential(format!(
                "cannot read the federated token file `{}`: {e}",
                self.path.display()
            ))
        };
        let stamp = Stamp::of(&self.path).map_err(fail)?;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, token)) = last.as_ref()
            && *seen == stamp
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path).map_err(fail)?;
        let token = Secret::new(token.trim().to_owned());
        if token.expose().is_empty() {
            return Err(OboError::Credential(format!(
                "the federated token file `{}` is empty",
                self.path.display()
            )));
        }
        *last = Some((stamp, token.clone()));
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

    /// The `x5t#S256` header of the assertion `credential` makes now.
    fn thumbprint_in_assertion(credential: &ClientCredential) -> String {
        let Ok(ClientAuth::Assertion(jwt)) = credential.client_auth("app", "https://aud") else {
            panic!("no assertion");
        };
        let header = jwt.expose().split('.').next().unwrap().to_owned();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        header["x5t#S256"].as_str().unwrap().to_owned()
    }

    /// A Kubernetes-style Secret volume: `cert.pem -> ..data/cert.pem`, `..data -> ..v1`;
    /// a renewal swaps `..data`.
    ///
    /// The two test certificates (`testdata/`, self-signed, RSA 2048, test only) were made
    /// with `openssl req -x509 -newkey rsa:2048 -nodes -keyout keyN.pem -out certN.pem`.
    #[cfg(unix)]
    #[test]
    fn certificate_files_are_read_again_after_a_volume_swap() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("idguard-cert-{}", uuid::Uuid::new_v4()));
        let pairs = [
            (
                include_str!("testdata/cert1.pem"),
                include_str!("testdata/key1.pem"),
            ),
            (
                include_str!("testdata/cert2.pem"),
                include_str!("testdata/key2.pem"),
            ),
        ];
        let thumbprint = |cert: &str| {
            let der = pem_block(cert, "CERTIFICATE").unwrap();
            URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der))
        };
        let (first, second) = (thumbprint(pairs[0].0), thumbprint(pairs[1].0));
        for (v, (cert, key)) in [("..v1", pairs[0]), ("..v2", pairs[1])] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            std::fs::write(dir.join(v).join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join(v).join("key.pem"), key).unwrap();
        }
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/cert.pem", dir.join("cert.pem")).unwrap();
        symlink("..data/key.pem", dir.join("key.pem")).unwrap();
        let credential =
            ClientCredential::certificate_files(&dir.join("cert.pem"), &dir.join("key.pem"))
                .unwrap();
        assert_eq!(thumbprint_in_assertion(&credential), first);

        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(thumbprint_in_assertion(&credential), second);

        // A pair that does not match keeps the last good certificate.
        std::fs::create_dir_all(dir.join("..v3")).unwrap();
        std::fs::write(dir.join("..v3/cert.pem"), "not a certificate").unwrap();
        std::fs::copy(dir.join("..v2/key.pem"), dir.join("..v3/key.pem")).unwrap();
        symlink("..v3", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(thumbprint_in_assertion(&credential), second);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same swap for a federated token file whose new token has the same length.
    #[cfg(unix)]
    #[test]
    fn a_federated_token_file_is_read_again_after_a_volume_swap() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("idguard-fed-{}", uuid::Uuid::new_v4()));
        for (v, token) in [("..v1", "token-one"), ("..v2", "token-two")] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            std::fs::write(dir.join(v).join("token"), token).unwrap();
        }
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/token", dir.join("token")).unwrap();
        let credential = ClientCredential::federated_token_file(dir.join("token"));
        let read = || match credential.client_auth("app", "https://aud") {
            Ok(ClientAuth::Assertion(s)) => s.expose().to_owned(),
            _ => panic!("no assertion"),
        };
        assert_eq!(read(), "token-one");
        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(read(), "token-two");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(pem, "CERTIFICATE"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block(pem, "PRIVATE KEY"), None);
    }
}
