//! The HTTP/1.1 server of `idguard serve`: an accept loop over hyper that bounds what a
//! client can hold without sending a request.
//!
//! - At most `server.max_connections` connections are open; beyond that, new ones wait in
//!   the listen backlog until one closes.
//! - A client has `server.header_timeout` to send a request's headers; an idle keep-alive
//!   connection is closed after the same time.
//! - A request body that stops arriving for `server.body_timeout` ends the request with
//!   `408` (and the connection).
//! - An answer given before the request body was read (`401`, `403`, `413`, …) must reach
//!   the client: closing a socket with unread data makes the kernel send a reset, which
//!   can destroy the answer in flight. So a body left unread is read and thrown away
//!   afterwards (up to [`DRAIN_MAX_BYTES`], for [`DRAIN_TIME`]) while the connection stays
//!   usable; when more is announced, or the length is unknown, the answer says
//!   `Connection: close` and the connection closes after that bounded drain.
//! - Graceful shutdown: accepting stops; requests already received are answered (with
//!   `Connection: close`); idle connections are closed after [`SHUTDOWN_LINGER`], in which
//!   a request the client had already sent is still served; after `server.shutdown_grace`
//!   whatever is still open is closed.
//!
//! Every request carries axum's [`ConnectInfo`] (the peer) and the OAuth proxy's
//! [`ClientAddress`] (the peer, or with `server.trusted_proxies` the client named by
//! `X-Forwarded-For`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{CONNECTION, EXPECT, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use idguard::internals::ClientAddress;
use idguard::internals::{IpRange, ServerSettings};

/// Most of an unread request body read and thrown away after an early answer.
const DRAIN_MAX_BYTES: u64 = 64 * 1024;
/// Longest time spent reading an unread request body after an early answer.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// After the shutdown signal, how long an idle keep-alive connection stays open: a request
/// the client sent just before may still be on its way through the kernel.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// What every connection shares.
struct Shared {
    app: Router,
    settings: ServerSettings,
    /// Set at the shutdown signal: every answer from then on closes its connection.
    shutting_down: AtomicBool,
}

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully
/// (see the module docs).
///
/// # Errors
///
/// None today: accept errors are logged and retried. The type leaves room.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max = settings.max_connections;
    let grace = settings.shutdown_grace;
    let shared = Arc::new(Shared {
        app,
        settings,
        shutting_down: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut full_since: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= max {
            // At the limit: accept nothing until a connection closes (new ones wait in
            // the listen backlog).
            if full_since.is_none() {
                full_since = Some(Instant::now());
                tracing::warn!(target: "idguard::serve", max, "connection limit reached: new connections wait");
            }
            tokio::select! {
                () = shutdown.as_mut() => break,
                _ = connections.join_next() => continue,
            }
        }
        if let Some(since) = full_since.take() {
            tracing::info!(target: "idguard::serve", waited_ms = since.elapsed().as_millis(), "below the connection limit again");
        }
        let accepted = tokio::select! {
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, for instance: wait rather than spin.
                tracing::error!(target: "idguard::serve", error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.as_mut() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, peer, shared.clone(), stop_rx.clone()));
    }

    drop(listener);
    shared.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(target: "idguard::serve", open = connections.len(), "shutdown grace over: closing the connections still open");
        connections.shutdown().await;
    } else if open > 0 {
        tracing::debug!(target: "idguard::serve", open, "every connection finished");
    }
    Ok(())
}

/// Errors of one connection being accepted, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, or shuts it down once `stop` turns true.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = ConnectionService {
        peer,
        shared: shared.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        biased;
        result = conn.as_mut() => return closed(result, peer),
        _ = stop.wait_for(|stop| *stop) => {}
    }
    // Requests received meanwhile are answered with `Connection: close`.
    tokio::select! {
        biased;
        result = conn.as_mut() => return closed(result, peer),
        () = tokio::time::sleep(SHUTDOWN_LINGER) => {}
    }
    // Idle: closed now. Busy: closed after the answer in progress.
    conn.as_mut().graceful_shutdown();
    closed(conn.await, peer);
}

fn closed(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(target: "idguard::serve", %peer, error = %e, "connection ended");
    }
}

/// The per-connection service: extensions in, body guarded, answer checked.
struct ConnectionService {
    peer: SocketAddr,
    shared: Arc<Shared>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let settings = &self.shared.settings;
        let client = client_address(&parts.headers, self.peer.ip(), &settings.trusted_proxies);
        parts.extensions.insert(ConnectInfo(self.peer));
        parts.extensions.insert(ClientAddress(client));
        let expect_continue = parts
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let length = http_body::Body::size_hint(&body).exact();
        let state = Arc::new(BodyState::default());
        let body = GuardedBody {
            inner: Some(body),
            timeout: settings.body_timeout,
            timer: None,
            waiting: false,
            expect_continue,
            state: state.clone(),
        };
        let req = Request::from_parts(parts, Body::new(body));
        let shared = self.shared.clone();
        Box::pin(async move {
            let res = match tower::ServiceExt::oneshot(shared.app.clone(), req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            Ok(finish(res, &state, length, &shared))
        })
    }
}

