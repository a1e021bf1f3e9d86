//! Gateway mode against REAL upstream MCP servers of the official SDKs, one test per attack
//! class. The stack is the one `idguard serve` builds for an upstream (`cli/serve.rs`):
//! `ValidateTokenLayer` → `AuthorizeMcpLayer` → `gateway::Gateway`, on 127.0.0.1 port 0,
//! with the dev Entra emulator (alice: `Tools.Admin` + MFA; bob: `Tools.Read`) and the
//! policies in `tests/gateway/policies/`.
//!
//! Upstreams (child processes on free loopback ports, killed when the test ends):
//! - `tests/upstreams/python_server.py`: the MCP Python SDK (`mcp`, pinned in
//!   `tests/mcp_client/requirements.txt`): stateful Streamable HTTP with an event store,
//!   the legacy SSE transport at `/sse` + `/messages/`, 2025-11-25 tasks, and a probe
//!   (`/_probe/requests`) listing every request it received;
//! - `@modelcontextprotocol/server-everything` (TypeScript SDK), pinned in
//!   `tests/upstreams/node/package.json`, started with `tests/upstreams/node/loopback.mjs`
//!   (loopback only, readiness line, the same probe for HTTP requests).
//!
//! Each test asserts the SECURE behaviour. A missing `python3`/`mcp` or `node`/`npm ci`
//! fails the test with the install step to run; nothing is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use idguard::IdGuard;
use idguard::gateway::Gateway;
use idguard::mcp::{AuthorizeMcpLayer, McpCacheCapacities};
use idguard::policy::PolicyEngine;
use idguard_dev::DevEntra;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

/// Bound on one request/reply exchange (and on each process's startup: `STARTUP`).
const STEP: Duration = Duration::from_secs(20);
const STARTUP: Duration = Duration::from_secs(90);
/// How long an open stream (a replay, a reached legacy SSE endpoint) is read at most.
const STREAM_WINDOW: Duration = Duration::from_secs(3);

const PY_HIDDEN_TOOL: &str = "delete_document";
const TS_HIDDEN_TOOL: &str = "get-env";
const OWNER_EMAIL: &str = "owner@contoso.com";

// =========================================================================== fixture

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn node_dir() -> PathBuf {
    manifest_dir().join("tests/upstreams/node")
}

/// Fails (never skips) when python3 or the pinned MCP Python SDK is missing.
fn require_python() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m, mcp, uvicorn; print(m.version('mcp'))",
        ])
        .output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => panic!(
            "the MCP Python SDK is missing: run `pip install -r tests/mcp_client/requirements.txt` \
             (python3 says: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "python3 is missing ({e}): install Python 3.10+, then \
             `pip install -r tests/mcp_client/requirements.txt`"
        ),
    };
    let pinned = std::fs::read_to_string(manifest_dir().join("tests/mcp_client/requirements.txt"))
        .unwrap_or_default();
    assert!(
        pinned.contains(&format!("mcp=={version}")),
        "python3 has mcp {version}, not the version pinned in tests/mcp_client/requirements.txt: \
         run `pip install -r tests/mcp_client/requirements.txt`"
    );
}

