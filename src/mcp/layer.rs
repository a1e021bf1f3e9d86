//! [`AuthorizeMcpLayer`]: JSON-RPC-aware authorization in front of any Streamable HTTP MCP
//! service. Placed after [`ValidateTokenLayer`](crate::ValidateTokenLayer), which provides
//! the [`Principal`].
//!
//! Over 800 lines: the request path (checks, decisions, forwarding) and the reply path
//! share the layer's state; the last 300 lines are unit tests against a real policy engine.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use moka::sync::Cache;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::binding::{self, Binder, Handle};
use super::catalog::ToolCatalog;
use super::filter::{Decided, Pending, Recorded, ReplyRewriter, TaskIds};
use super::jsonrpc::{self, Ask, Message};
use super::sse::{RewriteSse, SseRewriter};
use crate::error::{Challenge, Rejection, RejectionKind};
use crate::policy::{Decision, Item, Phase, PolicyEngine, ToolInfo};
use crate::principal::Principal;

/// Default limit on a JSON-RPC request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Default limit on a JSON reply (or one SSE event) idguard reads and rewrites.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// JSON-RPC code of a visible policy denial.
pub const FORBIDDEN_CODE: i64 = -32001;
/// JSON-RPC code of a method idguard does not mediate (`Method not found`).
pub const METHOD_NOT_FOUND_CODE: i64 = -32601;
/// JSON-RPC code of a header that disagrees with the body (MCP 2026-07-28).
pub const HEADER_MISMATCH_CODE: i64 = -32020;
/// Default of [`McpCacheCapacities::with_catalog_tools`]: tools whose annotations are
/// known by name.
pub const DEFAULT_CATALOG_CAPACITY: u64 = 100_000;
/// Default of [`McpCacheCapacities::with_unlisted_tools`]: names the server did not list,
/// remembered for 30 seconds.
pub const DEFAULT_UNLISTED_CAPACITY: u64 = 10_000;
/// Default of [`McpCacheCapacities::with_list_results`]: parsed list results.
pub const DEFAULT_LIST_RESULT_CAPACITY: u64 = 64;
/// Default of [`McpCacheCapacities::with_sessions`]: MCP sessions whose decided requests
/// are remembered.
pub const DEFAULT_SESSION_RECORD_CAPACITY: u64 = 10_000;
/// Default of [`McpCacheCapacities::with_requests_per_session`]: decided requests
/// remembered per MCP session.
pub const DEFAULT_REQUESTS_PER_SESSION: u64 = 1024;

/// How much an [`AuthorizeMcpLayer`] remembers, for
/// [`AuthorizeMcpLayer::with_cache_capacities`]. `Default` gives the `DEFAULT_*` values. A
/// capacity of `0` is taken as `1`.
///
/// Two kinds of memory are sized here:
///
/// - the **tool catalog** (tool annotations by name, names the server does not list, parsed
///   `tools/list` results) only saves work: a tool missing from it is looked up in the
///   server's `tools/list` before a call is decided. A catalog smaller than the server's
///   list fails closed: a called tool that cannot be kept is treated as unlisted, and the
///   call refused;
/// - the **session record** (per MCP session, what was decided for each request id) is
///   what a replayed stream (`GET` with `Last-Event-ID`) is filtered with: a reply is
///   passed on only when the record knows its request. When it is too small, replies to
///   forgotten requests are dropped (fail closed), and so are those of sessions forgotten
///   altogether. Replies on the `POST` that asked are not affected. Keep
///   `requests_per_session` well above the requests a client has outstanding.
///
///   A forgotten request id is **retired**, not freed: the record keeps a 64-bit keyed
///   hash of it (8 bytes), and a request using it again is refused (`400`) like any
///   reused id; otherwise the server could replay the old reply to that id (a redacted
///   call's, say) and idguard would filter it under the new request's decision. A session
///   retires at most 64 × `requests_per_session` ids (65 536, 512 KiB, by default);
///   the request that would retire one more ends it: it and every later `POST` or `GET`
///   in the session is answered `404` `Session not found`, as for a session the server
///   no longer knows, and MCP clients then start a new session. Forgetting the oldest
///   retired ids instead would reopen the gap, and refusing every new id would leave the
///   client stuck in a session it cannot use.
///
/// ```
/// use idguard::mcp::McpCacheCapacities;
///
/// let caches = McpCacheCapacities::default().with_sessions(1_000).with_requests_per_session(256);
/// assert_eq!(caches.requests_per_session(), 256);
/// assert_eq!(McpCacheCapacities::default().with_sessions(0).sessions(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct McpCacheCapacities {
    catalog_tools: u64,
    unlisted_tools: u64,
    list_results: u64,
    sessions: u64,
    requests_per_session: u64,
}

impl Default for McpCacheCapacities {
    fn default() -> Self {
        Self {
            catalog_tools: DEFAULT_CATALOG_CAPACITY,
            unlisted_tools: DEFAULT_UNLISTED_CAPACITY,
            list_results: DEFAULT_LIST_RESULT_CAPACITY,
            sessions: DEFAULT_SESSION_RECORD_CAPACITY,
            requests_per_session: DEFAULT_REQUESTS_PER_SESSION,
        }
    }
}

impl McpCacheCapacities {
    /// Tools whose annotations the catalog keeps (for ten minutes after a list names
    /// them), default [`DEFAULT_CATALOG_CAPACITY`]; keep it above the number of tools the
    /// server lists. `mcp.catalog_capacity` in `idguard.toml`.
    pub fn with_catalog_tools(mut self, tools: u64) -> Self {
        self.catalog_tools = tools.max(1);
        self
    }

    /// Names the server did not list, answered as unknown for 30 seconds without asking it
    /// again, default [`DEFAULT_UNLISTED_CAPACITY`]. `mcp.unlisted_capacity`.
    pub fn with_unlisted_tools(mut self, names: u64) -> Self {
        self.unlisted_tools = names.max(1);
        self
    }

    /// Parsed list results kept (for ten minutes), so the same list again is filtered
    /// without parsing it, default [`DEFAULT_LIST_RESULT_CAPACITY`]; each holds the text of
    /// the result. `mcp.list_result_capacity`.
    pub fn with_list_results(mut self, results: u64) -> Self {
        self.list_results = results.max(1);
        self
    }

