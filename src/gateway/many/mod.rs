//! Several upstreams behind one MCP endpoint: [`Gateways`].
//!
//! About 1 000 lines, a third of them the type's documentation: sessions, lists and routing
//! share the session state; `wire.rs` holds what reads and writes the bytes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value, json};
use tower_service::Service;

mod wire;

use super::Gateway;
use crate::error::{Rejection, RejectionKind};
use crate::policy::Servers;
use crate::principal::Principal;
use wire::{
    MAX_READ_BYTES, MCP_SESSION_ID, On, accepted, inward_id, json_reply, messages, rewrite_stream,
    rpc_error, rpc_result, unavailable,
};

/// JSON-RPC code of a request routed to an upstream that does not answer; the message and
/// `data.server` name the server.
pub const UPSTREAM_UNAVAILABLE_CODE: i64 = -32050;

/// Pages of one upstream's list read at most.
const MAX_PAGES: usize = 100;
/// Sessions remembered (idle ones are forgotten after a day).
const MAX_SESSIONS: u64 = 10_000;
/// Sessions one caller may hold at once: opening one more ends the caller's oldest (so one
/// caller cannot push everyone else's out of [`MAX_SESSIONS`]).
const MAX_SESSIONS_PER_CALLER: usize = 32;
/// Routed request ids remembered per session, for cancellations.
const ROUTED_PER_SESSION: usize = 1024;

const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// Caller headers passed to the upstreams' gateways, which filter again: `Authorization`
/// never reaches an upstream, but a credential may read it (as with one upstream).
const PASSED: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::USER_AGENT,
    header::HOST,
    MCP_PROTOCOL_VERSION,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
];

/// Several upstreams behind one MCP endpoint: a service that owns one
/// [`Gateway`] per named upstream and sits where a single `Gateway` sits, inside
/// `AuthorizeMcpLayer` (which still decides every request and filters every reply).
///
/// - **sessions**: idguard answers `initialize` itself after initializing each upstream
///   with the caller's parameters (capabilities merged), and issues its own
///   `Mcp-Session-Id` (which the layer binds to the caller, as for any server); behind it,
///   one upstream session per caller session per upstream. The session also remembers its
///   caller and answers anyone else `404`. An upstream down at `initialize` is initialized
///   again when a later list reaches it;
/// - **lists** (`tools/list`, `prompts/list`, `resources/list`,
///   `resources/templates/list`): every reachable upstream's, all pages, merged into one
///   page. Tool and prompt names become `<server>__<name>`; resource URIs and templates
///   are kept, each claimed by the first server listing it ([`Servers`]): a URI another
///   server already claimed is left out (fail closed). Claims are made only from the
///   lists callers ask for (which the layer decided): a URI no list has named yet is
///   refused. An upstream that does not answer is left out (its items disappear) and logged;
/// - **routing**: `tools/call`, `prompts/get` (by prefix, sent with the original name),
///   `resources/read`, `resources/subscribe`, `resources/unsubscribe` (by the URI's claim),
///   `completion/complete` (by its reference). A call to an upstream that does not answer
///   gets a JSON-RPC error naming the server ([`UPSTREAM_UNAVAILABLE_CODE`]); idguard's own
///   refusal on the way (the upstream's credential: consent, a claims challenge) is
///   answered as with one upstream; nothing that names no known server is sent anywhere;
/// - **notifications**: `notifications/roots/list_changed` goes to every upstream (each got
///   its `notifications/initialized` when idguard initialized it, so the caller's is not
///   repeated); `notifications/cancelled` to the upstream that got the request; others are
///   dropped;
/// - **the standalone `GET` stream**: every upstream's of the session, opened together and
///   merged into one (each opened again when it ends), lasting until the caller leaves or
///   the session ends; one per session (`409`), `405` only when every upstream answers
///   `405`. Its notifications
///   (`list_changed`, `resources/updated`, …) reach the caller through the layer's filter,
///   as on one upstream; replies and progress (which could only concern other upstreams'
///   requests) are dropped;
/// - **server-to-client requests** (sampling, elicitation, roots) in an upstream's reply
///   or `GET` stream reach the caller with the id `<server>:n<id>` (or `:s<id>` for a
///   string), so two upstreams' ids never collide; the caller's answer goes back to that
///   server with its own id; an answer that names no server is dropped. An upstream's
///   `notifications/resources/updated` for a URI that is not its own is dropped;
/// - **not merged**: stream resumption (`Last-Event-ID`; event ids are removed, and a
///   `GET` opens a new stream), batches (`400`), tasks and the sessionless 2026-07-28 era
///   (`server/discover`, `subscriptions/listen`: `-32601`).
#[derive(Clone, Debug)]
pub struct Gateways {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Vec<(Arc<str>, Gateway)>,
    servers: Servers,
    sessions: moka::sync::Cache<String, Arc<Session>>,
    /// Each caller's session ids, oldest first.
    owners: moka::sync::Cache<String, Arc<Mutex<VecDeque<String>>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateways")
            .field("servers", &self.servers)
            .field("sessions", &self.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

/// One caller session: its upstream sessions.
struct Session {
    owner: String,
    /// `initialize`'s params, to initialize an upstream that was down.
    init: Value,
    state: Mutex<SessionState>,
    /// Whether its `GET` stream is open.
    streaming: AtomicBool,
    /// Turns `true` when the session ends (deleted, evicted, idle): its stream ends too.
    ended: tokio::sync::watch::Sender<bool>,
    /// Per upstream, held while its session is made.
    initializing: Vec<tokio::sync::Mutex<()>>,
    /// Bumped whenever an upstream session is made or forgotten: a stream part reading an
    /// upstream session that is no longer the one in use opens the new one's.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Session {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Default)]
struct SessionState {
    /// Upstream index → its session id (`""`: a sessionless upstream).
    upstream: HashMap<usize, String>,
    /// Request id (as JSON text) → the upstream it went to.
    routed: VecDeque<(String, usize)>,
}

/// An upstream that did not answer usefully; with idguard's own refusal of the caller on
/// the way to it (its credential: consent or a claims challenge for on-behalf-of, say).
struct Down(Option<Rejection>);

const DOWN: Down = Down(None);

impl Gateways {
    /// Routes to `upstreams` (name, gateway), whose items `servers` attributes; give the
    /// same `servers` to the [`PolicyEngine`](crate::policy::PolicyEngine)
    /// ([`with_servers`](crate::policy::PolicyEngine::with_servers)) so that policies see
    /// each item's server. `servers` must name every upstream.
    pub fn new(upstreams: impl IntoIterator<Item = (String, Gateway)>, servers: Servers) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstreams: upstreams
                    .into_iter()
                    .map(|(n, g)| (Arc::from(n), g))
                    .collect(),
                servers,
                sessions: moka::sync::Cache::builder()
                    .max_capacity(MAX_SESSIONS)
                    .time_to_idle(Duration::from_secs(24 * 3600))
                    // However it ends, its stream ends with it.
                    .eviction_listener(|_, session: Arc<Session>, _| {
                        session.ended.send_replace(true);
                    })
                    .build(),
                owners: moka::sync::Cache::builder()
                    .max_capacity(MAX_SESSIONS)
                    .time_to_idle(Duration::from_secs(24 * 3600))
                    .build(),
            }),
        }
    }
}

