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
//!
//! The guard wires the parts and holds them; per-request authentication itself lives in
//! `token/` (`Authenticator`), which reaches the OAuth proxy and on-behalf-of only through
//! the traits the guard injects here.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::config::{IdGuardConfig, ResolvedConfig};
use crate::entra::{self, TenantMode};
use crate::error::{StartupError, TokenError};
use crate::oauth::config::OAuthConfig;
use crate::oauth::proxy::Proxy;
use crate::oauth::{MemoryStore, OAuthStore};
use crate::obo::OboClient;
use crate::obo::config::OboConfig;
use crate::principal::Principal;
use crate::store::{SharedStore, StoreConfig};
use crate::token::config::TokenConfig;
use crate::token::jwks::KeyStore;
use crate::token::layer::ValidateTokenLayer;
use crate::token::{Authenticator, IssuedTokens, Session, TokenStats, TokenValidator};

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
    /// Per-request authentication, shared with every [`ValidateTokenLayer`].
    auth: Arc<Authenticator>,
    authorization_server: String,
    obo: Option<OboClient>,
    oauth: Option<Arc<Proxy>>,
    /// The Redis connection replicas share (`[store]`).
    store: Option<SharedStore>,
}

/// The state store's health, for `/healthz` and `/metrics` ([`IdGuard::store_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStatus {
    /// `"redis"` with `[store]`, `"memory"` otherwise.
    pub kind: &'static str,
    /// Whether the last command (or the probe every few seconds) reached the store.
    pub reachable: bool,
    /// Store commands that failed or timed out since start.
    pub errors: u64,
}

/// How often an idle guard checks that its shared store answers (`PING`).
#[cfg(feature = "redis")]
const STORE_PROBE_EVERY: Duration = Duration::from_secs(5);

impl IdGuard {
    /// The MCP authorization layer for `engine`, whose step-up challenges point at this
    /// guard's protected-resource metadata.
    pub fn authorize_mcp_layer(
        &self,
        engine: crate::policy::PolicyEngine,
    ) -> crate::mcp::AuthorizeMcpLayer {
        crate::mcp::AuthorizeMcpLayer::new(engine, self.resource_metadata_url())
    }

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
        let (keys, v2) = KeyStore::start(&client, &config.key_settings()).await?;
        let v1_issuer = v2.v1_issuer.clone();
        let authorization_server = match &config.tenant {
            TenantMode::Single(_) => v2.issuer.clone(),
            TenantMode::AllowList(_) | TenantMode::AnyOrganization => {
                entra::issuer(&config.authority, config.tenant.discovery_segment())
            }
        };
        let validator = TokenValidator::new(
            config.tenant.clone(),
            config.audiences.clone(),
            v2.issuer,
            v1_issuer,
            config.leeway.as_secs(),
        );
        let resource_metadata_url = resource_metadata_url(&config.resource);
        let obo = config.obo.clone().map(|settings| {
            OboClient::new(
                settings,
                client.clone(),
                config.authority.clone(),
                config.client_id.clone(),
                resource_metadata_url.clone(),
            )
        });
        let shared = shared_store(&config)?;
        #[cfg(feature = "redis")]
        if let (Some(store), Some(obo), Some(settings)) = (&shared, &obo, &config.store) {
            // `[store]` with `[obo]`: the replicas share their on-behalf-of tokens.
            let cache = crate::obo::SharedTokenCache::from_store(store, &settings.keys)
                .map_err(StartupError::Config)?;
            obo.set_shared(cache);
        }
        let oauth = match (&config.oauth, &config.obo) {
            (Some(settings), Some(obo)) => {
                let store = match (store, &shared) {
                    (Some(store), _) => store,
                    #[cfg(feature = "redis")]
                    (None, Some(shared)) => {
                        Arc::new(crate::oauth::RedisStore::from_shared(Arc::clone(shared)))
                            as Arc<dyn OAuthStore>
                    }
                    _ => {
                        Arc::new(MemoryStore::new(settings.store_max_bytes)) as Arc<dyn OAuthStore>
                    }
                };
                let session_cache_ttl = config
                    .store
                    .as_ref()
                    .map_or(Duration::ZERO, |s| s.session_cache_ttl);
                Some(Arc::new(
                    Proxy::new(
                        settings.clone(),
                        store,
                        shared.clone().map(|s| (s, session_cache_ttl)),
                        obo.credential.clone(),
                        client.clone(),
                        &crate::oauth::proxy::ProtectedApi {
                            authority: &config.authority,
                            tenant_segment: config.tenant.discovery_segment(),
                            client_id: &config.client_id,
                            resource: &config.resource,
                            identifier_uri: &config.identifier_uri,
                        },
                    )
                    .map_err(|reason| StartupError::Discovery {
                        url: settings.issuer.clone(),
                        reason,
                    })?,
                ))
            }
            _ => None,
        };
        let authorization_server = match &oauth {
            Some(p) => p.issuer().to_owned(),
            None => authorization_server,
        };
        let mut auth = Authenticator::new(
            &config.auth_settings(),
            validator,
            keys,
            resource_metadata_url,
        );
        if let Some(proxy) = &oauth {
            auth = auth.with_issued_tokens(Arc::clone(proxy) as Arc<dyn IssuedTokens>);
        }
        if let Some(client) = &obo {
            auth = auth.with_on_behalf_of(Arc::new(client.clone()));
        }
        let auth = Arc::new(auth);
        spawn_periodic_refresh(Arc::downgrade(&auth), config.jwks_refresh_interval);
        #[cfg(feature = "redis")]
        if let Some(shared) = &shared {
            spawn_store_probe(Arc::downgrade(shared));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                oauth,
                obo,
                store: shared,
                auth,
                authorization_server,
                config,
            }),
        })
    }

    /// A builder that mirrors the `[token]` configuration keys.
    pub fn builder() -> IdGuardBuilder {
        IdGuardBuilder::default()
    }

    /// The configuration this guard runs with.
    pub fn config(&self) -> &ResolvedConfig {
        &self.inner.config
    }

    /// The OAuth proxy's counters, when `[oauth]` is configured.
    pub fn oauth_stats(&self) -> Option<crate::oauth::OAuthStats> {
        self.inner.oauth.as_deref().map(Proxy::stats)
    }

    /// The OAuth proxy's state store and its health: `None` without `[oauth]` and
    /// `[store]`.
    pub fn store_status(&self) -> Option<StoreStatus> {
        match &self.inner.store {
            #[cfg(feature = "redis")]
            Some(shared) => {
                let (reachable, errors) = shared.health();
                Some(StoreStatus {
                    kind: "redis",
                    reachable,
                    errors,
                })
            }
            #[cfg(not(feature = "redis"))]
            Some(never) => match *never {},
            None => self.inner.oauth.as_ref().map(|_| StoreStatus {
                kind: "memory",
                reachable: true,
                errors: 0,
            }),
        }
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
        self.inner.auth.resource_metadata_url()
    }

    /// Token validation counters and the age of the signing keys.
    pub fn stats(&self) -> TokenStats {
        self.inner.auth.stats()
    }

    /// The signing keys' source, age and fetch failures (for health and metrics).
    #[cfg_attr(
        not(feature = "internals"),
        allow(dead_code, reason = "read by the `idguard` binary only")
    )]
    pub(crate) fn key_status(&self) -> crate::token::jwks::KeyStatus {
        self.inner.auth.keys().status()
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
        self.inner.auth.validate(token).await
    }
}

