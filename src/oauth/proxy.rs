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

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::cimd::{AddressPolicy, MetadataDocuments, is_metadata_url};
use super::client::{self, Client, RegistrationRequest};
use super::html;
use super::keys::{ProxyKeys, Purpose, constant_time_eq, digest_b64, random_token};
use super::store::{OAuthStore, RecordKind};
use crate::entra::{EntraError, admin_consent_url};
use crate::guard::IdGuard;
use crate::oauth::config::OAuthSettings;
use crate::obo::{ClientAuth, ClientCredential};

const PENDING_TTL: Duration = Duration::from_secs(600);
const STATE_TTL: Duration = Duration::from_secs(600);
const CODE_TTL: Duration = Duration::from_secs(120);
/// How long a code's record is kept: past its lifetime, so a late replay is recognised.
const CODE_RECORD_TTL: Duration = Duration::from_secs(600);
/// Longest client `state` kept (it is stored until the callback).
const MAX_STATE_BYTES: usize = 1024;
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The fixed start of every idguard access token header (before the key id).
const TOKEN_HEADER_START: &str = r#"{"alg":"HS256","typ":"at+jwt","kid":""#;

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
    /// base64url of [`TOKEN_HEADER_START`], cut to whole 3-byte groups.
    token_prefix: String,
    registrations: Mutex<Bucket>,
    /// Sign-ins in progress per client and per address.
    sign_ins: SignIns,
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

/// A token bucket for registrations (per minute, burst of the same size).
struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

/// Sign-ins one address may have in progress at once (an IPv4 address, or an IPv6 /64).
const MAX_SIGN_INS_PER_ADDRESS: usize = 64;
/// Sign-ins one client may have in progress at once, from all addresses together.
const MAX_SIGN_INS_PER_CLIENT: usize = 256;

/// The address a request came from, as the `idguard` listener determined it: the peer, or
/// with `server.trusted_proxies` the client named by `X-Forwarded-For`. Without it, the
/// proxy uses axum's [`ConnectInfo`], if the server provides it.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub IpAddr);

/// Sign-ins in progress — a pending authorization request, then the Entra leg of an
/// approved one — counted per client and per address, so that one client or one address
/// cannot fill the store's share of pending requests (and answer everyone's sign-in with
/// `503`). Each place is the deadline of the record it stands for; a consent, a
/// callback or the deadline frees it. Counted in this process (a replica counts its own).
struct SignIns {
    tallies: Mutex<(Tally<String>, Tally<IpAddr>)>,
}

