//! `GET /authorize` and `POST /consent`: the client's authorization request, checked and
//! stored, then the consent page (per client, CSRF token and cookie, no framing); an
//! approval starts the Entra leg, a refusal goes back to the client.
//!
//! Nothing is redirected before the user approves: the redirect URI of a client that
//! registered itself is not trusted enough for an automatic redirect (RFC 9700 §4.11.2),
//! so every problem with the request is shown on a page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Extension, Form, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::HeaderMap;
use serde::Deserialize;

use super::super::cimd::is_metadata_url;
use super::super::client::{self, Client};
use super::super::html;
use super::super::keys::Purpose;
use super::super::store::RecordKind;
use super::limits::too_many_sign_ins;
use super::sealed::{Leg, Pending};
use super::{
    ClientAddress, Event, OAuthError, Proxy, client_label, excerpt, fresh, pkce, to_client,
};

/// How long an authorization request waits for consent.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Longest client `state` kept (it is stored until the callback).
const MAX_STATE_BYTES: usize = 1024;
/// Longest client id accepted (a sealed registration, or a metadata-document URL).
const MAX_CLIENT_ID_BYTES: usize = 8 * 1024;
/// Scopes a client may ask for that name no API scope (Entra adds its own).
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

#[derive(Deserialize)]
pub(super) struct AuthorizeParams {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

impl Proxy {
    /// The client `client_id` names: a metadata document (fetched), or a registration
    /// (opened); otherwise why not, for the page.
    async fn client(&self, client_id: &str) -> Result<Arc<Client>, String> {
        if is_metadata_url(client_id) {
            let Some(docs) = &self.documents else {
                return Err("client-id metadata documents are turned off".into());
            };
            return docs.client(client_id).await.map_err(|e| {
                tracing::debug!(target: "idguard::oauth", error = %e, "client metadata document refused");
                e.public_message()
            });
        }
        client::open_registered(&self.keys, client_id)
            .map(Arc::new)
            .ok_or_else(|| "unknown client (not registered here, or altered)".into())
    }
}

/// Scopes for the client's request: the API's (`api`, fully qualified), narrowed to what
/// it asked for, by full or short name; OpenID scopes pass; anything else is refused.
fn requested_scopes(api: &[String], scope: Option<&str>) -> Result<Vec<String>, String> {
    let mut chosen = Vec::new();
    for s in scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if OIDC_SCOPES.contains(&s) {
            continue;
        }
        let qualified = api
            .iter()
            .find(|a| *a == s || a.rsplit_once('/').is_some_and(|(_, short)| short == s));
        match qualified {
            Some(q) if !chosen.contains(q) => chosen.push(q.clone()),
            Some(_) => {}
            None => return Err(format!("`{s}` is not a scope of this server")),
        }
    }
    if chosen.is_empty() {
        chosen.extend_from_slice(api);
    }
    Ok(chosen)
}

pub(super) async fn authorize(
    State(guard): State<super::ProxyState>,
    headers: HeaderMap,
    address: Option<Extension<ClientAddress>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<AuthorizeParams>,
) -> Response {
    let p = &*guard.proxy;
    // Nothing is redirected before the user approves (see the module docs).
    let refuse = |message: &str| html::error_page(StatusCode::BAD_REQUEST, message);
    let Some(client_id) = q
        .client_id
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= MAX_CLIENT_ID_BYTES)
    else {
        return refuse("The request names no valid client.");
    };
    let client = match p.client(client_id).await {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(target: "idguard::oauth", reason = %excerpt(&why, 200), "authorize: client refused");
            return refuse(&format!("This client cannot sign in here: {why}."));
        }
    };
    let Some(redirect_uri) = client.redirect_uri(q.redirect_uri.as_deref()) else {
        tracing::info!(target: "idguard::oauth", "authorize: redirect URI not registered");
        return refuse("The redirect URI is not registered for this client.");
    };
    if !p.redirect_allowed(&redirect_uri) {
        return refuse("The redirect URI names a host this server does not allow.");
    }
    if q.state
        .as_deref()
        .is_some_and(|s| s.len() > MAX_STATE_BYTES)
    {
        return refuse("The request's `state` is too long.");
    }
    if q.response_type.as_deref() != Some("code") {
        return refuse("Only `response_type=code` is supported.");
    }
    let Some(challenge) = q.code_challenge.as_deref().filter(|c| !c.is_empty()) else {
        return refuse("PKCE is required: the client must send `code_challenge`.");
    };
    if q.code_challenge_method.as_deref() != Some("S256") {
        return refuse("PKCE `code_challenge_method` must be `S256`.");
    }
    if !pkce::valid_challenge(challenge) {
        return refuse("`code_challenge` is not an S256 challenge.");
    }
    if let Some(resource) = q.resource.as_deref()
        && !super::super::metadata::names_resource(resource, &p.resource)
    {
        return refuse("The requested `resource` is not this server.");
    }
    let scopes = match requested_scopes(&p.api_scopes, q.scope.as_deref()) {
        Ok(s) => s,
        Err(why) => return refuse(&why),
    };
    let pending = Pending {
        origin: address
            .map(|Extension(ClientAddress(a))| a)
            .or_else(|| peer.map(|Extension(ConnectInfo(p))| p.ip())),
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        metadata_document: client.metadata_document,
        redirect_presented: q.redirect_uri.is_some(),
        redirect_uri,
        state: q.state.clone(),
        challenge: challenge.to_owned(),
        scopes,
    };
    match consent_page(p, &headers, &pending).await {
        Ok(page) => page,
        Err(e) => e.into_response(),
    }
}

