//! The `idguard` binary, spawned as a process: dev mode, gateway mode, hot reload seen at
//! `/healthz`, graceful shutdown, `config check`, `entra manifest`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use common::{
    DemoService, Proc, ROOT, Workdir, demo_service, health, idguard, mcp_post, messages, metrics,
    tool_names,
};
use idguard_dev::DevEntra;
use serde_json::{Value, json};
use tokio::sync::Notify;

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `/healthz` until `check` holds (the server reloads on its own schedule).
async fn health_until(http: &reqwest::Client, base: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = health(http, base).await;
        if check(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "healthz never reached the state: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_demo_and_reloads_policies() {
    let dir = Workdir::with_policies("bin-dev");
    let proc = Proc::spawn(&["--port", "0"], &dir);
    let url = proc.line("export MCP_URL=");
    let alice = proc.line("export ALICE=");
    let bob = proc.line("export BOB=");
    let base = url.trim_end_matches("/mcp").to_owned();
    let http = reqwest::Client::new();

    assert_eq!(tool_names(&http, &url, &alice).await.len(), 6);
    let bobs = tool_names(&http, &url, &bob).await;
    assert_eq!(
        bobs,
        ["list_documents", "my_profile", "read_document", "whoami"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    // my_profile reaches the emulated Graph on bob's behalf (on-behalf-of in dev mode).
    let profile = http
        .post(&url)
        .bearer_auth(&bob)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "my_profile", "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        profile.contains("Bob Reader") && profile.contains("userPrincipalName"),
        "{profile}"
    );

    // Printed tokens work on the plain API route too, and a missing token gets the challenge.
    let me = http
        .get(format!("{base}/me"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let anonymous = http.get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("resource_metadata=")
    );
    let fresh = idguard()
        .args(["token", "mint", "--user", "bob", "--url", &base])
        .output()
        .unwrap();
    assert!(fresh.status.success());
    let fresh = String::from_utf8(fresh.stdout).unwrap();
    assert_ne!(fresh.trim(), bob);
    assert_eq!(tool_names(&http, &url, fresh.trim()).await, bobs);

    // An edit changes the next answer.
    let roles = dir.join("policies/roles.cedar");
    let text = std::fs::read_to_string(&roles).unwrap();
    let renamed = text.replacen(
        "principal in Role::\"Tools.Read\",\n  action == Action::\"call_tool\"",
        "principal in Role::\"Tools.Reader\",\n  action == Action::\"call_tool\"",
        1,
    );
    assert_ne!(renamed, text);
    write_atomically(&roles, &renamed);
    health_until(&http, &base, |h| h["policy"]["epoch"] == 2).await;
    let after = ["read_document", "whoami"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(tool_names(&http, &url, &bob).await, after);

    // A broken edit is reported, and the last good policies keep serving.
    write_atomically(&roles, "permit (principal, action, resource) oops");
    let health = health_until(&http, &base, |h| !h["policy"]["last_error"].is_null()).await;
    assert_eq!(health["status"], "degraded");
    assert!(
        health["policy"]["last_error"]
            .as_str()
            .unwrap()
            .contains("roles.cedar:1:"),
        "{health}"
    );
    assert_eq!(health["policy"]["epoch"], 2);
    assert_eq!(tool_names(&http, &url, &bob).await, after);
    let metrics = metrics(&http, &base).await;
    assert!(
        metrics.contains("idguard_policy_reload_failing 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idguard_rejections_total{kind=\"missing_token\"} 1"),
        "{metrics}"
    );
}

/// The upstream MCP server of the gateway tests: the demo tools (rmcp), plus a slow
/// `tools/list` whose SSE reply sends a progress event, then waits for the test.
#[derive(Clone)]
struct Upstream {
    rmcp: DemoService,
    authorized: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    release: Arc<Notify>,
    /// The `x-request-id` of every request, in order.
    request_ids: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn upstream_mcp(State(u): State<Upstream>, req: http::Request<Body>) -> Response {
    u.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(id) = req.headers().get("x-request-id") {
        let id = id.to_str().unwrap().to_owned();
        u.request_ids.lock().unwrap().push(id);
    }
    if req.headers().contains_key("authorization") {
        u.authorized.fetch_add(1, Ordering::SeqCst);
    }
    // The gateway forwards only the headers MCP needs: the test's switch rides on one.
    let slow = req
        .headers()
        .get("user-agent")
        .is_some_and(|ua| ua.as_bytes().ends_with(b"test-slow"));
    if slow {
        let release = u.release.clone();
        let stream = async_stream(release);
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let res = tower::ServiceExt::oneshot(u.rmcp.clone(), req)
        .await
        .unwrap();
    res.map(Body::new)
}

fn async_stream(
    release: Arc<Notify>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                          "params": {"progressToken": 1, "progress": 1}});
    let tools: Value = serde_json::from_str(include_str!("../../../policies/tools.json")).unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": tools});
    futures_util::stream::unfold(0, move |step| {
        let (release, progress, list) = (release.clone(), progress.clone(), list.clone());
        async move {
            match step {
                0 => Some((Ok(Bytes::from(format!("data: {progress}\n\n"))), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Bytes::from(format!("data: {list}\n\n"))), 2))
                }
                _ => None,
            }
        }
    })
}

async fn start_upstream() -> (Upstream, String) {
    let upstream = Upstream {
        rmcp: demo_service(),
        authorized: Arc::default(),
        requests: Arc::default(),
        release: Arc::new(Notify::new()),
        request_ids: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/mcp", post(upstream_mcp))
        .with_state(upstream.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (upstream, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_filters_streams_and_never_forwards_the_token() {
    let entra = DevEntra::builder().start().await.unwrap();
    let (upstream, upstream_url) = start_upstream().await;
    let dir = Workdir::with_policies("bin-gateway");
    dir.config(
        entra.url(),
        &entra,
        "",
        &format!("upstream = \"{upstream_url}\""),
    );
    let mut proc = Proc::spawn(&["--port", "0"], &dir);
    let line = proc.line("idguard: gateway ");
    let url = line.split(" -> ").next().unwrap().to_owned();
    let http = reqwest::Client::new();
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();

    assert_eq!(tool_names(&http, &url, &alice).await.len(), 6);
    assert_eq!(tool_names(&http, &url, &bob).await.len(), 4);

    // SSE through the gateway arrives event by event: the progress event is read while the
    // upstream still holds back the list; the list that follows is filtered for bob.
    let mut res = http
        .post(&url)
        .bearer_auth(&bob)
        .header("user-agent", "idguard-tests/test-slow")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .expect("the first event must arrive before the upstream finishes")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));

    // SIGTERM now: the request in flight still completes, then the process exits cleanly.
    proc.sigterm();
    upstream.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("list_documents"), "{rest}");
    assert!(
        !rest.contains("delete_document"),
        "filtered for bob: {rest}"
    );
    proc.sigterm();
    assert!(proc.wait(Duration::from_secs(30)).success());

    assert!(upstream.requests.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        upstream.authorized.load(Ordering::SeqCst),
        0,
        "the caller's token reached upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_entries_serve_several_upstreams_behind_one_endpoint() {
    let entra = DevEntra::builder().start().await.unwrap();
    let (first, first_url) = start_upstream().await;
    let (second, second_url) = start_upstream().await;
    let dir = Workdir::with_policies("bin-many");
    let entries = format!(
        "\n[[upstream]]\nname = \"one\"\nurl = \"{first_url}\"\n\n[[upstream]]\nname = \"two\"\nurl = \"{second_url}\"\ntimeout = \"30s\"\n"
    );
    dir.write(
        "idguard.toml",
        &(common::config_toml(entra.url(), &entra, "", "") + &entries),
    );
    let mut proc = Proc::spawn(&["--port", "0"], &dir);
    let line = proc.line("idguard: gateway ");
    assert!(line.ends_with("-> upstreams one, two"), "{line}");
    let url = line.split(" -> ").next().unwrap().to_owned();
    let http = reqwest::Client::new();
    for (user, per_upstream) in [("alice", 6), ("bob", 4)] {
        let token = entra.token_for(user).unwrap().mint().unwrap();
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "binary-test", "version": "1"}}});
        let res = mcp_post(&http, &url, &token, &init).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let session = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let res = mcp_post(&http, &url, &token, &list)
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
        let text = res.text().await.unwrap();
        let reply = messages(&text).find(|v| v["id"] == 1).unwrap();
        let names: BTreeSet<&str> = reply["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2 * per_upstream, "{user}: {names:?}");
        assert!(names.contains("one__list_documents") && names.contains("two__list_documents"));
    }
    proc.sigterm();
    assert!(proc.wait(Duration::from_secs(30)).success());
    for upstream in [first, second] {
        assert!(upstream.requests.load(Ordering::SeqCst) >= 2);
        assert_eq!(upstream.authorized.load(Ordering::SeqCst), 0);
    }
}

/// The access log: one line per request (method, path, status, latency, request id); the
/// request id is the caller's when it sent a usable one, else idguard's own, and the same
/// id reaches the upstream and comes back on the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_id_and_one_access_line() {
    let entra = DevEntra::builder().start().await.unwrap();
    let (upstream, upstream_url) = start_upstream().await;
    let dir = Workdir::with_policies("bin-access");
    dir.config(
        entra.url(),
        &entra,
        "",
        &format!("upstream = \"{upstream_url}\""),
    );
    let proc = common::Launch::new(&["--port", "0"], &dir)
        .stderr_lines()
        .spawn();
    let line = proc.line("idguard: gateway ");
    let url = line.split(" -> ").next().unwrap().to_owned();
    let http = reqwest::Client::new();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let post = |id: Option<&str>, token: Option<&str>| {
        let mut req = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(ping.clone());
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    let access_line = |id: &str| {
        common::first_line(proc.stderr(), &format!("an access line for {id}"), |l| {
            l.contains("idguard::access:") && l.ends_with(&format!(" request_id={id}"))
        })
    };

    // The caller's id is kept, sent upstream, returned, and logged.
    let res = post(Some("caller-7"), Some(&bob)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-request-id"], "caller-7");
    let logged = access_line("caller-7");
    assert!(logged.contains("POST /mcp 200 "), "{logged}");
    assert!(!logged.contains(&bob), "never the token: {logged}");

    // Without one (or with one that is not visible ASCII), idguard makes one: a process
    // prefix and a counter, different per request.
    let mut made = Vec::new();
    for id in [None, Some("a b")] {
        let res = post(id, Some(&bob)).await.unwrap();
        assert_eq!(res.status(), 200);
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let (prefix, counter) = id.split_once('-').unwrap();
        assert_eq!(prefix.len(), 16, "{id}");
        assert!(
            (prefix.chars().chain(counter.chars())).all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        access_line(&id);
        made.push(id);
    }
    assert_ne!(made[0], made[1]);
    assert_eq!(
        *upstream.request_ids.lock().unwrap(),
        ["caller-7", made[0].as_str(), made[1].as_str()]
    );

    // A refused request has its line and its id too.
    let res = post(Some("refused-1"), None).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["x-request-id"], "refused-1");
    assert!(access_line("refused-1").contains("POST /mcp 401 "));
}

/// `idguard config check` on `text`: success, and what it printed.
fn config_check(dir: &Path, text: &str) -> (bool, String) {
    std::fs::write(dir.join("broken.toml"), text).unwrap();
    let out = idguard()
        .args(["config", "check", "--config", "broken.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn config_check_names_every_bad_key() {
    let dir = Workdir::with_policies("bin-config");
    let (ok, text) = config_check(
        &dir,
        "[token]\ntenant = \"contoso\"\nclient_id = \"not-a-guid\"\nvalidate_signature = false\nleeway = \"soon\"\n[mcp]\ndenyals = \"visible\"\n",
    );
    assert!(!ok);
    for key in ["token.validate_signature", "mcp.denyals"] {
        assert!(
            text.contains(&format!("`{key}`")),
            "{key} missing in:\n{text}"
        );
    }
    let (ok, text) = config_check(
        &dir,
        "[token]\ntenant = \"contoso\"\nclient_id = \"not-a-guid\"\nleeway = \"soon\"\n",
    );
    assert!(!ok);
    for key in [
        "token.tenant",
        "token.client_id",
        "token.leeway",
        "token.resource",
    ] {
        assert!(
            text.contains(&format!("`{key}`")),
            "{key} missing in:\n{text}"
        );
    }
}

#[test]
fn entra_manifest_lists_exactly_the_roles_the_policies_use() {
    let out = idguard()
        .args(["entra", "manifest", "--policies", "policies"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(out.status.success());
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let roles: BTreeSet<&str> = manifest["appRoles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["Tools.Admin", "Tools.Read"].into_iter().collect());
    assert_eq!(manifest["api"]["requestedAccessTokenVersion"], 2);
}

// The annotated example file: tests/newcomer.rs (it checks clean once its placeholder
// OAuth key is replaced).

#[path = "../../../tests/support/python_server.rs"]
mod python_server;
#[path = "../../../tests/support/whoami.rs"]
mod whoami;

/// `[upstream] credential = "identity_assertion"` in the binary: the upstream (the MCP Python
/// SDK, verifying with PyJWT) gets an ES256 assertion naming each caller that verifies with
/// the JWKS the binary serves, and never the caller's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_identity_assertions_verify_with_the_binarys_jwks() {
    let entra = DevEntra::builder().start().await.unwrap();
    let port = common::free_port();
    let jwks = format!("http://127.0.0.1:{port}/.well-known/idguard-jwks.json");
    let up = python_server::PyServer::start(
        "tests/upstreams/whoami_server.py",
        &[
            ("WHOAMI_AUDIENCE", "api://upstream-app"),
            ("WHOAMI_JWKS_URL", &jwks),
        ],
    );
    let dir = Workdir::empty("bin-assertion");
    common::copy_dir(
        &Path::new(ROOT).join("tests/gateway/policies"),
        &dir.join("policies"),
    );
    dir.config(
        entra.url(),
        &entra,
        "",
        &format!(
            "upstream = \"{}\"\n\n[upstream]\ncredential = \"identity_assertion\"\naudience = \"api://upstream-app\"\n",
            up.url("/mcp")
        ),
    );
    let port_arg = port.to_string();
    let proc = Proc::spawn(&["--port", &port_arg], &dir);
    let url = proc.line("idguard: gateway ");
    let url = url.split(" -> ").next().unwrap().to_owned();

    let mut originals = Vec::new();
    for user in ["alice", "bob"] {
        let token = entra.token_for(user).unwrap().mint().unwrap();
        let (status, who) = whoami::call_whoami(&url, &token).await;
        assert_eq!(status, 200, "{who}");
        assert_eq!(who["bearer"]["valid"], true, "{who}");
        assert_eq!(who["bearer"]["alg"], "ES256", "{who}");
        let u = entra.users().iter().find(|u| u.key == user).unwrap();
        assert_eq!(who["bearer"]["claims"]["oid"], u.object_id.as_str());
        assert_eq!(who["bearer"]["claims"]["aud"], "api://upstream-app");
        assert_eq!(who["saw_foreign_token"], false, "{who}");
        originals.push(token);
    }
    let seen = up.bearers().await;
    assert!(
        seen.len() >= 2,
        "every request upstream carries an assertion"
    );
    assert!(originals.iter().all(|o| !seen.contains(o)));

    // The JWKS is public (no token), and holds exactly the one ES256 key.
    let keys: Value = reqwest::get(&jwks).await.unwrap().json().await.unwrap();
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert!(keys[0].get("d").is_none(), "no private part");
}

/// `config check` names a bad `[upstream]` credential key.
#[test]
fn config_check_names_bad_upstream_credentials() {
    let dir = Workdir::with_policies("bin-upstream-check");
    for (text, key) in [
        ("credential = \"telepathy\"", "upstream.credential"),
        ("credential = \"identity_assertion\"", "upstream.audience"),
        (
            "credential = \"obo\"\nscopes = [\"api://x/.default\"]",
            "obo",
        ),
        (
            "credential = \"static\"\nheader = \"X-Key\"",
            "upstream.value_file",
        ),
    ] {
        let toml = format!(
            "[token]\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\nresource = \"http://127.0.0.1/mcp\"\n\n[server]\nupstream = \"http://127.0.0.1:9/mcp\"\n\n[upstream]\n{text}\n"
        );
        let (ok, out) = config_check(&dir, &toml);
        assert!(!ok, "{text}: {out}");
        assert!(out.contains(key), "{text}: {key} not named in {out}");
    }
}
