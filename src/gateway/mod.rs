//! Gateway mode: a streaming reverse proxy to an upstream MCP server.
//!
//! [`Gateway`] is the innermost service when idguard runs in front of an MCP server it does
//! not host (any language, any SDK): the same `ValidateTokenLayer` and `AuthorizeMcpLayer`
//! go in front of it. It forwards exactly what was decided on, and streams the reply back
//! as it arrives, so Server-Sent Events reach the client event by event:
//!
//! - **only the endpoint**: the request goes to the configured upstream URL, whatever the
//!   caller wrote below the MCP path (`/mcp/../sse` and `/mcp/%2e%2e/x` are `404`, never
//!   another upstream path) and without the caller's query;
//! - **only the methods of Streamable HTTP**: `POST` (with the body the layer parsed, sent
//!   with its `Content-Length`), `GET` (a stream), `DELETE` (ends a session); others `405`;
//! - **only the headers MCP needs**: `Accept`, `Content-Type`, `Mcp-Session-Id`,
//!   `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`, `Last-Event-ID`,
//!   `User-Agent`, `X-Request-Id` and trace context. **The caller's token is never passed
//!   upstream** (MCP forbids token passthrough), nor its cookies, nor forwarding headers it
//!   wrote: idguard sets `X-Forwarded-Host`, `X-Forwarded-For` and `Forwarded` itself. The
//!   upstream sees its own host in `Host`; idguard checked the caller's `Host` and `Origin`
//!   (the DNS-rebinding protection the upstream would otherwise apply).
//!
//! What the upstream gets instead of the caller's token is its [`UpstreamCredential`]
//! (`[upstream] credential`): nothing, an on-behalf-of token, an identity assertion signed
//! by idguard, a token from the upstream's own authorization server (RFC 8693 token
//! exchange), or a fixed header.
//!
//! A plain `http://` upstream is reached with hyper's pooled client directly (the request
//! URI and `Host` computed once); an `https://` upstream, or any upstream while a proxy is
//! set in the environment (`http_proxy`, `all_proxy`), through the given reqwest client.
//!
//! A JSON reply of known length up to 1 MiB is read whole (each part within the idle
//! timeout) and passed on as one body; anything else, event streams first, is streamed as
//! it arrives.
//!
//! Replies keep only `Content-Type`, `Cache-Control`, `Mcp-Session-Id`,
//! `MCP-Protocol-Version`, `Retry-After` and `WWW-Authenticate`: no cookies from the
//! upstream, no hop-by-hop headers.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;

use crate::error::{Rejection, RejectionKind};

mod config;
mod credential;
mod exchange;
mod hop;
mod many;

pub(crate) use config::upstream_url;
pub use config::{
    ExchangeSettings, NamedUpstream, UpstreamConfig, UpstreamSettings, Upstreams, UpstreamsSettings,
};
pub use many::{Gateways, UPSTREAM_UNAVAILABLE_CODE};

pub use credential::{
    ASSERTION_LIFETIME, ASSERTION_SKEW, AssertionKeyError, IdentityAssertion, JWKS_PATH,
    UpstreamCredential,
};
pub use exchange::{
    DEFAULT_EXCHANGE_SKEW, DEFAULT_EXCHANGE_TIMEOUT, InsecureTokenEndpoint, JWT_TOKEN_TYPE,
    TokenExchange,
};

/// Request headers forwarded as the caller sent them.
const FORWARDED_REQUEST: [HeaderName; 11] = [
    header::ACCEPT,
    header::USER_AGENT,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    HeaderName::from_static("mcp-method"),
    HeaderName::from_static("mcp-name"),
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
];

/// Reply headers passed back to the caller.
const FORWARDED_REPLY: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
];

/// Default longest wait for a connection to the upstream (plain-HTTP upstreams; the
/// reqwest client's own setting applies to the others).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest wait for the upstream's reply to start.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default longest silence between two parts of an upstream reply (events of a stream).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A reverse proxy to one upstream MCP endpoint.
#[derive(Clone, Debug)]
pub struct Gateway {
    // One clone per request.
    hop: Arc<Hop>,
}

/// What a [`Gateway`] forwards with.
#[derive(Clone, Debug)]
struct Hop {
    upstream: reqwest::Url,
    client: reqwest::Client,
    /// hyper's client, for a plain-HTTP upstream.
    plain: Option<hop::PlainHttp>,
    response_timeout: Duration,
    idle_timeout: Duration,
    credential: UpstreamCredential,
}

