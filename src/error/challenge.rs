//! [`Challenge`]: the one builder of `WWW-Authenticate` values.

use http::header::HeaderValue;

/// A `WWW-Authenticate: Bearer` challenge: the one builder of every challenge idguard sends
/// (RFC 6750 §3, RFC 9728 §5.1 `resource_metadata`, RFC 9470 step-up, Entra's claims
/// challenge).
///
/// The named constructors fix each kind's parameters and their order (clients and tests
/// read them in that order). Every value is sent as an RFC 9110 quoted-string: `"` and `\`
/// are backslash-escaped, and a control character (other than a tab) cannot be sent.
///
/// # Fail-closed
///
/// [`header`](Self::header) refuses a value it cannot send ([`ChallengeError`]) rather than
/// sending something else. [`header_or_minimal`](Self::header_or_minimal) is how callers
/// handle that: the request is still refused with the same status, and the challenge
/// shrinks to `Bearer` with only its `error` code (or bare `Bearer` when it has none),
/// logged at `error` naming the parameter, never its value. RFC 9110 §11.6.1 requires a
/// challenge on every `401`, and RFC 6750 §3 allows one with any subset of its parameters,
/// so the minimal challenge is still a valid one; what the client loses is only the hint
/// (`resource_metadata`, `scope`, …) that could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    params: Vec<(Param, String)>,
}

/// The auth-params idguard sends, each named once here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Realm,
    Error,
    ErrorDescription,
    Scope,
    ResourceMetadata,
    ConsentUri,
    AuthorizationUri,
    Claims,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::Realm => "realm",
            Param::Error => "error",
            Param::ErrorDescription => "error_description",
            Param::Scope => "scope",
            Param::ResourceMetadata => "resource_metadata",
            Param::ConsentUri => "consent_uri",
            Param::AuthorizationUri => "authorization_uri",
            Param::Claims => "claims",
        }
    }
}

/// A challenge parameter whose value cannot be sent in a header (a control character).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the `{param}` of a WWW-Authenticate challenge cannot be sent (control character)")]
pub(crate) struct ChallengeError {
    param: &'static str,
}

impl Challenge {
    fn bearer() -> Self {
        Self { params: Vec::new() }
    }

    fn param(mut self, param: Param, value: impl Into<String>) -> Self {
        self.params.push((param, value.into()));
        self
    }

    /// `scope` unless there is none to advertise.
    fn scope(self, scope: &str) -> Self {
        if scope.is_empty() {
            self
        } else {
            self.param(Param::Scope, scope)
        }
    }

    /// No token (RFC 6750 §3.1: no `error`): `Bearer resource_metadata="…", scope="…"`.
    pub(crate) fn missing_token(resource_metadata: &str, scope: &str) -> Self {
        Self::bearer()
            .param(Param::ResourceMetadata, resource_metadata)
            .scope(scope)
    }

    /// An unacceptable token: `Bearer error="invalid_token", resource_metadata="…",
    /// scope="…"` (no `scope` when `scope` is empty); see
    /// [`with_description`](Self::with_description).
    pub(crate) fn invalid_token(resource_metadata: &str, scope: &str) -> Self {
        Self::bearer()
            .param(Param::Error, "invalid_token")
            .param(Param::ResourceMetadata, resource_metadata)
            .scope(scope)
    }

    /// A valid token without a required scope or role: `Bearer error="insufficient_scope",
    /// scope="…", resource_metadata="…"`.
    pub(crate) fn insufficient_scope(resource_metadata: &str, scope: &str) -> Self {
        Self::bearer()
            .param(Param::Error, "insufficient_scope")
            .scope(scope)
            .param(Param::ResourceMetadata, resource_metadata)
    }

    /// A policy asks for multi-factor authentication (RFC 9470):
    /// `Bearer error="insufficient_user_authentication", error_description="…",
    /// resource_metadata="…"`.
    pub(crate) fn step_up(resource_metadata: &str) -> Self {
        Self::bearer()
            .param(Param::Error, "insufficient_user_authentication")
            .param(
                Param::ErrorDescription,
                "multi-factor authentication is required",
            )
            .param(Param::ResourceMetadata, resource_metadata)
    }

