//! `token_exchange`: an RFC 8693 token exchange at the upstream's own authorization server.
//!
//! [`TokenExchange`] posts the caller's token as the `subject_token` (type
//! `urn:ietf:params:oauth:token-type:access_token`) to a configured token endpoint with
//! `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` and
//! `requested_token_type=…:access_token`, plus the configured `audience`, `resource` and
//! `scope`, the client's credential (HTTP Basic, RFC 6749 §2.3.1) and, when configured, an
//! `actor_token`: a JWT naming idguard itself, signed with an [`IdentityAssertion`] key.
//!
//! The answer must be an RFC 8693 success: an `access_token`, `issued_token_type` =
//! `…:access_token`, `token_type` `Bearer` or `N_A`, an optional non-negative
//! `expires_in`. The issued token is cached per (digest of the subject token, audience,
//! resource, scopes) until the earlier of its own and the caller's token's expiry, minus a
//! skew; concurrent misses for one key make one request; failures are not cached.

use std::fmt;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use http::HeaderValue;
use serde_json::Value;

use super::IdentityAssertion;
use crate::error::{Challenge, Rejection, RejectionKind};
use crate::principal::Principal;
use crate::setting::Secret;

/// `grant_type` of an RFC 8693 token exchange.
pub(crate) const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an access token (the subject token and the requested token).
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT (the default `actor_token_type`).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// How long before its expiry an exchanged token stops being served (at most half its
/// lifetime).
pub const DEFAULT_EXCHANGE_SKEW: Duration = Duration::from_secs(60);
/// The whole budget of one exchange, retries included.
pub const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How many exchanged tokens are cached.
const CACHE_CAPACITY: u64 = 10_000;
/// How often a `5xx` or network failure is retried.
const MAX_RETRIES: u32 = 2;

/// An RFC 8693 token exchange for the upstream: its authorization server's token endpoint,
/// what to ask for, and the cache of what it issued. `Debug` shows no secret.
pub struct TokenExchange {
    endpoint: reqwest::Url,
    audience: Option<String>,
    resource: Option<String>,
    scope: String,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    actor: Option<(IdentityAssertion, String)>,
    skew: Duration,
    timeout: Duration,
    cache: moka::future::Cache<[u8; 32], Exchanged>,
}

/// A cached `Bearer` header and how long it is served.
#[derive(Clone)]
struct Exchanged {
    value: HeaderValue,
    ttl: Duration,
}

struct UntilStale;

impl moka::Expiry<[u8; 32], Exchanged> for UntilStale {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Exchanged, _at: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("token_endpoint", &self.endpoint.as_str())
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field("actor", &self.actor.as_ref().map(|(a, t)| (a, t)))
            .finish_non_exhaustive()
    }
}

/// The token endpoint is neither `https` nor `http` on a loopback address.
#[derive(Debug, thiserror::Error)]
#[error("the token endpoint must be an https url, or http on a loopback address")]
pub struct InsecureTokenEndpoint(());

/// Why an exchange gave no token.
#[derive(Debug)]
enum Failure {
    /// Unreachable, timed out or `5xx` after the retries.
    Unavailable,
    /// `429` (or `temporarily_unavailable`), with the server's `Retry-After`.
    Throttled(Option<Duration>),
    /// An RFC 6749 error answer: its `error` code (sanitized).
    Refused(String),
    /// Not an RFC 8693 answer.
    BadAnswer(&'static str),
    /// The actor token could not be signed.
    Internal,
}

/// The largest answer read from the token endpoint (a token response is a few KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl TokenExchange {
    /// An exchange at `token_endpoint` (`https`, or `http` on a loopback address), asking
    /// for no particular audience, resource or scope, without client authentication.
    ///
    /// # Errors
    ///
    /// [`InsecureTokenEndpoint`] for any other URL.
    pub fn new(token_endpoint: &str) -> Result<Self, InsecureTokenEndpoint> {
        let secure =
            token_endpoint.starts_with("https://") || crate::entra::is_loopback_url(token_endpoint);
        let endpoint = reqwest::Url::parse(token_endpoint)
            .ok()
            .filter(|u| {
                secure
                    && u.host().is_some()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none()
            })
            .ok_or(InsecureTokenEndpoint(()))?;
        Ok(Self::from_url(endpoint))
    }

