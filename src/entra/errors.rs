//! Entra's error answers: the token endpoint's error body, and what its `error`,
//! `suberror`, `claims` and AADSTS codes mean. Microsoft's guidance: branch on `error` and
//! `claims`; the codes only refine.

use serde::Deserialize;

/// AADSTS65001 and the like: nobody consented to the app calling the resource.
const CONSENT_CODES: [u64; 3] = [65_001, 90_094, 90_095];
/// AADSTS50076 and AADSTS50078: multi-factor authentication is required.
const MFA_CODES: [u64; 2] = [50_076, 50_078];

/// The error body of Entra's token endpoint.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EntraError {
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_codes: Vec<u64>,
    pub(crate) suberror: Option<String>,
    pub(crate) claims: Option<String>,
}

/// What a refused token request means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal<'a> {
    /// `429`: throttled.
    Throttled,
    /// A `5xx` or `temporarily_unavailable`: worth another try.
    Unavailable,
    /// Nobody consented to the app calling the resource (`consent_required`, AADSTS65001,
    /// AADSTS90094, AADSTS90095).
    ConsentRequired,
    /// The user must sign in again with more (MFA, Conditional Access): Entra's `claims`,
    /// empty when it sent none.
    ClaimsChallenge(String),
    /// The grant (the assertion, a code) was refused: expired, wrong audience, ….
    InvalidGrant,
    /// The app's own credential was refused.
    InvalidClient,
    /// Anything else: Entra's `error`.
    Other(&'a str),
}

impl EntraError {
    /// The first AADSTS code (`AADSTS500133`), or empty when Entra sent none.
    pub(crate) fn code(&self) -> String {
        self.error_codes
            .first()
            .map(|c| format!("AADSTS{c}"))
            .unwrap_or_default()
    }

    /// What this answer, with HTTP `status`, means.
    pub(crate) fn refusal(&self, status: u16) -> Refusal<'_> {
        if status == 429 {
            return Refusal::Throttled;
        }
        if status >= 500 || self.error == "temporarily_unavailable" {
            return Refusal::Unavailable;
        }
        let has = |codes: &[u64]| self.error_codes.iter().any(|c| codes.contains(c));
        let claims = self.claims.clone().filter(|c| !c.is_empty());
        match self.error.as_str() {
            "invalid_grant" | "interaction_required"
                if self.suberror.as_deref() == Some("consent_required") || has(&CONSENT_CODES) =>
            {
                Refusal::ConsentRequired
            }
            "interaction_required" => Refusal::ClaimsChallenge(claims.unwrap_or_default()),
            "invalid_grant" if claims.is_some() => {
                Refusal::ClaimsChallenge(claims.unwrap_or_default())
            }
            "invalid_grant" if has(&MFA_CODES) => Refusal::ClaimsChallenge(String::new()),
            "invalid_grant" => Refusal::InvalidGrant,
            "invalid_client" | "unauthorized_client" => Refusal::InvalidClient,
            other => Refusal::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> EntraError {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn refusals_follow_error_then_codes() {
        let consent = body(json!({"error": "interaction_required", "error_codes": [90094]}));
        assert_eq!(consent.refusal(400), Refusal::ConsentRequired);
        let mfa = body(json!({"error": "invalid_grant", "error_codes": [50076]}));
        assert_eq!(mfa.refusal(400), Refusal::ClaimsChallenge(String::new()));
        assert_eq!(mfa.code(), "AADSTS50076");
        let busy = body(json!({"error": "temporarily_unavailable"}));
        assert_eq!(busy.refusal(400), Refusal::Unavailable);
        assert_eq!(EntraError::default().refusal(429), Refusal::Throttled);
        assert_eq!(EntraError::default().code(), "");
        let scope = body(json!({"error": "invalid_scope", "error_codes": [70011]}));
        assert_eq!(scope.refusal(400), Refusal::Other("invalid_scope"));
    }
}
