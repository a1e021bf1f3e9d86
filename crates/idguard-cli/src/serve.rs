//! `idguard serve` (and plain `idguard`): dev mode without configuration, otherwise the
//! configured stack — in front of the demo tools, or as a gateway to an upstream server.
//!
//! Over 800 lines: the wiring of every mode (dev, configured, gateway, shadow) with its
//! health and readiness endpoints, read top to bottom.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError};
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
use tower::{ServiceBuilder, ServiceExt as _};

use super::metrics::Metrics;
use idguard::gateway::{Gateway, Gateways, UpstreamsSettings};
use idguard::mcp::{AuthorizeMcpLayer, Denials, McpCacheCapacities, UnknownMethods};
use idguard::policy::{PolicyEngine, Servers};
use idguard::{IdGuard, Principal, StartupError};
use idguard::{IdGuardConfig, ResolvedConfig};
use idguard_dev::demo::DemoServer;
use idguard_dev::{DevEntra, DevEntraBuilder};

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
    /// Shadow policy directory, decided alongside for comparison only (overrides
    /// `server.shadow_policies`).
    #[arg(long)]
    shadow_policies: Option<PathBuf>,
    /// Dev mode: port of the dev Entra emulator on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    entra_port: u16,
    /// Dev mode even with an idguard.toml or IDGUARD_* variables: the emulator stands in
    /// for `[token]`, `[obo]` and `[oauth]`; `[server]` and `[mcp]` still apply.
    #[arg(long)]
    dev: bool,
    /// How denied calls are answered (overrides `mcp.denials`): `hidden` (like an unknown
    /// tool) or `visible` (a "forbidden" error with the policy's @reason).
    #[arg(long, value_enum)]
    denials: Option<DenialsArg>,
    /// Methods idguard does not mediate (overrides `mcp.unknown_methods`): `refuse` or
    /// `pass`.
    #[arg(long, value_enum)]
    unknown_methods: Option<UnknownMethodsArg>,
}

/// `--denials`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum DenialsArg {
    Hidden,
    Visible,
}

impl From<DenialsArg> for Denials {
    fn from(d: DenialsArg) -> Self {
        match d {
            DenialsArg::Hidden => Denials::Hidden,
            DenialsArg::Visible => Denials::Visible,
        }
    }
}

/// `--unknown-methods`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum UnknownMethodsArg {
    Refuse,
    Pass,
}

impl From<UnknownMethodsArg> for UnknownMethods {
    fn from(u: UnknownMethodsArg) -> Self {
        match u {
            UnknownMethodsArg::Refuse => UnknownMethods::Refuse,
            UnknownMethodsArg::Pass => UnknownMethods::Pass,
        }
    }
}

/// The configuration file `serve` would use: `--config`, or `./idguard.toml` if present.
pub(crate) fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from("idguard.toml")).filter(|p| p.exists()))
}

/// The `IDGUARD_*` variables (but `IDGUARD_LOG`) set: any of them means "configured".
fn configured_by_env() -> Vec<String> {
    let mut vars: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("IDGUARD_") && k != "IDGUARD_LOG")
        .collect();
    vars.sort();
    vars
}

/// What serves MCP behind the layers.
enum Inner {
    Demo,
    Upstream(reqwest::Url),
    /// `[[upstream]]` entries: several upstreams behind one endpoint.
    Many(Vec<idguard::gateway::NamedUpstream>),
}

