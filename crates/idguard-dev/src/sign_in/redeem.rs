//! The token endpoint's sign-in grants, up to issuing: `authorization_code` (the code must
//! bind to its redemption: tenant path, redirect URI, PKCE verifier) and `refresh_token`;
//! both check the tenant path, the client and its credential, and the required `scope`
//! first.

use std::collections::HashMap;

use axum::response::Response;

use super::issue::issue;
use super::pkce::verifier_matches;
use super::scopes::{Scopes, parse_scopes};
use super::store::{Code, Refusal};
use super::{error_json, missing_parameter};
use crate::DevSignInFailure;
use crate::obo::{
    consent_required, invalid_grant, mfa_required, refuse_client, unix_now, unknown_client,
};
use crate::server::unknown_tenant;
use crate::shared::Shared;

/// Entra's refusal. `Ok` is the client's `azpacr`: `1` for a secret, `2` for an assertion.
fn check_client(
    s: &Shared,
    raw: &str,
    form: &HashMap<String, String>,
) -> Result<&'static str, Box<Response>> {
    let segment = raw.to_ascii_lowercase();
    if !matches!(segment.as_str(), "organizations" | "common") && !s.knows_tenant(&segment) {
        return Err(Box::new(unknown_tenant(raw)));
    }
    match form.get("client_id").map(String::as_str) {
        None | Some("") => return Err(Box::new(missing_parameter("client_id"))),
        Some(id) if id != s.api_client_id => return Err(Box::new(unknown_client())),
        Some(_) => {}
    }
    let endpoint = format!("{}/{segment}/oauth2/v2.0/token", s.base_url);
    if let Some(answer) = refuse_client(s, form, &endpoint) {
        return Err(Box::new(answer));
    }
    Ok(if form.contains_key("client_secret") {
        "1"
    } else {
        "2"
    })
}

/// Parses the token request's required `scope`; `empty_code` is the AADSTS code for a
/// present but empty value.
fn requested_scopes(
    s: &Shared,
    raw: &str,
    form: &HashMap<String, String>,
    empty_code: u32,
) -> Result<Scopes, Box<Response>> {
    let Some(scope) = form.get("scope") else {
        return Err(Box::new(missing_parameter("scope")));
    };
    if scope.trim().is_empty() {
        return Err(Box::new(if empty_code == 28_003 {
            error_json(
                "invalid_scope",
                28_003,
                "Provided value for the input parameter scope cannot be empty when requesting an access token using the provided authorization code. Please specify a valid scope.",
            )
        } else {
            missing_parameter("scope")
        }));
    }
    parse_scopes(s, scope).map_err(|e| {
        let (error, code, text) = e.describe(raw);
        Box::new(error_json(error, code, &text))
    })
}

/// What both sign-in grants check first: the tenant path and client, the grant's handle
/// (form field `handle`) and the required `scope`. `Ok` is (`azpacr`, handle, scopes).
fn grant_request<'f>(
    s: &Shared,
    raw: &str,
    form: &'f HashMap<String, String>,
    handle: &str,
    empty_scope_code: u32,
) -> Result<(&'static str, &'f str, Scopes), Box<Response>> {
    let azpacr = check_client(s, raw, form)?;
    let value = form
        .get(handle)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Box::new(missing_parameter(handle)))?;
    let requested = requested_scopes(s, raw, form, empty_scope_code)?;
    Ok((azpacr, value, requested))
}

