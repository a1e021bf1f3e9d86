//! Errors, and the one mapping from a rejection to an HTTP response.
//!
//! Three families (STYLE.md §4):
//!
//! - [`ConfigError`] at start-up: every problem at once, each naming its key.
//! - [`TokenError`] (and [`StartupError`]) from library calls.
//! - [`Rejection`] per request: an opaque value with a [`kind`](Rejection::kind), turned into
//!   a response by [`Rejection::into_response`], the single place that knows the wire format
//!   of DESIGN.md §4, with its `WWW-Authenticate` value built by `Challenge`, the one
//!   builder of challenges (each value an escaped quoted-string; fail-closed when a value
//!   cannot be sent).
//!
//! No message ever contains token text.

mod challenge;

use std::fmt;
use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

pub(crate) use challenge::Challenge;

/// Why a bearer token was not accepted.
///
/// The variants are for logs, metrics and tests; on the wire every one of them is the same
/// `401 invalid_token` (or `503` for [`KeysUnavailable`](Self::KeysUnavailable) and
/// [`StoreUnavailable`](Self::StoreUnavailable)), except
/// [`InsufficientScope`](Self::InsufficientScope) (`403 insufficient_scope`) and
/// [`GroupsUnresolved`](Self::GroupsUnresolved) (answered as the on-behalf-of error is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// The token is longer than idguard accepts.
    #[error("token is longer than {max} bytes")]
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// Not a compact JWS with a JSON header and claims.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The header names an algorithm other than RS256.
    #[error("token algorithm is not RS256")]
    UnsupportedAlgorithm,
    /// The header has no `kid`, or no published key has it (after a refresh).
    #[error("token is signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` is not one of the configured audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `iss` does not match the issuer for the token's tenant.
    #[error("token issuer does not match its tenant")]
    WrongIssuer,
    /// The signing key is bound to an issuer other than the token's.
    #[error("token signing key belongs to another issuer")]
    KeyIssuerMismatch,
    /// `tid` is not a tenant this service accepts.
    #[error("token tenant is not allowed")]
    TenantNotAllowed,
    /// A v1.0 token while only v2.0 tokens are accepted, or an unknown `ver`.
    #[error("token version is not accepted")]
    VersionNotAccepted,
    /// A claim idguard requires is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// Neither `scp` nor `roles`: the token was not granted anything for this API.
    #[error("token carries neither scopes nor roles")]
    NoScopeOrRole,
    /// The signing keys could not be fetched and the token's key is not cached.
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    /// An idguard-issued token (OAuth proxy) that is altered, expired, not for this
    /// resource, or whose session was revoked.
    #[error("idguard-issued token is invalid, expired or revoked")]
    SessionEnded,
    /// The session behind an idguard-issued token could not be read: the shared store
    /// (`[store]`) is unreachable. Answered `503` with `Retry-After`, never as a pass.
    #[error("the session store is unavailable")]
    StoreUnavailable,
    /// A valid token with none of the required scopes (`token.required_scopes`) and none of
    /// the required roles (`token.required_roles`).
    #[error("token carries none of the required scopes or roles")]
    InsufficientScope,
    /// The token has a groups overage, and its groups could not be resolved through Graph
    /// (`[obo] resolve_group_overage`).
    #[error("the groups of a token with a groups overage could not be resolved: {0}")]
    GroupsUnresolved(OboError),
}

impl TokenError {
    /// The class of problem, for the `error_description` of an `invalid_token` challenge and
    /// for logs: never token text or a claim's value. Plain ASCII without quotes or
    /// backslashes, as RFC 6750 requires.
    pub(crate) fn description(&self) -> &'static str {
        match self {
            TokenError::Missing => "no bearer token",
            TokenError::TooLarge { .. } => "the token is longer than this server accepts",
            TokenError::Malformed => "the token is not a well-formed JWT",
            TokenError::UnsupportedAlgorithm => "the token is not signed with RS256",
            TokenError::UnknownKey => {
                "the token is signed with a key the identity provider does not publish"
            }
            TokenError::BadSignature => "the token signature does not verify",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::WrongAudience => {
                "the token is for another audience: request it with this API's scope"
            }
            TokenError::WrongIssuer => "the token issuer does not match its tenant",
            TokenError::KeyIssuerMismatch => "the token signing key belongs to another issuer",
            TokenError::TenantNotAllowed => "the token tenant is not allowed here",
            TokenError::VersionNotAccepted => "the token version is not accepted",
            TokenError::MissingClaim(_) => "the token lacks a claim this server requires",
            TokenError::NoScopeOrRole => "the token carries neither scopes nor roles",
            TokenError::SessionEnded => "the sign-in session has ended: sign in again",
            _ => "the token is not accepted",
        }
    }
}

