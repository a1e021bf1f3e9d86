//! Several upstreams behind one MCP endpoint (`gateway::Gateways`), against real servers:
//! the stack `idguard serve` builds for `[[upstream]]` entries,
//! `ValidateTokenLayer` → `AuthorizeMcpLayer` → `Gateways` (one `Gateway` per upstream), on
//! 127.0.0.1 port 0, with the dev Entra emulator (alice: `Tools.Admin`; bob: `Tools.Read`)
//! and real tokens.
//!
//! Upstreams:
//! - `demo`: rmcp's `StreamableHttpService` serving idguard-dev's demo tools, in process
//!   on its own loopback listener (stateful, SSE replies);
//! - `py`: `tests/upstreams/python_server.py`, the official MCP Python SDK, a child process
//!   on a free loopback port (killed on drop, and exiting when its stdin closes).
//!
//! Policies ([`POLICIES`]): admins use everything; `Tools.Read` calls read-only tools; and
//! nothing of `Server::"py"` is for anyone but admins.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{StatusCode, header};
use idguard::IdGuard;
use idguard::gateway::{Gateway, Gateways, UPSTREAM_UNAVAILABLE_CODE};
use idguard::policy::{PolicyEngine, Servers};
use idguard_dev::DevEntra;
use idguard_dev::demo::DemoServer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tower::ServiceBuilder;

const STEP: Duration = Duration::from_secs(20);

const POLICIES: &str = r#"
@id("admins-everything")
permit (principal in Role::"Tools.Admin", action, resource);

@id("readers-read-only-tools")
permit (principal in Role::"Tools.Read", action == Action::"call_tool", resource)
when { resource.read_only };

@id("py-is-for-admins")
forbid (principal, action, resource in Server::"py")
unless { principal in Role::"Tools.Admin" };
"#;

#[path = "support/python_server.rs"]
mod python_server;
use python_server::PyServer;

/// Waits (polling its probe, bounded) until the Python upstream received `method` with `id`.
async fn wait_for(python: &PyServer, method: &str, id: impl Into<Value>) {
    let id = id.into();
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let log = python.get_json("/_probe/requests").await;
        let seen = log["rpc"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == method && e[1] == id);
        if seen {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream never received {method} {id}: {log}"
        );
        tokio::task::yield_now().await;
    }
}

/// The rmcp demo server on its own loopback listener: its MCP URL.
async fn demo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let demo = DemoServer::new();
    let service = StreamableHttpService::new(
        move || Ok(demo.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = Router::new().nest_service("/mcp", service);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

struct Stack {
    entra: DevEntra,
    url: String,
    python: PyServer,
    http: reqwest::Client,
}

async fn stack() -> Stack {
    stack_with(None).await
}

/// [`stack`], with a third upstream named `fake` at `fake` when given.
async fn stack_with(fake: Option<String>) -> Stack {
    let python = PyServer::start(
        "tests/upstreams/python_server.py",
        &[("PY_ANNOUNCE_UPDATES", "1")],
    );
    let demo = demo_upstream().await;
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
    let mut names = vec!["demo", "py"];
    if fake.is_some() {
        names.push("fake");
    }
    let servers = Servers::new(names);
    let policies = PolicyEngine::from_sources(
        include_str!("../policies/schema.cedarschema"),
        None,
        [("many.cedar", POLICIES)],
    )
    .unwrap()
    .with_servers(servers.clone());
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let gateway = |url: &str| Gateway::new(reqwest::Url::parse(url).unwrap(), client.clone());
    let py_url = python.url("/mcp");
    let mut upstreams = vec![
        ("demo".to_owned(), gateway(&demo)),
        ("py".to_owned(), gateway(&py_url)),
    ];
    if let Some(fake) = &fake {
        upstreams.push(("fake".to_owned(), gateway(fake)));
    }
    let gateways = Gateways::new(upstreams, servers);
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(guard.authorize_mcp_layer(policies))
            .service(gateways),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stack {
        entra,
        url: format!("{base}/mcp"),
        python,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .unwrap(),
    }
}

/// A raw MCP client session (JSON-RPC over POST; JSON or SSE replies).
struct Session<'s> {
    stack: &'s Stack,
    token: String,
    id: Option<String>,
    next: i64,
}

/// The JSON-RPC messages of a reply: the JSON body, or each SSE event's data.
fn messages(content_type: &str, text: &str) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => vec![],
        }
    }
}

