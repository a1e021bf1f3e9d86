//! The emulator's interactive sign-in: `GET /{tenant}/oauth2/v2.0/authorize` (authorization
//! code with PKCE) and, at the token endpoint, the `authorization_code` and `refresh_token`
//! grants, in Entra's documented formats.
//!
//! The confidential client is the dev API app (`api_client_id`); its redirect URIs are
//! registered at run time and compared exactly. Before the redirect URI is trusted, errors
//! are an HTML page (Entra's own error page, never a redirect); afterwards they redirect
//! with `error`, `error_description` (`AADSTS…: …`) and `state`.
//!
//! | case | answer |
//! |---|---|
//! | unknown tenant (authorize) | page, AADSTS90002 |
//! | missing or unknown `client_id` | page, AADSTS900144 / AADSTS700016 |
//! | missing or unregistered `redirect_uri` | page, AADSTS900971 / AADSTS50011 |
//! | `response_type` missing / not `code` | `invalid_request` AADSTS900144 / `unsupported_response_type` AADSTS70005 |
//! | `response_mode` other than `query` (emulator limit) | `invalid_request` AADSTS70007 |
//! | `scope` missing / unknown resource / unknown Graph scope | `invalid_request` AADSTS900144 / `invalid_resource` AADSTS500011 / `invalid_scope` AADSTS650053 |
//! | `code_challenge_method` not `S256` (absent means `plain`) | `invalid_request` AADSTS50149 |
//! | `code_challenge` not 43 base64url characters | `invalid_request` AADSTS501491 |
//! | `resource` not an Application ID URI of the app owning every scope | `invalid_target` AADSTS9010010 (Entra since 2026; AADSTS901002 is the older blanket refusal) |
//! | `claims` not a JSON object | `invalid_request` AADSTS90100 |
//! | `prompt=none` and nobody to sign in | `login_required` AADSTS50058 |
//! | user of another tenant than the path's | page, AADSTS50020 |
//! | [`DevSignInFailure`](crate::DevSignInFailure) | `access_denied` AADSTS65004; with `prompt=none`: `consent_required` AADSTS65001, `interaction_required` AADSTS50079 |
//!
//! At the token endpoint (JSON, `400` unless said): `client_id` not the dev API →
//! `unauthorized_client` AADSTS700016; the client credential exactly as for on-behalf-of
//! (`invalid_client`, `401`); a missing parameter → `invalid_request` AADSTS900144; an empty
//! `scope` with a code → `invalid_scope` AADSTS28003; an unknown or expired code →
//! `invalid_grant` AADSTS70008, a redeemed one → AADSTS54005, one from another tenant path →
//! AADSTS700005; `redirect_uri` unlike authorize's → AADSTS500112; a `code_verifier` that
//! does not hash to the challenge → AADSTS501481; scopes of two resources → `invalid_scope`
//! AADSTS28000; API scopes the user did not grant at authorize → AADSTS65001; an unknown
//! refresh token → `invalid_grant` AADSTS70000, a revoked one → AADSTS50173, one unused for
//! 90 days → AADSTS700082.
//!
//! Codes live ten minutes and are single use. Refresh tokens are opaque; each redemption
//! returns a new one and, as in Entra (which does not invalidate a redeemed refresh token
//! of a confidential client), the old one keeps working until revoked or unused for 90
//! days. Both stores are bounded: when full, expired entries go first, then the oldest.

//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the routes, the grant types, user lookup, the token endpoint's error bodies |
//! | `authorize.rs` | `GET …/authorize`: checking the request, signing in, issuing the code |
//! | `page.rs` | the HTML: Entra's error page, the user picker, redirects back to the client |
//! | `scopes.rs` | requested scopes sorted by resource, and the `resource` rule |
//! | `claims.rs` | the OpenID `claims` request (MFA, `acrs`, client capabilities) |
//! | `pkce.rs` | PKCE: the `code_challenge` check and the S256 verifier match |
//! | `store.rs` | the sign-in state: redirect URIs, codes, refresh tokens, revocation |
//! | `redeem.rs` | the `authorization_code` and `refresh_token` grants up to issuing |
//! | `issue.rs` | the tokens a grant yields: access token, refresh token, id token |

mod authorize;
mod claims;
mod issue;
mod page;
mod pkce;
mod redeem;
mod scopes;
mod store;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;

use super::server::entra_error;
use super::{DevUser, Shared};

pub(crate) use redeem::{redeem_code, redeem_refresh};
pub(crate) use store::SignIn;

/// `grant_type` of code redemption.
pub(crate) const AUTHORIZATION_CODE: &str = "authorization_code";
/// `grant_type` of refresh-token redemption.
pub(crate) const REFRESH_TOKEN: &str = "refresh_token";

/// Adds `GET /{tenant}/oauth2/v2.0/authorize` (the grants are dispatched by the token
/// endpoint, `obo.rs`).
pub(crate) fn routes(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router.route(
        "/{tenant}/oauth2/v2.0/authorize",
        axum::routing::get(authorize::authorize),
    )
}

/// A user by key or sign-in name.
pub(crate) fn find_user<'a>(s: &'a Shared, hint: &str) -> Option<&'a DevUser> {
    s.users
        .iter()
        .find(|u| u.key == hint || u.upn.eq_ignore_ascii_case(hint))
}

/// The token endpoint's answer to a missing parameter (AADSTS900144).
fn missing_parameter(name: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        &format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

/// A `400` token endpoint error: `error`, `AADSTS{code}: {text}`.
fn error_json(error: &str, code: u32, text: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        error,
        code,
        &format!("AADSTS{code}: {text}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::test_shared;

    #[test]
    fn users_are_found_by_key_or_sign_in_name() {
        let s = test_shared(crate::DevEntra::builder());
        assert_eq!(
            find_user(&s, "alice").map(|u| u.key.as_str()),
            Some("alice")
        );
        assert_eq!(
            find_user(&s, "BOB@contoso.example").map(|u| u.key.as_str()),
            Some("bob")
        );
        assert!(find_user(&s, "Alice").is_none(), "keys are exact");
        assert!(find_user(&s, "mallory").is_none());
    }
}