impl IdGuard {
    /// The protected-resource metadata this guard publishes.
    ///
    /// `scopes_supported` names the scopes clients should request, qualified with
    /// `token.identifier_uri`: `token.required_scopes`, else the OAuth proxy's scopes, else
    /// `mcp.tools` (what `idguard entra manifest` exposes). Without one, a client asks Entra
    /// for a token without this API's scope, and gets one for another API.
    pub fn protected_resource_metadata(&self) -> crate::oauth::ProtectedResourceMetadata {
        let c = self.config();
        crate::oauth::ProtectedResourceMetadata {
            resource: c.resource().to_owned(),
            authorization_servers: vec![self.authorization_server().to_owned()],
            scopes_supported: c.advertised_scopes(),
            bearer_methods_supported: vec!["header".to_owned()],
        }
    }

    /// The public OAuth routes: the RFC 9728 metadata and, with `[oauth]`, the OAuth proxy
    /// (`/.well-known/oauth-authorization-server`, `/register`, `/authorize`, `/consent`,
    /// `/callback`, `/token`). Merge them into your router **outside** the token layer:
    /// clients use them before they have a token.
    ///
    /// The metadata, registration, token and revocation endpoints answer CORS preflights
    /// and allow any origin (they take no cookies), so MCP clients running in a browser can
    /// sign in; the pages a browser navigates to (`/authorize`, `/consent`, `/callback`)
    /// need no CORS.
    pub fn oauth_router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let doc = self.protected_resource_metadata();
        let handler = move |headers: http::HeaderMap| {
            let mut doc = doc.clone();
            async move {
                if let Some(reached) = crate::oauth::metadata::as_reached(
                    &doc.resource,
                    headers.get(http::header::HOST),
                ) {
                    doc.resource = reached;
                }
                axum::Json(doc)
            }
        };
        let root = "/.well-known/oauth-protected-resource";
        let url = self.resource_metadata_url();
        let suffixed = url
            .find(root)
            .and_then(|at| url.get(at..))
            .unwrap_or(root)
            .to_owned();
        let mut router = axum::Router::new().route(root, axum::routing::get(handler.clone()));
        if suffixed != root {
            router = router.route(&suffixed, axum::routing::get(handler));
        }
        let mut router = router.route_layer(axum::middleware::from_fn(
            crate::oauth::metadata::cors_any_origin,
        ));
        if let Some(proxy) = &self.inner.oauth {
            router = router.merge(crate::oauth::proxy::routes(
                crate::oauth::proxy::ProxyState {
                    proxy: Arc::clone(proxy),
                    auth: Arc::clone(&self.inner.auth),
                    leeway_secs: self.config().leeway.as_secs(),
                },
            ));
        }
        router
    }
}