impl<'s> Session<'s> {
    async fn open(stack: &'s Stack, user: &str) -> Session<'s> {
        let mut s = Session {
            stack,
            token: stack.entra.token_for(user).unwrap().mint().unwrap(),
            id: None,
            next: 1,
        };
        let (status, headers, answer) = s
            .post(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "many-upstreams-test", "version": "1"}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer:?}");
        let result = &answer.as_ref().unwrap()["result"];
        for cap in ["tools", "resources", "prompts"] {
            assert!(result["capabilities"].get(cap).is_some(), "{result}");
        }
        let id = headers.get("mcp-session-id").unwrap().to_str().unwrap();
        assert!(id.starts_with("idg1."), "the layer binds the session: {id}");
        s.id = Some(id.to_owned());
        let (status, _, _) = s
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        s
    }

    /// POSTs `body`; the status, headers and the message answering its id (if any).
    async fn post(&self, body: Value) -> (StatusCode, http::HeaderMap, Option<Value>) {
        let (status, headers, all) = self.post_all(&body).await;
        let answer = all
            .into_iter()
            .find(|m| body.get("id").is_some() && m.get("id") == body.get("id"));
        (status, headers, answer)
    }

    /// POSTs `body`; the status, headers and every message of the reply.
    async fn post_all(&self, body: &Value) -> (StatusCode, http::HeaderMap, Vec<Value>) {
        let mut req = self
            .stack
            .http
            .post(&self.stack.url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body.to_string());
        if let Some(id) = &self.id {
            req = req.header("mcp-session-id", id);
        }
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res.text().await.unwrap();
        (status, headers, messages(&ct, &text))
    }

    async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let (status, _, answer) = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(status, StatusCode::OK, "{method}: {answer:?}");
        answer.unwrap_or_else(|| panic!("{method}: no answer"))
    }

    async fn names(&mut self, method: &str, key: &str, field: &str) -> BTreeSet<String> {
        let reply = self.rpc(method, json!({})).await;
        reply["result"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: {reply}"))
            .iter()
            .map(|t| t[field].as_str().unwrap().to_owned())
            .collect()
    }

    async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.rpc("tools/call", json!({"name": tool, "arguments": arguments}))
            .await
    }
}

