//! An axum API behind `ValidateTokenLayer`, with a `/me` route that returns the caller.
//!
//! Runs offline: it starts the dev Entra emulator on loopback, protects the API with
//! tokens from it, calls `/me` once with and once without a token to show both answers,
//! then serves until Ctrl-C.
//!
//! ```sh
//! cargo run --example axum_api
//! ```

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use idguard::{IdGuard, Principal};
use idguard_dev::DevEntra;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A local stand-in for Entra: discovery, keys, and tokens for demo users.
    let entra = DevEntra::builder().start().await?;

    // 2. The API listens on a free loopback port; its URL is the protected resource.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let base = format!("http://{}", listener.local_addr()?);

    // 3. The guard: returns once discovery and the signing keys are loaded.
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/api"))
        .build()
        .await?;

    // 4. Protected routes get `route_layer`; the metadata stays public.
    let app = Router::new()
        .route("/api/me", get(me))
        .route_layer(guard.validate_token_layer())
        .merge(guard.oauth_router());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });

    // 5. Try it: with alice's token, then without any.
    let token = entra.token_for("alice")?.mint()?;
    let http = reqwest::Client::new();
    let with = http
        .get(format!("{base}/api/me"))
        .bearer_auth(&token)
        .send()
        .await?;
    println!(
        "GET /api/me as alice -> {}\n{}\n",
        with.status(),
        with.text().await?
    );
    let without = http.get(format!("{base}/api/me")).send().await?;
    println!(
        "GET /api/me without a token -> {}\nWWW-Authenticate: {}\n",
        without.status(),
        without
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    );
    println!(
        "serving {base}/api/me until Ctrl-C; try:\n  curl -s {base}/api/me -H \"Authorization: Bearer {token}\""
    );
    server.await??;
    Ok(())
}

/// The caller, as validated by the layer. A route without the layer would answer 500.
async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}