/// Deadlines per key, at most `limit` live ones each.
struct Tally<K> {
    map: HashMap<K, VecDeque<tokio::time::Instant>>,
    limit: usize,
    /// Sweep the whole map for expired keys when it grows to this many.
    sweep_at: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Tally<K> {
    fn new(limit: usize) -> Self {
        Self {
            map: HashMap::new(),
            limit,
            sweep_at: 1024,
        }
    }

    /// How long until `key` has room again; `None` when it has room now.
    fn wait(&mut self, key: &K, now: tokio::time::Instant) -> Option<Duration> {
        let places = self.map.get_mut(key)?;
        while places.front().is_some_and(|d| *d <= now) {
            places.pop_front();
        }
        if places.len() < self.limit {
            return None;
        }
        Some(
            places
                .front()
                .map_or(Duration::ZERO, |d| d.saturating_duration_since(now)),
        )
    }

    fn push(&mut self, key: K, deadline: tokio::time::Instant, now: tokio::time::Instant) {
        if self.map.len() >= self.sweep_at {
            self.map
                .retain(|_, places| places.back().is_some_and(|d| *d > now));
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let places = self.map.entry(key).or_default();
        // Deadlines stay in order (ttls are equal or pushed later).
        let at = places.partition_point(|d| *d <= deadline);
        places.insert(at, deadline);
    }

    /// Frees the place that ends first (a finished sign-in's own deadline may be later:
    /// keeping the later one errs on the strict side).
    fn pop(&mut self, key: &K) {
        if let Some(places) = self.map.get_mut(key) {
            places.pop_front();
            if places.is_empty() {
                self.map.remove(key);
            }
        }
    }
}

impl SignIns {
    fn new(per_client: usize, per_address: usize) -> Self {
        Self {
            tallies: Mutex::new((Tally::new(per_client), Tally::new(per_address))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Tally<String>, Tally<IpAddr>)> {
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a new sign-in of `pending` for `ttl`; otherwise how long until
    /// there is room.
    fn admit(&self, pending: &Pending, ttl: Duration) -> Result<(), Duration> {
        let (client, address) = sign_in_keys(pending);
        let now = tokio::time::Instant::now();
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        let wait = [
            clients.wait(&client, now),
            address.and_then(|a| addresses.wait(&a, now)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        clients.push(client, now + ttl, now);
        if let Some(a) = address {
            addresses.push(a, now + ttl, now);
        }
        Ok(())
    }

    /// Takes a place without checking: for a step that follows a [`release`](Self::release)
    /// of the same sign-in.
    fn hold(&self, pending: &Pending, ttl: Duration) {
        let (client, address) = sign_in_keys(pending);
        let now = tokio::time::Instant::now();
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        clients.push(client, now + ttl, now);
        if let Some(a) = address {
            addresses.push(a, now + ttl, now);
        }
    }

    /// Frees a place of this sign-in's client and address.
    fn release(&self, pending: &Pending) {
        let (client, address) = sign_in_keys(pending);
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        clients.pop(&client);
        if let Some(a) = address {
            addresses.pop(&a);
        }
    }
}

/// What a sign-in counts against: a digest of its client id, and its address (IPv6 by
/// its /64, what one host or site usually holds).
fn sign_in_keys(pending: &Pending) -> (String, Option<IpAddr>) {
    let address = pending.origin.map(|a| match a.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    });
    (digest_b64(&pending.client_id), address)
}

/// `429` for `/authorize` when the client or the address has too many sign-ins in progress.
fn too_many_sign_ins(wait: Duration) -> Response {
    let secs = wait.as_secs().saturating_add(1);
    let mut res = html::error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "Too many sign-ins are in progress for this client or from this network. Try again in {secs} seconds."
        ),
    );
    let h = res.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// An authorization request waiting for consent.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    /// The address `/authorize` came from (what [`SignIns`] counts), if known.
    #[serde(default)]
    origin: Option<IpAddr>,
    client_id: String,
    client_name: String,
    metadata_document: bool,
    redirect_uri: String,
    /// Whether the client sent `redirect_uri` (then `/token` must repeat it).
    redirect_presented: bool,
    state: Option<String>,
    challenge: String,
    scopes: Vec<String>,
}

/// The Entra leg of an approved request.
#[derive(Serialize, Deserialize)]
struct Leg {
    pending: Pending,
    verifier: String,
    claims: Option<String>,
    /// Claims challenges answered so far (bounded: no loops).
    rounds: u8,
}

/// An authorization code issued to a client; kept after redemption, marked used, so a
/// replay revokes what the first redemption issued.
#[derive(Serialize, Deserialize)]
struct Code {
    client_id: String,
    redirect_uri: String,
    redirect_presented: bool,
    challenge: String,
    sid: String,
    used: bool,
    /// Unix seconds after which the code no longer redeems (the record itself lives
    /// longer, to recognise a replay).
    expires_at: u64,
}

/// The Entra tokens behind a client's tokens, and the refresh-token generation.
#[derive(Serialize, Deserialize)]
struct Session {
    client_id: String,
    scopes: Vec<String>,
    oid: String,
    access_token: String,
    refresh_token: Option<String>,
    expires_at: u64,
    /// The generation of the one valid refresh token; older ones are reuse.
    generation: u64,
    /// When the session (and its refresh tokens) end.
    ends_at: u64,
    /// When the refresh token was last rotated.
    #[serde(default)]
    rotated_at: u64,
}

/// The claims of an idguard access token (RFC 9068).
#[derive(Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: String,
    client_id: String,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
    sid: String,
}

/// The header of an idguard access token.
#[derive(Deserialize)]
struct TokenHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// What Entra's token endpoint returned.
#[derive(Deserialize)]
struct EntraTokens {
    access_token: String,
    refresh_token: Option<String>,
    /// Entra always sends it; an hour if not.
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

/// A refresh token rotated this recently is refused without revoking its family.
const ROTATION_GRACE_SECS: u64 = 5;

/// Claims challenges answered in one sign-in before giving up.
const MAX_CLAIMS_ROUNDS: u8 = 2;

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
        (self.status, no_store(), body).into_response()
    }
}

fn no_store() -> [(http::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn url_with(base: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse_with_params(base, params) {
        Ok(u) => u.to_string(),
        Err(_) => base.to_owned(),
    }
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

impl Proxy {
    pub(crate) fn new(
        settings: OAuthSettings,
        store: Arc<dyn OAuthStore>,
        credential: ClientCredential,
        http: reqwest::Client,
        config: &crate::config::ResolvedConfig,
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
        let segment = config.tenant.discovery_segment().to_owned();
        let authority = config.authority.clone();
        let whole = TOKEN_HEADER_START.len() / 3 * 3;
        let token_prefix = URL_SAFE_NO_PAD.encode(
            TOKEN_HEADER_START
                .as_bytes()
                .get(..whole)
                .unwrap_or_default(),
        );
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
            client_id: config.client_id.clone(),
            resource: config.resource.clone(),
            api_scopes: settings
                .scopes
                .iter()
                .map(|s| format!("{}/{s}", config.identifier_uri))
                .collect(),
            token_prefix,
            events: Default::default(),
            registrations: Mutex::new(Bucket {
                tokens: f64::from(settings.registration_rate_limit),
                last: tokio::time::Instant::now(),
            }),
            sign_ins: SignIns::new(MAX_SIGN_INS_PER_CLIENT, MAX_SIGN_INS_PER_ADDRESS),
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

    fn callback_url(&self) -> String {
        format!("{}/callback", self.settings.issuer)
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

    // ---------------------------------------------------------------- tokens

    /// Whether `token` has the shape of an idguard access token (cheap: a prefix test).
    pub(crate) fn is_own_token(&self, token: &str) -> bool {
        token.starts_with(&self.token_prefix)
    }

    fn issue_access_token(&self, session: &Session, sid: &str) -> Option<(String, u64)> {
        let now = unix_now();
        let exp = now
            .saturating_add(self.settings.access_token_lifetime.as_secs())
            .min(session.expires_at);
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.resource.clone(),
            sub: session.oid.clone(),
            client_id: session.client_id.clone(),
            scope: session.scopes.join(" "),
            iat: now,
            exp,
            jti: random_token(16)?,
            sid: sid.to_owned(),
        };
        let header = format!("{TOKEN_HEADER_START}{}\"}}", self.keys.current_id());
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?)
        );
        let (_, tag) = self.keys.sign(Purpose::AccessToken, input.as_bytes())?;
        Some((format!("{input}.{tag}"), exp.saturating_sub(now)))
    }

    /// The claims of a valid idguard access token.
    fn verify_access_token(&self, token: &str, leeway: u64) -> Option<AccessClaims> {
        let (input, tag) = token.rsplit_once('.')?;
        let (header, payload) = input.split_once('.')?;
        let header = URL_SAFE_NO_PAD.decode(header).ok()?;
        let header: TokenHeader<'_> = serde_json::from_slice(&header).ok()?;
        if header.alg != "HS256" || header.typ != "at+jwt" {
            return None;
        }
        if !self
            .keys
            .verify(Purpose::AccessToken, header.kid, input.as_bytes(), tag)
        {
            return None;
        }
        let claims: AccessClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let now = unix_now();
        (claims.iss == self.settings.issuer
            && claims.aud == self.resource
            && claims.exp.saturating_add(leeway) > now
            && claims.iat <= now.saturating_add(leeway))
        .then_some(claims)
    }

    /// The Entra access token behind a valid idguard access token, with what the caller
    /// is through this client.
    pub(crate) async fn entra_token_for(&self, token: &str, leeway: u64) -> Option<ProxySession> {
        let claims = self.verify_access_token(token, leeway)?;
        let (session, _) = self
            .get_sealed::<Session>(RecordKind::Session, &claims.sid)
            .await
            .ok()??;
        if session.client_id != claims.client_id {
            return None;
        }
        let scopes = claims
            .scope
            .split(' ')
            .map(|s| s.rsplit_once('/').map_or(s, |(_, short)| short).to_owned())
            .collect();
        Some(ProxySession {
            entra_token: session.access_token,
            scopes,
            client: client_label(&claims.client_id),
        })
    }

    fn seal_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, OAuthError> {
        serde_json::to_vec(value)
            .ok()
            .and_then(|json| self.keys.seal(purpose_of(kind), key.as_bytes(), &json))
            .map(String::into_bytes)
            .ok_or_else(|| OAuthError::new("server_error", "cannot seal a record"))
    }

    fn open_record<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &str,
        bytes: &[u8],
    ) -> Option<T> {
        let sealed = std::str::from_utf8(bytes).ok()?;
        let json = self.keys.open(purpose_of(kind), key.as_bytes(), sealed)?;
        serde_json::from_slice(&json).ok()
    }

    async fn put_sealed<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), OAuthError> {
        let bytes = self.seal_record(kind, key, value)?;
        self.store
            .put(kind, key, bytes, ttl)
            .await
            .map_err(|e| store_failed(&e))
    }

    /// The record and its stored bytes (for [`OAuthStore::swap`]).
    async fn get_sealed<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<(T, Vec<u8>)>, OAuthError> {
        let found = self
            .store
            .get(kind, key)
            .await
            .map_err(|e| store_failed(&e))?;
        Ok(found.and_then(|b| self.open_record(kind, key, &b).map(|v| (v, b))))
    }

    async fn take_sealed<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<T>, OAuthError> {
        let found = self
            .store
            .take(kind, key)
            .await
            .map_err(|e| store_failed(&e))?;
        Ok(found.and_then(|b| self.open_record(kind, key, &b)))
    }

    /// Replaces a record only if it is unchanged since it was read; `false` otherwise.
    async fn swap_sealed<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        current: &[u8],
        value: &T,
        ttl: Duration,
    ) -> Result<bool, OAuthError> {
        let bytes = self.seal_record(kind, key, value)?;
        self.store
            .swap(kind, key, current, bytes, ttl)
            .await
            .map_err(|e| store_failed(&e))
    }

    fn session_ttl(session: &Session) -> Duration {
        Duration::from_secs(session.ends_at.saturating_sub(unix_now()).max(1))
    }

    /// `{sid}.{generation}.{nonce}.{key id}.{tag}`: names its session and generation, and
    /// only the proxy can make one (so an old generation is proof of reuse).
    fn refresh_token(&self, sid: &str, generation: u64) -> Option<String> {
        let body = format!("{sid}.{generation}.{}", random_token(16)?);
        let (kid, tag) = self.keys.sign(Purpose::RefreshToken, body.as_bytes())?;
        Some(format!("{body}.{kid}.{tag}"))
    }

    /// The session id and generation of a refresh token the proxy issued.
    fn parse_refresh_token<'t>(&self, token: &'t str) -> Option<(&'t str, u64)> {
        let mut parts = token.rsplitn(3, '.');
        let (tag, kid, body) = (parts.next()?, parts.next()?, parts.next()?);
        if !self
            .keys
            .verify(Purpose::RefreshToken, kid, body.as_bytes(), tag)
        {
            return None;
        }
        let mut fields = body.splitn(3, '.');
        let sid = fields.next()?;
        let generation = fields.next()?.parse().ok()?;
        Some((sid, generation))
    }

