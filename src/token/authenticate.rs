//! Per-request authentication: the one path from a bearer token to an admitted caller, or
//! to the answer that refuses it.
//!
//! [`Authenticator`] owns it: the `Authorization` header read, the token validated (the
//! validated-token cache; the keys refreshed once when its `kid` is new; an idguard-issued
//! token through its session), the `token.required_scopes`/`token.required_roles` gate, a
//! groups overage resolved, and the challenge of a refusal.
//! [`ValidateTokenLayer`](super::layer::ValidateTokenLayer) calls it with the request's
//! headers, [`IdGuard::validate`](crate::IdGuard::validate) with a token; both take the
//! same path.
//!
//! Two things come from elsewhere, through small traits the guard injects, so that `token/`
//! imports neither the guard, the OAuth proxy nor on-behalf-of: [`IssuedTokens`] (the
//! OAuth proxy's own tokens) and [`OnBehalfOf`] (groups through Graph, and the
//! on-behalf-of client that handlers find in the request extensions).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};

use super::TokenValidator;
use super::bearer::{BearerToken, bearer_token};
use super::cache::{TokenCache, TokenDigest, digest_token};
use super::config::AuthSettings;
use super::jwks::{KeyStore, Refresh};
use crate::error::{Challenge, Rejection, RejectionKind, TokenError};
use crate::principal::Principal;

/// idguard-issued access tokens (the OAuth proxy, `[oauth]`), as authentication sees them.
pub(crate) trait IssuedTokens: Send + Sync + fmt::Debug {
    /// Whether `token` has the shape of an idguard-issued token (cheap: no verification).
    fn is_issued(&self, token: &str) -> bool;

    /// The session behind a valid idguard-issued token; `None` when the token is altered,
    /// expired (beyond `leeway` seconds), not for this resource, or its session ended;
    /// [`TokenError::StoreUnavailable`] when the session store cannot answer.
    fn session<'a>(
        &'a self,
        token: &'a str,
        leeway: u64,
    ) -> BoxFuture<'a, Result<Option<Session>, TokenError>>;
}

/// What an idguard-issued token stands for.
pub(crate) struct Session {
    /// The Entra access token: the caller's identity and on-behalf-of assertion.
    pub(crate) entra_token: String,
    /// The API scopes (short names) the client signed in for.
    pub(crate) scopes: Vec<String>,
    /// The client, as policies and logs name it.
    pub(crate) client: String,
}

/// On-behalf-of (`[obo]`), as authentication sees it.
pub(crate) trait OnBehalfOf: Send + Sync + fmt::Debug {
    /// Whether a groups overage is resolved (through Graph) before the caller is admitted.
    fn resolves_overage(&self) -> bool;

    /// `principal` with the groups of its overage, `token` being its assertion.
    ///
    /// # Errors
    ///
    /// [`TokenError::GroupsUnresolved`].
    fn resolve_groups<'a>(
        &'a self,
        principal: &'a Principal,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Principal, TokenError>>;

    /// The answer for an `error` of [`resolve_groups`](Self::resolve_groups), for
    /// `principal`; `None` for an error it did not produce.
    fn rejection(&self, error: &TokenError, principal: &Principal) -> Option<Rejection>;

    /// Puts what an on-behalf-of call needs besides the caller and their token (the
    /// client) into an accepted request's extensions.
    fn insert_into(&self, extensions: &mut http::Extensions);
}

/// Per-request authentication: built once by the guard, shared by its layers.
#[derive(Debug)]
pub(crate) struct Authenticator {
    validator: TokenValidator,
    keys: KeyStore,
    cache: Option<TokenCache>,
    clock: Clock,
    challenges: Challenges,
    required_scopes: Vec<String>,
    required_roles: Vec<String>,
    leeway: u64,
    stats: Counters,
    issued: Option<Arc<dyn IssuedTokens>>,
    obo: Option<Arc<dyn OnBehalfOf>>,
}

#[derive(Debug, Default)]
struct Counters {
    cache_hits: AtomicU64,
    validations: AtomicU64,
}

/// Counters of one [`IdGuard`](crate::IdGuard), for metrics.
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

/// The challenges of refusals, built once, so a rejection costs little formatting.
#[derive(Debug)]
struct Challenges {
    missing: HeaderValue,
    /// Completed per refusal with the `error_description` of its [`TokenError`].
    invalid: Challenge,
    insufficient: HeaderValue,
    resource_metadata_url: String,
}

