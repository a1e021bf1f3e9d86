//! The upstream leg, after consent: the redirect to Entra's `/authorize` (the proxy's own
//! PKCE, a single-use state, a cookie binding the browser), `GET /callback`, the code
//! redeemed at Entra's token endpoint as a confidential client (claims challenges
//! answered by signing in again, a bounded number of times), and the client's code.
//! Entra's token endpoint also renews a session's tokens ([`Proxy::entra_token`]).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;

use super::super::html;
use super::super::keys::{Purpose, digest_b64};
use super::super::store::RecordKind;
use super::sealed::{Code, Leg, Pending, Session};
use super::{Event, OAuthError, Proxy, excerpt, fresh, pkce, to_client, unix_now};
use crate::entra::{EntraError, admin_consent_url};
use crate::obo::ClientAuth;

/// How long the Entra leg may take (the state's lifetime).
const STATE_TTL: Duration = Duration::from_secs(600);
/// How long a client's authorization code redeems.
const CODE_TTL: Duration = Duration::from_secs(120);
/// How long a code's record is kept: past its lifetime, so a late replay is recognised.
pub(super) const CODE_RECORD_TTL: Duration = Duration::from_secs(600);
/// Claims challenges answered in one sign-in before giving up.
const MAX_CLAIMS_ROUNDS: u8 = 2;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What Entra's token endpoint returned.
#[derive(Deserialize)]
pub(super) struct EntraTokens {
    pub(super) access_token: String,
    pub(super) refresh_token: Option<String>,
    /// Entra always sends it; an hour if not.
    #[serde(default = "default_expires_in")]
    pub(super) expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

/// Why Entra's token endpoint refused.
pub(super) enum EntraFailure {
    /// An administrator must consent first.
    Consent,
    /// A claims challenge (MFA, a conditional access policy).
    Claims(String),
    /// The code or refresh token is no good.
    InvalidGrant,
    /// Anything else (unreachable, a server error, an unexpected answer).
    Other(String),
}

impl EntraFailure {
    /// What a token endpoint error body means here.
    fn of(body: EntraError) -> Self {
        if body.error_codes.contains(&65_001)
            || body.suberror.as_deref() == Some("consent_required")
        {
            Self::Consent
        } else if let Some(claims) = body.claims.filter(|_| body.error == "interaction_required") {
            Self::Claims(claims)
        } else if body.error == "invalid_grant" {
            Self::InvalidGrant
        } else {
            Self::Other(format!(
                "{} (AADSTS{})",
                body.error,
                body.error_codes.first().copied().unwrap_or_default()
            ))
        }
    }
}

/// The scopes of the Entra authorize request: the API's, the downstream APIs' (so
/// consent covers on-behalf-of up front), and the OpenID ones.
fn authorize_scope(api: &[String], downstream: &[String]) -> String {
    let mut all: Vec<&str> = api.iter().map(String::as_str).collect();
    all.extend(downstream.iter().map(String::as_str));
    all.extend(["openid", "profile", "offline_access"]);
    all.join(" ")
}

/// The scopes of an Entra token request: one resource (the API) only.
pub(super) fn token_scope(api: &[String]) -> String {
    let mut all: Vec<&str> = api.iter().map(String::as_str).collect();
    all.extend(["openid", "offline_access"]);
    all.join(" ")
}

/// `base` with `params` as its query (`base` itself if it does not parse).
fn url_with(base: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse_with_params(base, params) {
        Ok(u) => u.to_string(),
        Err(_) => base.to_owned(),
    }
}

impl Proxy {
    /// Where Entra sends the browser back.
    fn callback_url(&self) -> String {
        format!("{}/callback", self.settings.issuer)
    }

    fn admin_consent_url(&self) -> String {
        let resource = self
            .api_scopes
            .first()
            .and_then(|s| s.rsplit_once('/').map(|(r, _)| r.to_owned()))
            .unwrap_or_default();
        admin_consent_url(
            &self.authority,
            &self.tenant_segment,
            &self.client_id,
            &resource,
        )
    }

