//! Policy decisions: one call-phase `decide` with the sample policies and with 200 more
//! generated ones (a tool whose policies read the arguments: always evaluated); the same
//! decision for a tool whose policies do not, evaluated (a new caller each time) and
//! answered from the call-decision cache; filtering 100 and 1000 tools for one caller, cold
//! (new caller) and warm (cached decisions), in one run.
//!
//! The same decisions with a shadow policy set (`*_shadow`: every decision also put to a
//! second copy of the policies, which agrees) and with a live-trace listener attached
//! (`*_listener`), next to the plain ones: the shadow set may cost at most another
//! decision (≤ 2.2×), and without either the plain figures must not move.
//!
//! `cargo bench --bench policy`
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "bench setup fails loudly"
)]

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use idguard::Principal;
use idguard::policy::cases::load_tools;
use idguard::policy::{Item, Phase, PolicyEngine, ToolInfo};
use serde_json::json;

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// Two engines over the same sources: plain, and with a shadow copy of them.
fn engines() -> (PolicyEngine, PolicyEngine, PolicyEngine, PolicyEngine) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let samples = PolicyEngine::from_dir(&dir).unwrap();
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    let generated: String = (0..200)
        .map(|i| {
            format!(
                "@id(\"generated-{i}\")\npermit (principal in Role::\"Role.{i}\", action == Action::\"call_tool\", resource == Tool::\"tool_{i:03}\");\n"
            )
        })
        .collect();
    files.push(("generated.cedar".into(), generated));
    let schema = read(&dir, "schema.cedarschema");
    let arguments = read(&dir, "arguments.cedarschema");
    let from_sources = || {
        PolicyEngine::from_sources(
            &schema,
            Some(&arguments),
            files.iter().map(|(n, s)| (n.as_str(), s.as_str())),
        )
        .unwrap()
    };
    let large = from_sources();
    let samples_shadow = PolicyEngine::from_dir(&dir)
        .unwrap()
        .with_shadow(PolicyEngine::from_dir(&dir).unwrap());
    let large_shadow = from_sources().with_shadow(from_sources());
    (samples, large, samples_shadow, large_shadow)
}

fn caller(oid: &str) -> Principal {
    Principal::from_unvalidated_claims(&json!({
        "ver": "2.0", "tid": "b0f1a3c2-7d4e-4f6a-9c8b-1e2d3f4a5b6c", "oid": oid,
        "scp": "mcp.tools", "roles": ["Tools.Read"], "groups": ["3a9f7c1e-5b2d-4e8a-9c6f-1d0e2b3a4c5d"],
        "amr": ["pwd", "mfa"], "azp": "0c5e2f1a-3b4d-4c6e-8f7a-9b0c1d2e3f4a", "name": "Bench", "exp": 4_000_000_000u64
    }))
    .unwrap()
}

fn tools(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let mut t = ToolInfo::new(format!("tool_{i:03}")).read_only(i % 2 == 0);
            t.tags = vec!["bench".into()];
            Item::Tool(t)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (samples, large, samples_shadow, large_shadow) = engines();
    // A listener on its own engine, never read: events are built and dropped.
    let listened =
        PolicyEngine::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    let _listener = listened.trace();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let transfer = Item::Tool(load_tools(&dir).unwrap()["transfer_funds"].clone());
    let args = json!({"amount": 250, "to": "ACME"});
    let args = args.as_object();
    let bob = caller("b0b");

    let mut g = c.benchmark_group("policy");
    g.bench_function("decide_call_samples", |b| {
        b.iter(|| black_box(samples.decide(&bob, &transfer, Phase::Call, args)))
    });
    g.bench_function("decide_call_samples_shadow", |b| {
        b.iter(|| black_box(samples_shadow.decide(&bob, &transfer, Phase::Call, args)))
    });
    g.bench_function("decide_call_samples_listener", |b| {
        b.iter(|| black_box(listened.decide(&bob, &transfer, Phase::Call, args)))
    });
    g.bench_function("decide_call_samples_plus_200", |b| {
        b.iter(|| black_box(large.decide(&bob, &transfer, Phase::Call, args)))
    });
    let next = AtomicU64::new(0);
    let read = Item::Tool(load_tools(&dir).unwrap()["read_document"].clone());
    g.bench_function("decide_call_evaluated", |b| {
        b.iter_batched(
            || caller(&format!("call-{}", next.fetch_add(1, Ordering::Relaxed))),
            |p| black_box(samples.decide(&p, &read, Phase::Call, None)),
            BatchSize::SmallInput,
        )
    });
    assert!(samples.decide(&bob, &read, Phase::Call, None).is_allow());
    let before = samples.stats().call_cached;
    assert!(samples.decide(&bob, &read, Phase::Call, None).is_allow());
    assert!(samples.stats().call_cached > before, "the cache answers");
    g.bench_function("decide_call_cached", |b| {
        b.iter(|| black_box(samples.decide(&bob, &read, Phase::Call, None)))
    });
    g.bench_function("decide_call_cached_shadow", |b| {
        b.iter(|| black_box(samples_shadow.decide(&bob, &read, Phase::Call, None)))
    });
    g.bench_function("decide_call_cached_listener", |b| {
        b.iter(|| black_box(listened.decide(&bob, &read, Phase::Call, None)))
    });
    for n in [100, 1000] {
        let items = tools(n);
        g.bench_function(format!("list_{n}_tools_cold"), |b| {
            b.iter_batched(
                || caller(&format!("cold-{}", next.fetch_add(1, Ordering::Relaxed))),
                |p| black_box(large.visible(&p, &items)),
                BatchSize::SmallInput,
            )
        });
        large.visible(&bob, &items);
        g.bench_function(format!("list_{n}_tools_warm"), |b| {
            b.iter(|| black_box(large.visible(&bob, &items)))
        });
        large_shadow.visible(&bob, &items);
        g.bench_function(format!("list_{n}_tools_warm_shadow"), |b| {
            b.iter(|| black_box(large_shadow.visible(&bob, &items)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
