//! The cost of an identity assertion for the upstream (`[upstream] credential =
//! "identity_assertion"`): a cache hit (the same caller again; target ≤ 5 µs) and a miss
//! (signing ES256). And of `token_exchange` (RFC 8693): a cache hit (the digest of the
//! caller's token and a moka lookup) and a miss against a minimal in-process token
//! endpoint on loopback (the HTTP round trip and the answer's checks).
//!
//! `cargo bench --bench upstream`
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use idguard::Principal;
use idguard::gateway::{IdentityAssertion, TokenExchange};
use serde_json::json;

fn caller(i: u64) -> Principal {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    Principal::from_unvalidated_claims(&json!({
        "exp": exp,
        "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "oid": format!("00000000-0000-4000-8000-{i:012}"),
        "sub": "s",
        "name": "Alice Example",
        "preferred_username": "alice@contoso.com",
        "scp": "mcp.tools",
        "roles": ["Tools.Read", "Tools.Admin"],
        "groups": ["g1", "g2", "g3"],
        "azp": "8c1a5e6f-0000-4000-8000-000000000002",
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let signer =
        IdentityAssertion::generate("https://mcp.contoso.com/mcp", "api://upstream-app").unwrap();
    let alice = caller(1);
    signer.header_for(&alice).unwrap();
    c.bench_function("identity_assertion/cache_hit", |b| {
        b.iter(|| signer.header_for(&alice).unwrap());
    });
    let mut i = 100u64;
    c.bench_function("identity_assertion/sign", |b| {
        b.iter_batched(
            || {
                i += 1;
                caller(i)
            },
            |p| signer.header_for(&p).unwrap(),
            BatchSize::SmallInput,
        );
    });
    token_exchange(c);
}

/// A token endpoint that answers every exchange with the same RFC 8693 success.
async fn endpoint() -> String {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(|| async {
            axum::Json(json!({
                "access_token": "eyJ.upstream-token.sig",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": 3600,
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn token_exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(endpoint());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let exchange = TokenExchange::new(&url)
        .unwrap()
        .with_audience("urn:contoso:upstream")
        .with_scopes(["tools.read"]);
    let alice = caller(1);
    // A subject token of a realistic size (an Entra access token is 1-2 KB).
    let subject = format!("eyJ{}", "x".repeat(1400));
    rt.block_on(exchange.header_for(&http, &alice, &subject))
        .unwrap();
    let mut g = c.benchmark_group("token_exchange");
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            exchange
                .header_for(&http, black_box(&alice), black_box(&subject))
                .now_or_never()
                .unwrap()
                .unwrap()
        });
    });
    let mut i = 0u64;
    g.sample_size(30);
    g.bench_function("miss_loopback_endpoint", |b| {
        b.iter_batched(
            || {
                i += 1;
                format!("eyJ{i}{}", "x".repeat(1400))
            },
            |t| rt.block_on(exchange.header_for(&http, &alice, &t)).unwrap(),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
