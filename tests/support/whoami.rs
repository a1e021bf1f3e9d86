//! A client of the whoami upstream (`tests/upstreams/whoami_server.py`, the official MCP
//! Python SDK and PyJWT: its `whoami` tool verifies the bearer token it received and
//! reports it) through an MCP endpoint. Start the server with `python_server.rs`.
//!
//! Include it with `#[path = "…/tests/support/whoami.rs"] mod whoami;` beside
//! `python_server.rs` (at the test crate's root).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fixture fails loudly; each test binary uses a different part"
)]

use serde_json::{Value, json};

/// Through the MCP endpoint `url` as `token`: `initialize`, then `tools/call whoami`. The
/// status of the first refusal (with its body) or 200 with the tool's structured answer.
pub async fn call_whoami(url: &str, token: &str) -> (u16, Value) {
    let http = crate::python_server::loopback_client();
    let post = |body: Value| {
        http.post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body)
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .send()
    .await
    .unwrap();
    if init.status() != 200 {
        return (init.status().as_u16(), json!(init.text().await.unwrap()));
    }
    let res = post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}}))
    .send()
    .await
    .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!(text));
    let answer = v["result"]["structuredContent"].clone();
    let answer = if answer.is_null() {
        v["result"]["content"][0]["text"]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(v)
    } else {
        answer
    };
    (status, answer)
}