impl Inner {
    /// What the banner says is served.
    fn describe(&self) -> String {
        match self {
            Self::Demo => "demo tools".to_owned(),
            Self::Upstream(url) => format!("gateway to {url}"),
            Self::Many(entries) => {
                let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                format!("gateway to upstreams {}", names.join(", "))
            }
        }
    }
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    let path = config_path(args.config.as_deref());
    let by_env = configured_by_env();
    let dev = args.dev || (path.is_none() && by_env.is_empty());
    let overrides = idguard::internals::Overrides {
        port: args.port,
        policies: args.policies.clone(),
        denials: args.denials.map(Into::into),
        unknown_methods: args.unknown_methods.map(Into::into),
    };
    // The same check as `idguard config check`: every problem at once, named as written.
    let checked = match idguard::internals::check_binary(
        path.as_deref(),
        std::env::vars(),
        &overrides,
        dev,
    ) {
        Ok(checked) => checked,
        Err(e) => {
            let file = path.as_ref().map_or_else(
                || "(no configuration file)".to_owned(),
                |p| p.display().to_string(),
            );
            let mut text = String::from("invalid configuration, idguard did not start:");
            for line in super::entra::problem_lines(&e, &file) {
                text.push_str("\n  ");
                text.push_str(&line);
            }
            if path.is_none() && !args.dev {
                text.push_str(&format!(
                    "\nThere is no idguard.toml here, yet the environment sets {}: that turns dev mode off. Unset them for dev mode (`{} serve --denials visible` and `--unknown-methods pass` tune it), or pass --dev.",
                    by_env.join(", "),
                    command_prefix()
                ));
            }
            return Err(text.into());
        }
    };
    if args.dev && (path.is_some() || !by_env.is_empty()) {
        println!(
            "idguard --dev: the dev Entra emulator stands in for [token], [obo] and [oauth]; [server] and [mcp] apply."
        );
    }
    let idguard::internals::Checked {
        config,
        resolved: checked_resolved,
        server,
        mcp: mcp_settings,
        upstream: upstream_settings,
        ..
    } = checked;
    let listen = server.listen;
    let mcp_path = server.mcp_path.clone();
    let policy_dir = server.policies.clone();
    let denials = mcp_settings.denials;
    let unknown_methods = mcp_settings.unknown_methods;
    let policy_caches = mcp_settings.policy_caches;
    let inner = match (&server.upstream, &upstream_settings) {
        (_, UpstreamsSettings::Many(entries)) => Inner::Many(entries.clone()),
        (None, _) => Inner::Demo,
        (Some(url), _) => Inner::Upstream(url.clone()),
    };
    // Each item's server: `[[upstream]]` names, or the single upstream's name if any.
    let servers = match (&inner, &upstream_settings) {
        (Inner::Many(entries), _) => Some(Servers::new(entries.iter().map(|e| e.name.clone()))),
        (Inner::Upstream(_), UpstreamsSettings::One(Some(name), _)) => {
            Some(Servers::single(name.clone()))
        }
        _ => None,
    };
    // Policies do not depend on the identity provider: a broken directory stops the start.
    let policies = PolicyEngine::from_dir(&policy_dir)
        .map_err(|e| {
            format!(
                "cannot load the policies in `{}`:\n{e}",
                policy_dir.display()
            )
        })?
        .with_cache_capacities(policy_caches);
    let policies = match &servers {
        Some(servers) => policies.with_servers(servers.clone()),
        None => policies,
    };
    let shadow_dir = args
        .shadow_policies
        .clone()
        .or_else(|| config.server.shadow_policies.clone().map(PathBuf::from));
    let policies = match &shadow_dir {
        None => policies,
        Some(dir) => policies.with_shadow(
            PolicyEngine::from_dir(dir)
                .map_err(|e| {
                    format!(
                        "`server.shadow_policies`: cannot load the shadow policies in `{}`:\n{e}",
                        dir.display()
                    )
                })?
                .with_cache_capacities(policy_caches),
        ),
    };
    let _watch = policies.watch(Duration::from_millis(250));
    let _shadow_watch = policies
        .shadow()
        .map(|shadow| shadow.watch(Duration::from_millis(250)));
    let resolved = checked_resolved;
    let resolved_resource = resolved.as_ref().map(|r| r.resource().to_owned());

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e} (try --port)"))?;
    let base = format!("http://{}", listener.local_addr()?);

    let http = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(policies.clone()));
    let app_parts = AppParts {
        policies,
        metrics: metrics.clone(),
        health: health.clone(),
        denials,
        unknown_methods,
        mcp_caches: mcp_settings.caches,
        inner,
        mcp_path: mcp_path.clone(),
        server: server.clone(),
        upstream: upstream_settings,
        servers,
        config: config.clone(),
        dev,
    };

    // The app behind the health routes: set once the identity provider's keys are in;
    // until then other routes answer 503.
    let ready: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let fatal_signal = Arc::new(tokio::sync::Notify::new());
    let _dev_entra = if dev {
        let entra = DevEntraBuilder::default()
            .addr(SocketAddr::from(([127, 0, 0, 1], args.entra_port)))
            .start()
            .await?;
        let guard = dev_guard(&entra, &base, &mcp_path).await?;
        let entra = Arc::new(entra);
        spawn_probe(health.clone(), http, discovery_url(guard.config()));
        let app = app_parts.build(&guard, Some(entra.clone()))?;
        health.set_guard(guard);
        let _ = ready.set(app);
        print_dev_banner(
            &entra,
            &base,
            &mcp_path,
            &policy_dir,
            denials,
            &app_parts.inner.describe(),
        )?;
        Some(entra)
    } else {
        let resolved = resolved.ok_or("no configuration")?;
        spawn_probe(health.clone(), http, discovery_url(&resolved));
        let (health, ready, fatal, fatal_signal, base) = (
            health.clone(),
            ready.clone(),
            fatal.clone(),
            fatal_signal.clone(),
            base.clone(),
        );
        tokio::spawn(async move {
            let started = match start_guard(resolved, &health, &base).await {
                Ok(guard) => app_parts
                    .build(&guard, None)
                    .map(|app| (guard, app))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match started {
                Ok((guard, app)) => {
                    health.set_guard(guard);
                    let _ = ready.set(app);
                    match &app_parts.inner {
                        Inner::Upstream(url) => {
                            println!("idguard: gateway {base}{} -> {url}", app_parts.mcp_path);
                        }
                        Inner::Many(entries) => {
                            let names: Vec<&str> =
                                entries.iter().map(|e| e.name.as_str()).collect();
                            println!(
                                "idguard: gateway {base}{} -> upstreams {}",
                                app_parts.mcp_path,
                                names.join(", ")
                            );
                        }
                        Inner::Demo => {
                            println!("idguard: demo tools at {base}{}", app_parts.mcp_path);
                        }
                    }
                }
                Err(e) => {
                    *fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    fatal_signal.notify_one();
                }
            }
        });
        None
    };

    let answers = Arc::new(Answers {
        dev,
        resource: if dev {
            Some(format!("{base}{mcp_path}"))
        } else {
            resolved_resource
        },
    });
    let front = {
        let ready = ready.clone();
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/healthz", get(healthz))
            .with_state(health)
            .fallback_service(tower::service_fn(move |req: Request| {
                let app = ready.get().cloned();
                async move {
                    Ok::<_, Infallible>(match app {
                        Some(app) => app.oneshot(req).await.unwrap_or_else(|e| match e {}),
                        None => not_ready(),
                    })
                }
            }))
            .layer(axum::middleware::from_fn_with_state(answers, tune_answers))
            .layer(super::access::AccessLogLayer::new(metrics))
    };

    tracing::info!(target: "idguard::serve", %base, "listening");
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = fatal_signal.notified() => {}
        }
    };
    super::listen::serve(listener, front, server, stop).await?;
    if let Some(e) = fatal.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(e.into());
    }
    tracing::info!(target: "idguard::serve", "stopped");
    Ok(())
}

