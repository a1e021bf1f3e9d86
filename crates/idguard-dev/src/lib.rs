//! The dev Entra emulator: a local stand-in for Microsoft Entra ID.
//!
//! [`DevEntra`] serves, on a loopback port, what an API needs from Entra to validate
//! tokens, in Microsoft's documented formats:
//!
//! | path | what |
//! |---|---|
//! | `/{tenant}/v2.0/.well-known/openid-configuration` | v2 discovery (`tenant`: a tenant id, `organizations` or `common`) |
//! | `/{tenant}/.well-known/openid-configuration` | v1 discovery (issuer `https://sts.windows.net/{tid}/`) |
//! | `/{tenant}/discovery/v2.0/keys` | JWKS with `kid`, `x5t`, `x5c` and the per-key `issuer` |
//! | `/{tenant}/discovery/keys` | v1 JWKS (no per-key issuer) |
//! | `GET /{tenant}/oauth2/v2.0/authorize` | interactive sign-in (authorization code, PKCE S256) for the dev API's registered redirect URIs; `login_hint`, a default user or a user picker |
//! | `POST /{tenant}/oauth2/v2.0/token` | the on-behalf-of (jwt-bearer), `authorization_code` and `refresh_token` grants: client secret, certificate (PS256) or federated assertion; per-user failure modes |
//! | `/graph/v1.0/me`, `/graph/v1.0/me/transitiveMemberOf/microsoft.graph.group`, `POST /graph/v1.0/me/checkMemberGroups` | a Microsoft Graph emulation for the Graph tokens it issued |
//!
//! It mints v1 and v2 access tokens for its users and apps ([`DevEntra::token_for`],
//! [`DevEntra::app_token`]), rotates keys, and counts requests per endpoint so tests can
//! assert how often keys were fetched. Keys are made at start-up; nothing is hard-coded.
//!
//! An OAuth proxy can sign users in through it as through Entra: register the redirect URI
//! ([`DevEntra::allow_redirect_uri`]), send the browser (or, headless, a `login_hint`) to
//! [`DevEntra::authorize_endpoint`], and redeem the code with the dev API's credential.
//! Codes are single use and bound to the client, redirect URI, PKCE challenge, user,
//! scopes and `claims`; redeeming one yields the same v2 user token [`TokenMint`] makes
//! (`azp` = the redeeming client), an id token with `openid` and a refresh token with
//! `offline_access`. Entra's gaps are kept: discovery has no
//! `code_challenge_methods_supported`, `scope` is required at the token endpoint, one
//! resource per token request, and a `resource` parameter must be an Application ID URI of
//! the app owning the scopes (AADSTS9010010). [`DevSignInFailure`] makes the sign-in refuse
//! per user (consent, MFA with a `claims` challenge, access denied).
//!
//! Tests, examples, benches and `idguard` dev mode use it. It is **not** an identity
//! provider: it signs whatever it is asked to.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idguard_dev::DevError> {
//! use idguard_dev::{DevEntra, DevEndpoint};
//!
//! let entra = DevEntra::builder().start().await?;
//! let token = entra.token_for("alice")?.scopes(["mcp.tools"]).mint()?;
//! assert_eq!(token.split('.').count(), 3);
//! assert_eq!(entra.requests(DevEndpoint::Jwks), 0);
//! # Ok(()) }
//! ```

mod authorize;
mod keys;
mod mint;
mod obo;
mod server;

pub mod demo;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use tokio::sync::oneshot;

pub use mint::TokenMint;
pub use obo::MFA_CLAIMS;

use keys::{KeyRing, SigningKey};

