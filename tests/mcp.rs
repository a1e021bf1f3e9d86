//! MCP interception against a real rmcp `StreamableHttpService` (stateful SSE and stateless
//! JSON), behind `ValidateTokenLayer` and `AuthorizeMcpLayer`, over HTTP on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use idguard::IdGuard;
use idguard::mcp::{AuthorizeMcpLayer, Denials};
use idguard::policy::PolicyEngine;
use idguard_dev::DevEntra;
use idguard_dev::demo::DemoServer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tower::ServiceBuilder;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Stateful,
    Stateless,
}

struct Stack {
    entra: DevEntra,
    url: String,
    demo: DemoServer,
    /// Requests that reached the MCP service.
    reached: Arc<AtomicUsize>,
    http: reqwest::Client,
}

/// The emulator, a guard for `<base>/mcp`, the sample policies and a bound listener.
async fn parts() -> (
    DevEntra,
    IdGuard,
    PolicyEngine,
    tokio::net::TcpListener,
    String,
) {
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
    let policies =
        PolicyEngine::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    (entra, guard, policies, listener, base)
}

/// rmcp's streamable HTTP service for `handler`, sessions kept in memory.
fn streamable<H: rmcp::ServerHandler + Clone + Send + Sync + 'static>(
    handler: H,
    config: StreamableHttpServerConfig,
) -> StreamableHttpService<H, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

async fn stack(
    mode: Mode,
    configure: impl FnOnce(AuthorizeMcpLayer) -> AuthorizeMcpLayer,
) -> Stack {
    let (entra, guard, policies, listener, base) = parts().await;
    let demo = DemoServer::new();
    let server = demo.clone();
    let mut config = StreamableHttpServerConfig::default();
    if mode == Mode::Stateless {
        config = config
            .with_legacy_session_mode(false)
            .with_json_response(true);
    }
    let mcp = streamable(server, config);
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let counted = tower::service_fn(move |req: http::Request<axum::body::Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mcp = mcp.clone();
        async move { tower::ServiceExt::oneshot(mcp, req).await }
    });
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(configure(guard.authorize_mcp_layer(policies)))
            .service(counted),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stack {
        entra,
        url: format!("{base}/mcp"),
        demo,
        reached,
        http: reqwest::Client::new(),
    }
}

/// A minimal MCP client: JSON-RPC over POST, replies as JSON or SSE.
struct Client<'a> {
    stack: &'a Stack,
    token: String,
    session: Option<String>,
    next_id: u64,
    /// Whether the last reply came as Server-Sent Events (else JSON).
    last_sse: bool,
}

impl<'a> Client<'a> {
    async fn connect(stack: &'a Stack, token: String, mode: Mode) -> Client<'a> {
        let mut c = Client {
            stack,
            token,
            session: None,
            next_id: 1,
            last_sse: false,
        };
        if mode == Mode::Stateful {
            let init = c
                .rpc(
                    "initialize",
                    json!({"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "idguard-tests", "version": "1"}}),
                )
                .await;
            assert!(init.get("result").is_some(), "{init}");
            let res = c
                .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
            assert_eq!(res.status(), 202);
        }
        c
    }

    fn request(&self) -> reqwest::RequestBuilder {
        let mut req = self
            .stack
            .http
            .post(&self.stack.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        req
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.request().body(body.to_string()).send().await.unwrap()
    }

    /// Sends a request and returns the JSON-RPC reply with its id.
    async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let res = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(res.status(), 200, "{method}");
        if let Some(s) = res.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_owned());
        }
        let sse = res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream");
        self.last_sse = sse;
        let text = res.text().await.unwrap();
        let messages: Vec<Value> = if sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            vec![serde_json::from_str(&text).unwrap()]
        };
        messages
            .into_iter()
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no reply to {method}: {text}"))
    }