impl Challenges {
    fn new(resource_metadata_url: String, scope: &str) -> Self {
        Self {
            missing: Challenge::missing_token(&resource_metadata_url, scope).header_or_minimal(),
            invalid: Challenge::invalid_token(&resource_metadata_url, scope),
            insufficient: Challenge::insufficient_scope(&resource_metadata_url, scope)
                .header_or_minimal(),
            resource_metadata_url,
        }
    }
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

/// Why authentication refused a token: the library's [`TokenError`], from which the
/// layer's [`Rejection`] is made ([`Authenticator::rejection`]) only when the layer answers.
pub(crate) enum Refusal {
    /// The token itself, or the scope/role gate ([`TokenError::InsufficientScope`]).
    Token(TokenError),
    /// A groups overage that could not be resolved ([`TokenError::GroupsUnresolved`]):
    /// answered like the on-behalf-of error.
    Groups {
        error: TokenError,
        principal: Principal,
    },
}

impl From<Refusal> for TokenError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Token(e) | Refusal::Groups { error: e, .. } => e,
        }
    }
}

/// An accepted request's extensions: the caller; with `[obo]` the on-behalf-of client (for
/// [`Obo`](crate::obo::Obo)); with `[obo]` or `[oauth]` the caller's Entra token (behind an
/// idguard-issued token, the session's: never the `Authorization` header's).
pub(crate) struct Admitted {
    principal: Principal,
    obo: Option<Arc<dyn OnBehalfOf>>,
    token: Option<BearerToken>,
}

impl Admitted {
    pub(crate) fn insert_into(self, extensions: &mut http::Extensions) {
        if let Some(obo) = self.obo {
            obo.insert_into(extensions);
        }
        if let Some(token) = self.token {
            extensions.insert(token);
        }
        extensions.insert(self.principal);
    }
}

impl Authenticator {
    /// Authentication with `config`'s gate, leeway, cache and challenges (naming
    /// `resource_metadata_url`), validating with `validator` against `keys`.
    pub(crate) fn new(
        config: &AuthSettings,
        validator: TokenValidator,
        keys: KeyStore,
        resource_metadata_url: String,
    ) -> Self {
        let scope = &config.scope;
        Self {
            validator,
            keys,
            cache: (config.cache_capacity > 0).then(|| TokenCache::new(config.cache_capacity)),
            clock: Clock::new(),
            challenges: Challenges::new(resource_metadata_url, scope),
            required_scopes: config.required_scopes.clone(),
            required_roles: config.required_roles.clone(),
            leeway: config.leeway.as_secs(),
            stats: Counters::default(),
            issued: None,
            obo: None,
        }
    }

    /// Accepts idguard-issued tokens through `issued` (the OAuth proxy).
    pub(crate) fn with_issued_tokens(mut self, issued: Arc<dyn IssuedTokens>) -> Self {
        self.issued = Some(issued);
        self
    }

    /// Resolves groups overages and hands handlers the on-behalf-of client through `obo`.
    pub(crate) fn with_on_behalf_of(mut self, obo: Arc<dyn OnBehalfOf>) -> Self {
        self.obo = Some(obo);
        self
    }

    /// The signing keys.
    pub(crate) fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The URL of this resource's RFC 9728 metadata (the `resource_metadata` of challenges).
    pub(crate) fn resource_metadata_url(&self) -> &str {
        &self.challenges.resource_metadata_url
    }

    /// Validation counters and the age of the signing keys.
    pub(crate) fn stats(&self) -> TokenStats {
        TokenStats {
            cache_hits: self.stats.cache_hits.load(Ordering::Relaxed),
            validations: self.stats.validations.load(Ordering::Relaxed),
            keys_age_secs: self.keys.snapshot().age().as_secs(),
        }
    }

    /// The whole path for a token (what [`IdGuard::validate`](crate::IdGuard::validate)
    /// answers): the caller the layer would insert, or why not.
    pub(crate) async fn validate(&self, token: &str) -> Result<Principal, TokenError> {
        let admitted = match self.authenticate_token(token) {
            Authn::Done(done) => done,
            // Boxed, as in the layer: the slow paths stay out of this future.
            slow => Box::pin(self.complete(slow)).await,
        };
        admitted.map(|a| a.principal).map_err(TokenError::from)
    }

    /// The layer's synchronous decision for a request's headers; finish what it leaves
    /// with [`complete`](Self::complete).
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Authn {
        match bearer_token(headers) {
            Ok(token) => self.authenticate_token(token),
            Err(e) => Authn::Done(Err(Refusal::Token(e))),
        }
    }