/// The answer as sent: `408` if the body timed out; `Connection: close` when the
/// connection will not be reused.
fn finish(
    mut res: Response<Body>,
    body: &BodyState,
    length: Option<u64>,
    shared: &Shared,
) -> Response<Body> {
    let flags = body.flags.load(Ordering::Acquire);
    if flags & TIMED_OUT != 0 {
        tracing::debug!(target: "idguard::serve", "request body stalled: 408");
        return (
            StatusCode::REQUEST_TIMEOUT,
            [(CONNECTION, HeaderValue::from_static("close"))],
        )
            .into_response();
    }
    let mut close = shared.shutting_down.load(Ordering::SeqCst);
    if flags & DROPPED != 0 && flags & FINISHED == 0 {
        // Answered before the body was read: the connection stays usable only if what is
        // left of the body will be drained.
        let read = body.read.load(Ordering::Acquire);
        let drained = flags & DRAINING != 0
            && length.is_some_and(|n| n.saturating_sub(read) <= DRAIN_MAX_BYTES);
        close |= !drained;
    }
    if close {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// The client address for per-address limits: the peer, unless the peer is a trusted
/// proxy; then, reading `X-Forwarded-For` from the right, the first address that is not a
/// trusted proxy (what a client writes to the left of its own address counts for nothing).
fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip.to_canonical();
            if !is_trusted(client) {
                return client;
            }
        }
    }
    client
}

/// What the connection service learns about a request body.
#[derive(Debug, Default)]
struct BodyState {
    /// Data bytes read by the application.
    read: AtomicU64,
    flags: AtomicU8,
}

/// The application polled the body.
const POLLED: u8 = 1;
/// The body ended (or failed: the connection is lost anyway).
const FINISHED: u8 = 2;
/// The application dropped the body before its end.
const DROPPED: u8 = 4;
/// What is left is being drained.
const DRAINING: u8 = 8;
/// The client stopped sending the body for longer than the body timeout.
const TIMED_OUT: u8 = 16;

impl BodyState {
    fn set(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
    }
}

/// The request body as the application sees it: hyper's, with a timeout between parts and
/// a drain when it is dropped unread.
struct GuardedBody {
    inner: Option<Incoming>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Waiting for the client since the timer was last set.
    waiting: bool,
    expect_continue: bool,
    state: Arc<BodyState>,
}

/// The request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving")]
struct BodyTimeout;

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.state.set(POLLED);
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.state.read.fetch_add(n, Ordering::AcqRel);
                }
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.set(FINISHED);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.state.set(FINISHED);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Time counts while the application waits for the client, not while the
                // application is busy elsewhere.
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.timeout;
                    match this.timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let expired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.state.set(TIMED_OUT);
                // hyper stops reading; the connection closes after the answer.
                this.inner = None;
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let flags = self.state.flags.load(Ordering::Acquire);
        if flags & (FINISHED | TIMED_OUT) != 0 || http_body::Body::is_end_stream(&inner) {
            return;
        }
        self.state.set(DROPPED);
        if self.expect_continue && flags & POLLED == 0 {
            // The client waits for `100 Continue` before it sends the body: do not ask
            // for it; hyper closes the connection after the answer.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.state.set(DRAINING);
        runtime.spawn(drain(inner));
    }
}

/// Reads and throws away the rest of a body, within bounds; dropping it then lets hyper
/// reuse the connection (the body ended) or close it (it did not).
async fn drain(mut body: Incoming) {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut left = DRAIN_MAX_BYTES;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Some(data) = frame.data_ref() {
            let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
            if n > left {
                break;
            }
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|s| IpRange::parse(s).unwrap()).collect()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = ranges(&[]);
        let lb = ranges(&["10.0.0.0/8", "::1"]);
        let h = forwarded(&["203.0.113.9, 198.51.100.7"]);
        // No trusted proxy: the peer, whatever the header says.
        assert_eq!(client_address(&h, ip("10.1.2.3"), &none), ip("10.1.2.3"));
        // An untrusted peer: the peer.
        assert_eq!(client_address(&h, ip("192.0.2.1"), &lb), ip("192.0.2.1"));
        // Behind the proxy: the right-most address that is not a proxy.
        assert_eq!(client_address(&h, ip("10.1.2.3"), &lb), ip("198.51.100.7"));
        let chained = forwarded(&["203.0.113.9", "198.51.100.7, 10.9.9.9"]);
        assert_eq!(client_address(&chained, ip("::1"), &lb), ip("198.51.100.7"));
        // Garbage stops the walk at the last trusted hop.
        let garbage = forwarded(&["203.0.113.9, nonsense"]);
        assert_eq!(
            client_address(&garbage, ip("10.1.2.3"), &lb),
            ip("10.1.2.3")
        );
        // Without the header: the proxy itself.
        assert_eq!(
            client_address(&HeaderMap::new(), ip("10.1.2.3"), &lb),
            ip("10.1.2.3")
        );
        // IPv4-mapped peers are IPv4.
        assert_eq!(
            client_address(&h, ip("::ffff:10.1.2.3"), &lb),
            ip("198.51.100.7")
        );
    }
}
