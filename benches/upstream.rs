//! The cost of an identity assertion for the upstream (`[upstream] credential =
//! "identity_assertion"`): a cache hit (the same caller again; target ≤ 5 µs) and a miss
//! (signing ES256).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark")]

use criterion::{Criterion, criterion_group, criterion_main};
use idguard::Principal;
use idguard::gateway::IdentityAssertion;
use serde_json::json;

fn caller(i: u64) -> Principal {
    Principal::from_unvalidated_claims(&json!({
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
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
