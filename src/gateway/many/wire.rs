//! The wire side of [`Gateways`](super::Gateways): JSON-RPC replies idguard writes, upstream
//! replies read whole (JSON or Server-Sent Events), and upstream reply streams rewritten
//! event by event (server-to-client request ids renumbered per upstream).

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::UPSTREAM_UNAVAILABLE_CODE;
use crate::gateway::Gateway;
use crate::policy::Servers;

/// Longest upstream reply read whole (an `initialize` or a list page), and longest event.
pub(super) const MAX_READ_BYTES: usize = 16 * 1024 * 1024;

pub(super) const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

pub(super) fn json_reply(
    status: StatusCode,
    body: &Value,
    session: Option<&str>,
) -> Response<Body> {
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        res.headers_mut().insert(MCP_SESSION_ID, id);
    }
    res
}

pub(super) fn accepted() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

pub(super) fn rpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let (Some(data), Some(e)) = (data, error.as_object_mut()) {
        e.insert("data".into(), data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

pub(super) fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub(super) fn unavailable(id: &Value, server: &str) -> Response<Body> {
    json_reply(
        StatusCode::OK,
        &rpc_error(
            id,
            UPSTREAM_UNAVAILABLE_CODE,
            &format!("upstream `{server}` is unavailable"),
            Some(json!({"server": server})),
        ),
        None,
    )
}

/// The JSON-RPC messages of a reply body: a JSON message or batch, or SSE events' data.
pub(super) fn messages(content_type: &str, body: &[u8]) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(body);
        sse_events(&text)
            .into_iter()
            .filter_map(|data| serde_json::from_str(&data).ok())
            .collect()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => Vec::new(),
        }
    }
}

/// The `data` of each event in `text` (complete events only).
fn sse_events(text: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
            data.clear();
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if !data.is_empty() {
        events.push(data.join("\n"));
    }
    events
}

/// The caller's id for a server-to-client request `id` of upstream `server`.
pub(super) fn outward_id(server: &str, id: &Value) -> Option<Value> {
    match id {
        Value::Number(n) => Some(Value::String(format!("{server}:n{n}"))),
        Value::String(s) => Some(Value::String(format!("{server}:s{s}"))),
        _ => None,
    }
}

/// The upstream and its own id behind an id made by [`outward_id`].
pub(super) fn inward_id(servers: &[(Arc<str>, Gateway)], id: &Value) -> Option<(usize, Value)> {
    let text = id.as_str()?;
    let (server, rest) = text.split_once(':')?;
    let index = servers.iter().position(|(n, _)| &**n == server)?;
    let id = if let Some(n) = rest.strip_prefix('n') {
        Value::Number(n.parse::<i64>().ok()?.into())
    } else {
        Value::String(rest.strip_prefix('s')?.to_owned())
    };
    Some((index, id))
}

/// Which of an upstream's streams a message is on.
#[derive(Clone, Debug)]
pub(super) enum On {
    /// Its standalone `GET` stream, which no request of the caller's went to.
    Standalone,
    /// Its reply to a routed request, with the request's progress token (if any).
    Reply(Option<Value>),
}

