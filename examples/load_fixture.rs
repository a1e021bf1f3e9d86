//! The load-test fixture (`benches/load/`): an MCP server with N generated tools,
//! `tool_000` … (default 100), each taking `{a: integer (required), b: string (default "x")}`
//! and returning `"tool_NNN:a:b"`; stateless JSON mode.
//!
//! `--bare` serves it alone; otherwise behind the full idguard stack (token validation from
//! the dev Entra emulator, the fixture policies in `benches/load/policies`: `tool_000`–`049`
//! need `Tools.Read`, `050`–`079` `Tools.Write`, `080`–`099` `Tools.Admin`). Prints
//! `IDGUARD_LOAD_URL=…`, the emulator's `IDGUARD_LOAD_AUTHORITY=`, `IDGUARD_LOAD_TENANT=`
//! and `IDGUARD_LOAD_CLIENT_ID=`, one `IDGUARD_LOAD_TOKEN=<role>:<token>` line per user
//! (`--users N`, default 6, cycling reader, writer, admin) and `IDGUARD_LOAD_READY`, then
//! serves until Ctrl-C or until standard input closes.
//!
//! ```sh
//! cargo run --release --example load_fixture -- --tools 100 [--bare] [--port 0] [--users 6]
//! ```
//!
//! `--authority URL --tenant ID --client-id ID [--audience AUD]` validates tokens of that
//! Entra-shaped authority instead (another fixture's emulator, a peer's IdP, a real
//! tenant): no emulator starts and no token is printed; the caller brings tokens whose
//! `roles` are those above. `--audience` (repeatable) sets the accepted `aud` values
//! (default the client id). `benches/load/run.sh` points the in-process fixture at the bare
//! fixture's emulator this way, so one set of tokens drives every scenario.
//!
//! `--distinct-users N` measures memory instead of serving: it mints N tokens with distinct
//! `oid`s (roles cycling as above), sends one `tools/call` and one `tools/list` per token
//! through the guarded service in process, and prints `VmRSS`/`VmHWM` before and after.
//!
//! ```sh
//! cargo run --release --example load_fixture -- --distinct-users 100000
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use idguard::IdGuard;
use idguard::policy::PolicyEngine;
use idguard_dev::{DevEntra, DevUser};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    MetaObject, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::io::AsyncReadExt;
use tower::ServiceBuilder;

#[derive(Clone)]
struct Fixture {
    tools: Arc<Vec<Tool>>,
}

fn tier(i: usize) -> &'static str {
    match i {
        0..=49 => "read",
        50..=79 => "write",
        _ => "admin",
    }
}

