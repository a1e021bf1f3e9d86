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

use aws_lc_rs::{digest, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

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
    /// The private key (PKCS#1 DER, what `jsonwebtoken` signs RSA with).
    key: EncodingKey,
    /// PS256, `typ: JWT`, `x5t#S256`: the header of every assertion.
    header: Header,
    thumbprint: String,
}

/// The claims of a client assertion (Entra certificate credentials).
#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
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
        // jsonwebtoken panics on first use if two crypto backends end up enabled through
        // feature unification; choosing ours explicitly rules that out (a second install
        // is harmless).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let cert_der = pem_block(certificate, "CERTIFICATE")
            .ok_or_else(|| OboError::Credential("the certificate is not PEM".into()))?;
        let key_der = pem_block(private_key, "PRIVATE KEY").ok_or_else(|| {
            OboError::Credential("the private key is not a PKCS#8 PEM (`PRIVATE KEY`)".into())
        })?;
        let not_rsa = || OboError::Credential("the private key is not an RSA key".into());
        rsa::KeyPair::from_pkcs8(&key_der).map_err(|_| not_rsa())?;
        // The RSA key inside, checked as jsonwebtoken will read it at each signature.
        let pkcs1 = pkcs1_in_pkcs8(&key_der).ok_or_else(not_rsa)?;
        rsa::KeyPair::from_der(pkcs1).map_err(|_| not_rsa())?;
        let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &cert_der));
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(thumbprint.clone());
        Ok(Self {
            key: EncodingKey::from_rsa_der(pkcs1),
            header,
            thumbprint,
        })
    }

    /// A fresh assertion for `aud` (the token endpoint), valid for five minutes.
    ///
    /// jsonwebtoken reads (and checks) the RSA key again for each signature: 684 µs per
    /// assertion against 245 µs with a parsed key kept (release build, RSA 2048). That is
    /// off the hot path: an assertion is made only for a request to Entra's token
    /// endpoint (an on-behalf-of cache miss, a sign-in, a session renewal), which costs a
    /// network round trip of its own.
    fn assertion(&self, client_id: &str, aud: &str) -> Result<Secret, OboError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = AssertionClaims {
            aud,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + 300,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|_| OboError::Credential("cannot sign the client assertion".into()))
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

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (RFC 5208: a sequence of
/// a version, an algorithm identifier and the key as an octet string): jsonwebtoken
/// signs RSA with a PKCS#1 key (its PKCS#8 reader needs the `use_pem` feature, which
/// would add two dependencies for these few lines).
fn pkcs1_in_pkcs8(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_element(pkcs8)? else {
        return None;
    };
    let (0x02, _version, rest) = der_element(info)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = der_element(rest)? else {
        return None;
    };
    match der_element(rest)? {
        (0x04, key, _) => Some(key),
        _ => None,
    }
}

/// One DER element of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
        if bytes.is_empty() || bytes.len() > 4 {
            return None;
        }
        let len = bytes
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
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

    /// The assertion Entra expects of a certificate credential: PS256 by the key,
    /// `typ: JWT`, `x5t#S256` of the certificate, and the claims it checks.
    #[test]
    fn a_certificate_assertion_is_what_entra_checks() {
        use aws_lc_rs::signature::{self, KeyPair as _};
        let (cert_pem, key_pem) = (
            include_str!("testdata/cert1.pem"),
            include_str!("testdata/key1.pem"),
        );
        let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(
            &digest::SHA256,
            &pem_block(cert_pem, "CERTIFICATE").unwrap(),
        ));
        let credential = ClientCredential::certificate_pem(cert_pem, key_pem).unwrap();
        let Ok(ClientAuth::Assertion(jwt)) =
            credential.client_auth("app-id", "https://login.example/t/oauth2/v2.0/token")
        else {
            panic!("no assertion");
        };
        let jwt = jwt.expose();
        let part = |i: usize| -> serde_json::Value {
            let part = jwt.split('.').nth(i).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        assert_eq!(
            part(0),
            serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint})
        );
        let claims = part(1);
        assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&"app-id".into(), &"app-id".into())
        );
        let (nbf, iat, exp) = (
            claims["nbf"].as_u64().unwrap(),
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(nbf == iat && exp == iat + 300);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        // Signed with RSASSA-PSS SHA-256 by the certificate's key.
        let key = rsa::KeyPair::from_pkcs8(&pem_block(key_pem, "PRIVATE KEY").unwrap()).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        signature::UnparsedPublicKey::new(
            &signature::RSA_PSS_2048_8192_SHA256,
            key.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .unwrap();
        // Each assertion is fresh.
        let Ok(ClientAuth::Assertion(again)) = credential.client_auth("app-id", "https://aud")
        else {
            panic!("no assertion");
        };
        assert_ne!(again.expose(), jwt);
    }

    #[test]
    fn a_key_that_is_not_rsa_pkcs8_is_refused() {
        let pem = |label: &str, der: &[u8]| {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                STANDARD.encode(der)
            )
        };
        let cert = pem("CERTIFICATE", &[0x30, 0x00]);
        for key in [
            pem("PRIVATE KEY", b"not der"),
            pem("RSA PRIVATE KEY", &[0x30, 0x00]),
        ] {
            assert!(matches!(
                ClientCredential::certificate_pem(&cert, &key),
                Err(OboError::Credential(_))
            ));
        }
    }

    #[test]
    fn der_elements_are_read_with_their_lengths() {
        assert_eq!(
            der_element(&[0x04, 0x02, 1, 2, 9]),
            Some((0x04, &[1u8, 2][..], &[9u8][..]))
        );
        let long: Vec<u8> = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        assert_eq!(
            der_element(&long).map(|(_, c, r)| (c.len(), r.len())),
            Some((0x80, 0))
        );
        // Truncated, an indefinite or oversized length.
        assert_eq!(der_element(&[0x04, 0x03, 1, 2]), None);
        assert_eq!(der_element(&[0x30, 0x80, 0, 0]), None);
        assert_eq!(der_element(&[0x04, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_element(&[0x04]), None);
        // A PKCS#8 shape, and something else.
        let pkcs8 = [
            0x30, 0x0a, 0x02, 0x01, 0x00, 0x30, 0x00, 0x04, 0x03, 0xaa, 0xbb, 0xcc,
        ];
        assert_eq!(pkcs1_in_pkcs8(&pkcs8), Some(&[0xaa, 0xbb, 0xcc][..]));
        assert_eq!(pkcs1_in_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        assert_eq!(pkcs1_in_pkcs8(&[0x04, 0x00]), None);
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(pem, "CERTIFICATE"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block(pem, "PRIVATE KEY"), None);
    }
}