/// One SSE event of upstream `server`'s reply, as the caller gets it: its message by
/// [`rewrite_message`], event ids removed; `None` drops it.
fn rewrite_event(server: &str, servers: &Servers, on: &On, event: &str) -> Option<String> {
    let mut data: Vec<&str> = Vec::new();
    for line in event.split('\n').map(|l| l.trim_end_matches('\r')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    let message = serde_json::from_str(&data.join("\n")).ok()?;
    let message = rewrite_message(server, servers, on, message)?;
    Some(format!("event: message\ndata: {message}\n\n"))
}

/// One message of upstream `server` (on `on`) as the caller gets it, speaking only of what
/// is that server's; `None` drops it:
/// - server-to-client requests are renumbered ([`outward_id`]), and a
///   `notifications/cancelled` names the request it cancels that way (so only its own);
/// - URL elicitation ids become `<server>:<id>` (in `elicitation/create`, its completion,
///   and a `-32042` error's list), so one server cannot complete another's;
/// - a `notifications/resources/updated` for a URI that `servers` does not attribute to
///   `server` is dropped;
/// - progress passes only for the routed request's own token; on the standalone stream,
///   which no request of the caller's went to, so do replies: they could only concern
///   requests idguard sent to other upstreams, or its own lists.
pub(super) fn rewrite_message(
    server: &str,
    servers: &Servers,
    on: &On,
    mut message: Value,
) -> Option<Value> {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (method.as_deref(), on) {
        (None, On::Standalone) => {
            tracing::warn!(target: "idguard::gateway", server, "a reply on an upstream's standalone stream: dropped");
            return None;
        }
        (Some("notifications/progress"), _) => {
            let token = message
                .get("params")
                .and_then(|p| p.get("progressToken"))
                .filter(|t| t.is_string() || t.is_number());
            if !matches!(on, On::Reply(Some(own)) if Some(own) == token) {
                tracing::warn!(target: "idguard::gateway", server, "an upstream's progress for a request it did not get: dropped");
                return None;
            }
        }
        (Some("notifications/cancelled"), _) => {
            let outward = outward_id(server, message.get("params")?.get("requestId")?)?;
            message
                .get_mut("params")?
                .as_object_mut()?
                .insert("requestId".into(), outward);
        }
        (Some("notifications/resources/updated"), _) => {
            let uri = message.get("params")?.get("uri")?.as_str()?;
            if servers.resource_server(uri).as_deref() != Some(server) {
                tracing::warn!(target: "idguard::gateway", server, "an upstream's update of a resource not its own: dropped");
                return None;
            }
        }
        (Some("elicitation/create" | "notifications/elicitation/complete"), _) => {
            if let Some(params) = message.get_mut("params") {
                own_elicitation(server, params)?;
            }
        }
        (None, On::Reply(_)) => {
            if message.pointer("/error/code").and_then(Value::as_i64) == Some(-32042)
                && let Some(Value::Array(list)) = message.pointer_mut("/error/data/elicitations")
            {
                for e in list {
                    own_elicitation(server, e)?;
                }
            }
        }
        _ => {}
    }
    if method.is_some()
        && let Some(id) = message.get("id")
    {
        let id = outward_id(server, id)?;
        message.as_object_mut()?.insert("id".into(), id);
    }
    Some(message)
}

/// `elicitationId` of `fields` as `<server>:<id>`; `None` when it is there but not a string.
fn own_elicitation(server: &str, fields: &mut Value) -> Option<()> {
    match fields.get_mut("elicitationId") {
        None => Some(()),
        Some(Value::String(id)) => {
            *id = format!("{server}:{id}");
            Some(())
        }
        Some(_) => None,
    }
}

/// `body` (an upstream's SSE reply, or its standalone `GET` stream) rewritten event by
/// event with [`rewrite_event`].
pub(super) fn rewrite_stream(server: Arc<str>, servers: Servers, on: On, body: Body) -> Body {
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), Vec::<u8>::new(), false),
        move |(mut body, mut buf, done)| {
            let server = server.clone();
            let servers = servers.clone();
            let on = on.clone();
            async move {
                use futures_util::StreamExt as _;
                if done {
                    return None;
                }
                loop {
                    // A complete event in the buffer: rewrite it.
                    let end = buf
                        .windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| (i, 2))
                        .or_else(|| {
                            buf.windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .map(|i| (i, 4))
                        });
                    if let Some((at, sep)) = end {
                        let event: Vec<u8> = buf.drain(..at + sep).collect();
                        let text = String::from_utf8_lossy(&event);
                        let out = rewrite_event(&server, &servers, &on, &text).unwrap_or_default();
                        return Some((
                            Ok::<_, std::io::Error>(Bytes::from(out)),
                            (body, buf, false),
                        ));
                    }
                    if buf.len() > MAX_READ_BYTES {
                        tracing::error!(target: "idguard::gateway", server = &*server, "upstream event too large: stream ended");
                        return None;
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            return Some((Err(std::io::Error::other(e)), (body, buf, true)));
                        }
                        None => {
                            let text = String::from_utf8_lossy(&buf).into_owned();
                            let out =
                                rewrite_event(&server, &servers, &on, &text).unwrap_or_default();
                            return Some((Ok(Bytes::from(out)), (body, Vec::new(), true)));
                        }
                    }
                }
            }
        },
    );
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_request_ids_round_trip_and_stay_apart() {
        let client = reqwest::Client::new();
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        let ups = vec![
            (Arc::from("a"), Gateway::new(url.clone(), client.clone())),
            (Arc::from("b"), Gateway::new(url, client)),
        ];
        let a = outward_id("a", &json!(1)).unwrap();
        let b = outward_id("b", &json!(1)).unwrap();
        assert_ne!(a, b);
        assert_eq!(inward_id(&ups, &a), Some((0, json!(1))));
        assert_eq!(inward_id(&ups, &b), Some((1, json!(1))));
        let s = outward_id("b", &json!("x:y")).unwrap();
        assert_eq!(inward_id(&ups, &s), Some((1, json!("x:y"))));
        assert_eq!(inward_id(&ups, &json!("c:n1")), None);
        assert_eq!(inward_id(&ups, &json!(7)), None);
        let event =
            "id: 9\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"sampling/createMessage\"}\n\n";
        let servers = Servers::new(["a", "b"]);
        let out = rewrite_event("a", &servers, &On::Reply(None), event).unwrap();
        assert!(out.contains("\"a:n3\"") && !out.contains("id: 9"), "{out}");
        assert_eq!(
            rewrite_event("a", &servers, &On::Reply(None), "data: not json\n\n"),
            None
        );
    }

    #[test]
    fn an_upstream_speaks_only_of_its_own_resources() {
        let servers = Servers::new(["a", "b"]);
        assert!(servers.claim_resource("a", "docs://a/1"));
        assert!(servers.claim_resource("b", "docs://b/1"));
        let updated = |uri: &str| {
            format!(
                "data: {}\n\n",
                json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                    "params": {"uri": uri}})
            )
        };
        assert!(rewrite_event("a", &servers, &On::Reply(None), &updated("docs://a/1")).is_some());
        assert_eq!(
            rewrite_event("a", &servers, &On::Reply(None), &updated("docs://b/1")),
            None
        );
        assert_eq!(
            rewrite_event("a", &servers, &On::Reply(None), &updated("docs://nobody")),
            None
        );
        let changed =
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";
        assert!(rewrite_event("b", &servers, &On::Standalone, changed).is_some());
    }

    #[test]
    fn a_standalone_stream_carries_no_replies_and_progress_only_its_own() {
        let servers = Servers::new(["a"]);
        let event = |m: Value| format!("data: {m}\n\n");
        let reply = event(json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}));
        let progress = event(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "t1", "progress": 1}}));
        let ask = event(json!({"jsonrpc": "2.0", "id": 2, "method": "roots/list"}));
        let kept = |on: On, e: &str| rewrite_event("a", &servers, &on, e).is_some();
        assert!(!kept(On::Standalone, &reply));
        assert!(kept(On::Reply(None), &reply));
        assert!(!kept(On::Standalone, &progress));
        assert!(!kept(On::Reply(None), &progress));
        assert!(!kept(On::Reply(Some(json!("t2"))), &progress));
        assert!(kept(On::Reply(Some(json!("t1"))), &progress));
        assert!(kept(On::Standalone, &ask));
        // A cancellation names the server's own request, as the caller knows it.
        let cancelled = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7}});
        let out = rewrite_message("a", &servers, &On::Standalone, cancelled).unwrap();
        assert_eq!(out["params"]["requestId"], "a:n7");
        // URL elicitations are the server's own.
        let create = json!({"jsonrpc": "2.0", "id": 3, "method": "elicitation/create",
            "params": {"mode": "url", "elicitationId": "e1", "url": "https://x", "message": "m"}});
        let out = rewrite_message("a", &servers, &On::Standalone, create).unwrap();
        assert_eq!(out["params"]["elicitationId"], "a:e1");
        let done = json!({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
            "params": {"elicitationId": "e1"}});
        let out = rewrite_message("a", &servers, &On::Standalone, done).unwrap();
        assert_eq!(out["params"]["elicitationId"], "a:e1");
        let needed = json!({"jsonrpc": "2.0", "id": 4, "error": {"code": -32042, "message": "m",
            "data": {"elicitations": [{"mode": "url", "elicitationId": "e2"}]}}});
        let out = rewrite_message("a", &servers, &On::Reply(None), needed).unwrap();
        assert_eq!(
            out["error"]["data"]["elicitations"][0]["elicitationId"],
            "a:e2"
        );
    }
}
