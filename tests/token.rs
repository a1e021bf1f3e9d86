//! Token validation against the dev Entra emulator over real HTTP on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Stack, now, stack, stack_with};
use idguard::{Principal, RejectionKind, TokenError, TokenVersion};
use idguard_dev::{CONTOSO_TENANT_ID, DevEndpoint, DevEntra, FABRIKAM_TENANT_ID};
use serde_json::{Value, json};

const INVALID: &str = "Bearer error=\"invalid_token\"";

/// Asserts a 401 `invalid_token` over HTTP and the exact reason from the library.
async fn assert_invalid(s: &Stack, token: &str, reason: TokenError) {
    let res = s.me(Some(token)).await;
    assert_eq!(res.status(), 401, "expected 401 for {reason:?}");
    let challenge = Stack::challenge(&res);
    assert!(challenge.starts_with(INVALID), "{challenge}");
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/api\"",
            s.base
        )),
        "{challenge}"
    );
    let body = res.text().await.unwrap();
    assert!(!body.contains(token), "the body must not echo the token");
    assert_eq!(s.guard.validate(token).await.unwrap_err(), reason);
}

/// A compact JWS from raw parts, for tokens the emulator would never mint.
fn craft(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn v2_user_token_is_accepted_and_becomes_the_principal() {
    let s = stack().await;
    let token = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.me(Some(&token)).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["tenant_id"], CONTOSO_TENANT_ID);
    assert_eq!(me["object_id"], "a11ce000-0000-4000-8000-00000000a11c");
    assert_eq!(me["scopes"], json!(["mcp.tools"]));
    assert_eq!(me["roles"], json!(["Tools.Admin"]));
    assert_eq!(me["app_only"], false);
    assert_eq!(me["version"], "2.0");
    let p: Principal = s.guard.validate(&token).await.unwrap();
    assert!(p.mfa() && p.has_role("Tools.Admin") && !p.groups_overage());
    assert_eq!(p.upn(), Some("alice@contoso.example"));
}

#[tokio::test]
async fn v1_tokens_only_when_enabled() {
    let s = stack().await;
    let v1 = s
        .entra
        .token_for("bob")
        .unwrap()
        .version(TokenVersion::V1)
        .mint()
        .unwrap();
    assert_invalid(&s, &v1, TokenError::VersionNotAccepted).await;

    let entra = DevEntra::builder().start().await.unwrap();
    let api = entra.api_client_id().to_owned();
    let s = stack_with(entra, |b| {
        b.accept_v1(true)
            .audiences([api.clone(), format!("api://{api}")])
    })
    .await;
    let v1 = s
        .entra
        .token_for("bob")
        .unwrap()
        .version(TokenVersion::V1)
        .mint()
        .unwrap();
    let res = s.me(Some(&v1)).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["version"], "1.0");
    assert_eq!(me["upn"], "bob@contoso.example");
    // v2 tokens keep working next to v1.
    let v2 = s.entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&v2)).await.status(), 200);
}

#[tokio::test]
async fn allow_listed_tenants_only() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| {
        b.tenant("organizations")
            .allowed_tenants([CONTOSO_TENANT_ID])
    })
    .await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&alice)).await.status(), 200);
    let carol = s.entra.token_for("carol").unwrap().mint().unwrap();
    assert_invalid(&s, &carol, TokenError::TenantNotAllowed).await;

    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| {
        b.tenant("organizations")
            .allowed_tenants([CONTOSO_TENANT_ID, FABRIKAM_TENANT_ID])
    })
    .await;
    let carol = s.entra.token_for("carol").unwrap().mint().unwrap();
    let res = s.me(Some(&carol)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["tenant_id"],
        FABRIKAM_TENANT_ID
    );
}

#[tokio::test]
async fn any_organization_still_checks_issuer_against_tid() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| b.tenant("organizations")).await;
    let carol = s.entra.token_for("carol").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&carol)).await.status(), 200);
    // tid says Fabrikam, iss says Contoso.
    let forged = s
        .entra
        .token_for("alice")
        .unwrap()
        .claim("tid", FABRIKAM_TENANT_ID)
        .mint()
        .unwrap();
    assert_invalid(&s, &forged, TokenError::WrongIssuer).await;
}