/// `grant_type=authorization_code`.
pub(crate) fn redeem_code(s: &Shared, raw: &str, form: &HashMap<String, String>) -> Response {
    let (azpacr, code, requested) = match grant_request(s, raw, form, "code", 28_003) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let code = match s.sign_in.take_code(code, unix_now()) {
        Ok(c) => c,
        Err(Refusal::Redeemed) => {
            return invalid_grant(
                54_005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            );
        }
        Err(_) => {
            return invalid_grant(
                70_008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
    };
    let redirect_uri = field("redirect_uri");
    match check_binding(&code, raw, redirect_uri, field("code_verifier")) {
        Ok(()) => {}
        Err(Unbound::Tenant) => {
            return invalid_grant(
                700_005,
                "Provided Authorization Code is intended to use against other tenant, thus rejected.",
            );
        }
        Err(Unbound::MissingRedirectUri) => return missing_parameter("redirect_uri"),
        Err(Unbound::RedirectUri) => {
            return invalid_grant(
                500_112,
                &format!(
                    "The reply address '{}' does not match the reply address '{}' provided when requesting Authorization code.",
                    redirect_uri.unwrap_or_default(),
                    code.redirect_uri
                ),
            );
        }
        Err(Unbound::MissingVerifier) => return missing_parameter("code_verifier"),
        Err(Unbound::Verifier) => {
            return invalid_grant(
                501_481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    match s.sign_in.failure(&code.session.user_oid) {
        Some(DevSignInFailure::ConsentRequired) if !code.consented => return consent_required(s),
        Some(DevSignInFailure::MfaRequired) if !code.session.claims.satisfies_mfa() => {
            return mfa_required(s);
        }
        _ => {}
    }
    issue(
        s,
        &code.session,
        &requested,
        field("resource"),
        code.nonce.as_deref(),
        azpacr,
    )
}

/// Where a redemption differs from what authorize bound its code to.
#[derive(Debug, PartialEq, Eq)]
enum Unbound {
    /// Another tenant path than authorize's (AADSTS700005).
    Tenant,
    /// No `redirect_uri` (AADSTS900144).
    MissingRedirectUri,
    /// Another `redirect_uri` than authorize's (AADSTS500112).
    RedirectUri,
    /// No `code_verifier` for a code with a PKCE challenge (AADSTS900144).
    MissingVerifier,
    /// A `code_verifier` that does not hash to the challenge (AADSTS501481).
    Verifier,
}

/// Checks, in Entra's order, that a redemption on tenant path `raw` with `redirect_uri`
/// and `verifier` matches what authorize bound `code` to.
fn check_binding(
    code: &Code,
    raw: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<(), Unbound> {
    if code.segment != raw.to_ascii_lowercase() {
        return Err(Unbound::Tenant);
    }
    match redirect_uri {
        None => return Err(Unbound::MissingRedirectUri),
        Some(uri) if uri != code.redirect_uri => return Err(Unbound::RedirectUri),
        Some(_) => {}
    }
    if let Some(challenge) = &code.challenge {
        let verifier = verifier.ok_or(Unbound::MissingVerifier)?;
        if !verifier_matches(verifier, challenge) {
            return Err(Unbound::Verifier);
        }
    }
    Ok(())
}

/// `grant_type=refresh_token`.
pub(crate) fn redeem_refresh(s: &Shared, raw: &str, form: &HashMap<String, String>) -> Response {
    let (azpacr, token, requested) = match grant_request(s, raw, form, "refresh_token", 900_144) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let now = unix_now();
    let session = match s.sign_in.use_refresh_token(token, now) {
        Ok(session) => session,
        Err(Refusal::Revoked) => {
            return invalid_grant(
                50_173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
            );
        }
        Err(Refusal::Expired) => {
            return invalid_grant(
                700_082,
                "The refresh token has expired due to inactivity. The token was inactive for 90.00:00:00.",
            );
        }
        Err(_) => {
            return invalid_grant(
                70_000,
                "The provided value for the 'refresh_token' is not valid.",
            );
        }
    };
    if s.sign_in.failure(&session.user_oid) == Some(DevSignInFailure::MfaRequired)
        && !session.claims.satisfies_mfa()
    {
        return mfa_required(s);
    }
    issue(s, &session, &requested, field("resource"), None, azpacr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::DevEntra;
    use crate::builder::test_shared;
    use crate::sign_in::claims::ClaimsRequest;
    use crate::sign_in::store::Session;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const REDIRECT: &str = "http://127.0.0.1:9/cb";

    fn code(challenge: Option<&str>) -> Code {
        Code {
            session: Session {
                client_id: "client".to_owned(),
                user_oid: "user".to_owned(),
                tid: "contoso".to_owned(),
                scopes: Scopes::default(),
                claims: ClaimsRequest::default(),
            },
            redirect_uri: REDIRECT.to_owned(),
            challenge: challenge.map(str::to_owned),
            segment: "organizations".to_owned(),
            nonce: None,
            consented: false,
            expires_at: u64::MAX,
            redeemed: false,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The AADSTS code of an Entra error answer.
    async fn aadsts(res: Response) -> (u16, u64) {
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (status, body["error_codes"][0].as_u64().unwrap())
    }

    #[test]
    fn a_code_binds_to_its_tenant_path_redirect_uri_and_verifier() {
        let pkce = code(Some(CHALLENGE));
        assert_eq!(
            check_binding(&pkce, "Organizations", Some(REDIRECT), Some(VERIFIER)),
            Ok(()),
            "the tenant path is compared in lower case"
        );
        assert_eq!(
            check_binding(&pkce, "common", Some(REDIRECT), Some(VERIFIER)),
            Err(Unbound::Tenant)
        );
        assert_eq!(
            check_binding(&pkce, "organizations", None, Some(VERIFIER)),
            Err(Unbound::MissingRedirectUri)
        );
        assert_eq!(
            check_binding(
                &pkce,
                "organizations",
                Some("http://127.0.0.1:9/cb/"),
                Some(VERIFIER)
            ),
            Err(Unbound::RedirectUri)
        );
        assert_eq!(
            check_binding(&pkce, "organizations", Some(REDIRECT), None),
            Err(Unbound::MissingVerifier)
        );
        assert_eq!(
            check_binding(&pkce, "organizations", Some(REDIRECT), Some(CHALLENGE)),
            Err(Unbound::Verifier)
        );
    }

    #[test]
    fn a_code_without_a_challenge_ignores_any_verifier() {
        let plain = code(None);
        assert_eq!(
            check_binding(&plain, "organizations", Some(REDIRECT), None),
            Ok(())
        );
        assert_eq!(
            check_binding(&plain, "organizations", Some(REDIRECT), Some("anything")),
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_client_is_the_dev_api_with_its_credential() {
        let s = test_shared(DevEntra::builder());
        let id = s.api_client_id.clone();
        let secret = s.client_secret.clone();
        let refused = |raw: &str, pairs: &[(&str, &str)]| {
            check_client(&s, raw, &form(pairs)).map(|_| ()).unwrap_err()
        };
        assert_eq!(
            check_client(
                &s,
                "common",
                &form(&[("client_id", &id), ("client_secret", &secret)])
            )
            .ok(),
            Some("1")
        );
        assert_eq!(aadsts(*refused("nowhere", &[])).await, (400, 90_002));
        assert_eq!(aadsts(*refused("common", &[])).await, (400, 900_144));
        assert_eq!(
            aadsts(*refused("common", &[("client_id", "other")]))
                .await
                .1,
            700_016
        );
        assert_eq!(
            aadsts(*refused(
                "common",
                &[("client_id", &id), ("client_secret", "x")]
            ))
            .await,
            (401, 7_000_215)
        );
    }

    #[tokio::test]
    async fn scope_is_required_and_may_not_be_empty_with_a_code() {
        let s = test_shared(DevEntra::builder());
        let refused = |pairs: &[(&str, &str)], empty_code: u32| {
            requested_scopes(&s, "common", &form(pairs), empty_code).unwrap_err()
        };
        assert_eq!(aadsts(*refused(&[], 28_003)).await.1, 900_144);
        assert_eq!(aadsts(*refused(&[("scope", " ")], 28_003)).await.1, 28_003);
        assert_eq!(
            aadsts(*refused(&[("scope", " ")], 900_144)).await.1,
            900_144
        );
        assert_eq!(
            aadsts(*refused(&[("scope", "api://other/x")], 28_003))
                .await
                .1,
            500_011
        );
        let scopes =
            requested_scopes(&s, "common", &form(&[("scope", "openid User.Read")]), 0).unwrap();
        assert_eq!(scopes.graph, ["User.Read"]);
    }
}
