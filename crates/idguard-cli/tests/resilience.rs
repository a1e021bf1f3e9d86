//! When the world around idguard fails (issue 18): the `idguard` binary as a process on
//! loopback, with the identity provider (the dev Entra emulator behind a switchable front)
//! and the upstream MCP server (the demo tools behind a switchable front) run in this test
//! process, and a Kubernetes-style policy volume built in a temporary directory.
//!
//! Every wait polls a condition against a deadline; sleeps happen only where a client
//! honours a `Retry-After`. `RESILIENCE_TEST_BIN` runs them against another build of the
//! binary (to compare before and after a change).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use common::{
    DemoService, Launch, Proc, Workdir, base_of, bin_from, copy_policy_files, demo_service,
    free_port, mcp_post, metrics, until,
};
use idguard::policy::PolicyEngine;
use idguard_dev::{DevEndpoint, DevEntra};
use serde_json::{Value, json};
use tower::ServiceExt as _;

// ------------------------------------------------------------------ the process

/// A scratch directory with a copy of the sample policies; removed on drop.
fn workdir(name: &str) -> Workdir {
    Workdir::with_policies(&format!("res-{name}"))
}

/// `idguard args` in `dir`: this build's, or `RESILIENCE_TEST_BIN` (to compare with another
/// build), logging at debug to a file in `dir` that is printed when a test fails.
fn spawn(args: &[&str], dir: &Path) -> Proc {
    Launch::new(args, dir)
        .bin(bin_from("RESILIENCE_TEST_BIN"))
        .env(&[("IDGUARD_LOG", "idguard=debug")])
        .stderr_log()
        .spawn()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `url`: status, headers, JSON body (or `Null`), and how long it took.
async fn get_json(
    http: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, Value, Duration) {
    let started = Instant::now();
    let res = http.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, headers, body, started.elapsed())
}

/// `GET /me` with `token`: status and `Retry-After`.
async fn me(http: &reqwest::Client, base: &str, token: &str) -> (u16, Option<u64>) {
    let res = http
        .get(format!("{base}/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (res.status().as_u16(), retry_after)
}

// ------------------------------------------------------------------ the identity provider

const PASS: u8 = 0;
const HANG: u8 = 1;
const FAIL: u8 = 2;

/// A front for the dev Entra emulator: passes requests on (pointing discovery's `jwks_uri`
/// at itself), or accepts them and never answers, or answers `503`.
#[derive(Clone)]
struct IdpFront {
    url: String,
    mode: Arc<AtomicU8>,
    jwks_requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct FrontState {
    entra_url: String,
    front_url: String,
    mode: Arc<AtomicU8>,
    jwks_requests: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl IdpFront {
    async fn start(entra: &DevEntra) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = FrontState {
            entra_url: entra.url().to_owned(),
            front_url: url.clone(),
            mode: Arc::default(),
            jwks_requests: Arc::default(),
            http: reqwest::Client::new(),
        };
        let front = Self {
            url,
            mode: state.mode.clone(),
            jwks_requests: state.jwks_requests.clone(),
        };
        let app = axum::Router::new()
            .fallback(any(idp_front))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        front
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn jwks_requests(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }
}

async fn idp_front(State(s): State<FrontState>, uri: http::Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if path.contains("/discovery/") {
        s.jwks_requests.fetch_add(1, Ordering::SeqCst);
    }
    match s.mode.load(Ordering::SeqCst) {
        HANG => return std::future::pending::<Response>().await,
        FAIL => return http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => {}
    }
    let res = s
        .http
        .get(format!("{}{path}", s.entra_url))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let mut body: Value = res.json().await.unwrap();
    if let Some(Value::String(jwks)) = body.get_mut("jwks_uri") {
        *jwks = jwks.replacen(&s.entra_url, &s.front_url, 1);
    }
    (status, axum::Json(body)).into_response()
}

// ------------------------------------------------------------------ the upstream

const UP: u8 = 0;
/// Requests are accepted and never answered.
const STALLED: u8 = 1;
/// Replies start (SSE, one progress event) and then nothing more comes.
const STALLED_MID_STREAM: u8 = 2;

/// The demo tools (rmcp) behind a switch; `kill` closes the listener and every connection.
struct Upstream {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    async fn start(addr: SocketAddr) -> Self {
        let rmcp = demo_service();
        let mode = Arc::new(AtomicU8::new(UP));
        let app = axum::Router::new()
            .route("/mcp", any(upstream_mcp))
            .with_state((rmcp, mode.clone()));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let mut stop = killed.clone();
                let stream = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    _ = stop.wait_for(|k| *k) => return,
                };
                let app = app.clone();
                let mut stop = killed.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            app.clone().oneshot(req.map(Body::new))
                        },
                    );
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Self { addr, mode, kill }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Closes the listener and every open connection, as a crashed server does.
    fn kill(&self) {
        self.kill.send_replace(true);
    }
}

type UpstreamState = (DemoService, Arc<AtomicU8>);

async fn upstream_mcp(
    State((rmcp, mode)): State<UpstreamState>,
    req: http::Request<Body>,
) -> Response {
    match mode.load(Ordering::SeqCst) {
        STALLED => std::future::pending::<Response>().await,
        STALLED_MID_STREAM => {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                  "params": {"progressToken": 1, "progress": 1}});
            let events = futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {progress}\n\n")))
            })
            .chain(futures_util::stream::pending());
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(events))
                .unwrap()
        }
        _ => rmcp.oneshot(req).await.unwrap().map(Body::new),
    }
}

