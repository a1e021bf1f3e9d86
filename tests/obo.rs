//! On-behalf-of against the dev Entra emulator over real HTTP on loopback: single flight,
//! isolation, expiry, credentials, Entra's failure modes, app-only refusal, groups overage
//! through Graph, and no token or secret in logs or answers.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::now;
use idguard::obo::{BearerToken, Obo, OboError, OboToken, Secret};
use idguard::policy::{Item, Phase, PolicyEngine, ToolInfo};
use idguard::{IdGuard, OboConfig, Principal, Rejection, RejectionKind};
use idguard_dev::{
    DevCertificate, DevEndpoint, DevEntra, DevGraphFailure, DevOboFailure, FINANCE_GROUP_ID,
    MFA_CLAIMS, overage_user,
};
use serde_json::{Value, json};

const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

/// Emulator, guard with `[obo]`, and an axum app whose handlers use [`Obo`].
struct ObStack {
    entra: DevEntra,
    guard: IdGuard,
    base: String,
    http: reqwest::Client,
}

fn apis() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("graph".to_owned(), vec![GRAPH_DEFAULT.to_owned()]),
        (
            "mail".to_owned(),
            vec!["https://graph.microsoft.com/Mail.Read".to_owned()],
        ),
    ])
}

fn secret_config(entra: &DevEntra) -> OboConfig {
    OboConfig {
        client_secret: Some(Secret::new(entra.client_secret())),
        apis: apis(),
        graph_url: Some(entra.graph_url()),
        skew: Some("60s".into()),
        ..OboConfig::default()
    }
}

async fn obo_stack(entra: DevEntra, obo: OboConfig) -> ObStack {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/api"))
        .obo(obo)
        .build()
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/api/token/{api}",
            get(|obo: Obo, Path(api): Path<String>| async move {
                // The one line a handler needs.
                let token = obo.token_for(&api).await?;
                Ok::<_, Rejection>(token.scope().to_owned())
            }),
        )
        .route(
            "/api/profile",
            get(|obo: Obo| async move {
                obo.graph_me()
                    .await
                    .map(Json)
                    .map_err(|e| obo.rejection(&e))
            }),
        )
        .route("/api/principal", get(|p: Principal| async move { Json(p) }))
        .route_layer(guard.validate_token_layer());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    ObStack {
        entra,
        guard,
        base,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl ObStack {
    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    fn tokens(&self) -> u64 {
        self.entra.requests(DevEndpoint::Token)
    }

    /// A Graph token straight from the client for `token`'s caller.
    async fn graph_token(&self, token: &str) -> Result<OboToken, OboError> {
        let (p, t) = self.caller(token).await;
        self.guard
            .obo_client()
            .unwrap()
            .token_for(&p, &t, "graph")
            .await
    }

    /// Direct use of the client: (principal, assertion) for `token`.
    async fn caller(&self, token: &str) -> (Principal, BearerToken) {
        (
            self.guard.validate(token).await.unwrap(),
            BearerToken::new(token),
        )
    }
}

fn challenge(res: &reqwest::Response) -> String {
    res.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idguard-obo-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_first_requests_make_one_token_call() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = Arc::new(obo_stack(entra, cfg).await);
    let token = Arc::new(s.entra.token_for("alice").unwrap().mint().unwrap());
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (s, token) = (s.clone(), token.clone());
            tokio::spawn(async move { s.get("/api/token/graph", &token).await.status() })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(s.tokens(), 1, "one token-endpoint call for 200 requests");
}

#[tokio::test]
async fn users_and_scope_sets_are_separate_entries() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let obo = s.guard.obo_client().unwrap();
    let alice_jwt = s.entra.token_for("alice").unwrap().mint().unwrap();
    let bob_jwt = s.entra.token_for("bob").unwrap().mint().unwrap();
    let (alice, alice_t) = s.caller(&alice_jwt).await;
    let (bob, bob_t) = s.caller(&bob_jwt).await;

    let a = obo.token_for(&alice, &alice_t, "graph").await.unwrap();
    let b = obo.token_for(&bob, &bob_t, "graph").await.unwrap();
    assert_eq!(s.tokens(), 2);
    assert_ne!(a.expose_secret(), b.expose_secret());
    assert_eq!(claims_of(a.expose_secret())["oid"], alice.object_id());
    assert_eq!(claims_of(b.expose_secret())["oid"], bob.object_id());
    assert_eq!(
        claims_of(a.expose_secret())["aud"],
        "https://graph.microsoft.com"
    );

    // The same user, another scope set: another entry.
    let mail = obo.token_for(&alice, &alice_t, "mail").await.unwrap();
    assert_eq!(s.tokens(), 3);
    assert_eq!(claims_of(mail.expose_secret())["scp"], "Mail.Read");
    let again = obo.token_for(&alice, &alice_t, "graph").await.unwrap();
    assert_eq!(again.expose_secret(), a.expose_secret());
    assert_eq!(s.tokens(), 3, "served from the cache");
    // Scope order does not matter.
    let explicit = obo
        .token_for_scopes(&alice, &alice_t, ["https://graph.microsoft.com/Mail.Read"])
        .await
        .unwrap();
    assert_eq!(explicit.expose_secret(), mail.expose_secret());
    assert!(matches!(
        obo.token_for(&alice, &alice_t, "nope").await,
        Err(OboError::UnknownApi(_))
    ));
}

