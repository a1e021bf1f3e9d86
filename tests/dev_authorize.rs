//! The dev Entra emulator's interactive sign-in over real HTTP on loopback: `/authorize`
//! with PKCE, the `authorization_code` and `refresh_token` grants, every refusal with its
//! exact `error` and AADSTS code, and the per-user sign-in failure modes.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::HashMap;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idguard_dev::{DevEndpoint, DevEntra, DevSignInFailure, FINANCE_GROUP_ID, MFA_CLAIMS};
use reqwest::StatusCode;
use serde_json::Value;

/// Registered at build time; nothing listens there (redirects are not followed).
const REDIRECT: &str = "http://127.0.0.1:9/callback";

async fn entra() -> DevEntra {
    DevEntra::builder()
        .redirect_uri(REDIRECT)
        .start()
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// (verifier, S256 challenge).
fn pkce() -> (String, String) {
    let bytes = [
        uuid::Uuid::new_v4().into_bytes(),
        uuid::Uuid::new_v4().into_bytes(),
    ]
    .concat();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

fn api_scope(entra: &DevEntra) -> String {
    format!("api://{}/mcp.tools", entra.api_client_id())
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The claims of a token answer's access token.
fn access_claims(answer: &Value) -> Value {
    claims_of(answer["access_token"].as_str().unwrap())
}

async fn authorize(entra: &DevEntra, params: &[(&str, &str)]) -> reqwest::Response {
    authorize_at(entra, entra.tenant_id(), params).await
}

/// `GET /{tenant}/oauth2/v2.0/authorize?{params}`.
async fn authorize_at(
    entra: &DevEntra,
    tenant: &str,
    params: &[(&str, &str)],
) -> reqwest::Response {
    let mut url = reqwest::Url::parse(&entra.authorize_endpoint(tenant)).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    http().get(url).send().await.unwrap()
}

/// The query of a `302` to [`REDIRECT`].
fn redirected(res: &reqwest::Response) -> HashMap<String, String> {
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap();
    let url = reqwest::Url::parse(location).unwrap();
    assert_eq!(
        format!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        REDIRECT
    );
    url.query_pairs().into_owned().collect()
}

/// Asserts an error redirect with `error` and AADSTS `code`, and that `state` came back.
fn assert_error_redirect(res: &reqwest::Response, error: &str, code: u32) {
    let q = redirected(res);
    assert_eq!(q["error"], error, "{q:?}");
    assert!(
        q["error_description"].starts_with(&format!("AADSTS{code}:")),
        "{q:?}"
    );
    assert_eq!(q["state"], "st-1");
    assert!(!q.contains_key("code"));
}

/// Asserts Entra's error page: no redirect, the AADSTS code on the page.
async fn assert_error_page(res: reqwest::Response, code: u32) {
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none(), "never a redirect");
    let body = res.text().await.unwrap();
    assert!(body.contains(&format!("AADSTS{code}:")), "{body}");
}

/// Authorize parameters for a PKCE sign-in of `user` (`login_hint`) with `scope`.
fn params(
    entra: &DevEntra,
    user: Option<&str>,
    scope: &str,
    challenge: &str,
) -> Vec<(&'static str, String)> {
    let mut p = vec![
        ("client_id", entra.api_client_id().to_owned()),
        ("response_type", "code".to_owned()),
        ("redirect_uri", REDIRECT.to_owned()),
        ("scope", scope.to_owned()),
        ("state", "st-1".to_owned()),
        ("nonce", "n-1".to_owned()),
        ("code_challenge", challenge.to_owned()),
        ("code_challenge_method", "S256".to_owned()),
    ];
    if let Some(u) = user {
        p.push(("login_hint", u.to_owned()));
    }
    p
}

async fn authorize_with(entra: &DevEntra, p: &[(&str, String)]) -> reqwest::Response {
    let borrowed: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    authorize(entra, &borrowed).await
}

/// Signs `user` in with `scope` (plus `extra` authorize parameters); returns (code,
/// verifier).
async fn sign_in(
    entra: &DevEntra,
    user: &str,
    scope: &str,
    extra: &[(&'static str, &str)],
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let mut p = params(entra, Some(user), scope, &challenge);
    p.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let res = authorize_with(entra, &p).await;
    let q = redirected(&res);
    assert_eq!(q["state"], "st-1");
    assert!(q.contains_key("session_state"));
    (q["code"].clone(), verifier)
}

/// Signs `user` in with `scope` and redeems the code for the API scope: the answer.
async fn tokens_for(entra: &DevEntra, user: &str, scope: &str) -> Value {
    let (code, verifier) = sign_in(entra, user, scope, &[]).await;
    let form = redeem_form(entra, &code, &verifier, &api_scope(entra));
    let (status, body) = token(entra, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The form of a code redemption with the client secret.
fn redeem_form(entra: &DevEntra, code: &str, verifier: &str, scope: &str) -> Form {
    Form(vec![
        ("grant_type".into(), "authorization_code".into()),
        ("client_id".into(), entra.api_client_id().into()),
        ("client_secret".into(), entra.client_secret().into()),
        ("code".into(), code.into()),
        ("redirect_uri".into(), REDIRECT.into()),
        ("code_verifier".into(), verifier.into()),
        ("scope".into(), scope.into()),
    ])
}

fn refresh_form(entra: &DevEntra, refresh_token: &str, scope: &str) -> Form {
    Form(vec![
        ("grant_type".into(), "refresh_token".into()),
        ("client_id".into(), entra.api_client_id().into()),
        ("client_secret".into(), entra.client_secret().into()),
        ("refresh_token".into(), refresh_token.into()),
        ("scope".into(), scope.into()),
    ])
}

/// A token request form whose fields tests adjust.
struct Form(Vec<(String, String)>);

impl Form {
    fn set(mut self, key: &str, value: &str) -> Self {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.into(), value.into()));
        self
    }

    fn without(mut self, key: &str) -> Self {
        self.0.retain(|(k, _)| k != key);
        self
    }
}

async fn token(entra: &DevEntra, form: &Form) -> (StatusCode, Value) {
    let res = http()
        .post(entra.token_endpoint(entra.tenant_id()))
        .form(&form.0)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// Asserts Entra's JSON error with `error` and AADSTS `code`.
fn assert_token_error(answer: &(StatusCode, Value), error: &str, code: u64) {
    let (status, body) = answer;
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"][0], code, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}:")),
        "{body}"
    );
    let expected = if error == "invalid_client" { 401 } else { 400 };
    assert_eq!(status.as_u16(), expected, "{body}");
}

const OIDC: &str = "openid profile email offline_access";

#[tokio::test]
async fn pkce_code_flow_for_alice_yields_a_v2_token_the_guard_accepts() {
    let entra = entra().await;
    let scope = format!("{OIDC} {}", api_scope(&entra));
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let (status, body) = token(
        &entra,
        &redeem_form(&entra, &code, &verifier, &api_scope(&entra)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], api_scope(&entra));
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    assert!(body["refresh_token"].as_str().unwrap().len() > 40);

    let at = access_claims(&body);
    assert_eq!(at["ver"], "2.0");
    assert_eq!(at["aud"], entra.api_client_id());
    assert_eq!(at["iss"], entra.issuer_v2(entra.tenant_id()));
    assert_eq!(at["scp"], "mcp.tools");
    assert_eq!(at["azp"], entra.api_client_id());
    assert_eq!(at["azpacr"], "1", "a client secret");
    assert_eq!(at["preferred_username"], "alice@contoso.example");
    assert_eq!(at["roles"], serde_json::json!(["Tools.Admin"]));
    assert_eq!(at["groups"], serde_json::json!([FINANCE_GROUP_ID]));
    assert_eq!(at["amr"], serde_json::json!(["pwd", "mfa"]));

    let id = claims_of(body["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], entra.api_client_id());
    assert_eq!(id["nonce"], "n-1");
    assert_eq!(id["preferred_username"], "alice@contoso.example");
    assert_eq!(id["email"], "alice@contoso.example");
    assert_eq!(id["sub"], at["sub"]);

    assert_eq!(entra.requests(DevEndpoint::Authorize), 1);
    assert_eq!(entra.requests(DevEndpoint::Token), 1);

    // The access token is the kind the guard validates.
    let stack = common::stack_with(entra, |b| b).await;
    let me = stack.me(body["access_token"].as_str()).await;
    assert_eq!(me.status(), 200);
    let principal: Value = me.json().await.unwrap();
    assert_eq!(principal["object_id"], at["oid"], "{principal}");
}

#[tokio::test]
async fn without_offline_access_or_openid_only_an_access_token() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "bob", &scope, &[]).await;
    let (status, body) = token(&entra, &redeem_form(&entra, &code, &verifier, &scope)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
    assert_eq!(
        access_claims(&body)["preferred_username"],
        "bob@contoso.example"
    );
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_keeps_working() {
    let entra = entra().await;
    let scope = format!("{OIDC} {}", api_scope(&entra));
    let first = tokens_for(&entra, "alice", &scope).await;
    let rt1 = first["refresh_token"].as_str().unwrap();

    let (status, second) = token(&entra, &refresh_form(&entra, rt1, &api_scope(&entra))).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2, "a new refresh token");
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(second["scope"], api_scope(&entra));
    let at = access_claims(&second);
    assert_eq!(at["scp"], "mcp.tools");
    assert_eq!(at["oid"], access_claims(&first)["oid"]);
    assert!(
        claims_of(second["id_token"].as_str().unwrap())
            .get("nonce")
            .is_none()
    );

    // As in Entra, redeeming a refresh token does not invalidate it.
    let (status, _) = token(&entra, &refresh_form(&entra, rt1, &api_scope(&entra))).await;
    assert_eq!(status, StatusCode::OK);
    // The same grant also yields a Graph token.
    let (status, graph) = token(&entra, &refresh_form(&entra, rt2, "User.Read")).await;
    assert_eq!(status, StatusCode::OK, "{graph}");
    assert_eq!(graph["scope"], "https://graph.microsoft.com/User.Read");
    assert_eq!(access_claims(&graph)["aud"], "https://graph.microsoft.com");
    assert_eq!(entra.requests(DevEndpoint::Token), 4);
}

#[tokio::test]
async fn refresh_needs_scope_a_known_token_and_a_granted_scope() {
    let entra = entra().await;
    let scope = format!("offline_access {}", api_scope(&entra));
    let body = tokens_for(&entra, "alice", &scope).await;
    let rt = body["refresh_token"].as_str().unwrap();

    let missing = token(&entra, &refresh_form(&entra, rt, "").without("scope")).await;
    assert_token_error(&missing, "invalid_request", 900_144);
    let unknown = token(&entra, &refresh_form(&entra, "0.Anope", &api_scope(&entra))).await;
    assert_token_error(&unknown, "invalid_grant", 70_000);
    let ungranted = format!("api://{}/mcp.admin", entra.api_client_id());
    let answer = token(&entra, &refresh_form(&entra, rt, &ungranted)).await;
    assert_token_error(&answer, "invalid_grant", 65_001);
    assert_eq!(answer.1["suberror"], "consent_required");
}

#[tokio::test]
async fn revoked_refresh_tokens_answer_50173() {
    let entra = entra().await;
    let scope = format!("offline_access {}", api_scope(&entra));
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
        let (_, body) = token(
            &entra,
            &redeem_form(&entra, &code, &verifier, &api_scope(&entra)),
        )
        .await;
        tokens.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    let bob = tokens_for(&entra, "bob", &scope).await;

    assert_eq!(entra.revoke_refresh_tokens("alice").unwrap(), 2);
    for rt in &tokens {
        let answer = token(&entra, &refresh_form(&entra, rt, &api_scope(&entra))).await;
        assert_token_error(&answer, "invalid_grant", 50_173);
    }
    let bob_rt = bob["refresh_token"].as_str().unwrap();
    let (status, _) = token(&entra, &refresh_form(&entra, bob_rt, &api_scope(&entra))).await;
    assert_eq!(status, StatusCode::OK, "other users keep theirs");
    assert!(entra.revoke_refresh_tokens("nobody").is_err());
}

#[tokio::test]
async fn unregistered_redirect_uri_is_an_error_page_until_registered() {
    let entra = entra().await;
    let other = "http://127.0.0.1:10/cb";
    let (_, challenge) = pkce();
    let mut p = params(&entra, Some("alice"), "openid", &challenge);
    p.retain(|(k, _)| *k != "redirect_uri");
    p.push(("redirect_uri", other.to_owned()));
    assert_error_page(authorize_with(&entra, &p).await, 50_011).await;
    // Exact match: a trailing slash is another URI.
    let mut slash = params(&entra, Some("alice"), "openid", &challenge);
    slash.retain(|(k, _)| *k != "redirect_uri");
    slash.push(("redirect_uri", format!("{REDIRECT}/")));
    assert_error_page(authorize_with(&entra, &slash).await, 50_011).await;
    // Missing entirely.
    let mut none = params(&entra, Some("alice"), "openid", &challenge);
    none.retain(|(k, _)| *k != "redirect_uri");
    assert_error_page(authorize_with(&entra, &none).await, 900_971).await;

    entra.allow_redirect_uri(other);
    let res = authorize_with(&entra, &p).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{other}?code="))
    );
}

#[tokio::test]
async fn unknown_client_and_tenant_are_error_pages() {
    let entra = entra().await;
    let (_, challenge) = pkce();
    let mut p = params(&entra, Some("alice"), "openid", &challenge);
    p.retain(|(k, _)| *k != "client_id");
    p.push((
        "client_id",
        "11111111-2222-3333-4444-555555555555".to_owned(),
    ));
    assert_error_page(authorize_with(&entra, &p).await, 700_016).await;

    let p = params(&entra, Some("alice"), "openid", &challenge);
    let borrowed: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = authorize_at(&entra, "no-such-tenant", &borrowed).await;
    assert_error_page(res, 90_002).await;
}

#[tokio::test]
async fn a_code_is_single_use() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let form = redeem_form(&entra, &code, &verifier, &scope);
    assert_eq!(token(&entra, &form).await.0, StatusCode::OK);
    assert_token_error(&token(&entra, &form).await, "invalid_grant", 54_005);
    let unknown = redeem_form(&entra, "0.Anot-a-code", &verifier, &scope);
    assert_token_error(&token(&entra, &unknown).await, "invalid_grant", 70_008);
}

#[tokio::test]
async fn a_wrong_or_missing_verifier_is_refused() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, _) = sign_in(&entra, "alice", &scope, &[]).await;
    let (other_verifier, _) = pkce();
    let answer = token(&entra, &redeem_form(&entra, &code, &other_verifier, &scope)).await;
    assert_token_error(&answer, "invalid_grant", 501_481);

    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let form = redeem_form(&entra, &code, &verifier, &scope).without("code_verifier");
    assert_token_error(&token(&entra, &form).await, "invalid_request", 900_144);
}

