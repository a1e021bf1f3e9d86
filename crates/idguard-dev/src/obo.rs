//! The emulator's on-behalf-of token endpoint and its Microsoft Graph emulation.
//!
//! `POST /{tenant}/oauth2/v2.0/token` accepts the jwt-bearer OBO grant: it checks the
//! middle tier's client credential (the secret, a PS256 certificate assertion whose `aud`
//! is this exact endpoint, or a federated assertion the emulator signed; or the secret of
//! another API registered with [`DevEntraBuilder::api`](crate::DevEntraBuilder::api)),
//! checks the user assertion (RS256 by a published key, `aud` = the API that asks, not
//! expired), applies the
//! per-user failure mode, and issues a Graph (or other resource) token. The
//! `authorization_code` and `refresh_token` grants on the same endpoint are the sign-in
//! module's (`sign_in/`); they share the credential check and the answer's shape.
//!
//! Under `/graph/v1.0`: `GET /me`, `GET /me/transitiveMemberOf/microsoft.graph.group`
//! (paged, 100 a page) and `POST /me/checkMemberGroups`, for Graph tokens it issued.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::server::entra_error;
use super::{DevEndpoint, DevGraphFailure, DevOboFailure, DevUser, Shared};

/// The resource id of Microsoft Graph.
pub(crate) const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The application id of Microsoft Graph.
pub(crate) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// The audience of federated (managed identity) assertions.
pub(crate) const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Scopes a `.default` Graph request is granted (what the dev app registration "consented").
pub(crate) const GRAPH_DEFAULT_SCOPES: &str = "User.Read GroupMember.Read.All";

pub(crate) fn routes(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route(
            "/{tenant}/oauth2/v2.0/token",
            axum::routing::post(token_endpoint),
        )
        .route("/graph/v1.0/me", axum::routing::get(graph_me))
        .route(
            "/graph/v1.0/me/transitiveMemberOf/microsoft.graph.group",
            axum::routing::get(graph_transitive),
        )
        .route(
            "/graph/v1.0/me/checkMemberGroups",
            axum::routing::post(graph_check),
        )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Splits and verifies a compact JWS; returns (header, claims) when the signature holds.
pub(crate) fn verify_jws(
    token: &str,
    alg: &'static dyn signature::VerificationAlgorithm,
    public_key_der: &[u8],
) -> Option<(Value, Value)> {
    let (header, claims) = decode_unverified(token)?;
    let (input, sig) = token.rsplit_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    UnparsedPublicKey::new(alg, public_key_der)
        .verify(input.as_bytes(), &sig)
        .ok()?;
    Some((header, claims))
}

pub(crate) fn decode_unverified(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    Some((h, c))
}

/// A token signed by one of the emulator's keys (RS256), with its claims.
fn verify_own(s: &Shared, token: &str) -> Option<Value> {
    let (header, _) = decode_unverified(token)?;
    if header.get("alg")?.as_str()? != "RS256" {
        return None;
    }
    let kid = header.get("kid")?.as_str()?;
    let der = {
        let ring = s
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.published
            .iter()
            .find(|k| k.kid == kid)?
            .public_key_der()
    };
    verify_jws(token, &signature::RSA_PKCS1_2048_8192_SHA256, &der).map(|(_, c)| c)
}

fn str_claim<'a>(claims: &'a Value, name: &str) -> &'a str {
    claims.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn exp_of(claims: &Value) -> u64 {
    claims.get("exp").and_then(Value::as_u64).unwrap_or(0)
}

fn invalid_client(code: u32, text: &str) -> Response {
    entra_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        &format!("AADSTS{code}: {text}"),
    )
}

pub(crate) fn invalid_grant(code: u32, text: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        code,
        &format!("AADSTS{code}: {text}"),
    )
}

