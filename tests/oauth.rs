//! The OAuth proxy over real HTTP on loopback, against the dev Entra emulator: metadata,
//! registration (DCR and client-id metadata documents), consent, both PKCE legs, the
//! callback, the token endpoint with rotation, and every refusal the issue names.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/browser.rs"]
mod browser;
mod common;
#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use browser::{Browser, hidden, location, query};
use common::{Stack, stack_with};
use idguard::obo::Secret;
use idguard::{IdGuardBuilder, OAuthConfig, OboConfig};
use idguard_dev::{DevEntra, DevSignInFailure};
use serde_json::{Value, json};

const KEY: &str = "test-proxy-key-0123456789abcdef-0123456789";
const CLIENT_REDIRECT: &str = "http://127.0.0.1:33418/callback";

fn oauth_config() -> OAuthConfig {
    OAuthConfig {
        keys: vec![Secret::new(KEY)],
        ..OAuthConfig::default()
    }
}

fn configure(
    entra: &DevEntra,
    oauth: OAuthConfig,
) -> impl FnOnce(IdGuardBuilder) -> IdGuardBuilder + use<> {
    let obo = OboConfig {
        client_secret: Some(Secret::new(entra.client_secret())),
        apis: BTreeMap::from([(
            "graph".to_owned(),
            vec!["https://graph.microsoft.com/User.Read".to_owned()],
        )]),
        graph_url: Some(entra.graph_url()),
        ..OboConfig::default()
    };
    move |b| b.required_scopes(["mcp.tools"]).obo(obo).oauth(oauth)
}

async fn proxy_stack_with(oauth: OAuthConfig) -> Stack {
    let entra = DevEntra::builder().start().await.unwrap();
    let configure = configure(&entra, oauth);
    let stack = stack_with(entra, configure).await;
    stack
        .entra
        .allow_redirect_uri(format!("{}/callback", stack.base));
    stack.entra.set_sign_in_user(Some("alice")).unwrap();
    stack
}

async fn proxy_stack() -> Stack {
    proxy_stack_with(oauth_config()).await
}