/// Tenant id of the default dev tenant, "Contoso".
pub const CONTOSO_TENANT_ID: &str = "b0f1a3c2-7d4e-4f6a-9c8b-1e2d3f4a5b6c";
/// Tenant id of the second dev tenant, "Fabrikam".
pub const FABRIKAM_TENANT_ID: &str = "e5d4c3b2-a190-4f8e-8d7c-6b5a49382716";
/// Application (client) id of the protected dev API (the `aud` of dev tokens).
pub const DEV_API_CLIENT_ID: &str = "6d3b1f2e-8a4c-4e5d-9f6a-7b8c9d0e1f2a";
/// Application id of the dev client app that requests delegated tokens (`azp`).
pub const DEV_CLIENT_APP_ID: &str = "0c5e2f1a-3b4d-4c6e-8f7a-9b0c1d2e3f4a";
/// Object id of the dev "Finance" group that Alice belongs to.
pub const FINANCE_GROUP_ID: &str = "3a9f7c1e-5b2d-4e8a-9c6f-1d0e2b3a4c5d";
/// The delegated scope dev user tokens carry by default.
pub const DEV_SCOPE: &str = "mcp.tools";
/// Object id of the dev managed identity whose tokens are accepted as federated client
/// assertions of the dev API (workload identity federation).
pub const DEV_MANAGED_IDENTITY_ID: &str = "f1d0c0de-0000-4000-8000-00000000f1d0";

/// How the token endpoint fails on-behalf-of requests for one user
/// ([`DevEntra::set_obo_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevOboFailure {
    /// `invalid_grant`, AADSTS65001, suberror `consent_required`.
    ConsentRequired,
    /// `interaction_required`, AADSTS50079, with a `claims` challenge ([`MFA_CLAIMS`]).
    MfaRequired,
    /// `429` with `Retry-After: retry_after` (seconds).
    Throttled {
        /// Seconds in `Retry-After`.
        retry_after: u64,
    },
    /// `503` for the next `times` requests, then success.
    ServerError {
        /// How many requests fail.
        times: u32,
    },
    /// Answer (successfully) only after `millis` milliseconds.
    Slow {
        /// The delay.
        millis: u64,
    },
}

/// How the interactive sign-in (authorize and code or refresh-token redemption) fails for
/// one user ([`DevEntra::set_sign_in_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevSignInFailure {
    /// The user has not consented: redeeming a code answers `invalid_grant`, AADSTS65001,
    /// suberror `consent_required`, unless the code came from an authorize request with
    /// `prompt=consent` (the user consented then). `prompt=none` at authorize redirects
    /// with `error=consent_required`.
    ConsentRequired,
    /// A Conditional Access policy wants MFA: redeeming a code or a refresh token answers
    /// `interaction_required`, AADSTS50079, with `claims` = [`MFA_CLAIMS`], unless the
    /// authorize request carried that `claims` value; then the access token's `amr`
    /// includes `mfa`. `prompt=none` without it redirects with
    /// `error=interaction_required`.
    MfaRequired,
    /// The user declines: authorize redirects with `error=access_denied` (AADSTS65004).
    AccessDenied,
}

/// How the Graph emulation fails for one user ([`DevEntra::set_graph_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevGraphFailure {
    /// `429` with `Retry-After: retry_after` for the next `times` requests.
    Throttled {
        /// How many requests are throttled.
        times: u32,
        /// Seconds in `Retry-After`.
        retry_after: u64,
    },
}

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
}