use futures_util::StreamExt as _;

/// A JSON-RPC request to the MCP endpoint: status and body text.
async fn rpc(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> (u16, String, Duration) {
    let started = Instant::now();
    let res = mcp_post(http, url, token, &body).send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, text, started.elapsed())
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
}

fn list(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

// ------------------------------------------------------------------ item 3

/// A `tools/call` while the upstream is down, before idguard has seen any tool list: the
/// catalog cannot be fetched, so the answer is a gateway error, never "tool not found"
/// (which a client would take as the truth about the server). When the server is back the
/// same call works: the failure was not remembered as "unlisted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_catalog_call_while_the_upstream_is_down_is_a_gateway_error_not_tool_not_found() {
    let entra = DevEntra::builder().start().await.unwrap();
    let upstream = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let dir = workdir("cold");
    dir.config(
        entra.url(),
        &entra,
        "",
        &format!("upstream = \"{}\"", upstream.url()),
    );
    let proc = spawn(&["--port", "0"], dir.path());
    let url = format!("{}/mcp", base_of(&proc.line("idguard: gateway ")));
    let http = http();
    let alice = entra.token_for("alice").unwrap().mint().unwrap();

    upstream.kill();
    for (id, tool) in [
        (1, "list_documents"),
        (2, "no_such_tool"),
        (3, "list_documents"),
    ] {
        let (status, text, took) = rpc(&http, &url, &alice, call(id, tool)).await;
        eprintln!("upstream down, cold catalog: tools/call {tool} -> {status} in {took:?}: {text}");
        assert!(status == 502 || status == 503, "{tool}: {status} {text}");
        assert!(!text.contains("not found"), "{tool}: {text}");
        assert!(!text.contains("-32602"), "{tool}: {text}");
    }

    // Back on the same address: the call is answered by the server.
    let back = Upstream::start(upstream.addr).await;
    let (status, text, _) = rpc(&http, &url, &alice, call(4, "list_documents")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"result\""), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let (_, text, _) = rpc(&http, &url, &alice, call(5, "no_such_tool")).await;
    assert!(
        text.contains("\"error\""),
        "an unknown tool is unknown once the server says so: {text}"
    );
    drop(back);
}

// ------------------------------------------------------------------ item 4

