//! [`IdGuard`]: the cheap-clone handle that owns the shared state and builds every layer
//! and route.
//!
//! # Order
//!
//! Layers run outside-in in the order they are listed:
//!
//! ```text
//! ValidateTokenLayer  →  (AuthorizeMcpLayer)  →  handler or MCP service
//! ```
//!
//! Apply them with `route_layer` so unknown routes still answer 404, and keep the metadata
//! routes ([`IdGuard::oauth_router`]) outside the auth layer: clients fetch them before
//! they have a token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};

use crate::config::{IdGuardConfig, OAuthConfig, OboConfig, ResolvedConfig, TokenConfig};
use crate::entra::TenantMode;
use crate::error::{Rejection, RejectionKind, StartupError, TokenError};
use crate::oauth::proxy::Proxy;
use crate::oauth::{MemoryStore, OAuthStore};
use crate::obo::{BearerToken, OboClient};
use crate::principal::Principal;
use crate::token::TokenValidator;
use crate::token::cache::{TokenCache, TokenDigest, digest_token};
use crate::token::jwks::{KeyStore, Refresh};
use crate::token::layer::ValidateTokenLayer;

/// The idguard handle: validated configuration, signing keys, caches.
///
/// Cloning is cheap (one `Arc`). Build it once at start-up with [`IdGuard::new`] or
/// [`IdGuard::builder`]; both return only after discovery and the signing keys loaded.
#[derive(Clone, Debug)]
pub struct IdGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ResolvedConfig,
    validator: TokenValidator,
    keys: KeyStore,
    cache: Option<TokenCache>,
    clock: Clock,
    challenges: Challenges,
    authorization_server: String,
    stats: Counters,
    obo: Option<OboClient>,
    oauth: Option<Proxy>,
}

#[derive(Debug, Default)]
struct Counters {
    cache_hits: AtomicU64,
    validations: AtomicU64,
}

/// Counters of one [`IdGuard`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenStats {
    /// Tokens accepted from the validated-token cache.
    pub cache_hits: u64,
    /// Full validations (signature and claims), successful or not.
    pub validations: u64,
    /// Seconds since the signing keys were last fetched.
    pub keys_age_secs: u64,
}

/// Prebuilt `WWW-Authenticate` values, so a rejection costs no formatting.
#[derive(Debug)]
struct Challenges {
    missing: HeaderValue,
    invalid: HeaderValue,
    insufficient: HeaderValue,
    resource_metadata_url: String,
}

/// Wall-clock seconds that follow tokio's clock, so tests can pause and advance time.
#[derive(Debug)]
struct Clock {
    anchor_unix: u64,
    anchor: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            anchor_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            anchor: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.anchor_unix + self.anchor.elapsed().as_secs()
    }
}

/// What the synchronous fast path concluded.
pub(crate) enum Authn {
    /// Decided without waiting.
    Done(Result<Admitted, Refusal>),
    /// An idguard-issued token (OAuth proxy): look up its session, then decide.
    NeedsSession { token: String },
    /// The token names an unknown `kid`: refresh the keys (once), then decide.
    NeedsRefresh { token: String, generation: u64 },
    /// A groups overage to resolve through Graph before policies see the caller.
    NeedsGroups {
        principal: Principal,
        token: BearerToken,
    },
}

/// Why the authentication path refused a token: the library's [`TokenError`], from which
/// the layer's [`Rejection`] is made ([`IdGuard::rejection`]) only when the layer answers.
pub(crate) enum Refusal {
    /// The token itself, or the scope/role gate ([`TokenError::InsufficientScope`]).
    Token(TokenError),
    /// A groups overage that Graph could not resolve: answered like the on-behalf-of error.
    Groups {
        error: crate::obo::OboError,
        principal: Principal,
    },
}

impl From<Refusal> for TokenError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Token(e) => e,
            Refusal::Groups { error, .. } => TokenError::GroupsUnresolved(error),
        }
    }
}

