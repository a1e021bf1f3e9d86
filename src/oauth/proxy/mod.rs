//! The OAuth proxy: an authorization server in front of Entra for MCP clients that need
//! dynamic registration (RFC 7591) or client-id metadata documents, which Entra lacks.
//!
//! ```text
//! client ─ /register (DCR) or a CIMD URL as client_id
//! client ─ /authorize ─▶ consent page (per client, CSRF, no framing)
//!        ─ POST /consent ─▶ Entra /authorize (proxy PKCE, single-use state, binding cookie)
//! Entra  ─ /callback ─▶ code redeemed at Entra (confidential client) ─▶ client code + iss
//! client ─ /token (authorization_code + PKCE, refresh_token with rotation)
//!        ◀ idguard access token (aud = the MCP resource) + refresh token
//! ```
//!
//! The Entra tokens never leave the server: they are sealed in the session record, and an
//! idguard access token names its session. [`ValidateTokenLayer`](crate::ValidateTokenLayer)
//! accepts these tokens and Entra tokens alike: for an idguard token it validates the
//! session's Entra access token, so the [`Principal`](crate::Principal) is the same and
//! on-behalf-of uses the Entra token as its assertion.

mod authorize;
mod entra_leg;
mod issued;
mod limits;
mod pkce;
mod register;
mod sealed;
mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use http::header::{self, HeaderValue};
use serde_json::json;

use super::cimd::{AddressPolicy, MetadataDocuments, is_metadata_url};
use super::client;
use super::html;
use super::keys::{ProxyKeys, digest_b64, random_token};
use super::store::OAuthStore;
use crate::oauth::config::OAuthSettings;
use crate::obo::ClientCredential;
use crate::store::SharedStore;
use issued::AccessTokens;
use limits::{MAX_SIGN_INS_PER_ADDRESS, MAX_SIGN_INS_PER_CLIENT, Registrations, SignIns};

/// Sessions a replica keeps read from a shared store (`store.session_cache_ttl`).
const SESSION_CACHE_CAPACITY: u64 = 100_000;

/// The proxy's state: settings, keys, store, and Entra's endpoints.
pub(crate) struct Proxy {
    settings: OAuthSettings,
    keys: Arc<ProxyKeys>,
    store: Arc<dyn OAuthStore>,
    documents: Option<MetadataDocuments>,
    http: reqwest::Client,
    credential: ClientCredential,
    authorize_endpoint: String,
    token_endpoint: String,
    tenant_segment: String,
    authority: String,
    client_id: String,
    resource: String,
    /// The API's scopes, fully qualified (`api://…/mcp.tools`).
    api_scopes: Vec<String>,
    /// Makes and checks the access tokens the proxy issues.
    access_tokens: AccessTokens,
    registrations: Registrations,
    /// Sign-ins in progress per client and per address.
    sign_ins: SignIns,
    /// Sessions read from a shared store, reused for `store.session_cache_ttl`.
    sessions: Option<moka::sync::Cache<String, Arc<issued::CachedSession>>>,
    events: [AtomicU64; EVENTS],
}

/// What the proxy counts, in [`OAuthStats`] order.
#[derive(Clone, Copy)]
enum Event {
    Registered,
    Consented,
    SignedIn,
    Refreshed,
    ReuseRevoked,
    Revoked,
}

const EVENTS: usize = 6;

/// Counters of the OAuth proxy, for metrics ([`IdGuard::oauth_stats`](crate::IdGuard::oauth_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthStats {
    /// Dynamic client registrations accepted.
    pub registrations: u64,
    /// Consent pages approved.
    pub consents: u64,
    /// Sign-ins completed (an authorization code issued to a client).
    pub sign_ins: u64,
    /// Refresh-token rotations.
    pub refreshes: u64,
    /// Sessions revoked because a code or rotated refresh token was replayed.
    pub reuse_revocations: u64,
    /// Sessions revoked by their client (RFC 7009).
    pub revocations: u64,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("issuer", &self.settings.issuer)
            .field("keys", &self.keys)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The address a request came from, as the `idguard` listener determined it: the peer, or
/// with `server.trusted_proxies` the client named by `X-Forwarded-For`. Without it, the
/// proxy uses axum's [`ConnectInfo`](axum::extract::ConnectInfo), if the server provides
/// it.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub IpAddr);

/// An RFC 6749 §5.2 error.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.error, "error_description": self.description}));
        let mut res = (self.status, no_store(), body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::RETRY_AFTER_SECS),
            );
        }
        res
    }
}