fn owner_of(ext: &http::Extensions) -> Option<String> {
    ext.get::<Principal>()
        .map(|p| format!("{}/{}", p.tenant_id(), p.object_id()))
}

impl Gateways {
    /// Sends `method` with `body` to upstream `index` in its session `upstream_session`,
    /// with the caller's `headers` and `ext`ensions (its credential needs them): the
    /// upstream's answer, whatever its status (`None`: no such upstream).
    async fn request(
        &self,
        index: usize,
        upstream_session: Option<&str>,
        headers: &HeaderMap,
        ext: &http::Extensions,
        method: Method,
        body: Bytes,
    ) -> Option<Response<Body>> {
        let (_, gateway) = self.inner.upstreams.get(index)?;
        let (get, post) = (method == Method::GET, method == Method::POST);
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/");
        *req.extensions_mut() = ext.clone();
        let h = req.headers_mut();
        for name in &PASSED {
            if let Some(v) = headers.get(name) {
                h.insert(name.clone(), v.clone());
            }
        }
        let accept = if get {
            "text/event-stream"
        } else {
            "application/json, text/event-stream"
        };
        h.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if post {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(id) = upstream_session
            .filter(|s| !s.is_empty())
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            h.insert(MCP_SESSION_ID, id);
        }
        let Ok(res) = gateway.clone().call(req).await;
        Some(res)
    }

    /// [`request`](Self::request), a success or why not.
    async fn send(
        &self,
        index: usize,
        upstream_session: Option<&str>,
        headers: &HeaderMap,
        ext: &http::Extensions,
        method: Method,
        body: Bytes,
    ) -> Result<Response<Body>, Down> {
        let res = self
            .request(index, upstream_session, headers, ext, method, body)
            .await
            .ok_or(DOWN)?;
        if res.status().is_success() {
            Ok(res)
        } else {
            Err(down(self.name(index), res))
        }
    }

    fn name(&self, index: usize) -> &str {
        self.inner.upstreams.get(index).map_or("?", |(n, _)| n)
    }

    /// POSTs `message` to upstream `index` in its session `upstream`.
    async fn post_to(
        &self,
        index: usize,
        upstream: &str,
        parts: &http::request::Parts,
        message: &Value,
    ) -> Result<Response<Body>, Down> {
        let body = Bytes::from(message.to_string());
        self.send(
            index,
            Some(upstream),
            &parts.headers,
            &parts.extensions,
            Method::POST,
            body,
        )
        .await
    }

    /// Sends a request to upstream `index` and reads its answer to `id`, whole.
    async fn ask(
        &self,
        index: usize,
        upstream_session: Option<&str>,
        headers: &HeaderMap,
        ext: &http::Extensions,
        message: &Value,
    ) -> Result<(Value, Option<String>, usize), Down> {
        let body = Bytes::from(message.to_string());
        let res = self
            .send(index, upstream_session, headers, ext, Method::POST, body)
            .await?;
        let session = res
            .headers()
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = Limited::new(res.into_body(), MAX_READ_BYTES)
            .collect()
            .await
            .map_err(|_| DOWN)?
            .to_bytes();
        let id = message.get("id").ok_or(DOWN)?;
        let answer = messages(&content_type, &bytes)
            .into_iter()
            .find(|m| m.get("id") == Some(id) && m.get("method").is_none())
            .ok_or(DOWN)?;
        Ok((answer, session, bytes.len()))
    }