    /// MCP sessions whose decided requests are remembered (until a day idle), default
    /// [`DEFAULT_SESSION_RECORD_CAPACITY`]. `mcp.session_record_capacity`.
    pub fn with_sessions(mut self, sessions: u64) -> Self {
        self.sessions = sessions.max(1);
        self
    }

    /// Decided requests (and, apart, progress tokens of redacted calls) remembered per
    /// session, default [`DEFAULT_REQUESTS_PER_SESSION`]. `mcp.requests_per_session`.
    /// Also bounds what a session may retire (forget, and refuse if used again): 64 times
    /// as many ids, 8 bytes each; a session that reaches the bound is ended (`404`).
    pub fn with_requests_per_session(mut self, requests: u64) -> Self {
        self.requests_per_session = requests.max(1);
        self
    }

    /// Tools the catalog keeps.
    pub fn catalog_tools(&self) -> u64 {
        self.catalog_tools
    }

    /// Unlisted names remembered.
    pub fn unlisted_tools(&self) -> u64 {
        self.unlisted_tools
    }

    /// Parsed list results kept.
    pub fn list_results(&self) -> u64 {
        self.list_results
    }

    /// Sessions whose decided requests are remembered.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Decided requests remembered per session.
    pub fn requests_per_session(&self) -> u64 {
        self.requests_per_session
    }
}

/// Replies larger than this are rewritten only while the rewrite budget allows.
const LARGE_REPLY_BYTES: usize = 1024 * 1024;
/// Memory, in MiB, that large rewrites may hold at once (a rewrite costs several times its
/// input): beyond it, large rewrites wait for each other.
const REWRITE_BUDGET_MIB: u32 = 256;

// Header names as constants: a lookup by `&str` parses the name on every request.
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const ORIGIN: HeaderName = http::header::ORIGIN;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How denied calls are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Denials {
    /// Indistinguishable from an unknown item (the server's own "not found" error).
    #[default]
    Hidden,
    /// A "forbidden" JSON-RPC error carrying the policy's `@reason`.
    Visible,
}

/// What happens to requests and notifications whose method idguard does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownMethods {
    /// Refused: a request gets `-32601` (method not found) from idguard, a notification is
    /// not forwarded. A method idguard does not know may name what policies would hide.
    #[default]
    Refuse,
    /// Forwarded undecided (their replies are still filtered like every other reply).
    Pass,
}

/// Authorizes MCP traffic per caller. See the [module docs](super).
#[derive(Clone, Debug)]
#[must_use]
pub struct AuthorizeMcpLayer {
    shared: Shared,
}

/// What every service built from one layer uses: shared state, plus settings.
#[derive(Clone, Debug)]
struct Shared {
    state: Arc<State>,
    max_body_bytes: usize,
    max_reply_bytes: usize,
    denials: Denials,
    unknown_methods: UnknownMethods,
    step_up_challenge: HeaderValue,
    hosts: AllowedHosts,
    binder: Binder,
}

/// Caches shared by all services of one layer.
#[derive(Debug)]
struct State {
    engine: PolicyEngine,
    catalog: ToolCatalog,
    /// Requests decided per (caller, session), for replayed streams.
    decided: Cache<String, Arc<Decided>>,
    /// Requests each record of `decided` keeps.
    requests_per_session: usize,
    /// Bounds the memory of concurrent large reply rewrites.
    rewrites: Arc<tokio::sync::Semaphore>,
}