    /// At an endpoint already checked.
    pub(crate) fn from_url(endpoint: reqwest::Url) -> Self {
        Self {
            endpoint,
            audience: None,
            resource: None,
            scope: String::new(),
            client_id: None,
            client_secret: None,
            actor: None,
            skew: DEFAULT_EXCHANGE_SKEW,
            timeout: DEFAULT_EXCHANGE_TIMEOUT,
            cache: moka::future::Cache::builder()
                .name("idguard-token-exchange")
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilStale)
                .build(),
        }
    }

    /// The `audience` parameter: the logical name of the upstream.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The `resource` parameter: the upstream's URL.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// The `scope` parameter (sorted, space-separated).
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        let mut scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        scopes.sort();
        scopes.dedup();
        self.scope = scopes.join(" ");
        self
    }

    /// Authenticates as `client_id` with `secret` (HTTP Basic, RFC 6749 §2.3.1).
    pub fn with_client_secret(mut self, client_id: impl Into<String>, secret: Secret) -> Self {
        self.client_id = Some(client_id.into());
        self.client_secret = Some(secret);
        self
    }

    /// Names a public client: `client_id` in the form, no secret.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self.client_secret = None;
        self
    }

    /// Sends an `actor_token` of type `token_type` (e.g. [`JWT_TOKEN_TYPE`]): a JWT signed by
    /// `signer` whose `sub` and `iss` are the signer's issuer (idguard) and whose `aud` is
    /// the signer's audience (the authorization server). Its JWKS is
    /// [`UpstreamCredential::assertion`](super::UpstreamCredential::assertion)'s.
    pub fn with_actor_token(
        mut self,
        signer: IdentityAssertion,
        token_type: impl Into<String>,
    ) -> Self {
        self.actor = Some((signer, token_type.into()));
        self
    }

    /// How long before its expiry an exchanged token stops being served (default
    /// [`DEFAULT_EXCHANGE_SKEW`], at most half the token's lifetime).
    pub fn with_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The budget of one exchange, retries included (default [`DEFAULT_EXCHANGE_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The actor token's signer, when configured.
    pub(crate) fn actor(&self) -> Option<&IdentityAssertion> {
        self.actor.as_ref().map(|(a, _)| a)
    }

    /// `Bearer <exchanged token>` (marked sensitive) for `principal` whose validated token
    /// is `subject`, from the cache when fresh, else exchanged with `http`. The gateway
    /// calls it for each request; it is public for other uses of the same token.
    ///
    /// # Errors
    ///
    /// The answer for the caller when no token could be had (`401`, `403`, `500`, `502`,
    /// `503` with `Retry-After`), as `docs/upstream-credentials.md` lists them.
    pub async fn header_for(
        &self,
        http: &reqwest::Client,
        principal: &Principal,
        subject: &str,
    ) -> Result<HeaderValue, Rejection> {
        let key = self.cache_key(subject);
        self.cache
            .try_get_with(key, self.fetch(http, principal, subject))
            .await
            .map(|e| e.value)
            .map_err(|e| rejection(&e, principal))
    }

    /// SHA-256 over the subject token and what is asked for, each length-prefixed: never
    /// the raw token.
    fn cache_key(&self, subject: &str) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let parts = [
            subject,
            self.audience.as_deref().unwrap_or("\u{0}"),
            self.resource.as_deref().unwrap_or("\u{0}"),
            &self.scope,
        ];
        for part in parts {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The loader: the exchange within its budget, turned into a cache entry.
    async fn fetch(
        &self,
        http: &reqwest::Client,
        principal: &Principal,
        subject: &str,
    ) -> Result<Exchanged, Failure> {
        let (token, expires_in) = tokio::time::timeout(self.timeout, self.exchange(http, subject))
            .await
            .map_err(|_| {
                tracing::error!(target: "idguard::gateway", timeout_secs = self.timeout.as_secs(), "token exchange timed out");
                Failure::Unavailable
            })??;
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| Failure::BadAnswer("the access token is not a header value"))?;
        value.set_sensitive(true);
        let caller_left = principal
            .expires_at()
            .saturating_sub(super::credential::unix_now());
        let ttl = match expires_in {
            // No `expires_in`: used for this request only.
            None => Duration::ZERO,
            Some(secs) => {
                let life = Duration::from_secs(secs.min(caller_left));
                life.saturating_sub(self.skew.min(Duration::from_secs(secs / 2)))
            }
        };
        tracing::debug!(target: "idguard::gateway", tenant = principal.tenant_id(), oid = principal.object_id(), ttl_secs = ttl.as_secs(), "token exchanged for the upstream");
        Ok(Exchanged { value, ttl })
    }

    /// The token request, retried on `5xx` and network failures with backoff.
    async fn exchange(
        &self,
        http: &reqwest::Client,
        subject: &str,
    ) -> Result<(Secret, Option<u64>), Failure> {
        let actor = match &self.actor {
            Some((signer, kind)) => Some((signer.self_assertion().ok_or(Failure::Internal)?, kind)),
            None => None,
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ];
        for (name, value) in [
            ("audience", self.audience.as_deref()),
            ("resource", self.resource.as_deref()),
            ("scope", Some(self.scope.as_str()).filter(|s| !s.is_empty())),
        ] {
            if let Some(v) = value {
                form.push((name, v));
            }
        }
        if let Some((token, kind)) = &actor {
            form.push(("actor_token", token.as_str()));
            form.push(("actor_token_type", kind.as_str()));
        }
        if let (Some(id), None) = (&self.client_id, &self.client_secret) {
            form.push(("client_id", id));
        }
        let mut attempt = 0;
        loop {
            let mut req = http.post(self.endpoint.clone()).form(&form);
            if let (Some(id), Some(secret)) = (&self.client_id, &self.client_secret) {
                // RFC 6749 §2.3.1: each part form-urlencoded, then Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(id), Some(enc(secret.expose())));
            }
            let retry = match req.send().await {
                Err(e) => {
                    tracing::warn!(target: "idguard::gateway", error = %crate::entra::without_url(&e), attempt, "token exchange endpoint unreachable");
                    true
                }
                Ok(res) if res.status().is_success() => return parse_issued(res).await,
                Ok(res) if res.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                    return Err(Failure::Throttled(crate::obo::retry_after(res.headers())));
                }
                Ok(res) if res.status().is_server_error() => {
                    tracing::warn!(target: "idguard::gateway", status = res.status().as_u16(), attempt, "token exchange endpoint failed");
                    true
                }
                Ok(res) => {
                    let retry_after = crate::obo::retry_after(res.headers());
                    let body: Value = crate::entra::body_capped(res, MAX_ANSWER_BYTES)
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(Value::Null);
                    let code = error_code(&body);
                    if code == "temporarily_unavailable" {
                        return Err(Failure::Throttled(retry_after));
                    }
                    return Err(Failure::Refused(code));
                }
            };
            if retry && attempt < MAX_RETRIES {
                tokio::time::sleep(crate::obo::backoff(attempt)).await;
                attempt += 1;
            } else {
                return Err(Failure::Unavailable);
            }
        }
    }
}

/// The RFC 6749 `error` of a refusal, kept to the characters error codes use (it is
/// logged; the `error_description` never is).
fn error_code(body: &Value) -> String {
    let code: String = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unreadable error answer")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
        .take(64)
        .collect();
    code
}

/// Checks an RFC 8693 §2.2.1 answer: the token, its type, `Bearer`/`N_A`, `expires_in`.
async fn parse_issued(res: reqwest::Response) -> Result<(Secret, Option<u64>), Failure> {
    let body: Value = crate::entra::body_capped(res, MAX_ANSWER_BYTES)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Failure::BadAnswer("not a json object of at most 64 KiB"))?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(Failure::BadAnswer("no `access_token`"))?;
    if body.get("issued_token_type").and_then(Value::as_str) != Some(ACCESS_TOKEN_TYPE) {
        return Err(Failure::BadAnswer(
            "`issued_token_type` is not `urn:ietf:params:oauth:token-type:access_token`",
        ));
    }
    let token_type = body.get("token_type").and_then(Value::as_str);
    if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer") || t == "N_A") {
        return Err(Failure::BadAnswer(
            "`token_type` is neither `Bearer` nor `N_A`",
        ));
    }
    let expires_in = match body.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(Failure::BadAnswer(
            "`expires_in` is not a non-negative integer",
        ))?),
    };
    Ok((Secret::new(token), expires_in))
}

/// The answer for a failed exchange (the same classes as on-behalf-of failures).
fn rejection(failure: &Failure, principal: &Principal) -> Rejection {
    let (tid, oid) = (principal.tenant_id(), principal.object_id());
    match failure {
        Failure::Unavailable => {
            tracing::error!(target: "idguard::rejection", "token exchange: the authorization server is unavailable");
            Rejection::new(RejectionKind::Unavailable, None)
        }
        Failure::Throttled(after) => {
            tracing::warn!(target: "idguard::rejection", "token exchange throttled");
            Rejection::new(RejectionKind::Throttled, None)
                .with_retry_after(after.map_or(5, |d| d.as_secs().max(1)))
        }
        Failure::Refused(code) => match code.as_str() {
            "invalid_grant" => {
                tracing::debug!(target: "idguard::rejection", tenant = tid, oid, error = %code, "token exchange: the caller's token was refused");
                Rejection::new(
                    RejectionKind::InvalidToken,
                    Some(Challenge::upstream_refused_token().header_or_minimal()),
                )
            }
            "invalid_target" | "invalid_scope" | "access_denied" | "unauthorized_client" => {
                tracing::warn!(target: "idguard::rejection", tenant = tid, oid, error = %code, "token exchange refused for this caller");
                Rejection::new(RejectionKind::Forbidden, None)
            }
            _ => {
                tracing::error!(target: "idguard::rejection", error = %code, "token exchange refused: check `[upstream]` (client, token endpoint)");
                Rejection::new(RejectionKind::Internal, None)
            }
        },
        Failure::BadAnswer(why) => {
            tracing::error!(target: "idguard::rejection", why, "token exchange: not an RFC 8693 answer");
            Rejection::new(RejectionKind::BadGateway, None)
        }
        Failure::Internal => Rejection::new(RejectionKind::Internal, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_https_or_loopback_endpoints() {
        assert!(TokenExchange::new("https://as.example.com/token").is_ok());
        assert!(TokenExchange::new("http://127.0.0.1:9/token").is_ok());
        assert!(TokenExchange::new("http://as.example.com/token").is_err());
        assert!(TokenExchange::new("http://127.0.0.1.evil.com/token").is_err());
        assert!(TokenExchange::new("as.example.com").is_err());
        assert!(TokenExchange::new("https://idguard:s3cret@as.example.com/token").is_err());
    }

    #[test]
    fn the_key_separates_subjects_and_targets_and_debug_hides_secrets() {
        let x = TokenExchange::new("https://as/token")
            .unwrap()
            .with_audience("a")
            .with_scopes(["s"])
            .with_client_secret("c", Secret::new("s3cret"));
        let y = TokenExchange::new("https://as/token")
            .unwrap()
            .with_audience("b")
            .with_scopes(["s"]);
        assert_eq!(x.cache_key("t1"), x.cache_key("t1"));
        assert_ne!(x.cache_key("t1"), x.cache_key("t2"));
        assert_ne!(x.cache_key("t1"), y.cache_key("t1"));
        assert!(!format!("{x:?}").contains("s3cret"));
    }

    #[test]
    fn refusals_map_like_on_behalf_of() {
        let p = Principal::from_unvalidated_claims(&json!({"tid": "t", "oid": "o", "sub": "s"}))
            .unwrap();
        let status = |f: Failure| rejection(&f, &p).status().as_u16();
        assert_eq!(status(Failure::Refused("invalid_grant".into())), 401);
        assert_eq!(status(Failure::Refused("invalid_target".into())), 403);
        assert_eq!(status(Failure::Refused("invalid_client".into())), 500);
        assert_eq!(status(Failure::Unavailable), 503);
        assert_eq!(rejection(&Failure::Unavailable, &p).retry_after(), Some(5));
        assert_eq!(
            rejection(&Failure::Throttled(Some(Duration::from_secs(7))), &p).retry_after(),
            Some(7)
        );
        assert_eq!(status(Failure::BadAnswer("x")), 502);
        assert_eq!(error_code(&json!({"error": "bad\"code\ny"})), "badcodey");
    }
}