/// Stores the request and renders the consent page with its CSRF token and cookie.
async fn consent_page(
    p: &Proxy,
    headers: &HeaderMap,
    pending: &Pending,
) -> Result<Response, OAuthError> {
    let txn = fresh(32)?;
    let admitted = p
        .sign_ins
        .admit_counted(pending, PENDING_TTL)
        .await
        .map_err(|e| super::limit_failed(&e))?;
    if let Err(wait) = admitted {
        tracing::debug!(target: "idguard::oauth", client = %client_label(&pending.client_id), origin = ?pending.origin, "authorize: too many sign-ins in progress");
        return Ok(too_many_sign_ins(wait));
    }
    if let Err(e) = p
        .put_sealed(RecordKind::Pending, &txn, pending, PENDING_TTL)
        .await
    {
        p.sign_ins.release_counted(pending).await;
        return Err(e);
    }
    let nonce = match html::cookie_value(headers, html::CSRF_COOKIE).filter(|n| n.len() >= 32) {
        Some(n) => n.to_owned(),
        None => fresh(24)?,
    };
    let csrf = p
        .keys
        .stamp(Purpose::Csrf, format!("{txn}|{nonce}").as_bytes())
        .ok_or_else(|| OAuthError::new("server_error", "cannot render consent"))?;
    let mut res = html::consent_page(&html::Consent {
        client_name: &pending.client_name,
        client_id: &pending.client_id,
        metadata_document: pending.metadata_document,
        redirect_uri: &pending.redirect_uri,
        scopes: &pending.scopes,
        downstream: &p.settings.consent_scopes,
        resource: &p.resource,
        txn: &txn,
        csrf: &csrf,
    });
    html::set_cookie(&mut res, html::CSRF_COOKIE, &nonce, PENDING_TTL);
    Ok(res)
}

#[derive(Deserialize)]
pub(super) struct ConsentForm {
    txn: Option<String>,
    csrf: Option<String>,
    decision: Option<String>,
}

pub(super) async fn consent(
    State(guard): State<super::ProxyState>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let p = &*guard.proxy;
    let Ok(Form(form)) = form else {
        return html::error_page(StatusCode::BAD_REQUEST, "The consent form is malformed.");
    };
    let (Some(txn), Some(csrf)) = (form.txn.as_deref(), form.csrf.as_deref()) else {
        return html::error_page(StatusCode::FORBIDDEN, "The consent form is incomplete.");
    };
    // Defence in depth on top of the CSRF token: browsers say where a form came from.
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "The consent form came from another site.",
        );
    }
    let Some(nonce) = html::cookie_value(&headers, html::CSRF_COOKIE) else {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "The consent cookie is missing; start signing in again.",
        );
    };
    if !p
        .keys
        .check_stamp(Purpose::Csrf, format!("{txn}|{nonce}").as_bytes(), csrf)
    {
        tracing::warn!(target: "idguard::oauth", "consent: CSRF check failed");
        return html::error_page(StatusCode::FORBIDDEN, "The consent form is not valid.");
    }
    // Single use: one consent per authorization request.
    let pending: Pending = match p.take_sealed(RecordKind::Pending, txn).await {
        Ok(Some(pending)) => {
            // The Entra leg (if approved) holds a place of its own.
            p.sign_ins.release_counted(&pending).await;
            pending
        }
        Ok(None) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in request expired or was already answered; start again.",
            );
        }
        Err(e) => return e.into_response(),
    };
    if form.decision.as_deref() != Some("approve") {
        tracing::info!(target: "idguard::oauth", "consent denied");
        let mut params = vec![
            ("error", "access_denied"),
            ("error_description", "the user declined"),
        ];
        if let Some(s) = pending.state.as_deref() {
            params.push(("state", s));
        }
        return to_client(&pending.redirect_uri, &params, p.issuer());
    }
    p.count(Event::Consented);
    tracing::info!(target: "idguard::oauth", "consent given");
    let verifier = match fresh(48) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let leg = Leg {
        pending,
        verifier,
        claims: None,
        rounds: 0,
    };
    super::entra_leg::start(p, leg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Vec<String> {
        vec![
            "api://app/mcp.tools".to_owned(),
            "api://app/mcp.admin".to_owned(),
        ]
    }

    #[test]
    fn no_scope_asks_for_all_of_the_api() {
        assert_eq!(requested_scopes(&api(), None).unwrap(), api());
        assert_eq!(requested_scopes(&api(), Some("")).unwrap(), api());
        // OpenID scopes alone ask for nothing more.
        assert_eq!(
            requested_scopes(&api(), Some("openid profile email offline_access")).unwrap(),
            api()
        );
    }

    #[test]
    fn scopes_are_narrowed_by_full_or_short_name() {
        assert_eq!(
            requested_scopes(&api(), Some("mcp.tools offline_access")).unwrap(),
            ["api://app/mcp.tools"]
        );
        assert_eq!(
            requested_scopes(&api(), Some("api://app/mcp.admin  mcp.admin mcp.tools")).unwrap(),
            ["api://app/mcp.admin", "api://app/mcp.tools"],
            "in the order asked, once each"
        );
    }

    #[test]
    fn a_scope_of_another_api_is_refused() {
        for scope in ["mcp.other", "api://other/mcp.tools", "MCP.TOOLS", "tools"] {
            let err = requested_scopes(&api(), Some(scope)).unwrap_err();
            assert!(err.contains(scope), "{err}");
        }
    }
}
