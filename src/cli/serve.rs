//! `idguard serve`: for now, dev mode — the dev Entra emulator plus a protected API.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};

use crate::dev::{DevEntra, DevEntraBuilder};
use crate::{IdGuard, Principal};

/// Options of `idguard serve`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// Port of the protected API on 127.0.0.1.
    #[arg(long, default_value_t = 8400)]
    port: u16,
    /// Port of the dev Entra emulator on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    entra_port: u16,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            port: 8400,
            entra_port: 0,
        }
    }
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    let entra = DevEntraBuilder::default()
        .addr(SocketAddr::from(([127, 0, 0, 1], args.entra_port)))
        .start()
        .await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e} (try --port)", args.port))?;
    let base = format!("http://{}", listener.local_addr()?);
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(&base)
        .build()
        .await?;

    let app = Router::new()
        .route("/me", get(|p: Principal| async move { Json(p) }))
        .route_layer(guard.validate_token_layer())
        .merge(guard.metadata_router());

    print_banner(&entra, &base)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn print_banner(entra: &DevEntra, base: &str) -> Result<(), Box<dyn Error>> {
    let lifetime = Duration::from_secs(8 * 3600);
    let alice = entra.token_for("alice")?.lifetime(lifetime).mint()?;
    let bob = entra.token_for("bob")?.lifetime(lifetime).mint()?;
    println!(
        "\
idguard dev mode: a local Entra emulator signs the tokens; nothing talks to Microsoft.

  dev Entra   {entra_url}  (tenant Contoso {tenant})
  protected   {base}/me
  metadata    {base}/.well-known/oauth-protected-resource

Tokens for the demo users (valid 8 h):

export ALICE={alice}
export BOB={bob}

Try:
  curl -s {base}/me -H \"Authorization: Bearer $ALICE\"
  curl -si {base}/me            # 401 with an RFC 9728 challenge

Ctrl-C stops.",
        entra_url = entra.url(),
        tenant = entra.tenant_id(),
    );
    Ok(())
}
