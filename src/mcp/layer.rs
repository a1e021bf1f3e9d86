//! [`AuthorizeMcpLayer`]: JSON-RPC-aware authorization in front of any Streamable HTTP MCP
//! service. Placed after [`ValidateTokenLayer`](crate::ValidateTokenLayer), which provides
//! the [`Principal`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use moka::sync::Cache;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::catalog::ToolCatalog;
use super::filter::{Pending, ReplyRewriter};
use super::jsonrpc::{self, Ask, Message};
use super::sse::{RewriteSse, SseRewriter};
use crate::error::{Rejection, RejectionKind};
use crate::policy::{Decision, Item, Phase, PolicyEngine, ToolInfo};
use crate::principal::Principal;

/// Default limit on a JSON-RPC request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest JSON reply (or single SSE event) idguard rewrites.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// JSON-RPC code of a visible policy denial.
pub const FORBIDDEN_CODE: i64 = -32001;

// Header names as constants: a lookup by `&str` parses the name on every request.
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

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
    denials: Denials,
    step_up_challenge: HeaderValue,
}

/// Caches shared by all services of one layer.
#[derive(Debug)]
struct State {
    engine: PolicyEngine,
    catalog: ToolCatalog,
    sessions: Cache<String, Arc<str>>,
}

impl AuthorizeMcpLayer {
    /// A layer deciding with `engine`; step-up challenges name `resource_metadata_url`.
    pub fn new(engine: PolicyEngine, resource_metadata_url: &str) -> Self {
        let challenge = format!(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"multi-factor authentication is required\", resource_metadata=\"{resource_metadata_url}\""
        );
        Self {
            shared: Shared {
                state: Arc::new(State {
                    engine,
                    catalog: ToolCatalog::new(),
                    sessions: Cache::builder()
                        .name("idguard-mcp-sessions")
                        .max_capacity(100_000)
                        .time_to_idle(Duration::from_secs(24 * 3600))
                        .build(),
                }),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                denials: Denials::default(),
                step_up_challenge: HeaderValue::try_from(challenge)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
            },
        }
    }

