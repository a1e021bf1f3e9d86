//! A real `redis-server` for tests: started on a free loopback port, stopped on drop, and
//! restartable on the same port (to test a store that goes away and comes back).
//!
//! Include it with `#[path = "…/tests/support/redis_server.rs"] mod redis_server;` from the
//! library's and the binary's tests. `.ci/run` installs `redis-server` (Debian) when it is
//! missing.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fixture fails loudly; each test binary uses a different part"
)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `redis-server` on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// TLS only (`rediss://`): the server's certificate chain and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

impl RedisServer {
    /// Starts a server with no persistence on a free loopback port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// Starts a server that speaks only TLS, with the certificate `cert` (PEM, for
    /// `127.0.0.1`) and its key `key`; clients are not asked for certificates.
    pub fn start_tls(cert: &Path, key: &Path) -> RedisServer {
        RedisServer::start_with(Some((cert.to_owned(), key.to_owned())))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> RedisServer {
        let port = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            tls,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs), and returns
    /// once it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-auth-clients", "no", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        let mut child = command
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "notice",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/run installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("redis-server did not start on port {}", self.port);
        }
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