    async fn names(&mut self, method: &str, field: &str, key: &str) -> BTreeSet<String> {
        let reply = self.rpc(method, json!({})).await;
        reply["result"][field]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|t| t[key].as_str().unwrap().to_owned())
            .collect()
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

async fn token(stack: &Stack, user: &str) -> String {
    stack.entra.token_for(user).unwrap().mint().unwrap()
}

async fn lists_and_calls(mode: Mode) {
    let s = stack(mode, |l| l).await;
    let mut alice = Client::connect(&s, token(&s, "alice").await, mode).await;
    let mut bob = Client::connect(&s, token(&s, "bob").await, mode).await;
    assert_eq!(
        alice.names("tools/list", "tools", "name").await,
        set(&[
            "whoami",
            "list_documents",
            "read_document",
            "delete_document",
            "transfer_funds",
            "my_profile"
        ])
    );
    assert_eq!(
        bob.names("tools/list", "tools", "name").await,
        set(&["whoami", "list_documents", "read_document", "my_profile"])
    );
    // The filtered list really took the path this mode names.
    assert_eq!(bob.last_sse, mode == Mode::Stateful);

    // Denied: answered like an unknown tool, and the tool never ran.
    let reply = bob
        .rpc(
            "tools/call",
            json!({"name": "delete_document", "arguments": {"id": "doc-1"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602);
    assert_eq!(reply["error"]["message"], "tool not found");
    assert_eq!(s.demo.calls("delete_document"), 0);
    let unknown = bob.rpc("tools/call", json!({"name": "no_such_tool"})).await;
    assert_eq!(
        unknown["error"], reply["error"],
        "denied and unknown look the same"
    );

    // Allowed with a redaction obligation: the field is gone for bob, there for alice.
    let read = json!({"name": "read_document", "arguments": {"id": "doc-1"}});
    let for_bob = bob.rpc("tools/call", read.clone()).await;
    let structured = &for_bob["result"]["structuredContent"];
    assert_eq!(structured["id"], "doc-1");
    assert!(structured.get("owner_email").is_none(), "{for_bob}");
    assert!(
        !for_bob.to_string().contains("alice@contoso.example"),
        "{for_bob}"
    );
    let for_alice = alice.rpc("tools/call", read).await;
    assert_eq!(
        for_alice["result"]["structuredContent"]["owner_email"],
        "alice@contoso.example"
    );
    assert_eq!(s.demo.calls("read_document"), 2);

    // Resources and prompts.
    assert_eq!(
        bob.names("resources/list", "resources", "uri").await,
        set(&["docs://public/handbook"])
    );
    assert_eq!(
        alice.names("resources/list", "resources", "uri").await,
        set(&["docs://public/handbook", "docs://private/payroll"])
    );
    let private = bob
        .rpc("resources/read", json!({"uri": "docs://private/payroll"}))
        .await;
    assert_eq!(private["error"]["code"], -32002);
    let public = bob
        .rpc("resources/read", json!({"uri": "docs://public/handbook"}))
        .await;
    assert!(
        public["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("bob@contoso.example")
    );
    assert_eq!(
        bob.names("prompts/list", "prompts", "name").await,
        set(&["summarize"])
    );
    assert_eq!(
        alice.names("prompts/list", "prompts", "name").await,
        set(&["summarize", "escalate"])
    );
    let prompt = bob.rpc("prompts/get", json!({"name": "escalate"})).await;
    assert_eq!(prompt["error"]["message"], "prompt 'escalate' not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_sse_lists_calls_and_redaction() {
    lists_and_calls(Mode::Stateful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_json_lists_calls_and_redaction() {
    lists_and_calls(Mode::Stateless).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_before_any_list_uses_the_servers_annotations() {
    let s = stack(Mode::Stateful, |l| l).await;
    // Alice without MFA: delete_document is destructive, which only the server's own
    // tools/list says; idguard asks for it and answers with a step-up challenge.
    let t = s
        .entra
        .token_for("alice")
        .unwrap()
        .auth_methods(["pwd"])
        .mint()
        .unwrap();
    let c = Client::connect(&s, t, Mode::Stateful).await;
    let res = c
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "delete_document", "arguments": {"id": "doc-1"}}}))
        .await;
    assert_eq!(res.status(), 401);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata=\""), "{challenge}");
    assert_eq!(s.demo.calls("delete_document"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visible_denials_carry_the_policy_reason() {
    let s = stack(Mode::Stateless, |l| l.with_denials(Denials::Visible)).await;
    let mut alice = Client::connect(&s, token(&s, "alice").await, Mode::Stateless).await;
    let reply = alice
        .rpc(
            "tools/call",
            json!({"name": "transfer_funds", "arguments": {"amount": 50000, "to": "ACME"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], idguard::mcp::FORBIDDEN_CODE);
    assert_eq!(
        reply["error"]["message"],
        "forbidden: transfers above 10000 need a second approver"
    );
    let ok = alice
        .rpc(
            "tools/call",
            json!({"name": "transfer_funds", "arguments": {"amount": 5, "to": "ACME"}}),
        )
        .await;
    assert!(ok.get("result").is_some(), "{ok}");
    assert_eq!(s.demo.calls("transfer_funds"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_never_reach_the_server() {
    let s = stack(Mode::Stateful, |l| l.with_max_body_bytes(64 * 1024)).await;
    let alice = Client::connect(&s, token(&s, "alice").await, Mode::Stateful).await;
    let before = s.reached.load(Ordering::SeqCst);
    let send = |body: String| alice.request().body(body).send();

    assert_eq!(send("{not json".into()).await.unwrap().status(), 400);
    assert_eq!(send("[]".into()).await.unwrap().status(), 400);
    assert_eq!(
        send(json!({"jsonrpc": "1.0", "id": 1, "method": "x"}).to_string())
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}})
                .to_string()
        )
        .await
        .unwrap()
        .status(),
        400
    );
    // rmcp reads the id 1.0 as 1 and would answer `"id": 1`: a reply idguard would not
    // recognise as the list to filter.
    assert_eq!(
        send(r#"{"jsonrpc": "2.0", "id": 1.0, "method": "tools/list"}"#.into())
            .await
            .unwrap()
            .status(),
        400
    );
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {"pad": "x".repeat(100_000)}}});
    assert_eq!(send(huge.to_string()).await.unwrap().status(), 413);
    let mismatch = alice
        .request()
        .header("mcp-method", "tools/list")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), 400);
    let wrong_name = alice
        .request()
        .header("mcp-method", "tools/call")
        .header("mcp-name", "delete_document")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_name.status(), 400);
    assert_eq!(s.reached.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_the_caller_that_opened_it() {
    let s = stack(Mode::Stateful, |l| l).await;
    let mut alice = Client::connect(&s, token(&s, "alice").await, Mode::Stateful).await;
    let session = alice.session.clone().unwrap();
    let before = s.reached.load(Ordering::SeqCst);

    // Bob presents alice's session id: unknown to him (the spec's 404), refused before the
    // server.
    let hijack = Client {
        stack: &s,
        token: token(&s, "bob").await,
        session: Some(session.clone()),
        next_id: 50,
        last_sse: false,
    };
    let res = hijack
        .post(&json!({"jsonrpc": "2.0", "id": 50, "method": "tools/list"}))
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(s.reached.load(Ordering::SeqCst), before);

    // Alice with a fresh token keeps her session.
    alice.token = s
        .entra
        .token_for("alice")
        .unwrap()
        .lifetime(std::time::Duration::from_secs(7200))
        .mint()
        .unwrap();
    let tools = alice.names("tools/list", "tools", "name").await;
    assert_eq!(tools.len(), 6);
    assert_eq!(alice.session.as_deref(), Some(session.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_rmcp_handler_filters_in_process() {
    let (entra, guard, policies, listener, base) = parts().await;
    let demo = DemoServer::new();
    let handler = idguard::mcp::rmcp::Guarded::new(demo.clone(), policies);
    let mcp = streamable(handler, StreamableHttpServerConfig::default());
    // Only the token layer: the policies apply inside the rmcp handler.
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .service(mcp),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = Stack {
        entra,
        url: format!("{base}/mcp"),
        demo: demo.clone(),
        reached: Arc::default(),
        http: reqwest::Client::new(),
    };
    let mut bob = Client::connect(&s, token(&s, "bob").await, Mode::Stateful).await;
    assert_eq!(
        bob.names("tools/list", "tools", "name").await,
        set(&["whoami", "list_documents", "read_document", "my_profile"])
    );
    let denied = bob
        .rpc(
            "tools/call",
            json!({"name": "delete_document", "arguments": {"id": "doc-2"}}),
        )
        .await;
    assert_eq!(denied["error"]["message"], "tool not found");
    assert_eq!(demo.calls("delete_document"), 0);
    let read = bob
        .rpc(
            "tools/call",
            json!({"name": "read_document", "arguments": {"id": "doc-2"}}),
        )
        .await;
    assert!(
        read["result"]["structuredContent"]
            .get("owner_email")
            .is_none(),
        "{read}"
    );
    assert!(
        read["result"]["structuredContent"].get("title").is_some(),
        "{read}"
    );
    assert_eq!(
        bob.names("prompts/list", "prompts", "name").await,
        set(&["summarize"])
    );
    // Methods that name an item are decided in the handler too.
    let complete = bob
        .rpc(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "escalate"},
                   "argument": {"name": "x", "value": ""}}),
        )
        .await;
    assert_eq!(
        complete["error"]["message"], "prompt 'escalate' not found",
        "{complete}"
    );
    let subscribe = bob
        .rpc(
            "resources/subscribe",
            json!({"uri": "docs://private/payroll"}),
        )
        .await;
    assert_eq!(
        subscribe["error"]["message"], "Resource not found",
        "{subscribe}"
    );
}

/// A server whose list replies are not JSON (trailing bytes), or answer another id than
/// the one asked: what a client might still read is never passed on unfiltered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replies_that_are_not_json_are_never_passed_on() {
    let (entra, guard, policies, listener, base) = parts().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "delete_document", "inputSchema": {"type": "object"},
         "annotations": {"destructiveHint": true}}]}});
    let server = tower::service_fn(move |req: http::Request<axum::body::Body>| {
        let list = list.clone();
        async move {
            let sse = req.headers().get("x-test-sse").is_some();
            let res = if req.headers().get("x-test-other-id").is_some() {
                // Valid JSON, but the answer to another id than the one asked.
                let mut other = list.clone();
                other["id"] = json!(99);
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(other.to_string()))
            } else if sse {
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from(format!("data: {list} trailing\n\n")))
            } else {
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(format!("{list} trailing")))
            };
            Ok::<_, std::convert::Infallible>(res.unwrap())
        }
    });
    let app = Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(guard.authorize_mcp_layer(policies))
            .service(server),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let token = entra.token_for("bob").unwrap().mint().unwrap();
    let send = |sse: bool, other_id: bool| {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/mcp"))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string());
        if sse {
            req = req.header("x-test-sse", "1");
        }
        if other_id {
            req = req.header("x-test-other-id", "1");
        }
        req.send()
    };
    let other = send(false, true).await.unwrap();
    assert_eq!(other.status(), 502);
    assert!(!other.text().await.unwrap().contains("delete_document"));
    let json_reply = send(false, false).await.unwrap();
    assert_eq!(json_reply.status(), 502);
    assert!(!json_reply.text().await.unwrap().contains("delete_document"));
    let sse_reply = send(true, false).await.unwrap();
    assert_eq!(sse_reply.status(), 200);
    let text = sse_reply.text().await.unwrap();
    assert!(!text.contains("delete_document"), "{text}");
}