/// Advances tokio's clock without letting it auto-advance while requests are in flight.
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test(flavor = "current_thread")]
async fn cached_token_expires_at_its_expiry_minus_skew() {
    let entra = DevEntra::builder().start().await.unwrap();
    entra.set_downstream_lifetime(Duration::from_secs(600));
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let obo = s.guard.obo_client().unwrap();
    let (alice, t) = s
        .caller(&s.entra.token_for("alice").unwrap().mint().unwrap())
        .await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(s.tokens(), 1);
    advance(Duration::from_secs(538)).await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(
        s.tokens(),
        1,
        "600 s token, 60 s skew: still fresh at 538 s"
    );
    advance(Duration::from_secs(3)).await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(s.tokens(), 2, "refetched past 540 s");
}

#[tokio::test(flavor = "current_thread")]
async fn the_incoming_tokens_expiry_caps_the_cache_entry() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let obo = s.guard.obo_client().unwrap();
    let jwt = s
        .entra
        .token_for("alice")
        .unwrap()
        .lifetime(Duration::from_secs(400))
        .mint()
        .unwrap();
    let (alice, t) = s.caller(&jwt).await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    advance(Duration::from_secs(330)).await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(s.tokens(), 1);
    advance(Duration::from_secs(12)).await;
    obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(
        s.tokens(),
        2,
        "incoming token 400 s, skew 60 s: refetched past 340 s"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn refresh_in_refreshes_in_the_background() {
    let entra = DevEntra::builder().start().await.unwrap();
    entra.set_refresh_in(Some(Duration::from_secs(100)));
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let obo = s.guard.obo_client().unwrap();
    let (alice, t) = s
        .caller(&s.entra.token_for("alice").unwrap().mint().unwrap())
        .await;
    let first = obo.token_for(&alice, &t, "graph").await.unwrap();
    advance(Duration::from_secs(101)).await;
    let served = obo.token_for(&alice, &t, "graph").await.unwrap();
    assert_eq!(
        served.expose_secret(),
        first.expose_secret(),
        "served while refreshing"
    );
    // Let the background refresh run.
    for _ in 0..200 {
        if s.tokens() == 2 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.tokens(), 2);
    let mut fresh = obo.token_for(&alice, &t, "graph").await.unwrap();
    for _ in 0..200 {
        if fresh.expose_secret() != first.expose_secret() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        fresh = obo.token_for(&alice, &t, "graph").await.unwrap();
    }
    assert_ne!(fresh.expose_secret(), first.expose_secret());
    assert_eq!(s.tokens(), 2);
}

#[tokio::test]
async fn certificate_credential_works_and_an_unregistered_one_fails() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cert = entra.client_certificate().unwrap();
    let dir = temp_dir("cert");
    let (cert_file, key_file) = cert.write_to(&dir).unwrap();
    let cfg = OboConfig {
        certificate_file: Some(cert_file),
        private_key_file: Some(key_file),
        apis: apis(),
        ..OboConfig::default()
    };
    let s = obo_stack(entra, cfg).await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(s.get("/api/token/graph", &alice).await.status(), 200);
    // Each request gets a fresh assertion (the emulator refuses a replayed `jti`).
    assert_eq!(s.get("/api/token/graph", &bob).await.status(), 200);
    assert_eq!(s.tokens(), 2);

    let other = DevCertificate::generate().unwrap();
    let dir = temp_dir("cert-unregistered");
    let (cert_file, key_file) = other.write_to(&dir).unwrap();
    let entra = DevEntra::builder().start().await.unwrap();
    let s = obo_stack(
        entra,
        OboConfig {
            certificate_file: Some(cert_file),
            private_key_file: Some(key_file),
            apis: apis(),
            ..OboConfig::default()
        },
    )
    .await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    let err = s.graph_token(&alice).await.unwrap_err();
    assert_eq!(
        err,
        OboError::InvalidClient {
            code: "AADSTS700027".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "entra refused the client credential (AADSTS700027)"
    );
    assert_eq!(s.get("/api/token/graph", &alice).await.status(), 500);
}

#[tokio::test]
async fn wrong_secret_fails_clearly() {
    let entra = DevEntra::builder().start().await.unwrap();
    let mut cfg = secret_config(&entra);
    cfg.client_secret = Some(Secret::new("not-the-secret"));
    let s = obo_stack(entra, cfg).await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    let err = s.graph_token(&alice).await.unwrap_err();
    assert_eq!(
        err,
        OboError::InvalidClient {
            code: "AADSTS7000215".into()
        }
    );
    let res = s.get("/api/token/graph", &alice).await;
    assert_eq!(res.status(), 500);
    assert!(res.text().await.unwrap().is_empty());
}

#[tokio::test]
async fn federated_token_file_is_reread_when_it_changes() {
    let entra = DevEntra::builder().start().await.unwrap();
    let dir = temp_dir("fic");
    let file = dir.join("token");
    std::fs::write(
        &file,
        entra
            .federated_assertion(Duration::from_secs(3600))
            .unwrap(),
    )
    .unwrap();
    let cfg = OboConfig {
        federated_token_file: Some(file.clone()),
        apis: apis(),
        ..OboConfig::default()
    };
    let s = obo_stack(entra, cfg).await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(s.get("/api/token/graph", &alice).await.status(), 200);

    // The workload's token is replaced by one that is no longer valid: the next exchange
    // reads it (and fails); a valid one again works.
    let expired = s.entra.federated_assertion(Duration::ZERO).unwrap();
    std::fs::File::create(&file)
        .unwrap()
        .write_all(format!("{expired}\n\n").as_bytes())
        .unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    let (p, t) = s.caller(&bob).await;
    let obo = s.guard.obo_client().unwrap();
    assert_eq!(
        obo.token_for(&p, &t, "graph").await.unwrap_err(),
        OboError::InvalidClient {
            code: "AADSTS700024".into()
        }
    );
    std::fs::write(
        &file,
        s.entra
            .federated_assertion(Duration::from_secs(3600))
            .unwrap(),
    )
    .unwrap();
    assert!(obo.token_for(&p, &t, "graph").await.is_ok());
}

#[tokio::test]
async fn consent_missing_answers_403_with_the_admin_consent_url() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    s.entra
        .set_obo_failure("bob", Some(DevOboFailure::ConsentRequired))
        .unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    let res = s.get("/api/token/graph", &bob).await;
    assert_eq!(res.status(), 403);
    let url = format!(
        "{}/{}/v2.0/adminconsent?client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        s.entra.url(),
        s.entra.tenant_id(),
        s.entra.api_client_id()
    );
    assert_eq!(
        challenge(&res),
        format!(
            "Bearer error=\"consent_required\", error_description=\"an administrator must grant this application consent to call a downstream api\", consent_uri=\"{url}\", resource_metadata=\"{}/.well-known/oauth-protected-resource/api\"",
            s.base
        )
    );
    let rejection = res.extensions().get::<Rejection>().map(Rejection::kind);
    assert!(rejection.is_none(), "extensions do not cross the wire");
    let err = s.graph_token(&bob).await.unwrap_err();
    assert_eq!(
        err,
        OboError::ConsentRequired {
            consent_url: url.clone()
        }
    );
    let (p, _) = s.caller(&bob).await;
    assert_eq!(
        s.guard.obo_client().unwrap().rejection(&err, &p).kind(),
        RejectionKind::ConsentRequired
    );
}

