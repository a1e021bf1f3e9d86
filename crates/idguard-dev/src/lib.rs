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

// This file: the crate docs, the constants, `DevError`, `DevEndpoint`, the `DevEntra`
// handle and the re-exports. `builder` starts an emulator, `users` is its directory,
// `certificate` the dev API's certificate credential, `failure` the per-user failure
// modes, `shared` the state the handle shares with the server, `keys` the signing keys,
// `mint` token minting, `server` discovery and JWKS, `obo` the token endpoint (on-behalf-of)
// and Graph, `sign_in` the interactive sign-in (authorize, code and refresh-token grants).
mod builder;
mod certificate;
mod failure;
mod keys;
mod mint;
mod obo;
mod server;
mod shared;
mod sign_in;
mod users;

pub mod demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

pub use builder::DevEntraBuilder;
pub use certificate::DevCertificate;
pub use failure::{DevGraphFailure, DevOboFailure, DevSignInFailure};
pub use mint::TokenMint;
pub use obo::MFA_CLAIMS;
pub use users::{DevApi, DevApp, DevTenant, DevUser, named_callers, overage_user};

use failure::set_failure;
use keys::{KeyRing, SigningKey};
use shared::{Shared, issuer_v1};

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
        self.shared.counters.get(endpoint)
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
            .push((
                cert.thumbprint_s256().to_owned(),
                cert.public_key_der().to_vec(),
            ));
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
                sign_in::find_user(&self.shared, k)
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

impl Drop for DevEntra {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
