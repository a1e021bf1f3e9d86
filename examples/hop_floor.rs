//! The floor of a gateway hop (`benches/load/`): a proxy that does nothing but forward, run
//! beside `idguard` gateway mode so that every load run shows what any second process in
//! front of the fixture costs before idguard does anything.
//!
//! It forwards each request's method, body (sent with its length) and the MCP headers
//! (`Content-Type`, `Accept`, `Mcp-Session-Id`, `Mcp-Protocol-Version`) to `--upstream` with
//! hyper's pooled client (the one `idguard` uses for `http://` upstreams), and the reply's
//! status, `Content-Type`, `Mcp-Session-Id` and body back (read whole: the fixture's replies
//! are small JSON). No authentication, no policy, no log, no timeouts: **not a server to
//! deploy**, a yardstick. Prints `IDGUARD_LOAD_URL=…`
//! and `IDGUARD_LOAD_READY`, then serves until standard input closes.
//!
//! ```sh
//! cargo run --release --example hop_floor -- --upstream http://127.0.0.1:PORT/mcp
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;

const FORWARDED: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
];
const RETURNED: [HeaderName; 2] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("mcp-session-id"),
];

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(client: Upstream, uri: Uri, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    for name in &FORWARDED {
        if let Some(v) = parts.headers.get(name) {
            out.headers_mut().insert(name.clone(), v.clone());
        }
    }
    let Ok(res) = client.request(out).await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let (parts, body) = res.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let mut back = Response::new(Full::new(body));
    *back.status_mut() = parts.status;
    for name in &RETURNED {
        if let Some(v) = parts.headers.get(name) {
            back.headers_mut().insert(name.clone(), v.clone());
        }
    }
    back
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let upstream = args
        .iter()
        .position(|a| a == "--upstream")
        .and_then(|i| args.get(i + 1))
        .ok_or("--upstream URL is needed")?;
    let uri: Uri = upstream.parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("IDGUARD_LOAD_URL=http://{}/mcp", listener.local_addr()?);
    println!("IDGUARD_LOAD_READY");
    let serve = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors, say: a yardstick stops rather than spin.
                Err(e) => return Err(e),
            };
            let _ = stream.set_nodelay(true);
            let (client, uri) = (client.clone(), uri.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (client, uri) = (client.clone(), uri.clone());
                    async move { Ok::<_, Infallible>(forward(client, uri, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        failed = serve => failed?,
        _ = async { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break } } } => {}
    }
    Ok(())
}