#[tokio::test]
async fn mfa_claims_challenge_only_for_cp1_clients() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    s.entra
        .set_obo_failure("alice", Some(DevOboFailure::MfaRequired))
        .unwrap();
    let cp1 = s
        .entra
        .token_for("alice")
        .unwrap()
        .client_capabilities(["cp1"])
        .mint()
        .unwrap();
    let res = s.get("/api/token/graph", &cp1).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        challenge(&res),
        format!(
            "Bearer realm=\"\", authorization_uri=\"{}/{}/oauth2/v2.0/authorize\", error=\"insufficient_claims\", claims=\"{}\"",
            s.entra.url(),
            s.entra.tenant_id(),
            STANDARD.encode(MFA_CLAIMS)
        )
    );

    let plain = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.get("/api/token/graph", &plain).await;
    assert_eq!(res.status(), 401);
    let ch = challenge(&res);
    assert!(ch.starts_with("Bearer error=\"invalid_token\", error_description=\"a downstream api requires a stronger sign-in (step-up"), "{ch}");
    assert!(!ch.contains("insufficient_claims"), "{ch}");
    assert_eq!(s.tokens(), 2, "failures are not cached");
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    s.entra
        .set_obo_failure("bob", Some(DevOboFailure::Throttled { retry_after: 7 }))
        .unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    let res = s.get("/api/token/graph", &bob).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(s.tokens(), 1);
    // Within the window idguard does not ask Entra again.
    let res = s.get("/api/token/graph", &bob).await;
    assert_eq!(res.status(), 503);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=7).contains(&wait));
    assert_eq!(s.tokens(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    s.entra
        .set_obo_failure("bob", Some(DevOboFailure::ServerError { times: 2 }))
        .unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(s.get("/api/token/graph", &bob).await.status(), 200);
    assert_eq!(s.tokens(), 3, "two 503s, then success");

    s.entra
        .set_obo_failure("alice", Some(DevOboFailure::ServerError { times: 10 }))
        .unwrap();
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.get("/api/token/graph", &alice).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(s.tokens(), 6, "one try and two retries");
}

#[tokio::test]
async fn an_expired_assertion_answers_401_invalid_token() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    // Expired 30 s ago: inside the guard's 60 s leeway, but Entra refuses it (AADSTS500133).
    let jwt = s
        .entra
        .token_for("alice")
        .unwrap()
        .issued_at(now() - 3630)
        .lifetime(Duration::from_secs(3600))
        .mint()
        .unwrap();
    let res = s.get("/api/token/graph", &jwt).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        challenge(&res),
        format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{}/.well-known/oauth-protected-resource/api\"",
            s.base
        )
    );
    assert_eq!(
        s.graph_token(&jwt).await.unwrap_err(),
        OboError::InvalidAssertion {
            code: "AADSTS500133".into()
        }
    );
}