#[tokio::test]
async fn app_only_token_becomes_an_app_principal() {
    let s = stack().await;
    let token = s.entra.app_token("reporter").unwrap().mint().unwrap();
    let res = s.me(Some(&token)).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["app_only"], true);
    assert_eq!(me["app_id"], "7e9d8c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b");
    assert_eq!(me["roles"], json!(["Tools.Read"]));
    assert_eq!(me["scopes"], json!([]));
}

#[tokio::test]
async fn missing_token_gets_a_challenge_without_error() {
    let s = stack().await;
    let res = s.me(None).await;
    assert_eq!(res.status(), 401);
    // The scope to ask for: without `required_scopes`, the one `entra manifest` exposes.
    assert_eq!(
        Stack::challenge(&res),
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/api\", scope=\"api://{}/mcp.tools\"",
            s.base,
            s.entra.api_client_id()
        )
    );
    assert_eq!(
        s.guard.validate("").await.unwrap_err(),
        TokenError::Malformed
    );
}

#[tokio::test]
async fn token_in_the_query_string_is_ignored() {
    let s = stack().await;
    let token = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s
        .http
        .get(format!("{}/api/me?access_token={token}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(!Stack::challenge(&res).contains("error="));
}

#[tokio::test]
async fn junk_is_refused_without_panicking() {
    let s = stack().await;
    assert_invalid(&s, "garbage", TokenError::Malformed).await;
    assert_invalid(&s, "abc.def", TokenError::Malformed).await;
    assert_invalid(&s, "eyJhbGciOiJSUzI1NiJ9.%%%.c2ln", TokenError::Malformed).await;
    assert_invalid(&s, "e30.e30.c2ln", TokenError::Malformed).await;
    // Valid base64url that is not JSON.
    assert_invalid(&s, "YWJj.YWJj.YWJj", TokenError::Malformed).await;
    let huge = "a".repeat(20 * 1024);
    assert_invalid(
        &s,
        &huge,
        TokenError::TooLarge {
            max: idguard::MAX_TOKEN_BYTES,
        },
    )
    .await;
    // Non-ASCII bytes in the header value.
    let res = s
        .http
        .get(format!("{}/api/me", s.base))
        .header("authorization", b"Bearer \xff\xfe".as_slice())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn lifetime_claims_are_enforced() {
    let s = stack().await;
    let expired = s
        .entra
        .token_for("alice")
        .unwrap()
        .issued_at(now() - 7200)
        .lifetime(Duration::from_secs(3600))
        .mint()
        .unwrap();
    assert_invalid(&s, &expired, TokenError::Expired).await;
    let early = s
        .entra
        .token_for("alice")
        .unwrap()
        .claim("nbf", now() + 600)
        .mint()
        .unwrap();
    assert_invalid(&s, &early, TokenError::NotYetValid).await;
    // Within the default 60 s leeway: accepted.
    let skewed = s
        .entra
        .token_for("alice")
        .unwrap()
        .claim("nbf", now() + 30)
        .mint()
        .unwrap();
    assert_eq!(s.me(Some(&skewed)).await.status(), 200);
}

#[tokio::test]
async fn audience_and_issuer_must_match() {
    let s = stack().await;
    let aud = s
        .entra
        .token_for("alice")
        .unwrap()
        .audience("00000003-0000-0000-c000-000000000000")
        .mint()
        .unwrap();
    assert_invalid(&s, &aud, TokenError::WrongAudience).await;
    let iss = s
        .entra
        .token_for("alice")
        .unwrap()
        .claim(
            "iss",
            format!("https://login.evil.example/{CONTOSO_TENANT_ID}/v2.0"),
        )
        .mint()
        .unwrap();
    assert_invalid(&s, &iss, TokenError::WrongIssuer).await;
    let no_grant = s
        .entra
        .token_for("alice")
        .unwrap()
        .scopes(Vec::<String>::new())
        .roles(Vec::<String>::new())
        .mint()
        .unwrap();
    assert_invalid(&s, &no_grant, TokenError::NoScopeOrRole).await;
    let no_oid = s
        .entra
        .token_for("alice")
        .unwrap()
        .remove_claim("oid")
        .mint()
        .unwrap();
    assert_invalid(&s, &no_oid, TokenError::MissingClaim("oid")).await;
}

#[tokio::test]
async fn tenant_mismatch_between_tid_and_issuer() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| {
        b.tenant("organizations")
            .allowed_tenants([CONTOSO_TENANT_ID, FABRIKAM_TENANT_ID])
    })
    .await;
    let token = s
        .entra
        .token_for("alice")
        .unwrap()
        .claim("tid", FABRIKAM_TENANT_ID)
        .mint()
        .unwrap();
    assert_invalid(&s, &token, TokenError::WrongIssuer).await;
}

#[tokio::test]
async fn a_key_bound_to_one_tenant_cannot_sign_for_another() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| {
        b.tenant("organizations")
            .allowed_tenants([CONTOSO_TENANT_ID, FABRIKAM_TENANT_ID])
    })
    .await;
    let fabrikam_key = s.entra.add_tenant_key(FABRIKAM_TENANT_ID).unwrap();
    // The key's own tenant may use it (this also loads it through one refresh).
    let carol = s
        .entra
        .token_for("carol")
        .unwrap()
        .key(&fabrikam_key)
        .mint()
        .unwrap();
    assert_eq!(s.me(Some(&carol)).await.status(), 200);
    let alice = s
        .entra
        .token_for("alice")
        .unwrap()
        .key(&fabrikam_key)
        .mint()
        .unwrap();
    assert_invalid(&s, &alice, TokenError::KeyIssuerMismatch).await;
}