    // ---------------------------------------------------------------- clients

    async fn client(&self, client_id: &str) -> Result<Arc<Client>, String> {
        if is_metadata_url(client_id) {
            let Some(docs) = &self.documents else {
                return Err("client-id metadata documents are turned off".into());
            };
            return docs.client(client_id).await.map_err(|e| {
                tracing::debug!(target: "idguard::oauth", error = %e, "client metadata document refused");
                e.public_message()
            });
        }
        client::open_registered(&self.keys, client_id)
            .map(Arc::new)
            .ok_or_else(|| "unknown client (not registered here, or altered)".into())
    }

    /// Whether `uri` names a host the operator allows (`oauth.allowed_redirect_hosts`).
    fn redirect_allowed(&self, uri: &str) -> bool {
        let allowed = &self.settings.allowed_redirect_hosts;
        allowed.is_empty()
            || url::Url::parse(uri).is_ok_and(|u| match u.host() {
                Some(h) if client::is_loopback_host(&h) => true,
                Some(h) => allowed.iter().any(|a| *a == h.to_string()),
                None => false,
            })
    }

    fn allow_registration(&self) -> Result<(), u64> {
        let per_minute = f64::from(self.settings.registration_rate_limit);
        let mut b = self
            .registrations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_minute / 60.0).min(per_minute);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) * 60.0 / per_minute).ceil().max(1.0) as u64)
        }
    }

    /// Scopes for the client's request: the API's, narrowed to what it asked for.
    fn requested_scopes(&self, scope: Option<&str>) -> Result<Vec<String>, String> {
        let mut chosen = Vec::new();
        for s in scope
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            if OIDC_SCOPES.contains(&s) {
                continue;
            }
            let qualified = self
                .api_scopes
                .iter()
                .find(|a| *a == s || a.rsplit_once('/').is_some_and(|(_, short)| short == s));
            match qualified {
                Some(q) if !chosen.contains(q) => chosen.push(q.clone()),
                Some(_) => {}
                None => return Err(format!("`{s}` is not a scope of this server")),
            }
        }
        if chosen.is_empty() {
            chosen.clone_from(&self.api_scopes);
        }
        Ok(chosen)
    }

    /// The scopes of the Entra authorize request: the API's, the downstream APIs' (so
    /// consent covers on-behalf-of up front), and the OpenID ones.
    fn entra_authorize_scope(&self, api: &[String]) -> String {
        let mut all: Vec<&str> = api.iter().map(String::as_str).collect();
        all.extend(self.settings.consent_scopes.iter().map(String::as_str));
        all.extend(["openid", "profile", "offline_access"]);
        all.join(" ")
    }

    /// The scopes of an Entra token request: one resource (the API) only.
    fn entra_token_scope(api: &[String]) -> String {
        let mut all: Vec<&str> = api.iter().map(String::as_str).collect();
        all.extend(["openid", "offline_access"]);
        all.join(" ")
    }

    fn admin_consent_url(&self) -> String {
        let resource = self
            .api_scopes
            .first()
            .and_then(|s| s.rsplit_once('/').map(|(r, _)| r.to_owned()))
            .unwrap_or_default();
        admin_consent_url(
            &self.authority,
            &self.tenant_segment,
            &self.client_id,
            &resource,
        )
    }

    /// A request to Entra's token endpoint with the confidential credential.
    async fn entra_token(
        &self,
        mut form: Vec<(&str, String)>,
    ) -> Result<EntraTokens, EntraFailure> {
        let auth = self
            .credential
            .client_auth(&self.client_id, &self.token_endpoint)
            .map_err(|e| EntraFailure::Other(e.to_string()))?;
        form.push(("client_id", self.client_id.clone()));
        match auth {
            ClientAuth::Secret(s) => form.push(("client_secret", s.expose().to_owned())),
            ClientAuth::Assertion(a) => {
                form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", a.expose().to_owned()));
            }
        }
        let res = self
            .http
            .post(&self.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| EntraFailure::Other(e.without_url().to_string()))?;
        if res.status().is_success() {
            return res
                .json::<EntraTokens>()
                .await
                .map_err(|e| EntraFailure::Other(format!("unreadable token response: {e}")));
        }
        let status = res.status().as_u16();
        let body: EntraError = res.json().await.unwrap_or_default();
        tracing::debug!(target: "idguard::oauth", status, error = %body.error, codes = ?body.error_codes, "Entra refused the token request");
        Err(
            if body.error_codes.contains(&65_001)
                || body.suberror.as_deref() == Some("consent_required")
            {
                EntraFailure::Consent
            } else if let Some(claims) =
                body.claims.filter(|_| body.error == "interaction_required")
            {
                EntraFailure::Claims(claims)
            } else if body.error == "invalid_grant" {
                EntraFailure::InvalidGrant
            } else {
                EntraFailure::Other(format!(
                    "{} (AADSTS{})",
                    body.error,
                    body.error_codes.first().copied().unwrap_or_default()
                ))
            },
        )
    }
}