#[tokio::test]
async fn app_only_principals_are_refused() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let app = s.entra.app_token("reporter").unwrap().mint().unwrap();
    let res = s.get("/api/token/graph", &app).await;
    assert_eq!(res.status(), 403);
    let err = s.graph_token(&app).await.unwrap_err();
    assert_eq!(err, OboError::AppOnly);
    assert!(err.to_string().contains("app-only"));
    assert_eq!(s.tokens(), 0, "Entra is never asked");
}

#[tokio::test]
async fn graph_profile_on_behalf_of_the_caller() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let s = obo_stack(entra, cfg).await;
    let alice = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.get("/api/profile", &alice).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["displayName"], "Alice Admin");
    assert_eq!(me["id"], "a11ce000-0000-4000-8000-00000000a11c");
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    let me: Value = s.get("/api/profile", &bob).await.json().await.unwrap();
    assert_eq!(me["userPrincipalName"], "bob@contoso.example");
    assert_eq!(s.entra.requests(DevEndpoint::Graph), 2);
    s.get("/api/profile", &alice).await;
    assert_eq!(
        s.entra.requests(DevEndpoint::Graph),
        2,
        "profiles are cached"
    );
}

fn overage_config(entra: &DevEntra, group_ids: Vec<String>) -> OboConfig {
    OboConfig {
        resolve_group_overage: true,
        overage_group_ids: group_ids,
        ..secret_config(entra)
    }
}