/// Fails (never skips) when node or the pinned npm packages are missing.
fn require_node() {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "node is missing: install Node.js 20+ (e.g. `apt-get install nodejs npm`), then \
             `npm ci --prefix tests/upstreams/node`"
        ),
    }
    for package in ["server-everything", "sdk"] {
        let p = node_dir().join(format!(
            "node_modules/@modelcontextprotocol/{package}/package.json"
        ));
        assert!(
            p.is_file(),
            "@modelcontextprotocol/{package} is not installed: run `npm ci --prefix tests/upstreams/node`"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Python,
    Everything,
}

/// An upstream MCP server process, killed on drop (and exiting by itself when its stdin,
/// held here, closes: it never outlives the test process).
struct Upstream {
    kind: Kind,
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
    /// What `get-env` would print (server-everything's environment).
    canary: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Upstream {
    async fn python() -> Upstream {
        require_python();
        let mut cmd = Command::new("python3");
        cmd.arg("tests/upstreams/python_server.py")
            .arg("0")
            .current_dir(manifest_dir())
            .env("PYTHONUNBUFFERED", "1");
        Self::spawn(Kind::Python, cmd, String::new()).await
    }

    async fn everything() -> Upstream {
        require_node();
        let canary = format!("canary-{}", uuid::Uuid::new_v4());
        let mut cmd = Command::new("node");
        cmd.args([
            "--import",
            "./loopback.mjs",
            "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
            "streamableHttp",
        ])
        .current_dir(node_dir())
        .env("IDGUARD_UPSTREAM_PORT", "0")
        .env("IDGUARD_GATEWAY_CANARY", &canary)
        .env_remove("PORT");
        Self::spawn(Kind::Everything, cmd, canary).await
    }

    /// Starts `cmd` and waits for its `listening on 127.0.0.1:PORT` line (no sleeps).
    async fn spawn(kind: Kind, mut cmd: Command, canary: String) -> Upstream {
        cmd.env("IDGUARD_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {kind:?} upstream: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 64 * 1024 {
                    let cut = s.len() - 32 * 1024;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.drain(..cut);
                }
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<u16>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keeps draining after the readiness line so the pipe never fills.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .trim()
                    .strip_prefix("listening on 127.0.0.1:")
                    .and_then(|p| p.parse().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match tokio::time::timeout(STARTUP, rx).await {
            Ok(Ok(port)) => port,
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "the {kind:?} upstream did not print `listening on 127.0.0.1:PORT` \
                     ({}; exit {status:?}); its stderr:\n{}",
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "stdout closed"
                    },
                    stderr.lock().unwrap()
                );
            }
        };
        Upstream {
            kind,
            child,
            port,
            stderr,
            canary,
        }
    }

    fn mcp_url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Every request the upstream received: `(HTTP method, raw target)`.
    async fn http_log(&self) -> Vec<(String, String)> {
        let log = self.probe().await;
        log["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().to_owned(),
                    e[1].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Every JSON-RPC method the Python upstream's MCP layer received.
    async fn rpc_methods(&self) -> Vec<String> {
        assert_eq!(
            self.kind,
            Kind::Python,
            "only the Python upstream logs JSON-RPC"
        );
        let log = self.probe().await;
        log["rpc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[0].as_str().unwrap().to_owned())
            .collect()
    }

    async fn probe(&self) -> Value {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{}/_probe/requests", self.port);
        http.get(url).send().await.unwrap().json().await.unwrap()
    }

    #[allow(dead_code, reason = "kept for debugging a failing test")]
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// idguard in gateway mode in front of one upstream.
struct Gw {
    entra: DevEntra,
    addr: SocketAddr,
    up: Arc<Upstream>,
    http: reqwest::Client,
}

async fn gateway(up: impl Into<Arc<Upstream>>) -> Gw {
    gateway_with(up, |g| g).await
}

/// [`gateway`] with the proxy adjusted by `configure` (timeouts).
async fn gateway_with(
    up: impl Into<Arc<Upstream>>,
    configure: impl FnOnce(Gateway) -> Gateway,
) -> Gw {
    gateway_layered(up, configure, |layer| layer).await
}

/// [`gateway_with`], and the MCP layer adjusted by `layer` (cache sizes).
async fn gateway_layered(
    up: impl Into<Arc<Upstream>>,
    configure: impl FnOnce(Gateway) -> Gateway,
    layer: impl FnOnce(AuthorizeMcpLayer) -> AuthorizeMcpLayer,
) -> Gw {
    let up: Arc<Upstream> = up.into();
    // `RUST_LOG=idguard=debug cargo test --test gateway -- --nocapture` shows idguard's logs.
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
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"))
        .build()
        .await
        .unwrap();
    let policies = PolicyEngine::from_dir(manifest_dir().join("tests/gateway/policies")).unwrap();
    let upstream_client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let gateway = configure(Gateway::new(
        reqwest::Url::parse(&up.mcp_url()).unwrap(),
        upstream_client,
    ));
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(layer(guard.authorize_mcp_layer(policies)))
            .service(gateway),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Gw {
        entra,
        addr,
        up,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .unwrap(),
    }
}

impl Gw {
    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    fn token(&self, user: &str) -> String {
        self.entra.token_for(user).unwrap().mint().unwrap()
    }
}

/// A reply, read whole (bounded by `STEP`).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    async fn read(res: reqwest::Response) -> Reply {
        let status = res.status();
        let headers = res.headers().clone();
        let text = tokio::time::timeout(STEP, res.text())
            .await
            .expect("reply body timed out")
            .unwrap_or_default();
        Reply {
            status,
            headers,
            text,
        }
    }

    fn is_sse(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// The JSON-RPC messages: each SSE event's data, or the JSON body (array flattened).
    fn messages(&self) -> Vec<Value> {
        if self.is_sse() {
            sse_events(&self.text)
                .into_iter()
                .filter_map(|e| serde_json::from_str(&e.data).ok())
                .collect()
        } else {
            match serde_json::from_str::<Value>(&self.text) {
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(_) => vec![],
            }
        }
    }

    /// The message answering `id`, if any.
    fn answer(&self, id: &Value) -> Option<Value> {
        self.messages().into_iter().find(|m| &m["id"] == id)
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    data: String,
}

fn sse_events(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let (mut id, mut data, mut any) = (None, Vec::<&str>::new(), false);
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            if any {
                events.push(Event {
                    id: id.take(),
                    data: data.join("\n"),
                });
            }
            data.clear();
            any = false;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
        any = true;
    }
    if any {
        events.push(Event {
            id,
            data: data.join("\n"),
        });
    }
    events
}

/// Reads an open stream until `stop` holds for what arrived, the stream ends, or
/// `STREAM_WINDOW` passes.
async fn read_window(res: reqwest::Response, stop: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + STREAM_WINDOW;
    let mut text = String::new();
    let mut body = res.bytes_stream();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if stop(&text) {
            break;
        }
    }
    text
}

/// A raw MCP client session over the gateway (JSON-RPC over POST; JSON or SSE replies).
struct Session<'g> {
    gw: &'g Gw,
    token: String,
    id: Option<String>,
    version: &'static str,
    next: i64,
}

impl<'g> Session<'g> {
    /// `initialize` at `version` + `notifications/initialized`, as `user`.
    async fn open(gw: &'g Gw, user: &str, version: &'static str) -> Session<'g> {
        let mut s = Session {
            gw,
            token: gw.token(user),
            id: None,
            version,
            next: 1,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "idguard-gateway-tests", "version": "1"}}});
        let reply = s.send(&init.to_string()).await;
        let answer = reply.answer(&json!(0));
        assert!(
            reply.status == StatusCode::OK
                && answer.as_ref().is_some_and(|a| a.get("result").is_some()),
            "{user} cannot open a {version} session with the {:?} upstream through the gateway: {} {}",
            gw.up.kind,
            reply.status,
            reply.text
        );
        s.id = reply
            .headers
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(s.id.is_some(), "no Mcp-Session-Id: {reply:?}");
        // Not asserted here (see `notifications_are_accepted`): the upstream has the
        // notification whatever idguard answers.
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        s
    }

    /// A POST with this session's headers.
    fn post(&self) -> reqwest::RequestBuilder {
        self.post_as("application/json")
    }

    /// A POST with this session's headers and `Content-Type: content_type` (reqwest's
    /// `.header()` appends: set the content type here, not on top of `post()`).
    fn post_as(&self, content_type: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .gw
            .http
            .post(self.gw.url())
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, content_type)
            .header("mcp-protocol-version", self.version);
        if let Some(id) = &self.id {
            req = req.header("mcp-session-id", id);
        }
        req
    }

    /// The standalone GET stream of this session (resumed from `last_event_id`).
    fn get(&self, last_event_id: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self
            .gw
            .http
            .get(self.gw.url())
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "text/event-stream")
            .header("mcp-protocol-version", self.version)
            .header("mcp-session-id", self.id.as_deref().unwrap());
        if let Some(last) = last_event_id {
            req = req.header("last-event-id", last);
        }
        req
    }

    async fn send(&self, body: &str) -> Reply {
        Reply::read(self.post().body(body.to_owned()).send().await.unwrap()).await
    }

    /// A request with a fresh id; returns the reply and the id.
    async fn rpc(&mut self, method: &str, params: Value) -> (Reply, Value) {
        let id = json!(self.next);
        self.next += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        (self.send(&body.to_string()).await, id)
    }
}