impl Gateway {
    /// Proxies to `upstream` (the upstream's MCP endpoint URL). An `https://` upstream is
    /// reached with `client` (whose own settings, such as its connect timeout, apply); a
    /// plain `http://` one with a pooled hyper client (see
    /// [`with_connect_timeout`](Self::with_connect_timeout)), unless a proxy is set in the
    /// environment, which `client` then goes through.
    pub fn new(upstream: reqwest::Url, client: reqwest::Client) -> Self {
        let plain = hop::PlainHttp::for_url(&upstream, DEFAULT_CONNECT_TIMEOUT);
        Self {
            hop: Arc::new(Hop {
                upstream,
                client,
                plain,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                credential: UpstreamCredential::none(),
            }),
        }
    }

    /// How long connecting to a plain-HTTP upstream may take (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]): then `502`. An `https://` upstream's connect timeout
    /// is the reqwest client's.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        let hop = Arc::make_mut(&mut self.hop);
        if hop.plain.is_some() {
            hop.plain = hop::PlainHttp::for_url(&hop.upstream, timeout);
        }
        self
    }

    /// How long the upstream may take to start its reply (default
    /// [`DEFAULT_RESPONSE_TIMEOUT`]): then `504`.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.hop).response_timeout = timeout;
        self
    }

    /// How long the upstream may stay silent within a reply (default
    /// [`DEFAULT_IDLE_TIMEOUT`]): then the reply ends (a stream's client reconnects).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.hop).idle_timeout = timeout;
        self
    }

    /// What the upstream receives to know who is calling (default
    /// [`UpstreamCredential::none`]); never the caller's own token.
    pub fn with_credential(mut self, credential: UpstreamCredential) -> Self {
        Arc::make_mut(&mut self.hop).credential = credential;
        self
    }
}

/// A reply body of either client: bytes, and errors that name no URL.
trait ReplyBody: http_body::Body<Data = bytes::Bytes, Error: Display> + Send + Unpin + 'static {}

impl<B> ReplyBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Display> + Send + Unpin + 'static
{
}

/// Ends a reply stream that stays silent longer than `idle`.
fn with_idle_timeout<B: ReplyBody>(
    body: B,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(body, move |mut body| async move {
        loop {
            return match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => Some((Ok(chunk), body)),
                    // Trailers are not passed on.
                    Err(_) => continue,
                },
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), body)),
                Ok(None) => None,
                Err(_) => {
                    tracing::warn!(target: "idguard::gateway", idle_secs = idle.as_secs(), "upstream reply silent too long: ended");
                    None
                }
            };
        }
    })
}

/// Replies up to this size, JSON and of a known length, are read whole before they go on.
const WHOLE_REPLY_BYTES: u64 = 1024 * 1024;

/// The length of `res` when it is read whole: JSON (not a stream) of a known, small length.
fn read_whole<B: ReplyBody>(res: &Response<B>) -> Option<usize> {
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let length = res.body().size_hint().exact()?;
    if !json || length > WHOLE_REPLY_BYTES {
        return None;
    }
    usize::try_from(length).ok()
}

/// The whole of a reply body of `length` bytes (by [`read_whole`]): each part within
/// `idle`, as a stream's; `None` when a part is late, the connection fails, or the body
/// outgrows its length.
async fn whole<B: ReplyBody>(mut body: B, length: usize, idle: Duration) -> Option<bytes::Bytes> {
    let mut first: Option<bytes::Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                match first.take() {
                    // One chunk (the usual case) goes on as it came, without a copy.
                    None if rest.is_empty() => first = Some(chunk),
                    held => {
                        if rest.is_empty() {
                            rest.reserve(length);
                        }
                        if let Some(held) = held {
                            rest.extend_from_slice(&held);
                        }
                        rest.extend_from_slice(&chunk);
                    }
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::error!(target: "idguard::gateway", error = %e, "upstream reply broken off");
                return None;
            }
            Err(_) => {
                tracing::warn!(target: "idguard::gateway", idle_secs = idle.as_secs(), "upstream reply silent too long: ended");
                return None;
            }
        }
    }
    let bytes = first.unwrap_or_else(|| rest.freeze());
    (bytes.len() == length).then_some(bytes)
}