#[tokio::test]
async fn only_rs256_signatures_by_published_keys() {
    let s = stack().await;
    let claims = Value::Object(s.entra.token_for("alice").unwrap().claims());
    let kid = s.entra.active_kid();

    let none = craft(&json!({"alg": "none", "kid": kid}), &claims, b"x");
    assert_invalid(&s, &none, TokenError::Malformed).await;
    let none_unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_invalid(&s, &none_unsigned, TokenError::Malformed).await;

    // HS256 keyed with the public key bytes (the classic algorithm-confusion attack).
    let jwks: Value = s
        .http
        .get(format!(
            "{}/{CONTOSO_TENANT_ID}/discovery/v2.0/keys",
            s.entra.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_der = base64::engine::general_purpose::STANDARD
        .decode(jwks["keys"][0]["x5c"][0].as_str().unwrap())
        .unwrap();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public_der),
        input.as_bytes(),
    );
    let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    assert_invalid(&s, &hs256, TokenError::UnsupportedAlgorithm).await;

    // A real signature over other claims.
    let good = s.entra.token_for("alice").unwrap().mint().unwrap();
    let other = s.entra.token_for("bob").unwrap().mint().unwrap();
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = other.split('.').nth(2).unwrap();
    assert_invalid(&s, &parts.join("."), TokenError::BadSignature).await;

    // Headers that point at other keys are never followed.
    let jku = s
        .entra
        .token_for("alice")
        .unwrap()
        .header("jku", "http://127.0.0.1:9/keys")
        .header("x5u", "http://127.0.0.1:9/cert")
        .mint()
        .unwrap();
    assert_eq!(s.me(Some(&jku)).await.status(), 200);
    let unsigned_key = s.entra.create_key().unwrap();
    let embedded = s
        .entra
        .token_for("alice")
        .unwrap()
        .key(&unsigned_key)
        .header("jwk", json!({"kty": "RSA", "kid": unsigned_key}))
        .mint()
        .unwrap();
    assert_invalid(&s, &embedded, TokenError::UnknownKey).await;
}

#[tokio::test]
async fn rotated_key_validates_after_one_refresh() {
    let s = stack().await;
    let before = s.entra.requests(DevEndpoint::Jwks);
    let old = s.entra.token_for("alice").unwrap().mint().unwrap();
    let new_kid = s.entra.rotate_keys().unwrap();
    let new = s.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&new)).await.status(), 200);
    assert_eq!(s.entra.requests(DevEndpoint::Jwks), before + 1);
    // Known tokens need no more fetches; the retired key's cached tokens keep working
    // until they expire, like Entra's overlap period.
    s.entra.retire_key(&s.entra.published_kids()[0]);
    assert_eq!(s.me(Some(&old)).await.status(), 200);
    assert_eq!(s.me(Some(&new)).await.status(), 200);
    assert_eq!(s.entra.requests(DevEndpoint::Jwks), before + 1);
    assert_eq!(s.entra.active_kid(), new_kid);
}