/// One problem in a configuration, naming the key as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    key: String,
    message: String,
}

impl ConfigProblem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The configuration key, e.g. `token.client_id`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A configuration that cannot be used. Holds **every** problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub(crate) fn from_problems(problems: Vec<ConfigProblem>) -> Self {
        Self { problems }
    }

    /// Every problem, in the order the keys were checked.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.problems {
            write!(f, "\n  `{}`: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Why [`IdGuard::new`](crate::IdGuard::new) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OpenID discovery document could not be fetched or read.
    #[error("cannot load OpenID metadata from `{url}`: {reason}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The signing keys could not be fetched or contain no usable RSA key.
    #[error("cannot load signing keys from `{url}`: {reason}")]
    Jwks {
        /// The JWKS URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// The kind of a [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No bearer token: `401` with a challenge that has no `error` parameter.
    MissingToken,
    /// The token is invalid, expired or not for us: `401 invalid_token`.
    InvalidToken,
    /// A valid token without a required scope or role: `403 insufficient_scope`.
    InsufficientScope,
    /// A policy asks for a stronger sign-in (MFA): `401 insufficient_user_authentication`
    /// (RFC 9470).
    StepUpRequired,
    /// The request is refused for this caller (e.g. an MCP session owned by someone else):
    /// `403`.
    Forbidden,
    /// The body is larger than allowed: `413`.
    PayloadTooLarge,
    /// The body is not what the endpoint accepts (not JSON-RPC, header/body mismatch): `400`.
    BadRequest,
    /// Signing keys (or another identity dependency) are unreachable: `503` + `Retry-After`.
    Unavailable,
    /// Entra or Graph throttled an on-behalf-of call: `503` with their `Retry-After`.
    Throttled,
    /// A downstream API needs consent nobody gave: `403`, the challenge carries the
    /// admin-consent URL (`consent_uri`).
    ConsentRequired,
    /// A downstream API needs a stronger sign-in: `401`, Entra's `insufficient_claims`
    /// challenge for clients that declared `cp1`, else `invalid_token` explaining it.
    ClaimsChallenge,
    /// A wiring error on our side (e.g. no principal where one must be): `500`.
    Internal,
    /// An MCP session id that this caller does not hold (unknown, forged, another
    /// caller's, or from before a key change): `404`, so the client starts a new session.
    SessionNotFound,
    /// A request body labelled or encoded otherwise than plain `application/json`: `415`.
    UnsupportedMediaType,
    /// A path below the MCP endpoint (only the endpoint itself is served): `404`.
    NotServed,
    /// A method the MCP endpoint does not serve: `405`.
    MethodNotAllowed,
    /// A `Host` or `Origin` that this server does not answer to (DNS rebinding): `403`.
    ForbiddenOrigin,
    /// The upstream MCP server is unreachable, or answered what idguard cannot check:
    /// `502`.
    BadGateway,
    /// The upstream MCP server did not start its reply in time: `504`.
    GatewayTimeout,
}

impl RejectionKind {
    /// Every kind this version knows, for tables keyed by kind (e.g. metrics counters).
    pub const ALL: [RejectionKind; 19] = [
        RejectionKind::MissingToken,
        RejectionKind::InvalidToken,
        RejectionKind::InsufficientScope,
        RejectionKind::StepUpRequired,
        RejectionKind::Forbidden,
        RejectionKind::PayloadTooLarge,
        RejectionKind::BadRequest,
        RejectionKind::Unavailable,
        RejectionKind::Internal,
        RejectionKind::Throttled,
        RejectionKind::ConsentRequired,
        RejectionKind::ClaimsChallenge,
        RejectionKind::SessionNotFound,
        RejectionKind::UnsupportedMediaType,
        RejectionKind::NotServed,
        RejectionKind::MethodNotAllowed,
        RejectionKind::ForbiddenOrigin,
        RejectionKind::BadGateway,
        RejectionKind::GatewayTimeout,
    ];

    /// A stable `snake_case` name, as metrics labels and logs show it (`missing_token`).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::MissingToken => "missing_token",
            RejectionKind::InvalidToken => "invalid_token",
            RejectionKind::InsufficientScope => "insufficient_scope",
            RejectionKind::StepUpRequired => "step_up_required",
            RejectionKind::Forbidden => "forbidden",
            RejectionKind::PayloadTooLarge => "payload_too_large",
            RejectionKind::BadRequest => "bad_request",
            RejectionKind::Unavailable => "unavailable",
            RejectionKind::Internal => "internal",
            RejectionKind::Throttled => "throttled",
            RejectionKind::ConsentRequired => "consent_required",
            RejectionKind::ClaimsChallenge => "claims_challenge",
            RejectionKind::SessionNotFound => "session_not_found",
            RejectionKind::UnsupportedMediaType => "unsupported_media_type",
            RejectionKind::NotServed => "not_served",
            RejectionKind::MethodNotAllowed => "method_not_allowed",
            RejectionKind::ForbiddenOrigin => "forbidden_origin",
            RejectionKind::BadGateway => "bad_gateway",
            RejectionKind::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The HTTP status this kind maps to.
    pub fn status(self) -> StatusCode {
        match self {
            RejectionKind::MissingToken
            | RejectionKind::InvalidToken
            | RejectionKind::StepUpRequired
            | RejectionKind::ClaimsChallenge => StatusCode::UNAUTHORIZED,
            RejectionKind::InsufficientScope
            | RejectionKind::Forbidden
            | RejectionKind::ConsentRequired => StatusCode::FORBIDDEN,
            RejectionKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectionKind::BadRequest => StatusCode::BAD_REQUEST,
            RejectionKind::Unavailable | RejectionKind::Throttled => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectionKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RejectionKind::SessionNotFound | RejectionKind::NotServed => StatusCode::NOT_FOUND,
            RejectionKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RejectionKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RejectionKind::ForbiddenOrigin => StatusCode::FORBIDDEN,
            RejectionKind::BadGateway => StatusCode::BAD_GATEWAY,
            RejectionKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Seconds a client is told to wait when an identity dependency is down.
pub(crate) const RETRY_AFTER_SECS: u32 = 5;

/// A request that idguard answers itself. Built by the guard, rendered by
/// [`into_response`](Self::into_response) (and axum's `IntoResponse`).
#[derive(Clone, Debug)]
pub struct Rejection {
    kind: RejectionKind,
    www_authenticate: Option<HeaderValue>,
    retry_after: Option<u64>,
    description: Option<&'static str>,
}

impl Rejection {
    pub(crate) fn new(kind: RejectionKind, www_authenticate: Option<HeaderValue>) -> Self {
        Self {
            kind,
            www_authenticate,
            retry_after: None,
            description: None,
        }
    }

    /// `401 invalid_token` for `e`: `challenge` (the prebuilt `Bearer error="invalid_token",
    /// resource_metadata="…"`) gains an `error_description` naming the class of problem
    /// (RFC 6750 §3), never the token or a claim's value.
    pub(crate) fn invalid_token(challenge: &Challenge, e: &TokenError) -> Self {
        let description = e.description();
        let challenge = challenge
            .clone()
            .with_description(description)
            .header_or_minimal();
        Self {
            description: Some(description),
            ..Self::new(RejectionKind::InvalidToken, Some(challenge))
        }
    }

    /// Why, in a few words, when the rejection says (the challenge's `error_description`).
    pub fn description(&self) -> Option<&str> {
        self.description
    }

    /// Says why in the JSON body's `error_description` (a fixed text: never a token, a
    /// claim's value or an upstream's message).
    pub(crate) fn with_description(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }

    /// Sets the `Retry-After` seconds (for throttling answers).
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The `Retry-After` seconds this rejection answers with, if any.
    pub fn retry_after(&self) -> Option<u64> {
        match (self.retry_after, self.kind) {
            (Some(s), _) => Some(s),
            (None, RejectionKind::Unavailable | RejectionKind::Throttled) => {
                Some(u64::from(RETRY_AFTER_SECS))
            }
            (None, _) => None,
        }
    }

    /// What kind of rejection this is.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The `WWW-Authenticate` challenge, if this rejection carries one.
    pub fn www_authenticate(&self) -> Option<&HeaderValue> {
        self.www_authenticate.as_ref()
    }

    /// Renders the rejection: status, challenge, `Retry-After` for outages and throttling,
    /// an empty body,
    /// and the `Rejection` itself in the response extensions.
    ///
    /// This is the one mapping from rejections to HTTP; everything that answers for idguard
    /// goes through it.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        if let Some(challenge) = &self.www_authenticate {
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, challenge.clone());
        }
        if let Some(secs) = self.retry_after() {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        res.extensions_mut().insert(self);
        res
    }
}

impl axum::response::IntoResponse for Rejection {
    /// [`Rejection::into_response`], with a JSON body for `400`, `401` and `403` (a plain
    /// refusal, `access_denied`, only when it has a description):
    /// `{"error": "…", "error_description": "…"}` (RFC 6750's code, and the description when
    /// there is one), so a client that reads bodies rather than headers learns as much.
    fn into_response(self) -> axum::response::Response {
        let code = match self.kind {
            RejectionKind::BadRequest => Some("invalid_request"),
            RejectionKind::InvalidToken => Some("invalid_token"),
            RejectionKind::InsufficientScope => Some("insufficient_scope"),
            // RFC 6749's code, when there is something to say about it.
            RejectionKind::Forbidden if self.description.is_some() => Some("access_denied"),
            _ => None,
        };
        let body = code.map(|code| {
            let mut body = serde_json::json!({ "error": code });
            if let (Some(d), Some(map)) = (self.description, body.as_object_mut()) {
                map.insert("error_description".into(), d.into());
            }
            body.to_string()
        });
        let mut res: axum::response::Response = Rejection::into_response(self);
        if let Some(body) = body {
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *res.body_mut() = axum::body::Body::from(body);
        }
        res
    }
}

/// Why no downstream token (or Graph answer) could be had.
///
/// Messages never contain a token, a secret, or Entra's `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OboError {
    /// The caller is an application (app-only token): there is no user to act for.
    #[error("on-behalf-of needs a delegated user token; app-only callers cannot be exchanged")]
    AppOnly,
    /// No downstream API of that name is configured.
    #[error("no downstream api named `{0}` is configured")]
    UnknownApi(String),
    /// The guard has no `[obo]` configuration, or the request has no bearer token.
    #[error("on-behalf-of is not configured for this route")]
    NotConfigured,
    /// Entra refused the caller's token as an assertion (expired, wrong audience, …).
    #[error("the caller's token was refused for on-behalf-of ({code})")]
    InvalidAssertion {
        /// The AADSTS code, e.g. `AADSTS500133`.
        code: String,
    },
    /// The downstream API needs more from the user (MFA, Conditional Access).
    #[error("the downstream api needs a stronger sign-in (claims challenge)")]
    ClaimsChallenge {
        /// Entra's `claims` JSON (empty when Entra sent none).
        claims: String,
    },
    /// Nobody consented to this application calling the downstream API.
    #[error(
        "consent is missing for a downstream api; an administrator can grant it at `{consent_url}`"
    )]
    ConsentRequired {
        /// The v2 admin-consent URL for this application and resource.
        consent_url: String,
    },
    /// Entra refused the middle tier's own credential.
    #[error("entra refused the client credential ({code})")]
    InvalidClient {
        /// The AADSTS code.
        code: String,
    },
    /// Entra or Graph throttled the request.
    #[error("throttled; retry after {} s", retry_after.as_secs())]
    Throttled {
        /// How long to wait (`Retry-After`).
        retry_after: Duration,
    },
    /// Entra or Graph did not answer usefully in time (after retries).
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// Entra refused the request for another reason (a configuration problem).
    #[error("entra refused the request: `{error}` ({code})")]
    Refused {
        /// Entra's `error`.
        error: String,
        /// The AADSTS code.
        code: String,
    },
    /// Graph answered with an error status.
    #[error("graph answered {status}")]
    Graph {
        /// The HTTP status.
        status: u16,
    },
    /// The client credential could not be prepared (unreadable file, bad key).
    #[error("client credential: {0}")]
    Credential(String),
    /// The shared (Redis) token cache did not answer in time: no token is exchanged around
    /// it, the request answers `503` with `Retry-After`.
    #[error("the shared on-behalf-of token cache is unreachable")]
    SharedCacheUnavailable,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rejection_kind_has_one_distinct_name() {
        let mut names: Vec<&str> = super::RejectionKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::RejectionKind::ALL.len());
    }

    use super::*;

    #[test]
    fn an_invalid_token_challenge_says_why_and_the_axum_body_repeats_it() {
        let base = Challenge::invalid_token("https://x/.well-known/oauth-protected-resource", "");
        let r = Rejection::invalid_token(&base, &TokenError::Expired);
        assert_eq!(r.kind(), RejectionKind::InvalidToken);
        assert_eq!(r.description(), Some("the token has expired"));
        assert_eq!(
            r.www_authenticate().unwrap(),
            "Bearer error=\"invalid_token\", resource_metadata=\"https://x/.well-known/oauth-protected-resource\", error_description=\"the token has expired\""
        );
        let res = axum::response::IntoResponse::into_response(r);
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["content-type"], "application/json");
    }

    #[test]
    fn descriptions_are_valid_in_a_challenge() {
        for e in [
            TokenError::Missing,
            TokenError::TooLarge { max: 16 },
            TokenError::Malformed,
            TokenError::UnsupportedAlgorithm,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::WrongIssuer,
            TokenError::KeyIssuerMismatch,
            TokenError::TenantNotAllowed,
            TokenError::VersionNotAccepted,
            TokenError::MissingClaim("tid"),
            TokenError::NoScopeOrRole,
            TokenError::SessionEnded,
        ] {
            let d = e.description();
            // RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E.
            assert!(
                d.bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
                "{d}"
            );
        }
    }
}