    /// A request to Entra's token endpoint with the confidential credential.
    pub(super) async fn entra_token(
        &self,
        mut form: Vec<(&str, String)>,
    ) -> Result<EntraTokens, EntraFailure> {
        let auth = self
            .credential
            .client_auth(&self.client_id, &self.token_endpoint)
            .map_err(|e| EntraFailure::Other(e.to_string()))?;
        form.push(("client_id", self.client_id.clone()));
        match auth {
            ClientAuth::Secret(s) => form.push(("client_secret", s.expose().to_owned())),
            ClientAuth::Assertion(a) => {
                form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", a.expose().to_owned()));
            }
        }
        let res = self
            .http
            .post(&self.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| EntraFailure::Other(e.without_url().to_string()))?;
        if res.status().is_success() {
            return res
                .json::<EntraTokens>()
                .await
                .map_err(|e| EntraFailure::Other(format!("unreadable token response: {e}")));
        }
        let status = res.status().as_u16();
        let body: EntraError = res.json().await.unwrap_or_default();
        tracing::debug!(target: "idguard::oauth", status, error = %body.error, codes = ?body.error_codes, "Entra refused the token request");
        Err(EntraFailure::of(body))
    }
}

/// Stores the leg under a fresh state, binds the browser to it, and redirects to Entra.
pub(super) async fn start(p: &Proxy, leg: Leg) -> Response {
    let state = match fresh(32) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = p
        .put_sealed(RecordKind::State, &state, &leg, STATE_TTL)
        .await
    {
        return e.into_response();
    }
    // In place of the pending request (or the previous leg) it follows.
    if let Err(e) = p.sign_ins.hold_counted(&leg.pending, STATE_TTL).await {
        return super::limit_failed(&e).into_response();
    }
    let Some(binding) = p.keys.stamp(
        Purpose::Consent,
        format!("{}|{state}", leg.pending.client_id).as_bytes(),
    ) else {
        return html::error_page(StatusCode::INTERNAL_SERVER_ERROR, "Cannot start sign-in.");
    };
    let scope = authorize_scope(&leg.pending.scopes, &p.settings.consent_scopes);
    let callback = p.callback_url();
    let challenge = pkce::s256(&leg.verifier);
    let mut params = vec![
        ("client_id", p.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", callback.as_str()),
        ("response_mode", "query"),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if let Some(claims) = leg.claims.as_deref() {
        params.push(("claims", claims));
    }
    let mut res = Redirect::to(&url_with(&p.authorize_endpoint, &params)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    html::set_cookie(&mut res, &html::binding_cookie(&state), &binding, STATE_TTL);
    res
}

#[derive(Deserialize)]
pub(super) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub(super) async fn callback(
    State(guard): State<super::ProxyState>,
    headers: HeaderMap,
    Query(q): Query<CallbackParams>,
) -> Response {
    let p = &*guard.proxy;
    let Some(state) = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 128)
    else {
        return html::error_page(StatusCode::BAD_REQUEST, "The sign-in answer has no state.");
    };
    let unknown = || {
        html::error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in answer is unknown, expired or was already used; start again.",
        )
    };
    // Read, check the browser, then take: someone who merely learned the state cannot
    // spend it.
    let leg: Leg = match p.get_sealed::<Leg>(RecordKind::State, state).await {
        Ok(Some((leg, _))) => leg,
        Ok(None) => {
            tracing::warn!(target: "idguard::oauth", "callback: unknown or reused state");
            return unknown();
        }
        Err(e) => return e.into_response(),
    };
    // The browser that gave consent must be the one coming back.
    let binding = html::binding_cookie(state);
    let bound = html::cookie_value(&headers, &binding).is_some_and(|v| {
        p.keys.check_stamp(
            Purpose::Consent,
            format!("{}|{state}", leg.pending.client_id).as_bytes(),
            v,
        )
    });
    if !bound {
        tracing::warn!(target: "idguard::oauth", "callback: consent binding missing");
        return html::error_page(
            StatusCode::FORBIDDEN,
            "This browser did not approve this sign-in. Start again from your MCP client.",
        );
    }
    match p.take_sealed::<Leg>(RecordKind::State, state).await {
        Ok(Some(_)) => p.sign_ins.release_counted(&leg.pending).await,
        Ok(None) => return unknown(),
        Err(e) => return e.into_response(),
    }
    let mut res = finish_sign_in(p, &guard, leg, &q).await;
    html::clear_cookie(&mut res, &binding);
    res
}

/// After the callback's checks: Entra's answer, the code redemption, the client's code.
async fn finish_sign_in(
    p: &Proxy,
    guard: &super::ProxyState,
    leg: Leg,
    q: &CallbackParams,
) -> Response {
    let pending = &leg.pending;
    let client_error = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = pending.state.as_deref() {
            params.push(("state", s));
        }
        to_client(&pending.redirect_uri, &params, p.issuer())
    };
    if let Some(error) = q.error.as_deref() {
        let description = q.error_description.as_deref().unwrap_or_default();
        tracing::info!(target: "idguard::oauth", error = %excerpt(error, 64), "Entra refused the sign-in");
        if error == "consent_required" || description.contains("AADSTS65001") {
            return html::admin_consent_page(&p.admin_consent_url());
        }
        let mapped = match error {
            "access_denied" => "access_denied",
            "invalid_scope" => "invalid_scope",
            "temporarily_unavailable" => "temporarily_unavailable",
            _ => "server_error",
        };
        return client_error(mapped, "the identity provider refused the sign-in");
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return client_error("server_error", "the identity provider sent no code");
    };
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", p.callback_url()),
        ("code_verifier", leg.verifier.clone()),
        ("scope", token_scope(&pending.scopes)),
    ];
    let tokens = match p.entra_token(form).await {
        Ok(t) => t,
        Err(EntraFailure::Consent) => return html::admin_consent_page(&p.admin_consent_url()),
        Err(EntraFailure::Claims(claims)) if leg.rounds < MAX_CLAIMS_ROUNDS => {
            // A claims challenge (MFA, a conditional access policy): sign in again with it.
            let verifier = match fresh(48) {
                Ok(v) => v,
                Err(e) => return e.into_response(),
            };
            let again = Leg {
                pending: leg.pending.clone(),
                verifier,
                claims: Some(claims),
                rounds: leg.rounds + 1,
            };
            return start(p, again).await;
        }
        Err(EntraFailure::Claims(_) | EntraFailure::InvalidGrant) => {
            return client_error("access_denied", "the identity provider refused the sign-in");
        }
        Err(EntraFailure::Other(why)) => {
            tracing::warn!(target: "idguard::oauth", reason = %why, "code redemption failed");
            return client_error("server_error", "the identity provider could not be reached");
        }
    };
    // The token must be one this API accepts, for a user.
    let principal = match guard.auth.validate(&tokens.access_token).await {
        Ok(p) if !p.is_app_only() => p,
        Ok(_) => return client_error("access_denied", "not a user sign-in"),
        Err(e) => {
            tracing::warn!(target: "idguard::oauth", reason = %e, "Entra issued a token this API refuses");
            return client_error(
                "access_denied",
                "the signed-in account cannot use this server",
            );
        }
    };
    match issue_code(p, pending, tokens, principal.object_id()).await {
        Ok(code) => {
            p.count(Event::SignedIn);
            tracing::debug!(target: "idguard::oauth", tenant = principal.tenant_id(), oid = principal.object_id(), "signed in; code issued");
            let mut params = vec![("code", code.as_str())];
            if let Some(s) = pending.state.as_deref() {
                params.push(("state", s));
            }
            to_client(&pending.redirect_uri, &params, p.issuer())
        }
        Err(e) => e.into_response(),
    }
}

