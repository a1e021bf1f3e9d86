//! [`OboClient`]: the token endpoint call, retries, and the cache around it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde_json::Value;

use super::cache::{CacheKey, Cached, TokenCache, token_cache};
use super::credential::{ClientAuth, ClientCredential};
use super::graph::Graph;
use super::{OboError, Outcome, classify, rejection_for, resource_of};
use crate::entra::{EntraError, admin_consent_url, token_endpoint};
use crate::error::Rejection;
use crate::principal::Principal;
use crate::setting::Secret;
use crate::token::BearerToken;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The resolved `[obo]` configuration.
#[derive(Clone, Debug)]
pub(crate) struct OboSettings {
    pub(crate) credential: ClientCredential,
    /// API name → sorted scopes of one resource.
    pub(crate) apis: BTreeMap<String, Arc<[String]>>,
    pub(crate) skew: Duration,
    pub(crate) cache_capacity: u64,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) graph_url: String,
    /// `None`: overage resolution off; `Some([])`: transitive membership; `Some(ids)`:
    /// `checkMemberGroups` for these ids.
    pub(crate) overage: Option<Vec<String>>,
}

/// A downstream access token obtained on behalf of the caller.
///
/// `Debug` shows the granted scopes, never the token.
#[derive(Clone)]
pub struct OboToken(Arc<TokenInner>);

struct TokenInner {
    access_token: Secret,
    scope: String,
    expires_in: Duration,
}

impl OboToken {
    #[cfg_attr(
        not(feature = "redis"),
        expect(dead_code, reason = "the redis second level")
    )]
    pub(crate) fn new(access_token: String, scope: String, expires_in: Duration) -> Self {
        Self(Arc::new(TokenInner {
            access_token: Secret::new(access_token),
            scope,
            expires_in,
        }))
    }

    /// The access token, for the downstream call's `Authorization: Bearer` header. Never
    /// log it.
    pub fn expose_secret(&self) -> &str {
        self.0.access_token.expose()
    }

    /// `Bearer <token>` as a header value marked sensitive (hidden from `Debug`).
    pub fn authorization_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.expose_secret())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The scopes Entra granted (space-separated, as Entra sent them).
    pub fn scope(&self) -> &str {
        &self.0.scope
    }

    /// The lifetime Entra gave the token (`expires_in`) when it was issued.
    pub fn expires_in(&self) -> Duration {
        self.0.expires_in
    }
}

impl fmt::Debug for OboToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboToken")
            .field("scope", &self.0.scope)
            .field("access_token", &"***")
            .finish()
    }
}

/// Exchanges callers' tokens for downstream tokens (on-behalf-of) and caches them. Built by
/// [`IdGuard`](crate::IdGuard) from the `[obo]` configuration
/// ([`IdGuard::obo_client`](crate::IdGuard::obo_client)); cloning is cheap.
#[derive(Clone)]
pub struct OboClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    authority: String,
    client_id: String,
    credential: ClientCredential,
    apis: BTreeMap<String, Arc<[String]>>,
    skew: Duration,
    timeout: Duration,
    pub(crate) max_retries: u32,
    cache: TokenCache,
    resource_metadata_url: String,
    anchor_unix: u64,
    anchor: tokio::time::Instant,
    /// Per tenant: no token requests before this instant (Entra's `Retry-After`).
    throttled: Mutex<HashMap<String, tokio::time::Instant>>,
    pub(crate) graph: Graph,
    counters: [std::sync::atomic::AtomicU64; 4],
    /// The second level, shared by replicas; set once, before the first request.
    #[cfg(feature = "redis")]
    shared: std::sync::OnceLock<super::shared::SharedTokenCache>,
}

/// Counters of an [`OboClient`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OboStats {
    /// Tokens served from the cache.
    pub cache_hits: u64,
    /// Exchanges with the token endpoint (cache misses and proactive refreshes).
    pub exchanges: u64,
    /// Exchanges that failed.
    pub errors: u64,
    /// First-level misses served from the shared (Redis) second level.
    pub shared_hits: u64,
}

const HITS: usize = 0;
const EXCHANGES: usize = 1;
const ERRORS: usize = 2;
pub(crate) const SHARED_HITS: usize = 3;

