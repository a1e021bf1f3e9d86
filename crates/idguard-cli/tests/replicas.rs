//! Two `idguard` processes sharing one real Redis server (`[store]`), with the OAuth proxy
//! on, against one dev Entra emulator: a sign-in that starts on one replica finishes on
//! the other, refresh rotation is exact across them, a replayed refresh token revokes the
//! family everywhere, a replica killed mid sign-in leaves the flow to the other, an
//! on-behalf-of token one replica obtained serves the other from Redis, and with Redis
//! stopped mid-run nothing that needs it is allowed, until it is back.
//!
//! Both replicas have the same configuration (the same `[oauth]` keys, the same public
//! resource `http://127.0.0.1/mcp`); the test plays the load balancer by sending each step
//! to the replica it chooses, as a client behind one would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "../../../tests/support/browser.rs"]
mod browser;
mod common;
#[path = "../../../tests/support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use browser::{Browser, hidden, location};
use common::{Launch, Proc, Workdir, base_of, config_toml, free_port, health, metrics, until};
use idguard_dev::{DevEndpoint, DevEntra, DevUser};
use redis_server::RedisServer;
use serde_json::{Value, json};

/// The public base URL both replicas are configured with (the load balancer's).
const PUBLIC: &str = "http://127.0.0.1";
const CLIENT_REDIRECT: &str = "http://127.0.0.1:33418/callback";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The shared configuration of every replica.
fn config(entra: &DevEntra, redis: &RedisServer, ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "{}\n[mcp]\nallowed_hosts = [{}]\n\n[obo]\nclient_secret = \"{}\"\ngraph_url = \"{}\"\n[obo.apis]\ngraph = [\"https://graph.microsoft.com/User.Read\"]\n\n[oauth]\nscopes = [\"mcp.tools\"]\nkeys = [\"replica-test-key-0123456789abcdef-0123456789abcdef\"]\n\n[store]\nredis_url = \"{}\"\nkey_prefix = \"replicas:\"\nsession_cache_ttl = \"1s\"\n",
        config_toml(entra.url(), entra, "required_scopes = [\"mcp.tools\"]", ""),
        hosts.join(", "),
        entra.client_secret(),
        entra.graph_url(),
        redis.url()
    )
}

/// A replica on `port`, in its own copy of the configuration and policies.
fn replica(name: &str, config: &str, port: u16) -> (Proc, String) {
    replica_with(name, config, port, &[])
}

/// [`replica`] with more environment variables.
fn replica_with(name: &str, config: &str, port: u16, env: &[(&str, &str)]) -> (Proc, String) {
    let dir = Workdir::with_policies(&format!("replicas-{name}"));
    dir.write("idguard.toml", config);
    let mut vars = vec![("IDGUARD_LOG", "idguard=debug")];
    vars.extend_from_slice(env);
    let proc = Launch::in_dir(&["serve", "--port", &port.to_string()], dir)
        .env(&vars)
        .stderr_log()
        .spawn();
    let base = base_of(&proc.line("idguard: demo tools at "));
    (proc, base)
}

struct Cluster {
    entra: DevEntra,
    redis: RedisServer,
    a: Option<Proc>,
    _b: Proc,
    base_a: String,
    base_b: String,
    http: reqwest::Client,
}

async fn cluster(name: &str) -> Cluster {
    let entra = DevEntra::builder()
        .user(DevUser {
            key: "dave".into(),
            name: "Dave Reader".into(),
            upn: "dave@contoso.example".into(),
            object_id: "da4e0000-0000-4000-8000-0000000da4e0".into(),
            roles: vec!["Tools.Read".into()],
            groups: Vec::new(),
            ..idguard_dev::overage_user()
        })
        .start()
        .await
        .unwrap();
    entra.set_sign_in_user(Some("alice")).unwrap();
    entra.allow_redirect_uri(format!("{PUBLIC}/callback"));
    let redis = RedisServer::start();
    let ports = [free_port(), free_port()];
    let text = config(&entra, &redis, &ports);
    let (a, base_a) = replica(&format!("{name}-a"), &text, ports[0]);
    let (b, base_b) = replica(&format!("{name}-b"), &text, ports[1]);
    Cluster {
        entra,
        redis,
        a: Some(a),
        _b: b,
        base_a,
        base_b,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

/// `url` (on the public base URL) sent to the replica at `base`.
fn on(base: &str, url: &str) -> String {
    format!("{base}{}", url.strip_prefix(PUBLIC).unwrap())
}

/// `POST /register` (a client with the test's redirect URI) at the replica at `base`.
async fn try_register(http: &reqwest::Client, base: &str) -> reqwest::Response {
    http.post(format!("{base}/register"))
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "client_name": "replicas"}))
        .send()
        .await
        .unwrap()
}

