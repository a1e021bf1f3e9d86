//! On-behalf-of: downstream tokens for the current caller, a moka cache, Microsoft Graph.
//!
//! [`OboClient`] exchanges the caller's incoming access token (the *assertion*) for a token
//! of a named downstream API at `{authority}/{tid}/oauth2/v2.0/token` (the caller's own
//! tenant, never `common`), with the jwt-bearer grant and the middle tier's
//! [`ClientCredential`] (secret, certificate or federated assertion). App-only callers are
//! refused: on-behalf-of needs a user.
//!
//! Tokens are cached per (assertion digest, sorted scopes, client id, tenant), never the
//! raw token, until the earlier of the downstream token's and the incoming token's expiry
//! minus a skew; concurrent misses for one key make one request. Entra's failures become
//! [`OboError`]s, and [`OboClient::rejection`] turns those into the HTTP answer through
//! the one [`Rejection`] mapping:
//!
//! | Entra says | answer |
//! |---|---|
//! | `interaction_required` / `invalid_grant` with `claims` | `401`: Entra's `insufficient_claims` challenge when the client declared `cp1`, else `invalid_token` saying a step-up is needed |
//! | consent missing (AADSTS65001) | `403` carrying the admin-consent URL |
//! | the assertion expired or was refused | `401 invalid_token` |
//! | `429` | `503` with Entra's `Retry-After` |
//! | `5xx`, timeouts | retried with backoff, then `503` |
//! | the client credential refused, bad scopes | `500` (logged at `error`) |
//!
//! In a handler, [`Obo`] does it in one line:
//!
//! ```rust,ignore
//! async fn profile(obo: idguard::obo::Obo) -> Result<String, idguard::Rejection> {
//!     let token = obo.token_for("graph").await?;
//!     // call Graph with `Authorization: Bearer {token.expose_secret()}`
//!     Ok(token.scope().to_owned())
//! }
//! ```

mod cache;
mod client;
pub(crate) mod config;
mod credential;
mod extract;
mod graph;
#[cfg(feature = "redis")]
mod shared;

use std::time::Duration;

pub use crate::error::OboError;
pub use crate::setting::Secret;
pub use crate::token::BearerToken;
pub(crate) use client::OboSettings;
pub use client::{OboClient, OboStats, OboToken};
pub(crate) use client::{backoff, retry_after};
pub(crate) use credential::ClientAuth;
pub use credential::ClientCredential;
pub use extract::Obo;
#[cfg(feature = "redis")]
pub use shared::{DEFAULT_SHARED_LOCK_TTL, SharedTokenCache};

use crate::entra::{EntraError, Refusal, authorize_endpoint};
use crate::error::{Challenge, Rejection, RejectionKind};
use crate::principal::Principal;

/// Microsoft Graph's base URL.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// How long before its expiry a cached downstream token stops being served.
pub const DEFAULT_OBO_SKEW: Duration = Duration::from_secs(5 * 60);
/// How many downstream tokens are cached.
pub const DEFAULT_OBO_CACHE_CAPACITY: u64 = 10_000;
/// The whole budget of one exchange, retries included.
pub const DEFAULT_OBO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a `5xx` or network failure is retried.
pub const DEFAULT_OBO_MAX_RETRIES: u32 = 2;
/// The `Retry-After` of the `503` answered while the shared token cache is unreachable.
pub const SHARED_CACHE_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The API name the Graph helpers use (`[obo.apis] graph = [...]`).
pub const GRAPH_API: &str = "graph";

/// What to do with a failed token request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Transient: try again (bounded).
    Retry,
    /// Final.
    Fail(OboError),
}