/// An accepted request's extensions: the caller, and with `[obo]` their token and the
/// on-behalf-of client (for [`Obo`](crate::obo::Obo)).
pub(crate) struct Admitted {
    principal: Principal,
    obo: Option<(OboClient, BearerToken)>,
}

impl Admitted {
    pub(crate) fn insert_into(self, extensions: &mut http::Extensions) {
        if let Some((client, token)) = self.obo {
            extensions.insert(client);
            extensions.insert(token);
        }
        extensions.insert(self.principal);
    }
}

impl IdGuard {
    /// Starts from a resolved configuration: fetches the OpenID metadata and the signing
    /// keys, and starts the periodic key refresh.
    ///
    /// # Errors
    ///
    /// [`StartupError`] when discovery or the keys cannot be loaded.
    pub async fn new(config: ResolvedConfig) -> Result<Self, StartupError> {
        let client = default_client(&config)?;
        Self::with_http_client(config, client).await
    }

    /// Like [`new`](Self::new), with an HTTP client of your own (proxies, timeouts, TLS).
    ///
    /// # Errors
    ///
    /// [`StartupError`] when discovery or the keys cannot be loaded.
    pub async fn with_http_client(
        config: ResolvedConfig,
        client: reqwest::Client,
    ) -> Result<Self, StartupError> {
        Self::start(config, client, None).await
    }

    async fn start(
        config: ResolvedConfig,
        client: reqwest::Client,
        store: Option<Arc<dyn OAuthStore>>,
    ) -> Result<Self, StartupError> {
        // jsonwebtoken panics on first use if two crypto backends end up enabled through
        // feature unification; choosing ours explicitly rules that out. A second install
        // (another IdGuard, or the host app) is harmless.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

        // Discovery and the signing keys (from `token.jwks_cache_file` when the identity
        // provider cannot be reached).
        let (keys, v2) = KeyStore::start(&client, &config).await?;
        let v1_issuer = v2.v1_issuer.clone();
        let authorization_server = match &config.tenant {
            TenantMode::Single(_) => v2.issuer.clone(),
            TenantMode::AllowList(_) | TenantMode::AnyOrganization => {
                format!("{}/organizations/v2.0", config.authority)
            }
        };
        let validator = TokenValidator::new(
            config.tenant.clone(),
            config.audiences.clone(),
            v2.issuer,
            v1_issuer,
            config.leeway.as_secs(),
        );
        let challenges = Challenges::new(&config);
        let obo = config.obo.clone().map(|settings| {
            OboClient::new(
                settings,
                client.clone(),
                config.authority.clone(),
                config.client_id.clone(),
                challenges.resource_metadata_url.clone(),
            )
        });
        let oauth = match (&config.oauth, &config.obo) {
            (Some(settings), Some(obo)) => {
                let store = store.unwrap_or_else(|| {
                    Arc::new(MemoryStore::new(settings.store_max_bytes)) as Arc<dyn OAuthStore>
                });
                Some(
                    Proxy::new(
                        settings.clone(),
                        store,
                        obo.credential.clone(),
                        client.clone(),
                        &config,
                    )
                    .map_err(|reason| StartupError::Discovery {
                        url: settings.issuer.clone(),
                        reason,
                    })?,
                )
            }
            _ => None,
        };
        let authorization_server = match &oauth {
            Some(p) => p.issuer().to_owned(),
            None => authorization_server,
        };
        let inner = Arc::new(Inner {
            oauth,
            obo,
            cache: (config.cache_capacity > 0).then(|| TokenCache::new(config.cache_capacity)),
            validator,
            keys,
            clock: Clock::new(),
            challenges,
            authorization_server,
            config,
            stats: Counters::default(),
        });
        spawn_periodic_refresh(Arc::downgrade(&inner), inner.config.jwks_refresh_interval);
        Ok(Self { inner })
    }