/// Dev mode's guard: the emulator's tenant, on-behalf-of to its Graph, the OAuth proxy.
async fn dev_guard(
    entra: &DevEntra,
    base: &str,
    mcp_path: &str,
) -> Result<IdGuard, Box<dyn Error>> {
    // On-behalf-of to the emulated Graph, so `my_profile` works out of the box.
    let obo = idguard::OboConfig {
        client_secret: Some(idguard::obo::Secret::new(entra.client_secret())),
        apis: [(
            idguard::obo::GRAPH_API.to_owned(),
            vec!["https://graph.microsoft.com/User.Read".to_owned()],
        )]
        .into_iter()
        .collect(),
        graph_url: Some(entra.graph_url()),
        ..idguard::OboConfig::default()
    };
    // The OAuth proxy, so MCP clients can sign in through the emulator: fresh keys
    // each start, and client-id metadata documents allowed on loopback.
    let key = idguard::internals::random_token(48).ok_or("no randomness for the proxy key")?;
    let oauth = idguard::OAuthConfig {
        keys: vec![idguard::obo::Secret::new(key)],
        scopes: Some(vec![idguard_dev::DEV_SCOPE.to_owned()]),
        cimd_allow_loopback: true,
        ..idguard::OAuthConfig::default()
    };
    entra.allow_redirect_uri(format!("{base}/callback"));
    Ok(IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}{mcp_path}"))
        .obo(obo)
        .oauth(oauth)
        .build()
        .await?)
}