enum EntraFailure {
    Consent,
    Claims(String),
    InvalidGrant,
    Other(String),
}

fn purpose_of(kind: RecordKind) -> Purpose {
    match kind {
        RecordKind::Pending => Purpose::Pending,
        RecordKind::State => Purpose::State,
        RecordKind::Code => Purpose::Code,
        RecordKind::Session => Purpose::Session,
    }
}

/// What an idguard access token stands for.
pub(crate) struct ProxySession {
    /// The Entra access token: the caller's identity and on-behalf-of assertion.
    pub(crate) entra_token: String,
    /// The API scopes (short names) the client signed in for.
    pub(crate) scopes: Vec<String>,
    /// The client, as policies and logs name it (see [`client_label`]).
    pub(crate) client: String,
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

/// A fresh random value, or a refusal when the system cannot make one.
fn fresh(bytes: usize) -> Result<String, OAuthError> {
    random_token(bytes).ok_or_else(|| OAuthError::new("server_error", "no randomness available"))
}

fn store_failed(e: &super::store::StoreError) -> OAuthError {
    tracing::error!(target: "idguard::oauth", error = %e, "state store failed");
    OAuthError::new("temporarily_unavailable", "the state store is unavailable")
}

// -------------------------------------------------------------------- routes

pub(crate) fn routes<S: Clone + Send + Sync + 'static>(guard: &IdGuard) -> Router<S> {
    let metadata = guard.oauth_proxy().map(Proxy::metadata).unwrap_or_default();
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
            post(register).layer(DefaultBodyLimit::max(client::MAX_REGISTRATION_BYTES)),
        )
        .route(
            "/token",
            post(token).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route(
            "/revoke",
            post(revoke).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route_layer(axum::middleware::from_fn(super::metadata::cors_any_origin));
    // What the browser navigates to: pages and redirects, no CORS.
    Router::new()
        .route("/authorize", get(authorize))
        .route(
            "/consent",
            post(consent).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route("/callback", get(callback))
        .merge(fetched)
        .with_state(guard.clone())
}

/// Largest consent or token form.
const MAX_FORM_BYTES: usize = 16 * 1024;

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        no_store(),
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// At most `max` characters of caller-supplied text, for logs.
fn excerpt(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

async fn register(
    State(guard): State<IdGuard>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(body) = body else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_client_metadata",
            "the registration is too large",
        );
    };
    if let Err(wait) = p.allow_registration() {
        let mut res = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "too many registrations; retry later",
        );
        if let Ok(v) = HeaderValue::try_from(wait.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let req = match serde_json::from_slice::<RegistrationRequest>(&body) {
        Ok(r) if !r.redirect_uris().iter().all(|u| p.redirect_allowed(u)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "a redirect URI names a host this server does not allow",
            );
        }
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                &format!("not a registration request: {e}"),
            );
        }
    };
    match client::register(&p.keys, req, unix_now()) {
        Ok(reg) => {
            p.count(Event::Registered);
            tracing::info!(target: "idguard::oauth", "client registered");
            (StatusCode::CREATED, no_store(), Json(reg)).into_response()
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.code, &e.description),
    }
}