/// The v1 issuer of tenant `tid` (Entra's `https://sts.windows.net/{tid}/`).
pub(crate) fn issuer_v1(tid: &str) -> String {
    format!("https://sts.windows.net/{tid}/")
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

/// A user in more groups than Entra puts in a token (230, Finance among them): mint their
/// tokens with [`TokenMint::groups_overage`] and resolve membership through Graph.
pub fn overage_user() -> DevUser {
    let mut groups: Vec<String> = (1..230u32)
        .map(|i| format!("{i:08x}-0000-4000-8000-0000000{i:05x}"))
        .collect();
    groups.insert(150, FINANCE_GROUP_ID.to_owned());
    DevUser {
        key: "dave".to_owned(),
        name: "Dave Many".to_owned(),
        upn: "dave@contoso.example".to_owned(),
        object_id: "da4e0000-0000-4000-8000-0000000da4e0".to_owned(),
        tenant_id: CONTOSO_TENANT_ID.to_owned(),
        roles: vec!["Tools.Read".to_owned()],
        groups,
        auth_methods: vec!["pwd".to_owned(), "mfa".to_owned()],
    }
}

/// Why the emulator could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// Binding or serving failed.
    #[error("dev entra: {0}")]
    Io(#[from] std::io::Error),
    /// Key generation or signing failed.
    #[error("dev entra: crypto: {0}")]
    Crypto(String),
    /// No user or app with that name.
    #[error("dev entra: no user or app `{0}`")]
    UnknownPrincipal(String),
    /// No key with that `kid`.
    #[error("dev entra: no key `{0}`")]
    UnknownKey(String),
}

/// A tenant the emulator knows.
#[derive(Clone, Debug)]
pub struct DevTenant {
    /// Tenant id (GUID).
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A user the emulator can mint delegated tokens for.
#[derive(Clone, Debug)]
pub struct DevUser {
    /// Short name used to look the user up (`"alice"`).
    pub key: String,
    /// Display name (`name`).
    pub name: String,
    /// Sign-in name (`preferred_username` / `upn`).
    pub upn: String,
    /// Object id (`oid`).
    pub object_id: String,
    /// Home tenant (`tid`).
    pub tenant_id: String,
    /// App roles assigned to the user (`roles`).
    pub roles: Vec<String>,
    /// Group object ids (`groups`).
    pub groups: Vec<String>,
    /// Authentication methods (`amr`).
    pub auth_methods: Vec<String>,
}

/// A daemon application the emulator can mint app-only tokens for.
#[derive(Clone, Debug)]
pub struct DevApp {
    /// Short name (`"reporter"`).
    pub key: String,
    /// Application (client) id (`azp`/`appid`).
    pub app_id: String,
    /// Service principal object id (`oid` = `sub`).
    pub object_id: String,
    /// Tenant the app is provisioned in.
    pub tenant_id: String,
    /// Application permissions granted (`roles`).
    pub roles: Vec<String>,
}

/// Endpoints whose requests the emulator counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevEndpoint {
    /// v1 and v2 OpenID discovery documents.
    Discovery,
    /// v1 and v2 key sets.
    Jwks,
    /// The v2 token endpoint (every grant: on-behalf-of, authorization code, refresh token).
    Token,
    /// The Graph emulation.
    Graph,
    /// The v2 authorize endpoint (`GET /{tenant}/oauth2/v2.0/authorize`).
    Authorize,
}

const ENDPOINTS: usize = 5;

/// State shared by the handle and the server task.
pub(crate) struct Shared {
    pub(crate) base_url: String,
    pub(crate) tenants: Vec<DevTenant>,
    pub(crate) users: Vec<DevUser>,
    pub(crate) apps: Vec<DevApp>,
    pub(crate) api_client_id: String,
    /// Extra Application ID URIs of the dev API (besides `api://{api_client_id}`).
    pub(crate) identifier_uris: Vec<String>,
    pub(crate) keys: RwLock<KeyRing>,
    pub(crate) jwks_available: AtomicBool,
    counters: [AtomicU64; ENDPOINTS],
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
    pub(crate) sign_in: authorize::SignIn,
}

impl std::fmt::Debug for Shared {
    // The client secret, keys, assertions' `jti`s, codes and refresh tokens stay out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("base_url", &self.base_url)
            .field("tenants", &self.tenants)
            .field("users", &self.users.len())
            .field("apps", &self.apps.len())
            .field("api_client_id", &self.api_client_id)
            .field("identifier_uris", &self.identifier_uris)
            .field("sign_in", &self.sign_in)
            .finish_non_exhaustive()
    }
}

impl DevUser {
    /// The claims of a v2 delegated token for this user with the default scope, as JSON
    /// (for tools that describe a caller by claims, such as policy test cases).
    pub fn claims(&self) -> serde_json::Value {
        serde_json::json!({
            "ver": "2.0",
            "tid": self.tenant_id,
            "oid": self.object_id,
            "sub": self.object_id,
            "name": self.name,
            "preferred_username": self.upn,
            "scp": DEV_SCOPE,
            "roles": self.roles,
            "groups": self.groups,
            "amr": self.auth_methods,
            "azp": DEV_CLIENT_APP_ID,
        })
    }
}

