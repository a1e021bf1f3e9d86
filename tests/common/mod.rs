//! Shared test fixtures: the dev Entra emulator and a protected axum app, both on
//! 127.0.0.1 port 0.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use idguard::{IdGuard, IdGuardBuilder, Principal};
use idguard_dev::DevEntra;

/// A running emulator, guard and protected app.
pub(crate) struct Stack {
    pub(crate) entra: DevEntra,
    pub(crate) guard: IdGuard,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

/// The default single-tenant (Contoso) stack.
pub(crate) async fn stack() -> Stack {
    stack_with(DevEntra::builder().start().await.unwrap(), |b| b).await
}

/// A stack on `entra` with the builder adjusted by `configure`.
pub(crate) async fn stack_with(
    entra: DevEntra,
    configure: impl FnOnce(IdGuardBuilder) -> IdGuardBuilder,
) -> Stack {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let builder = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/api"));
    let guard = configure(builder).build().await.unwrap();
    let app = Router::new()
        .route("/api/me", get(|p: Principal| async move { Json(p) }))
        .route_layer(guard.validate_token_layer())
        .merge(guard.oauth_router());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stack {
        entra,
        guard,
        base,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Stack {
    /// `GET /api/me` with `Authorization: Bearer <token>` when given.
    pub(crate) async fn me(&self, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}/api/me", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// The `WWW-Authenticate` value of a response.
    pub(crate) fn challenge(res: &reqwest::Response) -> String {
        res.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
