//! `idguard serve` (and plain `idguard`): dev mode without configuration, otherwise the
//! configured stack — in front of the demo tools, or as a gateway to an upstream server.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::metrics::Metrics;
use crate::config::IdGuardConfig;
use crate::demo::DemoServer;
use crate::dev::{DevEntra, DevEntraBuilder};
use crate::gateway::Gateway;
use crate::mcp::{AuthorizeMcpLayer, Denials, UnknownMethods};
use crate::policy::PolicyEngine;
use crate::{IdGuard, Principal};

/// Options of `idguard serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (default: `idguard.toml` when it exists; none: dev mode).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Port on 127.0.0.1 (overrides `server.listen`; 0 picks a free one). Default 8400.
    #[arg(long)]
    port: Option<u16>,
    /// Policy directory (overrides `server.policies`). Default `policies`.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Dev mode: port of the dev Entra emulator on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    entra_port: u16,
}

/// The configuration file `serve` would use: `--config`, or `./idguard.toml` if present.
pub(crate) fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from("idguard.toml")).filter(|p| p.exists()))
}

fn configured_by_env() -> bool {
    std::env::vars().any(|(k, _)| k.starts_with("IDGUARD_") && k != "IDGUARD_LOG")
}

/// What serves MCP behind the layers.
enum Inner {
    Demo,
    Upstream(reqwest::Url),
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    let path = config_path(args.config.as_deref());
    let dev = path.is_none() && !configured_by_env();
    let config = IdGuardConfig::load(path.as_deref(), std::env::vars())?;
    let listen: SocketAddr = match (args.port, &config.server.listen) {
        (Some(port), _) => SocketAddr::from(([127, 0, 0, 1], port)),
        (None, Some(listen)) => listen
            .parse()
            .map_err(|e| format!("`server.listen`: `{listen}` is not an address: {e}"))?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 8400)),
    };
    let mcp_path = config
        .server
        .mcp_path
        .clone()
        .unwrap_or_else(|| "/mcp".into());
    if !mcp_path.starts_with('/') || mcp_path.len() < 2 {
        return Err(format!("`server.mcp_path`: `{mcp_path}` must start with `/`").into());
    }
    let policy_dir = args
        .policies
        .clone()
        .or_else(|| config.server.policies.clone().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("policies"));
    let denials = match config.mcp.denials.as_deref() {
        None | Some("hidden") => Denials::Hidden,
        Some("visible") => Denials::Visible,
        Some(other) => {
            return Err(format!("`mcp.denials`: `{other}` is not `hidden` or `visible`").into());
        }
    };
    let unknown_methods = match config.mcp.unknown_methods.as_deref() {
        None | Some("refuse") => UnknownMethods::Refuse,
        Some("pass") => UnknownMethods::Pass,
        Some(other) => {
            return Err(
                format!("`mcp.unknown_methods`: `{other}` is not `refuse` or `pass`").into(),
            );
        }
    };
    let inner = match &config.server.upstream {
        None => Inner::Demo,
        Some(url) => Inner::Upstream(
            reqwest::Url::parse(url).map_err(|e| format!("`server.upstream`: `{url}`: {e}"))?,
        ),
    };

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e} (try --port)"))?;
    let base = format!("http://{}", listener.local_addr()?);

    let (entra, guard) = if dev {
        let entra = DevEntraBuilder::default()
            .addr(SocketAddr::from(([127, 0, 0, 1], args.entra_port)))
            .start()
            .await?;
        // On-behalf-of to the emulated Graph, so `my_profile` works out of the box.
        let obo = crate::OboConfig {
            client_secret: Some(crate::obo::Secret::new(entra.client_secret())),
            apis: [(
                crate::obo::GRAPH_API.to_owned(),
                vec!["https://graph.microsoft.com/User.Read".to_owned()],
            )]
            .into_iter()
            .collect(),
            graph_url: Some(entra.graph_url()),
            ..crate::OboConfig::default()
        };
        // The OAuth proxy, so MCP clients can sign in through the emulator: fresh keys
        // each start, and client-id metadata documents allowed on loopback.
        let key = crate::oauth::random_token(48).ok_or("no randomness for the proxy key")?;
        let oauth = crate::OAuthConfig {
            keys: vec![crate::obo::Secret::new(key)],
            scopes: Some(vec![crate::dev::DEV_SCOPE.to_owned()]),
            cimd_allow_loopback: true,
            ..crate::OAuthConfig::default()
        };
        entra.allow_redirect_uri(format!("{base}/callback"));
        let guard = IdGuard::builder()
            .authority(entra.url())
            .tenant(entra.tenant_id())
            .client_id(entra.api_client_id())
            .resource(format!("{base}{mcp_path}"))
            .obo(obo)
            .oauth(oauth)
            .build()
            .await?;
        (Some(Arc::new(entra)), guard)
    } else {
        let resolved = config.clone().resolve()?;
        (None, IdGuard::new(resolved).await?)
    };

    let policies = PolicyEngine::from_dir(&policy_dir).map_err(|e| {
        format!(
            "cannot load the policies in `{}`:\n{e}",
            policy_dir.display()
        )
    })?;
    let _watch = policies.watch(Duration::from_millis(250));
    let mut mcp_layer = guard
        .authorize_mcp_layer(policies.clone())
        .with_denials(denials)
        .with_unknown_methods(unknown_methods)
        .with_allowed_hosts(config.mcp.allowed_hosts.iter().cloned());
    if let Some(max) = config.mcp.max_body_bytes {
        mcp_layer = mcp_layer.with_max_body_bytes(usize::try_from(max).unwrap_or(usize::MAX));
    }
    if let Some(max) = config.mcp.max_reply_bytes {
        mcp_layer = mcp_layer.with_max_reply_bytes(usize::try_from(max).unwrap_or(usize::MAX));
    }
    if !config.mcp.session_keys.is_empty() {
        let secrets: Vec<&[u8]> = config
            .mcp
            .session_keys
            .iter()
            .map(|k| k.expose().as_bytes())
            .collect();
        mcp_layer = mcp_layer
            .with_session_keys(&secrets)
            .ok_or("`mcp.session_keys`: each key must be at least 32 bytes")?;
    }

    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        guard: guard.clone(),
        policies: policies.clone(),
        metrics: metrics.clone(),
        entra: entra.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
    };
    let server = config.server.settings()?;
    let mcp_service = mcp_router(&guard, mcp_layer, &inner, &mcp_path, &server)?;
    let mut app = Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { Json(p) }).route_layer(guard.validate_token_layer()),
        )
        .merge(mcp_service)
        .merge(guard.oauth_router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text));
    if dev {
        app = app.route("/dev/token", get(dev_token));
    }
    let app = app
        .layer(axum::middleware::from_fn_with_state(metrics, count))
        .with_state(state.clone())
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            let id = req
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default();
                            tracing::info_span!("request", id, method = %req.method(), path = req.uri().path())
                        })
                        .on_response(
                            tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                        ),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        );

    match (&entra, &inner) {
        (Some(entra), _) => print_dev_banner(entra, &base, &mcp_path, &policy_dir)?,
        (None, Inner::Upstream(url)) => {
            println!("idguard: gateway {base}{mcp_path} -> {url}");
        }
        (None, Inner::Demo) => println!("idguard: demo tools at {base}{mcp_path}"),
    }
    tracing::info!(target: "idguard::serve", %base, "listening");
    super::listen::serve(listener, app, server, shutdown_signal()).await?;
    tracing::info!(target: "idguard::serve", "stopped");
    Ok(())
}