impl Shared {
    pub(crate) fn count(&self, endpoint: DevEndpoint) {
        if let Some(c) = self.counters.get(endpoint as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
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

/// A running dev Entra emulator. Stops when dropped.
#[derive(Debug)]
pub struct DevEntra {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl DevEntra {
    /// A builder with the default tenants, users and apps (see [`DevEntraBuilder`]).
    pub fn builder() -> DevEntraBuilder {
        DevEntraBuilder::default()
    }

    /// The authority URL, `http://127.0.0.1:<port>` (use it as `token.authority`).
    pub fn url(&self) -> &str {
        &self.shared.base_url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The default tenant's id.
    pub fn tenant_id(&self) -> &str {
        self.shared
            .tenants
            .first()
            .map_or(CONTOSO_TENANT_ID, |t| t.id.as_str())
    }

    /// The protected API's application id (the `aud` of minted tokens).
    pub fn api_client_id(&self) -> &str {
        &self.shared.api_client_id
    }

    /// The v2 issuer of tenant `tid`.
    pub fn issuer_v2(&self, tid: &str) -> String {
        self.shared.issuer_v2(tid)
    }

    /// The v1 issuer of tenant `tid` (Entra's `https://sts.windows.net/{tid}/`).
    pub fn issuer_v1(&self, tid: &str) -> String {
        issuer_v1(tid)
    }

    /// The tenants.
    pub fn tenants(&self) -> &[DevTenant] {
        &self.shared.tenants
    }

    /// The users.
    pub fn users(&self) -> &[DevUser] {
        &self.shared.users
    }

    /// The daemon apps.
    pub fn apps(&self) -> &[DevApp] {
        &self.shared.apps
    }

    /// Starts a delegated token for user `key` (v2, default scope, 1 h lifetime).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn token_for(&self, key: &str) -> Result<TokenMint<'_>, DevError> {
        let user = self
            .shared
            .users
            .iter()
            .find(|u| u.key == key)
            .ok_or_else(|| DevError::UnknownPrincipal(key.to_owned()))?;
        Ok(TokenMint::user(&self.shared, user.clone()))
    }

    /// Starts an app-only token for daemon app `key` (v2, 1 h lifetime).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such app.
    pub fn app_token(&self, key: &str) -> Result<TokenMint<'_>, DevError> {
        let app = self
            .shared
            .apps
            .iter()
            .find(|a| a.key == key)
            .ok_or_else(|| DevError::UnknownPrincipal(key.to_owned()))?;
        Ok(TokenMint::app(&self.shared, app.clone()))
    }

    /// Makes a new key that can sign but is **not** published in the JWKS yet.
    ///
    /// # Errors
    ///
    /// [`DevError::Crypto`] if key generation fails.
    pub fn create_key(&self) -> Result<String, DevError> {
        let key = SigningKey::generate(None)?;
        let kid = key.kid.clone();
        self.with_keys(|ring| ring.unpublished.push(key));
        Ok(kid)
    }

    /// Publishes a key made by [`create_key`](Self::create_key).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownKey`] when no unpublished key has that `kid`.
    pub fn publish_key(&self, kid: &str) -> Result<(), DevError> {
        self.with_keys(|ring| {
            let at = ring.unpublished.iter().position(|k| k.kid == kid);
            match at {
                Some(at) => {
                    let key = ring.unpublished.remove(at);
                    ring.published.push(key);
                    Ok(())
                }
                None => Err(DevError::UnknownKey(kid.to_owned())),
            }
        })
    }

    /// Rotates: makes and publishes a new key and signs new tokens with it. The previous
    /// key stays published until [`retire_key`](Self::retire_key). Returns the new `kid`.
    ///
    /// # Errors
    ///
    /// [`DevError::Crypto`] if key generation fails.
    pub fn rotate_keys(&self) -> Result<String, DevError> {
        let key = SigningKey::generate(None)?;
        let kid = key.kid.clone();
        self.with_keys(|ring| {
            ring.published.push(key);
            ring.active.clone_from(&kid);
        });
        Ok(kid)
    }

    /// Removes a key from the published JWKS (tokens it signed stop validating once
    /// relying parties refresh).
    pub fn retire_key(&self, kid: &str) {
        self.with_keys(|ring| ring.published.retain(|k| k.kid != kid));
    }

    /// Publishes a key bound to tenant `tid`: its JWKS entry carries that tenant's concrete
    /// issuer, so it may sign only that tenant's tokens. Returns its `kid`.
    ///
    /// # Errors
    ///
    /// [`DevError::Crypto`] if key generation fails.
    pub fn add_tenant_key(&self, tid: &str) -> Result<String, DevError> {
        let key = SigningKey::generate(Some(tid.to_owned()))?;
        let kid = key.kid.clone();
        self.with_keys(|ring| ring.published.push(key));
        Ok(kid)
    }

    /// The `kid` that signs new tokens.
    pub fn active_kid(&self) -> String {
        self.with_keys(|ring| ring.active.clone())
    }

    /// The published `kid`s.
    pub fn published_kids(&self) -> Vec<String> {
        self.with_keys(|ring| ring.published.iter().map(|k| k.kid.clone()).collect())
    }

    /// Makes the JWKS endpoints answer `503` (`false`) or serve again (`true`).
    pub fn set_jwks_available(&self, available: bool) {
        self.shared
            .jwks_available
            .store(available, Ordering::Relaxed);
    }

    /// How many requests `endpoint` has served.
    pub fn requests(&self, endpoint: DevEndpoint) -> u64 {
        self.shared
            .counters
            .get(endpoint as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The dev API's client secret (random per emulator), for the on-behalf-of grant.
    pub fn client_secret(&self) -> &str {
        &self.shared.client_secret
    }

    /// The v2 token endpoint of tenant `tid` (the `aud` of certificate assertions).
    pub fn token_endpoint(&self, tid: &str) -> String {
        format!("{}/{tid}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// The base URL of the Graph emulation (use it as `obo.graph_url`).
    pub fn graph_url(&self) -> String {
        format!("{}/graph", self.shared.base_url)
    }

    /// Makes a client certificate and registers it as a credential of the dev API.
    ///
    /// # Errors
    ///
    /// [`DevError::Crypto`] if key generation fails.
    pub fn client_certificate(&self) -> Result<DevCertificate, DevError> {
        let cert = DevCertificate::generate()?;
        self.shared
            .certificates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((cert.thumbprint.clone(), cert.public_key_der.clone()));
        Ok(cert)
    }

    /// A federated client assertion: a token for the dev managed identity
    /// ([`DEV_MANAGED_IDENTITY_ID`]) with `aud` `api://AzureADTokenExchange`, as a workload
    /// would read it from its projected token file.
    ///
    /// # Errors
    ///
    /// [`DevError`] if signing fails.
    pub fn federated_assertion(&self, lifetime: Duration) -> Result<String, DevError> {
        let now = obo::unix_now();
        let tid = self.tenant_id();
        self.shared.sign(&serde_json::json!({
            "aud": obo::TOKEN_EXCHANGE_AUDIENCE,
            "iss": self.issuer_v2(tid),
            "sub": DEV_MANAGED_IDENTITY_ID,
            "oid": DEV_MANAGED_IDENTITY_ID,
            "tid": tid,
            "idtyp": "app",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime.as_secs(),
            "uti": uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// Makes the token endpoint fail on-behalf-of requests for user `key` (`None`: succeed).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn set_obo_failure(
        &self,
        key: &str,
        failure: Option<DevOboFailure>,
    ) -> Result<(), DevError> {
        set_failure(
            &self.shared.obo_failures,
            self.shared.user_oid(key)?,
            failure,
        );
        Ok(())
    }

    /// Makes the Graph emulation fail for user `key` (`None`: succeed).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn set_graph_failure(
        &self,
        key: &str,
        failure: Option<DevGraphFailure>,
    ) -> Result<(), DevError> {
        set_failure(
            &self.shared.graph_failures,
            self.shared.user_oid(key)?,
            failure,
        );
        Ok(())
    }

    /// The v2 authorize endpoint of tenant `tid` (a tenant id, `organizations` or `common`).
    pub fn authorize_endpoint(&self, tid: &str) -> String {
        format!("{}/{tid}/oauth2/v2.0/authorize", self.shared.base_url)
    }

    /// Registers a redirect URI of the dev API (the confidential client that signs users
    /// in). Authorize compares `redirect_uri` with the registered ones exactly, as strings,
    /// and never redirects to another one. Runtime, because a caller often learns its port
    /// only after binding; see also [`DevEntraBuilder::redirect_uri`].
    pub fn allow_redirect_uri(&self, uri: impl Into<String>) {
        self.shared.sign_in.allow_redirect_uri(uri.into());
    }

    /// Who authorize signs in when the request has no `login_hint` (`None`: show the user
    /// picker, the default). `key` is a user key (`"alice"`) or sign-in name.
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn set_sign_in_user(&self, key: Option<&str>) -> Result<(), DevError> {
        let user = match key {
            Some(k) => Some(
                authorize::find_user(&self.shared, k)
                    .map(|u| u.key.clone())
                    .ok_or_else(|| DevError::UnknownPrincipal(k.to_owned()))?,
            ),
            None => None,
        };
        self.shared.sign_in.set_default_user(user);
        Ok(())
    }

    /// Makes the interactive sign-in fail for user `key` (`None`: succeed).
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn set_sign_in_failure(
        &self,
        key: &str,
        failure: Option<DevSignInFailure>,
    ) -> Result<(), DevError> {
        set_failure(
            &self.shared.sign_in.failures,
            self.shared.user_oid(key)?,
            failure,
        );
        Ok(())
    }

    /// Revokes every refresh token issued to user `key` (what an admin's "revoke sessions"
    /// does): redeeming one answers `invalid_grant`, AADSTS50173. Returns how many were
    /// revoked. Tokens issued afterwards work.
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownPrincipal`] when there is no such user.
    pub fn revoke_refresh_tokens(&self, key: &str) -> Result<usize, DevError> {
        let oid = self.shared.user_oid(key)?;
        Ok(self.shared.sign_in.revoke(&oid))
    }

    /// The lifetime (`expires_in`) of the tokens the token endpoint issues (default 1 h).
    pub fn set_downstream_lifetime(&self, lifetime: Duration) {
        self.shared
            .downstream_lifetime
            .store(lifetime.as_secs(), Ordering::Relaxed);
    }

    /// Sends `refresh_in` with issued tokens (`None`: leave it out, the default).
    pub fn set_refresh_in(&self, refresh_in: Option<Duration>) {
        self.shared
            .refresh_in
            .store(refresh_in.map_or(0, |d| d.as_secs()), Ordering::Relaxed);
    }

    /// Stops the server.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    fn with_keys<T>(&self, f: impl FnOnce(&mut KeyRing) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update; the ring stays usable.
        let mut ring = self
            .shared
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut ring)
    }
}

/// Sets (or clears) one user's failure mode in a shared table.
fn set_failure<F>(
    table: &std::sync::Mutex<std::collections::HashMap<String, F>>,
    oid: String,
    failure: Option<F>,
) {
    let mut all = table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match failure {
        Some(f) => all.insert(oid, f),
        None => all.remove(&oid),
    };
}

impl Drop for DevEntra {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Configures a [`DevEntra`].
///
/// Defaults: tenants Contoso ([`CONTOSO_TENANT_ID`], the default) and Fabrikam
/// ([`FABRIKAM_TENANT_ID`]); users `alice` (Contoso, role `Tools.Admin`, Finance group,
/// MFA), `bob` (Contoso, role `Tools.Read`, password only) and `carol` (Fabrikam, role
/// `Tools.Read`, MFA); daemon app `reporter` (Contoso, role `Tools.Read`).
#[derive(Clone, Debug)]
#[must_use]
pub struct DevEntraBuilder {
    addr: SocketAddr,
    tenants: Vec<DevTenant>,
    users: Vec<DevUser>,
    apps: Vec<DevApp>,
    api_client_id: String,
    redirect_uris: Vec<String>,
    identifier_uris: Vec<String>,
}

impl Default for DevEntraBuilder {
    fn default() -> Self {
        let s = |v: &str| v.to_owned();
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenants: vec![
                DevTenant {
                    id: s(CONTOSO_TENANT_ID),
                    name: s("Contoso"),
                },
                DevTenant {
                    id: s(FABRIKAM_TENANT_ID),
                    name: s("Fabrikam"),
                },
            ],
            users: vec![
                DevUser {
                    key: s("alice"),
                    name: s("Alice Admin"),
                    upn: s("alice@contoso.example"),
                    object_id: s("a11ce000-0000-4000-8000-00000000a11c"),
                    tenant_id: s(CONTOSO_TENANT_ID),
                    roles: strings(&["Tools.Admin"]),
                    groups: strings(&[FINANCE_GROUP_ID]),
                    auth_methods: strings(&["pwd", "mfa"]),
                },
                DevUser {
                    key: s("bob"),
                    name: s("Bob Reader"),
                    upn: s("bob@contoso.example"),
                    object_id: s("b0b00000-0000-4000-8000-000000000b0b"),
                    tenant_id: s(CONTOSO_TENANT_ID),
                    roles: strings(&["Tools.Read"]),
                    groups: Vec::new(),
                    auth_methods: strings(&["pwd"]),
                },
                DevUser {
                    key: s("carol"),
                    name: s("Carol Partner"),
                    upn: s("carol@fabrikam.example"),
                    object_id: s("ca401000-0000-4000-8000-0000000ca401"),
                    tenant_id: s(FABRIKAM_TENANT_ID),
                    roles: strings(&["Tools.Read"]),
                    groups: Vec::new(),
                    auth_methods: strings(&["pwd", "mfa"]),
                },
            ],
            apps: vec![DevApp {
                key: s("reporter"),
                app_id: s("7e9d8c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"),
                object_id: s("5e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b"),
                tenant_id: s(CONTOSO_TENANT_ID),
                roles: strings(&["Tools.Read"]),
            }],
            api_client_id: s(DEV_API_CLIENT_ID),
            redirect_uris: Vec::new(),
            identifier_uris: Vec::new(),
        }
    }
}

impl DevEntraBuilder {
    /// Listen on `addr` instead of `127.0.0.1:0`. Only loopback addresses make sense.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Adds a tenant.
    pub fn tenant(mut self, tenant: DevTenant) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Adds (or replaces, by key) a user.
    pub fn user(mut self, user: DevUser) -> Self {
        self.users.retain(|u| u.key != user.key);
        self.users.push(user);
        self
    }

    /// Adds (or replaces, by key) a daemon app.
    pub fn app(mut self, app: DevApp) -> Self {
        self.apps.retain(|a| a.key != app.key);
        self.apps.push(app);
        self
    }

    /// The users configured so far.
    pub fn users(&self) -> &[DevUser] {
        &self.users
    }

    /// The protected API's application id (default [`DEV_API_CLIENT_ID`]).
    pub fn api_client_id(mut self, id: impl Into<String>) -> Self {
        self.api_client_id = id.into();
        self
    }

    /// Registers a redirect URI of the dev API (see [`DevEntra::allow_redirect_uri`]).
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Adds an Application ID URI of the dev API besides `api://{client id}` (for example
    /// the MCP server's URL): scopes may be named under it, and it is a `resource` value
    /// authorize accepts for them.
    pub fn identifier_uri(mut self, uri: impl Into<String>) -> Self {
        self.identifier_uris.push(uri.into());
        self
    }

    /// Generates the first signing key, binds the port and starts serving.
    ///
    /// # Errors
    ///
    /// [`DevError`] when the port cannot be bound or key generation fails.
    pub async fn start(self) -> Result<DevEntra, DevError> {
        let first = SigningKey::generate(None)?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let ring = KeyRing {
            active: first.kid.clone(),
            published: vec![first],
            unpublished: Vec::new(),
        };
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            tenants: self.tenants,
            users: self.users,
            apps: self.apps,
            api_client_id: self.api_client_id,
            identifier_uris: self.identifier_uris,
            keys: RwLock::new(ring),
            jwks_available: AtomicBool::new(true),
            counters: Default::default(),
            client_secret: format!("dev~{}", uuid::Uuid::new_v4().simple()),
            certificates: RwLock::new(Vec::new()),
            federated_subject: DEV_MANAGED_IDENTITY_ID.to_owned(),
            used_jti: Mutex::new(HashSet::new()),
            obo_failures: Mutex::new(HashMap::new()),
            graph_failures: Mutex::new(HashMap::new()),
            downstream_lifetime: AtomicU64::new(3600),
            refresh_in: AtomicU64::new(0),
            sign_in: authorize::SignIn::new(self.redirect_uris),
        });
        let (tx, rx) = oneshot::channel();
        let app = server::router(shared.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(target: "idguard::dev", %e, "dev entra stopped");
            }
        });
        Ok(DevEntra {
            shared,
            addr,
            shutdown: Some(tx),
        })
    }
}

/// The dev users (`alice`, `bob`, `carol`) as callers a policy test case may name
/// (`user = "alice"`), with the claims the emulator puts in their tokens.
pub fn named_callers() -> idguard::policy::cases::NamedCallers {
    DevEntraBuilder::default()
        .users()
        .iter()
        .fold(idguard::policy::cases::NamedCallers::new(), |callers, u| {
            callers.with(u.key.clone(), u.claims())
        })
}