    /// Limit on request bodies (default [`DEFAULT_MAX_BODY_BYTES`]); larger ones get `413`.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.shared.max_body_bytes = max;
        self
    }

    /// How denials are answered (default [`Denials::Hidden`]).
    pub fn with_denials(mut self, denials: Denials) -> Self {
        self.shared.denials = denials;
        self
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

fn json_response(value: &Value) -> Response<Body> {
    let mut res = Response::new(Body::from(value.to_string()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn session_owner(p: &Principal) -> Arc<str> {
    Arc::from(format!("{}/{}", p.tenant_id(), p.object_id()))
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
    let (parts, body) = req.into_parts();
    let Some(principal) = parts.extensions.get::<Principal>().cloned() else {
        tracing::error!(target: "idguard::rejection", "no principal: put ValidateTokenLayer before AuthorizeMcpLayer");
        return reject(RejectionKind::Internal);
    };
    let session = parts
        .headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(sid) = &session
        && let Some(bound) = shared.state.sessions.get(sid)
        && *bound != *session_owner(&principal)
    {
        tracing::warn!(target: "idguard::rejection", tenant = principal.tenant_id(), oid = principal.object_id(), "mcp session presented by a caller other than its owner");
        return reject(RejectionKind::Forbidden);
    }

    if parts.method != Method::POST {
        let res = call(&mut inner, Request::from_parts(parts, Body::new(body))).await;
        return res.map(Body::new);
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
    let messages = match jsonrpc::parse_body(&bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(target: "idguard::rejection", reason = e.0, "not json-rpc");
            return reject(RejectionKind::BadRequest);
        }
    };
    if !standard_headers_agree(&parts.headers, &messages) {
        return reject(RejectionKind::BadRequest);
    }

    // Decide every call before the server sees any of them.
    let mut pending = Vec::new();
    let mut denials = Vec::new();
    for m in &messages {
        match &m.ask {
            Ask::CallTool {
                id,
                name,
                arguments,
            } => {
                let tool = match shared.state.catalog.get(name) {
                    Some(t) => Some(t),
                    None => fetch_tool(&shared, &mut inner, &parts.headers, &principal, name).await,
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
                    Decision::Allow(a) if !a.redact.is_empty() => {
                        pending.push((id.clone(), Pending::Redact(a.redact)));
                    }
                    Decision::Allow(_) => {}
                    Decision::Deny(d) => {
                        denials.push((id.clone(), Item::Tool(ToolInfo::new(name.clone())), d))
                    }
                }
            }
            Ask::Use { id, item } => {
                if let Decision::Deny(d) =
                    shared
                        .state
                        .engine
                        .decide(&principal, item, Phase::Call, None)
                {
                    denials.push((id.clone(), item.clone(), d));
                }
            }
            Ask::List { id, kind } => pending.push((id.clone(), Pending::List(*kind))),
            Ask::Other => {}
        }
    }
    if !denials.is_empty() {
        return deny(&shared, &messages, denials);
    }

    let had_session = session.is_some();
    let req = Request::from_parts(parts, Body::from(bytes));
    let res = call(&mut inner, req).await;
    if !had_session
        && let Some(sid) = res
            .headers()
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
    {
        shared
            .state
            .sessions
            .insert(sid.to_owned(), session_owner(&principal));
    }
    if pending.is_empty() {
        return res.map(Body::new);
    }
    let rewriter = ReplyRewriter {
        engine: shared.state.engine.clone(),
        principal,
        pending,
        sole: messages.len() == 1,
        catalog: shared.state.catalog.clone(),
    };
    rewrite_reply(res, rewriter).await
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

/// 2026-07-28 `Mcp-Method` / `Mcp-Name` headers, when present, must match the body.
fn standard_headers_agree(headers: &HeaderMap, messages: &[Message]) -> bool {
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

/// Answers a request with denied calls without calling the server.
fn deny(
    shared: &Shared,
    messages: &[Message],
    denials: Vec<(Value, Item, crate::policy::Denied)>,
) -> Response<Body> {
    // One call that MFA would allow: an authentication challenge.
    if let ([_], [(_, _, denied)]) = (messages, denials.as_slice())
        && denied.step_up.as_deref() == Some("mfa")
    {
        return Rejection::new(
            RejectionKind::StepUpRequired,
            Some(shared.step_up_challenge.clone()),
        )
        .into_response();
    }
    // The rest of a batch is refused with the denied call(s): nothing reaches the server.
    let denied_ids: Vec<Value> = denials.iter().map(|(id, _, _)| id.clone()).collect();
    let mut all: Vec<Value> = denials
        .into_iter()
        .map(|(id, item, denied)| match shared.denials {
            Denials::Hidden => hidden_error(&id, &item),
            Denials::Visible => {
                let message = match &denied.reason {
                    Some(r) => format!("forbidden: {r}"),
                    None => "forbidden".to_owned(),
                };
                jsonrpc::error(&id, FORBIDDEN_CODE, &message, None)
            }
        })
        .collect();
    for m in messages {
        let id = match &m.ask {
            Ask::CallTool { id, .. } | Ask::Use { id, .. } | Ask::List { id, .. } => Some(id),
            Ask::Other => None,
        };
        if let Some(id) = id
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

/// Rewrites list replies and redacts results, as JSON or as a stream of SSE events.
async fn rewrite_reply<B>(res: Response<B>, rewriter: ReplyRewriter) -> Response<Body>
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
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        parts.headers.remove(CONTENT_LENGTH);
        let sse = SseRewriter::new(
            move |data: &str| rewriter.rewrite_event(data),
            MAX_REPLY_BYTES,
        );
        return Response::from_parts(parts, Body::new(RewriteSse::new(body, sse)));
    }
    if content_type.starts_with("application/json") {
        let bytes = match Limited::new(body, MAX_REPLY_BYTES).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                tracing::error!(target: "idguard::rejection", "mcp reply unreadable or too large to filter");
                return reject(RejectionKind::Internal);
            }
        };
        parts.headers.remove(CONTENT_LENGTH);
        let out = match rewriter.rewrite_json(&bytes) {
            Ok(Some(rewritten)) => Bytes::from(rewritten),
            Ok(None) => bytes,
            // Not JSON, yet it answers a list or a call to redact: fail closed.
            Err(_) => {
                tracing::error!(target: "idguard::rejection", upstream_status = %parts.status, "mcp reply is not JSON where a list or result must be filtered");
                return reject(RejectionKind::Internal);
            }
        };
        return Response::from_parts(parts, Body::from(out));
    }
    // A reply we cannot read may carry an unfiltered list: fail closed.
    if parts.status == StatusCode::OK {
        tracing::error!(target: "idguard::rejection", %content_type, "mcp reply of unknown type where a list or result must be filtered");
        return reject(RejectionKind::Internal);
    }
    Response::from_parts(parts, Body::new(body))
}

/// Asks the server for its tools (as the caller, in the caller's session) to learn the
/// annotations of `name`. `None` when the server does not list it.
async fn fetch_tool<S, ResBody>(
    shared: &Shared,
    inner: &mut S,
    headers: &HeaderMap,
    principal: &Principal,
    name: &str,
) -> Option<ToolInfo>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let mut cursor: Option<String> = None;
    for page in 0..20 {
        let id = format!("idguard-catalog-{page}");
        let params = match &cursor {
            Some(c) => serde_json::json!({"cursor": c}),
            None => serde_json::json!({}),
        };
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
        let mut req = Request::post("/").body(Body::from(body.to_string())).ok()?;
        for (k, v) in headers {
            if k != CONTENT_LENGTH && k != MCP_METHOD && k != MCP_NAME {
                req.headers_mut().append(k.clone(), v.clone());
            }
        }
        req.extensions_mut().insert(principal.clone());
        let res = tokio::time::timeout(Duration::from_secs(10), call(inner, req))
            .await
            .ok()?;
        let bytes = tokio::time::timeout(
            Duration::from_secs(10),
            Limited::new(res.into_body(), MAX_REPLY_BYTES).collect(),
        )
        .await
        .ok()?
        .ok()?
        .to_bytes();
        let reply = find_reply(&bytes, &id)?;
        let result = reply.get("result")?;
        let tools: Vec<ToolInfo> = result
            .get("tools")?
            .as_array()?
            .iter()
            .filter_map(ToolInfo::from_mcp)
            .collect();
        shared.state.catalog.learn(tools);
        if let Some(t) = shared.state.catalog.get(name) {
            return Some(t);
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        cursor.as_ref()?;
    }
    None
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

    #[test]
    fn replies_are_found_in_json_and_sse() {
        let sse = b"data: \nid: 0\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}\n\n";
        assert!(find_reply(sse, "x").is_some());
        assert!(find_reply(b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}", "x").is_some());
        assert!(find_reply(b"{\"jsonrpc\":\"2.0\",\"id\":\"y\",\"result\":{}}", "x").is_none());
    }
}