#[tokio::test]
async fn unknown_kid_is_refused_after_a_refresh() {
    let s = stack().await;
    let before = s.entra.requests(DevEndpoint::Jwks);
    let kid = s.entra.create_key().unwrap();
    let token = s
        .entra
        .token_for("alice")
        .unwrap()
        .key(&kid)
        .mint()
        .unwrap();
    assert_invalid(&s, &token, TokenError::UnknownKey).await;
    assert_eq!(s.entra.requests(DevEndpoint::Jwks), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_costs_one_fetch() {
    let s = Arc::new(stack().await);
    let before = s.entra.requests(DevEndpoint::Jwks);
    let tokens: Vec<String> = (0..100)
        .map(|i| {
            s.entra
                .token_for("bob")
                .unwrap()
                .header("kid", format!("unknown-{i}"))
                .mint()
                .unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for token in tokens {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.me(Some(&token)).await.status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert!(s.entra.requests(DevEndpoint::Jwks) <= before + 1);
}

#[tokio::test]
async fn known_keys_keep_serving_while_jwks_is_down() {
    let s = stack().await;
    let token = s.entra.token_for("bob").unwrap().mint().unwrap();
    s.entra.set_jwks_available(false);
    // Not cached yet: validated with the last good keys.
    assert_eq!(s.me(Some(&token)).await.status(), 200);
    // A key we cannot fetch: 503 with Retry-After, not 401.
    let kid = s.entra.create_key().unwrap();
    let unknown = s.entra.token_for("bob").unwrap().key(&kid).mint().unwrap();
    let res = s.me(Some(&unknown)).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(s.me(Some(&token)).await.status(), 200);
}

#[tokio::test]
async fn cached_validation_stops_at_exp() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| b.with_leeway(Duration::ZERO)).await;
    let token = s
        .entra
        .token_for("alice")
        .unwrap()
        .issued_at(now() - 60)
        .lifetime(Duration::from_secs(65))
        .mint()
        .unwrap();
    assert!(s.guard.validate(&token).await.is_ok());
    assert!(
        s.guard.validate(&token).await.is_ok(),
        "served from the cache"
    );
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        s.guard.validate(&token).await.unwrap_err(),
        TokenError::Expired
    );
}

#[tokio::test]
async fn required_scope_gate_answers_403_insufficient_scope() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| b.required_scopes(["admin.write"])).await;
    let token = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.me(Some(&token)).await;
    assert_eq!(res.status(), 403);
    let api = s.entra.api_client_id();
    assert_eq!(
        Stack::challenge(&res),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"api://{api}/admin.write\", resource_metadata=\"{}/.well-known/oauth-protected-resource/api\"",
            s.base
        )
    );
    let ok = s
        .entra
        .token_for("alice")
        .unwrap()
        .scopes(["admin.write"])
        .mint()
        .unwrap();
    assert_eq!(s.me(Some(&ok)).await.status(), 200);
    // 401s now name the scope to request.
    assert!(Stack::challenge(&s.me(None).await).contains("scope=\"api://"));
}

#[tokio::test]
async fn protected_resource_metadata_at_root_and_path() {
    let s = stack().await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/api",
    ] {
        let doc: Value = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["resource"], format!("{}/api", s.base));
        assert_eq!(
            doc["authorization_servers"],
            json!([s.entra.issuer_v2(CONTOSO_TENANT_ID)])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
}

#[tokio::test]
async fn the_inner_service_never_runs_on_rejection() {
    use tower::{ServiceBuilder, ServiceExt};
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(s.guard.validate_token_layer())
        .service_fn(move |req: http::Request<String>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert!(req.extensions().get::<Principal>().is_some());
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }
        });
    let req = |auth: Option<String>| {
        let mut b = http::Request::get("/");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(String::new()).unwrap()
    };
    let res = svc.clone().oneshot(req(None)).await.unwrap();
    assert_eq!(res.status(), 401);
    let rejection = res.extensions().get::<idguard::Rejection>().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::MissingToken);
    let res = svc
        .clone()
        .oneshot(req(Some("Bearer a.b.c".into())))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Unknown kid: the slow path must not call the inner service either.
    let kid = s.entra.create_key().unwrap();
    let t = s.entra.token_for("bob").unwrap().key(&kid).mint().unwrap();
    let res = svc
        .clone()
        .oneshot(req(Some(format!("Bearer {t}"))))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let t = s.entra.token_for("bob").unwrap().mint().unwrap();
    let res = svc.oneshot(req(Some(format!("Bearer {t}")))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn startup_fails_clearly_without_keys() {
    let entra = DevEntra::builder().start().await.unwrap();
    entra.set_jwks_available(false);
    let err = idguard::IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource("http://127.0.0.1:1/api")
        .build()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot load signing keys"), "{msg}");
    assert!(msg.contains("503"), "{msg}");

    let err = idguard::IdGuard::builder()
        .authority(entra.url())
        .tenant("00000000-0000-4000-8000-000000000000")
        .client_id(entra.api_client_id())
        .resource("http://127.0.0.1:1/api")
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot load OpenID metadata"),
        "{err}"
    );
}