impl fmt::Debug for OboClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboClient")
            .field("authority", &self.inner.authority)
            .field("client_id", &self.inner.client_id)
            .field("credential", &self.inner.credential)
            .field("apis", &self.inner.apis)
            .finish_non_exhaustive()
    }
}

/// Why a token is loaded past the first level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Load {
    /// Not in the first level.
    Miss,
    /// In the first level, and due for Entra's proactive refresh (`refresh_in`).
    Refresh,
}

/// What the token endpoint returned on success.
struct Issued {
    token: OboToken,
    expires_in: u64,
    refresh_in: Option<u64>,
}

impl OboClient {
    pub(crate) fn new(
        settings: OboSettings,
        http: reqwest::Client,
        authority: String,
        client_id: String,
        resource_metadata_url: String,
    ) -> Self {
        let graph = Graph::new(settings.graph_url, settings.overage);
        Self {
            inner: Arc::new(Inner {
                http,
                authority,
                client_id,
                credential: settings.credential,
                apis: settings.apis,
                skew: settings.skew,
                timeout: settings.timeout,
                max_retries: settings.max_retries,
                cache: token_cache(settings.cache_capacity),
                resource_metadata_url,
                anchor_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                anchor: tokio::time::Instant::now(),
                throttled: Mutex::new(HashMap::new()),
                graph,
                counters: Default::default(),
                #[cfg(feature = "redis")]
                shared: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A token for the downstream API named `api` in `[obo.apis]`, for `principal` whose
    /// incoming token is `assertion`. Served from the cache when possible.
    ///
    /// # Errors
    ///
    /// [`OboError`]; turn it into the HTTP answer with [`rejection`](Self::rejection).
    pub async fn token_for(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
        api: &str,
    ) -> Result<OboToken, OboError> {
        let scopes = self
            .inner
            .apis
            .get(api)
            .ok_or_else(|| OboError::UnknownApi(api.to_owned()))?;
        self.get(principal, assertion, scopes).await
    }

    /// Like [`token_for`](Self::token_for) with explicit scopes (all of one resource).
    ///
    /// # Errors
    ///
    /// [`OboError`].
    pub async fn token_for_scopes<I, S>(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
        scopes: I,
    ) -> Result<OboToken, OboError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        scopes.sort();
        scopes.dedup();
        self.get(principal, assertion, &scopes.into()).await
    }

    /// The HTTP answer for `err` (DESIGN.md §4), through the one rejection mapping: the
    /// claims challenge only for clients whose token declares `cp1`.
    pub fn rejection(&self, err: &OboError, principal: &Principal) -> Rejection {
        rejection_for(
            err,
            principal,
            &self.inner.authority,
            &self.inner.resource_metadata_url,
        )
    }

    /// Cache hits, exchanges and failed exchanges since start.
    pub fn stats(&self) -> OboStats {
        let c = |i: usize| {
            self.inner
                .counters
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        OboStats {
            cache_hits: c(HITS),
            exchanges: c(EXCHANGES),
            errors: c(ERRORS),
            shared_hits: c(SHARED_HITS),
        }
    }

    /// Puts `shared` behind this client's cache, as its second level; `false` if one is
    /// already there. Call it before the client serves requests.
    #[cfg(feature = "redis")]
    pub(crate) fn set_shared(&self, shared: super::shared::SharedTokenCache) -> bool {
        self.inner.shared.set(shared).is_ok()
    }

    pub(crate) fn count(&self, which: usize) {
        if let Some(c) = self.inner.counters.get(which) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The names of the configured downstream APIs.
    pub fn apis(&self) -> impl Iterator<Item = &str> {
        self.inner.apis.keys().map(String::as_str)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Seconds since the epoch on tokio's clock (anchored at start), so paused-time tests
    /// see incoming tokens expire.
    pub(crate) fn unix_now(&self) -> u64 {
        self.inner.anchor_unix + self.inner.anchor.elapsed().as_secs()
    }

    /// [`unix_now`](Self::unix_now) in milliseconds.
    #[cfg_attr(
        not(feature = "redis"),
        expect(dead_code, reason = "the redis second level")
    )]
    pub(crate) fn unix_now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.inner.anchor.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner
            .anchor_unix
            .saturating_mul(1000)
            .saturating_add(elapsed)
    }

    async fn get(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
        scopes: &Arc<[String]>,
    ) -> Result<OboToken, OboError> {
        if principal.is_app_only() {
            return Err(OboError::AppOnly);
        }
        let inner = &*self.inner;
        let key = CacheKey::new(
            assertion.digest(),
            scopes,
            &inner.client_id,
            principal.tenant_id(),
        );
        let now = tokio::time::Instant::now();
        if let Some(hit) = inner.cache.get(&key).await {
            if now < hit.deadline {
                self.count(HITS);
                if hit.refresh_at.is_some_and(|at| now >= at)
                    && !hit.refreshing.swap(true, Ordering::AcqRel)
                {
                    self.spawn_refresh(key, principal, assertion, scopes, &hit.refreshing);
                }
                return Ok(hit.token);
            }
            inner.cache.invalidate(&key).await;
        }
        inner
            .cache
            .try_get_with(
                key,
                self.load(&key, principal, assertion, scopes, Load::Miss),
            )
            .await
            .map(|c| c.token)
            .map_err(|e| (*e).clone())
    }

    /// Entra asked (`refresh_in`) for an early refresh: fetch in the background, keep
    /// serving the cached token meanwhile.
    fn spawn_refresh(
        &self,
        key: CacheKey,
        principal: &Principal,
        assertion: &BearerToken,
        scopes: &Arc<[String]>,
        flag: &Arc<AtomicBool>,
    ) {
        let (this, principal, assertion, scopes, flag) = (
            self.clone(),
            principal.clone(),
            assertion.clone(),
            scopes.clone(),
            flag.clone(),
        );
        tokio::spawn(async move {
            match this
                .load(&key, &principal, &assertion, &scopes, Load::Refresh)
                .await
            {
                Ok(fresh) => this.inner.cache.insert(key, fresh).await,
                Err(e) => {
                    flag.store(false, Ordering::Release);
                    tracing::warn!(target: "idguard::obo", reason = %e, "proactive refresh failed; the cached token keeps serving");
                }
            }
        });
    }

    /// A first-level miss or a proactive refresh: the second level when there is one (for
    /// a refresh, only a token not yet due for one), else an exchange.
    async fn load(
        &self,
        key: &CacheKey,
        principal: &Principal,
        assertion: &BearerToken,
        scopes: &[String],
        why: Load,
    ) -> Result<Cached, OboError> {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.inner.shared.get() {
            return shared
                .load(key, self, why, self.fetch(principal, assertion, scopes))
                .await;
        }
        #[cfg(not(feature = "redis"))]
        let _ = (key, why);
        self.fetch(principal, assertion, scopes).await
    }

    /// The loader: one exchange (with its own timeout, so a dropped caller cannot leave
    /// waiters hanging), turned into a cache entry.
    async fn fetch(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
        scopes: &[String],
    ) -> Result<Cached, OboError> {
        let inner = &*self.inner;
        self.count(EXCHANGES);
        let exchange = self.exchange(principal.tenant_id(), assertion, scopes);
        let issued = tokio::time::timeout(inner.timeout, exchange)
            .await
            .map_err(|_| OboError::Unavailable("entra (timed out)".into()))
            .and_then(|r| r)
            .inspect_err(|_| self.count(ERRORS))?;
        let now = tokio::time::Instant::now();
        let incoming_left = principal.expires_at().saturating_sub(self.unix_now());
        let ttl =
            Duration::from_secs(issued.expires_in.min(incoming_left)).saturating_sub(inner.skew);
        let deadline = now + ttl;
        let refresh_at = issued
            .refresh_in
            .map(|r| now + Duration::from_secs(r))
            .filter(|at| *at < deadline);
        tracing::debug!(target: "idguard::obo", tenant = principal.tenant_id(), oid = principal.object_id(), ttl_secs = ttl.as_secs(), "on-behalf-of token issued");
        Ok(Cached {
            token: issued.token,
            deadline,
            refresh_at,
            ttl,
            refreshing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The token request, retried on `5xx` and network failures with backoff.
    async fn exchange(
        &self,
        tid: &str,
        assertion: &BearerToken,
        scopes: &[String],
    ) -> Result<Issued, OboError> {
        let inner = &*self.inner;
        if let Some(wait) = self.throttled_for(tid) {
            return Err(OboError::Throttled { retry_after: wait });
        }
        let endpoint = token_endpoint(&inner.authority, tid);
        let scope = scopes.join(" ");
        let mut attempt = 0;
        loop {
            let auth = inner.credential.client_auth(&inner.client_id, &endpoint)?;
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", JWT_BEARER),
                ("client_id", &inner.client_id),
                ("assertion", assertion.expose()),
                ("scope", &scope),
                ("requested_token_use", "on_behalf_of"),
            ];
            match &auth {
                ClientAuth::Secret(s) => form.push(("client_secret", s.expose())),
                ClientAuth::Assertion(a) => {
                    form.push(("client_assertion_type", ASSERTION_TYPE));
                    form.push(("client_assertion", a.expose()));
                }
            }
            let outcome = match inner.http.post(&endpoint).form(&form).send().await {
                Err(e) => {
                    // reqwest errors name the URL (no token in it) and the cause.
                    tracing::warn!(target: "idguard::obo", error = %e, attempt, "token endpoint unreachable");
                    Outcome::Retry
                }
                Ok(res) if res.status().is_success() => return parse_issued(res).await,
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = retry_after(res.headers());
                    let body: EntraError = res.json().await.unwrap_or_default();
                    tracing::debug!(target: "idguard::obo", status, error = %body.error, codes = ?body.error_codes, "token endpoint refused");
                    classify(status, &body, retry_after, || {
                        admin_consent_url(
                            &inner.authority,
                            tid,
                            &inner.client_id,
                            &resource_of(scopes),
                        )
                    })
                }
            };
            match outcome {
                Outcome::Fail(e) => {
                    if let OboError::Throttled { retry_after } = &e {
                        self.throttle(tid, *retry_after);
                    }
                    return Err(e);
                }
                Outcome::Retry if attempt < inner.max_retries => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Outcome::Retry => return Err(OboError::Unavailable("entra".into())),
            }
        }
    }

    fn throttled_for(&self, tid: &str) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let mut map = self
            .inner
            .throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(tid) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                map.remove(tid);
                None
            }
            None => None,
        }
    }

    fn throttle(&self, tid: &str, wait: Duration) {
        self.inner
            .throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tid.to_owned(), tokio::time::Instant::now() + wait);
    }
}