impl Fixture {
    fn new(n: usize) -> Self {
        let schema: Map<String, Value> = serde_json::from_value(json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"}},
            "required": ["a"]
        }))
        .unwrap_or_default();
        let schema = Arc::new(schema);
        let tools = (0..n)
            .map(|i| {
                let mut meta = Map::new();
                meta.insert("tags".into(), json!([tier(i)]));
                Tool::new(
                    format!("tool_{i:03}"),
                    format!("Generated tool {i}."),
                    schema.clone(),
                )
                .with_meta(MetaObject(meta))
            })
            .collect();
        Self {
            tools: Arc::new(tools),
        }
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.tools.iter().any(|t| t.name == request.name) {
            return Err(ErrorData::invalid_params("tool not found", None));
        }
        let args = request.arguments.unwrap_or_default();
        let a = args
            .get("a")
            .and_then(Value::as_i64)
            .ok_or_else(|| ErrorData::invalid_params("`a` must be an integer", None))?;
        let b = args.get("b").and_then(Value::as_str).unwrap_or("x");
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{}:{a}:{b}",
            request.name
        ))])
        .into())
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Drives `n` distinct callers' tokens through `app` (one call and one list each) and
/// reports the memory of the process.
async fn distinct_users_rss(
    entra: &DevEntra,
    app: Router,
    n: usize,
    roles: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures_util::StreamExt;
    use tower::ServiceExt;

    let allowed = ["tool_007", "tool_057", "tool_091"];
    let (rss0, hwm0) = rss();
    println!("before: VmRSS {rss0} KiB, VmHWM {hwm0} KiB");
    let started = std::time::Instant::now();
    let failures = futures_util::stream::iter(0..n)
        .map(|i| {
            let app = app.clone();
            let role = i % roles.max(1);
            let token = entra
                .token_for(&format!("user{role}"))
                .map(|t| {
                    t.claim("oid", format!("10ad0000-0000-4000-9000-{i:012}"))
                        .lifetime(Duration::from_secs(3600))
                })
                .and_then(|t| t.mint());
            async move {
                let Ok(token) = token else { return 2 };
                let tool = allowed.get(role).copied().unwrap_or("tool_007");
                let bodies = [
                    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"a":{i}}}}}}}"#),
                    r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.to_owned(),
                ];
                let mut failed = 0;
                for body in bodies {
                    let req = http::Request::post("/mcp")
                        .header("host", "127.0.0.1")
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-protocol-version", "2025-06-18")
                        .body(axum::body::Body::from(body));
                    let ok = match req {
                        Ok(req) => match app.clone().oneshot(req).await {
                            Ok(r) if r.status().is_success() => true,
                            Ok(r) => {
                                if i < 3 {
                                    use http_body_util::BodyExt;
                                    let status = r.status();
                                    let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    eprintln!("user {i}: {status} {}", String::from_utf8_lossy(&body));
                                }
                                false
                            }
                            Err(_) => false,
                        },
                        Err(_) => false,
                    };
                    failed += usize::from(!ok);
                }
                failed
            }
        })
        .buffer_unordered(8)
        .fold(0, |acc, f| async move { acc + f })
        .await;
    let (rss1, hwm1) = rss();
    println!(
        "after {n} distinct users ({:.1} s, {failures} failed requests): VmRSS {rss1} KiB, VmHWM {hwm1} KiB",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--tools", 100);
    let port: u16 = arg(&args, "--port", 0);
    let users: usize = arg(&args, "--users", 6);
    let distinct_users: usize = arg(&args, "--distinct-users", 0);
    let bare = args.iter().any(|a| a == "--bare");

    let fixture = Fixture::new(n);
    let mcp = StreamableHttpService::new(
        move || Ok(fixture.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let base = format!("http://{}", listener.local_addr()?);

    let roles: [(&str, &[&str]); 3] = [
        ("reader", &["Tools.Read"]),
        ("writer", &["Tools.Read", "Tools.Write"]),
        ("admin", &["Tools.Read", "Tools.Write", "Tools.Admin"]),
    ];
    let mut builder = DevEntra::builder();
    for u in 0..users {
        let (_, r) = roles.get(u % roles.len()).copied().unwrap_or(roles[0]);
        builder = builder.user(DevUser {
            key: format!("user{u}"),
            name: format!("Load user {u}"),
            upn: format!("user{u}@contoso.example"),
            object_id: format!("10ad0000-0000-4000-8000-{u:012}"),
            tenant_id: idguard_dev::CONTOSO_TENANT_ID.into(),
            roles: r.iter().map(|s| (*s).to_owned()).collect(),
            groups: Vec::new(),
            auth_methods: vec!["pwd".into(), "mfa".into()],
        });
    }
    let external: Option<String> = args
        .iter()
        .position(|a| a == "--authority")
        .and_then(|i| args.get(i + 1).cloned());
    // The emulator runs unless an external authority was named (it mints the tokens).
    let entra = match external {
        Some(_) => None,
        None => Some(builder.start().await?),
    };
    let (authority, tenant, client_id) = match (&external, &entra) {
        (Some(authority), _) => (
            authority.clone(),
            arg(&args, "--tenant", String::new()),
            arg(&args, "--client-id", String::new()),
        ),
        (None, Some(e)) => (
            e.url().to_owned(),
            e.tenant_id().to_owned(),
            e.api_client_id().to_owned(),
        ),
        (None, None) => return Err("no authority".into()),
    };
    let audiences: Vec<String> = args
        .windows(2)
        .filter(|w| w.first().is_some_and(|a| a == "--audience"))
        .filter_map(|w| w.get(1).cloned())
        .collect();
    let app = if bare {
        Router::new().nest_service("/mcp", mcp)
    } else {
        let mut guard = IdGuard::builder()
            .authority(authority.as_str())
            .tenant(tenant.as_str())
            .client_id(client_id.as_str())
            .resource(format!("{base}/mcp"));
        if !audiences.is_empty() {
            guard = guard.audiences(audiences);
        }
        let guard = guard
            .with_cache_capacity(arg(
                &args,
                "--token-cache",
                idguard::DEFAULT_TOKEN_CACHE_CAPACITY,
            ))
            .build()
            .await?;
        let policies = PolicyEngine::from_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/load/policies"
        ))?;
        Router::new().nest_service(
            "/mcp",
            ServiceBuilder::new()
                .layer(guard.validate_token_layer())
                .layer(guard.authorize_mcp_layer(policies))
                .service(mcp),
        )
    };

    if distinct_users > 0 {
        let Some(entra) = &entra else {
            return Err("--distinct-users mints its tokens: not with --authority".into());
        };
        return distinct_users_rss(entra, app, distinct_users, roles.len().min(users)).await;
    }

    println!("IDGUARD_LOAD_URL={base}/mcp");
    println!("IDGUARD_LOAD_AUTHORITY={authority}");
    println!("IDGUARD_LOAD_TENANT={tenant}");
    println!("IDGUARD_LOAD_CLIENT_ID={client_id}");
    for u in 0..users {
        let Some(entra) = &entra else { break };
        let (role, _) = roles.get(u % roles.len()).copied().unwrap_or(roles[0]);
        let token = entra
            .token_for(&format!("user{u}"))?
            .lifetime(Duration::from_secs(8 * 3600))
            .mint()?;
        println!("IDGUARD_LOAD_TOKEN={role}:{token}");
    }
    println!("IDGUARD_LOAD_READY");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break } } } => {}
            }
        })
        .await?;
    Ok(())
}
