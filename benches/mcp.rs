//! MCP interception, in process, in one run: one `tools/call` through the full stack
//! (`ValidateTokenLayer` + `AuthorizeMcpLayer`, warm token cache) against the bare inner
//! service, with the decision answered from the call-decision cache (the sample policies)
//! and evaluated every time (the same policies plus one that reads `context.now`); and a 1000-tool `tools/list` reply filtered for a caller, as JSON and as SSE,
//! against the bare service returning it unfiltered.
//!
//! `cargo bench --bench mcp`
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "bench setup fails loudly"
)]

use std::convert::Infallible;
use std::path::Path;

use axum::body::Body;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use idguard::IdGuard;
use idguard::policy::PolicyEngine;
use idguard_dev::DevEntra;
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};

fn tool_list(n: usize) -> String {
    let tools: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "name": format!("tool_{i:03}"),
                "description": "A generated tool that does one small thing.",
                "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]},
                "annotations": {"readOnlyHint": i % 2 == 0}
            })
        })
        .chain([json!({"name": "whoami", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}})])
        .collect();
    json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string()
}

/// A trivial MCP service: answers `tools/list` with `list`, anything else with a small result.
fn inner(
    list: Bytes,
    sse: bool,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let call = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#,
    );
    tower::service_fn(move |req: Request<Body>| {
        let (list, call) = (list.clone(), call.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let listing = body.windows(10).any(|w| w == b"tools/list");
            let payload = if listing { list } else { call };
            let res = if sse {
                let mut framed = b"data: ".to_vec();
                framed.extend_from_slice(&payload);
                framed.extend_from_slice(b"\n\n");
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(framed))
            } else {
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(payload))
            };
            Ok::<_, Infallible>(res.unwrap())
        }
    })
}

fn request(token: &str, body: &str) -> Request<Body> {
    Request::post("/mcp")
        .header("host", "mcp.contoso.example")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn run<S>(svc: &S, token: &str, body: &'static str) -> Bytes
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let res = ServiceExt::oneshot(svc.clone(), request(token, body))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (entra, guard, token) = rt.block_on(async {
        let entra = DevEntra::builder().start().await.unwrap();
        let guard = IdGuard::builder()
            .authority(entra.url())
            .tenant(entra.tenant_id())
            .client_id(entra.api_client_id())
            .resource("https://mcp.contoso.example/mcp")
            .build()
            .await
            .unwrap();
        let token = entra.token_for("bob").unwrap().mint().unwrap();
        (entra, guard, token)
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policies = PolicyEngine::from_dir(&dir).unwrap();
    // A policy that reads the clock makes every decision it can apply to uncacheable.
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.push((
        "clock.cedar".into(),
        "@id(\"clock\")\nforbid (principal, action, resource) when { context.now < 0 };\n".into(),
    ));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let uncached = PolicyEngine::from_sources(
        &read("schema.cedarschema"),
        Some(&read("arguments.cedarschema")),
        files.iter().map(|(n, s)| (n.as_str(), s.as_str())),
    )
    .unwrap();
    let list = Bytes::from(tool_list(1000));
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let list_req = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    let mut g = c.benchmark_group("mcp");
    for sse in [false, true] {
        let bare = inner(list.clone(), sse);
        let stack = ServiceBuilder::new()
            .layer(guard.validate_token_layer())
            .layer(guard.authorize_mcp_layer(policies.clone()))
            .service(inner(list.clone(), sse));
        // Warm the token cache, the tool catalog and the list decisions.
        let filtered = rt.block_on(run(&stack, &token, list_req));
        assert!(
            filtered.len() < list.len() / 2 + 1000,
            "the list is filtered"
        );
        let reply = rt.block_on(run(&stack, &token, call));
        let reply = String::from_utf8_lossy(&reply);
        let answer: serde_json::Value =
            serde_json::from_str(reply.trim_start_matches("data: ").trim()).unwrap();
        assert!(
            answer.get("result").is_some(),
            "the call is allowed and answered: {reply}"
        );
        let kind = if sse { "sse" } else { "json" };
        if !sse {
            g.bench_function("call_bare", |b| {
                b.to_async(&rt).iter(|| run(&bare, &token, call))
            });
            g.bench_function("call_full_stack", |b| {
                b.to_async(&rt).iter(|| run(&stack, &token, call))
            });
            let evaluating = ServiceBuilder::new()
                .layer(guard.validate_token_layer())
                .layer(guard.authorize_mcp_layer(uncached.clone()))
                .service(inner(list.clone(), sse));
            rt.block_on(run(&evaluating, &token, list_req));
            rt.block_on(run(&evaluating, &token, call));
            g.bench_function("call_full_stack_uncached", |b| {
                b.to_async(&rt).iter(|| run(&evaluating, &token, call))
            });
        }
        g.bench_function(format!("list_1000_bare_{kind}"), |b| {
            b.to_async(&rt).iter(|| run(&bare, &token, list_req))
        });
        g.bench_function(format!("list_1000_filtered_{kind}"), |b| {
            b.to_async(&rt).iter(|| run(&stack, &token, list_req))
        });
    }
    g.finish();
    assert!(
        policies.stats().call_cached > 0,
        "the cached stack used the cache"
    );
    assert_eq!(
        uncached.stats().call_cached,
        0,
        "the clock policy disables the cache"
    );
    drop(entra);
}

criterion_group!(benches, bench);
criterion_main!(benches);
