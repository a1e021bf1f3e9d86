//! Upstream credentials (`[upstream] credential`) against a REAL upstream: the MCP Python
//! SDK server `tests/upstreams/whoami_server.py`, whose `whoami` tool verifies the bearer
//! token it received (signature against a JWKS, audience, expiry) and reports it. The
//! stack is the gateway's (`ValidateTokenLayer` → `AuthorizeMcpLayer` → `Gateway`), with
//! the dev Entra emulator, on loopback ports. `token_exchange` runs against a real RFC 8693
//! authorization server, `tests/upstreams/exchange_as.py`, that verifies what it receives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use axum::Router;
use axum::routing::get;
use http::{HeaderName, HeaderValue};
use idguard::IdGuard;
use idguard::gateway::{
    Gateway, IdentityAssertion, JWKS_PATH, JWT_TOKEN_TYPE, TokenExchange, UpstreamCredential,
};
use idguard::policy::PolicyEngine;
use idguard_dev::{DevApi, DevEndpoint, DevEntra};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use whoami::call_whoami;

#[path = "support/whoami.rs"]
mod whoami;

#[path = "support/python_server.rs"]
mod python_server;
use python_server::{PyServer, loopback_client as http};

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
    up: PyServer,
}

async fn stack(credential: impl FnOnce(&str) -> UpstreamCredential, env: &[(&str, &str)]) -> Stack {
    let entra = DevEntra::builder().start().await.unwrap();
    stack_with(entra, WHOAMI, credential, env).await
}

const WHOAMI: &str = "tests/upstreams/whoami_server.py";

/// [`stack`] with this emulator and upstream `script`; `{entra}` in an `env` value becomes
/// the emulator's URL, `{graph}` its Graph URL.
async fn stack_with(
    entra: DevEntra,
    script: &str,
    credential: impl FnOnce(&str) -> UpstreamCredential,
    env: &[(&str, &str)],
) -> Stack {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
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
    let entra_jwks = entra_jwks(&entra);
    let jwks_url = format!("{base}{JWKS_PATH}");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                v.replace("{jwks}", &jwks_url)
                    .replace("{entra_jwks}", &entra_jwks)
                    .replace("{entra}", entra.url())
                    .replace("{graph}", &entra.graph_url()),
            )
        })
        .collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let up = PyServer::start(script, &env_ref);
    let credential = credential(&resource);
    let jwks = credential.assertion().map(IdentityAssertion::jwks);
    let policies = PolicyEngine::from_dir(manifest_dir().join("tests/gateway/policies")).unwrap();
    let gateway = Gateway::new(
        reqwest::Url::parse(&up.url("/mcp")).unwrap(),
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

fn entra_jwks(entra: &DevEntra) -> String {
    format!("{}/{}/discovery/v2.0/keys", entra.url(), entra.tenant_id())
}

impl Stack {
    fn post(&self, http: &reqwest::Client, token: &str, body: &Value) -> reqwest::RequestBuilder {
        http.post(&self.url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(body)
    }

    /// `initialize` as `token`.
    async fn initialize(&self, http: &reqwest::Client, token: &str) -> reqwest::Response {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}});
        self.post(http, token, &body).send().await.unwrap()
    }

    /// `whoami` as dev user `user` with a fresh token, which must succeed with a valid
    /// bearer token: (the caller's token, the answer, the user's object id).
    async fn whoami_as(&self, user: &str) -> (String, Value, String) {
        let token = self.entra.token_for(user).unwrap().mint().unwrap();
        let (status, who) = self.whoami(&token).await;
        assert_eq!(status, 200, "{who}");
        assert_eq!(who["bearer"]["valid"], true, "{who}");
        assert_eq!(who["saw_foreign_token"], false, "{who}");
        let u = self.entra.users().iter().find(|u| u.key == user).unwrap();
        (token, who, u.object_id.clone())
    }

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
        let (token, who, oid) = s.whoami_as(user).await;
        let bearer = &who["bearer"];
        assert_eq!(bearer["claims"]["oid"], oid.as_str(), "{who}");
        assert_eq!(bearer["claims"]["aud"], UPSTREAM_AUD);
        originals.push(token);
    }
    let seen = s.up.bearers().await;
    assert!(!seen.is_empty());
    assert!(originals.iter().all(|o| !seen.contains(o)));
    // An app-only caller: on-behalf-of needs a user.
    let app = s.entra.app_token("reporter").unwrap().mint().unwrap();
    let (status, _) = s.whoami(&app).await;
    assert_eq!(status, 403);
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
        let (token, who, oid) = s.whoami_as(user).await;
        let claims = &who["bearer"]["claims"];
        assert_eq!(who["bearer"]["alg"], "ES256");
        assert_eq!(claims["iss"], s.url.as_str());
        assert_eq!(claims["aud"], UPSTREAM_AUD);
        assert_eq!(claims["oid"], oid.as_str());
        assert_eq!(
            claims["sub"],
            format!("{}/{oid}", s.entra.tenant_id()).as_str()
        );
        let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(ttl <= 300, "{ttl}");
        assert!(
            claims["roles"].is_array() && claims["azp"].is_string(),
            "{claims}"
        );
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