    /// Initializes upstream `index` for a session; its session id and `initialize` result.
    async fn initialize(
        &self,
        index: usize,
        init: &Value,
        headers: &HeaderMap,
        ext: &http::Extensions,
    ) -> Result<(String, Value), Down> {
        let message = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init});
        let (answer, session, _) = self.ask(index, None, headers, ext, &message).await?;
        let result = answer.get("result").cloned().ok_or(DOWN)?;
        let session = session.unwrap_or_default();
        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.send(
            index,
            Some(&session),
            headers,
            ext,
            Method::POST,
            Bytes::from(done.to_string()),
        )
        .await?;
        Ok((session, result))
    }

    /// The session id of upstream `index` in `session`, initializing it when missing.
    async fn upstream_session(
        &self,
        index: usize,
        session: &Session,
        headers: &HeaderMap,
        ext: &http::Extensions,
    ) -> Result<String, Down> {
        let known = lock(&session.state).upstream.get(&index).cloned();
        if let Some(id) = known {
            return Ok(id);
        }
        // One at a time (a stream opened again and a call may both find none): the one that
        // waited takes what the other made.
        let Some(slot) = session.initializing.get(index) else {
            return Err(DOWN);
        };
        let _initializing = slot.lock().await;
        let known = lock(&session.state).upstream.get(&index).cloned();
        if let Some(id) = known {
            return Ok(id);
        }
        let (id, _) = self.initialize(index, &session.init, headers, ext).await?;
        lock(&session.state).upstream.insert(index, id.clone());
        session.bump();
        Ok(id)
    }

    fn forget(&self, index: usize, session: &Session) {
        lock(&session.state).upstream.remove(&index);
        session.bump();
    }

    /// [`forget`](Self::forget) upstream `index`'s session if it is still `upstream` (not
    /// one made again meanwhile).
    fn forget_if(&self, index: usize, session: &Session, upstream: &str) {
        let forgotten = {
            let mut state = lock(&session.state);
            state.upstream.get(&index).is_some_and(|s| s == upstream)
                && state.upstream.remove(&index).is_some()
        };
        if forgotten {
            session.bump();
        }
    }

    async fn open(
        &self,
        id: &Value,
        message: &Value,
        parts: &http::request::Parts,
    ) -> Response<Body> {
        let Some(owner) = owner_of(&parts.extensions) else {
            return Rejection::new(RejectionKind::Internal, None).into_response();
        };
        let init = message.get("params").cloned().unwrap_or_else(|| json!({}));
        let answers = futures_util::future::join_all((0..self.inner.upstreams.len()).map(|i| {
            let init = &init;
            async move {
                (
                    i,
                    self.initialize(i, init, &parts.headers, &parts.extensions)
                        .await,
                )
            }
        }))
        .await;
        let mut state = SessionState::default();
        let mut capabilities = Map::new();
        let mut version = None;
        for (i, answer) in answers {
            let Ok((session, result)) = answer else {
                continue;
            };
            state.upstream.insert(i, session);
            if version.is_none() {
                version = result.get("protocolVersion").cloned();
            }
            if let Some(Value::Object(caps)) = result.get("capabilities") {
                for key in ["tools", "resources", "prompts", "logging", "completions"] {
                    if caps.contains_key(key) {
                        capabilities.insert(key.into(), json!({}));
                    }
                }
            }
        }
        // Resources are attributed by claims, made only from the lists callers ask for (the
        // layer decided those): nothing is sent upstream that a caller's policy did not
        // decide, and a URI no list has named yet is refused.
        if state.upstream.is_empty() {
            tracing::error!(target: "idguard::gateway", "no upstream answered initialize");
            return Rejection::new(RejectionKind::BadGateway, None).into_response();
        }
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let mine = self
            .inner
            .owners
            .get_with(owner.clone(), || Arc::new(Mutex::new(VecDeque::new())));
        let oldest = {
            let mut ids = mine.lock().unwrap_or_else(PoisonError::into_inner);
            ids.retain(|id| self.inner.sessions.contains_key(id));
            ids.push_back(session_id.clone());
            (ids.len() > MAX_SESSIONS_PER_CALLER)
                .then(|| ids.pop_front())
                .flatten()
        };
        if let Some(oldest) = oldest {
            tracing::debug!(target: "idguard::gateway", "a caller's oldest session ended: {MAX_SESSIONS_PER_CALLER} at most per caller");
            self.inner.sessions.invalidate(&oldest);
        }
        self.inner.sessions.insert(
            session_id.clone(),
            Arc::new(Session {
                owner,
                init,
                state: Mutex::new(state),
                streaming: AtomicBool::new(false),
                ended: tokio::sync::watch::channel(false).0,
                changed: tokio::sync::watch::channel(0).0,
                initializing: (0..self.inner.upstreams.len())
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        );
        let result = json!({
            "protocolVersion": version.unwrap_or_else(|| json!("2025-06-18")),
            "capabilities": capabilities,
            "serverInfo": {"name": "idguard", "version": env!("CARGO_PKG_VERSION")},
        });
        json_reply(StatusCode::OK, &rpc_result(id, result), Some(&session_id))
    }

    /// Every reachable upstream's `method` list, merged into one result.
    async fn list(
        &self,
        id: &Value,
        method: &str,
        key: &str,
        session: &Session,
        parts: &http::request::Parts,
    ) -> Value {
        let pages =
            futures_util::future::join_all((0..self.inner.upstreams.len()).map(|i| async move {
                (i, self.list_one(i, id, method, key, session, parts).await)
            }))
            .await;
        let mut merged = Vec::new();
        for (i, items) in pages {
            let Some((server, _)) = self.inner.upstreams.get(i) else {
                continue;
            };
            let Ok(items) = items else {
                tracing::warn!(target: "idguard::gateway", server = &**server, method, "upstream left out of a list");
                continue;
            };
            let mut left_out = 0usize;
            for mut item in items {
                let Some(fields) = item.as_object_mut() else {
                    left_out += 1;
                    continue;
                };
                let keep = match key {
                    "tools" | "prompts" => match fields.get("name").and_then(Value::as_str) {
                        Some(name) => {
                            let prefixed =
                                format!("{server}{}{name}", crate::policy::SERVER_SEPARATOR);
                            fields.insert("name".into(), Value::String(prefixed));
                            true
                        }
                        None => false,
                    },
                    "resources" => fields
                        .get("uri")
                        .and_then(Value::as_str)
                        .is_some_and(|uri| self.claimed(server, uri, false)),
                    _ => fields
                        .get("uriTemplate")
                        .and_then(Value::as_str)
                        .is_some_and(|uri| self.claimed(server, uri, true)),
                };
                if keep {
                    merged.push(item);
                } else {
                    left_out += 1;
                }
            }
            if left_out > 0 {
                // Once per list and server, however many.
                tracing::warn!(target: "idguard::gateway", server = &**server, method, left_out, "items left out: unnamed, or resources another upstream already lists (or past this upstream's share of claims)");
            }
        }
        let mut result = Map::new();
        result.insert(key.into(), Value::Array(merged));
        rpc_result(id, Value::Object(result))
    }

    fn claimed(&self, server: &str, uri: &str, template: bool) -> bool {
        if template {
            self.inner.servers.claim_template(server, uri)
        } else {
            self.inner.servers.claim_resource(server, uri)
        }
    }

    /// Every page of upstream `index`'s list.
    async fn list_one(
        &self,
        index: usize,
        id: &Value,
        method: &str,
        key: &str,
        session: &Session,
        parts: &http::request::Parts,
    ) -> Result<Vec<Value>, Down> {
        let upstream = self
            .upstream_session(index, session, &parts.headers, &parts.extensions)
            .await?;
        let pages = self.pages(index, &upstream, id, method, key, parts).await;
        if pages.is_err() {
            self.forget(index, session);
        }
        pages
    }

    /// Every page of a list of upstream `index` in its session `upstream`.
    async fn pages(
        &self,
        index: usize,
        upstream: &str,
        id: &Value,
        method: &str,
        key: &str,
        parts: &http::request::Parts,
    ) -> Result<Vec<Value>, Down> {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        // All pages together are read up to what one reply may hold.
        let mut read = 0usize;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            let (answer, _, bytes) = self
                .ask(
                    index,
                    Some(upstream),
                    &parts.headers,
                    &parts.extensions,
                    &message,
                )
                .await?;
            read = read.saturating_add(bytes);
            if read > wire::MAX_READ_BYTES {
                tracing::warn!(target: "idguard::gateway", method, limit = wire::MAX_READ_BYTES, "an upstream's list is larger than the limit: left out");
                return Err(DOWN);
            }
            if let Some(error) = answer.get("error") {
                // An answer, not an outage (a server without resources says "Method not
                // found"): it lists none, and its session lives on.
                let code = error.get("code").and_then(Value::as_i64);
                if code == Some(-32601) {
                    tracing::debug!(target: "idguard::gateway", method, "an upstream lists none of these");
                } else {
                    tracing::warn!(target: "idguard::gateway", method, code, "an upstream answered a list with an error: left out");
                }
                return Ok(Vec::new());
            }
            let result = answer.get("result").ok_or(DOWN)?;
            if let Some(Value::Array(page)) = result.get(key) {
                items.extend(page.iter().cloned());
            }
            cursor = result.get("nextCursor").filter(|c| c.is_string()).cloned();
            if cursor.is_none() {
                return Ok(items);
            }
        }
        Ok(items)
    }

    /// Sends `message` (rewritten) to upstream `index`, and passes its reply on.
    async fn route(
        &self,
        index: usize,
        id: &Value,
        message: &Value,
        session: &Session,
        parts: &http::request::Parts,
    ) -> Response<Body> {
        let Some((server, _)) = self.inner.upstreams.get(index) else {
            return unavailable(id, "?");
        };
        let upstream = match self
            .upstream_session(index, session, &parts.headers, &parts.extensions)
            .await
        {
            Ok(upstream) => upstream,
            Err(Down(Some(refusal))) => return refusal.into_response(),
            Err(Down(None)) => return unavailable(id, server),
        };
        {
            let mut state = lock(&session.state);
            if state.routed.len() >= ROUTED_PER_SESSION {
                state.routed.pop_front();
            }
            state.routed.push_back((id.to_string(), index));
        }
        let res = match self.post_to(index, &upstream, parts, message).await {
            Ok(res) => res,
            // The caller's own answer (consent, a claims challenge): as with one upstream.
            Err(Down(Some(refusal))) => return refusal.into_response(),
            Err(Down(None)) => {
                self.forget(index, session);
                return unavailable(id, server);
            }
        };
        let (mut head, body) = res.into_parts();
        head.headers.remove(MCP_SESSION_ID);
        // Progress passes only for this request's own token.
        let on = On::Reply(message.pointer("/params/_meta/progressToken").cloned());
        if is_event_stream(&head.headers) {
            let body = rewrite_stream(server.clone(), self.inner.servers.clone(), on, body);
            return Response::from_parts(head, body);
        }
        // A JSON reply, read whole (up to the layer's default reply size; it reads it whole
        // too): the answer alone goes on as it came; a batch (a server may put its requests
        // and notifications beside the answer), or one message other than an answer, is
        // rewritten as on a stream. However it was sent (chunks, leading whitespace).
        let bytes = match Limited::new(body, MAX_READ_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                tracing::error!(target: "idguard::gateway", server = &**server, "an upstream's JSON reply broken off or too large");
                return Rejection::new(RejectionKind::BadGateway, None).into_response();
            }
        };
        match self.rewrite_json(server, &on, &bytes) {
            Reply::AsItCame => Response::from_parts(head, Body::from(bytes)),
            Reply::Rewritten(text) => {
                head.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(head, Body::from(text))
            }
            Reply::Dropped => {
                tracing::warn!(target: "idguard::gateway", server = &**server, "an upstream answered a call with a message it may not send: dropped");
                unavailable(id, server)
            }
        }
    }

    /// A routed call's JSON reply `bytes` of upstream `server` as the caller gets it.
    fn rewrite_json(&self, server: &str, on: &On, bytes: &[u8]) -> Reply {
        #[derive(serde::Deserialize)]
        struct Peek<'a> {
            #[serde(borrow)]
            method: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            error: Option<&'a serde_json::value::RawValue>,
        }
        let rewrite = |m| wire::rewrite_message(server, &self.inner.servers, on, m);
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            let Ok(messages) = serde_json::from_slice::<Vec<Value>>(bytes) else {
                return Reply::AsItCame;
            };
            let kept: Vec<Value> = messages.into_iter().filter_map(rewrite).collect();
            return Reply::Rewritten(Value::Array(kept).to_string());
        }
        // Errors too: a `-32042`'s elicitation ids are the server's own.
        let asks = serde_json::from_slice::<Peek<'_>>(bytes)
            .is_ok_and(|p| p.method.is_some() || p.error.is_some());
        let message = asks
            .then(|| serde_json::from_slice::<Value>(bytes).ok())
            .flatten();
        match message {
            None => Reply::AsItCame,
            Some(message) => {
                rewrite(message).map_or(Reply::Dropped, |m| Reply::Rewritten(m.to_string()))
            }
        }
    }

    /// The upstream index of a tool or prompt name, and its own name.
    fn by_name<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        let (server, own) = self.inner.servers.split(name)?;
        let index = self
            .inner
            .upstreams
            .iter()
            .position(|(n, _)| &**n == server)?;
        Some((index, own))
    }

    fn by_uri(&self, uri: &str) -> Option<usize> {
        let server = self.inner.servers.resource_server(uri)?;
        self.inner.upstreams.iter().position(|(n, _)| *n == server)
    }

    /// The upstream a request naming an item goes to, with the message it gets.
    fn target(&self, method: &str, message: &Value) -> Option<(usize, Value)> {
        let mut out = message.clone();
        let params = out.get_mut("params")?.as_object_mut()?;
        let index = match method {
            "tools/call" | "prompts/get" => {
                let name = params.get("name")?.as_str()?;
                let (index, own) = self.by_name(name)?;
                let own = own.to_owned();
                params.insert("name".into(), Value::String(own));
                index
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.by_uri(params.get("uri")?.as_str()?)?
            }
            "completion/complete" => {
                let reference = params.get_mut("ref")?.as_object_mut()?;
                match reference.get("type")?.as_str()? {
                    "ref/prompt" => {
                        let name = reference.get("name")?.as_str()?;
                        let (index, own) = self.by_name(name)?;
                        let own = own.to_owned();
                        reference.insert("name".into(), Value::String(own));
                        index
                    }
                    "ref/resource" => self.by_uri(reference.get("uri")?.as_str()?)?,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some((index, out))
    }

    /// To every upstream with a session (for notifications); their answers are not read.
    async fn fan_out(&self, message: &Value, session: &Session, parts: &http::request::Parts) {
        let sessions: Vec<(usize, String)> = lock(&session.state)
            .upstream
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        futures_util::future::join_all(
            sessions
                .iter()
                .map(|(i, s)| self.post_to(*i, s, parts, message)),
        )
        .await;
    }

    async fn post(&self, parts: http::request::Parts, body: Body) -> Response<Body> {
        let Ok(bytes) = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
        else {
            return Rejection::new(RejectionKind::BadRequest, None).into_response();
        };
        let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
            return Rejection::new(RejectionKind::BadRequest, None).into_response();
        };
        if !message.is_object() {
            tracing::debug!(target: "idguard::rejection", "a batch, with several upstreams");
            return json_reply(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, -32600, "batches are not supported here", None),
                None,
            );
        }
        let method = message.get("method").and_then(Value::as_str);
        let id = message.get("id").cloned();
        if let (Some("initialize"), Some(id)) = (method, &id) {
            return self.open(id, &message, &parts).await;
        }
        let Some((_, session)) = self.session_of(&parts) else {
            return Rejection::new(RejectionKind::SessionNotFound, None).into_response();
        };
        let Some(method) = method else {
            // A response to a server-to-client request: back to the server that asked.
            if let Some((index, own)) = id
                .as_ref()
                .and_then(|i| inward_id(&self.inner.upstreams, i))
            {
                let mut message = message;
                if let Some(m) = message.as_object_mut() {
                    m.insert("id".into(), own);
                }
                let upstream = lock(&session.state).upstream.get(&index).cloned();
                if let Some(upstream) = upstream {
                    let _ = self.post_to(index, &upstream, &parts, &message).await;
                }
            } else {
                tracing::debug!(target: "idguard::rejection", "a response naming no upstream: dropped");
            }
            return accepted();
        };
        let Some(id) = id else {
            match method {
                // Each upstream got its own when idguard initialized it.
                "notifications/initialized" => {}
                "notifications/roots/list_changed" => {
                    self.fan_out(&message, &session, &parts).await;
                }
                "notifications/cancelled" => {
                    let request = message
                        .get("params")
                        .and_then(|p| p.get("requestId"))
                        .map(Value::to_string);
                    let index = request.and_then(|r| {
                        lock(&session.state)
                            .routed
                            .iter()
                            .find(|(id, _)| *id == r)
                            .map(|(_, i)| *i)
                    });
                    let upstream = index.and_then(|i| {
                        lock(&session.state)
                            .upstream
                            .get(&i)
                            .cloned()
                            .map(|s| (i, s))
                    });
                    if let Some((i, s)) = upstream {
                        let _ = self.post_to(i, &s, &parts, &message).await;
                    }
                }
                _ => {}
            }
            return accepted();
        };
        let list = match method {
            "tools/list" => Some("tools"),
            "prompts/list" => Some("prompts"),
            "resources/list" => Some("resources"),
            "resources/templates/list" => Some("resourceTemplates"),
            _ => None,
        };
        if let Some(key) = list {
            if message
                .get("params")
                .and_then(|p| p.get("cursor"))
                .is_some_and(|c| !c.is_null())
            {
                let e = rpc_error(
                    &id,
                    -32602,
                    "invalid cursor: the merged list is one page",
                    None,
                );
                return json_reply(StatusCode::OK, &e, None);
            }
            let merged = self.list(&id, method, key, &session, &parts).await;
            return json_reply(StatusCode::OK, &merged, None);
        }
        match method {
            "ping" => json_reply(StatusCode::OK, &rpc_result(&id, json!({})), None),
            "logging/setLevel" => {
                self.fan_out(&message, &session, &parts).await;
                json_reply(StatusCode::OK, &rpc_result(&id, json!({})), None)
            }
            _ => match self.target(method, &message) {
                Some((index, out)) => self.route(index, &id, &out, &session, &parts).await,
                None if matches!(
                    method,
                    "tools/call"
                        | "prompts/get"
                        | "resources/read"
                        | "resources/subscribe"
                        | "resources/unsubscribe"
                        | "completion/complete"
                ) =>
                {
                    tracing::debug!(target: "idguard::rejection", method, "names no upstream's item");
                    let e = rpc_error(&id, -32602, "no upstream serves this item", None);
                    json_reply(StatusCode::OK, &e, None)
                }
                None => {
                    let e = rpc_error(&id, -32601, "Method not found", None);
                    json_reply(StatusCode::OK, &e, None)
                }
            },
        }
    }

    /// The session `parts` names (`Mcp-Session-Id`) with its id, when it is the caller's.
    fn session_of(&self, parts: &http::request::Parts) -> Option<(String, Arc<Session>)> {
        let key = parts.headers.get(MCP_SESSION_ID)?.to_str().ok()?;
        let session = self.inner.sessions.get(key)?;
        let owner = owner_of(&parts.extensions)?;
        (owner == session.owner).then(|| (key.to_owned(), session))
    }

    /// The standalone `GET` stream: every upstream's of this session, opened together and
    /// merged (events rewritten as on `POST` replies, event ids removed; replies and other
    /// requests' progress dropped, see [`rewrite_stream`]). An upstream's stream that ends
    /// or fails is opened again after a pause ([`RETRY_FIRST`], doubling to [`RETRY_MAX`]);
    /// the merged one lasts until the caller leaves or the session ends. One at a time per
    /// session (`409`); `405` only when every upstream answers `405`.
    async fn stream(&self, parts: http::request::Parts) -> Response<Body> {
        let Some((_, session)) = self.session_of(&parts) else {
            return Rejection::new(RejectionKind::SessionNotFound, None).into_response();
        };
        let Some(open) = StreamOpen::take(&session) else {
            tracing::debug!(target: "idguard::rejection", "a second GET stream for one session");
            let e = rpc_error(
                &Value::Null,
                -32000,
                "a stream is already open for this session",
                None,
            );
            return json_reply(StatusCode::CONFLICT, &e, None);
        };
        let caller = Arc::new((parts.headers, parts.extensions));
        let opened = futures_util::future::join_all(
            (0..self.inner.upstreams.len()).map(|i| self.open_part(i, &session, &caller)),
        )
        .await;
        let mut streams = vec![keep_alive()];
        let mut any = false;
        // What the caller is told when no stream opened: idguard's own refusal first (the
        // one answer it can act on), then an upstream's `409`, then `502`.
        let (mut refusal, mut conflict, mut unavailable) = (None, false, false);
        for (index, opened) in opened.into_iter().enumerate() {
            let first = match opened {
                Opened::Stream(body, upstream) => {
                    any = true;
                    Some((body, upstream))
                }
                Opened::Nothing => continue,
                // The upstream refuses the caller: no part of this stream (opened again, it
                // would end the stream: see `healing`).
                Opened::Refused(Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), None) => {
                    continue;
                }
                Opened::Refused(status, rejection) => {
                    refusal = refusal.or(rejection);
                    conflict |= status == Some(StatusCode::CONFLICT);
                    unavailable = true;
                    None
                }
            };
            streams.push(self.healing(index, session.clone(), caller.clone(), first));
        }
        // idguard's own refusal of the caller (consent, a claims challenge) is the answer,
        // whatever else opened: the caller can act on it.
        if !any || refusal.is_some() {
            return match refusal {
                Some(refusal) => refusal.into_response(),
                None if conflict => json_reply(
                    StatusCode::CONFLICT,
                    &rpc_error(
                        &Value::Null,
                        -32000,
                        "an upstream's stream is still open",
                        None,
                    ),
                    None,
                ),
                None if unavailable => {
                    Rejection::new(RejectionKind::BadGateway, None).into_response()
                }
                // Only when no upstream has a stream to offer does the caller learn `405`
                // (and stop asking).
                None => Rejection::new(RejectionKind::MethodNotAllowed, None).into_response(),
            };
        }
        let mut ended = session.ended.subscribe();
        // The stream ends with the session, or when the caller's token expires: its upstream
        // streams are opened again with the caller's credentials, which must still hold (the
        // caller reconnects with a new token, and the layer decides again).
        let expires = caller
            .1
            .get::<Principal>()
            .map(Principal::expires_at)
            .unwrap_or_default();
        let left = expires.saturating_sub(super::credential::unix_now());
        let session_ended = async move {
            tokio::select! {
                _ = ended.wait_for(|e| *e) => {}
                () = tokio::time::sleep(Duration::from_secs(left)) => {}
            }
        };
        // A part's `None` (idguard refused the caller on the way to its upstream) ends all.
        let merged = futures_util::stream::select_all(streams)
            .take_while(|chunk| std::future::ready(chunk.is_some()))
            .filter_map(std::future::ready)
            .take_until(session_ended)
            .map(move |chunk| {
                // Held while the stream lives: the session's next `GET` waits for its end.
                let _open = &open;
                Ok::<_, Infallible>(chunk)
            });
        let mut res = Response::new(Body::from_stream(merged));
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        res
    }

    /// Opens upstream `index`'s standalone stream in `session` for `caller` (its headers and
    /// extensions), making its upstream session again when there is none.
    async fn open_part(
        &self,
        index: usize,
        session: &Session,
        caller: &(HeaderMap, http::Extensions),
    ) -> Opened {
        let (headers, ext) = caller;
        let known = lock(&session.state).upstream.contains_key(&index);
        let upstream = match self.upstream_session(index, session, headers, ext).await {
            Ok(upstream) => upstream,
            Err(Down(rejection)) => return Opened::Refused(None, rejection),
        };
        // A sessionless upstream (`""`) has no stream of its own to offer.
        if upstream.is_empty() {
            return Opened::Nothing;
        }
        let res = self
            .request(
                index,
                Some(&upstream),
                headers,
                ext,
                Method::GET,
                Bytes::new(),
            )
            .await;
        let Some(res) = res else {
            return Opened::Nothing;
        };
        let status = res.status();
        if status.is_success() && is_event_stream(res.headers()) {
            return Opened::Stream(res.into_body(), upstream);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            tracing::debug!(target: "idguard::gateway", server = self.name(index), "upstream offers no standalone stream");
            return Opened::Nothing;
        }
        if status == StatusCode::NOT_FOUND {
            if !known {
                // A session just made has no stream at this URL: the upstream offers none.
                tracing::debug!(target: "idguard::gateway", server = self.name(index), "upstream answers GET with 404: no standalone stream");
                return Opened::Nothing;
            }
            // Its session ended: made again at the next list, call or stream.
            self.forget_if(index, session, &upstream);
        }
        let Down(rejection) = down(self.name(index), res);
        Opened::Refused(Some(status), rejection)
    }

    /// Upstream `index`'s part of a merged stream, from `first` (or a failed open): its
    /// events rewritten, opened again after each end or failure (a pause of [`RETRY_FIRST`],
    /// doubling to [`RETRY_MAX`] while it keeps failing) and at once when the session moves
    /// to another upstream session. It ends when the upstream offers no stream, and yields
    /// `None` (which ends the merged stream) when idguard refuses the caller on the way
    /// (its credential) or the upstream answers `401` or `403`.
    fn healing(
        &self,
        index: usize,
        session: Arc<Session>,
        caller: Arc<(HeaderMap, http::Extensions)>,
        first: Option<(Body, String)>,
    ) -> futures_util::stream::BoxStream<'static, Option<Bytes>> {
        let server = self
            .inner
            .upstreams
            .get(index)
            .map_or_else(|| Arc::from("?"), |(n, _)| n.clone());
        let servers = self.inner.servers.clone();
        let events = move |body: Body| {
            futures_util::StreamExt::boxed(
                rewrite_stream(server.clone(), servers.clone(), On::Standalone, body)
                    .into_data_stream(),
            )
        };
        let now = tokio::time::Instant::now;
        let state = match first {
            Some((body, upstream)) => Part::Open(events(body), upstream, now(), RETRY_FIRST),
            None => Part::Wait(RETRY_FIRST),
        };
        let this = self.clone();
        let changed = session.changed.subscribe();
        futures_util::stream::unfold((state, changed), move |(mut state, mut changed)| {
            let (this, session, caller, events) =
                (this.clone(), session.clone(), caller.clone(), events.clone());
            async move {
                loop {
                    state = match state {
                        Part::Open(mut stream, upstream, since, pause) => {
                            let moved = tokio::select! {
                                chunk = stream.next() => match chunk {
                                    Some(Ok(chunk)) => {
                                        let open = Part::Open(stream, upstream, since, pause);
                                        return Some((Some(chunk), (open, changed)));
                                    }
                                    _ => false,
                                },
                                _ = changed.changed() => true,
                            };
                            let current = lock(&session.state).upstream.get(&index).cloned();
                            if moved && current.as_deref() == Some(upstream.as_str()) {
                                Part::Open(stream, upstream, since, pause)
                            } else if moved {
                                // Another upstream session is in use now: its stream.
                                Part::Wait(Duration::ZERO)
                            } else if since.elapsed() >= RETRY_MAX {
                                // Ended or failed: a stream that lasted starts the pauses over.
                                Part::Wait(RETRY_FIRST)
                            } else {
                                Part::Wait(pause)
                            }
                        }
                        Part::Wait(pause) => {
                            tokio::time::sleep(pause).await;
                            let next = (pause * 2).clamp(RETRY_FIRST, RETRY_MAX);
                            match this.open_part(index, &session, &caller).await {
                                Opened::Stream(body, upstream) => {
                                    Part::Open(events(body), upstream, now(), next)
                                }
                                Opened::Nothing => return None,
                                Opened::Refused(_, Some(_))
                                | Opened::Refused(
                                    Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                                    _,
                                ) => {
                                    tracing::warn!(target: "idguard::gateway", server = this.name(index), "the caller is refused on the way to an upstream's stream: the merged stream ends");
                                    return Some((None, (Part::Wait(next), changed)));
                                }
                                Opened::Refused(..) => Part::Wait(next),
                            }
                        }
                    };
                }
            }
        })
        .boxed()
    }

    async fn delete(&self, parts: http::request::Parts) -> Response<Body> {
        let Some((key, session)) = self.session_of(&parts) else {
            return Rejection::new(RejectionKind::SessionNotFound, None).into_response();
        };
        self.inner.sessions.invalidate(&key);
        let sessions: Vec<(usize, String)> = lock(&session.state).upstream.drain().collect();
        futures_util::future::join_all(sessions.iter().filter(|(_, s)| !s.is_empty()).map(
            |(i, s)| {
                self.send(
                    *i,
                    Some(s),
                    &parts.headers,
                    &parts.extensions,
                    Method::DELETE,
                    Bytes::new(),
                )
            },
        ))
        .await;
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::OK;
        res
    }
}