    /// A downstream API needs a stronger sign-in, for a client that cannot answer Entra's
    /// claims challenge: `Bearer error="invalid_token", error_description="…",
    /// resource_metadata="…"`.
    pub(crate) fn downstream_step_up(resource_metadata: &str) -> Self {
        Self::bearer()
            .param(Param::Error, "invalid_token")
            .param(
                Param::ErrorDescription,
                "a downstream api requires a stronger sign-in (step-up, e.g. multi-factor authentication): sign in again",
            )
            .param(Param::ResourceMetadata, resource_metadata)
    }

    /// The upstream's authorization server refused the caller's token in a token exchange:
    /// `Bearer error="invalid_token", error_description="…"`.
    pub(crate) fn upstream_refused_token() -> Self {
        Self::bearer().param(Param::Error, "invalid_token").param(
            Param::ErrorDescription,
            "the upstream's authorization server refused the token: sign in again",
        )
    }

    /// Entra's claims challenge, for clients that declared `cp1`: `Bearer realm="",
    /// authorization_uri="…", error="insufficient_claims", claims="…"` (`claims` already
    /// base64-encoded).
    pub(crate) fn insufficient_claims(authorization_uri: &str, claims: &str) -> Self {
        Self::bearer()
            .param(Param::Realm, "")
            .param(Param::AuthorizationUri, authorization_uri)
            .param(Param::Error, "insufficient_claims")
            .param(Param::Claims, claims)
    }

    /// A downstream API needs admin consent: `Bearer error="consent_required",
    /// error_description="…", consent_uri="…", resource_metadata="…"`.
    pub(crate) fn consent_required(consent_uri: &str, resource_metadata: &str) -> Self {
        Self::bearer()
            .param(Param::Error, "consent_required")
            .param(
                Param::ErrorDescription,
                "an administrator must grant this application consent to call a downstream api",
            )
            .param(Param::ConsentUri, consent_uri)
            .param(Param::ResourceMetadata, resource_metadata)
    }

    /// The same challenge with an `error_description` after the other parameters.
    pub(crate) fn with_description(self, description: &str) -> Self {
        self.param(Param::ErrorDescription, description)
    }

    /// The header value.
    ///
    /// # Errors
    ///
    /// [`ChallengeError`] naming the first parameter whose value has a control character.
    pub(crate) fn header(&self) -> Result<HeaderValue, ChallengeError> {
        let mut out = String::from("Bearer");
        let mut separator = " ";
        for (param, value) in &self.params {
            out.push_str(separator);
            separator = ", ";
            out.push_str(param.name());
            out.push_str("=\"");
            push_quoted(&mut out, value).ok_or(ChallengeError {
                param: param.name(),
            })?;
            out.push('"');
        }
        HeaderValue::try_from(out).map_err(|_| ChallengeError { param: "value" })
    }

    /// The header value, or the minimal challenge when a value cannot be sent (see
    /// [Fail-closed](Self#fail-closed)).
    pub(crate) fn header_or_minimal(&self) -> HeaderValue {
        match self.header() {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(target: "idguard::rejection", "{e}: answering with the minimal challenge");
                let code = Self {
                    params: self
                        .params
                        .iter()
                        .filter(|(p, _)| *p == Param::Error)
                        .cloned()
                        .collect(),
                };
                code.header()
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
            }
        }
    }
}