/// Builds the guard, retrying while the identity provider cannot be reached (and no key
/// cache file helps): the process stays up, `/livez` answers, `/readyz` says why it is not
/// ready. Only a configuration error ends it.
async fn start_guard(
    resolved: ResolvedConfig,
    health: &Health,
    base: &str,
) -> Result<IdGuard, String> {
    let mut failures = 0u32;
    loop {
        match IdGuard::new(resolved.clone()).await {
            Ok(guard) => {
                if failures > 0 {
                    tracing::info!(target: "idguard::serve", failures, "identity provider reached: ready");
                }
                return Ok(guard);
            }
            Err(e @ StartupError::Config(_)) => return Err(e.to_string()),
            Err(e) => {
                failures += 1;
                let wait = START_RETRY_FIRST
                    .saturating_mul(1 << failures.saturating_sub(1).min(8))
                    .min(START_RETRY_MAX);
                tracing::error!(target: "idguard::serve", error = %e, retry_in_secs = wait.as_secs(), "cannot start: not ready; retrying");
                if failures == 1 {
                    println!(
                        "idguard: not ready at {base}: {e} (retrying; /readyz answers 503 until then)"
                    );
                }
                health.set_starting(e.to_string());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What the app needs besides the guard.
struct AppParts {
    policies: PolicyEngine,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    denials: Denials,
    unknown_methods: UnknownMethods,
    /// `mcp.catalog_capacity` and the other sizes of the MCP layer's memory.
    mcp_caches: McpCacheCapacities,
    inner: Inner,
    mcp_path: String,
    server: idguard::internals::ServerSettings,
    /// `[upstream]` or `[[upstream]]`: what the gateway's upstreams receive.
    upstream: UpstreamsSettings,
    /// The named servers whose items the policies judge, if any.
    servers: Option<Servers>,
    config: IdGuardConfig,
    dev: bool,
}

impl AppParts {
    /// The routes behind the health routes, for `guard`.
    fn build(
        &self,
        guard: &IdGuard,
        entra: Option<Arc<DevEntra>>,
    ) -> Result<Router, Box<dyn Error>> {
        let config = &self.config;
        let mut mcp_layer = guard
            .authorize_mcp_layer(self.policies.clone())
            .with_denials(self.denials)
            .with_unknown_methods(self.unknown_methods)
            .with_cache_capacities(self.mcp_caches)
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
                .map(|k| idguard::internals::expose(k).as_bytes())
                .collect();
            mcp_layer = mcp_layer
                .with_session_keys(&secrets)
                .ok_or("`mcp.session_keys`: each key must be at least 32 bytes")?;
        }
        let state = AppState {
            guard: guard.clone(),
            policies: self.policies.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            entra,
        };
        let resource = guard.config().resource();
        let credentials = match &self.upstream {
            UpstreamsSettings::Many(entries) => entries
                .iter()
                .map(|e| e.credential.credential(resource))
                .collect::<Result<Vec<_>, _>>()?,
            UpstreamsSettings::One(_, settings) => vec![settings.credential(resource)?],
            _ => Vec::new(),
        };
        // The public keys of the identity assertions the upstreams receive, in one set.
        let keys: Vec<serde_json::Value> = credentials
            .iter()
            .filter_map(idguard::gateway::UpstreamCredential::assertion)
            .filter_map(|a| a.jwks().get("keys").and_then(|k| k.as_array()).cloned())
            .flatten()
            .collect();
        let jwks = (!keys.is_empty()).then(|| serde_json::json!({ "keys": keys }));
        let mcp_service = mcp_router(
            guard,
            mcp_layer,
            &self.inner,
            &self.mcp_path,
            &self.server,
            credentials,
            self.servers.clone(),
        )?;
        let mut app = Router::new()
            .route(
                "/me",
                get(|p: Principal| async move { Json(p) })
                    .route_layer(guard.validate_token_layer()),
            )
            .merge(mcp_service)
            .merge(guard.oauth_router())
            .route("/metrics", get(metrics_text));
        if let Some(jwks) = jwks {
            // The public key of the identity assertions the upstream receives.
            app = app.route(
                idguard::gateway::JWKS_PATH,
                get(move || async move { Json(jwks) }),
            );
        }
        if self.dev {
            app = app.route("/dev/token", get(dev_token));
        }
        // Where `idguard entra consent-url` sends the administrator afterwards.
        app = app.route("/admin-consent", get(admin_consent_landing));
        let admin_role = config
            .server
            .admin_role
            .clone()
            .or_else(|| self.dev.then(|| "Tools.Admin".to_owned()));
        if let Some(role) = admin_role {
            app = app.merge(super::admin::router(guard, self.policies.clone(), role));
        }
        Ok(app.with_state(state))
    }
}

fn mcp_router(
    guard: &IdGuard,
    mcp_layer: AuthorizeMcpLayer,
    inner: &Inner,
    path: &str,
    server: &idguard::internals::ServerSettings,
    credentials: Vec<idguard::gateway::UpstreamCredential>,
    servers: Option<Servers>,
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
            // Keep-alive connections are pooled per host (reqwest's default: no bound, 90 s
            // idle). No retries: a request forwarded once is never replayed, and the
            // client does not copy every request in case it must.
            let client = reqwest::Client::builder()
                .connect_timeout(server.upstream_connect_timeout)
                .retry(reqwest::retry::never().max_retries_per_request(0))
                .build()?;
            let credential = credentials.into_iter().next().unwrap_or_default();
            let gateway = Gateway::new(url.clone(), client)
                .with_connect_timeout(server.upstream_connect_timeout)
                .with_response_timeout(server.upstream_timeout)
                .with_idle_timeout(server.upstream_idle_timeout)
                .with_credential(credential);
            Router::new().nest_service(path, layers.service(gateway))
        }
        Inner::Many(entries) => {
            let mut upstreams = Vec::with_capacity(entries.len());
            for (entry, credential) in entries.iter().zip(credentials) {
                let connect_timeout = entry
                    .connect_timeout
                    .unwrap_or(server.upstream_connect_timeout);
                let client = reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .retry(reqwest::retry::never().max_retries_per_request(0))
                    .build()?;
                let gateway = Gateway::new(entry.url.clone(), client)
                    .with_connect_timeout(connect_timeout)
                    .with_response_timeout(entry.timeout.unwrap_or(server.upstream_timeout))
                    .with_idle_timeout(entry.idle_timeout.unwrap_or(server.upstream_idle_timeout))
                    .with_credential(credential);
                upstreams.push((entry.name.clone(), gateway));
            }
            let servers = servers.ok_or("several upstreams without their names")?;
            Router::new().nest_service(path, layers.service(Gateways::new(upstreams, servers)))
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
    health: Arc<Health>,
    entra: Option<Arc<DevEntra>>,
}

/// How often the identity provider's reachability is checked in the background.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one reachability check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Start-up retries while the identity provider cannot be reached: 1 s, doubling, at most
/// 30 s.
const START_RETRY_FIRST: Duration = Duration::from_secs(1);
const START_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the health routes report. Nothing here waits on the network: the identity
/// provider is checked by a background task ([`spawn_probe`]).
struct Health {
    policies: PolicyEngine,
    /// Set once the signing keys are in (the process is ready).
    guard: OnceLock<IdGuard>,
    /// While not ready: why the last start attempt failed.
    starting: std::sync::Mutex<Option<String>>,
    identity: std::sync::Mutex<Reachability>,
}

/// The last background check of the identity provider.
#[derive(Clone, Default)]
struct Reachability {
    url: String,
    /// `None` until the first check ends.
    reachable: Option<bool>,
    checked_at: Option<tokio::time::Instant>,
    error: Option<String>,
}

impl Health {
    fn new(policies: PolicyEngine) -> Self {
        Self {
            policies,
            guard: OnceLock::new(),
            starting: std::sync::Mutex::default(),
            identity: std::sync::Mutex::default(),
        }
    }

    fn set_guard(&self, guard: IdGuard) {
        let _ = self.guard.set(guard);
        *self.starting.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn set_starting(&self, why: String) {
        *self.starting.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    fn identity(&self) -> Reachability {
        self.identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The shared body of `/healthz` and `/readyz`.
    fn report(&self) -> (bool, serde_json::Value) {
        let policy = self.policies.status();
        let identity = self.identity();
        let identity_json = serde_json::json!({
            "authority_url": identity.url,
            "reachable": identity.reachable,
            "checked_secs_ago": identity.checked_at.map(|t| t.elapsed().as_secs()),
            "error": identity.error,
        });
        let Some(guard) = self.guard.get() else {
            let why = self
                .starting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            return (
                false,
                serde_json::json!({
                    "status": "starting",
                    "ready": false,
                    "reason": why.unwrap_or_else(|| "loading the signing keys".into()),
                    "policy": policy,
                    "shadow_policy": self.policies.shadow().map(PolicyEngine::status),
                    "identity": identity_json,
                }),
            );
        };
        let keys = idguard::internals::key_status(guard);
        let store = guard.store_status();
        let ok = policy.last_error.is_none()
            && identity.reachable != Some(false)
            && keys.failures == 0
            && store.is_none_or(|s| s.reachable);
        (
            true,
            serde_json::json!({
                "status": if ok { "ok" } else { "degraded" },
                "ready": true,
                "policy": policy,
                "shadow_policy": self.policies.shadow().map(PolicyEngine::status),
                "keys": {
                    "source": keys.source.as_str(),
                    "age_secs": keys.age.as_secs(),
                    "fetch_failures": keys.failures,
                    "last_error": keys.last_error,
                    "retry_in_secs": keys.retry_in.map(|d| d.as_secs()),
                    "cache_file_error": keys.cache_error,
                },
                "identity": identity_json,
                "store": store.map(|s| serde_json::json!({
                    "kind": s.kind,
                    "reachable": s.reachable,
                    "errors": s.errors,
                })),
            }),
        )
    }
}

/// The v2 discovery document's URL: what the background check fetches.
fn discovery_url(config: &ResolvedConfig) -> String {
    idguard::internals::discovery_url(
        config.authority(),
        idguard::internals::discovery_segment(config.tenant()),
    )
}

/// Checks the identity provider every [`PROBE_INTERVAL`] (each check bounded by
/// [`PROBE_TIMEOUT`]) and records the outcome for the health routes and metrics.
fn spawn_probe(health: Arc<Health>, http: reqwest::Client, url: String) {
    let weak = Arc::downgrade(&health);
    drop(health);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let outcome = match http.get(&url).send().await {
                Ok(res) if res.status().is_success() => Ok(()),
                Ok(res) => Err(format!("status {}", res.status())),
                Err(e) if e.is_timeout() => {
                    Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))
                }
                Err(e) => Err(idguard::internals::without_url(&e)),
            };
            let Some(health) = weak.upgrade() else { return };
            let mut identity = health
                .identity
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match (&outcome, identity.reachable) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(target: "idguard::serve", %url, error = %e, "identity provider unreachable");
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(target: "idguard::serve", %url, "identity provider reachable again");
                }
                _ => {}
            }
            *identity = Reachability {
                url: url.clone(),
                reachable: Some(outcome.is_ok()),
                checked_at: Some(tokio::time::Instant::now()),
                error: outcome.err(),
            };
        }
    });
}