/// An upstream's answer that is not a success, logged: idguard's own refusal of the caller
/// on the way (its credential), or nothing to pass on.
fn down(server: &str, mut res: Response<Body>) -> Down {
    tracing::warn!(target: "idguard::gateway", server, status = res.status().as_u16(), "upstream refused or unavailable");
    Down(res.extensions_mut().remove::<Rejection>().filter(|r| {
        !matches!(
            r.kind(),
            RejectionKind::BadGateway | RejectionKind::GatewayTimeout
        )
    }))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A routed call's JSON reply, as the caller gets it.
enum Reply {
    /// The answer alone, or not JSON (the layer refuses what it cannot read).
    AsItCame,
    Rewritten(String),
    /// Its one message may not reach the caller.
    Dropped,
}

/// What opening an upstream's standalone stream came to.
enum Opened {
    /// Its stream, in this upstream session.
    Stream(Body, String),
    /// It offers none (`405`, or a sessionless upstream).
    Nothing,
    /// Refused or unreachable: the upstream's status if it answered, and idguard's own
    /// refusal of the caller on the way (its credential) if that was it.
    Refused(Option<StatusCode>, Option<Rejection>),
}

/// A part of a merged stream: open (in which upstream session, since when, the pause after
/// it ends), or waiting to open again.
enum Part {
    Open(
        futures_util::stream::BoxStream<'static, Result<Bytes, axum::Error>>,
        String,
        tokio::time::Instant,
        Duration,
    ),
    Wait(Duration),
}

/// The first pause before an upstream's standalone stream is opened again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause; a stream that lasted this long starts the pauses over.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often a quiet merged stream sends an SSE comment: a caller gone without a word is
/// noticed (the write fails), and its session's stream freed for the next `GET`.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// SSE comments every [`KEEP_ALIVE`], as a part that never ends.
fn keep_alive() -> futures_util::stream::BoxStream<'static, Option<Bytes>> {
    futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(KEEP_ALIVE).await;
        Some((Some(Bytes::from_static(b": keep-alive\n\n")), ()))
    })
    .boxed()
}

/// A session's `GET` stream while it is open (one at a time).
struct StreamOpen(Arc<Session>);

impl StreamOpen {
    fn take(session: &Arc<Session>) -> Option<Self> {
        session
            .streaming
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(session.clone()))
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.streaming.store(false, Ordering::Release);
    }
}

fn lock(m: &Mutex<SessionState>) -> std::sync::MutexGuard<'_, SessionState> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Service<Request<Body>> for Gateways {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: every request waits on the network anyway.
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = req.uri().path();
            if !(path.is_empty() || path == "/") {
                return Ok(Rejection::new(RejectionKind::NotServed, None).into_response());
            }
            if !this.inner.servers.judged() {
                tracing::error!(target: "idguard::gateway", "no policy engine judges these upstreams' items (PolicyEngine::with_servers with the same Servers, before the engine is shared): refused");
                return Ok(Rejection::new(RejectionKind::Internal, None).into_response());
            }
            let (parts, body) = req.into_parts();
            Ok(match parts.method {
                Method::POST => this.post(parts, body).await,
                Method::GET => this.stream(parts).await,
                Method::DELETE => this.delete(parts).await,
                _ => Rejection::new(RejectionKind::MethodNotAllowed, None).into_response(),
            })
        })
    }
}
