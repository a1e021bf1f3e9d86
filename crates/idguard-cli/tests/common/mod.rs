//! The harness the `idguard` binary's tests share: the binary (this build's, or another
//! named by a variable) without the caller's `IDGUARD_*` variables; a spawned process whose
//! output is read in the background and which is killed on drop; scratch directories with
//! the sample policies; ports, the lines the binary prints, polling; MCP requests; and the
//! demo tools as an upstream MCP server.
//!
//! Every wait polls a condition against a deadline: nothing sleeps for readiness.

#![allow(dead_code, reason = "each test file uses a part of the harness")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use idguard_dev::DevEntra;
use idguard_dev::demo::DemoServer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

/// This build's binary.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_idguard");

/// The repository root (the sample policies, the example configuration).
pub(crate) const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// How long a process may take to print an expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The sample policies, `policies/` at the repository root.
pub(crate) fn samples() -> PathBuf {
    Path::new(ROOT).join("policies")
}

/// The binary under test: the path in variable `var` when set (to compare with another
/// build), else this build's.
pub(crate) fn bin_from(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| BIN.to_owned())
}

/// This build's binary, with none of the caller's `IDGUARD_*` variables: they are
/// configuration, and a test must not depend on the shell it runs in.
pub(crate) fn idguard() -> Command {
    idguard_at(BIN)
}

/// The binary at `bin`, with none of the caller's `IDGUARD_*` variables.
pub(crate) fn idguard_at(bin: &str) -> Command {
    let mut command = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDGUARD_") {
            command.env_remove(name);
        }
    }
    command
}

// ------------------------------------------------------------------ scratch directories

/// A scratch directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub(crate) struct Workdir(PathBuf);

impl Workdir {
    /// An empty directory `idguard-{name}-{uuid}`.
    pub(crate) fn empty(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("idguard-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A directory whose `policies/` holds a copy of the sample policy files.
    pub(crate) fn with_policies(name: &str) -> Self {
        let dir = Self::empty(name);
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        copy_policy_files(&policies);
        dir
    }

    /// A copy of the whole sample policy directory (its `tests/` included).
    pub(crate) fn with_samples(name: &str) -> Self {
        let dir = Self::empty(name);
        copy_dir(&samples(), &dir);
        dir
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Replaces `old` by `new` in `file` (which must contain it).
    pub(crate) fn edit(&self, file: &str, old: &str, new: &str) {
        let path = self.0.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(old), "{file} has no {old:?}");
        std::fs::write(&path, text.replace(old, new)).unwrap();
    }

    /// Writes `text` to `file`.
    pub(crate) fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }

    /// Writes `idguard.toml` (see [`config_toml`]).
    pub(crate) fn config(&self, authority: &str, entra: &DevEntra, token: &str, server: &str) {
        self.write(
            "idguard.toml",
            &config_toml(authority, entra, token, server),
        );
    }
}

impl Deref for Workdir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Workdir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the sample policy files (not `tests/`) into `to`.
pub(crate) fn copy_policy_files(to: &Path) {
    for entry in std::fs::read_dir(samples()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Copies `from` into `to`, recursively.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// An `idguard.toml`: `[token]` against `authority` for `entra`'s tenant and dev API, with
/// the resource `http://127.0.0.1/mcp`, plus the `[token]` and `[server]` lines given.
pub(crate) fn config_toml(authority: &str, entra: &DevEntra, token: &str, server: &str) -> String {
    format!(
        "[token]\nauthority = \"{authority}\"\ntenant = \"{}\"\nclient_id = \"{}\"\nresource = \"http://127.0.0.1/mcp\"\n{token}\n\n[server]\n{server}\n",
        entra.tenant_id(),
        entra.api_client_id()
    )
}

// ------------------------------------------------------------------ the process

/// Lines of a stream, read in the background.
pub(crate) fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line of `rx` that satisfies `f`, within 60 s; `what` names it if none comes.
pub(crate) fn first_line(rx: &Receiver<String>, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if f(&line) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line {what}");
}

/// Where a spawned process's standard error goes.
#[derive(Debug)]
enum Stderr {
    /// Nowhere.
    Null,
    /// Lines, read in the background ([`Proc::stderr`]).
    Lines,
    /// A log file in the working directory, printed when a test fails.
    Log,
}

/// How to start an `idguard`: [`Launch::new`], options, then [`Launch::spawn`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Launch {
    bin: String,
    args: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    stderr: Stderr,
    workdir: Option<Workdir>,
}

impl Launch {
    /// This build's binary with `args`, in `cwd`, standard error discarded.
    pub(crate) fn new(args: &[&str], cwd: &Path) -> Self {
        Self {
            bin: BIN.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            cwd: cwd.to_path_buf(),
            env: Vec::new(),
            stderr: Stderr::Null,
            workdir: None,
        }
    }

    /// As [`Launch::new`], in `dir`, which is removed once the process is gone.
    pub(crate) fn in_dir(args: &[&str], dir: Workdir) -> Self {
        let mut launch = Self::new(args, dir.path());
        launch.workdir = Some(dir);
        launch
    }

    /// Runs the binary at `bin` instead of this build's.
    pub(crate) fn bin(mut self, bin: impl Into<String>) -> Self {
        self.bin = bin.into();
        self
    }

    /// Sets these variables (after the caller's `IDGUARD_*` ones are removed).
    pub(crate) fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }

    /// Reads standard error line by line ([`Proc::stderr`]).
    pub(crate) fn stderr_lines(mut self) -> Self {
        self.stderr = Stderr::Lines;
        self
    }

    /// Writes standard error to `idguard-{uuid}.log` in the working directory; it is
    /// printed when the process is dropped during a panic (a failing test).
    pub(crate) fn stderr_log(mut self) -> Self {
        self.stderr = Stderr::Log;
        self
    }

    /// Starts the process.
    pub(crate) fn spawn(self) -> Proc {
        let mut command = idguard_at(&self.bin);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut log = None;
        match self.stderr {
            Stderr::Null => command.stderr(Stdio::null()),
            Stderr::Lines => command.stderr(Stdio::piped()),
            Stderr::Log => {
                let path = self
                    .cwd
                    .join(format!("idguard-{}.log", uuid::Uuid::new_v4().simple()));
                let file = std::fs::File::create(&path).unwrap();
                log = Some(path);
                command.stderr(file)
            }
        };
        let mut child = command.spawn().unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = child.stderr.take().map(lines);
        Proc {
            child,
            out,
            err,
            log,
            _workdir: self.workdir,
        }
    }
}

/// A spawned `idguard`, killed on drop; its standard output is read in the background.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    out: Receiver<String>,
    err: Option<Receiver<String>>,
    log: Option<PathBuf>,
    /// Removed after the process is killed (fields drop after [`Drop::drop`]).
    _workdir: Option<Workdir>,
}