    /// A builder that mirrors the `[token]` configuration keys.
    pub fn builder() -> IdGuardBuilder {
        IdGuardBuilder::default()
    }

    /// The configuration this guard runs with.
    pub fn config(&self) -> &ResolvedConfig {
        &self.inner.config
    }

    /// The OAuth proxy, when `[oauth]` is configured.
    pub(crate) fn oauth_proxy(&self) -> Option<&Proxy> {
        self.inner.oauth.as_ref()
    }

    /// The OAuth proxy's counters, when `[oauth]` is configured.
    pub fn oauth_stats(&self) -> Option<crate::oauth::OAuthStats> {
        self.inner.oauth.as_ref().map(Proxy::stats)
    }

    /// The on-behalf-of client, when `[obo]` is configured.
    pub fn obo_client(&self) -> Option<&OboClient> {
        self.inner.obo.as_ref()
    }

    /// The layer that validates bearer tokens and inserts the [`Principal`].
    pub fn validate_token_layer(&self) -> ValidateTokenLayer {
        ValidateTokenLayer::new(self.clone())
    }

    /// The URL of this resource's RFC 9728 metadata (the `resource_metadata` of challenges).
    pub fn resource_metadata_url(&self) -> &str {
        &self.inner.challenges.resource_metadata_url
    }

    /// Token validation counters and the age of the signing keys.
    pub fn stats(&self) -> TokenStats {
        TokenStats {
            cache_hits: self.inner.stats.cache_hits.load(Ordering::Relaxed),
            validations: self.inner.stats.validations.load(Ordering::Relaxed),
            keys_age_secs: self.inner.keys.snapshot().age().as_secs(),
        }
    }

    /// The signing keys' source, age and fetch failures (for health and metrics).
    #[cfg_attr(
        not(feature = "internals"),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub(crate) fn key_status(&self) -> crate::token::jwks::KeyStatus {
        self.inner.keys.status()
    }

    /// The authorization server named in the protected-resource metadata.
    pub fn authorization_server(&self) -> &str {
        &self.inner.authorization_server
    }

    /// Authenticates a bearer token exactly as [`ValidateTokenLayer`] does, and returns
    /// the caller the layer would insert: the token validated (with the validated-token
    /// cache; the keys refreshed once if its `kid` is new; an idguard-issued token through
    /// its session), then the `token.required_scopes`/`token.required_roles` gate, then a
    /// groups overage resolved through Graph when `[obo]` resolves overage.
    ///
    /// # Errors
    ///
    /// The [`TokenError`] that made the token unacceptable;
    /// [`InsufficientScope`](TokenError::InsufficientScope) where the layer answers `403`;
    /// [`GroupsUnresolved`](TokenError::GroupsUnresolved) where a groups overage could not
    /// be resolved.
    pub async fn validate(&self, token: &str) -> Result<Principal, TokenError> {
        let admitted = match self.authenticate_token(token) {
            Authn::Done(done) => done,
            // Boxed, as in the layer: the slow paths stay out of this future.
            slow => Box::pin(self.complete(slow)).await,
        };
        admitted.map(|a| a.principal).map_err(TokenError::from)
    }