fn no_store() -> [(http::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        no_store(),
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random value, or a refusal when the system cannot make one.
fn fresh(bytes: usize) -> Result<String, OAuthError> {
    random_token(bytes).ok_or_else(|| OAuthError::new("server_error", "no randomness available"))
}

fn store_failed(e: &super::store::StoreError) -> OAuthError {
    // A shared store logs its own failures, rate limited (`idguard::store`).
    tracing::debug!(target: "idguard::oauth", error = %e, "state store failed");
    OAuthError::new("temporarily_unavailable", "the state store is unavailable")
}

/// A limit that could not be counted: `503`, never room.
fn limit_failed(e: &limits::Uncounted) -> OAuthError {
    tracing::debug!(target: "idguard::oauth", error = %e.0, "rate limit store failed");
    OAuthError::new("temporarily_unavailable", "the state store is unavailable")
}

/// At most `max` characters of caller-supplied text, for logs.
fn excerpt(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A redirect to the client with `params` and RFC 9207 `iss` appended to its URI's query.
fn to_client(redirect_uri: &str, params: &[(&str, &str)], iss: &str) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return html::error_page(StatusCode::BAD_REQUEST, "The redirect URI is invalid.");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", iss);
    }
    let mut res = Redirect::to(url.as_str()).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// How a proxy client is named to policies (`context.client_app`) and in logs: a
/// metadata-document client by its URL; a registered one by `dcr:` and a digest of its
/// (long, sealed) id.
pub(crate) fn client_label(client_id: &str) -> String {
    if is_metadata_url(client_id) {
        client_id.to_owned()
    } else {
        let digest: String = digest_b64(client_id).chars().take(22).collect();
        format!("dcr:{digest}")
    }
}

/// The protected API the proxy signs users in for, as `[token]` describes it.
#[derive(Debug)]
pub(crate) struct ProtectedApi<'a> {
    /// The Entra authority (`https://login.microsoftonline.com`).
    pub(crate) authority: &'a str,
    /// The tenant segment of Entra's URLs (a tenant id or `organizations`).
    pub(crate) tenant_segment: &'a str,
    /// The API's application (client) id.
    pub(crate) client_id: &'a str,
    /// The protected resource URL (the access tokens' audience).
    pub(crate) resource: &'a str,
    /// The API's Application ID URI (`api://…`), which qualifies its scopes.
    pub(crate) identifier_uri: &'a str,
}

impl Proxy {
    pub(crate) fn new(
        settings: OAuthSettings,
        store: Arc<dyn OAuthStore>,
        shared: Option<(SharedStore, Duration)>,
        credential: ClientCredential,
        http: reqwest::Client,
        config: &ProtectedApi<'_>,
    ) -> Result<Self, String> {
        let documents = if settings.cimd {
            Some(
                MetadataDocuments::new(
                    AddressPolicy {
                        allow_loopback: settings.cimd_allow_loopback,
                    },
                    settings.cimd_cache_capacity,
                )
                .map_err(|e| format!("cannot build the metadata document client: {e}"))?,
            )
        } else {
            None
        };
        let segment = config.tenant_segment.to_owned();
        let authority = config.authority.to_owned();
        let access_tokens = AccessTokens::new(&settings.keys, &settings.issuer, config.resource)
            .ok_or("cannot derive the access-token keys")?;
        let rate = settings.registration_rate_limit;
        let (registrations, sign_ins, cache_ttl) = match shared {
            #[cfg(feature = "redis")]
            Some((shared, ttl)) => (
                Registrations::shared(rate, shared.clone()),
                SignIns::shared(MAX_SIGN_INS_PER_CLIENT, MAX_SIGN_INS_PER_ADDRESS, shared),
                ttl,
            ),
            #[cfg(not(feature = "redis"))]
            Some((never, _)) => match never {},
            None => (
                Registrations::local(rate),
                SignIns::new(MAX_SIGN_INS_PER_CLIENT, MAX_SIGN_INS_PER_ADDRESS),
                Duration::ZERO,
            ),
        };
        let sessions = (!cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(SESSION_CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build()
        });
        Ok(Self {
            keys: settings.keys.clone(),
            store,
            documents,
            http,
            credential,
            authorize_endpoint: format!("{authority}/{segment}/oauth2/v2.0/authorize"),
            token_endpoint: format!("{authority}/{segment}/oauth2/v2.0/token"),
            tenant_segment: segment,
            authority,
            client_id: config.client_id.to_owned(),
            resource: config.resource.to_owned(),
            api_scopes: settings
                .scopes
                .iter()
                .map(|s| format!("{}/{s}", config.identifier_uri))
                .collect(),
            access_tokens,
            events: Default::default(),
            registrations,
            sign_ins,
            sessions,
            settings,
        })
    }

    fn count(&self, event: Event) {
        if let Some(c) = self.events.get(event as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> OAuthStats {
        let [
            registrations,
            consents,
            sign_ins,
            refreshes,
            reuse_revocations,
            revocations,
        ] = self.events.each_ref().map(|c| c.load(Ordering::Relaxed));
        OAuthStats {
            registrations,
            consents,
            sign_ins,
            refreshes,
            reuse_revocations,
            revocations,
        }
    }

    /// The proxy's issuer identifier.
    pub(crate) fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// RFC 8414 metadata.
    pub(crate) fn metadata(&self) -> serde_json::Value {
        let i = &self.settings.issuer;
        let mut scopes = self.api_scopes.clone();
        scopes.push("offline_access".into());
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "registration_endpoint": format!("{i}/register"),
            "revocation_endpoint": format!("{i}/revoke"),
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": self.documents.is_some(),
            "authorization_response_iss_parameter_supported": true,
        })
    }
}

// -------------------------------------------------------------------- routes

/// Largest consent or token form.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the proxy's endpoints share: the proxy, and the authentication that validates the
/// Entra tokens its sign-ins bring back.
#[derive(Clone, Debug)]
pub(crate) struct ProxyState {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) auth: Arc<crate::token::Authenticator>,
    /// `token.leeway`, in seconds.
    pub(crate) leeway_secs: u64,
}