/// Classifies an Entra failure into what to do (see [`EntraError::refusal`]).
/// `consent_url` is built only when consent is what is missing.
pub(crate) fn classify(
    status: u16,
    body: &EntraError,
    retry_after: Option<Duration>,
    consent_url: impl FnOnce() -> String,
) -> Outcome {
    let code = body.code();
    Outcome::Fail(match body.refusal(status) {
        Refusal::Throttled => OboError::Throttled {
            retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
        },
        Refusal::Unavailable => return Outcome::Retry,
        Refusal::ConsentRequired => OboError::ConsentRequired {
            consent_url: consent_url(),
        },
        Refusal::ClaimsChallenge(claims) => OboError::ClaimsChallenge { claims },
        Refusal::InvalidGrant => OboError::InvalidAssertion { code },
        Refusal::InvalidClient => OboError::InvalidClient { code },
        Refusal::Other(error) => OboError::Refused {
            error: error.to_owned(),
            code,
        },
    })
}

/// The resource of a scope list: what precedes the last `/` of the first scope
/// (`https://graph.microsoft.com/User.Read` → `https://graph.microsoft.com`); a bare scope
/// means Graph.
pub(crate) fn resource_of(scopes: &[String]) -> String {
    scopes
        .iter()
        .find(|s| !matches!(s.as_str(), "openid" | "profile" | "offline_access"))
        .and_then(|s| s.rsplit_once('/').map(|(r, _)| r.to_owned()))
        .unwrap_or_else(|| DEFAULT_GRAPH_URL.to_owned())
}

/// Entra's claims challenge (`insufficient_claims`), for clients that declared `cp1`.
pub(crate) fn claims_challenge(authority: &str, tid: &str, claims: &str) -> Challenge {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(claims.as_bytes());
    Challenge::insufficient_claims(&authorize_endpoint(authority, tid), &b64)
}