/// 100 ms, 200 ms, 400 ms … (at most 2 s), plus up to 50 ms of jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    let jitter = u64::from(
        uuid::Uuid::new_v4()
            .as_bytes()
            .first()
            .copied()
            .unwrap_or(0),
    ) % 50;
    Duration::from_millis(base + jitter)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Entra or Graph).
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Entra sends numbers; older endpoints sent strings.
fn seconds(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn parse_issued(res: reqwest::Response) -> Result<Issued, OboError> {
    let bad = || OboError::Unavailable("entra (unreadable token response)".into());
    let body: Value = res.json().await.map_err(|_| bad())?;
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    let expires_in = seconds(body.get("expires_in")).ok_or_else(bad)?;
    Ok(Issued {
        token: OboToken(Arc::new(TokenInner {
            access_token: Secret::new(access_token),
            scope: body
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            expires_in: Duration::from_secs(expires_in),
        })),
        expires_in,
        refresh_in: seconds(body.get("refresh_in")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(0) < Duration::from_millis(150));
        assert!(backoff(1) >= Duration::from_millis(200));
        assert!(backoff(30) <= Duration::from_millis(2_050));
    }

    #[test]
    fn token_debug_hides_the_token() {
        let t = OboToken(Arc::new(TokenInner {
            access_token: Secret::new("eyJsecret"),
            scope: "s".into(),
            expires_in: Duration::from_secs(1),
        }));
        assert!(!format!("{t:?}").contains("eyJ"));
        assert!(!format!("{:?}", t.authorization_header().unwrap()).contains("eyJ"));
    }
}