#[derive(Deserialize)]
struct AuthorizeParams {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

/// Longest client id accepted (a sealed registration, or a metadata-document URL).
const MAX_CLIENT_ID_BYTES: usize = 8 * 1024;

async fn authorize(
    State(guard): State<IdGuard>,
    headers: HeaderMap,
    address: Option<Extension<ClientAddress>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<AuthorizeParams>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Nothing is redirected before the user approves: the redirect URI of a client that
    // registered itself is not trusted enough for an automatic redirect (RFC 9700
    // §4.11.2), so every problem here is shown on a page.
    let refuse = |message: &str| html::error_page(StatusCode::BAD_REQUEST, message);
    let Some(client_id) = q
        .client_id
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= MAX_CLIENT_ID_BYTES)
    else {
        return refuse("The request names no valid client.");
    };
    let client = match p.client(client_id).await {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(target: "idguard::oauth", reason = %excerpt(&why, 200), "authorize: client refused");
            return refuse(&format!("This client cannot sign in here: {why}."));
        }
    };
    let Some(redirect_uri) = client.redirect_uri(q.redirect_uri.as_deref()) else {
        tracing::info!(target: "idguard::oauth", "authorize: redirect URI not registered");
        return refuse("The redirect URI is not registered for this client.");
    };
    if !p.redirect_allowed(&redirect_uri) {
        return refuse("The redirect URI names a host this server does not allow.");
    }
    if q.state
        .as_deref()
        .is_some_and(|s| s.len() > MAX_STATE_BYTES)
    {
        return refuse("The request's `state` is too long.");
    }
    if q.response_type.as_deref() != Some("code") {
        return refuse("Only `response_type=code` is supported.");
    }
    let Some(challenge) = q.code_challenge.as_deref().filter(|c| !c.is_empty()) else {
        return refuse("PKCE is required: the client must send `code_challenge`.");
    };
    if q.code_challenge_method.as_deref() != Some("S256") {
        return refuse("PKCE `code_challenge_method` must be `S256`.");
    }
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return refuse("`code_challenge` is not an S256 challenge.");
    }
    if let Some(resource) = q.resource.as_deref()
        && !super::metadata::names_resource(resource, &p.resource)
    {
        return refuse("The requested `resource` is not this server.");
    }
    let scopes = match p.requested_scopes(q.scope.as_deref()) {
        Ok(s) => s,
        Err(why) => return refuse(&why),
    };
    let pending = Pending {
        origin: address
            .map(|Extension(ClientAddress(a))| a)
            .or_else(|| peer.map(|Extension(ConnectInfo(p))| p.ip())),
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        metadata_document: client.metadata_document,
        redirect_presented: q.redirect_uri.is_some(),
        redirect_uri,
        state: q.state.clone(),
        challenge: challenge.to_owned(),
        scopes,
    };
    match consent_page(p, &headers, &pending).await {
        Ok(page) => page,
        Err(e) => e.into_response(),
    }
}

/// Stores the request and renders the consent page with its CSRF token and cookie.
async fn consent_page(
    p: &Proxy,
    headers: &HeaderMap,
    pending: &Pending,
) -> Result<Response, OAuthError> {
    let txn = fresh(32)?;
    if let Err(wait) = p.sign_ins.admit(pending, PENDING_TTL) {
        tracing::debug!(target: "idguard::oauth", client = %client_label(&pending.client_id), origin = ?pending.origin, "authorize: too many sign-ins in progress");
        return Ok(too_many_sign_ins(wait));
    }
    if let Err(e) = p
        .put_sealed(RecordKind::Pending, &txn, pending, PENDING_TTL)
        .await
    {
        p.sign_ins.release(pending);
        return Err(e);
    }
    let nonce = match html::cookie_value(headers, html::CSRF_COOKIE).filter(|n| n.len() >= 32) {
        Some(n) => n.to_owned(),
        None => fresh(24)?,
    };
    let csrf = p
        .keys
        .stamp(Purpose::Csrf, format!("{txn}|{nonce}").as_bytes())
        .ok_or_else(|| OAuthError::new("server_error", "cannot render consent"))?;
    let mut res = html::consent_page(&html::Consent {
        client_name: &pending.client_name,
        client_id: &pending.client_id,
        metadata_document: pending.metadata_document,
        redirect_uri: &pending.redirect_uri,
        scopes: &pending.scopes,
        downstream: &p.settings.consent_scopes,
        resource: &p.resource,
        txn: &txn,
        csrf: &csrf,
    });
    html::set_cookie(&mut res, html::CSRF_COOKIE, &nonce, PENDING_TTL);
    Ok(res)
}

#[derive(Deserialize)]
struct ConsentForm {
    txn: Option<String>,
    csrf: Option<String>,
    decision: Option<String>,
}

async fn consent(
    State(guard): State<IdGuard>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(Form(form)) = form else {
        return html::error_page(StatusCode::BAD_REQUEST, "The consent form is malformed.");
    };
    let (Some(txn), Some(csrf)) = (form.txn.as_deref(), form.csrf.as_deref()) else {
        return html::error_page(StatusCode::FORBIDDEN, "The consent form is incomplete.");
    };
    // Defence in depth on top of the CSRF token: browsers say where a form came from.
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "The consent form came from another site.",
        );
    }
    let Some(nonce) = html::cookie_value(&headers, html::CSRF_COOKIE) else {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "The consent cookie is missing; start signing in again.",
        );
    };
    if !p
        .keys
        .check_stamp(Purpose::Csrf, format!("{txn}|{nonce}").as_bytes(), csrf)
    {
        tracing::warn!(target: "idguard::oauth", "consent: CSRF check failed");
        return html::error_page(StatusCode::FORBIDDEN, "The consent form is not valid.");
    }
    // Single use: one consent per authorization request.
    let pending: Pending = match p.take_sealed(RecordKind::Pending, txn).await {
        Ok(Some(pending)) => {
            // The Entra leg (if approved) holds a place of its own.
            p.sign_ins.release(&pending);
            pending
        }
        Ok(None) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in request expired or was already answered; start again.",
            );
        }
        Err(e) => return e.into_response(),
    };
    if form.decision.as_deref() != Some("approve") {
        tracing::info!(target: "idguard::oauth", "consent denied");
        let mut params = vec![
            ("error", "access_denied"),
            ("error_description", "the user declined"),
        ];
        if let Some(s) = pending.state.as_deref() {
            params.push(("state", s));
        }
        return to_client(&pending.redirect_uri, &params, p.issuer());
    }
    p.count(Event::Consented);
    tracing::info!(target: "idguard::oauth", "consent given");
    let verifier = match fresh(48) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let leg = Leg {
        pending,
        verifier,
        claims: None,
        rounds: 0,
    };
    start_entra_leg(p, leg).await
}