/// Soft assertions: a test reports every violated property, not only the first.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: &str, detail: impl std::fmt::Display) {
        if !ok {
            let mut detail = detail.to_string();
            if detail.len() > 600 {
                let cut = (0..=600)
                    .rev()
                    .find(|&i| detail.is_char_boundary(i))
                    .unwrap_or(0);
                detail.truncate(cut);
                detail.push_str(" …");
            }
            self.0.push(format!("{what}\n      observed: {detail}"));
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} violated:\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// Whether a reply refused a request: an HTTP error status or a JSON-RPC error for `id`.
fn refused(reply: &Reply, id: &Value) -> bool {
    !reply.status.is_success()
        || reply
            .answer(id)
            .is_some_and(|m| m.get("error").is_some() && m.get("result").is_none())
}

/// A raw HTTP/1.1 exchange over TCP (nothing normalizes the target). Reads the reply until
/// the connection closes or `STREAM_WINDOW` passes.
async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    tcp.write_all(request).await.unwrap();
    let deadline = tokio::time::Instant::now() + STREAM_WINDOW;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `data` gzip-compressed as one stored (uncompressed) deflate block: a valid gzip member.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    let len = u16::try_from(data.len()).unwrap();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend(crc32(data).to_le_bytes());
    out.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
    out
}

/// The tool names in a tools/list reply.
fn tool_names(msg: &Value) -> BTreeSet<String> {
    msg["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

// =========================================================================== attacks

/// Baseline (interop, not an attack): a notification passes with the upstream's `202`.
/// The Python SDK answers it `202` with `Content-Type: application/json` and no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_accepted() {
    let mut c = Checks::default();
    for up in [Upstream::python().await, Upstream::everything().await] {
        let kind = up.kind;
        let gw = gateway(up).await;
        let bob = Session::open(&gw, "bob", "2025-11-25").await;
        let reply = bob
            .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        c.check(
            reply.status == StatusCode::ACCEPTED,
            &format!("{kind:?}: a notification is answered 202, as the upstream answered it"),
            format!(
                "{} {:?} {}",
                reply.status,
                reply.headers.get(header::CONTENT_TYPE),
                reply.text
            ),
        );
    }
    c.finish();
}

/// Class: **charset / content-coding smuggling** — the upstream must read the same bytes
/// with the same meaning as idguard. A body labelled `charset=utf-7` reads, decoded as
/// UTF-7, as a call of a hidden tool (`+ACI-` is `"`); a gzip body is opaque to idguard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charset_and_content_coding_smuggling_is_refused() {
    let mut c = Checks::default();
    let ev = gateway(Upstream::everything().await).await;
    let bob = Session::open(&ev, "bob", "2025-11-25").await;

    // Read as UTF-8 (idguard): `echo` with a junk member `x`. Read as UTF-7: a second
    // `"name":"get-env"` (last member wins in most parsers).
    let smuggled = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","x":"+ACI-,+ACI-name+ACI-:+ACI-get-env+ACI-,+ACI-y+ACI-:+ACI-","arguments":{"message":"hi"}}}"#;
    let reply = Reply::read(
        bob.post_as("application/json; charset=utf-7")
            .body(smuggled)
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        matches!(reply.status.as_u16(), 415 | 400),
        "a body labelled charset=utf-7 is refused by idguard with 415 (or 400)",
        format!("{} {}", reply.status, reply.text),
    );
    c.check(
        !reply.text.contains(&ev.up.canary),
        "the hidden tool get-env never runs",
        "the reply carries the upstream's environment",
    );

    // Two Content-Type headers: which one does each reader take?
    let reply = Reply::read(
        bob.post()
            .header(header::CONTENT_TYPE, "application/json; charset=utf-7")
            .body(smuggled)
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        matches!(reply.status.as_u16(), 415 | 400),
        "a request with two Content-Type headers is refused with 415 (or 400)",
        format!("{} {}", reply.status, reply.text),
    );

    // A gzip-coded body: idguard cannot read what the upstream would inflate.
    let hidden = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                        "params": {"name": TS_HIDDEN_TOOL, "arguments": {}}});
    let reply = Reply::read(
        bob.post()
            .header(header::CONTENT_ENCODING, "gzip")
            .body(gzip_stored(hidden.to_string().as_bytes()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        reply.status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "a request with Content-Encoding: gzip is refused with 415",
        format!("{} {}", reply.status, reply.text),
    );
    c.check(
        !reply.text.contains(&ev.up.canary),
        "the gzip-coded call of get-env never runs",
        "the reply carries the upstream's environment",
    );

    // An allowed charset is normalized away: the upstream is told exactly what idguard read.
    let py = gateway(Upstream::python().await).await;
    let bob = Session::open(&py, "bob", "2025-11-25").await;
    let reply = Reply::read(
        bob.post_as("application/json; charset=utf-8")
            .body(
                json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                       "params": {"name": "echo_headers", "arguments": {}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    let received = reply
        .answer(&json!(4))
        .map(|m| m["result"]["structuredContent"]["headers"].clone())
        .unwrap_or(Value::Null);
    let content_types: Vec<&str> = received
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|h| h[0] == "content-type")
                .filter_map(|h| h[1].as_str())
                .collect()
        })
        .unwrap_or_default();
    c.check(
        content_types == ["application/json"],
        "with charset=utf-8 the upstream receives exactly `Content-Type: application/json`",
        format!("{} {content_types:?} {}", reply.status, reply.text),
    );
    c.finish();
}

/// Class: **replayed SSE streams** — `GET` with `Last-Event-ID` makes the upstream replay
/// stored events: the unfiltered list and the unredacted result it answered before
/// idguard rewrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_sse_streams_are_filtered_like_the_original() {
    let mut c = Checks::default();
    for (up, hidden) in [
        (Upstream::everything().await, TS_HIDDEN_TOOL),
        (Upstream::python().await, PY_HIDDEN_TOOL),
    ] {
        let kind = up.kind;
        let gw = gateway(up).await;
        let mut bob = Session::open(&gw, "bob", "2025-11-25").await;
        let (list, id) = bob.rpc("tools/list", json!({})).await;
        let names = list.answer(&id).map(|m| tool_names(&m)).unwrap_or_default();
        c.check(
            list.is_sse() && !names.is_empty() && !names.contains(hidden),
            &format!("{kind:?}: bob's tools/list comes as SSE, filtered"),
            format!("{names:?} {}", list.text),
        );
        // Every event id the reply carried: the priming event's id comes first.
        let ids: Vec<String> = sse_events(&list.text)
            .into_iter()
            .filter_map(|e| e.id)
            .collect();
        // (No event id at all would make a replay impossible: secure, and nothing to try.)
        eprintln!(
            "{kind:?}: replaying bob's tools/list from {} event id(s)",
            ids.len()
        );
        for last in &ids {
            let res = bob.get(Some(last)).send().await.unwrap();
            let status = res.status();
            let text = read_window(res, |t| t.contains("\"tools\"")).await;
            c.check(
                !text.contains(&format!("\"{hidden}\"")),
                &format!(
                    "{kind:?}: a replay from event {last} never shows bob the hidden tool {hidden}"
                ),
                format!("{status} {text}"),
            );
        }

        if kind == Kind::Python {
            let (doc, id) = bob
                .rpc(
                    "tools/call",
                    json!({"name": "get_document", "arguments": {}}),
                )
                .await;
            c.check(
                doc.answer(&id).is_some() && !doc.text.contains(OWNER_EMAIL),
                "Python: bob's get_document result is redacted",
                &doc.text,
            );
            let ids: Vec<String> = sse_events(&doc.text)
                .into_iter()
                .filter_map(|e| e.id)
                .collect();
            for last in &ids {
                let res = bob.get(Some(last)).send().await.unwrap();
                let status = res.status();
                let text = read_window(res, |t| t.contains("structuredContent")).await;
                c.check(
                    !text.contains("owner_email") && !text.contains(OWNER_EMAIL),
                    &format!("Python: a replay from event {last} never shows bob owner_email"),
                    format!("{status} {text}"),
                );
            }
        }
    }
    c.finish();
}