fn text_of(reply: &Value) -> String {
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {reply}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_merge_per_caller_calls_route_and_server_policies_decide() {
    let stack = stack().await;
    let mut alice = Session::open(&stack, "alice").await;
    let tools = alice.names("tools/list", "tools", "name").await;
    for t in [
        "demo__list_documents",
        "demo__delete_document",
        "py__whoami",
        "py__delete_document",
        "py__get_document",
    ] {
        assert!(tools.contains(t), "alice lacks {t}: {tools:?}");
    }
    assert!(
        tools
            .iter()
            .all(|t| t.starts_with("demo__") || t.starts_with("py__")),
        "{tools:?}"
    );

    // Routed to the right server, with the server's own name.
    let py = alice.call("py__whoami", json!({})).await;
    assert!(
        text_of(&py).starts_with("upstream: anonymous caller"),
        "{py}"
    );
    let demo = alice.call("demo__list_documents", json!({})).await;
    assert!(text_of(&demo).contains("Quarterly plan"), "{demo}");
    let deleted = alice.call("py__delete_document", json!({"id": "d9"})).await;
    assert_eq!(text_of(&deleted), "deleted d9");

    // Resources keep their URIs and are read from their server; prompts are prefixed.
    let resources = alice.names("resources/list", "resources", "uri").await;
    for r in [
        "docs://public/handbook",
        "docs://public/readme",
        "docs://secret/plan",
    ] {
        assert!(resources.contains(r), "{resources:?}");
    }
    let read = alice
        .rpc("resources/read", json!({"uri": "docs://public/readme"}))
        .await;
    assert_eq!(
        read["result"]["contents"][0]["text"], "public readme",
        "{read}"
    );
    // A URI that only a template covers is read once a template list named it.
    let unlisted = alice
        .rpc("resources/read", json!({"uri": "docs://secret/x"}))
        .await;
    assert!(unlisted.get("result").is_none(), "{unlisted}");
    let templates = alice
        .names(
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
        )
        .await;
    assert!(!templates.is_empty(), "{templates:?}");
    let templated = alice
        .rpc("resources/read", json!({"uri": "docs://secret/x"}))
        .await;
    assert_eq!(
        templated["result"]["contents"][0]["text"], "SECRET DOCUMENT x",
        "{templated}"
    );
    let prompts = alice.names("prompts/list", "prompts", "name").await;
    assert!(prompts.contains("py__public_prompt"), "{prompts:?}");
    let prompt = alice
        .rpc(
            "prompts/get",
            json!({"name": "py__public_prompt", "arguments": {"topic": "q3"}}),
        )
        .await;
    assert!(prompt["result"]["messages"].is_array(), "{prompt}");

    // A cancellation goes to the upstream that got the request.
    let slow = json!({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
        "params": {"name": "py__get_document", "arguments": {"delay_ms": 3000}}});
    let cancel = async {
        wait_for(&stack.python, "tools/call", 50).await;
        let (status, _, _) = alice
            .post(
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": 50, "reason": "test"}}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        wait_for(&stack.python, "notifications/cancelled", Value::Null).await;
    };
    let (_, ()) = tokio::join!(alice.post(slow), cancel);

    // bob (Tools.Read): read-only tools, but nothing of `Server::"py"`, not even py's
    // read-only whoami: the server policy decides.
    let mut bob = Session::open(&stack, "bob").await;
    let tools = bob.names("tools/list", "tools", "name").await;
    assert!(tools.contains("demo__list_documents"), "{tools:?}");
    assert!(!tools.contains("demo__delete_document"), "{tools:?}");
    assert!(tools.iter().all(|t| !t.starts_with("py__")), "{tools:?}");
    let denied = bob.call("py__whoami", json!({})).await;
    assert!(
        denied.get("error").is_some() || denied["result"]["isError"] == true,
        "{denied}"
    );
    let read = bob
        .rpc("resources/read", json!({"uri": "docs://public/readme"}))
        .await;
    assert!(read.get("result").is_none(), "{read}");
    let allowed = bob.call("demo__list_documents", json!({})).await;
    assert!(text_of(&allowed).contains("Quarterly plan"), "{allowed}");

    // bob cannot use alice's session.
    let stolen = Session {
        stack: &stack,
        token: bob.token.clone(),
        id: alice.id.clone(),
        next: 100,
    };
    let (status, _, _) = stolen
        .post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_down_leaves_the_others_working() {
    let stack = stack().await;
    let mut alice = Session::open(&stack, "alice").await;
    let tools = alice.names("tools/list", "tools", "name").await;
    assert!(tools.contains("py__whoami"), "{tools:?}");

    stack.python.kill();

    let tools = alice.names("tools/list", "tools", "name").await;
    assert!(tools.contains("demo__list_documents"), "{tools:?}");
    assert!(
        tools.iter().all(|t| !t.starts_with("py__")),
        "py's tools vanish: {tools:?}"
    );
    let down = alice.call("py__whoami", json!({})).await;
    assert_eq!(down["error"]["code"], UPSTREAM_UNAVAILABLE_CODE, "{down}");
    assert!(
        down["error"]["message"].as_str().unwrap().contains("`py`"),
        "names the server: {down}"
    );
    let demo = alice.call("demo__list_documents", json!({})).await;
    assert!(text_of(&demo).contains("Quarterly plan"), "{demo}");
    // A new session still opens with the upstream that is left.
    let mut bob = Session::open(&stack, "bob").await;
    let tools = bob.names("tools/list", "tools", "name").await;
    assert!(tools.contains("demo__list_documents"), "{tools:?}");
}

/// A minimal MCP upstream over real HTTP whose one tool, `ask`, asks the client (an
/// `elicitation/create` with id 7 on the call's SSE stream) before it answers; it records
/// every JSON-RPC response it receives.
async fn eliciting_upstream() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    let answers: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let seen = answers.clone();
    let handler = move |body: String| {
        let seen = seen.clone();
        async move {
            let m: Value = serde_json::from_str(&body).unwrap();
            let json = |v: Value| {
                http::Response::builder()
                    .header("content-type", "application/json")
                    .header("mcp-session-id", "fake-session")
                    .body(axum::body::Body::from(v.to_string()))
                    .unwrap()
            };
            let id = m["id"].clone();
            match m["method"].as_str() {
                None => {
                    seen.lock().unwrap().push(m);
                    http::Response::builder()
                        .status(202)
                        .body(axum::body::Body::empty())
                        .unwrap()
                }
                Some(_) if id.is_null() => http::Response::builder()
                    .status(202)
                    .body(axum::body::Body::empty())
                    .unwrap(),
                Some("initialize") => json(json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "fake", "version": "1"}}})),
                Some("tools/list") => {
                    json(json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                    {"name": "ask", "inputSchema": {"type": "object"},
                     "annotations": {"readOnlyHint": true}},
                    {"name": "batch", "inputSchema": {"type": "object"},
                     "annotations": {"readOnlyHint": true}},
                    {"name": "needs_url", "inputSchema": {"type": "object"},
                     "annotations": {"readOnlyHint": true}},
                    {"name": "chunked", "inputSchema": {"type": "object"},
                     "annotations": {"readOnlyHint": true}}]}}))
                }
                // A JSON batch reply: an update of py's resource, progress for the call's
                // token and for another, a request of its own (id 5), the answer.
                // A JSON batch sent in chunks, the first only whitespace: a request of its
                // own (id 6) beside the answer.
                Some("tools/call") if m["params"]["name"] == "chunked" => {
                    let batch = json!([
                        {"jsonrpc": "2.0", "id": 6, "method": "roots/list"},
                        {"jsonrpc": "2.0", "id": id, "result": {
                            "content": [{"type": "text", "text": "chunked"}]}}]);
                    let chunks = [" \n".to_owned(), batch.to_string()]
                        .map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c)));
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .header("mcp-session-id", "fake-session")
                        .body(axum::body::Body::from_stream(futures_util::stream::iter(
                            chunks,
                        )))
                        .unwrap()
                }
                // A URL elicitation needed, answered as one JSON error.
                Some("tools/call") if m["params"]["name"] == "needs_url" => json(json!({
                    "jsonrpc": "2.0", "id": id, "error": {"code": -32042,
                    "message": "This request requires more information.",
                    "data": {"elicitations": [{"mode": "url", "elicitationId": "e9",
                        "url": "https://example.com/connect", "message": "Connect"}]}}})),
                Some("tools/call") if m["params"]["name"] == "batch" => json(json!([
                    {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                     "params": {"uri": "docs://public/readme"}},
                    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                     "progressToken": m["params"]["_meta"]["progressToken"], "progress": 1}},
                    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                     "progressToken": "not-yours", "progress": 1}},
                    {"jsonrpc": "2.0", "id": 5, "method": "roots/list"},
                    {"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{"type": "text", "text": "batched"}]}}])),
                Some("tools/call") => {
                    let ask = json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create",
                        "params": {"message": "proceed?", "requestedSchema": {"type": "object", "properties": {}}}});
                    let done = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{"type": "text", "text": "asked"}]}});
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from(format!(
                            "id: e1\nevent: message\ndata: {ask}\n\nid: e2\nevent: message\ndata: {done}\n\n"
                        )))
                        .unwrap()
                }
                Some(_) => json(json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": "Method not found"}})),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    // Its standalone stream, with event ids: a forged reply to the caller's first request
    // (a list making py's destructive tool read-only), an update of a resource of py's (not
    // its own), a list change, a server-to-client request (id 8); then it ends. Opened
    // again: a prompts list change, and it stays open.
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = move || async move {
        if opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            let again = json!({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"});
            let again = futures_util::stream::once(async move {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
                    "event: message\ndata: {again}\n\n"
                )))
            });
            let body = futures_util::StreamExt::chain(again, futures_util::stream::pending());
            return http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from_stream(body))
                .unwrap();
        }
        let events = [
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "py__delete_document",
                "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}}]}}),
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                "params": {"uri": "docs://public/readme"}}),
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
            json!({"jsonrpc": "2.0", "id": 8, "method": "roots/list"}),
        ];
        let first = events
            .iter()
            .enumerate()
            .map(|(i, e)| format!("id: g{i}\nevent: message\ndata: {e}\n\n"))
            .collect::<String>();
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from(first))
            .unwrap()
    };
    let app = Router::new().route("/mcp", axum::routing::post(handler).get(stream));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, answers)
}

