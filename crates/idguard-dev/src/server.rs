//! The emulator's HTTP routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{DevEndpoint, Shared};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(discovery_v1),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks_v2))
        .route("/{tenant}/discovery/keys", get(jwks_v1));
    super::sign_in::routes(super::obo::routes(router)).with_state(shared)
}

/// What a tenant path segment resolves to.
enum Segment {
    /// A known tenant id.
    Tenant(String),
    /// `organizations` or `common`: issuer templates with `{tenantid}`.
    Multi(String),
}

fn segment(shared: &Shared, raw: &str) -> Option<Segment> {
    let lower = raw.to_ascii_lowercase();
    match lower.as_str() {
        "organizations" | "common" => Some(Segment::Multi(lower)),
        tid if shared.knows_tenant(tid) => Some(Segment::Tenant(lower)),
        _ => None,
    }
}

pub(crate) fn unknown_tenant(raw: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        90002,
        &format!(
            "AADSTS90002: Tenant '{raw}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

/// Entra's error body shape.
pub(crate) fn entra_error(
    status: StatusCode,
    error: &str,
    code: u32,
    description: &str,
) -> Response {
    let body = json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": "",
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

async fn discovery_v2(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    s.count(DevEndpoint::Discovery);
    let (path, issuer_tenant) = match segment(&s, &raw) {
        Some(Segment::Tenant(tid)) => (tid.clone(), tid),
        Some(Segment::Multi(m)) => (m, "{tenantid}".to_owned()),
        None => return unknown_tenant(&raw),
    };
    let b = &s.base_url;
    Json(json!({
        "token_endpoint": format!("{b}/{path}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{path}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{b}/{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{b}/{path}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{b}/{path}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{b}/{path}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{b}/{path}/kerberos"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

async fn discovery_v1(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    s.count(DevEndpoint::Discovery);
    let (path, issuer_tenant) = match segment(&s, &raw) {
        Some(Segment::Tenant(tid)) => (tid.clone(), tid),
        Some(Segment::Multi(m)) => (m, "{tenantid}".to_owned()),
        None => return unknown_tenant(&raw),
    };
    let b = &s.base_url;
    Json(json!({
        "token_endpoint": format!("{b}/{path}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{path}/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": format!("https://sts.windows.net/{issuer_tenant}/"),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{b}/{path}/oauth2/authorize"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{b}/{path}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "check_session_iframe": format!("{b}/{path}/oauth2/checksession"),
        "userinfo_endpoint": format!("{b}/{path}/openid/userinfo"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

async fn jwks_v2(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    jwks(&s, &raw, true)
}

async fn jwks_v1(State(s): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    jwks(&s, &raw, false)
}

fn jwks(s: &Shared, raw: &str, v2: bool) -> Response {
    s.count(DevEndpoint::Jwks);
    if segment(s, raw).is_none() {
        return unknown_tenant(raw);
    }
    if !s.jwks_available.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "jwks unavailable").into_response();
    }
    let ring = s
        .keys
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let keys: Vec<Value> = ring
        .published
        .iter()
        .map(|k| {
            let issuer = v2.then(|| {
                let tenant = k.bound_tenant.as_deref().unwrap_or("{tenantid}");
                format!("{}/{tenant}/v2.0", s.base_url)
            });
            k.jwk(issuer)
        })
        .collect();
    Json(json!({ "keys": keys })).into_response()
}