/// Class: **paths below the endpoint** — idguard decides on `/mcp`; `/mcp/../sse` and its
/// encodings must not reach other routes of the upstream (here its legacy SSE transport).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_below_the_endpoint_never_reach_the_upstream() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let token = gw.token("bob");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    for (method, target) in [
        ("GET", "/mcp/../sse"),
        ("GET", "/mcp/%2e%2e/sse"),
        ("POST", "/mcp/%2E%2E/messages/?session_id=x"),
        ("GET", "/mcp/x"),
        ("GET", "/mcp/..%2fsse"),
        ("POST", "/mcp/..%2Fmessages/?session_id=x"),
    ] {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Accept: application/json, text/event-stream\r\nConnection: close\r\n",
            gw.addr
        );
        if method == "POST" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        let (status, reply) = raw_http(gw.addr, request.as_bytes()).await;
        let lower = reply.to_ascii_lowercase();
        c.check(
            status == 404
                && !lower.contains("server: uvicorn")
                && !lower.contains("event: endpoint"),
            &format!(
                "{method} {target} is a 404 from idguard (no upstream reply, no SSE endpoint)"
            ),
            reply.lines().take(12).collect::<Vec<_>>().join(" | "),
        );
    }
    let log = gw.up.http_log().await;
    c.check(
        log.is_empty(),
        "the upstream received none of these requests",
        format!("{log:?}"),
    );
    c.finish();
}

/// Class: **duplicate ids in a batch** — idguard matches replies to requests by id; two
/// requests with one id (`1` and `1`, or `1` and `"1"`, which some servers key alike)
/// let the reply of one pass for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_in_a_batch_are_refused() {
    let mut c = Checks::default();
    // The TypeScript SDK accepts batches at any protocol version; 2025-03-26 is the last
    // revision that has them. (The Python SDK refuses every batch with a 400 itself.)
    let gw = gateway(Upstream::everything().await).await;
    let bob = Session::open(&gw, "bob", "2025-03-26").await;
    for (a, b) in [
        (json!(1), json!(1)),
        (json!(1), json!("1")),
        (json!("1"), json!(1)),
    ] {
        let batch = json!([
            {"jsonrpc": "2.0", "id": a, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"message": "x"}}},
            {"jsonrpc": "2.0", "id": b, "method": "tools/list"}
        ]);
        let reply = bob.send(&batch.to_string()).await;
        let json_error = serde_json::from_str::<Value>(&reply.text)
            .ok()
            .is_some_and(|v| {
                v.get("error").is_some() || v.get(0).is_some_and(|e| e.get("error").is_some())
            });
        c.check(
            reply.status == StatusCode::BAD_REQUEST && json_error,
            &format!("a batch with ids {a} and {b} is refused with 400 and a JSON-RPC error"),
            format!("{} {}", reply.status, reply.text),
        );
        c.check(
            !reply.text.contains(TS_HIDDEN_TOOL),
            &format!("a batch with ids {a} and {b} never shows bob {TS_HIDDEN_TOOL}"),
            &reply.text,
        );
    }
    c.finish();
}

/// Class: **tasks** (2025-11-25) — a task's result arrives later, through `tasks/result`,
/// outside the call idguard decided; and the Python upstream keeps one task store for
/// everyone, so task ids are all that separates callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_redacted_and_bound_to_their_creator() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let mut bob = Session::open(&gw, "bob", "2025-11-25").await;
    let mut alice = Session::open(&gw, "alice", "2025-11-25").await;

    // bob runs the redacted tool as a task: refused up front, or redacted in tasks/result.
    let (created, id) = bob
        .rpc(
            "tools/call",
            json!({"name": "get_document", "arguments": {}, "task": {"ttl": 60000}}),
        )
        .await;
    c.check(
        !created.text.contains(OWNER_EMAIL),
        "bob's get_document task creation shows no owner_email",
        &created.text,
    );
    if let Some(task_id) = created
        .answer(&id)
        .and_then(|m| m["result"]["task"]["taskId"].as_str().map(str::to_owned))
    {
        let (result, _) = bob.rpc("tasks/result", json!({"taskId": task_id})).await;
        c.check(
            !result.text.contains(OWNER_EMAIL) && !result.text.contains("owner_email"),
            "bob's tasks/result for his get_document task shows no owner_email",
            &result.text,
        );
    }

    // alice's tasks: a quick one (T1) and a slow one (T2, still running when bob cancels).
    let task = |delay_ms: u64| json!({"name": "get_document", "arguments": {"delay_ms": delay_ms}, "task": {"ttl": 60000}});
    let (t1, id1) = alice.rpc("tools/call", task(0)).await;
    let (t2, id2) = alice.rpc("tools/call", task(30_000)).await;
    let task_id = |r: &Reply, id: &Value| {
        r.answer(id)
            .and_then(|m| m["result"]["task"]["taskId"].as_str().map(str::to_owned))
    };
    let (Some(t1_id), Some(t2_id)) = (task_id(&t1, &id1), task_id(&t2, &id2)) else {
        c.check(
            false,
            "alice can run get_document as a task",
            format!("{} | {}", t1.text, t2.text),
        );
        c.finish();
        return;
    };
    let (own, own_id) = alice.rpc("tasks/result", json!({"taskId": t1_id})).await;
    c.check(
        own.answer(&own_id)
            .is_some_and(|m| m.get("result").is_some())
            && own.text.contains(OWNER_EMAIL),
        "alice gets her own task's result (owner_email included)",
        &own.text,
    );

    for method in ["tasks/get", "tasks/result"] {
        let (reply, id) = bob.rpc(method, json!({"taskId": t1_id})).await;
        c.check(
            refused(&reply, &id)
                && !reply.text.contains(OWNER_EMAIL)
                && !reply.text.contains("\"completed\""),
            &format!("bob's {method} on alice's task is an error"),
            format!("{} {}", reply.status, reply.text),
        );
    }
    let (reply, id) = bob.rpc("tasks/cancel", json!({"taskId": t2_id})).await;
    c.check(
        refused(&reply, &id),
        "bob's tasks/cancel on alice's running task is an error",
        format!("{} {}", reply.status, reply.text),
    );
    let (still, still_id) = alice.rpc("tasks/get", json!({"taskId": t2_id})).await;
    c.check(
        still
            .answer(&still_id)
            .is_some_and(|m| m["result"]["status"] == "working"),
        "alice's task is still working after bob's cancel",
        &still.text,
    );
    let (list, _) = bob.rpc("tasks/list", json!({})).await;
    c.check(
        !list.text.contains(&t1_id) && !list.text.contains(&t2_id),
        "bob's tasks/list never names alice's tasks",
        format!("{} {}", list.status, list.text),
    );
    c.finish();
}