/// The caller's reply to the upstream's `res`: its status, the headers passed back, and its
/// body, whole ([`read_whole`]) or streamed with the idle timeout.
async fn answer<B: ReplyBody>(res: Response<B>, idle: Duration) -> Response<Body> {
    if res.headers().contains_key(header::CONTENT_ENCODING) {
        // idguard cannot filter what it cannot read (it asks for identity).
        tracing::error!(target: "idguard::gateway", "upstream reply is content-encoded");
        return Rejection::new(RejectionKind::BadGateway, None).into_response();
    }
    let whole_length = read_whole(&res);
    let (parts, body) = res.into_parts();
    let mut out = Response::new(Body::empty());
    *out.status_mut() = parts.status;
    reply_headers(&parts.headers, out.headers_mut());
    if let Some(length) = whole_length {
        // A small JSON reply goes on whole: the layer above reads it whole anyway,
        // and a stream, a timer per chunk and two boxes cost more than the reply.
        return match whole(body, length, idle).await {
            Some(bytes) => {
                *out.body_mut() = Body::from(bytes);
                out
            }
            None => Rejection::new(RejectionKind::BadGateway, None).into_response(),
        };
    }
    *out.body_mut() = Body::from_stream(with_idle_timeout(body, idle));
    out
}

/// The upstream's reply to `sent` within `timeout`, or the caller's `504` or `502`.
async fn within<R, E: std::error::Error + 'static>(
    timeout: Duration,
    sent: impl Future<Output = Result<R, E>>,
) -> Result<R, Response<Body>> {
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(res)) => Ok(res),
        Err(_) => {
            tracing::error!(target: "idguard::gateway", timeout_secs = timeout.as_secs(), "upstream did not answer in time");
            Err(Rejection::new(RejectionKind::GatewayTimeout, None).into_response())
        }
        Ok(Err(e)) => {
            tracing::error!(target: "idguard::gateway", error = %error_chain(&e), "upstream unreachable");
            Err(Rejection::new(RejectionKind::BadGateway, None).into_response())
        }
    }
}

/// `e` and its sources, without the upstream's URL (reqwest writes it into its errors).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(e) = e.downcast_ref::<reqwest::Error>() {
        return crate::entra::without_url(e);
    }
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The headers the upstream gets for a request with `from`.
fn request_headers(from: &HeaderMap, peer: Option<SocketAddr>) -> HeaderMap {
    // Room for what is forwarded, the forwarding headers, a credential, `Host` and `Accept`:
    // no regrowth.
    let mut to = HeaderMap::with_capacity(from.len() + 6);
    for (name, value) in from {
        if FORWARDED_REQUEST.contains(name) || name.as_str().starts_with("mcp-param-") {
            to.append(name.clone(), value.clone());
        }
    }
    if let Some(ct) = from.get(header::CONTENT_TYPE) {
        to.insert(header::CONTENT_TYPE, ct.clone());
    }
    // Visible ASCII only (it goes into a quoted string below); passed on as it came.
    let host = from
        .get(header::HOST)
        .filter(|h| h.as_bytes().iter().all(u8::is_ascii_graphic));
    if let Some(host) = host {
        to.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Some(peer) = peer {
        // `for=<ip>` (an IPv6 address quoted and bracketed), then `;host="<host>"`: written
        // once into the buffer that becomes the header, without formatting machinery.
        let mut forwarded = Vec::with_capacity(64 + host.map_or(0, HeaderValue::len));
        forwarded.extend_from_slice(b"for=");
        let ip = match peer.ip() {
            std::net::IpAddr::V4(v4) => {
                let mut number = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        forwarded.push(b'.');
                    }
                    forwarded.extend_from_slice(number.format(octet).as_bytes());
                }
                4..forwarded.len()
            }
            std::net::IpAddr::V6(v6) => {
                use std::io::Write as _;
                forwarded.extend_from_slice(b"\"[");
                let _ = write!(forwarded, "{v6}");
                let end = forwarded.len();
                forwarded.extend_from_slice(b"]\"");
                6..end
            }
        };
        if let Some(Ok(v)) = forwarded.get(ip).map(HeaderValue::from_bytes) {
            to.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        if let Some(host) = host {
            forwarded.extend_from_slice(b";host=\"");
            forwarded.extend_from_slice(host.as_bytes());
            forwarded.push(b'"');
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
            to.insert(header::FORWARDED, v);
        }
    }
    to
}

fn reply_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if FORWARDED_REPLY.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