/// Stores the session and the client's authorization code; returns the code.
async fn issue_code(
    p: &Proxy,
    pending: &Pending,
    tokens: EntraTokens,
    oid: &str,
) -> Result<String, OAuthError> {
    let now = unix_now();
    let sid = fresh(32)?;
    let session = Session {
        client_id: pending.client_id.clone(),
        scopes: pending.scopes.clone(),
        oid: oid.to_owned(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: now.saturating_add(tokens.expires_in),
        generation: 0,
        ends_at: now.saturating_add(p.settings.refresh_token_lifetime.as_secs()),
        rotated_at: 0,
    };
    p.put_sealed(
        RecordKind::Session,
        &sid,
        &session,
        p.settings.refresh_token_lifetime,
    )
    .await?;
    let code = fresh(32)?;
    let record = Code {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        redirect_presented: pending.redirect_presented,
        challenge: pending.challenge.clone(),
        sid,
        used: false,
        expires_at: unix_now().saturating_add(CODE_TTL.as_secs()),
    };
    p.put_sealed(
        RecordKind::Code,
        &digest_b64(&code),
        &record,
        CODE_RECORD_TTL,
    )
    .await?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(body: serde_json::Value) -> EntraFailure {
        EntraFailure::of(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn entra_errors_are_classified() {
        assert!(matches!(
            failure(serde_json::json!({"error": "invalid_grant", "error_codes": [65001]})),
            EntraFailure::Consent
        ));
        assert!(matches!(
            failure(serde_json::json!({"error": "invalid_grant", "suberror": "consent_required"})),
            EntraFailure::Consent
        ));
        let claims = r#"{"access_token":{"capolids":{"essential":true}}}"#;
        match failure(serde_json::json!({"error": "interaction_required", "claims": claims})) {
            EntraFailure::Claims(c) => assert_eq!(c, claims),
            _ => panic!("a claims challenge"),
        }
        // Claims only count with `interaction_required`.
        assert!(matches!(
            failure(serde_json::json!({"error": "invalid_grant", "claims": claims})),
            EntraFailure::InvalidGrant
        ));
        match failure(serde_json::json!({"error": "invalid_client", "error_codes": [7000215]})) {
            EntraFailure::Other(why) => assert_eq!(why, "invalid_client (AADSTS7000215)"),
            _ => panic!("other"),
        }
        match failure(serde_json::json!({})) {
            EntraFailure::Other(why) => assert_eq!(why, " (AADSTS0)"),
            _ => panic!("other"),
        }
    }

    #[test]
    fn the_authorize_leg_asks_for_downstream_consent_and_the_token_leg_does_not() {
        let api = vec!["api://app/mcp.tools".to_owned()];
        let downstream = vec!["https://graph.microsoft.com/User.Read".to_owned()];
        assert_eq!(
            authorize_scope(&api, &downstream),
            "api://app/mcp.tools https://graph.microsoft.com/User.Read openid profile offline_access"
        );
        assert_eq!(
            token_scope(&api),
            "api://app/mcp.tools openid offline_access"
        );
    }

    #[test]
    fn entra_tokens_default_to_an_hour() {
        let t: EntraTokens = serde_json::from_str(r#"{"access_token": "at"}"#).unwrap();
        assert_eq!((t.expires_in, t.refresh_token), (3600, None));
    }

    #[test]
    fn url_with_appends_a_query() {
        assert_eq!(
            url_with(
                "https://login.example/t/authorize",
                &[("a", "1 2"), ("b", "&")]
            ),
            "https://login.example/t/authorize?a=1+2&b=%26"
        );
        assert_eq!(url_with("not a url", &[("a", "1")]), "not a url");
    }
}