    /// Validation alone: the cache, then the token against the keys (refreshed once if its
    /// `kid` is new). No scope/role gate, no groups.
    async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        match self.validate_now(token, &mut None) {
            Err(TokenError::UnknownKey) => {
                let generation = self.inner.keys.snapshot().generation();
                self.validate_after_refresh(token, generation).await
            }
            other => other,
        }
    }

    /// The synchronous path: cache, then full validation against the current keys.
    /// `digest` receives the token's SHA-256 when the cache computed it, so on-behalf-of
    /// reuses it instead of hashing the token again.
    fn validate_now(
        &self,
        token: &str,
        digest: &mut Option<TokenDigest>,
    ) -> Result<Principal, TokenError> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let Some(cache) = &inner.cache else {
            inner.stats.validations.fetch_add(1, Ordering::Relaxed);
            return inner.validator.validate(token, &inner.keys.snapshot(), now);
        };
        let key = *digest.get_or_insert_with(|| digest_token(token));
        if let Some(principal) = cache.get(&key, now) {
            inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(principal);
        }
        inner.stats.validations.fetch_add(1, Ordering::Relaxed);
        let principal = inner
            .validator
            .validate(token, &inner.keys.snapshot(), now)?;
        cache.insert(key, principal.clone(), now);
        Ok(principal)
    }

    async fn validate_after_refresh(
        &self,
        token: &str,
        generation: u64,
    ) -> Result<Principal, TokenError> {
        match self.inner.keys.refresh_for_unknown_kid(generation).await {
            Refresh::Updated => self.validate_now(token, &mut None),
            Refresh::RateLimited => Err(TokenError::UnknownKey),
            Refresh::Unavailable => Err(TokenError::KeysUnavailable),
        }
    }

    /// The layer's synchronous decision for a request's headers.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Authn {
        match bearer_token(headers) {
            Ok(token) => self.authenticate_token(token),
            Err(e) => Authn::Done(Err(Refusal::Token(e))),
        }
    }

    /// The one authentication path (the layer's and [`validate`](Self::validate)'s),
    /// synchronous part: decides without waiting when it can (a cache hit needs no more),
    /// else says what to wait for; [`complete`](Self::complete) does that.
    fn authenticate_token(&self, token: &str) -> Authn {
        if let Some(proxy) = &self.inner.oauth
            && proxy.is_own_token(token)
        {
            return Authn::NeedsSession {
                token: token.to_owned(),
            };
        }
        let mut digest = None;
        match self.validate_now(token, &mut digest) {
            Ok(principal) => match self.admit(principal) {
                Ok(p) if self.needs_groups(&p) => Authn::NeedsGroups {
                    principal: p,
                    token: BearerToken::with_digest(token, digest),
                },
                Ok(p) => Authn::Done(Ok(
                    self.admitted(p, || BearerToken::with_digest(token, digest))
                )),
                Err(r) => Authn::Done(Err(r)),
            },
            Err(TokenError::UnknownKey) => Authn::NeedsRefresh {
                token: token.to_owned(),
                generation: self.inner.keys.snapshot().generation(),
            },
            Err(e) => Authn::Done(Err(Refusal::Token(e))),
        }
    }

    /// The one authentication path, the part that waits: a session, a key refresh, or
    /// the caller's groups.
    pub(crate) async fn complete(&self, authn: Authn) -> Result<Admitted, Refusal> {
        match authn {
            Authn::Done(done) => done,
            Authn::NeedsSession { token } => self.authenticate_session(token).await,
            Authn::NeedsRefresh { token, generation } => {
                self.authenticate_after_refresh(token, generation).await
            }
            Authn::NeedsGroups { principal, token } => self.resolve_groups(principal, token).await,
        }
    }

    /// After an unknown `kid`: validation once the keys are refreshed, then the rest.
    async fn authenticate_after_refresh(
        &self,
        token: String,
        generation: u64,
    ) -> Result<Admitted, Refusal> {
        let principal = self
            .validate_after_refresh(&token, generation)
            .await
            .map_err(Refusal::Token)?;
        self.finish(principal, BearerToken::new(token)).await
    }

    /// After validation on a slow path: the scope gate, then groups or admission.
    async fn finish(&self, principal: Principal, token: BearerToken) -> Result<Admitted, Refusal> {
        let principal = self.admit(principal)?;
        if self.needs_groups(&principal) {
            self.resolve_groups(principal, token).await
        } else {
            Ok(self.admitted(principal, || token))
        }
    }

    /// An idguard-issued token: its session's Entra token, validated like any other, is
    /// the caller's identity and on-behalf-of assertion; the gate then sees the scopes the
    /// client was granted.
    async fn authenticate_session(&self, token: String) -> Result<Admitted, Refusal> {
        let Some(proxy) = &self.inner.oauth else {
            return Err(Refusal::Token(TokenError::SessionEnded));
        };
        let Some(session) = proxy
            .entra_token_for(&token, self.inner.config.leeway.as_secs())
            .await
        else {
            return Err(Refusal::Token(TokenError::SessionEnded));
        };
        let principal = self
            .verify(&session.entra_token)
            .await
            .map_err(Refusal::Token)?
            .via_oauth_client(&session.scopes, &session.client);
        self.finish(principal, BearerToken::new(session.entra_token))
            .await
    }

    /// A groups overage: the caller with groups from Graph.
    async fn resolve_groups(
        &self,
        principal: Principal,
        token: BearerToken,
    ) -> Result<Admitted, Refusal> {
        let Some(obo) = &self.inner.obo else {
            return Ok(Admitted {
                principal,
                obo: None,
            });
        };
        match obo.resolve_overage(&principal, &token).await {
            Ok(resolved) => Ok(Admitted {
                principal: resolved,
                obo: Some((obo.clone(), token)),
            }),
            Err(error) => Err(Refusal::Groups { error, principal }),
        }
    }

    fn needs_groups(&self, p: &Principal) -> bool {
        p.groups_overage()
            && !p.is_app_only()
            && self
                .inner
                .obo
                .as_ref()
                .is_some_and(OboClient::resolves_overage)
    }

    fn admitted(&self, principal: Principal, token: impl FnOnce() -> BearerToken) -> Admitted {
        Admitted {
            principal,
            obo: self.inner.obo.as_ref().map(|c| (c.clone(), token())),
        }
    }

    /// The optional scope/role gate: any required scope, or any required role.
    fn admit(&self, principal: Principal) -> Result<Principal, Refusal> {
        let c = &self.inner.config;
        if c.required_scopes.is_empty() && c.required_roles.is_empty() {
            return Ok(principal);
        }
        let ok = c.required_scopes.iter().any(|s| principal.has_scope(s))
            || c.required_roles.iter().any(|r| principal.has_role(r));
        if ok {
            Ok(principal)
        } else {
            tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), oid = principal.object_id(), "required scope or role missing");
            Err(Refusal::Token(TokenError::InsufficientScope))
        }
    }

    /// The layer's answer for a refusal.
    pub(crate) fn rejection(&self, refusal: Refusal) -> Rejection {
        match refusal {
            Refusal::Token(e) => self.reject(&e),
            Refusal::Groups { error, principal } => match &self.inner.obo {
                Some(obo) => obo.rejection(&error, &principal),
                None => self.reject(&TokenError::GroupsUnresolved(error)),
            },
        }
    }

    fn reject(&self, e: &TokenError) -> Rejection {
        let ch = &self.inner.challenges;
        match e {
            TokenError::Missing => {
                Rejection::new(RejectionKind::MissingToken, Some(ch.missing.clone()))
            }
            TokenError::InsufficientScope => Rejection::new(
                RejectionKind::InsufficientScope,
                Some(ch.insufficient.clone()),
            ),
            // Only without `[obo]` (never in practice): the groups service is unavailable.
            TokenError::GroupsUnresolved(_) => {
                tracing::error!(target: "idguard::rejection", "{e}");
                Rejection::new(RejectionKind::Unavailable, None)
            }
            TokenError::KeysUnavailable => {
                tracing::error!(target: "idguard::rejection", "{e}");
                // The time until the key store tries again, not a guess.
                Rejection::new(RejectionKind::Unavailable, None)
                    .with_retry_after(self.inner.keys.retry_after())
            }
            _ => {
                tracing::debug!(target: "idguard::rejection", reason = %e, "invalid token");
                Rejection::invalid_token(&ch.invalid, e)
            }
        }
    }
}