fn transfer() -> (Item, serde_json::Map<String, Value>) {
    let args = json!({"amount": 10, "to": "acme"});
    let tool = ToolInfo::from_mcp(&json!({
        "name": "transfer_funds",
        "annotations": {"readOnlyHint": false, "openWorldHint": true},
        "_meta": {"tags": ["finance"]}
    }))
    .unwrap();
    (Item::Tool(tool), args.as_object().unwrap().clone())
}

#[tokio::test]
async fn groups_overage_is_resolved_through_graph_and_policies_use_it() {
    let entra = DevEntra::builder()
        .user(overage_user())
        .start()
        .await
        .unwrap();
    let cfg = overage_config(&entra, Vec::new());
    let s = obo_stack(entra, cfg).await;
    let dave = s
        .entra
        .token_for("dave")
        .unwrap()
        .groups_overage()
        .mint()
        .unwrap();
    // Graph asks to wait once; idguard waits (1 s) and retries.
    s.entra
        .set_graph_failure(
            "dave",
            Some(DevGraphFailure::Throttled {
                times: 1,
                retry_after: 1,
            }),
        )
        .unwrap();
    let res = s.get("/api/principal", &dave).await;
    assert_eq!(res.status(), 200);
    let p: Value = res.json().await.unwrap();
    let groups = p["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 230, "all pages of transitive membership");
    assert!(groups.iter().any(|g| g == FINANCE_GROUP_ID));
    assert_eq!(p["groups_overage"], false);
    assert_eq!(
        s.entra.requests(DevEndpoint::Graph),
        4,
        "a 429 and three pages"
    );
    s.get("/api/principal", &dave).await;
    assert_eq!(
        s.entra.requests(DevEndpoint::Graph),
        4,
        "membership is cached"
    );

    // Policies see the resolved groups: Finance may transfer, the raw token may not.
    let engine = PolicyEngine::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")).unwrap();
    let (item, args) = transfer();
    // The token's own claims: an overage, no groups.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(dave.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let raw = Principal::from_unvalidated_claims(&claims).unwrap();
    assert!(raw.groups_overage() && raw.groups().is_empty());
    assert!(
        !engine
            .decide(&raw, &item, Phase::Call, Some(&args))
            .is_allow()
    );
    // `validate`, like the layer, resolves them (from the cache).
    let validated = s.guard.validate(&dave).await.unwrap();
    assert!(!validated.groups_overage() && validated.groups().len() == 230);
    assert!(
        engine
            .decide(&validated, &item, Phase::Call, Some(&args))
            .is_allow()
    );
    assert_eq!(s.entra.requests(DevEndpoint::Graph), 4);
    let resolved = s
        .guard
        .obo_client()
        .unwrap()
        .member_groups(&raw, &BearerToken::new(dave.clone()))
        .await
        .unwrap();
    assert!(resolved.iter().any(|g| g == FINANCE_GROUP_ID));
}

#[tokio::test]
async fn policies_decide_on_groups_resolved_in_the_layer() {
    let entra = DevEntra::builder()
        .user(overage_user())
        .start()
        .await
        .unwrap();
    // checkMemberGroups for the group ids the policies reference.
    let other = "0badc0de-0000-4000-8000-000000000000".to_owned();
    let cfg = overage_config(&entra, vec![FINANCE_GROUP_ID.to_owned(), other]);
    let s = obo_stack(entra, cfg).await;
    let engine = PolicyEngine::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")).unwrap();
    let decided = Arc::new(Mutex::new(None));
    let (item, args) = transfer();
    // A handler deciding with the Principal the layer produced.
    let seen = decided.clone();
    let app = Router::new()
        .route(
            "/api/decide",
            get(move |p: Principal| {
                let allow = engine
                    .decide(&p, &item, Phase::Call, Some(&args))
                    .is_allow();
                *seen.lock().unwrap() = Some(p.groups().to_vec());
                async move { if allow { "allow" } else { "deny" } }
            }),
        )
        .route_layer(s.guard.validate_token_layer());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dave = s
        .entra
        .token_for("dave")
        .unwrap()
        .groups_overage()
        .mint()
        .unwrap();
    let res = s
        .http
        .get(format!("{base}/api/decide"))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "allow");
    assert_eq!(
        decided.lock().unwrap().clone().unwrap(),
        [FINANCE_GROUP_ID.to_owned()]
    );
    assert_eq!(
        s.entra.requests(DevEndpoint::Graph),
        1,
        "one checkMemberGroups call"
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_secret_in_logs_or_answers() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // Global, not `set_default`: a thread-local subscriber misses events whose callsites
    // other tests in this binary registered first (tracing's interest cache). Other tests'
    // events land in the buffer too, which only widens the check.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let entra = DevEntra::builder()
        .user(overage_user())
        .start()
        .await
        .unwrap();
    let secret = entra.client_secret().to_owned();
    let cfg = overage_config(&entra, Vec::new());
    let s = obo_stack(entra, cfg).await;
    let mut secrets = vec![secret.clone()];
    let mut answers = Vec::new();

    // Success, then every failure mode.
    let alice = s
        .entra
        .token_for("alice")
        .unwrap()
        .client_capabilities(["cp1"])
        .mint()
        .unwrap();
    let downstream = s.graph_token(&alice).await.unwrap();
    secrets.push(downstream.expose_secret().to_owned());
    let (_, t) = s.caller(&alice).await;
    assert!(!format!("{downstream:?}{t:?}{:?}", s.guard).contains(&secret));
    answers.push(s.get("/api/token/graph", &alice).await);
    answers.push(s.get("/api/profile", &alice).await);
    secrets.push(alice);
    let dave = s
        .entra
        .token_for("dave")
        .unwrap()
        .groups_overage()
        .mint()
        .unwrap();
    answers.push(s.get("/api/principal", &dave).await);
    secrets.push(dave);
    let expired = s
        .entra
        .token_for("bob")
        .unwrap()
        .issued_at(now() - 3630)
        .lifetime(Duration::from_secs(3600))
        .mint()
        .unwrap();
    answers.push(s.get("/api/token/mail", &expired).await);
    secrets.push(expired);
    for (user, failure) in [
        ("bob", DevOboFailure::ConsentRequired),
        ("alice", DevOboFailure::MfaRequired),
        ("dave", DevOboFailure::Throttled { retry_after: 3 }),
    ] {
        s.entra.set_obo_failure(user, Some(failure)).unwrap();
        let jwt = s
            .entra
            .token_for(user)
            .unwrap()
            .client_capabilities(["cp1"])
            .mint()
            .unwrap();
        answers.push(s.get("/api/token/graph", &jwt).await);
        secrets.push(jwt);
    }
    // A wrong secret, on a second stack.
    let entra2 = DevEntra::builder().start().await.unwrap();
    let mut cfg = secret_config(&entra2);
    let wrong = format!("wrong~{}", uuid::Uuid::new_v4().simple());
    cfg.client_secret = Some(Secret::new(wrong.clone()));
    let s2 = obo_stack(entra2, cfg).await;
    let jwt = s2.entra.token_for("alice").unwrap().mint().unwrap();
    answers.push(s2.get("/api/token/graph", &jwt).await);
    secrets.push(jwt);
    secrets.push(wrong);

    let mut statuses = Vec::new();
    for res in answers {
        statuses.push(res.status().as_u16());
        let headers = format!("{:?}", res.headers());
        let body = res.text().await.unwrap();
        for s in &secrets {
            let head = s.get(..40).unwrap_or(s);
            assert!(!headers.contains(head), "a header echoes a secret");
            assert!(!body.contains(head), "a body echoes a secret");
        }
    }
    // Keep the test honest: the failures did happen (expired, consent, claims, throttled,
    // client credential).
    assert_eq!(statuses, [200, 200, 200, 401, 403, 401, 503, 500]);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("idguard"), "logs were captured");
    assert!(
        logs.contains("token endpoint refused"),
        "failures were logged"
    );
    assert!(
        logs.contains("on-behalf-of token issued"),
        "successes were logged"
    );
    for s in &secrets {
        // The signature part of a JWT is the most distinctive; check the whole thing and it.
        assert!(
            !logs.contains(s.as_str()),
            "a token or secret appears in the logs"
        );
        if let Some(sig) = s.rsplit('.').next().filter(|sig| sig.len() > 20) {
            assert!(!logs.contains(sig), "a token signature appears in the logs");
        }
    }
}

