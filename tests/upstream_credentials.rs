//! Upstream credentials (`[upstream] credential`) against a REAL upstream: the MCP Python
//! SDK server `tests/upstreams/whoami_server.py`, whose `whoami` tool verifies the bearer
//! token it received (signature against a JWKS, audience, expiry) and reports it. The
//! stack is the gateway's (`ValidateTokenLayer` → `AuthorizeMcpLayer` → `Gateway`), with
//! the dev Entra emulator, on loopback ports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::routing::get;
use http::{HeaderName, HeaderValue};
use idguard::IdGuard;
use idguard::gateway::{Gateway, IdentityAssertion, JWKS_PATH, UpstreamCredential};
use idguard::policy::PolicyEngine;
use idguard_dev::DevEntra;
use serde_json::Value;
use tower::ServiceBuilder;
use whoami::{Whoami, call_whoami};

#[path = "support/whoami.rs"]
mod whoami;

const UPSTREAM_SCOPE: &str = "api://upstream-app/.default";
const UPSTREAM_AUD: &str = "api://upstream-app";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// idguard in gateway mode with `credential`, in front of an upstream started with `env`
/// (`{jwks}` in a value becomes idguard's JWKS URL, `{entra_jwks}` the emulator's).
struct Stack {
    entra: DevEntra,
    url: String,
    up: Whoami,
}

async fn stack(credential: impl FnOnce(&str) -> UpstreamCredential, env: &[(&str, &str)]) -> Stack {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let entra = DevEntra::builder().start().await.unwrap();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let resource = format!("{base}/mcp");
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(resource.clone())
        .obo(idguard::OboConfig {
            client_secret: Some(idguard::obo::Secret::new(entra.client_secret())),
            ..idguard::OboConfig::default()
        })
        .build()
        .await
        .unwrap();
    let entra_jwks = format!("{}/{}/discovery/v2.0/keys", entra.url(), entra.tenant_id());
    let jwks_url = format!("{base}{JWKS_PATH}");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                v.replace("{jwks}", &jwks_url)
                    .replace("{entra_jwks}", &entra_jwks),
            )
        })
        .collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let up = Whoami::start(manifest_dir(), &env_ref);
    let credential = credential(&resource);
    let jwks = credential.assertion().map(IdentityAssertion::jwks);
    let policies = PolicyEngine::from_dir(manifest_dir().join("tests/gateway/policies")).unwrap();
    let gateway = Gateway::new(
        reqwest::Url::parse(&up.url()).unwrap(),
        reqwest::Client::builder().no_proxy().build().unwrap(),
    )
    .with_credential(credential);
    let mut app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(guard.authorize_mcp_layer(policies))
            .service(gateway),
    );
    if let Some(jwks) = jwks {
        app = app.route(JWKS_PATH, get(move || async move { axum::Json(jwks) }));
    }
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stack {
        entra,
        url: resource,
        up,
    }
}