/// The standalone `GET` stream merges every upstream's: what the fake upstream sends on its
/// own reaches the caller (server-to-client ids renumbered, event ids removed, the answer
/// going back to it), a forged reply and an update of another server's resource do not,
/// the real Python SDK's stream is opened too, a second `GET` waits for the first, and the
/// stream ends when the session does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_stream_merges_every_upstreams() {
    use futures_util::StreamExt as _;
    let (fake, answers) = eliciting_upstream().await;
    let stack = stack_with(Some(fake)).await;
    let mut alice = Session::open(&stack, "alice").await;
    // py lists (and so owns) docs://public/readme. The fake upstream answers this list with
    // "Method not found": it lists none, and its session (and so its stream) lives on.
    let resources = alice.names("resources/list", "resources", "uri").await;
    assert!(resources.contains("docs://public/readme"), "{resources:?}");
    let get = || {
        stack
            .http
            .get(&stack.url)
            .bearer_auth(&alice.token)
            .header(header::ACCEPT, "text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", alice.id.as_deref().unwrap())
            .timeout(Duration::from_secs(3600))
            .send()
    };
    let res = get().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + STEP;
    // Reads the stream into `text` until it holds every one of `what`.
    let mut read_until = async |text: &mut String, what: &[&str]| {
        while !what.iter().all(|w| text.contains(w)) {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .unwrap_or_else(|_| panic!("never arrived: {what:?} in {text}"))
                .expect("the merged stream ended")
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until(&mut text, &["tools/list_changed", "roots/list"]).await;
    // Its stream ended: opened again in place, the caller's goes on.
    read_until(&mut text, &["prompts/list_changed"]).await;
    let got = messages("text/event-stream", &text);
    let ask = got.iter().find(|m| m["method"] == "roots/list").unwrap();
    assert_eq!(ask["id"], "fake:n8", "{got:?}");
    assert!(!text.contains("id: g"), "event ids are removed: {text}");
    // The forged reply and the update came first on the fake's stream: dropped, not late.
    assert!(
        !text.contains("py__delete_document") && got.iter().all(|m| m["id"] != 1),
        "no reply on a standalone stream: {text}"
    );
    assert!(
        !text.contains("docs://public/readme"),
        "an upstream speaks only of its own resources: {text}"
    );
    // The real SDK's own standalone notification: py announces an update of its resource
    // once subscribed, and it reaches the caller's merged stream.
    let subscribe = json!({"jsonrpc": "2.0", "id": 50, "method": "resources/subscribe",
        "params": {"uri": "docs://public/readme"}});
    let (status, _, answer) = alice.post(subscribe).await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    let mut announced = String::new();
    read_until(
        &mut announced,
        &["resources/updated", "docs://public/readme"],
    )
    .await;
    let (status, _, _) = alice
        .post(json!({"jsonrpc": "2.0", "id": "fake:n8", "result": {"roots": []}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        answers.lock().unwrap().iter().any(|m| m["id"] == 8),
        "the answer goes back to the upstream that asked, with its own id"
    );
    // One stream at a time per session.
    assert_eq!(get().await.unwrap().status(), StatusCode::CONFLICT);
    // The real SDK's standalone stream was opened with the upstream's own session.
    let log = stack.python.get_json("/_probe/requests").await;
    assert!(
        log["http"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == "GET" && e[1].as_str().unwrap().starts_with("/mcp")),
        "{log}"
    );
    // Once the caller lets its stream go, the session's next `GET` opens one.
    drop(body);
    let deadline = tokio::time::Instant::now() + STEP;
    let res = loop {
        let res = get().await.unwrap();
        if res.status() == StatusCode::OK {
            break res;
        }
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first stream was never let go"
        );
        tokio::task::yield_now().await;
    };
    let mut body = res.bytes_stream();
    // The stream ends with the session, here pushed out by alice's 32 newer ones (its
    // upstream sessions, and so their streams, live on: idguard ends the merged one).
    let mut newer = Vec::new();
    for _ in 0..32 {
        newer.push(Session::open(&stack, "alice").await);
    }
    let (status, _, _) = alice
        .post(json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the session has ended");
    loop {
        let next = tokio::time::timeout(STEP, body.next())
            .await
            .expect("the stream outlived its session");
        match next {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_are_renumbered_per_upstream_and_answered_back() {
    let (fake, answers) = eliciting_upstream().await;
    let stack = stack_with(Some(fake)).await;
    let mut alice = Session::open(&stack, "alice").await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "fake__ask", "arguments": {}}});
    let (status, _, messages) = alice.post_all(&call).await;
    assert_eq!(status, StatusCode::OK);
    let ask = messages
        .iter()
        .find(|m| m["method"] == "elicitation/create")
        .unwrap_or_else(|| panic!("no elicitation reached the caller: {messages:?}"));
    assert_eq!(ask["id"], "fake:n7", "{ask}");
    assert!(
        messages
            .iter()
            .any(|m| m["id"] == 9 && m["result"].is_object())
    );
    let (status, _, _) = alice
        .post(json!({"jsonrpc": "2.0", "id": "fake:n7", "result": {"action": "accept", "content": {}}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = answers.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["id"], 7,
        "the upstream gets its own id back: {got:?}"
    );
    // In a JSON reply too: the request renumbered, and an update of py's resource dropped.
    alice.names("resources/list", "resources", "uri").await;
    let call = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
        "params": {"name": "fake__batch", "arguments": {}, "_meta": {"progressToken": "p10"}}});
    let (status, _, messages) = alice.post_all(&call).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        messages
            .iter()
            .any(|m| m["id"] == 10 && m["result"].is_object()),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["method"] == "roots/list" && m["id"] == "fake:n5"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .all(|m| m["params"]["uri"] != "docs://public/readme"),
        "{messages:?}"
    );
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| &m["params"]["progressToken"])
        .collect();
    assert_eq!(progress, [&json!("p10")], "only the call's own progress");
    // A URL elicitation's id is the server's own, in a single JSON answer too.
    alice.names("tools/list", "tools", "name").await;
    // However the batch is sent: in chunks, the first only whitespace.
    let chunked = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "fake__chunked", "arguments": {}}});
    let (status, _, messages) = alice.post_all(&chunked).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        messages
            .iter()
            .any(|m| m["method"] == "roots/list" && m["id"] == "fake:n6"),
        "{messages:?}"
    );
    let needed = alice.call("fake__needs_url", json!({})).await;
    assert_eq!(
        needed["error"]["data"]["elicitations"][0]["elicitationId"], "fake:e9",
        "{needed}"
    );
    // An answer naming no upstream goes nowhere.
    let (status, _, _) = alice
        .post(json!({"jsonrpc": "2.0", "id": "nobody:n7", "result": {}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answers.lock().unwrap().len(), 1);
}

/// `Gateways` whose `Servers` no policy engine judges (`with_servers` forgotten, or given
/// to an engine already shared) refuses every request: without the `Server::` parents a
/// `forbid … in Server::"x"` would match nothing.
#[tokio::test]
async fn servers_no_engine_judges_refuse_everything() {
    use tower::ServiceExt as _;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let servers = Servers::new(["a"]);
    let gateways = Gateways::new(
        [(
            "a".to_owned(),
            Gateway::new(
                reqwest::Url::parse("http://127.0.0.1:9/mcp").unwrap(),
                client,
            ),
        )],
        servers.clone(),
    );
    // Given to an engine that is already shared: ignored.
    let engine = PolicyEngine::from_sources(
        include_str!("../policies/schema.cedarschema"),
        None,
        [("many.cedar", POLICIES)],
    )
    .unwrap();
    let _shared = engine.clone();
    let _engine = engine.with_servers(servers);
    let req = http::Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ))
        .unwrap();
    let res = gateways.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A caller holds at most 32 sessions: opening a 33rd ends its oldest, never another
/// caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_many_sessions_ends_only_its_own_oldest() {
    let stack = stack().await;
    let bob = Session::open(&stack, "bob").await;
    let first = Session::open(&stack, "alice").await;
    let mut later = Vec::new();
    for _ in 0..32 {
        later.push(Session::open(&stack, "alice").await);
    }
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let (status, _, _) = first.post(list.clone()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "alice's oldest session ended"
    );
    for session in [&bob, &later[0], &later[31]] {
        let (status, _, answer) = session.post(list.clone()).await;
        assert_eq!(status, StatusCode::OK, "{answer:?}");
    }
}
