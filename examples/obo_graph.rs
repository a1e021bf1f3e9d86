//! An axum route that calls Microsoft Graph `/me` on behalf of the caller (on-behalf-of).
//!
//! Runs offline: the dev Entra emulator issues the caller's token, exchanges it for a Graph
//! token at its token endpoint, and answers Graph's `/v1.0/me`. The example calls the
//! route as alice (her profile), as the `reporter` daemon app (refused: no user to act
//! for), and once more as alice (served from the caches), then serves until Ctrl-C.
//!
//! ```sh
//! cargo run --example obo_graph
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use idguard::obo::{Obo, Secret};
use idguard::{IdGuard, OboConfig, Rejection};
use idguard_dev::{DevEndpoint, DevEntra};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let entra = DevEntra::builder().start().await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let base = format!("http://{}", listener.local_addr()?);

    // The guard with `[obo]`: this API's credential, the downstream APIs by name, and
    // where Graph is (the emulator here; https://graph.microsoft.com by default).
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/api"))
        .obo(OboConfig {
            client_secret: Some(Secret::new(entra.client_secret())),
            apis: BTreeMap::from([(
                "graph".to_owned(),
                vec!["https://graph.microsoft.com/User.Read".to_owned()],
            )]),
            graph_url: Some(entra.graph_url()),
            ..OboConfig::default()
        })
        .build()
        .await?;

    let app = Router::new()
        .route("/api/profile", get(profile))
        .route_layer(guard.validate_token_layer())
        .merge(guard.oauth_router());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });

    let http = reqwest::Client::new();
    let alice = entra.token_for("alice")?.mint()?;
    let daemon = entra.app_token("reporter")?.mint()?;
    for (who, token) in [
        ("alice", &alice),
        ("reporter (app-only)", &daemon),
        ("alice again", &alice),
    ] {
        let res = http
            .get(format!("{base}/api/profile"))
            .bearer_auth(token)
            .send()
            .await?;
        println!(
            "GET /api/profile as {who} -> {}\n{}\n",
            res.status(),
            res.text().await?
        );
    }
    println!(
        "token endpoint calls: {}, Graph calls: {}",
        entra.requests(DevEndpoint::Token),
        entra.requests(DevEndpoint::Graph)
    );
    println!("serving {base}/api/profile until Ctrl-C");
    server.await??;
    Ok(())
}

/// The caller's Graph profile. `Obo` carries the caller, their token and the client; a
/// failure (consent, step-up, throttling) becomes its documented HTTP answer.
async fn profile(obo: Obo) -> Result<Json<serde_json::Value>, Rejection> {
    // For any downstream API: `let token = obo.token_for("graph").await?;`
    let me = obo.graph_me().await.map_err(|e| obo.rejection(&e))?;
    Ok(Json(me))
}