impl Stack {
    /// `initialize`, then `tools/call whoami`, as `token`.
    async fn whoami(&self, token: &str) -> (u16, Value) {
        call_whoami(&self.url, token).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obo_gives_each_user_their_own_token_for_the_upstream() {
    let s = stack(
        |_| UpstreamCredential::obo([UPSTREAM_SCOPE]),
        &[
            ("WHOAMI_AUDIENCE", UPSTREAM_AUD),
            ("WHOAMI_JWKS_URL", "{entra_jwks}"),
        ],
    )
    .await;
    let mut originals = Vec::new();
    for user in ["alice", "bob"] {
        let token = s.entra.token_for(user).unwrap().mint().unwrap();
        let (status, who) = s.whoami(&token).await;
        assert_eq!(status, 200, "{who}");
        let bearer = &who["bearer"];
        assert_eq!(bearer["valid"], true, "{who}");
        let want_oid = s
            .entra
            .users()
            .iter()
            .find(|u| u.key == user)
            .unwrap()
            .object_id
            .clone();
        assert_eq!(bearer["claims"]["oid"], want_oid.as_str(), "{who}");
        assert_eq!(bearer["claims"]["aud"], UPSTREAM_AUD);
        assert_eq!(who["saw_foreign_token"], false, "{who}");
        originals.push(token);
    }
    let seen = s.up.bearers().await;
    assert!(!seen.is_empty());
    assert!(originals.iter().all(|o| !seen.contains(o)));
    // An app-only caller: on-behalf-of needs a user.
    let app = s.entra.app_token("reporter").unwrap().mint().unwrap();
    let (status, body) = s.whoami(&app).await;
    assert_eq!(status, 403);
    assert!(body.to_string().contains("app-only"), "{body}");
    assert!(!s.up.bearers().await.contains(&app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_assertions_name_the_caller_and_verify_with_idguards_jwks() {
    let s = stack(
        |issuer| {
            UpstreamCredential::identity_assertion(
                IdentityAssertion::generate(issuer, UPSTREAM_AUD).unwrap(),
            )
        },
        &[
            ("WHOAMI_AUDIENCE", UPSTREAM_AUD),
            ("WHOAMI_JWKS_URL", "{jwks}"),
        ],
    )
    .await;
    let mut originals = Vec::new();
    let mut subjects = Vec::new();
    for user in ["alice", "bob"] {
        let token = s.entra.token_for(user).unwrap().mint().unwrap();
        let (status, who) = s.whoami(&token).await;
        assert_eq!(status, 200, "{who}");
        let claims = &who["bearer"]["claims"];
        assert_eq!(who["bearer"]["valid"], true, "{who}");
        assert_eq!(who["bearer"]["alg"], "ES256");
        assert_eq!(claims["iss"], s.url.as_str());
        assert_eq!(claims["aud"], UPSTREAM_AUD);
        let u = s.entra.users().iter().find(|u| u.key == user).unwrap();
        assert_eq!(claims["oid"], u.object_id.as_str());
        assert_eq!(
            claims["sub"],
            format!("{}/{}", s.entra.tenant_id(), u.object_id).as_str()
        );
        let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(ttl <= 300, "{ttl}");
        assert!(
            claims["roles"].is_array() && claims["azp"].is_string(),
            "{claims}"
        );
        assert_eq!(who["saw_foreign_token"], false, "{who}");
        subjects.push(claims["sub"].clone());
        originals.push(token);
    }
    assert_ne!(subjects[0], subjects[1]);
    let seen = s.up.bearers().await;
    assert!(originals.iter().all(|o| !seen.contains(o)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_header_arrives_and_no_token_does() {
    let s = stack(
        |_| {
            UpstreamCredential::static_header(
                HeaderName::from_static("x-idguard-key"),
                HeaderValue::from_static("gateway-secret-1"),
            )
        },
        &[("WHOAMI_STATIC_HEADER", "x-idguard-key")],
    )
    .await;
    let token = s.entra.token_for("bob").unwrap().mint().unwrap();
    let (status, who) = s.whoami(&token).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["static"], "gateway-secret-1");
    assert!(who["bearer"].is_null(), "{who}");
    assert!(s.up.bearers().await.is_empty());
}

#[test]
fn bad_upstream_keys_are_named() {
    let dir = std::env::temp_dir().join(format!("idguard-upcred-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("idguard.toml");
    std::fs::write(
        &file,
        "[upstream]\ncredentail = \"obo\"\nheader = \"X-A\"\n",
    )
    .unwrap();
    let err = idguard::IdGuardConfig::load(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream.credentail"), "{err}");
    assert!(err.contains("did you mean `credential`"), "{err}");
    std::fs::write(
        &file,
        "[upstream]\ncredential = \"obo\"\naudience = \"api://x\"\n",
    )
    .unwrap();
    let config = idguard::IdGuardConfig::load(Some(&file), Vec::new()).unwrap();
    let mut keys: Vec<String> = match config.resolve() {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.key().to_owned()).collect(),
    };
    keys.retain(|k| k.starts_with("upstream."));
    assert_eq!(keys, ["upstream.audience", "upstream.scopes"]);
    let _ = std::fs::remove_dir_all(&dir);
}