/// Class: **unmediated methods** — every method that names a prompt or resource is
/// decided; an unknown method fails closed at idguard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_naming_items_are_decided_and_unknown_methods_fail_closed() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let mut bob = Session::open(&gw, "bob", "2025-11-25").await;

    let complete = |name: &str| {
        json!({"ref": {"type": "ref/prompt", "name": name},
               "argument": {"name": "topic", "value": "s"}})
    };
    let (reply, id) = bob
        .rpc("completion/complete", complete("secret_prompt"))
        .await;
    c.check(
        refused(&reply, &id) && !reply.text.contains("secret-merger"),
        "completion/complete for secret_prompt is a JSON-RPC error from idguard",
        format!("{} {}", reply.status, reply.text),
    );
    let (reply, id) = bob
        .rpc("completion/complete", complete("public_prompt"))
        .await;
    c.check(
        reply.answer(&id).is_some_and(|m| m.get("result").is_some()),
        "completion/complete for public_prompt (allowed) works",
        format!("{} {}", reply.status, reply.text),
    );
    // The policies themselves: bob lists and gets only public_prompt.
    let (reply, id) = bob.rpc("prompts/list", json!({})).await;
    let prompts: BTreeSet<String> = reply
        .answer(&id)
        .and_then(|m| m["result"]["prompts"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    c.check(
        prompts == set(&["public_prompt"]),
        "bob's prompts/list is exactly public_prompt",
        format!("{prompts:?} {}", reply.text),
    );
    let (reply, id) = bob
        .rpc(
            "prompts/get",
            json!({"name": "secret_prompt", "arguments": {"topic": "x"}}),
        )
        .await;
    c.check(
        refused(&reply, &id) && !reply.text.contains("confidential"),
        "prompts/get secret_prompt is refused",
        format!("{} {}", reply.status, reply.text),
    );
    let (reply, id) = bob
        .rpc("resources/subscribe", json!({"uri": "docs://secret/plan"}))
        .await;
    c.check(
        refused(&reply, &id),
        "resources/subscribe to docs://secret/plan is refused",
        format!("{} {}", reply.status, reply.text),
    );
    for uri in ["docs://secret/plan", "docs://secret/payroll"] {
        let (reply, id) = bob.rpc("resources/read", json!({"uri": uri})).await;
        c.check(
            refused(&reply, &id) && !reply.text.contains("SECRET"),
            &format!("resources/read of {uri} (the docs://secret/{{name}} template) is refused"),
            format!("{} {}", reply.status, reply.text),
        );
    }
    let before = gw.up.rpc_methods().await.len();
    let (reply, id) = bob.rpc("x/unknown", json!({})).await;
    let code = reply.answer(&id).map(|m| m["error"]["code"].clone());
    let seen = gw.up.rpc_methods().await;
    c.check(
        code == Some(json!(-32601)) && !seen[before..].iter().any(|m| m == "x/unknown"),
        "an unknown method is answered -32601 by idguard (the upstream never sees it)",
        format!(
            "{} {} (upstream saw: {:?})",
            reply.status,
            reply.text,
            &seen[before..]
        ),
    );
    c.finish();
}

/// Class: **session binding** — an MCP session belongs to the caller who created it; a
/// session id idguard never issued, or an ambiguous one, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_creator() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let alice = Session::open(&gw, "alice", "2025-11-25").await;
    let mut bob = Session::open(&gw, "bob", "2025-11-25").await;
    let alices = alice.id.clone().unwrap();
    let bobs = bob.id.clone().unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}).to_string();

    let before = gw.up.rpc_methods().await.len();
    bob.id = Some(alices.clone());
    let reply = bob.send(&list).await;
    c.check(
        reply.status == StatusCode::NOT_FOUND,
        "bob presenting alice's Mcp-Session-Id gets 404",
        format!("{} {}", reply.status, reply.text),
    );
    bob.id = Some("f00dfeedf00dfeedf00dfeedf00dfeed".into());
    let reply = bob.send(&list).await;
    c.check(
        reply.status == StatusCode::NOT_FOUND,
        "a made-up Mcp-Session-Id gets 404",
        format!("{} {}", reply.status, reply.text),
    );
    let after = gw.up.rpc_methods().await.len();
    c.check(
        after == before,
        "neither request reached the upstream",
        format!("{} new upstream messages", after - before),
    );

    bob.id = None;
    let reply = Reply::read(
        bob.post()
            .header("mcp-session-id", &bobs)
            .header("mcp-session-id", &alices)
            .body(list.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        reply.status == StatusCode::BAD_REQUEST,
        "two Mcp-Session-Id headers get 400",
        format!("{} {}", reply.status, reply.text),
    );
    let reply = Reply::read(
        bob.post()
            .header(
                "mcp-session-id",
                HeaderValue::from_bytes(b"\xff\xfesession").unwrap(),
            )
            .body(list.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        reply.status == StatusCode::BAD_REQUEST,
        "a non-ASCII Mcp-Session-Id gets 400",
        format!("{} {}", reply.status, reply.text),
    );
    c.finish();
}

/// Class: **hostile headers** — DNS rebinding (`Host`, `Origin`) is refused at idguard;
/// credentials and caller-made forwarding headers never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_are_refused_or_stripped() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let bob = Session::open(&gw, "bob", "2025-11-25").await;
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}).to_string();

    let before = gw.up.rpc_methods().await.len();
    let reply = Reply::read(
        bob.post()
            .header(header::HOST, "evil.example")
            .body(list.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        matches!(reply.status.as_u16(), 403 | 421),
        "Host: evil.example is refused with 403 (or 421)",
        format!("{} {}", reply.status, reply.text),
    );
    let reply = Reply::read(
        bob.post()
            .header(header::ORIGIN, "http://evil.example")
            .body(list.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        reply.status == StatusCode::FORBIDDEN,
        "Origin: http://evil.example is refused with 403",
        format!("{} {}", reply.status, reply.text),
    );
    let after = gw.up.rpc_methods().await.len();
    c.check(
        after == before,
        "neither request reached the upstream",
        format!("{} new upstream messages", after - before),
    );

    let reply = Reply::read(
        bob.post()
            .header(header::COOKIE, "session=s3cr3t")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6;host=evil.example")
            .body(
                json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                       "params": {"name": "echo_headers", "arguments": {}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    let received: Vec<(String, String)> = reply
        .answer(&json!(6))
        .and_then(|m| {
            m["result"]["structuredContent"]["headers"]
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                h[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    c.check(
        !received.is_empty(),
        "echo_headers answers through the gateway",
        format!("{} {}", reply.status, reply.text),
    );
    for (name, value) in &received {
        c.check(
            name != "cookie" && name != "authorization",
            "the upstream never receives Cookie or Authorization",
            format!(
                "{name}: {}",
                if name == "authorization" {
                    "<redacted>"
                } else {
                    value
                }
            ),
        );
        c.check(
            !value.contains("6.6.6.6") && !value.contains("evil.example"),
            "caller-supplied X-Forwarded-*/Forwarded values never reach the upstream",
            format!("{name}: {value}"),
        );
    }
    c.finish();
}

/// Class: **header/body mismatch** — `Mcp-Method` routes the request in front of the
/// server; a body that says otherwise is refused (SEP-2243: -32020).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_method_header_must_match_the_body() {
    let mut c = Checks::default();
    let gw = gateway(Upstream::python().await).await;
    let bob = Session::open(&gw, "bob", "2025-11-25").await;
    let before = gw.up.rpc_methods().await.len();
    let reply = Reply::read(
        bob.post()
            .header("mcp-method", "tools/list")
            .body(
                json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "whoami", "arguments": {}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    let code = serde_json::from_str::<Value>(&reply.text)
        .ok()
        .map(|v| v["error"]["code"].clone());
    c.check(
        reply.status == StatusCode::BAD_REQUEST && code == Some(json!(-32020)),
        "Mcp-Method: tools/list on a tools/call body is a 400 with JSON-RPC error -32020",
        format!("{} {}", reply.status, reply.text),
    );
    let after = gw.up.rpc_methods().await.len();
    c.check(
        after == before,
        "the upstream never sees it",
        format!("{} new", after - before),
    );
    c.finish();
}

/// Class: **real clients** — the official Python SDK client (default mode: it picks
/// 2026-07-28 when the server speaks it) and the TypeScript SDK client, through the
/// gateway, as bob and alice: each sees exactly its tools; a call before any list works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdk_clients_see_only_their_tools() {
    let mut c = Checks::default();
    // server-everything's read-only tools (conditional ones included); bob sees these
    // minus get-env.
    let ts_read_only = set(&[
        "echo",
        "get-annotated-message",
        "get-env",
        "get-resource-links",
        "get-resource-reference",
        "get-structured-content",
        "get-sum",
        "get-tiny-image",
        "trigger-long-running-operation",
        "get-roots-list",
    ]);
    let upstreams: [Arc<Upstream>; 2] = [
        Upstream::python().await.into(),
        Upstream::everything().await.into(),
    ];
    for up in upstreams {
        let kind = up.kind;
        let (call, args) = match kind {
            Kind::Python => ("whoami", "{}"),
            Kind::Everything => ("echo", r#"{"message":"hi"}"#),
        };
        let mut lists = std::collections::BTreeMap::new();
        for user in ["alice", "bob"] {
            // The Python SDK client, default mode, calling a tool before listing; a fresh
            // gateway, so nothing idguard learnt from another client helps.
            let gw = gateway(up.clone()).await;
            let token = gw.token(user);
            let out = run_client(
                Command::new("python3")
                    .arg("tests/upstreams/python_client.py")
                    .arg(gw.url())
                    .args(["--call", call, "--args", args])
                    .current_dir(manifest_dir())
                    .env("IDGUARD_TOKEN", &token),
            )
            .await;
            match out {
                Ok(stdout) => {
                    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
                    let tools: BTreeSet<String> = v["tools"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| t.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    c.check(
                        v["call"]["ok"] == true && v["call"]["is_error"] == false,
                        &format!(
                            "{kind:?}/python client ({}) as {user}: tools/call {call} before any tools/list succeeds",
                            v["protocol"]
                        ),
                        &v["call"],
                    );
                    lists.insert((user, "python"), tools);
                }
                Err(e) => c.check(false, &format!("{kind:?}/python client as {user} runs"), e),
            }
            // The TypeScript SDK client.
            let gw = gateway(up.clone()).await;
            let token = gw.token(user);
            let out = run_client(
                Command::new("node")
                    .arg("tests/upstreams/node/client.mjs")
                    .arg(gw.url())
                    .arg("-")
                    .current_dir(manifest_dir())
                    .env("IDGUARD_TOKEN", &token),
            )
            .await;
            match out {
                Ok(stdout) => {
                    let first = stdout.lines().next().unwrap_or_default();
                    let tools: BTreeSet<String> = serde_json::from_str(first).unwrap_or_default();
                    lists.insert((user, "ts"), tools);
                }
                Err(e) => c.check(false, &format!("{kind:?}/TS client as {user} runs"), e),
            }
        }
        for client in ["python", "ts"] {
            let (Some(alice), Some(bob)) =
                (lists.get(&("alice", client)), lists.get(&("bob", client)))
            else {
                continue;
            };
            let (want_alice, want_bob): (BTreeSet<String>, BTreeSet<String>) = match kind {
                Kind::Python => (
                    set(&["whoami", "delete_document", "get_document", "echo_headers"]),
                    set(&["whoami", "get_document", "echo_headers"]),
                ),
                Kind::Everything => {
                    let bob_may: BTreeSet<String> = alice
                        .intersection(&ts_read_only)
                        .filter(|t| *t != TS_HIDDEN_TOOL)
                        .cloned()
                        .collect();
                    (alice.clone(), bob_may)
                }
            };
            c.check(
                alice == &want_alice
                    && (kind != Kind::Everything || alice.contains(TS_HIDDEN_TOOL)),
                &format!("{kind:?}/{client} client: alice sees every tool"),
                format!("{alice:?}"),
            );
            c.check(
                bob == &want_bob,
                &format!("{kind:?}/{client} client: bob sees exactly {want_bob:?}"),
                format!("{bob:?}"),
            );
        }
    }
    c.finish();
}

/// Runs a client process to completion (bounded); its stdout, or why it failed.
async fn run_client(cmd: &mut Command) -> Result<String, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let id = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(Ok(Ok(out))) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(Ok(out))) => Err(format!(
            "exit {}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(Err(e))) => Err(format!("wait: {e}")),
        Ok(Err(e)) => Err(format!("join: {e}")),
        Err(_) => {
            // Timed out: end the one process we started, by its id.
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            Err("timed out after 60 s".into())
        }
    }
}

// ===================================================== request ids and upstream timeouts

/// A server routes replies by request id (the Python SDK by `str(id)`): an id used again in
/// a session (or `1` after `"1"`) could carry one request's unfiltered reply to the other
/// request's stream. The second use is refused before the server sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_used_once_per_session() {
    let gw = gateway(Upstream::python().await).await;
    let bob = Session::open(&gw, "bob", "2025-11-25").await;
    let mut c = Checks::default();
    let send = |body: Value| {
        let req = bob.post().body(body.to_string());
        async move { Reply::read(req.send().await.unwrap()).await }
    };
    let first = send(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})).await;
    c.check(
        first
            .answer(&json!(7))
            .is_some_and(|m| m.get("result").is_some()),
        "the first use of id 7 is answered",
        format!("{} {}", first.status, first.text),
    );
    let before = gw.up.rpc_methods().await.len();
    for id in [json!(7), json!("7")] {
        let again = send(json!({"jsonrpc": "2.0", "id": id, "method": "ping"})).await;
        c.check(
            again.status == StatusCode::BAD_REQUEST,
            &format!("id {id} again in the session is refused with 400"),
            format!("{} {}", again.status, again.text),
        );
    }
    let seen = gw.up.rpc_methods().await;
    c.check(
        seen.len() == before,
        "the refused requests never reach the upstream",
        format!("{:?}", &seen[before..]),
    );
    c.finish();
}

/// The session record remembers the decisions of `requests_per_session` requests (here 2).
/// A request reusing the id of a forgotten redacted call is refused: otherwise the
/// upstream's event store would replay the first call's unredacted reply on a resumed
/// stream, and idguard would filter it as the reply to the second, unredacted, request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_request_id_stays_used() {
    let gw = gateway_layered(
        Upstream::python().await,
        |g| g,
        |layer| {
            layer.with_cache_capacities(McpCacheCapacities::default().with_requests_per_session(2))
        },
    )
    .await;
    let mut bob = Session::open(&gw, "bob", "2025-11-25").await;
    let mut c = Checks::default();
    let (doc, first) = bob
        .rpc(
            "tools/call",
            json!({"name": "get_document", "arguments": {}}),
        )
        .await;
    c.check(
        doc.answer(&first).is_some() && !doc.text.contains(OWNER_EMAIL),
        "bob's get_document result is redacted",
        &doc.text,
    );
    let events: Vec<String> = sse_events(&doc.text)
        .into_iter()
        .filter_map(|e| e.id)
        .collect();
    c.check(
        !events.is_empty(),
        "the Python upstream's reply carries event ids (a replay is possible)",
        &doc.text,
    );
    for _ in 0..2 {
        let (pong, id) = bob.rpc("ping", json!({})).await;
        c.check(
            pong.answer(&id).is_some(),
            "two more requests are answered",
            &pong.text,
        );
    }
    // The record forgot request `first`; whoami is not redacted for bob.
    let before = gw.up.rpc_methods().await.len();
    let again = bob
        .send(
            &json!({"jsonrpc": "2.0", "id": first, "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}}})
            .to_string(),
        )
        .await;
    c.check(
        again.status == StatusCode::BAD_REQUEST,
        &format!("id {first} again, once forgotten, is refused with 400"),
        format!("{} {}", again.status, again.text),
    );
    let seen = gw.up.rpc_methods().await;
    c.check(
        seen.len() == before,
        "the refused request never reaches the upstream",
        format!("{:?}", &seen[before..]),
    );
    for last in &events {
        let res = bob.get(Some(last)).send().await.unwrap();
        let status = res.status();
        let text = read_window(res, |t| t.contains("structuredContent")).await;
        c.check(
            !text.contains("owner_email") && !text.contains(OWNER_EMAIL),
            &format!("a replay from event {last} never shows bob owner_email"),
            format!("{status} {text}"),
        );
    }
    c.finish();
}

/// An upstream that goes silent within a reply does not hold the caller's request open
/// forever: the reply ends after the idle timeout, and a reply that never starts is `504`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_cut_off_in_time() {
    let up = Arc::new(Upstream::python().await);
    let gw = gateway_with(up.clone(), |g| {
        g.with_idle_timeout(Duration::from_millis(800))
    })
    .await;
    let bob = Session::open(&gw, "bob", "2025-11-25").await;
    let started = std::time::Instant::now();
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "get_document", "arguments": {"delay_ms": 10_000}}});
    let reply = Reply::read(bob.post().body(body.to_string()).send().await.unwrap()).await;
    let took = started.elapsed();
    let mut c = Checks::default();
    c.check(
        took < Duration::from_secs(6) && reply.answer(&json!(3)).is_none(),
        "a reply silent for longer than the idle timeout ends without waiting for the upstream",
        format!("{took:?} {} {}", reply.status, reply.text),
    );

    // An upstream that accepts the connection and never answers: `504` in time.
    let hung = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let hung_url = format!("http://{}/mcp", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let (entra, base) = guarded(&hung_url, |g| {
        g.with_response_timeout(Duration::from_millis(800))
    })
    .await;
    let started = std::time::Instant::now();
    let res = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .unwrap()
        .post(format!("{base}/mcp"))
        .bearer_auth(entra.token_for("bob").unwrap().mint().unwrap())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    c.check(
        res.status() == StatusCode::GATEWAY_TIMEOUT && took < Duration::from_secs(6),
        "an upstream that never starts its reply is a 504 after the response timeout",
        format!("{took:?} {}", res.status()),
    );
    c.finish();
}

/// idguard's stack (the test policies, a fresh emulator) in front of `upstream_url`, an
/// upstream that is not an MCP SDK process: the emulator and idguard's base URL.
async fn guarded(
    upstream_url: &str,
    configure: impl FnOnce(Gateway) -> Gateway,
) -> (DevEntra, String) {
    guarded_with_client(upstream_url, reqwest::Client::new(), configure).await
}

/// [`guarded`], with `client` for the upstream (an `https://` one).
async fn guarded_with_client(
    upstream_url: &str,
    client: reqwest::Client,
    configure: impl FnOnce(Gateway) -> Gateway,
) -> (DevEntra, String) {
    let entra = DevEntra::builder().start().await.unwrap();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"))
        .build()
        .await
        .unwrap();
    let policies = PolicyEngine::from_dir(manifest_dir().join("tests/gateway/policies")).unwrap();
    let gateway = configure(Gateway::new(
        reqwest::Url::parse(upstream_url).unwrap(),
        client,
    ));
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(guard.authorize_mcp_layer(policies))
            .service(gateway),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (entra, base)
}

/// `Content-Length`, `Transfer-Encoding` and the body's length, of one request an upstream
/// of [`record_and_answer`] received.
type Seen = (Option<String>, Option<String>, usize);

/// A hyper upstream on loopback (behind `tls` when given) that counts the connections it
/// accepts and answers with [`record_and_answer`]: its MCP URL, the count, what it saw.
async fn recording_upstream(
    tls: Option<tokio_rustls::TlsAcceptor>,
    stream: Option<i64>,
) -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<Mutex<Vec<Seen>>>,
) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/mcp", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (count, record) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let record = record.clone();
            let service = hyper::service::service_fn(move |req| {
                record_and_answer(req, record.clone(), stream)
            });
            let serve = hyper::server::conn::http1::Builder::new();
            match &tls {
                None => {
                    tokio::spawn(
                        serve.serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                    );
                }
                Some(acceptor) => {
                    let Ok(socket) = acceptor.accept(socket).await else {
                        continue;
                    };
                    tokio::spawn(
                        serve.serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                    );
                }
            }
        }
    });
    (url, accepted, seen)
}

