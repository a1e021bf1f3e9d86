//! An rmcp MCP server (the demo tools) behind the full idguard stack: token validation,
//! then per-caller policy decisions from `./policies`.
//!
//! Runs offline against the dev Entra emulator and prints, one per line, the MCP URL and
//! ready tokens for two demo users (alice: admin with MFA; bob: reader), as lines a shell
//! can paste (idguard reads none of these variables):
//!
//! ```text
//! export MCP_URL=http://127.0.0.1:<port>/mcp
//! export ALICE=eyJ...
//! export BOB=eyJ...
//! ```
//!
//! Point any MCP client at the URL with `Authorization: Bearer <token>`: alice lists six
//! tools, bob four, and bob's call of `delete_document` is refused as an unknown tool.
//! Serves until Ctrl-C or SIGTERM; with `--exit-on-stdin-eof`, also until its standard
//! input closes (for a parent process that keeps a pipe open).
//!
//! ```sh
//! cargo run --example rmcp_server    # optional: --port 8401 --stateless --exit-on-stdin-eof
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use idguard::IdGuard;
use idguard::policy::PolicyEngine;
use idguard_dev::DevEntra;
use idguard_dev::demo::DemoServer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::io::AsyncReadExt;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(0), |p| p.parse::<u16>())?;
    let stateless = args.iter().any(|a| a == "--stateless");
    let exit_on_stdin_eof = args.iter().any(|a| a == "--exit-on-stdin-eof");

    let entra = DevEntra::builder().start().await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"))
        .build()
        .await?;
    let policies = PolicyEngine::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))?;
    let _watch = policies.watch(Duration::from_millis(250));

    let demo = DemoServer::new();
    let mut config = StreamableHttpServerConfig::default();
    if stateless {
        config = config
            .with_legacy_session_mode(false)
            .with_json_response(true);
    }
    let mcp = StreamableHttpService::new(
        move || Ok(demo.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = Router::new()
        .nest_service(
            "/mcp",
            ServiceBuilder::new()
                .layer(guard.validate_token_layer())
                .layer(guard.authorize_mcp_layer(policies))
                .service(mcp),
        )
        .merge(guard.oauth_router());

    let hours = Duration::from_secs(8 * 3600);
    println!("export MCP_URL={base}/mcp");
    println!(
        "export ALICE={}",
        entra.token_for("alice")?.lifetime(hours).mint()?
    );
    println!(
        "export BOB={}",
        entra.token_for("bob")?.lifetime(hours).mint()?
    );
    eprintln!(
        "rmcp_server: serving {base}/mcp until Ctrl-C or SIGTERM{}",
        if exit_on_stdin_eof {
            ", or until standard input closes"
        } else {
            ""
        }
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let stdin_closed = async {
                if !exit_on_stdin_eof {
                    return std::future::pending().await;
                }
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 64];
                while let Ok(n) = stdin.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => eprintln!("rmcp_server: Ctrl-C, stopping"),
                () = terminated() => eprintln!("rmcp_server: SIGTERM, stopping"),
                () = stdin_closed => eprintln!("rmcp_server: standard input closed (--exit-on-stdin-eof), stopping"),
            }
        })
        .await?;
    Ok(())
}

/// SIGTERM (Unix); never elsewhere.
async fn terminated() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
        return;
    }
    std::future::pending::<()>().await;
}