impl Proc {
    /// This build's binary with `args`, in `cwd`, standard error discarded.
    pub(crate) fn spawn(args: &[&str], cwd: &Path) -> Self {
        Launch::new(args, cwd).spawn()
    }

    /// The first standard output line starting with `prefix` (its remainder), within 60 s.
    pub(crate) fn line(&self, prefix: &str) -> String {
        let line = first_line(&self.out, &format!("starting with {prefix:?}"), |l| {
            l.starts_with(prefix)
        });
        line.strip_prefix(prefix).unwrap_or_default().to_owned()
    }

    /// Standard output, line by line.
    pub(crate) fn stdout(&self) -> &Receiver<String> {
        &self.out
    }

    /// Standard error, line by line (with [`Launch::stderr_lines`]).
    pub(crate) fn stderr(&self) -> &Receiver<String> {
        self.err
            .as_ref()
            .unwrap_or_else(|| panic!("standard error is read with Launch::stderr_lines"))
    }

    /// Sends SIGTERM; whether `kill` succeeded.
    pub(crate) fn sigterm(&self) -> bool {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    }

    /// Waits (blocking, at most `within`) for the process to exit.
    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "idguard did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `within`) for the process to exit.
    pub(crate) async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "idguard did not exit in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then a wait of at most `within` for the exit.
    pub(crate) async fn terminate(&mut self, within: Duration) -> ExitStatus {
        assert!(self.sigterm());
        self.exited(within).await
    }

    /// Waits (blocking, at most `within`) for the process to end by itself: its status and
    /// standard error (with [`Launch::stderr_lines`]).
    pub(crate) fn ended(mut self, within: Duration) -> (ExitStatus, String) {
        let status = self.wait(within);
        let mut err = Vec::new();
        while let Ok(line) = self.stderr().recv_timeout(Duration::from_secs(5)) {
            err.push(line);
        }
        (status, err.join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = &self.log
            && std::thread::panicking()
        {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("---- idguard log ----\n{log}---- end ----");
        }
    }
}

// ------------------------------------------------------------------ addresses and waiting

/// A port free right now on 127.0.0.1 (for a process whose port must be known before it
/// prints anything).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The base URL in a `idguard: demo tools at <base>/mcp` or `gateway <base>/mcp -> …` line
/// (after the prefix).
pub(crate) fn base_of(line: &str) -> String {
    line.split(" -> ")
        .next()
        .unwrap()
        .trim_end_matches("/mcp")
        .to_owned()
}

/// The address of an MCP URL `http://<addr>/mcp`.
pub(crate) fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/mcp"))
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `check` until it returns `Some`, for at most `within`.
pub(crate) async fn until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET {base}/healthz`, as JSON.
pub(crate) async fn health(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET {base}/metrics`, the Prometheus text.
pub(crate) async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ------------------------------------------------------------------ MCP over HTTP

/// A POST of the JSON-RPC `body` to the MCP endpoint `url` with `token`, as an MCP client
/// sends it (JSON or SSE accepted, protocol version 2025-06-18).
pub(crate) fn mcp_post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    http.post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
}

/// The JSON-RPC messages of a reply body: each SSE `data:` that is JSON, then the whole
/// body if it is JSON.
pub(crate) fn messages(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .chain(std::iter::once(text))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
}

/// The first JSON-RPC message of the reply to `body`.
pub(crate) async fn mcp(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Value {
    let text = mcp_post(http, url, token, body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    messages(&text)
        .next()
        .unwrap_or_else(|| panic!("no JSON-RPC reply: {text}"))
}

/// The names of the tools `token`'s caller is shown (`tools/list`, answered `200`).
pub(crate) async fn tool_names(http: &reqwest::Client, url: &str, token: &str) -> BTreeSet<String> {
    let res = mcp_post(
        http,
        url,
        token,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "{:?} {token:.20}", res.headers());
    let text = res.text().await.unwrap();
    let reply = messages(&text)
        .find(|v| v["id"] == 1)
        .unwrap_or_else(|| panic!("no tools/list reply: {text}"));
    reply["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------ an upstream MCP server

/// The demo tools as a streamable HTTP MCP service (stateless, JSON replies).
pub(crate) type DemoService = StreamableHttpService<DemoServer, LocalSessionManager>;

/// The demo tools, ready to serve as an upstream.
pub(crate) fn demo_service() -> DemoService {
    let demo = DemoServer::new();
    StreamableHttpService::new(
        move || Ok(demo.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    )
}
