//! The cost of an idguard-issued access token (OAuth proxy) against a direct Entra token,
//! both through the validated-token cache, in one run: the proxy path adds an HMAC check,
//! a state-store lookup and the unsealing of the session's Entra token.
//!
//! With the `redis` feature and `redis-server` installed, the same token with its session
//! in Redis, read on every validation and through the local session cache.
//!
//! `cargo bench --bench oauth` (`--features redis` for the Redis figures)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "bench setup fails loudly"
)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use idguard::obo::Secret;
use idguard::{IdGuard, OAuthConfig, OboConfig};
use idguard_dev::DevEntra;
use serde_json::{Value, json};

const REDIRECT: &str = "http://127.0.0.1:33418/callback";

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Registers a client and signs alice in through the proxy: an idguard access token.
async fn sign_in(base: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let reg: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    let verifier = "bench-verifier-0123456789abcdefghijklmnopqrstuvwxyz".to_owned();
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let authorize = reqwest::Url::parse_with_params(
        &format!("{base}/authorize"),
        [
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    let res = http.get(authorize).send().await.unwrap();
    let csrf_cookie = res.headers()["set-cookie"].to_str().unwrap();
    let csrf_cookie = csrf_cookie.split(';').next().unwrap().to_owned();
    let page = res.text().await.unwrap();
    let res = http
        .post(format!("{base}/consent"))
        .header("cookie", &csrf_cookie)
        .form(&[
            ("txn", hidden(&page, "txn")),
            ("csrf", hidden(&page, "csrf")),
            ("decision", "approve".into()),
        ])
        .send()
        .await
        .unwrap();
    let binding = res.headers()["set-cookie"].to_str().unwrap();
    let binding = binding.split(';').next().unwrap().to_owned();
    let entra = res.headers()["location"].to_str().unwrap().to_owned();
    let res = http.get(entra).send().await.unwrap();
    let callback = res.headers()["location"].to_str().unwrap().to_owned();
    let res = http
        .get(callback)
        .header("cookie", binding)
        .send()
        .await
        .unwrap();
    let back = query(res.headers()["location"].to_str().unwrap());
    let tokens: Value = http
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", back["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// A guard with the OAuth proxy on `entra` (its state in Redis with `store`), serving its
/// routes on loopback, and an idguard access token for alice.
async fn proxy(entra: &DevEntra, store: Option<idguard::StoreConfig>) -> (IdGuard, String) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    entra.allow_redirect_uri(format!("{base}/callback"));
    let mut builder = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"))
        .required_scopes(["mcp.tools"])
        .obo(OboConfig {
            client_secret: Some(Secret::new(entra.client_secret())),
            apis: BTreeMap::new(),
            ..OboConfig::default()
        })
        .oauth(OAuthConfig {
            keys: vec![Secret::new("bench-proxy-key-0123456789abcdef-0123456789")],
            ..OAuthConfig::default()
        });
    if let Some(store) = store {
        builder = builder.store(store);
    }
    let guard = builder.build().await.unwrap();
    let app = guard.oauth_router::<()>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let token = sign_in(&base).await;
    (guard, token)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, guard, proxied, direct) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        entra.set_sign_in_user(Some("alice")).unwrap();
        let (guard, proxied) = proxy(&entra, None).await;
        let direct = entra.token_for("alice").unwrap().mint().unwrap();
        (entra, guard, proxied, direct)
    });
    let mut g = c.benchmark_group("oauth");
    g.bench_function("entra_token_warm", |b| {
        b.iter(|| {
            guard
                .validate(black_box(&direct))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("proxy_token_warm", |b| {
        b.iter(|| {
            guard
                .validate(black_box(&proxied))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    #[cfg(feature = "redis")]
    on_redis(&mut g, &rt, &entra);
    g.finish();
    drop(entra);
}

/// The same token with the session in a real Redis server on loopback: read on every
/// validation (`store.session_cache_ttl = "0s"`), and from the local session cache (the
/// default 5 s). `proxy_token_warm` (the in-memory store) is the baseline of the same run.
#[cfg(feature = "redis")]
fn on_redis(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    entra: &DevEntra,
) {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "oauth bench: redis-server is not installed; skipping proxy_token_redis_* (Debian: apt-get install redis-server)"
        );
        return;
    }
    let server = redis_server::RedisServer::start();
    let store = |ttl: &str| idguard::StoreConfig {
        redis_url: Some(server.url()),
        session_cache_ttl: Some(ttl.into()),
        ..idguard::StoreConfig::default()
    };
    let (uncached, uncached_token) = rt.block_on(proxy(entra, Some(store("0s"))));
    let (cached, cached_token) = rt.block_on(proxy(entra, Some(store("5s"))));
    g.bench_function("proxy_token_redis_uncached", |b| {
        b.to_async(rt)
            .iter(|| async { uncached.validate(black_box(&uncached_token)).await.unwrap() })
    });
    g.bench_function("proxy_token_redis_cached", |b| {
        b.to_async(rt)
            .iter(|| async { cached.validate(black_box(&cached_token)).await.unwrap() })
    });
}

#[cfg(feature = "redis")]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

criterion_group!(benches, bench);
criterion_main!(benches);
