//! `GET /{tenant}/oauth2/v2.0/authorize`: the tenant, client and redirect URI are checked
//! first (their errors are Entra's error page), then the rest of the request (its errors go
//! back to the client); then the user is signed in (`login_hint`, the default user, or the
//! user picker), the per-user failure applies, and a code bound to the request is issued.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;

use super::claims::ClaimsRequest;
use super::find_user;
use super::page::{Back, error_page, user_picker};
use super::pkce::{self, ChallengeError};
use super::scopes::{Scopes, invalid_target, parse_scopes, resource_matches};
use super::store::{CODE_LIFETIME, Code, Session};
use crate::obo::unix_now;
use crate::shared::Shared;
use crate::{DevEndpoint, DevSignInFailure};

/// The authorize endpoint.
pub(super) async fn authorize(
    State(s): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.count(DevEndpoint::Authorize);
    let segment = raw.to_ascii_lowercase();
    let multi = matches!(segment.as_str(), "organizations" | "common");
    if !multi && !s.knows_tenant(&segment) {
        return error_page(
            90_002,
            &format!(
                "Tenant '{raw}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let param = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = param("client_id") else {
        return error_page(
            900_144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if client_id != s.api_client_id {
        return error_page(
            700_016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{raw}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let Some(redirect_uri) = param("redirect_uri") else {
        return error_page(900_971, "No reply address provided.");
    };
    if !s.sign_in.redirect_allowed(redirect_uri) {
        return error_page(
            50_011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal."
            ),
        );
    }
    // From here on, errors go back to the client.
    let back = Back {
        redirect_uri,
        state: param("state"),
    };
    let request = match check_request(&s, &raw, &param) {
        Ok(r) => r,
        Err((error, code, text)) => return back.error(error, code, &text),
    };
    let prompt = param("prompt").unwrap_or_default();
    let hint = param("login_hint");
    let default_user = s.sign_in.default_user();
    let Some(user) = hint
        .or(default_user.as_deref())
        .and_then(|k| find_user(&s, k))
    else {
        if prompt == "none" {
            return back.error(
                "login_required",
                50_058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return user_picker(&s, &raw, &q, hint);
    };
    let tid = if multi {
        user.tenant_id.clone()
    } else {
        segment.clone()
    };
    if user.tenant_id != tid {
        return error_page(
            50_020,
            &format!(
                "User account '{}' from identity provider 'https://sts.windows.net/{}/' does not exist in tenant '{raw}' and cannot access the application '{client_id}' in that tenant.",
                user.upn, user.tenant_id
            ),
        );
    }
    match s.sign_in.failure(&user.object_id) {
        Some(DevSignInFailure::AccessDenied) => {
            return back.error(
                "access_denied",
                65_004,
                "User declined to consent to access the app.",
            );
        }
        Some(DevSignInFailure::ConsentRequired) if prompt == "none" => {
            return back.error(
                "consent_required",
                65_001,
                &format!(
                    "The user or administrator has not consented to use the application with ID '{client_id}'. Send an interactive authorization request for this user and resource."
                ),
            );
        }
        Some(DevSignInFailure::MfaRequired)
            if prompt == "none" && !request.claims.satisfies_mfa() =>
        {
            return back.error(
                "interaction_required",
                50_079,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multifactor authentication.",
            );
        }
        _ => {}
    }
    let now = unix_now();
    let code = s.sign_in.issue_code(
        Code {
            session: Session {
                client_id: client_id.to_owned(),
                user_oid: user.object_id.clone(),
                tid,
                scopes: request.scopes,
                claims: request.claims,
            },
            redirect_uri: redirect_uri.to_owned(),
            challenge: request.challenge,
            segment,
            nonce: param("nonce").map(str::to_owned),
            consented: prompt == "consent",
            expires_at: now + CODE_LIFETIME,
            redeemed: false,
        },
        now,
    );
    let session_state = uuid::Uuid::new_v4().to_string();
    back.redirect(&[("code", &code), ("session_state", &session_state)])
}

/// The parts of an authorize request checked after the redirect URI is trusted.
#[derive(Debug)]
struct Request {
    scopes: Scopes,
    challenge: Option<String>,
    claims: ClaimsRequest,
}

/// Checks `response_type`, `response_mode`, `scope`, PKCE, `resource` and `claims`;
/// `Err` is (`error`, AADSTS code, text) for the error redirect.
fn check_request<'q>(
    s: &Shared,
    tenant: &str,
    param: &impl Fn(&str) -> Option<&'q str>,
) -> Result<Request, (&'static str, u32, String)> {
    let missing = |name: &str| {
        (
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    match param("response_type") {
        None => return Err(missing("response_type")),
        Some("code") => {}
        Some(_) => {
            return Err((
                "unsupported_response_type",
                70_005,
                "The application requested an unsupported response type. The dev emulator issues only response_type=code.".to_owned(),
            ));
        }
    }
    if param("response_mode").is_some_and(|m| m != "query") {
        return Err((
            "invalid_request",
            70_007,
            "The application requested an unsupported value of 'response_mode'. The dev emulator answers only response_mode=query.".to_owned(),
        ));
    }
    let raw_scope = param("scope").ok_or_else(|| missing("scope"))?;
    let scopes = parse_scopes(s, raw_scope).map_err(|e| e.describe(tenant))?;
    if scopes.oidc.is_empty() && scopes.resources() == 0 {
        return Err((
            "invalid_scope",
            70_011,
            "The provided value for the input parameter 'scope' is not valid.".to_owned(),
        ));
    }
    let challenge = pkce::challenge(param("code_challenge"), param("code_challenge_method"))
        .map_err(|e| match e {
            ChallengeError::Missing => missing("code_challenge"),
            ChallengeError::Method => (
                "invalid_request",
                50_149,
                "Invalid Code_Challenge_method parameter. The dev emulator accepts only S256."
                    .to_owned(),
            ),
            ChallengeError::Size => (
                "invalid_request",
                501_491,
                "Invalid size of Code_Challenge parameter.".to_owned(),
            ),
        })?;
    if let Some(resource) = param("resource")
        && !resource_matches(s, resource, &scopes)
    {
        return Err(invalid_target());
    }
    let claims = match param("claims") {
        None => ClaimsRequest::default(),
        Some(raw) => ClaimsRequest::parse(raw).ok_or((
            "invalid_request",
            90_100,
            "claims parameter is empty or not valid.".to_owned(),
        ))?,
    };
    Ok(Request {
        scopes,
        challenge,
        claims,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::builder::test_shared;
    use crate::{DEV_API_CLIENT_ID, DevEntra, MFA_CLAIMS};

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn check(pairs: &[(&str, &str)]) -> Result<Request, (&'static str, u32, String)> {
        let s = test_shared(DevEntra::builder());
        let query: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
        check_request(&s, "contoso", &param)
    }

    fn api_scope() -> String {
        format!("openid api://{DEV_API_CLIENT_ID}/mcp.tools")
    }

    /// (`error`, code) of the refusal of `pairs`.
    fn refusal(pairs: &[(&str, &str)]) -> (&'static str, u32) {
        let (error, code, _) = check(pairs).unwrap_err();
        (error, code)
    }

    #[test]
    fn a_code_request_with_s256_pkce_passes() {
        let scope = api_scope();
        let request = check(&[
            ("response_type", "code"),
            ("response_mode", "query"),
            ("scope", &scope),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("resource", &format!("api://{DEV_API_CLIENT_ID}")),
            ("claims", MFA_CLAIMS),
        ])
        .unwrap();
        assert_eq!(request.challenge.as_deref(), Some(CHALLENGE));
        assert_eq!(request.scopes.api, ["mcp.tools"]);
        assert!(request.claims.satisfies_mfa());
        let plain = check(&[("response_type", "code"), ("scope", "openid")]).unwrap();
        assert!(plain.challenge.is_none(), "PKCE is optional");
    }

    #[test]
    fn response_type_and_mode_are_code_and_query() {
        assert_eq!(
            refusal(&[("scope", "openid")]),
            ("invalid_request", 900_144)
        );
        assert_eq!(
            refusal(&[("response_type", "token"), ("scope", "openid")]),
            ("unsupported_response_type", 70_005)
        );
        assert_eq!(
            refusal(&[
                ("response_type", "code"),
                ("response_mode", "fragment"),
                ("scope", "openid"),
            ]),
            ("invalid_request", 70_007)
        );
    }

    #[test]
    fn scope_is_required_and_must_name_something() {
        assert_eq!(
            refusal(&[("response_type", "code")]),
            ("invalid_request", 900_144)
        );
        assert_eq!(
            refusal(&[("response_type", "code"), ("scope", " ")]),
            ("invalid_scope", 70_011)
        );
        assert_eq!(
            refusal(&[("response_type", "code"), ("scope", "api://other/read")]),
            ("invalid_resource", 500_011)
        );
    }

    #[test]
    fn pkce_refusals_carry_entras_codes() {
        let scope = api_scope();
        let with = |challenge: &'static str, method: Option<&'static str>| {
            let mut pairs = vec![("response_type", "code"), ("scope", scope.as_str())];
            if !challenge.is_empty() {
                pairs.push(("code_challenge", challenge));
            }
            if let Some(m) = method {
                pairs.push(("code_challenge_method", m));
            }
            check(&pairs).unwrap_err()
        };
        let (error, code, text) = with("", Some("S256"));
        assert_eq!((error, code), ("invalid_request", 900_144));
        assert!(text.contains("'code_challenge'"), "{text}");
        assert_eq!(with(CHALLENGE, None).1, 50_149, "absent means plain");
        assert_eq!(with(CHALLENGE, Some("plain")).1, 50_149);
        assert_eq!(with("short", Some("S256")).1, 501_491);
    }

    #[test]
    fn resource_and_claims_are_checked() {
        let scope = api_scope();
        assert_eq!(
            refusal(&[
                ("response_type", "code"),
                ("scope", &scope),
                ("resource", "https://graph.microsoft.com"),
            ]),
            ("invalid_target", 9_010_010)
        );
        assert_eq!(
            refusal(&[
                ("response_type", "code"),
                ("scope", &scope),
                ("claims", "[\"acrs\"]"),
            ]),
            ("invalid_request", 90_100)
        );
    }
}