/// Checks the middle tier's credential; `Some` is Entra's refusal.
pub(crate) fn refuse_client(
    s: &Shared,
    form: &HashMap<String, String>,
    endpoint: &str,
) -> Option<Response> {
    if let Some(secret) = form.get("client_secret") {
        return if *secret == s.client_secret {
            None
        } else {
            Some(invalid_client(
                7_000_215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ))
        };
    }
    let (Some(kind), Some(assertion)) = (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) else {
        return Some(invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if kind != ASSERTION_TYPE {
        return Some(invalid_client(50_027, "Invalid client assertion type."));
    }
    let Some((header, _)) = decode_unverified(assertion) else {
        return Some(invalid_client(
            50_027,
            "Invalid JWT token. The token is malformed.",
        ));
    };
    let now = unix_now();
    if let Some(thumb) = header.get("x5t#S256").and_then(Value::as_str) {
        // A certificate assertion: PS256 by a registered certificate.
        let der = {
            let certs = s
                .certificates
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            certs
                .iter()
                .find(|(t, _)| t == thumb)
                .map(|(_, der)| der.clone())
        };
        let Some(der) = der else {
            return Some(invalid_client(
                700_027,
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            ));
        };
        if header.get("alg").and_then(Value::as_str) != Some("PS256") {
            return Some(invalid_client(
                5_002_738,
                "Invalid JWT token. 'alg' must be PS256.",
            ));
        }
        let Some((_, claims)) = verify_jws(assertion, &signature::RSA_PSS_2048_8192_SHA256, &der)
        else {
            return Some(invalid_client(
                700_027,
                "Client assertion failed signature validation.",
            ));
        };
        if str_claim(&claims, "aud") != endpoint {
            return Some(invalid_client(
                700_212,
                "No matching federated identity record found for presented assertion audience.",
            ));
        }
        if str_claim(&claims, "iss") != s.api_client_id
            || str_claim(&claims, "sub") != s.api_client_id
        {
            return Some(invalid_client(
                700_021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            ));
        }
        let nbf = claims.get("nbf").and_then(Value::as_u64).unwrap_or(0);
        let exp = exp_of(&claims);
        if exp <= now || nbf > now + 300 || exp.saturating_sub(nbf) > 600 {
            return Some(invalid_client(
                700_024,
                "Client assertion is not within its valid time range.",
            ));
        }
        let jti = str_claim(&claims, "jti").to_owned();
        let fresh = !jti.is_empty()
            && s.used_jti
                .lock()
                .map(|mut used| used.insert(jti))
                .unwrap_or(false);
        if !fresh {
            return Some(invalid_client(
                700_025,
                "Client assertion contains an invalid or replayed 'jti'.",
            ));
        }
        return None;
    }
    // A federated assertion: an app-only token the emulator signed for the managed identity.
    let Some(claims) = verify_own(s, assertion) else {
        return Some(invalid_client(
            700_211,
            "No matching federated identity record found for presented assertion issuer.",
        ));
    };
    if str_claim(&claims, "aud") != TOKEN_EXCHANGE_AUDIENCE
        || str_claim(&claims, "sub") != s.federated_subject
    {
        return Some(invalid_client(
            700_213,
            "No matching federated identity record found for presented assertion subject.",
        ));
    }
    if exp_of(&claims) <= now {
        return Some(invalid_client(
            700_024,
            "Client assertion is not within its valid time range.",
        ));
    }
    None
}

async fn token_endpoint(
    State(s): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.count(DevEndpoint::Token);
    match form.get("grant_type").map(String::as_str) {
        Some(super::sign_in::AUTHORIZATION_CODE) => {
            return super::sign_in::redeem_code(&s, &raw, &form);
        }
        Some(super::sign_in::REFRESH_TOKEN) => {
            return super::sign_in::redeem_refresh(&s, &raw, &form);
        }
        _ => {}
    }
    let tid = raw.to_ascii_lowercase();
    if !s.knows_tenant(&tid) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50_194,
            "AADSTS50194: On-behalf-of requests must target the tenant of the incoming token, not a multi-tenant endpoint.",
        );
    }
    let endpoint = format!("{}/{tid}/oauth2/v2.0/token", s.base_url);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != JWT_BEARER || field("requested_token_use") != "on_behalf_of" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    // The dev API itself, or another API registered as a confidential client.
    let middle = if field("client_id") == s.api_client_id {
        None
    } else {
        match s.apis.iter().find(|a| a.client_id == field("client_id")) {
            Some(api) => Some(api),
            None => return unknown_client(),
        }
    };
    let refused = match middle {
        None => refuse_client(&s, &form, &endpoint),
        Some(api) => (form.get("client_secret") != Some(&api.client_secret)).then(|| {
            invalid_client(
                7_000_215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            )
        }),
    };
    if let Some(answer) = refused {
        return answer;
    }
    let Some(claims) = verify_own(&s, field("assertion")) else {
        return invalid_grant(50_013, "Assertion failed signature validation.");
    };
    let aud = str_claim(&claims, "aud");
    if !middle.map_or(aud == s.api_client_id, |api| api.is_audience(aud)) {
        return invalid_grant(
            500_131,
            "Assertion audience does not match the Client app presenting the assertion.",
        );
    }
    if exp_of(&claims) <= unix_now() {
        return invalid_grant(
            500_133,
            "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion.",
        );
    }
    if str_claim(&claims, "tid") != tid {
        return invalid_grant(50_013, "Assertion contains an invalid tenant.");
    }
    if str_claim(&claims, "idtyp") == "app" {
        return invalid_grant(
            50_013,
            "Assertion is an app-only token; on-behalf-of needs a user token.",
        );
    }
    let oid = str_claim(&claims, "oid").to_owned();
    let delay = s.obo_failures.lock().ok().and_then(|f| match f.get(&oid) {
        Some(DevOboFailure::Slow { millis }) => Some(*millis),
        _ => None,
    });
    if let Some(millis) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
    if let Some(answer) = failure_for(&s, &oid) {
        return answer;
    }
    // One resource per request; the resource is what precedes the last `/`.
    let scopes: Vec<&str> = field("scope")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    let resources: Vec<&str> = scopes
        .iter()
        .filter(|s| !matches!(**s, "openid" | "profile" | "offline_access"))
        .map(|s| s.rsplit_once('/').map_or(GRAPH_RESOURCE, |(r, _)| r))
        .collect();
    let Some(resource) = resources.first().copied() else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70_011,
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    };
    if resources.iter().any(|r| *r != resource) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            28_000,
            "AADSTS28000: Provided value for the input parameter scope is not valid because it contains more than one resource.",
        );
    }
    let short: Vec<&str> = scopes
        .iter()
        .filter_map(|s| s.rsplit_once('/').map(|(_, v)| v).or(Some(s)))
        .collect();
    let scp = if short.contains(&".default") {
        if resource == GRAPH_RESOURCE {
            GRAPH_DEFAULT_SCOPES.to_owned()
        } else {
            "user_impersonation".to_owned()
        }
    } else {
        short.join(" ")
    };
    let appid = middle.map_or(s.api_client_id.as_str(), |api| api.client_id.as_str());
    let access_token = match downstream_token(&s, &tid, &oid, resource, &scp, appid) {
        Ok(t) => t,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let granted: Vec<String> = scp.split(' ').map(|v| format!("{resource}/{v}")).collect();
    token_response(&s, granted.join(" "), access_token, [])
}