/// Stores the leg under a fresh state, binds the browser to it, and redirects to Entra.
async fn start_entra_leg(p: &Proxy, leg: Leg) -> Response {
    let state = match fresh(32) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = p
        .put_sealed(RecordKind::State, &state, &leg, STATE_TTL)
        .await
    {
        return e.into_response();
    }
    // In place of the pending request (or the previous leg) it follows.
    p.sign_ins.hold(&leg.pending, STATE_TTL);
    let Some(binding) = p.keys.stamp(
        Purpose::Consent,
        format!("{}|{state}", leg.pending.client_id).as_bytes(),
    ) else {
        return html::error_page(StatusCode::INTERNAL_SERVER_ERROR, "Cannot start sign-in.");
    };
    let scope = p.entra_authorize_scope(&leg.pending.scopes);
    let callback = p.callback_url();
    let challenge = pkce_s256(&leg.verifier);
    let mut params = vec![
        ("client_id", p.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", callback.as_str()),
        ("response_mode", "query"),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if let Some(claims) = leg.claims.as_deref() {
        params.push(("claims", claims));
    }
    let mut res = Redirect::to(&url_with(&p.authorize_endpoint, &params)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    html::set_cookie(&mut res, &html::binding_cookie(&state), &binding, STATE_TTL);
    res
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(guard): State<IdGuard>,
    headers: HeaderMap,
    Query(q): Query<CallbackParams>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(state) = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 128)
    else {
        return html::error_page(StatusCode::BAD_REQUEST, "The sign-in answer has no state.");
    };
    let unknown = || {
        html::error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in answer is unknown, expired or was already used; start again.",
        )
    };
    // Read, check the browser, then take: someone who merely learned the state cannot
    // spend it.
    let leg: Leg = match p.get_sealed::<Leg>(RecordKind::State, state).await {
        Ok(Some((leg, _))) => leg,
        Ok(None) => {
            tracing::warn!(target: "idguard::oauth", "callback: unknown or reused state");
            return unknown();
        }
        Err(e) => return e.into_response(),
    };
    // The browser that gave consent must be the one coming back.
    let binding = html::binding_cookie(state);
    let bound = html::cookie_value(&headers, &binding).is_some_and(|v| {
        p.keys.check_stamp(
            Purpose::Consent,
            format!("{}|{state}", leg.pending.client_id).as_bytes(),
            v,
        )
    });
    if !bound {
        tracing::warn!(target: "idguard::oauth", "callback: consent binding missing");
        return html::error_page(
            StatusCode::FORBIDDEN,
            "This browser did not approve this sign-in. Start again from your MCP client.",
        );
    }
    match p.take_sealed::<Leg>(RecordKind::State, state).await {
        Ok(Some(_)) => p.sign_ins.release(&leg.pending),
        Ok(None) => return unknown(),
        Err(e) => return e.into_response(),
    }
    let mut res = finish_sign_in(p, &guard, leg, &q).await;
    html::clear_cookie(&mut res, &binding);
    res
}

/// After the callback's checks: Entra's answer, the code redemption, the client's code.
async fn finish_sign_in(p: &Proxy, guard: &IdGuard, leg: Leg, q: &CallbackParams) -> Response {
    let pending = &leg.pending;
    let client_error = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = pending.state.as_deref() {
            params.push(("state", s));
        }
        to_client(&pending.redirect_uri, &params, p.issuer())
    };
    if let Some(error) = q.error.as_deref() {
        let description = q.error_description.as_deref().unwrap_or_default();
        tracing::info!(target: "idguard::oauth", error = %excerpt(error, 64), "Entra refused the sign-in");
        if error == "consent_required" || description.contains("AADSTS65001") {
            return html::admin_consent_page(&p.admin_consent_url());
        }
        let mapped = match error {
            "access_denied" => "access_denied",
            "invalid_scope" => "invalid_scope",
            "temporarily_unavailable" => "temporarily_unavailable",
            _ => "server_error",
        };
        return client_error(mapped, "the identity provider refused the sign-in");
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return client_error("server_error", "the identity provider sent no code");
    };
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", p.callback_url()),
        ("code_verifier", leg.verifier.clone()),
        ("scope", Proxy::entra_token_scope(&pending.scopes)),
    ];
    let tokens = match p.entra_token(form).await {
        Ok(t) => t,
        Err(EntraFailure::Consent) => return html::admin_consent_page(&p.admin_consent_url()),
        Err(EntraFailure::Claims(claims)) if leg.rounds < MAX_CLAIMS_ROUNDS => {
            // A claims challenge (MFA, a conditional access policy): sign in again with it.
            let verifier = match fresh(48) {
                Ok(v) => v,
                Err(e) => return e.into_response(),
            };
            let again = Leg {
                pending: leg.pending.clone(),
                verifier,
                claims: Some(claims),
                rounds: leg.rounds + 1,
            };
            return start_entra_leg(p, again).await;
        }
        Err(EntraFailure::Claims(_) | EntraFailure::InvalidGrant) => {
            return client_error("access_denied", "the identity provider refused the sign-in");
        }
        Err(EntraFailure::Other(why)) => {
            tracing::warn!(target: "idguard::oauth", reason = %why, "code redemption failed");
            return client_error("server_error", "the identity provider could not be reached");
        }
    };
    // The token must be one this API accepts, for a user.
    let principal = match guard.validate(&tokens.access_token).await {
        Ok(p) if !p.is_app_only() => p,
        Ok(_) => return client_error("access_denied", "not a user sign-in"),
        Err(e) => {
            tracing::warn!(target: "idguard::oauth", reason = %e, "Entra issued a token this API refuses");
            return client_error(
                "access_denied",
                "the signed-in account cannot use this server",
            );
        }
    };
    match issue_code(p, pending, tokens, principal.object_id()).await {
        Ok(code) => {
            p.count(Event::SignedIn);
            tracing::debug!(target: "idguard::oauth", tenant = principal.tenant_id(), oid = principal.object_id(), "signed in; code issued");
            let mut params = vec![("code", code.as_str())];
            if let Some(s) = pending.state.as_deref() {
                params.push(("state", s));
            }
            to_client(&pending.redirect_uri, &params, p.issuer())
        }
        Err(e) => e.into_response(),
    }
}