#[tokio::test]
async fn the_redirect_uri_at_token_must_equal_authorizes() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let form = redeem_form(&entra, &code, &verifier, &scope)
        .set("redirect_uri", "http://127.0.0.1:9/other");
    assert_token_error(&token(&entra, &form).await, "invalid_grant", 500_112);
}

#[tokio::test]
async fn scope_is_required_at_token() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let form = redeem_form(&entra, &code, &verifier, &scope).without("scope");
    assert_token_error(&token(&entra, &form).await, "invalid_request", 900_144);
    let form = redeem_form(&entra, &code, &verifier, &scope).set("scope", "");
    assert_token_error(&token(&entra, &form).await, "invalid_scope", 28_003);
    // Neither refusal spent the code.
    let form = redeem_form(&entra, &code, &verifier, &scope);
    assert_eq!(token(&entra, &form).await.0, StatusCode::OK);
}

#[tokio::test]
async fn one_resource_per_token_request() {
    let entra = entra().await;
    let scope = format!("{} User.Read", api_scope(&entra));
    // Authorize may gather consent for two resources ...
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    // ... the token request names one.
    let answer = token(&entra, &redeem_form(&entra, &code, &verifier, &scope)).await;
    assert_token_error(&answer, "invalid_scope", 28_000);

    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let graph = "https://graph.microsoft.com/User.Read";
    let (status, body) = token(&entra, &redeem_form(&entra, &code, &verifier, graph)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let at = access_claims(&body);
    assert_eq!(at["aud"], "https://graph.microsoft.com");
    assert_eq!(at["scp"], "User.Read");
}

#[tokio::test]
async fn plain_or_missing_pkce_method_is_refused() {
    let entra = entra().await;
    let (verifier, challenge) = pkce();
    let mut plain = params(&entra, Some("alice"), "openid", &challenge);
    plain.retain(|(k, _)| *k != "code_challenge_method");
    plain.push(("code_challenge_method", "plain".to_owned()));
    assert_error_redirect(
        &authorize_with(&entra, &plain).await,
        "invalid_request",
        50_149,
    );
    // Without a method the challenge is `plain` (RFC 7636), refused too.
    let mut absent = params(&entra, Some("alice"), "openid", &verifier);
    absent.retain(|(k, _)| *k != "code_challenge_method");
    assert_error_redirect(
        &authorize_with(&entra, &absent).await,
        "invalid_request",
        50_149,
    );
    let short = params(&entra, Some("alice"), "openid", "abc");
    assert_error_redirect(
        &authorize_with(&entra, &short).await,
        "invalid_request",
        501_491,
    );
}

#[tokio::test]
async fn resource_must_be_the_app_id_uri_of_the_scopes_owner() {
    let entra = DevEntra::builder()
        .redirect_uri(REDIRECT)
        .identifier_uri("https://mcp.contoso.example/mcp")
        .start()
        .await
        .unwrap();
    let (_, challenge) = pkce();
    let scope = api_scope(&entra);
    let mut p = params(&entra, Some("alice"), &scope, &challenge);
    p.push(("resource", "https://mcp.other.example/mcp".to_owned()));
    assert_error_redirect(
        &authorize_with(&entra, &p).await,
        "invalid_target",
        9_010_010,
    );

    // A short scope name is a Graph scope: Graph has no `mcp.tools`.
    let short = params(&entra, Some("alice"), "mcp.tools", &challenge);
    assert_error_redirect(
        &authorize_with(&entra, &short).await,
        "invalid_scope",
        650_053,
    );

    // The API's Application ID URIs match its scopes.
    for resource in [
        format!("api://{}", entra.api_client_id()),
        "https://mcp.contoso.example/mcp".to_owned(),
    ] {
        let mut p = params(&entra, Some("alice"), &scope, &challenge);
        p.push(("resource", resource));
        assert!(redirected(&authorize_with(&entra, &p).await).contains_key("code"));
    }
    let (code, verifier) = sign_in(
        &entra,
        "alice",
        "https://mcp.contoso.example/mcp/mcp.tools",
        &[],
    )
    .await;
    let (status, body) = token(
        &entra,
        &redeem_form(
            &entra,
            &code,
            &verifier,
            "https://mcp.contoso.example/mcp/mcp.tools",
        )
        .set("resource", "https://graph.microsoft.com"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_codes"][0], 9_010_010);
}

#[tokio::test]
async fn sign_in_user_by_hint_default_or_picker() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (verifier, challenge) = pkce();

    // No hint, no default: the picker lists the tenant's users, each with a link carrying
    // the hint; a user of another tenant is not offered on a tenant's path.
    let res = authorize_with(&entra, &params(&entra, None, &scope, &challenge)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    let offers =
        |page: &str, upn: &str| page.contains(&format!("login_hint={}", upn.replace('@', "%40")));
    for upn in ["alice@contoso.example", "bob@contoso.example"] {
        assert!(offers(&page, upn), "{page}");
    }
    assert!(!offers(&page, "carol@fabrikam.example"), "{page}");
    // On `organizations`, every user.
    let res = authorize_at(
        &entra,
        "organizations",
        &params(&entra, None, &scope, &challenge)
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    let page = res.text().await.unwrap();
    assert!(offers(&page, "carol@fabrikam.example"), "{page}");
    // Silent sign-in with nobody to sign in.
    let mut silent = params(&entra, None, &scope, &challenge);
    silent.push(("prompt", "none".to_owned()));
    assert_error_redirect(
        &authorize_with(&entra, &silent).await,
        "login_required",
        50_058,
    );

    // The default user.
    entra.set_sign_in_user(Some("bob")).unwrap();
    let q = redirected(&authorize_with(&entra, &params(&entra, None, &scope, &challenge)).await);
    let (_, body) = token(&entra, &redeem_form(&entra, &q["code"], &verifier, &scope)).await;
    assert_eq!(
        access_claims(&body)["preferred_username"],
        "bob@contoso.example"
    );
    // A hint (here the sign-in name) wins over the default.
    let (code, verifier) = sign_in(&entra, "ALICE@contoso.example", &scope, &[]).await;
    let (_, body) = token(&entra, &redeem_form(&entra, &code, &verifier, &scope)).await;
    assert_eq!(
        access_claims(&body)["preferred_username"],
        "alice@contoso.example"
    );
    assert!(entra.set_sign_in_user(Some("mallory")).is_err());
    entra.set_sign_in_user(None).unwrap();
    let res = authorize_with(&entra, &params(&entra, None, &scope, &challenge)).await;
    assert_eq!(res.status(), StatusCode::OK, "back to the picker");

    // A user of another tenant cannot sign in to Contoso's path.
    let res = authorize_with(&entra, &params(&entra, Some("carol"), &scope, &challenge)).await;
    assert_error_page(res, 50_020).await;
}

#[tokio::test]
async fn consent_required_until_the_user_consents() {
    let entra = entra().await;
    entra
        .set_sign_in_failure("alice", Some(DevSignInFailure::ConsentRequired))
        .unwrap();
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let answer = token(&entra, &redeem_form(&entra, &code, &verifier, &scope)).await;
    assert_token_error(&answer, "invalid_grant", 65_001);
    assert_eq!(answer.1["suberror"], "consent_required");

    let (_, challenge) = pkce();
    let mut silent = params(&entra, Some("alice"), &scope, &challenge);
    silent.push(("prompt", "none".to_owned()));
    assert_error_redirect(
        &authorize_with(&entra, &silent).await,
        "consent_required",
        65_001,
    );

    let (code, verifier) = sign_in(&entra, "alice", &scope, &[("prompt", "consent")]).await;
    let (status, _) = token(&entra, &redeem_form(&entra, &code, &verifier, &scope)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn mfa_claims_round_trip() {
    let entra = entra().await;
    entra
        .set_sign_in_failure("bob", Some(DevSignInFailure::MfaRequired))
        .unwrap();
    let scope = format!("offline_access {}", api_scope(&entra));
    let api = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "bob", &scope, &[]).await;
    let answer = token(&entra, &redeem_form(&entra, &code, &verifier, &api)).await;
    assert_token_error(&answer, "interaction_required", 50_079);
    assert_eq!(answer.1["claims"], MFA_CLAIMS);

    // The proxy re-authorizes with Entra's `claims` value.
    let claims = answer.1["claims"].as_str().unwrap();
    let (code, verifier) = sign_in(&entra, "bob", &scope, &[("claims", claims)]).await;
    let (status, body) = token(&entra, &redeem_form(&entra, &code, &verifier, &api)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let at = access_claims(&body);
    assert_eq!(
        at["amr"],
        serde_json::json!(["pwd", "mfa"]),
        "bob is pwd-only otherwise"
    );
    // Its refresh token carries the satisfied claims.
    let rt = body["refresh_token"].as_str().unwrap();
    let (status, _) = token(&entra, &refresh_form(&entra, rt, &api)).await;
    assert_eq!(status, StatusCode::OK);

    // Authentication context and client capabilities requested through claims.
    let acrs =
        r#"{"access_token":{"acrs":{"essential":true,"value":"c1"},"xms_cc":{"values":["cp1"]}}}"#;
    entra.set_sign_in_failure("bob", None).unwrap();
    let (code, verifier) = sign_in(&entra, "bob", &api, &[("claims", acrs)]).await;
    let (_, body) = token(&entra, &redeem_form(&entra, &code, &verifier, &api)).await;
    let at = access_claims(&body);
    assert_eq!(at["acrs"], serde_json::json!(["c1"]));
    assert_eq!(at["xms_cc"], serde_json::json!(["cp1"]));
    assert_eq!(at["amr"], serde_json::json!(["pwd"]));

    let (_, challenge) = pkce();
    let mut bad = params(&entra, Some("bob"), &api, &challenge);
    bad.push(("claims", "{not json".to_owned()));
    assert_error_redirect(
        &authorize_with(&entra, &bad).await,
        "invalid_request",
        90_100,
    );
}

#[tokio::test]
async fn mfa_required_applies_to_refresh_tokens_without_the_claims() {
    let entra = entra().await;
    let scope = format!("offline_access {}", api_scope(&entra));
    let api = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "bob", &scope, &[]).await;
    let (_, body) = token(&entra, &redeem_form(&entra, &code, &verifier, &api)).await;
    let rt = body["refresh_token"].as_str().unwrap();
    entra
        .set_sign_in_failure("bob", Some(DevSignInFailure::MfaRequired))
        .unwrap();
    let answer = token(&entra, &refresh_form(&entra, rt, &api)).await;
    assert_token_error(&answer, "interaction_required", 50_079);
    assert_eq!(answer.1["claims"], MFA_CLAIMS);
}

#[tokio::test]
async fn access_denied_redirects_with_the_error() {
    let entra = entra().await;
    entra
        .set_sign_in_failure("alice", Some(DevSignInFailure::AccessDenied))
        .unwrap();
    let (_, challenge) = pkce();
    let res = authorize_with(&entra, &params(&entra, Some("alice"), "openid", &challenge)).await;
    assert_error_redirect(&res, "access_denied", 65_004);
    assert!(
        entra
            .set_sign_in_failure("nobody", Some(DevSignInFailure::AccessDenied))
            .is_err()
    );
}

#[tokio::test]
async fn code_redemption_checks_the_client_credential_like_obo() {
    let entra = entra().await;
    let scope = api_scope(&entra);
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let form = redeem_form(&entra, &code, &verifier, &scope);
    let answer = token(&entra, &form.set("client_secret", "wrong")).await;
    assert_token_error(&answer, "invalid_client", 7_000_215);
    let form = redeem_form(&entra, &code, &verifier, &scope).without("client_secret");
    assert_token_error(&token(&entra, &form).await, "invalid_client", 7_000_218);
    let form = redeem_form(&entra, &code, &verifier, &scope)
        .set("client_id", "11111111-2222-3333-4444-555555555555");
    assert_token_error(&token(&entra, &form).await, "unauthorized_client", 700_016);

    // A federated assertion is a credential too; the code is still unspent.
    let assertion = entra
        .federated_assertion(std::time::Duration::from_secs(600))
        .unwrap();
    let form = redeem_form(&entra, &code, &verifier, &scope)
        .without("client_secret")
        .set(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .set("client_assertion", &assertion);
    let (status, body) = token(&entra, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(access_claims(&body)["azpacr"], "2");
}

#[tokio::test]
async fn other_authorize_refusals_redirect_with_entras_codes() {
    let entra = entra().await;
    let (_, challenge) = pkce();
    let cases: [(&str, Option<&str>, &str, u32); 5] = [
        (
            "response_type",
            Some("token"),
            "unsupported_response_type",
            70_005,
        ),
        ("response_type", None, "invalid_request", 900_144),
        (
            "response_mode",
            Some("form_post"),
            "invalid_request",
            70_007,
        ),
        ("scope", None, "invalid_request", 900_144),
        (
            "scope",
            Some("https://other.example/x.read"),
            "invalid_resource",
            500_011,
        ),
    ];
    for (key, value, error, code) in cases {
        let mut p = params(&entra, Some("alice"), "openid", &challenge);
        p.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            p.push((key, v.to_owned()));
        }
        assert_error_redirect(&authorize_with(&entra, &p).await, error, code);
    }
}

#[tokio::test]
async fn a_code_from_another_tenant_path_is_refused() {
    let entra = entra().await;
    let (verifier, challenge) = pkce();
    let p = params(&entra, Some("alice"), &api_scope(&entra), &challenge);
    let borrowed: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = authorize_at(&entra, "organizations", &borrowed).await;
    let code = redirected(&res)["code"].clone();
    let answer = token(
        &entra,
        &redeem_form(&entra, &code, &verifier, &api_scope(&entra)),
    )
    .await;
    assert_token_error(&answer, "invalid_grant", 700_005);
}

#[tokio::test]
async fn codes_refresh_tokens_and_the_secret_stay_out_of_debug_output() {
    let entra = entra().await;
    let scope = format!("offline_access {}", api_scope(&entra));
    let (code, verifier) = sign_in(&entra, "alice", &scope, &[]).await;
    let debug = format!("{entra:?}");
    assert!(!debug.contains(&code));
    let (_, body) = token(
        &entra,
        &redeem_form(&entra, &code, &verifier, &api_scope(&entra)),
    )
    .await;
    let debug = format!("{entra:?}");
    assert!(!debug.contains(body["refresh_token"].as_str().unwrap()));
    assert!(debug.contains("refresh_tokens: 1"), "{debug}");
    assert!(!debug.contains(entra.client_secret()), "{debug}");
}