/// A registered client's id.
async fn register(http: &reqwest::Client, base: &str) -> String {
    let res = try_register(http, base).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_owned()
}

/// `/authorize` and `/consent` on the replica at `base`, then Entra: the browser and the
/// callback URL (on the public base URL).
async fn start_sign_in(base: &str, client_id: &str) -> (Browser, String) {
    let mut b = Browser::new();
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/authorize"),
        [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CLIENT_REDIRECT),
            ("state", "s1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("scope", "mcp.tools offline_access"),
            ("resource", &format!("{PUBLIC}/mcp")),
        ],
    )
    .unwrap();
    let res = b.get(url.as_str()).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    let res = b
        .post_form(
            &format!("{base}/consent"),
            &[
                ("txn", &hidden(&html, "txn")),
                ("csrf", &hidden(&html, "csrf")),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303, "consent redirects to Entra");
    let res = b.get(&location(&res)).await;
    assert_eq!(res.status(), 302);
    let callback = location(&res);
    assert!(
        callback.starts_with(&format!("{PUBLIC}/callback")),
        "{callback}"
    );
    (b, callback)
}

/// `/callback` on the replica at `base`: the client's code.
async fn finish_sign_in(b: &mut Browser, base: &str, callback: &str) -> String {
    b.back_to_client(&on(base, callback), CLIENT_REDIRECT).await["code"].clone()
}

async fn token(http: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let res = http
        .post(format!("{base}/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn redeem(http: &reqwest::Client, base: &str, client_id: &str, code: &str) -> Value {
    let (status, body) = token(
        http,
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CLIENT_REDIRECT),
            ("client_id", client_id),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh(http: &reqwest::Client, base: &str, client_id: &str, rt: &str) -> (u16, Value) {
    token(
        http,
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client_id),
        ],
    )
    .await
}

/// The status of a `tools/list` with `token` at the replica at `base`.
async fn mcp_status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    common::mcp_post(
        http,
        &format!("{base}/mcp"),
        token,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

/// The reply of `tools/call my_profile` (the demo tool that reads the caller's Graph
/// profile on their behalf) with `token` at the replica at `base`.
async fn my_profile(http: &reqwest::Client, base: &str, token: &str) -> String {
    common::mcp_post(
        http,
        &format!("{base}/mcp"),
        token,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "my_profile", "arguments": {}}}),
    )
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

