//! The whoami upstream (`tests/upstreams/whoami_server.py`, the official MCP Python SDK and
//! PyJWT): an MCP server whose `whoami` tool verifies the bearer token it received and
//! reports it. Started on a free loopback port, killed on drop.
//!
//! Include it with `#[path = "…/tests/support/whoami.rs"] mod whoami;`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fixture fails loudly; each test binary uses a different part"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The whoami upstream, killed on drop.
pub struct Whoami {
    child: Child,
    port: u16,
}

impl Drop for Whoami {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Whoami {
    /// Starts the server from the repository at `root` with `env` (`WHOAMI_AUDIENCE`,
    /// `WHOAMI_JWKS_URL`, `WHOAMI_STATIC_HEADER`); returns once it listens.
    pub fn start(root: &Path, env: &[(&str, &str)]) -> Whoami {
        let mut child = Command::new("python3")
            .arg("tests/upstreams/whoami_server.py")
            .current_dir(root)
            .env("PYTHONUNBUFFERED", "1")
            .env("IDGUARD_EXIT_ON_STDIN_EOF", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 with `mcp` and PyJWT: pip install -r tests/mcp_client/requirements.txt",
            );
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.trim().strip_prefix("listening on 127.0.0.1:") {
                    let _ = tx.send(p.parse::<u16>().unwrap());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the whoami upstream did not start");
        Whoami { child, port }
    }

    /// Its MCP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Every raw bearer token it has received.
    pub async fn bearers(&self) -> Vec<String> {
        let v: Value = client()
            .get(format!("http://127.0.0.1:{}/_probe/bearers", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["bearers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_owned())
            .collect()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Through the MCP endpoint `url` as `token`: `initialize`, then `tools/call whoami`. The
/// status of the first refusal (with its body) or 200 with the tool's structured answer.
pub async fn call_whoami(url: &str, token: &str) -> (u16, Value) {
    let http = client();
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