/// A v1 access token for a downstream resource (Graph or another API), issued to client
/// `appid` for user `oid`: what the on-behalf-of and the sign-in grants hand out.
pub(crate) fn downstream_token(
    s: &Shared,
    tid: &str,
    oid: &str,
    resource: &str,
    scp: &str,
    appid: &str,
) -> Result<String, super::DevError> {
    let lifetime = s.downstream_lifetime.load(Ordering::Relaxed);
    let now = unix_now();
    s.sign(&json!({
        "aud": resource,
        "iss": super::issuer_v1(tid),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": tid,
        "oid": oid,
        "appid": appid,
        "scp": scp,
        "ver": "1.0",
        "uti": uuid::Uuid::new_v4().to_string(),
    }))
}

/// The token endpoint's success answer: `token_type`, `scope`, `expires_in`,
/// `ext_expires_in`, `access_token`, `refresh_in` when configured, then `extra`
/// (`refresh_token`, `id_token`).
pub(crate) fn token_response(
    s: &Shared,
    scope: String,
    access_token: String,
    extra: impl IntoIterator<Item = (&'static str, Value)>,
) -> Response {
    let lifetime = s.downstream_lifetime.load(Ordering::Relaxed);
    let mut body = serde_json::Map::new();
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("scope".into(), json!(scope));
    body.insert("expires_in".into(), json!(lifetime));
    body.insert("ext_expires_in".into(), json!(lifetime));
    body.insert("access_token".into(), json!(access_token));
    let refresh_in = s.refresh_in.load(Ordering::Relaxed);
    if refresh_in > 0 {
        body.insert("refresh_in".into(), json!(refresh_in));
    }
    for (k, v) in extra {
        body.insert(k.into(), v);
    }
    Json(Value::Object(body)).into_response()
}

/// The configured failure for user `oid`, as Entra would answer it.
fn failure_for(s: &Shared, oid: &str) -> Option<Response> {
    let mut failures = s
        .obo_failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let failure = failures.get_mut(oid)?;
    Some(match failure {
        DevOboFailure::ConsentRequired => consent_required(s),
        DevOboFailure::MfaRequired => mfa_required(s),
        DevOboFailure::Throttled { retry_after } => {
            let mut res = entra_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90_055,
                "AADSTS90055: The request has been throttled.",
            );
            if let Ok(v) = header::HeaderValue::from_str(&retry_after.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        }
        DevOboFailure::Slow { .. } => return None,
        DevOboFailure::ServerError { times } => {
            if *times == 0 {
                failures.remove(oid);
                return None;
            }
            *times -= 1;
            (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response()
        }
    })
}

/// `invalid_grant`, AADSTS65001, suberror `consent_required`: the user has not consented.
pub(crate) fn consent_required(s: &Shared) -> Response {
    let body = json!({
        "error": "invalid_grant",
        "error_description": format!("AADSTS65001: The user or administrator has not consented to use the application with ID '{}'. Send an interactive authorization request for this user and resource.", s.api_client_id),
        "error_codes": [65001],
        "suberror": "consent_required",
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `interaction_required`, AADSTS50079, with the [`MFA_CLAIMS`] challenge.
pub(crate) fn mfa_required(s: &Shared) -> Response {
    let body = json!({
        "error": "interaction_required",
        "error_description": format!("AADSTS50079: Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multifactor authentication to access '{}'.", s.api_client_id),
        "error_codes": [50079],
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "claims": MFA_CLAIMS,
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `unauthorized_client`, AADSTS700016: not the dev API's client id.
pub(crate) fn unknown_client() -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700_016,
        "AADSTS700016: Application was not found in the directory.",
    )
}

/// The `claims` Entra sends with the MFA failure (a JSON string, not base64).
pub const MFA_CLAIMS: &str = r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b203-500f535113b1"]}}}"#;

/// The Graph caller: a user of the emulator, from a Graph token it issued.
fn graph_caller(s: &Shared, headers: &HeaderMap) -> Result<DevUser, Box<Response>> {
    s.count(DevEndpoint::Graph);
    let unauthorized = || {
        Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token validation failure."}})),
            )
                .into_response(),
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let claims = verify_own(s, token).ok_or_else(unauthorized)?;
    let aud = str_claim(&claims, "aud");
    if !(aud == GRAPH_RESOURCE || aud == GRAPH_APP_ID) || exp_of(&claims) <= unix_now() {
        return Err(unauthorized());
    }
    let oid = str_claim(&claims, "oid");
    let user = s
        .users
        .iter()
        .find(|u| u.object_id == oid)
        .cloned()
        .ok_or_else(unauthorized)?;
    // Throttling, as Graph does it: 429 with Retry-After.
    let mut failures = s
        .graph_failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(DevGraphFailure::Throttled { times, retry_after }) = failures.get_mut(oid) {
        if *times > 0 {
            *times -= 1;
            let mut res = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(
                    json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}}),
                ),
            )
                .into_response();
            if let Ok(v) = header::HeaderValue::from_str(&retry_after.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(Box::new(res));
        }
        failures.remove(oid);
    }
    Ok(user)
}

fn has_graph_scope(headers: &HeaderMap, s: &Shared, scope: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| verify_own(s, t))
        .is_some_and(|c| str_claim(&c, "scp").split(' ').any(|v| v == scope))
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}})),
    )
        .into_response()
}

