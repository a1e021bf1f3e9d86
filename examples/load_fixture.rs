//! The load-test fixture (`benches/load/`): an MCP server with N generated tools,
//! `tool_000` … (default 100), each taking `{a: integer (required), b: string (default "x")}`
//! and returning `"tool_NNN:a:b"`; stateless JSON mode.
//!
//! `--bare` serves it alone; otherwise behind the full idguard stack (token validation from
//! the dev Entra emulator, the fixture policies in `benches/load/policies`: `tool_000`–`049`
//! need `Tools.Read`, `050`–`079` `Tools.Write`, `080`–`099` `Tools.Admin`). Prints
//! `IDGUARD_LOAD_URL=…`, then one `IDGUARD_LOAD_TOKEN=<role>:<token>` line per user
//! (`--users N`, default 6, cycling reader, writer, admin), then serves until Ctrl-C or
//! until standard input closes.
//!
//! ```sh
//! cargo run --release --example load_fixture -- --tools 100 [--bare] [--port 0] [--users 6]
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use idguard::IdGuard;
use idguard::dev::{DevEntra, DevUser};
use idguard::policy::PolicyEngine;
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
            tenant_id: idguard::dev::CONTOSO_TENANT_ID.into(),
            roles: r.iter().map(|s| (*s).to_owned()).collect(),
            groups: Vec::new(),
            auth_methods: vec!["pwd".into(), "mfa".into()],
        });
    }
    let entra = builder.start().await?;
    let app = if bare {
        Router::new().nest_service("/mcp", mcp)
    } else {
        let guard = IdGuard::builder()
            .authority(entra.url())
            .tenant(entra.tenant_id())
            .client_id(entra.api_client_id())
            .resource(format!("{base}/mcp"))
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

    println!("IDGUARD_LOAD_URL={base}/mcp");
    for u in 0..users {
        let (role, _) = roles.get(u % roles.len()).copied().unwrap_or(roles[0]);
        let token = entra
            .token_for(&format!("user{u}"))?
            .lifetime(Duration::from_secs(8 * 3600))
            .mint()?;
        println!("IDGUARD_LOAD_TOKEN={role}:{token}");
    }
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