/// 5 s to connect, 10 s in all.
fn default_client(config: &ResolvedConfig) -> Result<reqwest::Client, StartupError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| StartupError::Discovery {
            url: config.authority.clone(),
            reason: format!("cannot build an HTTP client: {e}"),
        })
}

/// The bearer token of the `Authorization` header. Only that header is read: a token in the
/// query string or body counts as missing.
fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            TokenError::Malformed
        } else {
            TokenError::Missing
        });
    };
    if value.len() > crate::token::MAX_TOKEN_BYTES + 7 {
        return Err(TokenError::TooLarge {
            max: crate::token::MAX_TOKEN_BYTES,
        });
    }
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

impl Challenges {
    fn new(c: &ResolvedConfig) -> Self {
        let resource_metadata_url = resource_metadata_url(&c.resource);
        let scope = c.advertised_scopes().join(" ");
        let scope_param = if scope.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{scope}\"")
        };
        let header = |s: String| {
            HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
        };
        Self {
            missing: header(format!(
                "Bearer resource_metadata=\"{resource_metadata_url}\"{scope_param}"
            )),
            invalid: header(format!(
                "Bearer error=\"invalid_token\", resource_metadata=\"{resource_metadata_url}\"{scope_param}"
            )),
            insufficient: header(format!(
                "Bearer error=\"insufficient_scope\"{scope_param}, resource_metadata=\"{resource_metadata_url}\""
            )),
            resource_metadata_url,
        }
    }
}