impl ValidateTokenLayer {
    /// A layer for `guard`; same as [`IdGuard::validate_token_layer`].
    pub fn new(guard: IdGuard) -> Self {
        Self::with_authenticator(Arc::clone(&guard.inner.auth))
    }
}

/// The OAuth proxy's access tokens, as authentication reaches them.
impl IssuedTokens for Proxy {
    fn is_issued(&self, token: &str) -> bool {
        self.is_own_token(token)
    }

    fn session<'a>(
        &'a self,
        token: &'a str,
        leeway: u64,
    ) -> BoxFuture<'a, Result<Option<Session>, TokenError>> {
        Box::pin(async move {
            let found = self
                .entra_token_for(token, leeway)
                .await
                .map_err(|_| TokenError::StoreUnavailable)?;
            Ok(found.map(|s| Session {
                entra_token: s.entra_token,
                scopes: s.scopes,
                client: s.client,
            }))
        })
    }
}

/// The connection `[store]` describes (no I/O: it connects on first use).
fn shared_store(config: &ResolvedConfig) -> Result<Option<SharedStore>, StartupError> {
    let Some(settings) = &config.store else {
        return Ok(None);
    };
    #[cfg(feature = "redis")]
    {
        crate::store::redis::Shared::new(settings)
            .map(|s| Some(Arc::new(s)))
            .map_err(|reason| {
                StartupError::Config(crate::error::ConfigError::from_problems(vec![
                    crate::error::ConfigProblem::new("store.redis_url", reason),
                ]))
            })
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = settings;
        Ok(None)
    }
}

/// Checks the shared store every [`STORE_PROBE_EVERY`], so its health is current (and
/// the connection comes back) while no request uses it; ends with the guard.
#[cfg(feature = "redis")]
fn spawn_store_probe(shared: Weak<crate::store::redis::Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORE_PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.ping().await;
        }
    });
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

/// Refreshes the signing keys every `every`, for as long as the guard or one of its layers
/// holds `auth`.
fn spawn_periodic_refresh(auth: Weak<Authenticator>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let Some(auth) = auth.upgrade() else { break };
            auth.keys().refresh_periodic().await;
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
    #[cfg(feature = "redis")]
    obo_shared: Option<crate::obo::SharedTokenCache>,
    obo: Option<OboConfig>,
    oauth: Option<OAuthConfig>,
    store: Option<Arc<dyn OAuthStore>>,
    shared: Option<StoreConfig>,
    client: Option<reqwest::Client>,
}

impl std::fmt::Debug for IdGuardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGuardBuilder")
            .field("token", &self.token)
            .field("obo", &self.obo)
            .field("oauth", &self.oauth)
            .field("store", &self.store)
            .field("shared", &self.shared)
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

    /// `token.leeway`: clock skew on `exp`/`nbf` (default [`DEFAULT_LEEWAY`](crate::DEFAULT_LEEWAY)).
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

    /// `[store]`: the Redis server replicas share for the OAuth proxy's state and limits
    /// (needs the `redis` feature; without it the configuration is refused).
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.shared = Some(store);
        self
    }

    /// The HTTP client for discovery, keys, on-behalf-of and Graph (default: 5 s connect,
    /// 10 s total timeout).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// A second level for the on-behalf-of token cache, shared by replicas (needs
    /// [`obo`](Self::obo)): a token one replica obtained serves the others from Redis.
    #[cfg(feature = "redis")]
    pub fn obo_shared_cache(mut self, cache: crate::obo::SharedTokenCache) -> Self {
        self.obo_shared = Some(cache);
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
            store: self.shared,
            ..IdGuardConfig::default()
        }
        .resolve()?;
        let client = match self.client {
            Some(client) => client,
            None => default_client(&resolved)?,
        };
        let guard = IdGuard::start(resolved, client, self.store).await?;
        #[cfg(feature = "redis")]
        if let Some(shared) = self.obo_shared {
            let attached = guard.obo_client().is_some_and(|obo| obo.set_shared(shared));
            if !attached {
                return Err(StartupError::Config(crate::ConfigError::from_problems(
                    vec![crate::ConfigProblem::new(
                        "obo",
                        "a shared on-behalf-of token cache needs `[obo]`, and `[store]` already gives it one: use either",
                    )],
                )));
            }
        }
        Ok(guard)
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
}
