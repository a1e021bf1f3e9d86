//! The `idguard` binary's HTTP server under abuse, as a process on loopback: connections
//! that send half a request header, answers given before the request body was read,
//! SIGTERM with requests in flight, a connection limit, a stalled body, and a flood of
//! `/authorize` from one address.
//!
//! `HARDENING_TEST_BIN` runs the dev-mode tests against another build of the binary
//! (to compare before and after a change).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Launch, Proc, Workdir, addr_of, bin_from};
use idguard_dev::DevEntra;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `idguard args` (this build's, or `HARDENING_TEST_BIN`) in `dir`, which it owns.
fn spawn(args: &[&str], dir: Workdir) -> Proc {
    Launch::in_dir(args, dir)
        .bin(bin_from("HARDENING_TEST_BIN"))
        .spawn()
}

/// A running server: its address and a token for bob.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    bob: String,
}

impl Server {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `idguard --port 0` in dev mode.
fn dev(name: &str) -> Server {
    let proc = spawn(
        &["--port", "0"],
        Workdir::with_policies(&format!("hard-{name}")),
    );
    let url = proc.line("export MCP_URL=");
    let bob = proc.line("export BOB=");
    let addr = addr_of(&url);
    Server { proc, addr, bob }
}

/// `idguard --port 0` with a configuration against `entra` (in this process), plus the
/// `[server]` lines given.
fn configured(name: &str, entra: &DevEntra, server: &str) -> Server {
    let dir = Workdir::with_policies(&format!("hard-{name}"));
    dir.config(entra.url(), entra, "", server);
    let proc = spawn(&["--port", "0"], dir);
    let addr = addr_of(&proc.line("idguard: demo tools at "));
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    Server { proc, addr, bob }
}

// ------------------------------------------------------------------ raw HTTP/1.1

/// One HTTP response as read off the wire.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server said it closes the connection after this answer.
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A raw client connection, with what was read past the last answer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Each write goes out as it is made.
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one whole answer (fixed length or chunked); an error on EOF or a reset
    /// before its end. Bounded by 20 s.
    async fn answer(&mut self) -> std::io::Result<Answer> {
        tokio::time::timeout(Duration::from_secs(20), self.read_answer())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn read_answer(&mut self) -> std::io::Result<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                answer.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    return Ok(answer);
                }
            }
        }
        let length: usize = answer
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while self.buf.len() < length {
            self.fill().await?;
        }
        answer.body = self.buf.drain(..length).collect();
        Ok(answer)
    }

    /// Waits (bounded) for the server to close: `Ok(())` for a clean close (FIN), the
    /// error for a reset; panics if bytes arrive or nothing happens.
    async fn closed_within(&mut self, within: Duration) -> std::io::Result<()> {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// The head of a `tools/list` POST to `/mcp` with a body of `length` bytes.
fn mcp_head(addr: SocketAddr, token: Option<&str>, length: usize) -> Vec<u8> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n{auth}Content-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

fn tools_list() -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        .to_string()
        .into_bytes()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_neither_block_others_nor_stay_open() {
    let entra = DevEntra::builder().start().await.unwrap();
    let server = configured("half", &entra, "header_timeout = \"1s\"");
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut c = Conn::open(server.addr).await;
        c.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        idle.push(c);
    }
    // A normal request is answered meanwhile.
    let started = Instant::now();
    let me = reqwest::Client::new()
        .get(format!("{}/me", server.base()))
        .bearer_auth(&server.bob)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let answered = started.elapsed();

    // A keep-alive connection that has had its answer and sends nothing more.
    let mut kept = Conn::open(server.addr).await;
    kept.write(
        format!(
            "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = kept.answer().await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(!answer.closes());

    // All of them are closed after the header timeout (1 s), cleanly.
    for c in &mut idle {
        c.closed_within(Duration::from_secs(10)).await.unwrap();
    }
    kept.closed_within(Duration::from_secs(10)).await.unwrap();
    eprintln!(
        "normal request answered in {answered:?} beside 300 half-sent headers; all closed {:?} after",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_new_connections_wait_for_a_free_one() {
    let entra = DevEntra::builder().start().await.unwrap();
    let server = configured(
        "limit",
        &entra,
        "max_connections = 4\nheader_timeout = \"1s\"",
    );
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(Conn::open(server.addr).await);
    }
    // Accepted by the kernel, answered once one of the four idle ones is closed.
    let started = Instant::now();
    let mut fifth = Conn::open(server.addr).await;
    fifth
        .write(
            format!(
                "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {}\r\n\r\n",
                server.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = fifth.answer().await.unwrap();
    assert_eq!(answer.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}, before a place was free"
    );
    for c in &mut holders {
        c.closed_within(Duration::from_secs(10)).await.unwrap();
    }
}

/// Headers, then the body in a second write, without a token: the whole 401 every time,
/// and the connection usable for the next request unless the answer said `close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_the_client_without_a_reset() {
    let server = dev("early");
    let body = tools_list();
    let head = mcp_head(server.addr, None, body.len());
    let mut failures = Vec::new();
    for round in 0..50 {
        // The body right behind the headers, or only after the answer arrived.
        for body_after_answer in [false, true] {
            let mut c = Conn::open(server.addr).await;
            let result: std::io::Result<()> = async {
                for request in 0..2 {
                    c.write(&head).await?;
                    let answer = if body_after_answer {
                        let answer = c.answer().await?;
                        c.write(&body).await?;
                        answer
                    } else {
                        c.write(&body).await?;
                        c.answer().await?
                    };
                    assert_eq!(answer.status, 401, "round {round} request {request}");
                    assert!(answer.header("www-authenticate").is_some());
                    if answer.closes() {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                failures.push(format!(
                    "round {round} (body after the answer: {body_after_answer}): {e}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100 failed: {failures:#?}",
        failures.len()
    );

    // A body too large to drain: the answer says `close`, and still arrives whole.
    let big = 1024 * 1024;
    let mut c = Conn::open(server.addr).await;
    c.write(&mcp_head(server.addr, None, big)).await.unwrap();
    let _ = c.write(&vec![b' '; big]).await;
    let answer = c.answer().await.unwrap();
    assert_eq!(answer.status, 401);
    assert!(answer.closes(), "{answer:?}");

    // Over `mcp.max_body_bytes` (4 MiB) with a valid token: 413, written while the client
    // is still sending, arrives whole.
    let big = 6 * 1024 * 1024;
    let (mut rd, mut wr) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let head = mcp_head(server.addr, Some(&server.bob), big);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&head).await;
        let _ = wr.write_all(&vec![b' '; big]).await;
        wr
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.unwrap();
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let entra = DevEntra::builder().start().await.unwrap();
    let server = configured("stall", &entra, "body_timeout = \"1s\"");
    let body = tools_list();
    let mut c = Conn::open(server.addr).await;
    c.write(&mcp_head(server.addr, Some(&server.bob), body.len()))
        .await
        .unwrap();
    c.write(&body[..body.len() / 2]).await.unwrap();
    let started = Instant::now();
    let answer = c.answer().await.unwrap();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.closes());
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.closed_within(Duration::from_secs(5)).await.unwrap();

    // A body that keeps coming, slower than the timeout in total, is fine.
    let mut c = Conn::open(server.addr).await;
    c.write(&mcp_head(server.addr, Some(&server.bob), body.len()))
        .await
        .unwrap();
    for part in body.chunks(body.len() / 4 + 1) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write(part).await.unwrap();
    }
    let answer = c.answer().await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// SIGTERM with requests on keep-alive connections: ones whose body is still coming, ones
/// sent just before the signal, and idle ones. Every request gets its whole answer, then
/// every connection is closed cleanly (no reset) and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_request_already_sent() {
    let mut server = dev("shutdown");
    let body = tools_list();
    let head = mcp_head(server.addr, Some(&server.bob), body.len());
    let mut conns = Vec::new();
    for _ in 0..12 {
        let mut c = Conn::open(server.addr).await;
        c.write(&head).await.unwrap();
        c.write(&body).await.unwrap();
        let answer = c.answer().await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(!answer.closes());
        conns.push(c);
    }
    let (in_flight, rest) = conns.split_at_mut(4);
    let (just_sent, idle) = rest.split_at_mut(4);
    let half = body.len() / 2;
    for c in in_flight.iter_mut() {
        c.write(&head).await.unwrap();
        c.write(&body[..half]).await.unwrap();
    }
    for c in just_sent.iter_mut() {
        c.write(&[head.as_slice(), body.as_slice()].concat())
            .await
            .unwrap();
    }
    assert!(server.proc.sigterm());

    for c in in_flight.iter_mut() {
        c.write(&body[half..]).await.unwrap();
    }
    for (i, c) in in_flight.iter_mut().chain(just_sent.iter_mut()).enumerate() {
        let answer = c
            .answer()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer.status, 200, "request {i}");
        assert!(
            String::from_utf8_lossy(&answer.body).contains("list_documents"),
            "request {i}"
        );
        // Answers produced after the signal say `close`; either way the connection closes.
        c.closed_within(Duration::from_secs(10)).await.unwrap();
    }
    for c in idle.iter_mut() {
        c.closed_within(Duration::from_secs(10)).await.unwrap();
    }
    assert!(server.proc.exited(Duration::from_secs(20)).await.success());
}

/// A client bound to a loopback address of its own (all of 127.0.0.0/8 is loopback).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, last]))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn register(server: &Server) -> String {
    let res = client_from(1)
        .post(format!("{}/register", server.base()))
        .json(&json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "flood"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let reg: serde_json::Value = res.json().await.unwrap();
    reg["client_id"].as_str().unwrap().to_owned()
}

async fn authorize(server: &Server, from: &reqwest::Client, client_id: &str) -> reqwest::Response {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/authorize", server.base()),
        [
            ("client_id", client_id),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("response_type", "code"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    from.get(url).send().await.unwrap()
}

/// `/authorize` until the first refusal (at most `max`): how many were accepted, and the
/// refusal.
async fn flood(
    server: &Server,
    from: &reqwest::Client,
    client_id: &str,
    max: usize,
) -> (usize, Option<reqwest::Response>) {
    for accepted in 0..max {
        let res = authorize(server, from, client_id).await;
        if res.status() != 200 {
            return (accepted, Some(res));
        }
    }
    (max, None)
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorize_flood_is_refused_per_address_and_per_client() {
    let server = dev("flood");
    let x = register(&server).await;
    let y = register(&server).await;

    // One address: 64 sign-ins in progress, then 429 with Retry-After, for any client.
    let attacker = client_from(2);
    let first = authorize(&server, &attacker, &x).await;
    assert_eq!(first.status(), 200);
    let cookie = first.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = first.text().await.unwrap();
    let (txn, csrf) = (hidden(&html, "txn"), hidden(&html, "csrf"));
    let (accepted, refusal) = flood(&server, &attacker, &x, 500).await;
    let refusal = refusal.unwrap_or_else(|| panic!("{accepted} more accepted, none refused"));
    assert_eq!(refusal.status(), 429);
    assert_eq!(1 + accepted, 64);
    let retry: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=601).contains(&retry), "{retry}");
    assert_eq!(authorize(&server, &attacker, &y).await.status(), 429);

    // Everyone else still signs in, with either client.
    let other = client_from(3);
    assert_eq!(authorize(&server, &other, &x).await.status(), 200);
    assert_eq!(authorize(&server, &other, &y).await.status(), 200);

    // Answering a consent page (here: deny) frees its place.
    let denied = attacker
        .post(format!("{}/consent", server.base()))
        .header("cookie", cookie)
        .form(&[
            ("txn", txn.as_str()),
            ("csrf", csrf.as_str()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 303);
    assert_eq!(authorize(&server, &attacker, &x).await.status(), 200);
    assert_eq!(authorize(&server, &attacker, &x).await.status(), 429);

    // One client from many addresses: 256 in progress, then 429 for that client only.
    let mut total = 64 + 1; // from .2 and .3
    let mut last = 10;
    let refused = loop {
        let (accepted, refusal) = flood(&server, &client_from(last), &x, 64).await;
        total += accepted;
        if let Some(r) = refusal {
            break r;
        }
        last += 1;
        assert!(last < 30, "never refused after {total}");
    };
    assert_eq!(refused.status(), 429);
    assert_eq!(total, 256);
    let fresh = client_from(last + 1);
    assert_eq!(authorize(&server, &fresh, &x).await.status(), 429);
    assert_eq!(authorize(&server, &fresh, &y).await.status(), 200);
}