fn mcp_router(
    guard: &IdGuard,
    mcp_layer: AuthorizeMcpLayer,
    inner: &Inner,
    path: &str,
    server: &crate::config::ServerSettings,
) -> Result<Router<AppState>, Box<dyn Error>> {
    let layers = ServiceBuilder::new()
        .layer(guard.validate_token_layer())
        .layer(mcp_layer);
    Ok(match inner {
        Inner::Demo => {
            let demo = DemoServer::new();
            let host = reqwest::Url::parse(guard.config().resource())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "localhost".into());
            // Stateless JSON: every request stands alone (curl works without a handshake),
            // and replicas need nothing shared.
            let config = StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true)
                .with_allowed_hosts([host, "localhost".into(), "127.0.0.1".into(), "::1".into()]);
            let service = StreamableHttpService::new(
                move || Ok(demo.clone()),
                Arc::new(LocalSessionManager::default()),
                config,
            );
            Router::new().nest_service(path, layers.service(service))
        }
        Inner::Upstream(url) => {
            let client = reqwest::Client::builder()
                .connect_timeout(server.upstream_connect_timeout)
                .build()?;
            let gateway = Gateway::new(url.clone(), client)
                .with_response_timeout(server.upstream_timeout)
                .with_idle_timeout(server.upstream_idle_timeout);
            Router::new().nest_service(path, layers.service(gateway))
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!(target: "idguard::serve", "shutting down: finishing requests in flight");
}

#[derive(Clone)]
struct AppState {
    guard: IdGuard,
    policies: PolicyEngine,
    metrics: Arc<Metrics>,
    entra: Option<Arc<DevEntra>>,
    /// For `/healthz`'s reachability probe (one client, reused).
    http: reqwest::Client,
}

async fn count(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    metrics.observe(&res);
    res
}

async fn healthz(State(s): State<AppState>) -> Json<serde_json::Value> {
    let policy = s.policies.status();
    let stats = s.guard.stats();
    let authority = s.guard.config().authority().to_owned();
    let discovery = format!(
        "{authority}/{}/v2.0/.well-known/openid-configuration",
        s.guard.config().tenant().discovery_segment()
    );
    let reachable = s
        .http
        .get(&discovery)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let ok = policy.last_error.is_none() && reachable;
    Json(serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "policy": policy,
        "keys": {"age_secs": stats.keys_age_secs},
        "identity": {"authority": authority, "reachable": reachable},
    }))
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    let obo = s.guard.obo_client().map(crate::obo::OboClient::stats);
    let oauth = s.guard.oauth_stats();
    let body = s.metrics.render(&s.guard.stats(), &s.policies, obo, oauth);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
    lifetime_secs: Option<u64>,
}