/// A hung upstream: `504` after `server.upstream_timeout` (1 s here), for a call and a
/// list; a reply that starts and then goes silent ends after `server.upstream_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_is_504_within_the_configured_timeout() {
    let entra = DevEntra::builder().start().await.unwrap();
    let upstream = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let dir = workdir("hung");
    dir.config(
        entra.url(),
        &entra,
        "",
        &format!(
            "upstream = \"{}\"\nupstream_timeout = \"1s\"\nupstream_idle_timeout = \"1s\"",
            upstream.url()
        ),
    );
    let proc = spawn(&["--port", "0"], dir.path());
    let url = format!("{}/mcp", base_of(&proc.line("idguard: gateway ")));
    let http = http();
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let (status, text, _) = rpc(&http, &url, &alice, list(1)).await;
    assert_eq!(status, 200, "{text}");

    upstream.set(STALLED);
    for (what, body) in [
        ("tools/call", call(2, "list_documents")),
        ("tools/list", list(3)),
    ] {
        let (status, text, took) = rpc(&http, &url, &alice, body).await;
        eprintln!("upstream hung: {what} -> {status} in {took:?}");
        assert_eq!(status, 504, "{what}: {text}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{what}: answered after {took:?}, the timeout is 1 s"
        );
    }

    // A reply that starts and stalls: the first event arrives, then the reply ends.
    upstream.set(STALLED_MID_STREAM);
    let started = Instant::now();
    let mut res = mcp_post(&http, &url, &alice, &list(4))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut seen = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .expect("the stalled reply must end after the idle timeout")
        .unwrap_or(None)
    {
        seen.extend_from_slice(&chunk);
    }
    let took = started.elapsed();
    eprintln!("upstream silent mid-reply: stream ended after {took:?}");
    assert!(String::from_utf8_lossy(&seen).contains("notifications/progress"));
    assert!(took < Duration::from_secs(5), "{took:?}");

    upstream.set(UP);
    let (status, text, _) = rpc(&http, &url, &alice, call(5, "list_documents")).await;
    assert_eq!(status, 200, "{text}");
}

// ------------------------------------------------------------------ item 5

/// A policy directory laid out as Kubernetes mounts a ConfigMap: every file a link into
/// `..data`, itself a link to a timestamped directory; an update writes a new directory and
/// renames a new `..data` link over the old one. The engine serves the new policies soon
/// after the swap.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_swap_of_the_policy_directory_is_reloaded() {
    use std::os::unix::fs::symlink;
    let dir = workdir("configmap");
    let mount = dir.path().join("mount");
    let v1 = mount.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&v1).unwrap();
    copy_policy_files(&v1);
    symlink(v1.file_name().unwrap(), mount.join("..data")).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&v1).unwrap() {
        let name = entry.unwrap().file_name();
        symlink(Path::new("..data").join(&name), mount.join(&name)).unwrap();
        names.push(name);
    }

    let engine = PolicyEngine::from_dir(&mount).unwrap();
    let _watch = engine.watch(Duration::from_millis(100));
    assert_eq!(engine.epoch(), 1);
    assert!(engine.referenced_roles().contains(&"Tools.Read".to_owned()));

    // The update: a new directory with an edited roles.cedar, then the atomic swap.
    let v2 = mount.join("..2026_01_01_00_05_00.000000002");
    std::fs::create_dir_all(&v2).unwrap();
    copy_policy_files(&v2);
    let roles = v2.join("roles.cedar");
    let text = std::fs::read_to_string(&roles).unwrap();
    std::fs::write(
        &roles,
        text.replace("Role::\"Tools.Read\"", "Role::\"Tools.Reader\"")
            .replace(
                "readers-use-read-only-tools",
                "readers-use-read-only-tools-v2",
            ),
    )
    .unwrap();
    let swapped = Instant::now();
    symlink(v2.file_name().unwrap(), mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    until(Duration::from_secs(10), "the swap is reloaded", || async {
        (engine.epoch() >= 2).then_some(())
    })
    .await;
    eprintln!("configmap swap served after {:?}", swapped.elapsed());
    let status = engine.status();
    assert!(status.last_error.is_none(), "{status:?}");
    assert!(
        engine
            .referenced_roles()
            .contains(&"Tools.Reader".to_owned())
    );
    assert!(
        engine
            .policy_ids()
            .contains(&"readers-use-read-only-tools-v2".to_owned())
    );
    assert_eq!(names.len(), std::fs::read_dir(&v2).unwrap().count());
}

// ------------------------------------------------------------------ item 6