/// RFC 9728 §3.1: the well-known segment goes between the host and the resource's path.
pub fn resource_metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    format!(
        "{scheme}://{host}/.well-known/oauth-protected-resource{}",
        path.trim_end_matches('/')
    )
}

fn spawn_periodic_refresh(inner: Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            inner.keys.refresh_periodic().await;
        }
    });
}

/// Builds an [`IdGuard`] from the same keys as `[token]` in `idguard.toml`.
///
/// ```no_run
/// # async fn run() -> Result<(), idguard::StartupError> {
/// let guard = idguard::IdGuard::builder()
///     .tenant("72f988bf-86f1-41af-91ab-2d7cd011db47")
///     .client_id("8c1a5e6f-0000-4000-8000-000000000001")
///     .resource("https://mcp.contoso.com/mcp")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct IdGuardBuilder {
    token: TokenConfig,
    obo: Option<OboConfig>,
    oauth: Option<OAuthConfig>,
    store: Option<Arc<dyn OAuthStore>>,
    client: Option<reqwest::Client>,
}

impl std::fmt::Debug for IdGuardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGuardBuilder")
            .field("token", &self.token)
            .field("obo", &self.obo)
            .field("oauth", &self.oauth)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl IdGuardBuilder {
    /// `token.authority`: the authority host URL.
    pub fn authority(mut self, url: impl Into<String>) -> Self {
        self.token.authority = Some(url.into());
        self
    }

    /// `token.tenant`: a tenant id, or `organizations`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.token.tenant = Some(tenant.into());
        self
    }

    /// `token.allowed_tenants` (with `tenant("organizations")`).
    pub fn allowed_tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.token.allowed_tenants = ids.into_iter().map(Into::into).collect();
        self
    }

    /// `token.client_id`: this API's application id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.token.client_id = Some(id.into());
        self
    }

    /// `token.audiences`: accepted `aud` values (default: the client id).
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, auds: I) -> Self {
        self.token.audiences = auds.into_iter().map(Into::into).collect();
        self
    }

    /// `token.accept_v1`: also accept v1.0 tokens.
    pub fn accept_v1(mut self, yes: bool) -> Self {
        self.token.accept_v1 = yes;
        self
    }

    /// `token.leeway`: clock skew on `exp`/`nbf` (default [`DEFAULT_LEEWAY`](crate::config::DEFAULT_LEEWAY)).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.token.leeway = Some(format!("{}ms", leeway.as_millis()));
        self
    }

    /// `token.required_scopes`: any one of these delegated scopes is required.
    pub fn required_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.token.required_scopes = s.into_iter().map(Into::into).collect();
        self
    }

    /// `token.required_roles`: any one of these app roles is required.
    pub fn required_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.token.required_roles = r.into_iter().map(Into::into).collect();
        self
    }

    /// `token.resource`: the canonical URL of the protected resource.
    pub fn resource(mut self, url: impl Into<String>) -> Self {
        self.token.resource = Some(url.into());
        self
    }

    /// `token.identifier_uri`: the Application ID URI that qualifies scopes.
    pub fn identifier_uri(mut self, uri: impl Into<String>) -> Self {
        self.token.identifier_uri = Some(uri.into());
        self
    }

    /// `token.jwks_min_refresh_interval`: minimum gap between unknown-`kid` refreshes.
    pub fn with_jwks_min_refresh_interval(mut self, every: Duration) -> Self {
        self.token.jwks_min_refresh_interval = Some(format!("{}ms", every.as_millis()));
        self
    }

    /// `token.jwks_cache_file`: where the last fetched signing keys are kept, to start from
    /// when the identity provider cannot be reached.
    pub fn with_jwks_cache_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token.jwks_cache_file = Some(path.into());
        self
    }

    /// `token.jwks_refresh_interval`: the periodic background refresh.
    pub fn with_jwks_refresh_interval(mut self, every: Duration) -> Self {
        self.token.jwks_refresh_interval = Some(format!("{}ms", every.as_millis()));
        self
    }

    /// `token.cache_capacity`: how many validated tokens are cached (`0`: no cache).
    pub fn with_cache_capacity(mut self, entries: u64) -> Self {
        self.token.cache_capacity = Some(entries);
        self
    }

    /// `[obo]`: on-behalf-of calls to downstream APIs (credential, APIs, cache, Graph).
    pub fn obo(mut self, obo: OboConfig) -> Self {
        self.obo = Some(obo);
        self
    }

    /// `[oauth]`: the OAuth proxy for MCP clients (needs [`obo`](Self::obo) for the app's
    /// credential, and [`required_scopes`](Self::required_scopes)).
    pub fn oauth(mut self, oauth: OAuthConfig) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Where the OAuth proxy keeps its state (default: a [`MemoryStore`]). Use a shared
    /// store when several replicas serve the same clients.
    pub fn oauth_store(mut self, store: Arc<dyn OAuthStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The HTTP client for discovery, keys, on-behalf-of and Graph (default: 5 s connect,
    /// 10 s total timeout).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Resolves the configuration and starts the guard.
    ///
    /// # Errors
    ///
    /// [`StartupError::Config`] naming every bad key, or a discovery/key loading error.
    pub async fn build(self) -> Result<IdGuard, StartupError> {
        let resolved = IdGuardConfig {
            token: self.token,
            obo: self.obo,
            oauth: self.oauth,
            ..IdGuardConfig::default()
        }
        .resolve()?;
        let client = match self.client {
            Some(client) => client,
            None => default_client(&resolved)?,
        };
        IdGuard::start(resolved, client, self.store).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_well_known_before_the_path() {
        assert_eq!(
            resource_metadata_url("https://mcp.contoso.com/mcp"),
            "https://mcp.contoso.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            resource_metadata_url("https://api.contoso.com"),
            "https://api.contoso.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            resource_metadata_url("http://127.0.0.1:8400/"),
            "http://127.0.0.1:8400/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn bearer_only_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(TokenError::Missing));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), Err(TokenError::Missing));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer a.b.c"));
        assert_eq!(bearer_token(&h), Ok("a.b.c"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer d.e.f"));
        assert_eq!(bearer_token(&h), Err(TokenError::Malformed));
    }
}