    /// The one authentication path, synchronous part: decides without waiting when it can
    /// (a cache hit needs no more), else says what to wait for; [`complete`](Self::complete)
    /// does that.
    fn authenticate_token(&self, token: &str) -> Authn {
        if let Some(issued) = &self.issued
            && issued.is_issued(token)
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
                generation: self.keys.snapshot().generation(),
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

    /// Validation alone: the cache, then the token against the keys (refreshed once if its
    /// `kid` is new). No scope/role gate, no groups.
    async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        match self.validate_now(token, &mut None) {
            Err(TokenError::UnknownKey) => {
                let generation = self.keys.snapshot().generation();
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
        let now = self.clock.now();
        let Some(cache) = &self.cache else {
            self.stats.validations.fetch_add(1, Ordering::Relaxed);
            return self.validator.validate(token, &self.keys.snapshot(), now);
        };
        let key = *digest.get_or_insert_with(|| digest_token(token));
        if let Some(principal) = cache.get(&key, now) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(principal);
        }
        self.stats.validations.fetch_add(1, Ordering::Relaxed);
        let principal = self.validator.validate(token, &self.keys.snapshot(), now)?;
        cache.insert(key, principal.clone(), now);
        Ok(principal)
    }

    async fn validate_after_refresh(
        &self,
        token: &str,
        generation: u64,
    ) -> Result<Principal, TokenError> {
        match self.keys.refresh_for_unknown_kid(generation).await {
            Refresh::Updated => self.validate_now(token, &mut None),
            Refresh::RateLimited => Err(TokenError::UnknownKey),
            Refresh::Unavailable => Err(TokenError::KeysUnavailable),
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
        let Some(issued) = &self.issued else {
            return Err(Refusal::Token(TokenError::SessionEnded));
        };
        let Some(session) = issued
            .session(&token, self.leeway)
            .await
            .map_err(Refusal::Token)?
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
        let Some(obo) = &self.obo else {
            return Ok(self.admitted(principal, || token));
        };
        match obo.resolve_groups(&principal, &token).await {
            Ok(resolved) => Ok(Admitted {
                principal: resolved,
                obo: Some(Arc::clone(obo)),
                token: Some(token),
            }),
            Err(error) => Err(Refusal::Groups { error, principal }),
        }
    }

    fn needs_groups(&self, p: &Principal) -> bool {
        p.groups_overage()
            && !p.is_app_only()
            && self.obo.as_ref().is_some_and(|o| o.resolves_overage())
    }

    fn admitted(&self, principal: Principal, token: impl FnOnce() -> BearerToken) -> Admitted {
        // Kept for on-behalf-of, and where the `Authorization` header may be an
        // idguard-issued token (the gateway's token exchange needs the Entra one).
        let keep = self.obo.is_some() || self.issued.is_some();
        Admitted {
            principal,
            obo: self.obo.clone(),
            token: keep.then(token),
        }
    }

    /// The optional scope/role gate: any required scope, or any required role.
    fn admit(&self, principal: Principal) -> Result<Principal, Refusal> {
        if self.required_scopes.is_empty() && self.required_roles.is_empty() {
            return Ok(principal);
        }
        let ok = self.required_scopes.iter().any(|s| principal.has_scope(s))
            || self.required_roles.iter().any(|r| principal.has_role(r));
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
            Refusal::Groups { error, principal } => self
                .obo
                .as_ref()
                .and_then(|obo| obo.rejection(&error, &principal))
                .unwrap_or_else(|| self.reject(&error)),
        }
    }

    fn reject(&self, e: &TokenError) -> Rejection {
        let ch = &self.challenges;
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
            TokenError::StoreUnavailable => {
                // The store logs its own failures (rate limited).
                tracing::debug!(target: "idguard::rejection", "{e}");
                Rejection::new(RejectionKind::Unavailable, None)
            }
            TokenError::KeysUnavailable => {
                tracing::error!(target: "idguard::rejection", "{e}");
                // The time until the key store tries again, not a guess.
                Rejection::new(RejectionKind::Unavailable, None)
                    .with_retry_after(self.keys.retry_after())
            }
            _ => {
                tracing::debug!(target: "idguard::rejection", reason = %e, "invalid token");
                Rejection::invalid_token(&ch.invalid, e)
            }
        }
    }
}
