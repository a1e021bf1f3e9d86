//! On-behalf-of: a cache hit (the hot path of every downstream call after the first) and a
//! miss against the dev Entra emulator over loopback HTTP (one token request, with the
//! emulator's RS256 verification of the assertion and signing of the downstream token).
//!
//! `cargo bench --bench obo`

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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, guard, principal, token) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        let guard = IdGuard::builder()
            .authority(entra.url())
            .tenant(entra.tenant_id())
            .client_id(entra.api_client_id())
            .resource("https://mcp.contoso.example/mcp")
            .obo(OboConfig {
                client_secret: Some(Secret::new(entra.client_secret())),
                apis: BTreeMap::from([(
                    "graph".to_owned(),
                    vec!["https://graph.microsoft.com/.default".to_owned()],
                )]),
                ..OboConfig::default()
            })
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

criterion_group!(benches, bench);
criterion_main!(benches);