const EXCHANGE_AUD: &str = "urn:contoso:upstream";
const EXCHANGE_CLIENT: &str = "idguard-gateway";
const EXCHANGE_SECRET: &str = "s3cret:+/&=";

async fn as_stats(authz: &PyServer) -> Value {
    authz.get_json("/_probe/stats").await
}

async fn as_fail(authz: &PyServer, how: Value) {
    authz.post_json("/_probe/fail", &how).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_gets_each_caller_a_token_from_the_upstreams_own_server() {
    let entra = DevEntra::builder().start().await.unwrap();
    let api = entra.api_client_id().to_owned();
    let authz = PyServer::start(
        "tests/upstreams/exchange_as.py",
        &[
            ("EXCHANGE_SUBJECT_JWKS", &entra_jwks(&entra)),
            (
                "EXCHANGE_SUBJECT_ISSUER",
                &entra.issuer_v2(entra.tenant_id()),
            ),
            ("EXCHANGE_SUBJECT_AUDIENCES", &format!("{api},api://{api}")),
            ("EXCHANGE_CLIENT_ID", EXCHANGE_CLIENT),
            ("EXCHANGE_CLIENT_SECRET", EXCHANGE_SECRET),
            ("EXCHANGE_AUDIENCE", EXCHANGE_AUD),
        ],
    );
    let endpoint = authz.url("/token");
    let as_jwks = authz.url("/jwks.json");
    let s = stack_with(
        entra,
        WHOAMI,
        |issuer| {
            UpstreamCredential::token_exchange(
                TokenExchange::new(&endpoint)
                    .unwrap()
                    .with_audience(EXCHANGE_AUD)
                    .with_scopes(["tools.read"])
                    .with_client_secret(EXCHANGE_CLIENT, idguard::obo::Secret::new(EXCHANGE_SECRET))
                    .with_actor_token(
                        IdentityAssertion::generate(issuer, &endpoint).unwrap(),
                        JWT_TOKEN_TYPE,
                    ),
            )
        },
        &[
            ("WHOAMI_AUDIENCE", EXCHANGE_AUD),
            ("WHOAMI_JWKS_URL", &as_jwks),
        ],
    )
    .await;
    // The AS verifies the actor token with idguard's JWKS, now that idguard listens.
    authz
        .post_json(
            "/_probe/actor",
            &json!({"jwks": s.url.replace("/mcp", JWKS_PATH)}),
        )
        .await;
    let mut originals = Vec::new();
    for user in ["alice", "bob"] {
        let (token, who, oid) = s.whoami_as(user).await;
        let bearer = &who["bearer"];
        assert_eq!(bearer["alg"], "ES256");
        assert_eq!(bearer["claims"]["oid"], oid.as_str(), "{who}");
        assert_eq!(bearer["claims"]["aud"], EXCHANGE_AUD);
        assert_eq!(bearer["claims"]["iss"], authz.url("").as_str());
        assert_eq!(bearer["claims"]["act"]["sub"], s.url.as_str(), "{who}");
        assert_eq!(bearer["claims"]["scope"], "tools.read");
        originals.push(token);
    }
    // initialize + tools/call for each caller: one exchange each (the second is cached).
    let stats = as_stats(&authz).await;
    assert_eq!(stats["requests"], 2, "{stats}");
    assert_eq!(stats["subjects"], json!(originals));
    let seen = s.up.bearers().await;
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(originals.iter().all(|o| !seen.contains(o)));
    // Cached across requests; concurrent misses for one new token make one exchange.
    assert_eq!(s.whoami(&originals[0]).await.0, 200);
    let fresh = s.entra.token_for("bob").unwrap().mint().unwrap();
    let calls: Vec<_> = (0..4).map(|_| s.whoami(&fresh)).collect();
    for (status, who) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{who}");
    }
    assert_eq!(as_stats(&authz).await["requests"], 3);
    // The AS's refusals: invalid_target → 403, invalid_grant → 401 invalid_token.
    let http = http();
    for (error, want) in [("invalid_target", 403), ("invalid_grant", 401)] {
        as_fail(&authz, json!({"status": 400, "error": error})).await;
        let token = s.entra.token_for("alice").unwrap().mint().unwrap();
        let res = s.initialize(&http, &token).await;
        assert_eq!(res.status(), want, "{error}");
        if want == 401 {
            let challenge = res.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.contains("invalid_token"), "{challenge}");
        }
    }
    // Throttled: 503 with the AS's Retry-After. Not an RFC 8693 answer (a JWT where an
    // access token was asked for, an unknown token type): 502.
    as_fail(&authz, json!({"status": 429, "retry_after": 7})).await;
    let token = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.initialize(&http, &token).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "7");
    for answer in [
        json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60,
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt"}),
        json!({"access_token": "t", "token_type": "DPoP", "expires_in": 60,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
        json!({"access_token": "t", "token_type": "Bearer", "expires_in": "soon",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
    ] {
        as_fail(&authz, json!({"status": 200, "answer": answer})).await;
        let token = s.entra.token_for("alice").unwrap().mint().unwrap();
        assert_eq!(s.initialize(&http, &token).await.status(), 502, "{answer}");
    }
    as_fail(&authz, json!({})).await;
    // The AS down: 503 with Retry-After for a caller not cached; the cached one still works.
    let before = as_stats(&authz).await["requests"].as_u64().unwrap();
    assert_eq!(before, 9);
    drop(authz);
    let token = s.entra.token_for("alice").unwrap().mint().unwrap();
    let res = s.initialize(&http, &token).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(s.whoami(&originals[1]).await.0, 200);
    assert!(!s.up.bearers().await.contains(&token));
}

const PROFILE_CLIENT: &str = "6f1c2a3b-0d4e-4f5a-9b8c-7d6e5f4a3b2c";

/// The official MCP Python SDK client (`tests/upstreams/python_client.py`) as `token`:
/// calls `tool` first, then lists the tools. Its JSON report.
async fn python_client(url: &str, token: &str, tool: &str) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("tests/upstreams/python_client.py")
        .arg(url)
        .args(["--call", tool])
        .current_dir(manifest_dir())
        .env("IDGUARD_TOKEN", token)
        .stdin(Stdio::null());
    // The client bounds itself (30 s).
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The seed scenario: a FastMCP-style Python server whose tool does its own on-behalf-of to
/// (emulated) Graph with the token idguard obtained for it, called by the official Python
/// SDK client through idguard as alice and as bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_the_upstream_calls_graph_on_behalf_of_each_caller() {
    let secret = format!("upstream~{}", uuid::Uuid::new_v4().simple());
    let entra = DevEntra::builder()
        .api(DevApi {
            client_id: PROFILE_CLIENT.into(),
            identifier_uri: UPSTREAM_AUD.into(),
            client_secret: secret.clone(),
        })
        .start()
        .await
        .unwrap();
    let s = stack_with(
        entra,
        "tests/upstreams/graph_profile_server.py",
        |_| UpstreamCredential::obo([UPSTREAM_SCOPE]),
        &[
            ("WHOAMI_AUDIENCE", UPSTREAM_AUD),
            ("WHOAMI_JWKS_URL", "{entra_jwks}"),
            ("PROFILE_CLIENT_ID", PROFILE_CLIENT),
            ("PROFILE_CLIENT_SECRET", &secret),
            ("PROFILE_AUTHORITY", "{entra}"),
            ("PROFILE_GRAPH_URL", "{graph}"),
        ],
    )
    .await;
    let mut originals = Vec::new();
    for user in ["alice", "bob"] {
        let token = s.entra.token_for(user).unwrap().mint().unwrap();
        let graph_before = s.entra.requests(DevEndpoint::Graph);
        let out = python_client(&s.url, &token, "my_profile").await;
        let call = &out["call"];
        assert_eq!(call["ok"], true, "{out}");
        assert_eq!(call["is_error"], false, "{out}");
        // The structured result is the report's last line.
        let text = call["text"].as_str().unwrap();
        let answer: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let u = s.entra.users().iter().find(|u| u.key == user).unwrap();
        let profile = &answer["profile"];
        assert_eq!(profile["id"], u.object_id.as_str(), "{answer}");
        assert_eq!(profile["displayName"], u.name.as_str(), "{answer}");
        assert_eq!(profile["userPrincipalName"], u.upn.as_str(), "{answer}");
        assert_eq!(answer["caller_oid"], u.object_id.as_str(), "{answer}");
        assert_eq!(answer["saw_foreign_token"], false, "{answer}");
        assert!(
            out["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("my_profile"))
        );
        assert_eq!(s.entra.requests(DevEndpoint::Graph), graph_before + 1);
        originals.push(token);
    }
    let seen = s.up.bearers().await;
    assert!(!seen.is_empty());
    assert!(originals.iter().all(|o| !seen.contains(o)));
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
    std::fs::write(
        &file,
        "[upstream]\ncredential = \"token_exchange\"\ntoken_endpiont = \"https://as/token\"\n",
    )
    .unwrap();
    let err = idguard::IdGuardConfig::load(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `token_endpoint`"), "{err}");
    std::fs::write(
        &file,
        "[upstream]\ncredential = \"token_exchange\"\ntoken_endpoint = \"http://as.example.com/token\"\nresource = \"https://up/mcp\"\n",
    )
    .unwrap();
    let config = idguard::IdGuardConfig::load(Some(&file), Vec::new()).unwrap();
    let problems = config.resolve().unwrap_err().to_string();
    assert!(
        problems.contains("upstream.token_endpoint") && problems.contains("https"),
        "{problems}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