fn field<'v>(v: &'v Value, name: &str) -> &'v str {
    v[name].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_crosses_replicas_and_rotation_and_revocation_are_shared() {
    let c = cluster("cross").await;
    let (a, b, http) = (&c.base_a, &c.base_b, &c.http);
    // Registration, /authorize and /consent on A; /callback and /token on B.
    let client_id = register(http, a).await;
    let (mut browser, callback) = start_sign_in(a, &client_id).await;
    let code = finish_sign_in(&mut browser, b, &callback).await;
    let tokens = redeem(http, b, &client_id, &code).await;
    let access1 = field(&tokens, "access_token");
    let rt1 = field(&tokens, "refresh_token");
    // The token works on both replicas; so does a direct Entra token.
    assert_eq!(mcp_status(http, a, access1).await, 200);
    assert_eq!(mcp_status(http, b, access1).await, 200);
    let direct = c.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(mcp_status(http, a, &direct).await, 200);
    // Refresh on A, then on B with what A issued.
    let (status, renewed) = refresh(http, a, &client_id, rt1).await;
    assert_eq!(status, 200, "{renewed}");
    let rt2 = field(&renewed, "refresh_token");
    let (status, renewed) = refresh(http, b, &client_id, rt2).await;
    assert_eq!(status, 200, "{renewed}");
    let access3 = field(&renewed, "access_token").to_owned();
    let rt3 = field(&renewed, "refresh_token").to_owned();
    assert_eq!(mcp_status(http, a, &access3).await, 200);

    // Replaying the first refresh token on B revokes the family on both replicas: A
    // refuses once its cached copy of the session is older than `session_cache_ttl`.
    let (status, err) = refresh(http, b, &client_id, rt1).await;
    assert_eq!((status, field(&err, "error")), (400, "invalid_grant"));
    assert_eq!(mcp_status(http, b, &access3).await, 401);
    until(Duration::from_secs(10), "A sees the revocation", || async {
        (mcp_status(http, a, &access3).await == 401).then_some(())
    })
    .await;
    let (status, _) = refresh(http, a, &client_id, &rt3).await;
    assert_eq!(status, 400, "the newest refresh token died with its family");

    // The other way round, and a code replayed on the other replica: refused, and what
    // its first redemption issued is revoked on both.
    let (mut browser, callback) = start_sign_in(b, &client_id).await;
    let code = finish_sign_in(&mut browser, a, &callback).await;
    let tokens = redeem(http, a, &client_id, &code).await;
    let access = field(&tokens, "access_token");
    assert_eq!(mcp_status(http, b, access).await, 200);
    let (status, _) = token(
        http,
        b,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CLIENT_REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 400, "a code redeemed on A does not redeem on B");
    until(
        Duration::from_secs(10),
        "the replay revokes on both",
        || async {
            (mcp_status(http, a, access).await == 401 && mcp_status(http, b, access).await == 401)
                .then_some(())
        },
    )
    .await;

    // `/revoke` on one replica ends the session on both.
    let (mut browser, callback) = start_sign_in(a, &client_id).await;
    let code = finish_sign_in(&mut browser, a, &callback).await;
    let tokens = redeem(http, a, &client_id, &code).await;
    let access = field(&tokens, "access_token");
    assert_eq!(mcp_status(http, b, access).await, 200);
    let res = http
        .post(format!("{a}/revoke"))
        .form(&[
            ("token", field(&tokens, "refresh_token")),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    until(
        Duration::from_secs(10),
        "B ends the revoked session",
        || async { (mcp_status(http, b, access).await == 401).then_some(()) },
    )
    .await;
    assert_eq!(mcp_status(http, a, access).await, 401);

    // Both replicas report the shared store.
    for base in [a, b] {
        let h = health(http, base).await;
        assert_eq!(h["store"]["kind"], "redis", "{h}");
        assert_eq!(h["store"]["reachable"], true, "{h}");
    }
    let m = metrics(http, a).await;
    assert!(
        m.contains("idguard_store_reachable{kind=\"redis\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("idguard_store_errors_total{kind=\"redis\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_sign_in_leaves_the_flow_to_the_other() {
    let mut c = cluster("killed").await;
    let http = c.http.clone();
    let client_id = register(&http, &c.base_a).await;
    let (mut browser, callback) = start_sign_in(&c.base_a, &client_id).await;
    // A goes away between Entra and the callback.
    let mut a = c.a.take().unwrap();
    a.terminate(Duration::from_secs(30)).await;
    let code = finish_sign_in(&mut browser, &c.base_b, &callback).await;
    let tokens = redeem(&http, &c.base_b, &client_id, &code).await;
    assert_eq!(
        mcp_status(&http, &c.base_b, field(&tokens, "access_token")).await,
        200
    );
    let (status, body) = refresh(
        &http,
        &c.base_b,
        &client_id,
        field(&tokens, "refresh_token"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_behalf_of_tokens_are_shared_and_a_stopped_redis_allows_nothing_it_should_not() {
    let mut c = cluster("obo").await;
    let http = c.http.clone();
    let (a, b) = (c.base_a.clone(), c.base_b.clone());
    let bob = c.entra.token_for("bob").unwrap().mint().unwrap();
    let exchanges = || c.entra.requests(DevEndpoint::Token);

    // Bob's Graph token, obtained on A, serves B from Redis: one token request in all.
    let before = exchanges();
    let profile = my_profile(&http, &a, &bob).await;
    assert!(profile.contains("Bob Reader"), "{profile}");
    assert_eq!(exchanges(), before + 1);
    assert!(my_profile(&http, &b, &bob).await.contains("Bob Reader"));
    assert_eq!(exchanges(), before + 1, "B used the token A obtained");
    // 100 concurrent first requests of one caller, half on each replica: one replica
    // exchanges while the others wait for its token (observed: 1). The bound is the
    // issue's, 2: each replica's own single flight alone would also stay within it, so
    // the sharing itself is shown by B's request above, which costs none.
    // (Replicas also keep each user's Graph profile: a user neither replica has seen.)
    let fresh = c.entra.token_for("dave").unwrap().mint().unwrap();
    let before = exchanges();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (http, token) = (http.clone(), fresh.clone());
        let base = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.spawn(async move { my_profile(&http, &base, &token).await });
    }
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        assert!(reply.contains("Dave Reader"), "{reply}");
    }
    let spent = exchanges() - before;
    assert!((1..=2).contains(&spent), "{spent} token requests");

    // A signed-in client, for what follows.
    let client_id = register(&http, &a).await;
    let (mut browser, callback) = start_sign_in(&a, &client_id).await;
    let code = finish_sign_in(&mut browser, &b, &callback).await;
    let tokens = redeem(&http, &b, &client_id, &code).await;
    let access = field(&tokens, "access_token").to_owned();
    let rt = field(&tokens, "refresh_token").to_owned();
    assert_eq!(mcp_status(&http, &a, &access).await, 200);

    c.redis.stop();
    // Direct Entra tokens keep working: validation and policy need no store.
    let alice = c.entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(mcp_status(&http, &a, &alice).await, 200);
    // An on-behalf-of token not in a replica's own cache is not obtained around Redis.
    let before = exchanges();
    let refused = my_profile(&http, &b, &alice).await;
    assert!(!refused.contains("Alice"), "{refused}");
    assert_eq!(exchanges(), before, "no exchange while Redis is down");
    // The proxy's endpoints answer 503 with Retry-After, never an answer that skips a check.
    let (status, body) = refresh(&http, &a, &client_id, &rt).await;
    assert_eq!(
        (status, field(&body, "error")),
        (503, "temporarily_unavailable")
    );
    let res = try_register(&http, &b).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    // An idguard-issued token is refused once the replica's copy of its session is older
    // than `session_cache_ttl` (1 s here).
    until(
        Duration::from_secs(10),
        "A refuses the issued token",
        || async { (mcp_status(&http, &a, &access).await == 503).then_some(()) },
    )
    .await;
    let h = health(&http, &b).await;
    assert_eq!(h["store"]["reachable"], false, "{h}");

    c.redis.restart();
    // Back (empty: the test server keeps no data), and both replicas serve again without a
    // restart: registration works, what Redis lost is refused, not guessed.
    until(Duration::from_secs(20), "A registers again", || async {
        let res = try_register(&http, &a).await;
        (res.status() == 201).then_some(())
    })
    .await;
    let status = until(Duration::from_secs(20), "B reaches Redis again", || async {
        let s = mcp_status(&http, &b, &access).await;
        (s != 503).then_some(s)
    })
    .await;
    assert_eq!(status, 401, "the lost session is gone, not guessed");
    let (status, body) = refresh(&http, &b, &client_id, &rt).await;
    assert!(matches!(status, 400 | 401), "{status} {body}");
    let profile = until(
        Duration::from_secs(20),
        "B's on-behalf-of resumes",
        || async {
            let p = my_profile(&http, &b, &alice).await;
            p.contains("userPrincipalName").then_some(p)
        },
    )
    .await;
    assert!(profile.contains("Alice"), "{profile}");
    assert_eq!(health(&http, &b).await["store"]["reachable"], true);
}

/// The `/register` bucket (60 a minute, all clients together) and the sign-ins in progress
/// per address (64) are counted in Redis: what one replica admitted, the other counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_counted_across_replicas() {
    let c = cluster("limits").await;
    let (http, a, b) = (&c.http, &c.base_a, &c.base_b);
    let mut client_id = String::new();
    for i in 0..60 {
        client_id = register(http, if i % 2 == 0 { a } else { b }).await;
    }
    for base in [a, b] {
        let res = try_register(http, base).await;
        assert_eq!(res.status(), 429, "the 61st registration, at {base}");
    }
    let authorize = |base: &str| {
        let url = reqwest::Url::parse_with_params(
            &format!("{base}/authorize"),
            [
                ("response_type", "code"),
                ("client_id", client_id.as_str()),
                ("redirect_uri", CLIENT_REDIRECT),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
                ("scope", "mcp.tools"),
            ],
        )
        .unwrap();
        http.get(url).send()
    };
    for i in 0..64 {
        let res = authorize(if i % 2 == 0 { a } else { b }).await.unwrap();
        assert_eq!(res.status(), 200, "sign-in {i}");
    }
    for base in [a, b] {
        let res = authorize(base).await.unwrap();
        assert_eq!(res.status(), 429, "the 65th sign-in in progress, at {base}");
        assert!(res.headers().contains_key("retry-after"));
    }
}

/// A test CA and a certificate for `127.0.0.1` it signed, made with the `openssl` command
/// in `dir`: (`ca.pem`, `server.pem`, `server.key`).
fn test_certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (Debian package openssl; .ci/run installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=idguard test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    ["ca.pem", "server.pem", "server.key"].map(|f| dir.join(f))
}

/// `rediss://`: the store's certificate is verified against the trusted roots (here a test
/// CA named by `SSL_CERT_FILE`). Trusted, sign-ins work over TLS; not trusted, the proxy
/// answers `503`: never a connection without verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_stores_certificate() {
    let certs = Workdir::empty("replicas-tls-certs");
    let [ca, cert, key] = test_certificates(certs.path());
    let redis = RedisServer::start_tls(&cert, &key);
    assert!(redis.url().starts_with("rediss://"));
    let entra = DevEntra::builder().start().await.unwrap();
    let ports = [free_port(), free_port()];
    let text = config(&entra, &redis, &ports);
    let ca = ca.to_str().unwrap();
    let (_trusting, trusting) = replica_with("tls-a", &text, ports[0], &[("SSL_CERT_FILE", ca)]);
    let (_other, other) = replica_with(
        "tls-b",
        &text,
        ports[1],
        &[("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")],
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client_id = register(&http, &trusting).await;
    assert!(!client_id.is_empty());
    assert_eq!(health(&http, &trusting).await["store"]["reachable"], true);
    let res = try_register(&http, &other).await;
    assert_eq!(res.status(), 503, "an untrusted certificate is not used");
    assert_eq!(health(&http, &other).await["store"]["reachable"], false);
}

#[test]
fn config_check_names_store_problems_without_the_password() {
    let dir = Workdir::with_policies("replicas-check");
    dir.write(
        "idguard.toml",
        "[token]\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"8c1a5e6f-0000-4000-8000-000000000001\"\nresource = \"https://mcp.contoso.com/mcp\"\n\n[store]\nredis_url = \"redis://idguard:hunter2-secret@redis.internal:6379/0\"\ncommand_timeout = \"soon\"\n",
    );
    let out = common::idguard()
        .args(["config", "check"])
        .current_dir(&*dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("`store.redis_url`"), "{text}");
    assert!(text.contains("password_file"), "{text}");
    assert!(text.contains("`store.command_timeout`"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