/// Stores the session and the client's authorization code; returns the code.
async fn issue_code(
    p: &Proxy,
    pending: &Pending,
    tokens: EntraTokens,
    oid: &str,
) -> Result<String, OAuthError> {
    let now = unix_now();
    let sid = fresh(32)?;
    let session = Session {
        client_id: pending.client_id.clone(),
        scopes: pending.scopes.clone(),
        oid: oid.to_owned(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: now.saturating_add(tokens.expires_in),
        generation: 0,
        ends_at: now.saturating_add(p.settings.refresh_token_lifetime.as_secs()),
        rotated_at: 0,
    };
    p.put_sealed(
        RecordKind::Session,
        &sid,
        &session,
        p.settings.refresh_token_lifetime,
    )
    .await?;
    let code = fresh(32)?;
    let record = Code {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        redirect_presented: pending.redirect_presented,
        challenge: pending.challenge.clone(),
        sid,
        used: false,
        expires_at: unix_now().saturating_add(CODE_TTL.as_secs()),
    };
    p.put_sealed(
        RecordKind::Code,
        &digest_b64(&code),
        &record,
        CODE_RECORD_TTL,
    )
    .await?;
    Ok(code)
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

async fn token(
    State(guard): State<IdGuard>,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form = match form_or_error(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Some(resource) = form.resource.as_deref()
        && !super::metadata::names_resource(resource, &p.resource)
    {
        return OAuthError::new("invalid_target", "`resource` is not this server").into_response();
    }
    let result = match form.grant_type.as_deref() {
        Some("authorization_code") => redeem_code(p, &form).await,
        Some("refresh_token") => refresh(p, &form).await,
        _ => Err(OAuthError::new(
            "unsupported_grant_type",
            "use `authorization_code` or `refresh_token`",
        )),
    };
    match result {
        Ok(body) => (StatusCode::OK, no_store(), Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The form of a token-endpoint style request, or the RFC 6749 JSON error.
fn form_or_error<T>(
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, OAuthError> {
    form.map(|Form(f)| f).map_err(|_| {
        OAuthError::new(
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        )
    })
}

/// A form field that must be present.
fn required<'a>(value: Option<&'a str>, name: &str) -> Result<&'a str, OAuthError> {
    value.ok_or_else(|| OAuthError::new("invalid_request", format!("`{name}` is required")))
}

async fn redeem_code(p: &Proxy, form: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let code = required(form.code.as_deref(), "code")?;
    let client_id = required(form.client_id.as_deref(), "client_id")?;
    let spent = || {
        OAuthError::new(
            "invalid_grant",
            "the code is invalid, expired or already used",
        )
    };
    let key = digest_b64(code);
    let Some((mut record, current)) = p.get_sealed::<Code>(RecordKind::Code, &key).await? else {
        return Err(spent());
    };
    if record.used {
        // A replayed code: revoke what the first redemption issued (OAuth 2.1 §4.1.3).
        tracing::warn!(target: "idguard::oauth", "authorization code replayed; session revoked");
        p.count(Event::ReuseRevoked);
        p.store
            .remove(RecordKind::Session, &record.sid)
            .await
            .map_err(|e| store_failed(&e))?;
        return Err(spent());
    }
    if unix_now() >= record.expires_at {
        return Err(spent());
    }
    // Mark it used atomically: of two concurrent redemptions, one wins.
    record.used = true;
    if !p
        .swap_sealed(RecordKind::Code, &key, &current, &record, CODE_RECORD_TTL)
        .await?
    {
        return Err(spent());
    }
    let refuse = |why: &str| Err(OAuthError::new("invalid_grant", why));
    if record.client_id != client_id {
        return refuse("the code was issued to another client");
    }
    let redirect_ok = match form.redirect_uri.as_deref() {
        Some(r) => r == record.redirect_uri,
        None => !record.redirect_presented,
    };
    if !redirect_ok {
        return refuse("`redirect_uri` differs from the authorization request");
    }
    let verifier = form.code_verifier.as_deref().unwrap_or_default();
    if !valid_verifier(verifier)
        || !constant_time_eq(pkce_s256(verifier).as_bytes(), record.challenge.as_bytes())
    {
        return refuse("the PKCE `code_verifier` does not match");
    }
    let (session, _) = p
        .get_sealed::<Session>(RecordKind::Session, &record.sid)
        .await?
        .ok_or_else(|| OAuthError::new("invalid_grant", "the sign-in session ended"))?;
    issue(p, &session, &record.sid)
}

fn issue(p: &Proxy, session: &Session, sid: &str) -> Result<serde_json::Value, OAuthError> {
    let failed = || OAuthError::new("server_error", "cannot issue a token");
    let (access, expires_in) = p.issue_access_token(session, sid).ok_or_else(failed)?;
    let refresh = p
        .refresh_token(sid, session.generation)
        .ok_or_else(failed)?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "refresh_token": refresh,
        "scope": session.scopes.join(" "),
    }))
}

async fn refresh(p: &Proxy, form: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let token = required(form.refresh_token.as_deref(), "refresh_token")?;
    let client_id = required(form.client_id.as_deref(), "client_id")?;
    let invalid = || {
        OAuthError::new(
            "invalid_grant",
            "the refresh token is invalid, expired or was revoked",
        )
    };
    let (sid, generation) = p.parse_refresh_token(token).ok_or_else(invalid)?;
    let (mut session, current) = p
        .get_sealed::<Session>(RecordKind::Session, sid)
        .await?
        .ok_or_else(invalid)?;
    if session.client_id != client_id {
        return Err(invalid());
    }
    if generation + 1 == session.generation
        && unix_now().saturating_sub(session.rotated_at) <= ROTATION_GRACE_SECS
    {
        // The token rotated a moment ago: a client that refreshed twice at once (a
        // reconnect), not a thief. Refuse without revoking (RFC 9700 §4.14.2 allows it).
        return Err(invalid());
    }
    if generation < session.generation {
        // A rotated token came back: whoever holds it is not the only holder of the
        // family. Revoke the family (RFC 9700 §4.14.2).
        tracing::warn!(target: "idguard::oauth", "refresh token reused; session revoked");
        p.count(Event::ReuseRevoked);
        p.store
            .remove(RecordKind::Session, sid)
            .await
            .map_err(|e| store_failed(&e))?;
        return Err(invalid());
    }
    if generation != session.generation {
        return Err(invalid());
    }
    // Renew the Entra token when it would end before the new access token. A transient
    // failure leaves the refresh token valid, so the client can retry.
    let needed = unix_now().saturating_add(p.settings.access_token_lifetime.as_secs());
    if session.expires_at < needed {
        let Some(entra_refresh) = session.refresh_token.clone() else {
            return Err(OAuthError::new("invalid_grant", "sign in again"));
        };
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", entra_refresh),
            ("scope", Proxy::entra_token_scope(&session.scopes)),
        ];
        match p.entra_token(form).await {
            Ok(t) => {
                session.access_token = t.access_token;
                if t.refresh_token.is_some() {
                    session.refresh_token = t.refresh_token;
                }
                session.expires_at = unix_now().saturating_add(t.expires_in);
            }
            Err(EntraFailure::Other(why)) => {
                tracing::warn!(target: "idguard::oauth", reason = %why, "Entra refresh failed");
                return Err(OAuthError::new(
                    "temporarily_unavailable",
                    "the identity provider could not be reached",
                ));
            }
            Err(_) => {
                p.store
                    .remove(RecordKind::Session, sid)
                    .await
                    .map_err(|e| store_failed(&e))?;
                return Err(OAuthError::new("invalid_grant", "sign in again"));
            }
        }
    }
    // Rotate: the next generation, only if nobody rotated meanwhile.
    session.generation += 1;
    session.rotated_at = unix_now();
    if !p
        .swap_sealed(
            RecordKind::Session,
            sid,
            &current,
            &session,
            Proxy::session_ttl(&session),
        )
        .await?
    {
        return Err(invalid());
    }
    p.count(Event::Refreshed);
    issue(p, &session, sid)
}

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// RFC 7009: ends the session behind a refresh or access token (both kinds stop working).
/// Unknown or already revoked tokens are answered `200`, as the RFC asks.
async fn revoke(
    State(guard): State<IdGuard>,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(p) = guard.oauth_proxy() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form = match form_or_error(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (token, client_id) = match (
        required(form.token.as_deref(), "token"),
        required(form.client_id.as_deref(), "client_id"),
    ) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let leeway = guard.config().leeway.as_secs();
    let sid = match p.parse_refresh_token(token) {
        Some((sid, _)) => Some(sid.to_owned()),
        None => p.verify_access_token(token, leeway).map(|c| c.sid),
    };
    if let Some(sid) = sid {
        match p.get_sealed::<Session>(RecordKind::Session, &sid).await {
            Ok(Some((session, _))) if session.client_id != client_id => {
                return OAuthError::new("invalid_client", "the token was issued to another client")
                    .into_response();
            }
            Ok(Some(_)) => {
                if let Err(e) = p.store.remove(RecordKind::Session, &sid).await {
                    return store_failed(&e).into_response();
                }
                p.count(Event::Revoked);
                tracing::info!(target: "idguard::oauth", "session revoked by its client");
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    (StatusCode::OK, no_store()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(client: &str, origin: Option<&str>) -> Pending {
        Pending {
            origin: origin.map(|o| o.parse().unwrap()),
            client_id: client.to_owned(),
            client_name: String::new(),
            metadata_document: false,
            redirect_uri: String::new(),
            redirect_presented: false,
            state: None,
            challenge: String::new(),
            scopes: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sign_ins_are_limited_per_address_and_per_client() {
        let ttl = Duration::from_secs(600);
        let s = SignIns::new(5, 3);
        for _ in 0..3 {
            s.admit(&pending("a", Some("10.0.0.1")), ttl).unwrap();
        }
        // The address is full; the same client from elsewhere is not.
        let wait = s.admit(&pending("b", Some("10.0.0.1")), ttl).unwrap_err();
        assert_eq!(wait, ttl);
        s.admit(&pending("a", Some("10.0.0.2")), ttl).unwrap();
        s.admit(&pending("a", None), ttl).unwrap();
        // The client is full (5), from any address.
        assert!(s.admit(&pending("a", Some("10.0.0.3")), ttl).is_err());
        s.admit(&pending("c", Some("10.0.0.3")), ttl).unwrap();
        // A finished sign-in frees its places.
        s.release(&pending("a", Some("10.0.0.1")));
        s.admit(&pending("a", Some("10.0.0.1")), ttl).unwrap();
        // Places expire with their records.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(
            s.admit(&pending("d", Some("10.0.0.1")), ttl).unwrap_err(),
            Duration::from_secs(300)
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        s.admit(&pending("d", Some("10.0.0.1")), ttl).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_network_counts_as_one_address() {
        let ttl = Duration::from_secs(600);
        let s = SignIns::new(100, 2);
        s.admit(&pending("a", Some("2001:db8::1")), ttl).unwrap();
        s.admit(&pending("b", Some("2001:db8::ffff:2")), ttl)
            .unwrap();
        assert!(s.admit(&pending("c", Some("2001:db8::3")), ttl).is_err());
        s.admit(&pending("c", Some("2001:db8:0:1::3")), ttl)
            .unwrap();
        // An IPv4-mapped address is the IPv4 address.
        s.admit(&pending("a", Some("::ffff:10.0.0.9")), ttl)
            .unwrap();
        s.admit(&pending("a", Some("10.0.0.9")), ttl).unwrap();
        assert!(s.admit(&pending("a", Some("10.0.0.9")), ttl).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept() {
        let ttl = Duration::from_secs(10);
        let s = SignIns::new(1, 1);
        for i in 0..1000u32 {
            s.admit(&pending(&i.to_string(), None), ttl).unwrap();
        }
        tokio::time::advance(ttl).await;
        for i in 0..30u32 {
            s.admit(&pending(&format!("late{i}"), None), ttl).unwrap();
        }
        assert!(s.lock().0.map.len() <= 30, "{}", s.lock().0.map.len());
    }
}