/// A plain upstream's answer to `req` (recorded in `seen`): an empty JSON-RPC result, as an
/// event stream for the request with id `stream`.
async fn record_and_answer(
    req: http::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stream: Option<i64>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
    };
    let (length, chunked) = (
        header(header::CONTENT_LENGTH),
        header(header::TRANSFER_ENCODING),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"].clone();
    seen.lock().unwrap().push((length, chunked, body.len()));
    let reply = json!({"jsonrpc": "2.0", "id": id, "result": {}});
    let (content_type, body) = if stream.is_some_and(|s| id == json!(s)) {
        (
            "text/event-stream",
            format!("event: message\ndata: {reply}\n\n"),
        )
    } else {
        ("application/json", reply.to_string())
    };
    Ok(http::Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap())
}

/// A `ping` with `id` to idguard at `base` as the holder of `token`: the reply, and the
/// length of the body sent.
async fn ping(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: i64,
) -> (reqwest::Response, usize) {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();
    let length = body.len();
    let res = http
        .post(format!("{base}/mcp"))
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (res, length)
}

/// The hop: the upstream gets the body idguard holds with its `Content-Length` (never
/// chunked), and consecutive requests reuse one pooled keep-alive connection. The upstream
/// is a plain HTTP/1.1 server on loopback that counts the connections it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_sends_content_length_and_reuses_its_connection() {
    use std::sync::atomic::Ordering;

    let (upstream_url, accepted, seen) = recording_upstream(None, None).await;
    let (entra, base) = guarded(&upstream_url, |g| g).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .unwrap();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    let mut sent = Vec::new();
    for id in 1..=5 {
        let (res, length) = ping(&http, &base, &bob, id).await;
        sent.push(length);
        assert_eq!(res.status(), StatusCode::OK);
        let reply: Value = res.json().await.unwrap();
        assert_eq!(reply["id"], json!(id), "{reply}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for ((length, chunked, got), sent) in seen.iter().zip(&sent) {
        assert_eq!(
            length.as_deref(),
            Some(sent.to_string().as_str()),
            "{seen:?}"
        );
        assert_eq!(chunked, &None, "never chunked: {seen:?}");
        assert_eq!(got, sent);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "five requests one after another share one keep-alive connection"
    );
}

/// An `https://` upstream is reached through the given reqwest client (plain-HTTP ones use
/// hyper's client directly): JSON replies with their length, an SSE reply streamed, the
/// request's `Content-Length`, one pooled TLS connection. The upstream is a hyper server
/// behind rustls with a certificate made for the test, trusted by the client only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_through_the_given_client() {
    use std::sync::atomic::Ordering;
    use tokio_rustls::rustls;

    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // The third request is answered as an event stream.
    let (upstream_url, accepted, seen) = recording_upstream(Some(acceptor), Some(3)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_der(&cert).unwrap()])
        .build()
        .unwrap();
    let (entra, base) = guarded_with_client(&upstream_url, client, |g| g).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .unwrap();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    let mut sent = Vec::new();
    for id in 1..=3 {
        let (res, length) = ping(&http, &base, &bob, id).await;
        sent.push(length);
        assert_eq!(res.status(), StatusCode::OK);
        let stream = id == 3;
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            }
        );
        let text = res.text().await.unwrap();
        let reply: Value = if stream {
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str(data).unwrap()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(reply["id"], json!(id), "{text}");
    }
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<Seen> = sent
        .iter()
        .map(|n| (Some(n.to_string()), None, *n))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "three requests one after another share one TLS connection"
    );
}