/// A server that answers every tool call with a task (the tasks extension), as a server
/// may when the client supports it; otherwise the demo server.
#[derive(Clone)]
struct TaskingServer(DemoServer);

impl rmcp::ServerHandler for TaskingServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        self.0.get_info()
    }

    async fn list_tools(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        self.0.list_tools(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.0.get_tool(name)
    }

    async fn call_tool(
        &self,
        _request: rmcp::model::CallToolRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let mut task = rmcp::model::Task::default();
        task.task_id = "task-1".into();
        Ok(rmcp::model::CallToolResponse::Task(
            rmcp::model::CreateTaskResult::new(task),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_result_is_redacted_cannot_become_a_task_in_the_layer() {
    a_call_whose_result_is_redacted_cannot_become_a_task(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_result_is_redacted_cannot_become_a_task_in_guarded() {
    a_call_whose_result_is_redacted_cannot_become_a_task(true).await;
}

/// The HTTP layer or the rmcp wrapper in front of a server that answers calls with tasks.
async fn a_call_whose_result_is_redacted_cannot_become_a_task(guarded: bool) {
    let (entra, guard, policies, listener, base) = parts().await;
    let server = TaskingServer(DemoServer::new());
    let app = if guarded {
        let handler = idguard::mcp::rmcp::Guarded::new(server, policies);
        let mcp = streamable(handler, StreamableHttpServerConfig::default());
        Router::new().nest_service(
            "/mcp",
            ServiceBuilder::new()
                .layer(guard.validate_token_layer())
                .service(mcp),
        )
    } else {
        let mcp = streamable(server, StreamableHttpServerConfig::default());
        Router::new().nest_service(
            "/mcp",
            ServiceBuilder::new()
                .layer(guard.validate_token_layer())
                .layer(guard.authorize_mcp_layer(policies))
                .service(mcp),
        )
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = Stack {
        entra,
        url: format!("{base}/mcp"),
        demo: DemoServer::new(),
        reached: Arc::default(),
        http: reqwest::Client::new(),
    };
    // A client that supports tasks, so the server may answer with one.
    let mut bob = Client {
        stack: &s,
        token: token(&s, "bob").await,
        session: None,
        next_id: 1,
        last_sse: false,
    };
    let init = bob
        .rpc(
            "initialize",
            json!({"protocolVersion": "2025-06-18",
                   "capabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
                   "clientInfo": {"name": "idguard-tests", "version": "1"}}),
        )
        .await;
    assert!(init.get("result").is_some(), "{init}");
    let initialized = bob
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(initialized.status(), 202);
    // `read_document` is redacted for bob (`owner_email`): its result may not come later.
    let read = bob
        .rpc(
            "tools/call",
            json!({"name": "read_document", "arguments": {"id": "doc-2"}}),
        )
        .await;
    assert_eq!(
        read["error"]["code"],
        json!(idguard::mcp::FORBIDDEN_CODE),
        "{read}"
    );
    assert!(!read.to_string().contains("task-1"), "{read}");
    // `whoami` redacts nothing: the task passes, its id bound to bob (the server's own id
    // never reaches him).
    let who = bob.rpc("tools/call", json!({"name": "whoami"})).await;
    let task_id = who["result"]["taskId"].as_str().unwrap_or_default();
    if guarded {
        assert_eq!(task_id, "task-1", "{who}");
    } else {
        assert!(task_id.starts_with("idg1."), "{who}");
    }
}
