//! On-behalf-of: a cache hit (the hot path of every downstream call after the first) and a
//! miss against the dev Entra emulator over loopback HTTP (one token request, with the
//! emulator's RS256 verification of the assertion and signing of the downstream token).
//!
//! With the `redis` feature and `redis-server` on the `PATH`, the second level too: a
//! first-level miss served from Redis (a real `redis-server` on loopback: one `GET`, the
//! token opened with AES-256-GCM) against a first-level hit, in the same run.
//!
//! `cargo bench --bench obo` (`--features redis` for the second level)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "bench setup fails loudly"
)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use idguard::obo::{BearerToken, Secret};
use idguard::{IdGuard, OboConfig};
use idguard_dev::DevEntra;

fn obo_config(entra: &DevEntra) -> OboConfig {
    OboConfig {
        client_secret: Some(Secret::new(entra.client_secret())),
        apis: BTreeMap::from([(
            "graph".to_owned(),
            vec!["https://graph.microsoft.com/.default".to_owned()],
        )]),
        ..OboConfig::default()
    }
}

fn guard_with(entra: &DevEntra, obo: OboConfig) -> idguard::IdGuardBuilder {
    IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource("https://mcp.contoso.example/mcp")
        .obo(obo)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, guard, principal, token) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        let guard = guard_with(&entra, obo_config(&entra))
            .build()
            .await
            .unwrap();
        let token = entra.token_for("alice").unwrap().mint().unwrap();
        let principal = guard.validate(&token).await.unwrap();
        (entra, guard, principal, token)
    });
    let obo = guard.obo_client().unwrap().clone();
    let assertion = BearerToken::new(token.clone());
    // Warm the cache.
    rt.block_on(obo.token_for(&principal, &assertion, "graph"))
        .unwrap();

    let mut g = c.benchmark_group("obo");
    // Behind ValidateTokenLayer the assertion's SHA-256 comes from the validated-token
    // cache, so a hit costs the cache-key digest and the moka lookup.
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            obo.token_for(black_box(&principal), black_box(&assertion), "graph")
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("cache_hit_digest_not_precomputed", |b| {
        // A BearerToken made outside the layer: the assertion's SHA-256 is computed here.
        b.iter_batched(
            || BearerToken::new(token.clone()),
            |t| {
                obo.token_for(black_box(&principal), &t, "graph")
                    .now_or_never()
                    .unwrap()
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.sample_size(30);
    g.bench_function("miss_against_emulator", |b| {
        b.iter_batched(
            || {
                let t = entra.token_for("alice").unwrap().mint().unwrap();
                let p = rt.block_on(guard.validate(&t)).unwrap();
                (p, BearerToken::new(t))
            },
            |(p, t)| rt.block_on(obo.token_for(&p, &t, "graph")).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(entra);
}

/// A first-level hit against a second-level hit (first-level miss, Redis hit), both through
/// the async runtime so the comparison is like for like.
#[cfg(feature = "redis")]
fn bench_second_level(c: &mut Criterion) {
    #[path = "../tests/support/redis_server.rs"]
    mod redis_server;

    let present = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("obo/second_level: skipped, `redis-server` is not on the PATH");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = redis_server::RedisServer::start();
    let (entra, first, second, principal, assertion) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        // Two replicas on one Redis; the second keeps nothing in its first level.
        let replica = |capacity: u64| {
            let (url, entra) = (redis.url(), &entra);
            async move {
                let connection = redis::Client::open(url)
                    .unwrap()
                    .get_connection_manager()
                    .await
                    .unwrap();
                let shared = idguard::obo::SharedTokenCache::new(
                    connection,
                    "bench:",
                    &[Secret::new("0123456789abcdef0123456789abcdef")],
                    std::time::Duration::from_secs(1),
                )
                .unwrap();
                let mut obo = obo_config(entra);
                obo.cache_capacity = Some(capacity);
                guard_with(entra, obo)
                    .obo_shared_cache(shared)
                    .build()
                    .await
                    .unwrap()
            }
        };
        let first = replica(idguard::obo::DEFAULT_OBO_CACHE_CAPACITY).await;
        let second = replica(0).await;
        let token = entra.token_for("alice").unwrap().mint().unwrap();
        let principal = first.validate(&token).await.unwrap();
        (entra, first, second, principal, BearerToken::new(token))
    });
    let (first, second) = (
        first.obo_client().unwrap().clone(),
        second.obo_client().unwrap().clone(),
    );
    rt.block_on(async {
        first
            .token_for(&principal, &assertion, "graph")
            .await
            .unwrap();
        second
            .token_for(&principal, &assertion, "graph")
            .await
            .unwrap();
        second
            .token_for(&principal, &assertion, "graph")
            .await
            .unwrap();
    });
    assert_eq!(
        second.stats().shared_hits,
        2,
        "the second replica reads Redis"
    );
    assert_eq!(entra.requests(idguard_dev::DevEndpoint::Token), 1);

    let mut g = c.benchmark_group("obo/second_level");
    g.bench_function("first_level_hit", |b| {
        b.to_async(&rt).iter(|| async {
            first
                .token_for(black_box(&principal), black_box(&assertion), "graph")
                .await
                .unwrap()
        })
    });
    g.bench_function("second_level_hit", |b| {
        b.to_async(&rt).iter(|| async {
            second
                .token_for(black_box(&principal), black_box(&assertion), "graph")
                .await
                .unwrap()
        })
    });
    g.finish();
    drop(entra);
}

#[cfg(not(feature = "redis"))]
fn bench_second_level(_: &mut Criterion) {
    eprintln!("obo/second_level: skipped, build with `--features redis`");
}

criterion_group!(benches, bench, bench_second_level);
criterion_main!(benches);