/// The demo `my_profile` tool (rmcp, stateless JSON) behind a guard with and without `[obo]`.
async fn call_my_profile(obo: Option<OboConfig>, entra: DevEntra) -> (Value, DevEntra) {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut builder = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"));
    if let Some(obo) = obo {
        builder = builder.obo(obo);
    }
    let guard = builder.build().await.unwrap();
    let demo = idguard_dev::demo::DemoServer::new();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let mcp = StreamableHttpService::new(
        move || Ok(demo.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = Router::new().nest_service(
        "/mcp",
        tower::ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .service(mcp),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let token = entra.token_for("alice").unwrap().mint().unwrap();
    let reply: Value = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "my_profile", "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (reply, entra)
}

#[tokio::test]
async fn demo_my_profile_returns_the_graph_profile_via_obo() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = secret_config(&entra);
    let (reply, entra) = call_my_profile(Some(cfg), entra).await;
    let result = &reply["result"];
    assert_eq!(result["isError"], false, "{reply}");
    let profile: Value =
        serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(profile["displayName"], "Alice Admin");
    assert_eq!(entra.requests(DevEndpoint::Token), 1);
    assert_eq!(entra.requests(DevEndpoint::Graph), 1);

    // Without `[obo]`: the explanation, no call to Entra.
    let entra = DevEntra::builder().start().await.unwrap();
    let (reply, entra) = call_my_profile(None, entra).await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("not configured")
    );
    assert_eq!(entra.requests(DevEndpoint::Token), 0);
}

#[tokio::test]
async fn a_slow_token_endpoint_times_out_with_503() {
    let entra = DevEntra::builder().start().await.unwrap();
    let cfg = OboConfig {
        timeout: Some("300ms".into()),
        ..secret_config(&entra)
    };
    let s = obo_stack(entra, cfg).await;
    s.entra
        .set_obo_failure("bob", Some(DevOboFailure::Slow { millis: 3_000 }))
        .unwrap();
    let bob = s.entra.token_for("bob").unwrap().mint().unwrap();
    let started = std::time::Instant::now();
    let res = s.get("/api/token/graph", &bob).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the loader's own timeout"
    );
    assert_eq!(
        s.graph_token(&bob).await.unwrap_err(),
        OboError::Unavailable("entra (timed out)".into())
    );
}