/// `validate` is the layer's path: it refuses what the layer refuses with `403`.
#[tokio::test]
async fn validate_applies_the_scope_and_role_gate_like_the_layer() {
    let entra = DevEntra::builder().start().await.unwrap();
    let s = stack_with(entra, |b| {
        b.required_scopes(["admin.write"])
            .required_roles(["Tools.Admin"])
    })
    .await;
    // Bob has neither the scope nor the role.
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(s.me(Some(&bob)).await.status(), 403);
    assert_eq!(
        s.guard.validate(&bob).await.unwrap_err(),
        TokenError::InsufficientScope
    );
    assert!(!TokenError::InsufficientScope.to_string().contains(&bob));
    // Served from the validated-token cache now: still refused.
    assert_eq!(
        s.guard.validate(&bob).await.unwrap_err(),
        TokenError::InsufficientScope
    );
    assert_eq!(s.me(Some(&bob)).await.status(), 403);
    // The scope, or the role, is enough for both.
    let scoped = s
        .entra
        .token_for("bob")
        .unwrap()
        .scopes(["admin.write"])
        .mint()
        .unwrap();
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    for token in [&scoped, &alice] {
        assert_eq!(s.me(Some(token)).await.status(), 200);
        assert!(s.guard.validate(token).await.is_ok());
    }
}

/// `validate` resolves a groups overage as the layer does, with the same Graph cache.
#[tokio::test]
async fn validate_resolves_groups_overage_like_the_layer() {
    use idguard::OboConfig;
    use idguard::obo::{OboError, Secret};
    use idguard_dev::{DevOboFailure, FINANCE_GROUP_ID, overage_user};

    // Dave and Erin: more groups than a token holds.
    let mut erin = overage_user();
    erin.key = "erin".into();
    erin.object_id = "e1e10000-0000-4000-8000-0000000e1e10".into();
    let entra = DevEntra::builder()
        .user(overage_user())
        .user(erin)
        .start()
        .await
        .unwrap();
    let obo = OboConfig {
        client_secret: Some(Secret::new(entra.client_secret())),
        graph_url: Some(entra.graph_url()),
        apis: std::collections::BTreeMap::from([(
            "graph".to_owned(),
            vec!["https://graph.microsoft.com/.default".to_owned()],
        )]),
        resolve_group_overage: true,
        ..OboConfig::default()
    };
    let s = stack_with(entra, |b| b.obo(obo)).await;
    let dave = s
        .entra
        .token_for("dave")
        .unwrap()
        .groups_overage()
        .mint()
        .unwrap();
    let p = s.guard.validate(&dave).await.unwrap();
    assert!(!p.groups_overage());
    assert_eq!(p.groups().len(), 230, "all of Dave's groups");
    assert!(p.groups().iter().any(|g| g == FINANCE_GROUP_ID));
    let graph = s.entra.requests(DevEndpoint::Graph);
    assert!(graph > 0);
    // The layer's caller is the same, from the same membership cache.
    let res = s.me(Some(&dave)).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["groups_overage"], false);
    assert_eq!(me["groups"], json!(p.groups()));
    assert_eq!(s.entra.requests(DevEndpoint::Graph), graph, "cached");

    // When the groups cannot be had (here: nobody consented to Graph), both refuse.
    s.entra
        .set_obo_failure("erin", Some(DevOboFailure::ConsentRequired))
        .unwrap();
    let erin = s
        .entra
        .token_for("erin")
        .unwrap()
        .groups_overage()
        .mint()
        .unwrap();
    let err = s.guard.validate(&erin).await.unwrap_err();
    assert!(
        matches!(
            err,
            TokenError::GroupsUnresolved(OboError::ConsentRequired { .. })
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains(&erin));
    assert_eq!(s.me(Some(&erin)).await.status(), 403);
}