/// Dev mode only: a fresh token for a demo user (`idguard token mint`).
async fn dev_token(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(entra) = &s.entra else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let lifetime = Duration::from_secs(q.lifetime_secs.unwrap_or(3600).min(24 * 3600));
    match entra
        .token_for(&q.user)
        .and_then(|m| m.lifetime(lifetime).mint())
    {
        Ok(token) => token.into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

fn print_dev_banner(
    entra: &DevEntra,
    base: &str,
    mcp_path: &str,
    policies: &Path,
) -> Result<(), Box<dyn Error>> {
    let lifetime = Duration::from_secs(8 * 3600);
    let alice = entra.token_for("alice")?.lifetime(lifetime).mint()?;
    let bob = entra.token_for("bob")?.lifetime(lifetime).mint()?;
    println!(
        "\
idguard dev mode: a local Entra emulator signs the tokens; nothing talks to Microsoft.

  MCP endpoint  {base}{mcp_path}     (demo tools, policies from {policies})
  dev Entra     {entra_url}          (tenant Contoso {tenant})
  health        {base}/healthz   metrics {base}/metrics

Tokens (valid 8 h): alice holds Tools.Admin and signed in with MFA; bob holds Tools.Read.

export IDGUARD_MCP_URL={base}{mcp_path}
export ALICE={alice}
export BOB={bob}

Try:
  curl -s {base}{mcp_path} -H \"Authorization: Bearer $BOB\" -H 'content-type: application/json' \\
       -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-06-18' \\
       -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}}'
  idguard token mint --user bob --url {base}   # a fresh token from this dev server
  idguard policy explain --user bob --tool delete_document

MCP clients: point them at {base}{mcp_path}. Clients with OAuth sign in through idguard's
OAuth proxy (registration or a client metadata document; pick a dev user at the emulator);
others send the header `Authorization: Bearer <token>`.
Edit {policies}/*.cedar while this runs: changes apply at once (broken edits show at /healthz).
Ctrl-C stops.",
        entra_url = entra.url(),
        tenant = entra.tenant_id(),
        policies = policies.display(),
    );
    Ok(())
}