impl tower_service::Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: every request waits on the network anyway.
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // `nest_service` strips the MCP path: anything left names another resource.
        let path = req.uri().path();
        if !(path.is_empty() || path == "/") {
            tracing::debug!(target: "idguard::rejection", "a path below the mcp endpoint");
            return Box::pin(async {
                Ok(Rejection::new(RejectionKind::NotServed, None).into_response())
            });
        }
        if !matches!(*req.method(), Method::POST | Method::GET | Method::DELETE) {
            return Box::pin(async {
                Ok(Rejection::new(RejectionKind::MethodNotAllowed, None).into_response())
            });
        }
        let hop = self.hop.clone();
        Box::pin(async move { Ok(hop.forward(req).await.unwrap_or_else(|refused| refused)) })
    }
}

impl Hop {
    /// Forwards `req` (checked by [`Gateway`]) and answers with the upstream's reply.
    async fn forward(&self, req: Request<Body>) -> Result<Response<Body>, Response<Body>> {
        let (parts, body) = req.into_parts();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let mut headers = request_headers(&parts.headers, peer);
        match self
            .credential
            .header(&parts.extensions, &parts.headers, &self.client)
            .await
        {
            Ok(Some((name, value))) => {
                headers.insert(name, value);
            }
            Ok(None) => {}
            Err(rejection) => return Err(rejection.into_response()),
        }
        let post = parts.method == Method::POST;
        let body = if post {
            // The layer holds the whole body already: sent with its length.
            match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Err(Rejection::new(RejectionKind::BadRequest, None).into_response());
                }
            }
        } else {
            bytes::Bytes::new()
        };
        let idle = self.idle_timeout;
        if let Some(plain) = &self.plain {
            let res = within(
                self.response_timeout,
                plain.send(parts.method, headers, body),
            )
            .await?;
            return Ok(answer(res, idle).await);
        }
        let mut upstream = self
            .client
            .request(parts.method, self.upstream.clone())
            .headers(headers);
        if post {
            upstream = upstream.body(body);
        }
        let res = within(self.response_timeout, upstream.send()).await?;
        let res =
            http::Response::from(res).map(|body| body.map_err(|e| crate::entra::without_url(&e)));
        Ok(answer(res, idle).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_mcp_needs_goes_upstream() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        from.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        from.insert("x-private", "1".parse().unwrap());
        from.insert(header::COOKIE, "__Host-idguard=1".parse().unwrap());
        from.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        from.insert(header::FORWARDED, "for=203.0.113.9".parse().unwrap());
        from.insert(header::HOST, "mcp.contoso.com".parse().unwrap());
        from.insert("mcp-session-id", "abc".parse().unwrap());
        from.insert("mcp-param-region", "eu".parse().unwrap());
        from.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let to = request_headers(&from, Some(SocketAddr::from(([127, 0, 0, 7], 9))));
        for gone in ["authorization", "x-private", "connection", "cookie", "host"] {
            assert!(to.get(gone).is_none(), "{gone}");
        }
        assert_eq!(to["mcp-session-id"], "abc");
        assert_eq!(to["mcp-param-region"], "eu");
        assert_eq!(to[header::CONTENT_TYPE], "application/json");
        assert_eq!(to["x-forwarded-for"], "127.0.0.7");
        assert_eq!(to["x-forwarded-host"], "mcp.contoso.com");
        assert_eq!(
            to[header::FORWARDED],
            "for=127.0.0.7;host=\"mcp.contoso.com\""
        );
        let v6 = request_headers(&from, Some("[2001:db8::1]:9".parse().unwrap()));
        assert_eq!(v6["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            v6[header::FORWARDED],
            "for=\"[2001:db8::1]\";host=\"mcp.contoso.com\""
        );
        from.remove(header::HOST);
        let no_host = request_headers(&from, Some(SocketAddr::from(([10, 0, 0, 255], 9))));
        assert_eq!(no_host["x-forwarded-for"], "10.0.0.255");
        assert_eq!(no_host[header::FORWARDED], "for=10.0.0.255");
        assert!(no_host.get("x-forwarded-host").is_none());
        let mut reply = HeaderMap::new();
        reply.insert(header::SET_COOKIE, "a=b".parse().unwrap());
        reply.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        let mut out = HeaderMap::new();
        reply_headers(&reply, &mut out);
        assert!(out.get(header::SET_COOKIE).is_none());
        assert_eq!(out[header::CONTENT_TYPE], "text/event-stream");
    }
}
