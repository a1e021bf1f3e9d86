//! What a sign-in grant yields: the access token for the one requested resource (the dev
//! API, as [`TokenMint`] makes them, or Graph, as on-behalf-of issues them), a new refresh
//! token with `offline_access` and an id token with `openid`.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error_json;
use super::scopes::{Scopes, invalid_target, resource_matches};
use super::store::Session;
use crate::mint::pairwise_subject;
use crate::obo::{
    GRAPH_DEFAULT_SCOPES, GRAPH_RESOURCE, consent_required, downstream_token, invalid_grant,
    token_response, unix_now,
};
use crate::shared::Shared;
use crate::{DEV_SCOPE, DevError, DevUser, TokenMint};

/// Issues the access token for the one requested resource, a new refresh token when
/// `offline_access` was granted and an id token when `openid` was.
pub(super) fn issue(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
    resource: Option<&str>,
    nonce: Option<&str>,
    azpacr: &str,
) -> Response {
    if resource.is_some_and(|r| !resource_matches(s, r, requested)) {
        let (error, code, text) = invalid_target();
        return error_json(error, code, &text);
    }
    if requested.resources() > 1 {
        return error_json(
            "invalid_scope",
            28_000,
            "Provided value for the input parameter scope is not valid because it contains more than one resource.",
        );
    }
    let Some(user) = s.users.iter().find(|u| u.object_id == session.user_oid) else {
        return invalid_grant(70_000, "The user of this grant no longer exists.");
    };
    let issued = if requested.api.is_empty() {
        graph_token(s, session, requested)
    } else {
        api_token(s, session, requested, user, azpacr)
    };
    let (scope, access_token) = match issued {
        Ok(v) => v,
        Err(Issue::NotGranted) => return consent_required(s),
        Err(Issue::Signing) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let now = unix_now();
    let mut extra = Vec::new();
    if session.scopes.has_oidc("offline_access") {
        let refresh = s.sign_in.issue_refresh_token(session.clone(), now);
        extra.push(("refresh_token", json!(refresh)));
    }
    if session.scopes.has_oidc("openid") {
        match id_token(s, session, user, nonce, now) {
            Ok(t) => extra.push(("id_token", json!(t))),
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    token_response(s, scope, access_token, extra)
}

/// Why no access token was issued.
#[derive(Debug, PartialEq, Eq)]
enum Issue {
    /// API scopes the user did not grant at authorize.
    NotGranted,
    /// Signing failed.
    Signing,
}

impl From<DevError> for Issue {
    fn from(_: DevError) -> Self {
        Self::Signing
    }
}

/// A v2 user token for the dev API, as [`TokenMint`] makes them: `scp` the granted short
/// names, `azp` the redeeming client; `amr` gains `mfa` when the sign-in satisfied the MFA
/// policy, and `acrs`/`xms_cc` follow the `claims` request.
fn api_token(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
    user: &DevUser,
    azpacr: &str,
) -> Result<(String, String), Issue> {
    let names = granted_names(&session.scopes.api, &requested.api)?;
    let lifetime = s
        .downstream_lifetime
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut mint = TokenMint::user(s, user.clone())
        .scopes(names.clone())
        .lifetime(Duration::from_secs(lifetime))
        .claim("azp", session.client_id.clone())
        .claim("azpacr", azpacr);
    if session.claims.satisfies_mfa() && !user.auth_methods.iter().any(|m| m == "mfa") {
        let mut amr = user.auth_methods.clone();
        amr.push("mfa".to_owned());
        mint = mint.auth_methods(amr);
    }
    if !session.claims.acrs.is_empty() {
        mint = mint.acrs(session.claims.acrs.clone());
    }
    if !session.claims.xms_cc.is_empty() {
        mint = mint.client_capabilities(session.claims.xms_cc.clone());
    }
    let token = mint.mint()?;
    let form = requested
        .api_form
        .clone()
        .unwrap_or_else(|| format!("api://{}", s.api_client_id));
    let scope: Vec<String> = names.iter().map(|n| format!("{form}/{n}")).collect();
    Ok((scope.join(" "), token))
}

/// The dev API scopes (short names) a token gets for `requested` when authorize granted
/// `granted`: `.default` stands for every granted scope (the default scope if none), and
/// asking for one authorize did not grant is refused unless it granted `.default`.
fn granted_names(granted: &[String], requested: &[String]) -> Result<Vec<String>, Issue> {
    let names: Vec<String> = if requested.iter().any(|n| n == ".default") {
        let all: Vec<String> = granted
            .iter()
            .filter(|n| *n != ".default")
            .cloned()
            .collect();
        if all.is_empty() {
            vec![DEV_SCOPE.to_owned()]
        } else {
            all
        }
    } else {
        requested.to_vec()
    };
    let open = granted.iter().any(|n| n == ".default");
    if !open && names.iter().any(|n| !granted.contains(n)) {
        return Err(Issue::NotGranted);
    }
    Ok(names)
}

/// A Graph token, as on-behalf-of issues them; with only OpenID scopes, `User.Read`.
fn graph_token(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
) -> Result<(String, String), Issue> {
    let scp = if requested.graph.is_empty() {
        "User.Read".to_owned()
    } else if requested.graph.iter().any(|n| n == ".default") {
        GRAPH_DEFAULT_SCOPES.to_owned()
    } else {
        requested.graph.join(" ")
    };
    let token = downstream_token(
        s,
        &session.tid,
        &session.user_oid,
        GRAPH_RESOURCE,
        &scp,
        &s.api_client_id,
    )?;
    let scope: Vec<String> = scp
        .split(' ')
        .map(|n| format!("{GRAPH_RESOURCE}/{n}"))
        .collect();
    Ok((scope.join(" "), token))
}

/// A v2 id token for the client: `name` and `preferred_username` with `profile`, `email`
/// with `email`, `nonce` from authorize.
fn id_token(
    s: &Shared,
    session: &Session,
    user: &DevUser,
    nonce: Option<&str>,
    now: u64,
) -> Result<String, DevError> {
    let mut c = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_owned(), v);
    };
    put("aud", json!(session.client_id));
    put("iss", json!(s.issuer_v2(&session.tid)));
    put("iat", json!(now));
    put("nbf", json!(now));
    put("exp", json!(now + 3600));
    put(
        "sub",
        json!(pairwise_subject(&user.object_id, &session.client_id)),
    );
    put("oid", json!(user.object_id));
    put("tid", json!(session.tid));
    put("ver", json!("2.0"));
    put("uti", json!(uuid::Uuid::new_v4().to_string()));
    if session.scopes.has_oidc("profile") {
        put("name", json!(user.name));
        put("preferred_username", json!(user.upn));
    }
    if session.scopes.has_oidc("email") {
        put("email", json!(user.upn));
    }
    if let Some(n) = nonce {
        put("nonce", json!(n));
    }
    s.sign(&Value::Object(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn named_scopes_must_have_been_granted() {
        let granted = names(&["mcp.tools", "mcp.admin"]);
        assert_eq!(
            granted_names(&granted, &names(&["mcp.admin"])),
            Ok(names(&["mcp.admin"]))
        );
        assert_eq!(
            granted_names(&granted, &names(&["mcp.tools", "mcp.write"])),
            Err(Issue::NotGranted)
        );
    }

    #[test]
    fn default_stands_for_every_granted_scope() {
        assert_eq!(
            granted_names(&names(&["mcp.tools", "mcp.admin"]), &names(&[".default"])),
            Ok(names(&["mcp.tools", "mcp.admin"]))
        );
        assert_eq!(
            granted_names(&names(&[".default"]), &names(&[".default"])),
            Ok(names(&[DEV_SCOPE])),
            "nothing named: the default scope"
        );
        assert_eq!(
            granted_names(&names(&[".default"]), &names(&["mcp.write"])),
            Ok(names(&["mcp.write"])),
            "a `.default` grant opens every scope"
        );
        assert_eq!(
            granted_names(&[], &names(&[".default"])),
            Err(Issue::NotGranted),
            "the default scope was not granted either"
        );
    }
}