/// Liveness and readiness while the identity provider hangs, and a restart that starts
/// from the key cache file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_at_once_while_the_idp_hangs_and_a_restart_starts_from_the_key_cache() {
    let entra = DevEntra::builder().start().await.unwrap();
    let idp = IdpFront::start(&entra).await;
    let dir = workdir("probes");
    dir.config(
        &idp.url,
        &entra,
        "jwks_cache_file = \"jwks-cache.json\"",
        "",
    );
    let cache = dir.path().join("jwks-cache.json");
    let http = http();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();

    let mut proc = spawn(&["--port", "0"], dir.path());
    let base = base_of(&proc.line("idguard: demo tools at "));
    assert_eq!(me(&http, &base, &bob).await.0, 200);
    until(
        Duration::from_secs(10),
        "the key cache file is written",
        || async { cache.exists().then_some(()) },
    )
    .await;
    let (status, _, ready, _) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["keys"]["source"], "identity_provider");

    // The identity provider now accepts connections and never answers.
    idp.set(HANG);
    let hung = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let res = http.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/livez took {slowest:?}"
    );
    let mut slowest_ready = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (status, _, body, took) = get_json(&http, &format!("{base}/readyz")).await;
        slowest_ready = slowest_ready.max(took);
        assert_eq!(
            status, 200,
            "keys are loaded: ready through the outage: {body}"
        );
        if body["identity"]["reachable"] == false {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the IdP unreachable: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "IdP hanging: /livez slowest {slowest:?}, /readyz slowest {slowest_ready:?}, unreachable reported after {:?}: {ready}",
        hung.elapsed()
    );
    assert!(
        slowest_ready < Duration::from_millis(100),
        "/readyz took {slowest_ready:?}"
    );
    assert_eq!(ready["status"], "degraded");
    // Tokens signed with known keys are still accepted.
    assert_eq!(me(&http, &base, &bob).await.0, 200);
    let metrics = metrics(&http, &base).await;
    assert!(
        metrics.contains("idguard_identity_reachable 0"),
        "{metrics}"
    );
    assert!(proc.terminate(Duration::from_secs(40)).await.success());

    // A restart while the IdP still hangs: the process answers at once, is not ready while
    // discovery times out, then starts from the cache file and serves known-key tokens.
    let port = free_port();
    let restarted = Instant::now();
    let proc = spawn(&["--port", &port.to_string()], dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let first = until(
        Duration::from_secs(10),
        "the restarted process answers",
        || async {
            let started = Instant::now();
            let res = http.get(format!("{base}/livez")).send().await.ok()?;
            Some((res.status().as_u16(), started.elapsed()))
        },
    )
    .await;
    assert_eq!(first.0, 200);
    assert!(
        first.1 < Duration::from_millis(100),
        "/livez took {:?}",
        first.1
    );
    let (status, headers, body, took) = get_json(&http, &format!("{base}/readyz")).await;
    assert!(took < Duration::from_millis(100), "/readyz took {took:?}");
    if status == 503 {
        assert_eq!(body["ready"], false, "{body}");
        let (status, headers, _, _) = get_json(&http, &format!("{base}/me")).await;
        assert_eq!(status, 503);
        assert!(headers.contains_key("retry-after"));
    }
    drop(headers);
    let ready = until(
        Duration::from_secs(40),
        "ready from the key cache",
        || async {
            let (status, _, body, _) = get_json(&http, &format!("{base}/readyz")).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    let took = restarted.elapsed();
    eprintln!("restart with the IdP hanging: ready from the cache after {took:?}: {ready}");
    assert_eq!(ready["keys"]["source"], "cache_file", "{ready}");
    assert_eq!(me(&http, &base, &bob).await.0, 200);
    let fresh = entra.token_for("alice").unwrap().mint().unwrap();
    assert_eq!(me(&http, &base, &fresh).await.0, 200);

    // When the IdP answers again, the background retry replaces the cached keys.
    idp.set(PASS);
    let back = Instant::now();
    until(
        Duration::from_secs(60),
        "keys fetched from the IdP again",
        || async {
            let (_, _, body, _) = get_json(&http, &format!("{base}/readyz")).await;
            (body["keys"]["source"] == "identity_provider").then_some(())
        },
    )
    .await;
    eprintln!(
        "keys from the IdP again {:?} after it answered",
        back.elapsed()
    );
    drop(proc);
}

/// Without a key cache a replica that cannot reach the identity provider does not exit:
/// it answers `/livez`, says "not ready" at `/readyz`, and becomes ready by itself once the
/// provider answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_cache_a_replica_waits_not_ready_until_the_idp_answers() {
    let entra = DevEntra::builder().start().await.unwrap();
    let idp = IdpFront::start(&entra).await;
    idp.set(FAIL);
    let dir = workdir("notready");
    dir.config(&idp.url, &entra, "", "");
    let http = http();
    let mut proc = spawn(&["--port", "0"], dir.path());
    let line = proc.line("idguard: not ready at ");
    let base = line.split(':').take(3).collect::<Vec<_>>().join(":");
    let (status, _, body, took) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("503"), "{body}");
    assert!(took < Duration::from_millis(100));
    let livez = http.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(livez.status(), 200);

    idp.set(PASS);
    let back = Instant::now();
    proc.line("idguard: demo tools at ");
    let (status, _, _, _) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 200);
    eprintln!("ready {:?} after the IdP answered", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(5));
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(me(&http, &base, &bob).await.0, 200);
    assert!(proc.terminate(Duration::from_secs(40)).await.success());
}