/// Appends `value` as the inside of an RFC 9110 quoted-string (`qdtext` and `quoted-pair`):
/// `"` and `\` escaped. `None` for a control character other than a tab.
fn push_quoted(out: &mut String, value: &str) -> Option<()> {
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::error::{Rejection, TokenError};

    /// The header of `c` as a string.
    fn render(c: &Challenge) -> String {
        c.header().unwrap().to_str().unwrap().to_owned()
    }

    const RM: &str = "https://mcp.contoso.com/.well-known/oauth-protected-resource/mcp";

    #[test]
    fn each_challenge_kind_in_its_order() {
        assert_eq!(
            render(&Challenge::missing_token(RM, "api://x/mcp.tools")),
            format!("Bearer resource_metadata=\"{RM}\", scope=\"api://x/mcp.tools\"")
        );
        assert_eq!(
            render(&Challenge::missing_token(RM, "")),
            format!("Bearer resource_metadata=\"{RM}\"")
        );
        assert_eq!(
            render(&Challenge::invalid_token(RM, "a b")),
            format!("Bearer error=\"invalid_token\", resource_metadata=\"{RM}\", scope=\"a b\"")
        );
        assert_eq!(
            render(&Challenge::invalid_token(RM, "").with_description("the token has expired")),
            format!(
                "Bearer error=\"invalid_token\", resource_metadata=\"{RM}\", error_description=\"the token has expired\""
            )
        );
        assert_eq!(
            render(&Challenge::insufficient_scope(RM, "api://x/admin")),
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"api://x/admin\", resource_metadata=\"{RM}\""
            )
        );
        assert_eq!(
            render(&Challenge::step_up(RM)),
            format!(
                "Bearer error=\"insufficient_user_authentication\", error_description=\"multi-factor authentication is required\", resource_metadata=\"{RM}\""
            )
        );
        assert_eq!(
            render(&Challenge::downstream_step_up(RM)),
            format!(
                "Bearer error=\"invalid_token\", error_description=\"a downstream api requires a stronger sign-in (step-up, e.g. multi-factor authentication): sign in again\", resource_metadata=\"{RM}\""
            )
        );
        assert_eq!(
            render(&Challenge::insufficient_claims(
                "https://login/t/oauth2/v2.0/authorize",
                "e30="
            )),
            "Bearer realm=\"\", authorization_uri=\"https://login/t/oauth2/v2.0/authorize\", error=\"insufficient_claims\", claims=\"e30=\""
        );
        assert_eq!(
            render(&Challenge::consent_required(
                "https://login/t/v2.0/adminconsent?a=b",
                RM
            )),
            format!(
                "Bearer error=\"consent_required\", error_description=\"an administrator must grant this application consent to call a downstream api\", consent_uri=\"https://login/t/v2.0/adminconsent?a=b\", resource_metadata=\"{RM}\""
            )
        );
    }

    #[test]
    fn values_are_escaped_quoted_strings() {
        let c = Challenge::invalid_token(r#"https://x/a"b\c"#, "")
            .with_description(r#"say "hi" \ bye"#);
        assert_eq!(
            render(&c),
            r#"Bearer error="invalid_token", resource_metadata="https://x/a\"b\\c", error_description="say \"hi\" \\ bye""#
        );
        // A tab is qdtext; other characters (obs-text) pass as they are.
        assert_eq!(
            Challenge::missing_token("https://x/\tü", "")
                .header()
                .unwrap()
                .as_bytes(),
            "Bearer resource_metadata=\"https://x/\tü\"".as_bytes()
        );
    }

    #[test]
    fn a_control_character_is_refused_and_the_challenge_shrinks_to_its_code() {
        for bad in [
            "https://x/\r\nSet-Cookie: a=b",
            "https://x/\0",
            "https://x/\u{7f}",
            "https://x/\u{85}",
        ] {
            let c = Challenge::invalid_token(bad, "api://x/s");
            assert_eq!(
                c.header(),
                Err(ChallengeError {
                    param: "resource_metadata"
                })
            );
            assert_eq!(c.header_or_minimal(), "Bearer error=\"invalid_token\"");
        }
        assert_eq!(
            Challenge::missing_token("https://x/\n", "").header_or_minimal(),
            "Bearer"
        );
        let scope = Challenge::insufficient_scope("https://x/m", "a\u{1b}b");
        assert_eq!(scope.header(), Err(ChallengeError { param: "scope" }));
        assert_eq!(
            scope.header_or_minimal(),
            "Bearer error=\"insufficient_scope\""
        );
        let claims = Challenge::insufficient_claims("https://login/\r", "e30=");
        assert_eq!(
            claims.header_or_minimal(),
            "Bearer error=\"insufficient_claims\""
        );
        // An invalid-token rejection still answers 401 with a challenge.
        let r = Rejection::invalid_token(
            &Challenge::invalid_token("https://x/\n", ""),
            &TokenError::Expired,
        );
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.www_authenticate().unwrap(),
            "Bearer error=\"invalid_token\""
        );
    }
}