/// `/livez`: the process answers. No outbound call, no lock held long.
async fn livez() -> &'static str {
    "ok"
}

/// `/readyz`: `200` once the signing keys are in and the policies loaded, `503` before.
/// The identity provider's reachability is reported, not required: replicas with keys keep
/// validating tokens through an outage of the provider.
async fn readyz(State(h): State<Arc<Health>>) -> Response {
    let (ready, body) = h.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `/healthz`: everything `/readyz` reports, always `200` (usable as a liveness probe).
async fn healthz(State(h): State<Arc<Health>>) -> Json<serde_json::Value> {
    Json(h.report().1)
}

/// The answer of every other route until the process is ready.
fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(http::header::RETRY_AFTER, "5")],
        "starting: the signing keys are not loaded yet\n",
    )
        .into_response()
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    let obo = s.guard.obo_client().map(idguard::obo::OboClient::stats);
    let oauth = s.guard.oauth_stats();
    let mut body = s.metrics.render(&s.guard.stats(), &s.policies, obo, oauth);
    let keys = idguard::internals::key_status(&s.guard);
    let reachable = s.health.identity().reachable;
    if let Some(store) = s.guard.store_status() {
        let kind = store.kind;
        body.push_str(&format!(
            "# HELP idguard_store_reachable 1 if the OAuth state store answered its last command or probe.\n# TYPE idguard_store_reachable gauge\nidguard_store_reachable{{kind=\"{kind}\"}} {}\n# HELP idguard_store_errors_total Store commands that failed or timed out (each answered 503).\n# TYPE idguard_store_errors_total counter\nidguard_store_errors_total{{kind=\"{kind}\"}} {}\n",
            u64::from(store.reachable),
            store.errors
        ));
    }
    for (name, help, value) in [
        (
            "idguard_jwks_fetch_failures",
            "Signing-key fetches failed in a row (0: the last one worked).",
            u64::from(keys.failures),
        ),
        (
            "idguard_jwks_from_cache_file",
            "1 while the signing keys in force were read from token.jwks_cache_file at start.",
            u64::from(keys.source == idguard::internals::KeySource::CacheFile),
        ),
        (
            "idguard_identity_reachable",
            "1 if the identity provider answered the last background check.",
            u64::from(reachable != Some(false)),
        ),
    ] {
        body.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
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

/// Dev mode only: a fresh token for a demo user or app (`idguard token mint`).
async fn dev_token(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(entra) = &s.entra else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let lifetime = Duration::from_secs(q.lifetime_secs.unwrap_or(3600).min(24 * 3600));
    let user = entra.users().iter().find(|u| u.key == q.user);
    let app = entra.apps().iter().find(|a| a.key == q.user);
    let minted = match (user, app) {
        (Some(_), _) => entra.token_for(&q.user),
        (None, Some(_)) => entra.app_token(&q.user),
        (None, None) => {
            let known: Vec<&str> = entra
                .users()
                .iter()
                .map(|u| u.key.as_str())
                .chain(entra.apps().iter().map(|a| a.key.as_str()))
                .collect();
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "no dev user or app `{}`: the emulator has {}",
                    q.user,
                    known.join(", ")
                ),
            )
                .into_response();
        }
    }
    .and_then(|m| m.lifetime(lifetime).mint());
    let token = match minted {
        Ok(token) => token,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let home = user
        .map(|u| u.tenant_id.as_str())
        .or(app.map(|a| a.tenant_id.as_str()));
    let mut res = token.into_response();
    if let Some(tid) = home.filter(|tid| *tid != entra.tenant_id()) {
        let name = entra
            .tenants()
            .iter()
            .find(|t| t.id == tid)
            .map_or(tid, |t| t.name.as_str());
        let note = format!(
            "`{}` belongs to tenant {name}; this dev server accepts tenant Contoso only, so it refuses the token (401 invalid_token: the token tenant is not allowed here), which shows a wrong-tenant refusal",
            q.user
        );
        if let Ok(v) = http::HeaderValue::try_from(note) {
            res.headers_mut().insert(super::entra::DEV_NOTE_HEADER, v);
        }
    }
    res
}

