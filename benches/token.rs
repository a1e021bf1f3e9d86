//! Token validation: raw jsonwebtoken RS256 decode (the baseline) against idguard's
//! validation with a cold (disabled) and a warm validated-token cache, in one run.
//!
//! `cargo bench --bench token`

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "bench setup fails loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use idguard::IdGuard;
use idguard_dev::DevEntra;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a hand-written Entra validator typically decodes.
#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are decoded, not read")]
struct EntraClaims {
    iss: String,
    aud: String,
    exp: u64,
    nbf: u64,
    tid: String,
    oid: String,
    sub: String,
    ver: String,
    azp: Option<String>,
    scp: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
    name: Option<String>,
    preferred_username: Option<String>,
}

fn bench(c: &mut Criterion) {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, warm, cold, token, key) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        let build = |capacity| {
            IdGuard::builder()
                .authority(entra.url())
                .tenant(entra.tenant_id())
                .client_id(entra.api_client_id())
                .resource("https://mcp.contoso.example/mcp")
                .with_cache_capacity(capacity)
                .build()
        };
        let warm = build(10_000).await.unwrap();
        let cold = build(0).await.unwrap();
        let token = entra.token_for("alice").unwrap().mint().unwrap();
        let jwks: serde_json::Value = reqwest::get(format!(
            "{}/{}/discovery/v2.0/keys",
            entra.url(),
            entra.tenant_id()
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let k = &jwks["keys"][0];
        let key =
            DecodingKey::from_rsa_components(k["n"].as_str().unwrap(), k["e"].as_str().unwrap())
                .unwrap();
        (entra, warm, cold, token, key)
    });
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[entra.api_client_id()]);
    validation.set_issuer(&[entra.issuer_v2(entra.tenant_id())]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);

    let mut g = c.benchmark_group("token");
    g.bench_function("jsonwebtoken_decode_baseline", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<EntraClaims>(black_box(&token), &key, &validation).unwrap()
        })
    });
    g.bench_function("idguard_validate_cold", |b| {
        b.iter(|| {
            cold.validate(black_box(&token))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("idguard_validate_warm", |b| {
        b.iter(|| {
            warm.validate(black_box(&token))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
    drop(entra);
}

criterion_group!(benches, bench);
criterion_main!(benches);