/// The hosts (and origins) the MCP endpoint answers to: DNS-rebinding protection.
#[derive(Clone, Debug, Default)]
struct AllowedHosts {
    /// `host` or `host:port`, lowercase.
    hosts: Vec<String>,
    /// Any loopback name (`localhost`, `127.0.0.1`, `[::1]`) on any port.
    loopback: bool,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host == "[::1]"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host` (lowercase, brackets kept for IPv6) and port of an authority.
fn split_authority(authority: &str) -> (String, Option<&str>) {
    let authority = authority.trim();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    (host.to_ascii_lowercase(), port)
}

impl AllowedHosts {
    fn for_url(url: &str) -> Self {
        let mut hosts = Self::default();
        if let Ok(u) = url::Url::parse(url)
            && let Some(host) = u.host_str()
        {
            let host = host.to_ascii_lowercase();
            if is_loopback(&host) {
                hosts.loopback = true;
            }
            match u.port_or_known_default() {
                Some(port) => hosts.hosts.push(format!("{host}:{port}")),
                None => hosts.hosts.push(host),
            }
        }
        hosts
    }

    fn allows(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        if self.loopback && is_loopback(&host) {
            return true;
        }
        self.hosts
            .iter()
            .any(|allowed| match allowed.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => {
                    *h == host && port.is_none_or(|port| port == p)
                }
                _ => *allowed == host,
            })
    }

    /// Whether a request's `Host` and `Origin` are ones this endpoint answers to.
    fn check(&self, parts: &http::request::Parts) -> bool {
        let mut hosts = parts.headers.get_all(http::header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => h.to_str().ok(),
            (None, None) => parts.uri.authority().map(http::uri::Authority::as_str),
            _ => return false,
        };
        if !host.is_some_and(|h| self.allows(h)) {
            return false;
        }
        let mut origins = parts.headers.get_all(ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, None) => true,
            (Some(origin), None) => origin
                .to_str()
                .ok()
                .and_then(|o| url::Url::parse(o).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .and_then(|u| {
                    let host = u.host_str()?.to_ascii_lowercase();
                    Some(match u.port() {
                        Some(p) => format!("{host}:{p}"),
                        None => host,
                    })
                })
                .is_some_and(|o| self.allows(&o)),
            _ => false,
        }
    }
}

impl AuthorizeMcpLayer {
    /// A layer deciding with `engine`; step-up challenges name `resource_metadata_url`,
    /// and requests are answered only for that URL's host (any loopback name when it is a
    /// loopback one; add others with [`with_allowed_hosts`](Self::with_allowed_hosts)).
    /// Session and task handles are bound with a random key, valid in this process only
    /// (set shared keys with [`with_session_keys`](Self::with_session_keys)).
    pub fn new(engine: PolicyEngine, resource_metadata_url: &str) -> Self {
        let binder = Binder::random();
        Self {
            shared: Shared {
                state: Arc::new(State::new(engine, &McpCacheCapacities::default())),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
                denials: Denials::default(),
                unknown_methods: UnknownMethods::default(),
                step_up_challenge: Challenge::step_up(resource_metadata_url).header_or_minimal(),
                hosts: AllowedHosts::for_url(resource_metadata_url),
                binder,
            },
        }
    }

    /// Limit on request bodies (default [`DEFAULT_MAX_BODY_BYTES`]); larger ones get `413`.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.shared.max_body_bytes = max;
        self
    }

    /// Limit on a JSON reply or one SSE event that idguard reads (default
    /// [`DEFAULT_MAX_REPLY_BYTES`]); a larger one fails closed (`502`, or the stream ends).
    pub fn with_max_reply_bytes(mut self, max: usize) -> Self {
        self.shared.max_reply_bytes = max;
        self
    }

    /// How denials are answered (default [`Denials::Hidden`]).
    pub fn with_denials(mut self, denials: Denials) -> Self {
        self.shared.denials = denials;
        self
    }

    /// What happens to methods idguard does not know (default [`UnknownMethods::Refuse`]).
    pub fn with_unknown_methods(mut self, unknown: UnknownMethods) -> Self {
        self.shared.unknown_methods = unknown;
        self
    }

    /// More hosts (`host` or `host:port`) the endpoint answers to, e.g. the public name
    /// behind a load balancer. `Host` and `Origin` must name one of them.
    pub fn with_allowed_hosts<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        hosts: I,
    ) -> Self {
        self.shared
            .hosts
            .hosts
            .extend(hosts.into_iter().map(|h| h.into().to_ascii_lowercase()));
        self
    }

    /// Secrets (at least 32 bytes each) that bind session and task handles to their
    /// callers: the first signs, all verify. Every replica needs the same secrets. Returns
    /// `None` when a secret is too short or none is given.
    pub fn with_session_keys(mut self, secrets: &[&[u8]]) -> Option<Self> {
        self.shared.binder = Binder::new(secrets)?;
        Some(self)
    }

    /// Sizes the tool catalog and the per-session record of decided requests (default:
    /// [`McpCacheCapacities::default`]); see [`McpCacheCapacities`] for what each costs and
    /// what happens when one is too small. Both start empty: call this while building the
    /// layer, before it serves requests.
    pub fn with_cache_capacities(mut self, capacities: McpCacheCapacities) -> Self {
        let engine = self.shared.state.engine.clone();
        self.shared.state = Arc::new(State::new(engine, &capacities));
        self
    }
}

impl State {
    fn new(engine: PolicyEngine, capacities: &McpCacheCapacities) -> Self {
        Self {
            engine,
            catalog: ToolCatalog::with_capacities(capacities),
            decided: Cache::builder()
                .name("idguard-mcp-decided")
                .max_capacity(capacities.sessions)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            requests_per_session: usize::try_from(capacities.requests_per_session)
                .unwrap_or(usize::MAX),
            rewrites: Arc::new(tokio::sync::Semaphore::new(REWRITE_BUDGET_MIB as usize)),
        }
    }

    /// The record of the session `key` (a new, empty one at first).
    fn session_record(&self, key: &str) -> Arc<Decided> {
        self.decided.get_with(key.to_owned(), || {
            Arc::new(Decided::new(self.requests_per_session))
        })
    }
}

impl<S> Layer<S> for AuthorizeMcpLayer {
    type Service = AuthorizeMcp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeMcp {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

/// The service built by [`AuthorizeMcpLayer`].
#[derive(Clone, Debug)]
pub struct AuthorizeMcp<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> AuthorizeMcp<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthorizeMcp<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: deciding needs the request body, which arrives asynchronously, and the reply
    // may be rewritten; one allocation per request is small next to that work.
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move { Ok(handle(shared, inner, req).await) })
    }
}

fn reject(kind: RejectionKind) -> Response<Body> {
    Rejection::new(kind, None).into_response()
}

/// A rejection whose body is a JSON-RPC error (for MCP clients, which read it).
fn reject_rpc(kind: RejectionKind, id: Option<&Value>, code: i64, message: &str) -> Response<Body> {
    let mut res: Response<Body> = Rejection::new(kind, None).into_response();
    let body = jsonrpc::error(id.unwrap_or(&Value::Null), code, message, None);
    *res.body_mut() = Body::from(body.to_string());
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `404` for a session that retired as many request ids as it may: MCP clients start a new
/// session, as for one the server forgot.
fn session_ended(principal: &Principal) -> Response<Body> {
    tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), oid = principal.object_id(), "mcp session ended: it retired as many request ids as it may");
    reject_rpc(
        RejectionKind::SessionNotFound,
        None,
        -32001,
        "Session not found",
    )
}

fn json_response(value: &Value) -> Response<Body> {
    let mut res = Response::new(Body::from(value.to_string()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The `Mcp-Session-Id` of a request: at most one, visible ASCII.
fn session_header(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(MCP_SESSION_ID).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => {
            let bytes = v.as_bytes();
            if bytes.is_empty() || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err(());
            }
            v.to_str().map(Some).map_err(|_| ())
        }
        (Some(_), Some(_)) => Err(()),
    }
}

/// Whether a request body is labelled plain `application/json` (UTF-8 at most) and not
/// encoded: the server must read exactly the bytes idguard decided on.
fn plain_json(headers: &HeaderMap) -> bool {
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return false;
    }
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (Some(ct), None) = (types.next(), types.next()) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else { return false };
    media_type_is(ct, "application/json")
}

/// Whether `value` is the media type `expected` with no parameter but `charset=utf-8`.
pub(crate) fn media_type_is(value: &str, expected: &str) -> bool {
    let mut parts = value.split(';');
    if !parts
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(expected))
    {
        return false;
    }
    parts.all(|param| {
        let Some((name, v)) = param.split_once('=') else {
            return false;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        name.trim().eq_ignore_ascii_case("charset")
            && (v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8"))
    })
}

/// The progress token a request asked for (`params._meta.progressToken`).
fn progress_token(meta: Option<&serde_json::value::RawValue>) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "progressToken")]
        progress_token: Option<Value>,
    }
    serde_json::from_str::<Meta>(meta?.get())
        .ok()?
        .progress_token
}

async fn handle<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let Some(principal) = parts.extensions.get::<Principal>().cloned() else {
        tracing::error!(target: "idguard::rejection", "no principal: put ValidateTokenLayer before AuthorizeMcpLayer");
        return reject(RejectionKind::Internal);
    };
    if !shared.hosts.check(&parts) {
        tracing::debug!(target: "idguard::rejection", "mcp request for a host or from an origin this endpoint does not serve");
        return reject_rpc(
            RejectionKind::ForbiddenOrigin,
            None,
            -32600,
            "forbidden host or origin",
        );
    }
    let owner = binding::owner(&principal);
    // The caller sees idguard's handle; the server gets its own id back.
    let session = match session_header(&parts.headers) {
        Err(()) => {
            return reject_rpc(
                RejectionKind::BadRequest,
                None,
                -32600,
                "bad Mcp-Session-Id header",
            );
        }
        Ok(None) => None,
        Ok(Some(handle)) => match shared.binder.unwrap(Handle::Session, &owner, handle) {
            Some(id) => Some(id),
            None => {
                tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), oid = principal.object_id(), "mcp session id not held by this caller");
                return reject_rpc(
                    RejectionKind::SessionNotFound,
                    None,
                    -32001,
                    "Session not found",
                );
            }
        },
    };
    if let Some(id) = &session {
        match HeaderValue::from_str(id) {
            Ok(v) => {
                parts.headers.insert(MCP_SESSION_ID, v);
            }
            Err(_) => return reject(RejectionKind::BadGateway),
        }
    }
    let decided_key = session.as_ref().map(|s| format!("{owner}\n{s}"));
    // A session that retired as many request ids as it may is over (see
    // `McpCacheCapacities`); it can still be deleted.
    if parts.method != Method::DELETE
        && let Some(k) = &decided_key
        && shared.state.decided.get(k).is_some_and(|r| r.is_ended())
    {
        return session_ended(&principal);
    }
    let tasks = TaskIds {
        binder: shared.binder.clone(),
        owner: owner.clone(),
    };

    match parts.method {
        Method::POST => {}
        Method::GET => {
            // A stream of the server's own: notifications, requests, and (when resumed)
            // replies replayed. Replies pass only for requests decided in this session.
            let session_record = decided_key.as_ref().map(|k| shared.state.session_record(k));
            let res = call(&mut inner, Request::from_parts(parts, Body::new(body))).await;
            let rewriter = ReplyRewriter {
                engine: shared.state.engine.clone(),
                principal,
                pending: Vec::new(),
                session: Some(session_record.unwrap_or_default()),
                progress: Vec::new(),
                tasks,
                catalog: shared.state.catalog.clone(),
            };
            return finish(&shared, res, &owner, rewriter).await;
        }
        Method::DELETE => {
            let res = call(&mut inner, Request::from_parts(parts, Body::empty())).await;
            // Forgotten only once the server ended the session (it may refuse, `405`): the
            // record is what refuses reused ids while the session lives.
            if res.status().is_success()
                && let Some(k) = &decided_key
            {
                shared.state.decided.invalidate(k);
            }
            let (mut rparts, _) = res.into_parts();
            if !wrap_session(&shared, &owner, &mut rparts.headers) {
                return reject(RejectionKind::BadGateway);
            }
            rparts.headers.remove(CONTENT_LENGTH);
            return Response::from_parts(rparts, Body::empty());
        }
        _ => return reject(RejectionKind::MethodNotAllowed),
    }

    if !plain_json(&parts.headers) {
        tracing::debug!(target: "idguard::rejection", "mcp request body not plain application/json");
        return reject_rpc(
            RejectionKind::UnsupportedMediaType,
            None,
            -32600,
            "the body must be application/json (UTF-8, not encoded)",
        );
    }
    let bytes = match Limited::new(body, shared.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                reject(RejectionKind::PayloadTooLarge)
            } else {
                reject(RejectionKind::BadRequest)
            };
        }
    };
    let messages = match std::str::from_utf8(&bytes)
        .map_err(|_| jsonrpc::Malformed("the body is not UTF-8"))
        .and_then(|_| jsonrpc::parse_body(&bytes))
    {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(target: "idguard::rejection", reason = e.0, "not json-rpc");
            return reject_rpc(RejectionKind::BadRequest, None, -32600, e.0);
        }
    };
    if !standard_headers_agree(&parts.headers, &messages) {
        return reject_rpc(
            RejectionKind::BadRequest,
            messages.first().and_then(|m| m.ask.id()),
            HEADER_MISMATCH_CODE,
            "header mismatch: Mcp-Method, Mcp-Name or MCP-Protocol-Version disagree with the body",
        );
    }

    // Decide every request before the server sees any of them.
    let mut pending: Vec<(Value, Pending)> = Vec::with_capacity(messages.len());
    let mut denials: Vec<(Value, Refusal)> = Vec::new();
    let mut progress = Vec::new();
    let mut task_ids: Vec<(usize, String)> = Vec::new();
    let mut unknown_notifications = false;
    for (index, m) in messages.iter().enumerate() {
        match &m.ask {
            Ask::CallTool {
                id,
                name,
                arguments,
                task,
            } => {
                let tool = match shared.state.catalog.get(name) {
                    Some(t) => Ok(Some(t)),
                    None => {
                        fetch_tool(
                            &shared,
                            &mut inner,
                            &parts.headers,
                            &parts.extensions,
                            name,
                            m.meta.as_deref(),
                        )
                        .await
                    }
                };
                let tool = match tool {
                    Ok(t) => t,
                    Err(Unreachable) => {
                        return reject_rpc(
                            RejectionKind::BadGateway,
                            Some(id),
                            -32603,
                            "the MCP server is unavailable",
                        );
                    }
                };
                // A tool the server does not list cannot be allowed.
                let decision = match tool {
                    Some(tool) => shared.state.engine.decide(
                        &principal,
                        &Item::Tool(tool),
                        Phase::Call,
                        arguments.as_ref(),
                    ),
                    None => Decision::Deny(crate::policy::Denied::default()),
                };
                match decision {
                    Decision::Allow(a) if !a.redact.is_empty() && *task => {
                        denials.push((id.clone(), Refusal::RedactedTask));
                    }
                    Decision::Allow(a) if !a.redact.is_empty() => {
                        if let Some(token) = progress_token(m.meta.as_deref()) {
                            progress.push((token, a.redact.clone()));
                        }
                        pending.push((id.clone(), Pending::Redact(a.redact)));
                    }
                    Decision::Allow(_) => pending.push((id.clone(), Pending::Pass)),
                    Decision::Deny(d) => denials.push((
                        id.clone(),
                        Refusal::Denied(Item::Tool(ToolInfo::new(name.clone())), d),
                    )),
                }
            }
            Ask::Use { id, item, list } => {
                match shared
                    .state
                    .engine
                    .decide(&principal, item, Phase::Call, None)
                {
                    Decision::Deny(d) => {
                        denials.push((id.clone(), Refusal::Denied(item.clone(), d)))
                    }
                    Decision::Allow(_) => {
                        pending.push((id.clone(), list.map_or(Pending::Pass, Pending::List)))
                    }
                }
            }
            Ask::List { id, kind } => pending.push((id.clone(), Pending::List(*kind))),
            Ask::Task { id, task_id } => {
                match shared.binder.unwrap(Handle::Task, &owner, task_id) {
                    Some(raw) => {
                        task_ids.push((index, raw));
                        pending.push((id.clone(), Pending::Pass));
                    }
                    None => denials.push((id.clone(), Refusal::UnknownTask)),
                }
            }
            Ask::TaskList { id } => pending.push((id.clone(), Pending::TaskList)),
            Ask::Plain { id } => pending.push((id.clone(), Pending::Pass)),
            Ask::Unknown { id } => match shared.unknown_methods {
                UnknownMethods::Pass => pending.push((id.clone(), Pending::Pass)),
                UnknownMethods::Refuse => denials.push((id.clone(), Refusal::UnknownMethod)),
            },
            Ask::UnknownNotification => {
                unknown_notifications |= shared.unknown_methods == UnknownMethods::Refuse;
            }
            Ask::Other => {}
        }
    }
    if !denials.is_empty() {
        return deny(&shared, &messages, denials);
    }
    if unknown_notifications {
        if pending.is_empty() {
            // Only notifications (and client responses): accepted, and not forwarded.
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::ACCEPTED;
            return res;
        }
        return reject_rpc(
            RejectionKind::BadRequest,
            None,
            -32600,
            "the batch carries a notification idguard does not forward",
        );
    }

    // Task handles become the server's ids again: the body is written anew.
    let bytes = if task_ids.is_empty() {
        bytes
    } else {
        match with_server_task_ids(&bytes, &task_ids) {
            Some(b) => Bytes::from(b),
            None => return reject(RejectionKind::BadRequest),
        }
    };
    if let Some(key) = &decided_key {
        match shared.state.session_record(key).record(&pending, &progress) {
            Recorded::Fresh => {}
            Recorded::Reused => {
                tracing::debug!(target: "idguard::rejection", "mcp request id used twice in one session");
                return reject_rpc(
                    RejectionKind::BadRequest,
                    None,
                    -32600,
                    "a request id was already used in this session",
                );
            }
            Recorded::Ended => return session_ended(&principal),
        }
    }

    // The server reads exactly these bytes, labelled so every parser reads them alike.
    parts.headers.remove(CONTENT_ENCODING);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let res = call(&mut inner, Request::from_parts(parts, Body::from(bytes))).await;
    let rewriter = ReplyRewriter {
        engine: shared.state.engine.clone(),
        principal,
        pending,
        session: None,
        progress,
        tasks,
        catalog: shared.state.catalog.clone(),
    };
    finish(&shared, res, &owner, rewriter).await
}

/// The body with `params.taskId` of the messages at the given indexes replaced.
fn with_server_task_ids(bytes: &[u8], ids: &[(usize, String)]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    for (index, raw) in ids {
        let msg = match &mut v {
            Value::Array(items) => items.get_mut(*index)?,
            one if *index == 0 => one,
            _ => return None,
        };
        let params = msg.get_mut("params")?.as_object_mut()?;
        params.insert("taskId".into(), Value::String(raw.clone()));
    }
    serde_json::to_vec(&v).ok()
}

/// Replaces the server's `Mcp-Session-Id` with the caller's handle; `false` when it cannot.
fn wrap_session(shared: &Shared, owner: &str, headers: &mut HeaderMap) -> bool {
    let Some(id) = headers.get(MCP_SESSION_ID) else {
        return true;
    };
    let Some(handle) = id
        .to_str()
        .ok()
        .and_then(|id| shared.binder.wrap(Handle::Session, owner, id))
    else {
        tracing::error!(target: "idguard::rejection", "the MCP server's session id cannot be bound (not ASCII, or too long)");
        return false;
    };
    match HeaderValue::from_str(&handle) {
        Ok(v) => {
            headers.insert(MCP_SESSION_ID, v);
            true
        }
        Err(_) => false,
    }
}

/// Binds the reply's session id to the caller and filters its body.
async fn finish<B>(
    shared: &Shared,
    res: Response<B>,
    owner: &str,
    rewriter: ReplyRewriter,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    if !wrap_session(shared, owner, &mut parts.headers) {
        return reject(RejectionKind::BadGateway);
    }
    rewrite_reply(shared, Response::from_parts(parts, body), rewriter).await
}

async fn call<S, ResBody>(inner: &mut S, req: Request<Body>) -> Response<ResBody>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>,
{
    match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        Ok(()) => match inner.call(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    }
}

/// 2026-07-28 `Mcp-Method` / `Mcp-Name` headers, when present, must match the body, and
/// `MCP-Protocol-Version` must match the version a message names in its `_meta`.
fn standard_headers_agree(headers: &HeaderMap, messages: &[Message]) -> bool {
    if let Some(version) = headers.get(MCP_PROTOCOL_VERSION) {
        let Ok(version) = version.to_str() else {
            return false;
        };
        if messages
            .iter()
            .any(|m| meta_protocol_version(m.meta.as_deref()).is_some_and(|v| v != version))
        {
            return false;
        }
    }
    let method = headers.get(MCP_METHOD).map(HeaderValue::to_str);
    let name = headers.get(MCP_NAME).map(HeaderValue::to_str);
    if method.is_none() && name.is_none() {
        return true;
    }
    let [m] = messages else { return false };
    let method_ok = match method {
        None => true,
        Some(Ok(h)) => m.method.as_deref() == Some(h),
        Some(Err(_)) => false,
    };
    let name_ok = match name {
        None => true,
        Some(Ok(h)) => m.name.as_deref() == Some(h),
        Some(Err(_)) => false,
    };
    method_ok && name_ok
}

/// `params._meta["io.modelcontextprotocol/protocolVersion"]` of a 2026-07-28 request.
fn meta_protocol_version(meta: Option<&serde_json::value::RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
        version: Option<String>,
    }
    serde_json::from_str::<Meta>(meta?.get()).ok()?.version
}

/// Why a request is refused before it reaches the server.
enum Refusal {
    /// The policies deny it.
    Denied(Item, crate::policy::Denied),
    /// A call whose result is redacted asked to run as a task.
    RedactedTask,
    /// A task handle this caller does not hold.
    UnknownTask,
    /// A method idguard does not mediate.
    UnknownMethod,
}

/// Answers a request with refused requests without calling the server.
fn deny(shared: &Shared, messages: &[Message], denials: Vec<(Value, Refusal)>) -> Response<Body> {
    // One call that MFA would allow: an authentication challenge.
    if let ([_], [(_, Refusal::Denied(_, denied))]) = (messages, denials.as_slice())
        && denied.step_up.as_deref() == Some("mfa")
    {
        return Rejection::new(
            RejectionKind::StepUpRequired,
            Some(shared.step_up_challenge.clone()),
        )
        .into_response();
    }
    // The rest of a batch is refused with the denied call(s): nothing reaches the server.
    let denied_ids: Vec<Value> = denials.iter().map(|(id, _)| id.clone()).collect();
    let mut all: Vec<Value> = denials
        .into_iter()
        .map(|(id, refusal)| match refusal {
            Refusal::Denied(item, denied) => match shared.denials {
                Denials::Hidden => hidden_error(&id, &item),
                Denials::Visible => {
                    let message = match &denied.reason {
                        Some(r) => format!("forbidden: {r}"),
                        None => "forbidden".to_owned(),
                    };
                    jsonrpc::error(&id, FORBIDDEN_CODE, &message, None)
                }
            },
            Refusal::RedactedTask => jsonrpc::error(
                &id,
                FORBIDDEN_CODE,
                "forbidden: this tool's results are redacted for this caller, so it cannot run as a task",
                None,
            ),
            Refusal::UnknownTask => jsonrpc::error(&id, -32602, "task not found", None),
            Refusal::UnknownMethod => {
                jsonrpc::error(&id, METHOD_NOT_FOUND_CODE, "Method not found", None)
            }
        })
        .collect();
    for m in messages {
        if let Some(id) = m.ask.id()
            && !denied_ids.contains(id)
        {
            all.push(jsonrpc::error(
                id,
                -32600,
                "refused: the batch contains a request that is not allowed",
                None,
            ));
        }
    }
    if messages.len() == 1 {
        match all.into_iter().next() {
            Some(one) => json_response(&one),
            None => reject(RejectionKind::Internal),
        }
    } else {
        json_response(&Value::Array(all))
    }
}

/// The error a server gives for an item it does not have (rmcp's wording).
fn hidden_error(id: &Value, item: &Item) -> Value {
    match item {
        Item::Tool(_) => jsonrpc::error(id, -32602, "tool not found", None),
        Item::Resource(r) => jsonrpc::error(
            id,
            -32002,
            "Resource not found",
            Some(serde_json::json!({"uri": r.uri})),
        ),
        Item::Prompt(p) => {
            jsonrpc::error(id, -32602, &format!("prompt '{}' not found", p.name), None)
        }
    }
}

/// Filters a reply, as JSON or as a stream of SSE events. What idguard cannot read where
/// it must filter fails closed: `502`, or the event dropped.
async fn rewrite_reply<B>(
    shared: &Shared,
    res: Response<B>,
    rewriter: ReplyRewriter,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let content_type = content_type.as_str();
    // An encoded body cannot be read: it falls to the end and fails closed.
    let encoded = parts.headers.contains_key(CONTENT_ENCODING);
    if !encoded && media_type_is(content_type, "text/event-stream") {
        parts.headers.remove(CONTENT_LENGTH);
        let sse = SseRewriter::new(
            move |data: &str| rewriter.rewrite_event(data),
            shared.max_reply_bytes,
        );
        return Response::from_parts(parts, Body::new(RewriteSse::new(body, sse)));
    }
    if !encoded && media_type_is(content_type, "application/json") {
        let bytes = match Limited::new(body, shared.max_reply_bytes).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                tracing::error!(target: "idguard::rejection", "mcp reply unreadable or too large to filter");
                return reject(RejectionKind::BadGateway);
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // No message at all (an accepted notification): nothing to filter.
            parts.headers.remove(CONTENT_LENGTH);
            return Response::from_parts(parts, Body::empty());
        }
        // A large rewrite costs several times its size: their memory together is bounded.
        let _permit = if bytes.len() > LARGE_REPLY_BYTES {
            let mib = u32::try_from(bytes.len().div_ceil(1024 * 1024) * 4)
                .unwrap_or(REWRITE_BUDGET_MIB)
                .min(REWRITE_BUDGET_MIB);
            shared
                .state
                .rewrites
                .clone()
                .acquire_many_owned(mib)
                .await
                .ok()
        } else {
            None
        };
        let out = match rewriter.rewrite_json(&bytes) {
            Ok(Some(rewritten)) => Bytes::from(rewritten),
            Ok(None) => bytes,
            Err(_) => {
                tracing::error!(target: "idguard::rejection", upstream_status = %parts.status, "mcp reply that is not JSON, or answers no request idguard decided");
                return reject(RejectionKind::BadGateway);
            }
        };
        parts.headers.remove(CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(out));
    }
    // Any other type may only be empty (an accepted notification, an error status without
    // content): a body idguard cannot read may carry what must be filtered.
    let empty = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .is_ok_and(|c| c.to_bytes().is_empty());
    if empty {
        parts.headers.remove(CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    tracing::error!(target: "idguard::rejection", %content_type, upstream_status = %parts.status, "mcp reply of a type idguard does not read");
    reject(RejectionKind::BadGateway)
}

/// The MCP server could not be asked.
#[derive(Debug)]
struct Unreachable;

/// Asks the server for its tools (as the caller, with the caller's request extensions, in
/// the caller's session and protocol era) to learn the annotations of `name`. `Ok(None)` when the server does not list it
/// (remembered for a short while, so calls to unlisted names do not each cost a list);
/// [`Unreachable`] when the server cannot be asked.
async fn fetch_tool<S, ResBody>(
    shared: &Shared,
    inner: &mut S,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    name: &str,
    meta: Option<&serde_json::value::RawValue>,
) -> Result<Option<ToolInfo>, Unreachable>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    if shared.state.catalog.is_unlisted(name) {
        return Ok(None);
    }
    let mut cursor: Option<String> = None;
    // Ids no caller can predict: a server routes replies by id, and a caller's request
    // with the same id must never receive this unfiltered list.
    let nonce = uuid::Uuid::new_v4().simple();
    for page in 0..20 {
        let id = format!("idguard-catalog-{nonce}-{page}");
        let mut params = serde_json::Map::new();
        if let Some(c) = &cursor {
            params.insert("cursor".into(), Value::from(c.as_str()));
        }
        // The 2026-07-28 envelope (protocol version, capabilities, client) travels in
        // `_meta`: the server answers a list only in the era the caller speaks.
        if let Some(meta) = meta
            && let Ok(meta) = serde_json::from_str::<Value>(meta.get())
        {
            let meta = match meta {
                Value::Object(mut m) => {
                    m.remove("progressToken");
                    Value::Object(m)
                }
                other => other,
            };
            params.insert("_meta".into(), meta);
        }
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
        let body = body.to_string();
        let mut req = Request::post("/")
            .body(Body::from(body.clone()))
            .map_err(|_| Unreachable)?;
        for (k, v) in headers {
            if k != CONTENT_LENGTH && k != MCP_METHOD && k != MCP_NAME && k != CONTENT_TYPE {
                req.headers_mut().append(k.clone(), v.clone());
            }
        }
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if headers.contains_key(MCP_METHOD) {
            h.insert(MCP_METHOD, HeaderValue::from_static("tools/list"));
        }
        // The caller's extensions (the caller, and what an upstream credential needs).
        *req.extensions_mut() = extensions.clone();
        let res = tokio::time::timeout(Duration::from_secs(10), call(inner, req))
            .await
            .map_err(|_| Unreachable)?;
        let status = res.status();
        let bytes = tokio::time::timeout(
            Duration::from_secs(10),
            Limited::new(res.into_body(), shared.max_reply_bytes).collect(),
        )
        .await
        .map_err(|_| Unreachable)?
        .map_err(|_| Unreachable)?
        .to_bytes();
        if status.is_server_error() {
            return Err(Unreachable);
        }
        let Some(reply) = find_reply(&bytes, &id) else {
            return Ok(None);
        };
        let Some(result) = reply.get("result") else {
            return Ok(None);
        };
        let tools: Vec<ToolInfo> = result
            .get("tools")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(ToolInfo::from_mcp).collect())
            .unwrap_or_default();
        shared.state.catalog.learn(tools);
        if let Some(t) = shared.state.catalog.get(name) {
            return Ok(Some(t));
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    shared.state.catalog.unlisted(name);
    Ok(None)
}

/// The JSON-RPC reply with `id` in a JSON or SSE body.
fn find_reply(bytes: &[u8], id: &str) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    let matches = |v: &Value| v.get("id").and_then(Value::as_str) == Some(id);
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return matches(&v).then_some(v);
    }
    text.split(['\n', '\r'])
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim_start()).ok())
        .find(matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tower::{ServiceExt as _, service_fn};

    /// A server that answers every `POST` in session `s1` and, on `GET`, replays its
    /// replies to requests 1, 2 and 3.
    async fn server(req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let res = if req.method() == Method::GET {
            let events: String = (1..=3)
                .map(|id| {
                    format!(
                        "id: e{id}\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}\n\n"
                    )
                })
                .collect();
            Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .body(Body::from(events))
        } else {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let request: Value = serde_json::from_slice(&body).unwrap();
            let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {}});
            Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .header(MCP_SESSION_ID, "s1")
                .body(Body::from(reply.to_string()))
        };
        Ok(res.unwrap())
    }

    /// The ids whose replies a replayed stream passes on, after requests 1, 2 and 3 in one
    /// session, with the layer's memory sized by `capacities`.
    async fn replayed(capacities: McpCacheCapacities) -> Vec<u64> {
        let engine = PolicyEngine::from_sources(
            include_str!("../../policies/schema.cedarschema"),
            None,
            [(
                "p.cedar",
                r#"@id("all") permit (principal, action, resource);"#,
            )],
        )
        .unwrap();
        let service = AuthorizeMcpLayer::new(
            engine,
            "http://localhost/.well-known/oauth-protected-resource/mcp",
        )
        .with_cache_capacities(capacities)
        .layer(service_fn(server));
        let principal = Principal::from_unvalidated_claims(
            &json!({"tid": "t", "oid": "o", "scp": "mcp.tools"}),
        )
        .unwrap();
        let request = |method: Method, session: Option<&HeaderValue>, body: Body| {
            let mut req = Request::builder()
                .method(method)
                .uri("http://localhost/mcp")
                .header(CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap();
            if let Some(s) = session {
                req.headers_mut().insert(MCP_SESSION_ID, s.clone());
            }
            req.extensions_mut().insert(principal.clone());
            req
        };
        let ping =
            |id: u64| Body::from(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string());
        let opened = service
            .clone()
            .oneshot(request(Method::POST, None, ping(0)))
            .await
            .unwrap();
        let session = opened.headers().get(MCP_SESSION_ID).unwrap().clone();
        for id in 1..=3 {
            let res = service
                .clone()
                .oneshot(request(Method::POST, Some(&session), ping(id)))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let res = service
            .oneshot(request(Method::GET, Some(&session), Body::empty()))
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["id"].as_u64())
            .collect()
    }

    #[tokio::test]
    async fn a_session_record_too_small_drops_replayed_replies_it_forgot() {
        assert_eq!(replayed(McpCacheCapacities::default()).await, [1, 2, 3]);
        let two = McpCacheCapacities::default().with_requests_per_session(2);
        assert_eq!(replayed(two).await, [2, 3], "request 1 was forgotten");
    }

    /// What [`storing_server`] received and sent.
    #[derive(Clone, Default)]
    struct Store {
        /// Every reply sent, in order: all are replayed on `GET`, as an event store does.
        replies: Arc<std::sync::Mutex<Vec<Value>>>,
        /// The `(method, id)` of every request received.
        requests: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    }

    const OWNER_EMAIL: &str = "owner@contoso.com";

    /// A server in session `s1` that lists the sample tools (`policies/tools.json`),
    /// answers `read_document` with its owner's email, keeps every reply and replays them
    /// all on `GET`, and refuses `DELETE` (`405`, as servers that do not let clients end
    /// sessions do).
    async fn storing_server(
        store: Store,
        req: Request<Body>,
    ) -> Result<Response<Body>, Infallible> {
        let res = match *req.method() {
            Method::GET => {
                let events: String = store
                    .replies
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(n, reply)| format!("id: e{n}\ndata: {reply}\n\n"))
                    .collect();
                Response::builder()
                    .header(CONTENT_TYPE, "text/event-stream")
                    .body(Body::from(events))
            }
            Method::DELETE => Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(Body::empty()),
            _ => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let request: Value = serde_json::from_slice(&body).unwrap();
                let method = request["method"].as_str().unwrap_or_default();
                store
                    .requests
                    .lock()
                    .unwrap()
                    .push((method.to_owned(), request["id"].clone()));
                let result = match (method, request["params"]["name"].as_str()) {
                    ("tools/list", _) => {
                        serde_json::from_str(include_str!("../../policies/tools.json")).unwrap()
                    }
                    ("tools/call", Some("read_document")) => json!({
                        "content": [{"type": "text", "text": "doc-1"}],
                        "structuredContent": {"id": "doc-1", "owner_email": OWNER_EMAIL},
                    }),
                    ("tools/call", _) => json!({"content": [{"type": "text", "text": "bob"}]}),
                    _ => json!({}),
                };
                let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
                store.replies.lock().unwrap().push(reply.clone());
                Response::builder()
                    .header(CONTENT_TYPE, "application/json")
                    .header(MCP_SESSION_ID, "s1")
                    .body(Body::from(reply.to_string()))
            }
        };
        Ok(res.unwrap())
    }

    type Mcp = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

    /// The layer with the sample policies (`policies/`) in front of a [`storing_server`],
    /// and a session opened in it by bob (`Tools.Read`: `read_document` is redacted for
    /// him, `whoami` is not).
    async fn bob_in_a_session(capacities: McpCacheCapacities) -> (Mcp, HeaderValue, Store) {
        let engine =
            PolicyEngine::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")).unwrap();
        let store = Store::default();
        let server = store.clone();
        let mcp = Mcp::new(
            AuthorizeMcpLayer::new(
                engine,
                "http://localhost/.well-known/oauth-protected-resource/mcp",
            )
            .with_cache_capacities(capacities)
            .layer(service_fn(move |req| storing_server(server.clone(), req))),
        );
        let opened = send(&mcp, Method::POST, None, Some(ping(0))).await;
        let session = opened.headers().get(MCP_SESSION_ID).unwrap().clone();
        (mcp, session, store)
    }

    async fn send(
        mcp: &Mcp,
        method: Method,
        session: Option<&HeaderValue>,
        body: Option<Value>,
    ) -> Response<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri("http://localhost/mcp")
            .header(CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        if let Some(s) = session {
            req.headers_mut().insert(MCP_SESSION_ID, s.clone());
        }
        let bob = Principal::from_unvalidated_claims(
            &json!({"tid": "t", "oid": "o", "scp": "mcp.tools", "roles": ["Tools.Read"]}),
        )
        .unwrap();
        req.extensions_mut().insert(bob);
        mcp.clone().oneshot(req).await.unwrap()
    }

    async fn text(res: Response<Body>) -> String {
        let body = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn ping(id: u64) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
    }

    fn call(id: u64, tool: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": {"id": "doc-1"}}})
    }

    #[tokio::test]
    async fn a_forgotten_request_id_is_never_used_again() {
        let two = McpCacheCapacities::default().with_requests_per_session(2);
        let (mcp, session, store) = bob_in_a_session(two).await;
        let s = Some(&session);
        let redacted = send(&mcp, Method::POST, s, Some(call(1, "read_document"))).await;
        assert_eq!(redacted.status(), StatusCode::OK);
        let redacted = text(redacted).await;
        assert!(
            redacted.contains("doc-1") && !redacted.contains(OWNER_EMAIL),
            "{redacted}"
        );
        for id in [2, 3] {
            let res = send(&mcp, Method::POST, s, Some(ping(id))).await;
            assert_eq!(res.status(), StatusCode::OK, "{id}");
        }
        // Request 1 is forgotten; a call that is not redacted with its id would have the
        // server's reply to the first call replayed as its own, unredacted.
        let calls = store.requests.lock().unwrap().len();
        for body in [
            call(1, "whoami"),
            json!({"jsonrpc": "2.0", "id": "1", "method": "ping"}),
        ] {
            let res = send(&mcp, Method::POST, s, Some(body)).await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert!(text(res).await.contains("already used"));
        }
        assert_eq!(
            store.requests.lock().unwrap().len(),
            calls,
            "never forwarded"
        );
        // A server that refuses to end the session keeps it, and idguard its record.
        let res = send(&mcp, Method::DELETE, s, None).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let res = send(&mcp, Method::POST, s, Some(ping(2))).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "id 2 is still known");
        // The server replays its reply to request 1 (unredacted): dropped (and those to 2,
        // an id used twice).
        let replay = text(send(&mcp, Method::GET, s, None).await).await;
        assert!(!replay.contains(OWNER_EMAIL), "{replay}");
        let ids: Vec<Value> = replay
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .map(|v| v["id"].clone())
            .collect();
        assert_eq!(ids, [json!(3)], "{replay}");
    }

    #[tokio::test]
    async fn a_session_that_retires_too_many_ids_is_not_found() {
        let two = McpCacheCapacities::default().with_requests_per_session(2);
        let (mcp, session, store) = bob_in_a_session(two).await;
        let s = Some(&session);
        // Two remembered and 128 retired: the next request would retire a 129th.
        let bound = 2 + 64 * 2;
        for id in 1..=bound {
            let res = send(&mcp, Method::POST, s, Some(ping(id))).await;
            assert_eq!(res.status(), StatusCode::OK, "{id}");
        }
        let forwarded = store.requests.lock().unwrap().len();
        let res = send(&mcp, Method::POST, s, Some(ping(bound + 1))).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(text(res).await.contains("Session not found"));
        // The session is over: later requests and its stream too.
        let res = send(&mcp, Method::POST, s, Some(ping(bound + 2))).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let res = send(&mcp, Method::GET, s, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            store.requests.lock().unwrap().len(),
            forwarded,
            "never forwarded"
        );
    }

    #[test]
    fn replies_are_found_in_json_and_sse() {
        let sse = b"data: \nid: 0\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}\n\n";
        assert!(find_reply(sse, "x").is_some());
        assert!(find_reply(b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}", "x").is_some());
        assert!(find_reply(b"{\"jsonrpc\":\"2.0\",\"id\":\"y\",\"result\":{}}", "x").is_none());
    }
}