fn print_dev_banner(
    entra: &DevEntra,
    base: &str,
    mcp_path: &str,
    policies: &Path,
    denials: Denials,
    serves: &str,
) -> Result<(), Box<dyn Error>> {
    let lifetime = Duration::from_secs(8 * 3600);
    let alice = entra.token_for("alice")?.lifetime(lifetime).mint()?;
    let bob = entra.token_for("bob")?.lifetime(lifetime).mint()?;
    let idguard = command_prefix();
    let denials = match denials {
        Denials::Visible => "visible: a \"forbidden\" error with the policy's @reason",
        _ => "hidden, like unknown tools (--denials visible shows the policy's @reason)",
    };
    let banner = format!(
        "\
idguard dev mode: a local Entra emulator signs the tokens; nothing talks to Microsoft.

  MCP endpoint  {base}{mcp_path}     ({serves}, policies from {policies})
  dev Entra     {entra_url}          (tenant Contoso {tenant})
  health        {base}/healthz   metrics {base}/metrics
  denied calls  {denials}

Tokens (valid 8 h): alice holds Tools.Admin and signed in with MFA; bob holds Tools.Read.
For your shell (idguard itself reads none of these):

export MCP_URL={base}{mcp_path}
export ALICE={alice}
export BOB={bob}

Try:
  curl -s $MCP_URL -H \"Authorization: Bearer $BOB\" -H 'content-type: application/json' \\
       -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-06-18' \\
       -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}}'
  {idguard} token mint --user bob --url {base}   # a fresh token from this dev server
  {idguard} policy explain --user bob --tool delete_document