/// The proxy's endpoints and its RFC 8414 metadata, for `IdGuard::oauth_router`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(state: ProxyState) -> Router<S> {
    let metadata = state.proxy.metadata();
    let doc = Json(metadata);
    let as_metadata = move || {
        let doc = doc.clone();
        async move { doc }
    };
    // What browser-based clients `fetch`: CORS, any origin (no cookies are read there).
    let fetched = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(as_metadata.clone()),
        )
        .route("/.well-known/openid-configuration", get(as_metadata))
        .route(
            "/register",
            post(register::register).layer(DefaultBodyLimit::max(client::MAX_REGISTRATION_BYTES)),
        )
        .route(
            "/token",
            post(token::token).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route(
            "/revoke",
            post(token::revoke).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route_layer(axum::middleware::from_fn(super::metadata::cors_any_origin));
    // What the browser navigates to: pages and redirects, no CORS.
    Router::new()
        .route("/authorize", get(authorize::authorize))
        .route(
            "/consent",
            post(authorize::consent).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route("/callback", get(entra_leg::callback))
        .merge(fetched)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_map_to_their_status() {
        for (error, status) in [
            ("invalid_client", StatusCode::UNAUTHORIZED),
            ("server_error", StatusCode::INTERNAL_SERVER_ERROR),
            ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ("invalid_grant", StatusCode::BAD_REQUEST),
            ("invalid_request", StatusCode::BAD_REQUEST),
            ("unsupported_grant_type", StatusCode::BAD_REQUEST),
        ] {
            let res = OAuthError::new(error, "why").into_response();
            assert_eq!(res.status(), status, "{error}");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(res.headers()[header::PRAGMA], "no-cache");
        }
    }

    #[test]
    fn the_client_gets_its_params_and_iss() {
        let res = to_client(
            "http://127.0.0.1:33418/cb?keep=1",
            &[("code", "c 1"), ("state", "s&t")],
            "https://proxy.example",
        );
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            res.headers()[header::LOCATION],
            "http://127.0.0.1:33418/cb?keep=1&code=c+1&state=s%26t&iss=https%3A%2F%2Fproxy.example"
        );
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let res = to_client("not a url", &[], "https://proxy.example");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.headers().get(header::LOCATION).is_none());
    }

    #[test]
    fn clients_are_labelled_without_their_sealed_id() {
        let url = "https://app.example/client.json";
        assert_eq!(client_label(url), url);
        let sealed = "k1.".to_owned() + &"x".repeat(500);
        let label = client_label(&sealed);
        assert_eq!(label.len(), "dcr:".len() + 22);
        assert!(label.starts_with("dcr:") && !label.contains("xxx"));
        assert_eq!(label, client_label(&sealed), "stable");
        assert_ne!(label, client_label("k1.other"));
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt("a\nb\u{7}c", 10), "a?b?c");
        assert_eq!(excerpt("ééééé", 3), "ééé");
    }
}