// ------------------------------------------------------------------ item 7

/// The JWKS endpoint fails, Entra rotates to a new key, the endpoint comes back: a token
/// signed with the new key is accepted seconds later (not after the 5-minute minimum
/// refresh interval), and the `Retry-After` of each `503` is when idguard tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_accepted_seconds_after_the_jwks_endpoint_returns() {
    let entra = DevEntra::builder().start().await.unwrap();
    let dir = workdir("rotate");
    dir.config(entra.url(), &entra, "", "");
    let proc = spawn(&["--port", "0"], dir.path());
    let base = base_of(&proc.line("idguard: demo tools at "));
    let http = http();
    let old = entra.token_for("bob").unwrap().mint().unwrap();
    assert_eq!(me(&http, &base, &old).await.0, 200);

    entra.set_jwks_available(false);
    entra.rotate_keys().unwrap();
    let new = entra.token_for("bob").unwrap().mint().unwrap();
    let fetches = entra.requests(DevEndpoint::Jwks);
    let (status, retry_after) = me(&http, &base, &new).await;
    assert_eq!(status, 503);
    let retry_after = retry_after.unwrap();
    assert_eq!(retry_after, 1, "the first retry comes after 1 s");
    assert_eq!(entra.requests(DevEndpoint::Jwks), fetches + 1);
    // Asked again at once: no new fetch, the same promise.
    let (status, again) = me(&http, &base, &new).await;
    assert_eq!(status, 503);
    assert!(again.unwrap() <= retry_after);
    assert_eq!(entra.requests(DevEndpoint::Jwks), fetches + 1);
    // Honouring it: by then idguard has tried again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, next) = me(&http, &base, &new).await;
    assert_eq!(status, 503);
    assert!(entra.requests(DevEndpoint::Jwks) >= fetches + 2);
    assert!(next.unwrap() <= 2, "the back-off doubles: {next:?}");
    // The old key keeps working through the outage.
    assert_eq!(me(&http, &base, &old).await.0, 200);

    entra.set_jwks_available(true);
    let back = Instant::now();
    let mut answers = Vec::new();
    loop {
        let (status, retry_after) = me(&http, &base, &new).await;
        answers.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(back.elapsed() < Duration::from_secs(40), "{answers:?}");
        tokio::time::sleep(Duration::from_secs(retry_after.unwrap())).await;
    }
    let took = back.elapsed();
    eprintln!("new key accepted {took:?} after the JWKS endpoint returned; answers {answers:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A key fetch that hangs: requests with unknown keys share the one fetch in flight and
/// are all answered (503) when it times out, instead of fetching one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_hanging_key_fetch_and_wait_a_bounded_time() {
    let entra = DevEntra::builder().start().await.unwrap();
    let idp = IdpFront::start(&entra).await;
    let dir = workdir("flight");
    dir.config(&idp.url, &entra, "", "");
    let proc = spawn(&["--port", "0"], dir.path());
    let base = base_of(&proc.line("idguard: demo tools at "));
    let http = http();

    idp.set(HANG);
    entra.rotate_keys().unwrap();
    let new = entra.token_for("bob").unwrap().mint().unwrap();
    let fetches = idp.jwks_requests();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, base, new) = (http.clone(), base.clone(), new.clone());
        tasks.push(tokio::spawn(async move {
            let answer = me(&http, &base, &new).await;
            (answer, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let ((status, retry_after), took) = task.await.unwrap();
        assert_eq!(status, 503);
        assert!(retry_after.is_some());
        slowest = slowest.max(took);
    }
    let during = idp.jwks_requests() - fetches;
    eprintln!(
        "20 requests on a hanging key fetch: all answered within {slowest:?}; {during} fetches"
    );
    assert!(slowest < Duration::from_secs(15), "{slowest:?}");
    assert!(during <= 2, "{during} fetches for 20 requests");
    drop(proc);
}