/// The answer for an [`OboError`] (DESIGN.md §4), for `principal`.
pub(crate) fn rejection_for(
    err: &OboError,
    principal: &Principal,
    authority: &str,
    resource_metadata_url: &str,
) -> Rejection {
    match err {
        OboError::ClaimsChallenge { claims } => {
            tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), oid = principal.object_id(), "on-behalf-of needs a claims challenge");
            let challenge = if principal.handles_claims_challenges() && !claims.is_empty() {
                claims_challenge(authority, principal.tenant_id(), claims)
            } else {
                Challenge::downstream_step_up(resource_metadata_url)
            };
            Rejection::new(
                RejectionKind::ClaimsChallenge,
                Some(challenge.header_or_minimal()),
            )
        }
        OboError::ConsentRequired { consent_url } => {
            tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), "on-behalf-of needs admin consent");
            Rejection::new(
                RejectionKind::ConsentRequired,
                Some(
                    Challenge::consent_required(consent_url, resource_metadata_url)
                        .header_or_minimal(),
                ),
            )
        }
        OboError::InvalidAssertion { .. } => {
            tracing::debug!(target: "idguard::rejection", reason = %err, "on-behalf-of assertion refused");
            Rejection::new(
                RejectionKind::InvalidToken,
                Some(Challenge::invalid_token(resource_metadata_url, "").header_or_minimal()),
            )
        }
        OboError::AppOnly => {
            tracing::debug!(target: "idguard::rejection", reason = %err, "on-behalf-of refused");
            Rejection::new(RejectionKind::Forbidden, None)
        }
        OboError::Throttled { retry_after } => {
            tracing::warn!(target: "idguard::rejection", reason = %err, "on-behalf-of throttled");
            Rejection::new(RejectionKind::Throttled, None)
                .with_retry_after(retry_after.as_secs().max(1))
        }
        OboError::SharedCacheUnavailable => {
            tracing::error!(target: "idguard::rejection", reason = %err, "on-behalf-of answers 503 while the shared token cache is unreachable");
            Rejection::new(RejectionKind::Unavailable, None)
                .with_retry_after(SHARED_CACHE_RETRY_AFTER.as_secs())
        }
        OboError::Unavailable(_) | OboError::Graph { .. } => {
            tracing::error!(target: "idguard::rejection", reason = %err, "on-behalf-of failed");
            Rejection::new(RejectionKind::Unavailable, None)
        }
        OboError::UnknownApi(_)
        | OboError::NotConfigured
        | OboError::InvalidClient { .. }
        | OboError::Refused { .. }
        | OboError::Credential(_) => {
            tracing::error!(target: "idguard::rejection", reason = %err, "on-behalf-of failed");
            Rejection::new(RejectionKind::Internal, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::admin_consent_url;
    use serde_json::json;

    fn body(v: serde_json::Value) -> EntraError {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn classification_follows_error_then_codes() {
        let url = || "u".to_owned();
        let consent = body(
            json!({"error": "invalid_grant", "error_codes": [65001], "suberror": "consent_required"}),
        );
        assert_eq!(
            classify(400, &consent, None, url),
            Outcome::Fail(OboError::ConsentRequired {
                consent_url: "u".into()
            })
        );
        let mfa = body(
            json!({"error": "interaction_required", "error_codes": [50079], "claims": "{\"a\":1}"}),
        );
        assert_eq!(
            classify(400, &mfa, None, url),
            Outcome::Fail(OboError::ClaimsChallenge {
                claims: "{\"a\":1}".into()
            })
        );
        let expired = body(json!({"error": "invalid_grant", "error_codes": [500133]}));
        assert_eq!(
            classify(400, &expired, None, url),
            Outcome::Fail(OboError::InvalidAssertion {
                code: "AADSTS500133".into()
            })
        );
        let client = body(json!({"error": "invalid_client", "error_codes": [7000215]}));
        assert!(matches!(
            classify(401, &client, None, url),
            Outcome::Fail(OboError::InvalidClient { .. })
        ));
        assert_eq!(
            classify(
                429,
                &EntraError::default(),
                Some(Duration::from_secs(7)),
                url
            ),
            Outcome::Fail(OboError::Throttled {
                retry_after: Duration::from_secs(7)
            })
        );
        assert_eq!(
            classify(503, &EntraError::default(), None, url),
            Outcome::Retry
        );
        let scope = body(json!({"error": "invalid_scope", "error_codes": [70011]}));
        assert!(matches!(
            classify(400, &scope, None, url),
            Outcome::Fail(OboError::Refused { .. })
        ));
    }

    #[test]
    fn consent_url_is_v2_with_default_scope() {
        assert_eq!(
            admin_consent_url(
                "https://login.microsoftonline.com",
                "tid",
                "cid",
                "https://graph.microsoft.com"
            ),
            "https://login.microsoftonline.com/tid/v2.0/adminconsent?client_id=cid&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        );
        assert_eq!(
            resource_of(&["https://graph.microsoft.com/User.Read".into()]),
            "https://graph.microsoft.com"
        );
        assert_eq!(resource_of(&["User.Read".into()]), DEFAULT_GRAPH_URL);
    }

    #[test]
    fn claims_challenge_is_base64_of_the_claims() {
        let h = claims_challenge(
            "https://login.microsoftonline.com",
            "tid",
            "{\"access_token\":{\"acrs\":{\"essential\":true,\"value\":\"cp1\"}}}",
        )
        .header()
        .unwrap();
        assert_eq!(
            h.to_str().unwrap(),
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/tid/oauth2/v2.0/authorize\", error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiY3AxIn19fQ==\""
        );
    }

    #[test]
    fn claims_challenge_only_for_cp1_clients() {
        let claims = |cc: serde_json::Value| {
            Principal::from_unvalidated_claims(
                &json!({"tid": "t", "oid": "o", "sub": "s", "scp": "x", "xms_cc": cc}),
            )
            .unwrap()
        };
        let err = OboError::ClaimsChallenge {
            claims: "{}".into(),
        };
        let cp1 = rejection_for(&err, &claims(json!(["cp1"])), "https://a", "https://r/m");
        assert_eq!(cp1.status(), 401);
        assert!(
            cp1.www_authenticate()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("insufficient_claims")
        );
        let plain = rejection_for(&err, &claims(json!([])), "https://a", "https://r/m");
        let h = plain
            .www_authenticate()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            h.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{h}"
        );
        assert!(h.contains("step-up"), "{h}");
    }
}