fn pkce() -> (String, String) {
    let verifier = format!("v{}", "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG");
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

async fn register(s: &Stack, redirect: &str) -> String {
    let res = s
        .http
        .post(format!("{}/register", s.base))
        .json(&json!({
            "redirect_uris": [redirect],
            "client_name": "Test MCP client",
            "application_type": "native",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_owned()
}

fn authorize_url(s: &Stack, client_id: &str, redirect: &str, challenge: &str) -> String {
    reqwest::Url::parse_with_params(
        &format!("{}/authorize", s.base),
        [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect),
            ("state", "client-state-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("scope", "mcp.tools offline_access"),
            ("resource", &format!("{}/api", s.base)),
        ],
    )
    .unwrap()
    .to_string()
}

/// Approves the consent page `html` in browser `b`.
async fn approve(b: &mut Browser, s: &Stack, html: &str) -> reqwest::Response {
    b.post_form(
        &format!("{}/consent", s.base),
        &[
            ("txn", &hidden(html, "txn")),
            ("csrf", &hidden(html, "csrf")),
            ("decision", "approve"),
        ],
    )
    .await
}

/// Authorize and approve: the Entra URL the browser is sent to.
async fn consent(b: &mut Browser, s: &Stack, client_id: &str, challenge: &str) -> String {
    let res = b
        .get(&authorize_url(s, client_id, CLIENT_REDIRECT, challenge))
        .await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    let (txn, csrf) = (hidden(&html, "txn"), hidden(&html, "csrf"));
    let res = b
        .post_form(
            &format!("{}/consent", s.base),
            &[("txn", &txn), ("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(res.status(), 303, "consent approval redirects to Entra");
    location(&res)
}

/// Follows Entra (auto sign-in) back to the proxy's callback URL.
async fn through_entra(b: &mut Browser, entra_url: &str) -> String {
    let res = b.get(entra_url).await;
    assert_eq!(
        res.status(),
        302,
        "{}",
        res.text().await.unwrap_or_default()
    );
    location(&res)
}

/// A fresh browser that consented and signed in at Entra: it and the callback URL.
async fn to_callback(s: &Stack, client_id: &str, challenge: &str) -> (Browser, String) {
    let mut b = Browser::new();
    let entra_url = consent(&mut b, s, client_id, challenge).await;
    let callback = through_entra(&mut b, &entra_url).await;
    (b, callback)
}

/// The whole browser part: the client's redirect with `code`, `state` and `iss`.
async fn sign_in(s: &Stack, client_id: &str, challenge: &str) -> HashMap<String, String> {
    let (mut b, callback) = to_callback(s, client_id, challenge).await;
    b.back_to_client(&callback, CLIENT_REDIRECT).await
}

async fn token(s: &Stack, form: &[(&str, &str)]) -> (u16, Value) {
    let res = s
        .http
        .post(format!("{}/token", s.base))
        .form(form)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn redeem(s: &Stack, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
    token(
        s,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CLIENT_REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(s: &Stack, client_id: &str, refresh_token: &str) -> (u16, Value) {
    token(
        s,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

#[tokio::test]
async fn metadata_names_the_proxy() {
    let s = proxy_stack().await;
    let asm: Value = s
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], s.base);
    assert_eq!(
        asm["authorization_endpoint"],
        format!("{}/authorize", s.base)
    );
    assert_eq!(asm["token_endpoint"], format!("{}/token", s.base));
    assert_eq!(asm["registration_endpoint"], format!("{}/register", s.base));
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(asm["client_id_metadata_document_supported"], true);
    assert_eq!(asm["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        asm["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(
        asm["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    let oidc: Value = s
        .http
        .get(format!("{}/.well-known/openid-configuration", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oidc, asm);
    let prm: Value = s
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/api",
            s.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["authorization_servers"], json!([s.base]));
    assert_eq!(
        prm["scopes_supported"],
        json!([format!("api://{}/mcp.tools", s.entra.api_client_id())])
    );
}

#[tokio::test]
async fn the_whole_flow_then_refresh_with_rotation() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    let back = sign_in(&s, &client_id, &challenge).await;
    assert_eq!(back["state"], "client-state-1");
    assert_eq!(back["iss"], s.base, "RFC 9207 iss");

    let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap();
    // The client holds an idguard token for this resource, not the Entra token.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], format!("{}/api", s.base));
    assert_eq!(claims["iss"], s.base);
    assert!(claims.get("tid").is_none() && claims.get("name").is_none());

    let me: Value = s.me(Some(access)).await.json().await.unwrap();
    let alice = &s
        .entra
        .users()
        .iter()
        .find(|u| u.key == "alice")
        .unwrap()
        .object_id;
    assert_eq!(
        &me["object_id"], alice,
        "same principal as a direct Entra token"
    );
    // Policies and logs see the proxy's client, not idguard's own app id.
    assert!(me["app_id"].as_str().unwrap().starts_with("dcr:"), "{me}");
    // A direct Entra token still works (pre-authorized clients).
    let direct = s.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&direct)).await.status(), 200);

    let rt1 = tokens["refresh_token"].as_str().unwrap();
    let (status, renewed) = refresh(&s, &client_id, rt1).await;
    assert_eq!(status, 200, "{renewed}");
    let access2 = renewed["access_token"].as_str().unwrap();
    let rt2 = renewed["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2, "rotated");
    assert_eq!(s.me(Some(access2)).await.status(), 200);

    let (status, renewed) = refresh(&s, &client_id, rt2).await;
    assert_eq!(status, 200, "{renewed}");
    let access3 = renewed["access_token"].as_str().unwrap();
    let rt3 = renewed["refresh_token"].as_str().unwrap();

    // Reusing a rotated token revokes the whole family: the newest tokens stop working.
    // (The token rotated just before is only refused, for a few seconds, without
    // revoking: a client refreshing twice at once; see the concurrency test.)
    let (status, err) = refresh(&s, &client_id, rt1).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(s.me(Some(access3)).await.status(), 401);
    assert_eq!(s.me(Some(access2)).await.status(), 401);
    let (status, err) = refresh(&s, &client_id, rt3).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // A made-up refresh token naming the session is only refused.
    let forged = format!("{}.9.x.y.z", rt3.split('.').next().unwrap());
    let (status, _) = refresh(&s, &client_id, &forged).await;
    assert_eq!(status, 400);

    let stats = s.guard.oauth_stats().unwrap();
    assert_eq!(
        (stats.registrations, stats.consents, stats.sign_ins),
        (1, 1, 1)
    );
    assert_eq!((stats.refreshes, stats.reuse_revocations), (2, 1));
}

#[tokio::test]
async fn a_code_is_single_use_and_a_replay_revokes_what_it_issued() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    let back = sign_in(&s, &client_id, &challenge).await;
    let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(status, 200);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(s.me(Some(access)).await.status(), 200);
    let (status, err) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        s.me(Some(access)).await.status(),
        401,
        "replay revoked the session"
    );
}

#[tokio::test]
async fn the_verifier_redirect_and_client_must_match_the_code() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();

    let back = sign_in(&s, &client_id, &challenge).await;
    let wrong = "w".repeat(43);
    let (status, err) = redeem(&s, &client_id, &back["code"], &wrong).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(status, 400, "a failed redemption used the code up");

    let back = sign_in(&s, &client_id, &challenge).await;
    let (status, err) = token(
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("redirect_uri", "http://127.0.0.1:33418/other"),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let back = sign_in(&s, &client_id, &challenge).await;
    let other = register(&s, CLIENT_REDIRECT).await;
    let (status, err) = redeem(&s, &other, &back["code"], &verifier).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn unknown_clients_and_unregistered_redirects_are_never_redirected_to() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    // An open redirect (a URI the client never registered), and a near miss of the
    // registered one: a page, no redirect.
    for uri in [
        "https://attacker.example/cb",
        "http://127.0.0.1:33418/callback/x",
        "http://localhost:33418/callback",
    ] {
        let res = b.get(&authorize_url(&s, &client_id, uri, &challenge)).await;
        assert_eq!(res.status(), 400, "{uri}");
        assert!(res.headers().get("location").is_none(), "{uri}");
    }
    // Loopback: only the port may vary (RFC 8252).
    let res = b
        .get(&authorize_url(
            &s,
            &client_id,
            "http://127.0.0.1:50123/callback",
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 200);
    // A tampered registration: one character of the sealed client id changed.
    let mut tampered = client_id.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let res = b
        .get(&authorize_url(&s, &tampered, CLIENT_REDIRECT, &challenge))
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());
    // A client id made up by the caller.
    let res = b
        .get(&authorize_url(
            &s,
            "my-own-client",
            CLIENT_REDIRECT,
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn pkce_s256_is_required() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    for params in [
        vec![],
        vec![("code_challenge", challenge.as_str())],
        vec![
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "plain"),
        ],
    ] {
        let mut all = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", CLIENT_REDIRECT),
            ("state", "st"),
        ];
        all.extend(params);
        let url = reqwest::Url::parse_with_params(&format!("{}/authorize", s.base), &all).unwrap();
        let res = b.get(url.as_str()).await;
        // Shown, not redirected: before consent the client's redirect URI (anyone can
        // register one) is not trusted for automatic redirects (RFC 9700 §4.11.2).
        assert_eq!(res.status(), 400);
        assert!(res.headers().get("location").is_none());
        assert!(res.text().await.unwrap().contains("PKCE"));
    }
}

#[tokio::test]
async fn consent_needs_its_csrf_token_and_cookie() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    let res = b
        .get(&authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge))
        .await;
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-"), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let html = res.text().await.unwrap();
    assert!(html.contains("Test MCP client") && html.contains("127.0.0.1"));
    let txn = hidden(&html, "txn");
    let csrf = hidden(&html, "csrf");
    let consent_url = format!("{}/consent", s.base);

    // No CSRF token.
    let res = b
        .post_form(&consent_url, &[("txn", &txn), ("decision", "approve")])
        .await;
    assert_eq!(res.status(), 403);
    // The right token from a browser without the cookie (a cross-site form post).
    let res = Browser::new()
        .post_form(
            &consent_url,
            &[("txn", &txn), ("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(res.status(), 403);
    // The token of another request.
    let res = b
        .get(&authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge))
        .await;
    let other_txn = hidden(&res.text().await.unwrap(), "txn");
    let res = b
        .post_form(
            &consent_url,
            &[
                ("txn", &other_txn),
                ("csrf", &csrf),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(res.status(), 403);
    // The real thing still works.
    let res = b
        .post_form(
            &consent_url,
            &[("txn", &txn), ("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert!(location(&res).starts_with(&s.entra.authorize_endpoint(s.entra.tenant_id())));
}

#[tokio::test]
async fn denying_consent_tells_the_client() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    let res = b
        .get(&authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge))
        .await;
    let html = res.text().await.unwrap();
    let res = b
        .post_form(
            &format!("{}/consent", s.base),
            &[
                ("txn", &hidden(&html, "txn")),
                ("csrf", &hidden(&html, "csrf")),
                ("decision", "deny"),
            ],
        )
        .await;
    let q = query(&location(&res));
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "client-state-1");
}

#[tokio::test]
async fn state_is_single_use_and_must_be_known() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let (mut b, callback) = to_callback(&s, &client_id, &challenge).await;
    assert_eq!(b.get(&callback).await.status(), 303);
    // Replay of the same answer.
    assert_eq!(b.get(&callback).await.status(), 400);
    // A state the proxy never issued.
    let forged = callback.replace(&query(&callback)["state"], "forged-state");
    assert_eq!(b.get(&forged).await.status(), 400);
    // No state at all.
    assert_eq!(
        b.get(&format!("{}/callback?code=x", s.base)).await.status(),
        400
    );
}

#[tokio::test]
async fn a_second_client_cannot_ride_on_the_first_clients_consent() {
    let s = proxy_stack().await;
    let (_, challenge) = pkce();
    // The victim approved client A in their browser.
    let client_a = register(&s, CLIENT_REDIRECT).await;
    let mut victim = Browser::new();
    let _ = consent(&mut victim, &s, &client_a, &challenge).await;
    // The attacker registers client B, approves it in their own browser, and sends the
    // resulting Entra sign-in link to the victim.
    let client_b = register(&s, "https://attacker.example/cb").await;
    let mut attacker = Browser::new();
    let res = attacker
        .get(&authorize_url(
            &s,
            &client_b,
            "https://attacker.example/cb",
            &challenge,
        ))
        .await;
    let html = res.text().await.unwrap();
    let res = approve(&mut attacker, &s, &html).await;
    let entra_url = location(&res);
    // The victim, signed in at Entra, lands on the callback: their browser holds consent
    // for A only, so no code goes to B.
    let callback = through_entra(&mut victim, &entra_url).await;
    let res = victim.get(&callback).await;
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("location").is_none());
    // Every authorization shows the consent page again: nothing is remembered per client.
    let res = victim
        .get(&authorize_url(&s, &client_a, CLIENT_REDIRECT, &challenge))
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn registration_validates_metadata_and_is_rate_limited() {
    let s = proxy_stack_with(OAuthConfig {
        registration_rate_limit: Some(3),
        ..oauth_config()
    })
    .await;
    let url = format!("{}/register", s.base);
    let post = |body: Value| s.http.post(&url).json(&body).send();
    let res = post(json!({"redirect_uris": ["http://evil.example/cb"]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"], "invalid_redirect_uri");
    let res =
        post(json!({"redirect_uris": [CLIENT_REDIRECT], "grant_types": ["client_credentials"]}))
            .await
            .unwrap();
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client_metadata");
    let res = s
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"client_name":"{}"}}"#, "x".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Refused requests count too: the third is the last one this minute.
    let res = post(json!({"redirect_uris": [CLIENT_REDIRECT]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = post(json!({"redirect_uris": [CLIENT_REDIRECT]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn entra_consent_missing_shows_the_admin_consent_link() {
    let s = proxy_stack().await;
    s.entra
        .set_sign_in_failure("alice", Some(DevSignInFailure::ConsentRequired))
        .unwrap();
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let (mut b, callback) = to_callback(&s, &client_id, &challenge).await;
    let res = b.get(&callback).await;
    assert_eq!(res.status(), 403);
    let html = res.text().await.unwrap();
    assert!(html.contains("/v2.0/adminconsent?client_id="), "{html}");
}

#[tokio::test]
async fn an_entra_claims_challenge_signs_in_again_with_the_claims() {
    let s = proxy_stack().await;
    s.entra
        .set_sign_in_failure("alice", Some(DevSignInFailure::MfaRequired))
        .unwrap();
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    let (mut b, callback) = to_callback(&s, &client_id, &challenge).await;
    let res = b.get(&callback).await;
    // Back to Entra with the claims Entra asked for.
    assert_eq!(res.status(), 303);
    let again = location(&res);
    assert!(query(&again).contains_key("claims"), "{again}");
    let callback = through_entra(&mut b, &again).await;
    let res = b.get(&callback).await;
    assert_eq!(res.status(), 303);
    let back = query(&location(&res));
    let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(status, 200);
    let me: Value = s
        .me(Some(tokens["access_token"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert!(me["auth_methods"].to_string().contains("mfa"), "{me}");
}

/// Serves client-id metadata documents on loopback: `/good.json` names itself (cacheable
/// for 10 minutes, fetches counted), `/liar.json` claims another id, `/moved.json`
/// redirects to `/good.json`, `/big.json` is over the size limit.
async fn document_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let good = json!({
        "client_id": format!("{base}/good.json"),
        "client_name": "Metadata Client",
        "redirect_uris": [CLIENT_REDIRECT],
        "token_endpoint_auth_method": "none",
    });
    let liar = json!({
        "client_id": "https://someone-else.example/client.json",
        "client_name": "Liar",
        "redirect_uris": [CLIENT_REDIRECT],
    });
    let big = json!({
        "client_id": format!("{base}/big.json"),
        "client_name": "x".repeat(6000),
        "redirect_uris": [CLIENT_REDIRECT],
    });
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let moved = format!("{base}/good.json");
    let app = Router::new()
        .route(
            "/good.json",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { ([("cache-control", "max-age=600")], axum::Json(good)) }
            }),
        )
        .route("/liar.json", get(move || async move { axum::Json(liar) }))
        .route("/big.json", get(move || async move { axum::Json(big) }))
        .route(
            "/moved.json",
            get(move || async move { axum::response::Redirect::temporary(&moved) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, fetches)
}

#[tokio::test]
async fn client_id_metadata_documents_under_the_development_allowance() {
    let (docs, fetches) = document_server().await;
    let s = proxy_stack_with(OAuthConfig {
        cimd_allow_loopback: true,
        ..oauth_config()
    })
    .await;
    let (verifier, challenge) = pkce();
    let client_id = format!("{docs}/good.json");
    let mut b = Browser::new();
    let res = b
        .get(&authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge))
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("Metadata Client"));
    let back = sign_in(&s, &client_id, &challenge).await;
    let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    assert_eq!(status, 200);
    let me: Value = s
        .me(tokens["access_token"].as_str())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["app_id"],
        client_id.as_str(),
        "the document URL names the client"
    );

    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "cached per Cache-Control"
    );

    // Redirects are not followed; oversized documents are not read.
    for path in ["moved.json", "big.json"] {
        let res = b
            .get(&authorize_url(
                &s,
                &format!("{docs}/{path}"),
                CLIENT_REDIRECT,
                &challenge,
            ))
            .await;
        assert_eq!(res.status(), 400, "{path}");
        assert!(
            res.text().await.unwrap().contains("could not be fetched"),
            "{path}"
        );
    }
    // A document whose `client_id` is not its own URL.
    let res = b
        .get(&authorize_url(
            &s,
            &format!("{docs}/liar.json"),
            CLIENT_REDIRECT,
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("not its URL"));
    // A redirect URI the document does not list.
    let res = b
        .get(&authorize_url(
            &s,
            &client_id,
            "http://127.0.0.1:33418/elsewhere",
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 400);
    // Private and metadata addresses stay refused even with the allowance.
    for url in [
        "http://10.0.0.1/client.json",
        "http://169.254.169.254/latest/meta-data/client.json",
        "https://192.168.1.10/client.json",
    ] {
        let res = b
            .get(&authorize_url(&s, url, CLIENT_REDIRECT, &challenge))
            .await;
        assert_eq!(res.status(), 400, "{url}");
    }
}

#[tokio::test]
async fn client_id_metadata_documents_on_internal_addresses_are_refused() {
    let (docs, fetches) = document_server().await;
    let s = proxy_stack().await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    let port = docs.rsplit(':').next().unwrap();
    for url in [
        format!("{docs}/good.json"),
        format!("https://127.0.0.1:{port}/good.json"),
        format!("https://localhost:{port}/good.json"),
        "https://[::1]/client.json".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.1.2.3/client.json".to_owned(),
        "https://[fd00:ec2::254]/client.json".to_owned(),
    ] {
        let res = b
            .get(&authorize_url(&s, &url, CLIENT_REDIRECT, &challenge))
            .await;
        assert_eq!(res.status(), 400, "{url}");
        let page = res.text().await.unwrap();
        // Refused, and the page says nothing about the network behind idguard.
        assert!(
            page.contains("could not be fetched") || page.contains("only https"),
            "{url}: {page}"
        );
        for leak in ["127.0.0.1)", "::1)", "169.254", "10.1.2.3)", "resolves"] {
            assert!(!page.contains(leak), "{url}: {page}");
        }
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 0, "nothing was fetched");
}

#[tokio::test]
async fn registrations_survive_key_rotation_until_the_old_key_is_removed() {
    let old = proxy_stack().await;
    let client_id = register(&old, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    const NEW: &str = "rotated-proxy-key-abcdefghijklmnopqrstuvwxyz";
    let rotated = proxy_stack_with(OAuthConfig {
        keys: vec![Secret::new(NEW), Secret::new(KEY)],
        ..oauth_config()
    })
    .await;
    let res = Browser::new()
        .get(&authorize_url(
            &rotated,
            &client_id,
            CLIENT_REDIRECT,
            &challenge,
        ))
        .await;
    assert_eq!(
        res.status(),
        200,
        "the old key still opens its registrations"
    );
    let retired = proxy_stack_with(OAuthConfig {
        keys: vec![Secret::new(NEW)],
        ..oauth_config()
    })
    .await;
    let res = Browser::new()
        .get(&authorize_url(
            &retired,
            &client_id,
            CLIENT_REDIRECT,
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 400, "removing the old key retires them");
}

#[tokio::test]
async fn entra_is_asked_for_downstream_consent_without_resource() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let mut b = Browser::new();
    let entra_url = consent(&mut b, &s, &client_id, &challenge).await;
    let q = query(&entra_url);
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    let api = format!("api://{}/mcp.tools", s.entra.api_client_id());
    for want in [
        api.as_str(),
        "https://graph.microsoft.com/User.Read",
        "offline_access",
        "openid",
    ] {
        assert!(scopes.contains(&want), "{want} in {scopes:?}");
    }
    assert!(!q.contains_key("resource"), "Entra v2 refuses `resource`");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], s.entra.api_client_id());
    assert_eq!(q["redirect_uri"], format!("{}/callback", s.base));
    // The client's own challenge never reaches Entra: the proxy runs its own PKCE.
    assert_ne!(q["code_challenge"], challenge);

    // An overlong client state is refused before anything is stored.
    let long = "s".repeat(2000);
    let url =
        authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge).replace("client-state-1", &long);
    let res = b.get(&url).await;
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());
}

#[tokio::test]
async fn redirect_uri_at_token_only_when_it_was_sent_at_authorize() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    // A client with one registered URI may leave it out (RFC 6749 §4.1.1)…
    let url = authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge)
        .replace(&format!("&redirect_uri={}", urlencode(CLIENT_REDIRECT)), "");
    assert!(!url.contains("redirect_uri"), "{url}");
    let mut b = Browser::new();
    let res = b.get(&url).await;
    let html = res.text().await.unwrap();
    let res = approve(&mut b, &s, &html).await;
    let callback = through_entra(&mut b, &location(&res)).await;
    let back = query(&location(&b.get(&callback).await));
    // …and then leaves it out at the token endpoint too (§4.1.3).
    let (status, tokens) = token(
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    // Sent at authorize, it must be repeated.
    let back = sign_in(&s, &client_id, &challenge).await;
    let (status, _) = token(
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

fn urlencode(s: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", [("v", s)])
        .unwrap()
        .query()
        .unwrap()
        .trim_start_matches("v=")
        .to_owned()
}

#[tokio::test]
async fn concurrent_refreshes_rotate_once_without_revoking() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    let back = sign_in(&s, &client_id, &challenge).await;
    let (_, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    let (a, b) = tokio::join!(refresh(&s, &client_id, rt), refresh(&s, &client_id, rt));
    let winners: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "{a:?} {b:?}");
    // The loser did not take the family down with it.
    let access = winners[0]["access_token"].as_str().unwrap();
    assert_eq!(s.me(Some(access)).await.status(), 200);
    let (status, _) = refresh(
        &s,
        &client_id,
        winners[0]["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_callback_without_the_binding_cookie_does_not_spend_the_state() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (_, challenge) = pkce();
    let (mut b, callback) = to_callback(&s, &client_id, &challenge).await;
    // Someone who learned the callback URL, in another browser.
    assert_eq!(Browser::new().get(&callback).await.status(), 403);
    // The user's own browser still completes.
    assert_eq!(b.get(&callback).await.status(), 303);
}

#[tokio::test]
async fn a_client_can_revoke_its_session() {
    let s = proxy_stack().await;
    let client_id = register(&s, CLIENT_REDIRECT).await;
    let (verifier, challenge) = pkce();
    let back = sign_in(&s, &client_id, &challenge).await;
    let (_, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
    let access = tokens["access_token"].as_str().unwrap();
    let rt = tokens["refresh_token"].as_str().unwrap();
    let revoke = |token: String, client: String| {
        let http = s.http.clone();
        let url = format!("{}/revoke", s.base);
        async move {
            http.post(url)
                .form(&[("token", token), ("client_id", client)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Another client cannot revoke it.
    let other = register(&s, CLIENT_REDIRECT).await;
    assert_eq!(revoke(rt.to_owned(), other).await, 401);
    assert_eq!(s.me(Some(access)).await.status(), 200);
    // Its own client can: access and refresh tokens stop working.
    assert_eq!(revoke(rt.to_owned(), client_id.clone()).await, 200);
    assert_eq!(s.me(Some(access)).await.status(), 401);
    let (status, _) = refresh(&s, &client_id, rt).await;
    assert_eq!(status, 400);
    // Unknown tokens are answered 200 (RFC 7009 §2.2).
    assert_eq!(revoke("nonsense".into(), client_id).await, 200);
}

#[tokio::test]
async fn operators_can_restrict_redirect_hosts() {
    let s = proxy_stack_with(OAuthConfig {
        allowed_redirect_hosts: vec!["app.contoso.example".into()],
        ..oauth_config()
    })
    .await;
    let res = s
        .http
        .post(format!("{}/register", s.base))
        .json(&json!({"redirect_uris": ["https://attacker.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Listed hosts and loopback are fine.
    let _ = register(&s, "https://app.contoso.example/cb").await;
    let _ = register(&s, CLIENT_REDIRECT).await;
    // A registration made before the list existed (same key) is refused at authorize.
    let open = proxy_stack().await;
    let earlier = register(&open, "https://attacker.example/cb").await;
    let (_, challenge) = pkce();
    let res = Browser::new()
        .get(&authorize_url(
            &s,
            &earlier,
            "https://attacker.example/cb",
            &challenge,
        ))
        .await;
    assert_eq!(res.status(), 400);
}

/// The proxy's state in a real Redis server (`[store]`): the store's semantics, and what
/// happens when the server goes away and comes back.
#[cfg(feature = "redis")]
mod on_redis {
    use std::time::Duration;

    use idguard::StoreConfig;
    use idguard::oauth::{OAuthStore, RecordKind, RedisStore};

    use super::*;

    use super::redis_server::RedisServer;

    const HOUR: Duration = Duration::from_secs(3600);

    fn store_config(server: &RedisServer, prefix: &str) -> StoreConfig {
        StoreConfig {
            redis_url: Some(server.url()),
            key_prefix: Some(prefix.to_owned()),
            command_timeout: Some("500ms".into()),
            ..StoreConfig::default()
        }
    }

    fn store(server: &RedisServer, prefix: &str) -> RedisStore {
        RedisStore::new(store_config(server, prefix)).unwrap()
    }

    #[tokio::test]
    async fn put_get_take_and_kinds_are_separate() {
        let server = RedisServer::start();
        let s = store(&server, "t1:");
        s.put(RecordKind::Code, "k", b"v".to_vec(), HOUR)
            .await
            .unwrap();
        assert!(s.get(RecordKind::State, "k").await.unwrap().is_none());
        assert_eq!(s.get(RecordKind::Code, "k").await.unwrap().unwrap(), b"v");
        // `take` is single use, also when two callers race for it.
        let (a, b) = tokio::join!(s.take(RecordKind::Code, "k"), s.take(RecordKind::Code, "k"));
        let won = [a.unwrap(), b.unwrap()];
        assert_eq!(won.iter().filter(|v| v.is_some()).count(), 1, "{won:?}");
        assert!(s.get(RecordKind::Code, "k").await.unwrap().is_none());
        // `remove`, and a value larger than its kind allows.
        s.put(RecordKind::Pending, "p", b"x".to_vec(), HOUR)
            .await
            .unwrap();
        s.remove(RecordKind::Pending, "p").await.unwrap();
        assert!(s.get(RecordKind::Pending, "p").await.unwrap().is_none());
        let err = s
            .put(RecordKind::Code, "big", vec![0; 64 * 1024], HOUR)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger"), "{err}");
    }

    #[tokio::test]
    async fn swap_is_compare_and_set_under_concurrency() {
        let server = RedisServer::start();
        let s = store(&server, "t2:");
        s.put(RecordKind::Session, "s", b"gen-1".to_vec(), HOUR)
            .await
            .unwrap();
        // Twenty replicas rotate generation 1 at once: exactly one wins.
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.swap(
                        RecordKind::Session,
                        "s",
                        b"gen-1",
                        format!("gen-2-{i}").into_bytes(),
                        HOUR,
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
        let now = s.get(RecordKind::Session, "s").await.unwrap().unwrap();
        assert!(now.starts_with(b"gen-2-"));
        // A swap from a stale value, or of a missing record, changes nothing.
        assert!(
            !s.swap(RecordKind::Session, "s", b"gen-1", b"x".to_vec(), HOUR)
                .await
                .unwrap()
        );
        assert!(
            !s.swap(RecordKind::Session, "none", b"", b"x".to_vec(), HOUR)
                .await
                .unwrap()
        );
        assert!(s.get(RecordKind::Session, "none").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn records_expire_by_redis_ttl_and_prefixes_isolate() {
        let server = RedisServer::start();
        let a = store(&server, "deployment-a:");
        let b = store(&server, "deployment-b:");
        a.put(RecordKind::State, "k", b"a".to_vec(), HOUR)
            .await
            .unwrap();
        assert!(b.get(RecordKind::State, "k").await.unwrap().is_none());
        assert!(b.take(RecordKind::State, "k").await.unwrap().is_none());
        assert_eq!(a.get(RecordKind::State, "k").await.unwrap().unwrap(), b"a");
        a.put(
            RecordKind::Pending,
            "short",
            b"v".to_vec(),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
        // Redis expires it (poll: the server's clock decides).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.get(RecordKind::Pending, "short").await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !a.swap(RecordKind::Pending, "short", b"v", b"w".to_vec(), HOUR)
                .await
                .unwrap()
        );
    }

    /// `POST /register` of a minimal client, whatever the answer.
    async fn try_register(s: &Stack) -> reqwest::Response {
        s.http
            .post(format!("{}/register", s.base))
            .json(&json!({"redirect_uris": [CLIENT_REDIRECT]}))
            .send()
            .await
            .unwrap()
    }

    async fn redis_stack(server: &RedisServer, cache: &str) -> Stack {
        let entra = DevEntra::builder().start().await.unwrap();
        let configure = configure(&entra, oauth_config());
        let store = StoreConfig {
            session_cache_ttl: Some(cache.into()),
            ..store_config(server, "stack:")
        };
        let stack = stack_with(entra, move |b| configure(b).store(store)).await;
        stack
            .entra
            .allow_redirect_uri(format!("{}/callback", stack.base));
        stack.entra.set_sign_in_user(Some("alice")).unwrap();
        stack
    }

    /// Polls until `f` is true (the connection comes back on its own).
    async fn until<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "never happened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn redis_down_answers_503_keeps_entra_tokens_and_resumes_after_a_restart() {
        let mut server = RedisServer::start();
        let s = redis_stack(&server, "0s").await;
        let client_id = register(&s, CLIENT_REDIRECT).await;
        let (verifier, challenge) = pkce();
        let back = sign_in(&s, &client_id, &challenge).await;
        let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
        assert_eq!(status, 200, "{tokens}");
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        let rt = tokens["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(s.me(Some(&access)).await.status(), 200);
        let status = s.guard.store_status().unwrap();
        assert_eq!((status.kind, status.reachable), ("redis", true));

        server.stop();
        // Proxy-issued tokens: the session cannot be read, so 503, never 200 nor 401.
        let res = s.me(Some(&access)).await;
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after"));
        // Direct Entra tokens need no store.
        let direct = s.entra.token_for("alice").unwrap().mint().unwrap();
        assert_eq!(s.me(Some(&direct)).await.status(), 200);
        // Every proxy endpoint that needs the store: 503 with Retry-After.
        let res = try_register(&s).await;
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after"));
        let res = Browser::new()
            .get(&authorize_url(&s, &client_id, CLIENT_REDIRECT, &challenge))
            .await;
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after"));
        let (status, err) = refresh(&s, &client_id, &rt).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (503, Some("temporarily_unavailable"))
        );
        let health = s.guard.store_status().unwrap();
        assert!(!health.reachable && health.errors > 0, "{health:?}");

        // Back (empty: no persistence): the same process serves again.
        server.restart();
        until(|| async { try_register(&s).await.status() == 201 }).await;
        assert!(s.guard.store_status().unwrap().reachable);
        // The lost session is gone, not guessed.
        assert_eq!(s.me(Some(&access)).await.status(), 401);
        let back = sign_in(&s, &client_id, &challenge).await;
        let (status, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
        assert_eq!(status, 200, "{tokens}");
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(s.me(Some(access)).await.status(), 200);
    }

    #[tokio::test]
    async fn a_cached_session_ends_within_the_bound_after_a_revocation_elsewhere() {
        let server = RedisServer::start();
        let s = redis_stack(&server, "1s").await;
        let client_id = register(&s, CLIENT_REDIRECT).await;
        let (verifier, challenge) = pkce();
        let back = sign_in(&s, &client_id, &challenge).await;
        let (_, tokens) = redeem(&s, &client_id, &back["code"], &verifier).await;
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(s.me(Some(access)).await.status(), 200);
        // Another replica ends the session: every session record goes.
        let mut conn = redis_client(&server).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("stack:oauth:session:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
        // This replica refuses the token once its cached copy is older than the bound
        // (polled: the bound is the cache's, not this test's).
        until(|| async { s.me(Some(access)).await.status() == 401 }).await;
    }

    async fn redis_client(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sign_ins_in_progress_are_counted_across_replicas() {
        let server = RedisServer::start();
        let a = redis_stack(&server, "5s").await;
        let b = redis_stack(&server, "5s").await;
        // The same keys: a client registered on A is known to B.
        let client_id = register(&a, CLIENT_REDIRECT).await;
        let (_, challenge) = pkce();
        let mut browser = Browser::new();
        // 256 sign-ins in progress per client, half on each replica.
        for i in 0..256 {
            let s = if i % 2 == 0 { &a } else { &b };
            let res = browser
                .get(&authorize_url(s, &client_id, CLIENT_REDIRECT, &challenge))
                .await;
            assert_eq!(res.status(), 200, "sign-in {i}");
        }
        for s in [&a, &b] {
            let res = browser
                .get(&authorize_url(s, &client_id, CLIENT_REDIRECT, &challenge))
                .await;
            assert_eq!(
                res.status(),
                429,
                "the client's limit holds on every replica"
            );
            assert!(res.headers().contains_key("retry-after"));
        }
    }

    #[tokio::test]
    async fn registrations_are_counted_in_redis() {
        let server = RedisServer::start();
        let entra = DevEntra::builder().start().await.unwrap();
        let configure = configure(
            &entra,
            OAuthConfig {
                registration_rate_limit: Some(2),
                ..oauth_config()
            },
        );
        let store = store_config(&server, "limits:");
        let s = stack_with(entra, move |b| configure(b).store(store)).await;
        register(&s, CLIENT_REDIRECT).await;
        register(&s, CLIENT_REDIRECT).await;
        let res = try_register(&s).await;
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "30");
        // The bucket lives in Redis (every replica draws from it).
        let mut conn = redis_client(&server).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg("limits:limit:registrations")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 1);
    }
}
