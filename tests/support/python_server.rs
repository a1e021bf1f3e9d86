//! A Python test server of `tests/upstreams/` (the MCP Python SDK upstreams, the RFC 8693
//! authorization server): started on a free loopback port, which it announces on stdout
//! (`listening on 127.0.0.1:PORT`), killed on drop (and it exits by itself when its stdin
//! closes).
//!
//! Include it with `#[path = "…/tests/support/python_server.rs"] mod python_server;` from the
//! library's and the binary's tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fixture fails loudly; each test binary uses a different part"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

/// A running Python server, killed on drop (or before, with [`PyServer::kill`]).
pub(crate) struct PyServer {
    child: Mutex<Child>,
    port: u16,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository's root (the library's tests run there, the binary's two levels below).
pub(crate) fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("tests/upstreams").is_dir())
        .unwrap_or(here)
        .to_path_buf()
}

impl PyServer {
    /// Runs `script` (relative to the repository's root) with `env` until it prints
    /// `listening on 127.0.0.1:PORT`.
    pub(crate) fn start(script: &str, env: &[(&str, &str)]) -> PyServer {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .current_dir(repo_root())
            .env("PYTHONUNBUFFERED", "1")
            .env("IDGUARD_EXIT_ON_STDIN_EOF", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect(
            "python3 with `mcp` and PyJWT: pip install -r tests/mcp_client/requirements.txt pyjwt cryptography",
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
            .unwrap_or_else(|_| panic!("{script} did not start"));
        PyServer {
            child: Mutex::new(child),
            port,
        }
    }

    /// Stops the server (a test of an upstream that goes away).
    pub(crate) fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path`: its JSON answer.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        loopback_client()
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST path` with `body`, which must answer `200`.
    pub(crate) async fn post_json(&self, path: &str, body: &Value) {
        let res = loopback_client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "POST {path}");
    }

    /// The whoami-style upstreams' record of every bearer token received
    /// (`GET /_probe/bearers`).
    pub(crate) async fn bearers(&self) -> Vec<String> {
        let v = self.get_json("/_probe/bearers").await;
        v["bearers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_owned())
            .collect()
    }
}

/// A client for loopback servers: no proxy, 20 s per request.
pub(crate) fn loopback_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}