MCP clients: point them at {base}{mcp_path} (localhost works too). Clients with OAuth sign in
through idguard's OAuth proxy (registration or a client metadata document; approve, then
pick alice or bob at the emulator); others send the header `Authorization: Bearer <token>`.
Edit {policies}/*.cedar while this runs: changes apply at once (broken edits show at /healthz).
Refused tokens are logged with the reason. Ctrl-C stops.",
        entra_url = entra.url(),
        tenant = entra.tenant_id(),
        policies = policies.display(),
    );
    // A closed standard output (piped into `head`) does not stop the server.
    let _ = writeln!(std::io::stdout().lock(), "{banner}");
    Ok(())
}

/// How to run this binary again, as the user can type it: `cargo run --` when cargo
/// started it (in this crate's directory, or with `--manifest-path`), else the path it was
/// started by, else `idguard` (installed with `cargo install --path crates/idguard-cli`).
fn command_prefix() -> String {
    if let (Ok(dir), Ok("idguard")) = (
        std::env::var("CARGO_MANIFEST_DIR"),
        std::env::var("CARGO_PKG_NAME").as_deref(),
    ) {
        let here = std::env::current_dir().ok();
        let dir = PathBuf::from(dir);
        return if here.as_deref() == Some(dir.as_path()) {
            "cargo run --".to_owned()
        } else {
            format!(
                "cargo run --manifest-path {} --",
                dir.join("Cargo.toml").display()
            )
        };
    }
    match std::env::args().next() {
        Some(argv0) if argv0.contains('/') => argv0,
        _ => "idguard".to_owned(),
    }
}

/// What [`tune_answers`] needs.
struct Answers {
    dev: bool,
    /// The protected resource, when known (not while a configured start is pending).
    resource: Option<String>,
}

/// Two touches on every answer:
///
/// - a challenge to a client that reached a loopback resource under another loopback name
///   (`localhost` for `127.0.0.1`) names the metadata under that name too, as the metadata
///   itself does: MCP clients refuse metadata for another URL than the one they were given;
/// - in dev mode, a refusal is logged at `info` with its reason, for the person trying it.
async fn tune_answers(State(a): State<Arc<Answers>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(http::header::HOST).cloned();
    // Only dev mode logs the path.
    let path = a.dev.then(|| req.uri().path().to_owned());
    let mut res = next.run(req).await;
    // The resource URL is parsed only for an answer with a challenge (a refusal).
    if let Some(challenge) = res
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        && let Some(resource) = &a.resource
        && let Some(reached) = idguard::internals::as_reached(resource, host.as_ref())
    {
        let canonical = idguard::internals::resource_metadata_url(resource);
        let renamed = challenge.replace(
            &format!("resource_metadata=\"{canonical}\""),
            &format!(
                "resource_metadata=\"{}\"",
                idguard::internals::resource_metadata_url(&reached)
            ),
        );
        if let Ok(v) = http::HeaderValue::try_from(renamed) {
            res.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
    }
    if let Some(path) = path
        && let Some(rejection) = res.extensions().get::<idguard::Rejection>()
    {
        tracing::info!(
            target: "idguard::dev",
            %path,
            status = rejection.status().as_u16(),
            kind = ?rejection.kind(),
            reason = rejection.description().unwrap_or(match rejection.kind() {
                idguard::RejectionKind::MissingToken => "no bearer token",
                _ => "-",
            }),
            "refused"
        );
    }
    res
}

#[derive(Deserialize)]
struct AdminConsentAnswer {
    admin_consent: Option<String>,
    tenant: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /admin-consent`: where Entra sends an administrator after the admin-consent URL
/// (`idguard entra consent-url`). Only tells them how it went: nothing is recorded, and
/// the parameters (which anyone can forge) decide nothing.
async fn admin_consent_landing(Query(q): Query<AdminConsentAnswer>) -> Response {
    let e = idguard::internals::escape;
    let (status, title, body) = match (&q.error, q.admin_consent.as_deref()) {
        (None, Some(yes)) if yes.eq_ignore_ascii_case("true") => (
            StatusCode::OK,
            "Consent granted",
            format!(
                "<p>Consent is recorded for tenant <code>{}</code>. Users of that tenant can now sign in; you can close this page.</p>",
                e(q.tenant.as_deref().unwrap_or("?"))
            ),
        ),
        (Some(error), _) => (
            StatusCode::BAD_REQUEST,
            "Consent not granted",
            format!(
                "<p>Entra answered <code>{}</code>: {}</p>",
                e(error),
                e(q.error_description.as_deref().unwrap_or(""))
            ),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "No consent answer",
            "<p>This page shows the outcome of an administrator's consent (<code>idguard entra consent-url</code>).</p>".to_owned(),
        ),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"
    );
    (
        status,
        [
            (http::header::CACHE_CONTROL, "no-store"),
            (http::header::X_FRAME_OPTIONS, "DENY"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ],
        axum::response::Html(html),
    )
        .into_response()
}