async fn graph_me(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let user = match graph_caller(&s, &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let given = user.name.split(' ').next().unwrap_or_default().to_owned();
    let surname = user.name.split(' ').nth(1).unwrap_or_default().to_owned();
    Json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
        "id": user.object_id,
        "displayName": user.name,
        "givenName": given,
        "surname": surname,
        "userPrincipalName": user.upn,
        "mail": user.upn,
        "jobTitle": null,
        "businessPhones": [],
    }))
    .into_response()
}

async fn graph_transitive(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match graph_caller(&s, &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !has_graph_scope(&headers, &s, "GroupMember.Read.All") {
        return forbidden();
    }
    const PAGE: usize = 100;
    let skip: usize = q
        .get("$skiptoken")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = user
        .groups
        .iter()
        .skip(skip)
        .take(PAGE)
        .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g}))
        .collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups",
        "value": page,
    });
    if skip + PAGE < user.groups.len()
        && let Some(map) = body.as_object_mut()
    {
        map.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/graph/v1.0/me/transitiveMemberOf/microsoft.graph.group?$skiptoken={}",
                s.base_url,
                skip + PAGE
            )),
        );
    }
    Json(body).into_response()
}

async fn graph_check(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Response {
    let user = match graph_caller(&s, &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !has_graph_scope(&headers, &s, "GroupMember.Read.All") {
        return forbidden();
    }
    let ids: Vec<&str> = req
        .get("groupIds")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if ids.len() > 20 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "Request_BadRequest", "message": "Too many group ids (at most 20)."}})),
        )
            .into_response();
    }
    let member: Vec<&str> = ids
        .into_iter()
        .filter(|id| user.groups.iter().any(|g| g == id))
        .collect();
    Json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
        "value": member,
    }))
    .into_response()
}
