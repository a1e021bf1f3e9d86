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

/// One SSE event of upstream `server`'s reply, as the caller gets it: its message by
/// [`rewrite_message`], event ids removed; `None` drops it.
fn rewrite_event(server: &str, servers: &Servers, standalone: bool, event: &str) -> Option<String> {
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
    let message = rewrite_message(server, servers, standalone, message)?;
    Some(format!("event: message\ndata: {message}\n\n"))
}

/// One message of upstream `server` as the caller gets it: server-to-client requests
/// renumbered ([`outward_id`]); `None` drops it. So does a
/// `notifications/resources/updated` for a URI that `servers` does not attribute to
/// `server` (an upstream speaks only of its own resources); a
/// `notifications/cancelled` names the request it cancels as the caller knows it
/// (`<server>:…`: only the server's own). On a `standalone` (`GET`) stream, which no
/// request of the caller's went to, so do replies and progress: they could only concern
/// requests idguard sent to other upstreams, or its own lists.
pub(super) fn rewrite_message(
    server: &str,
    servers: &Servers,
    standalone: bool,
    mut message: Value,
) -> Option<Value> {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let method = method.as_deref();
    if standalone && matches!(method, None | Some("notifications/progress")) {
        tracing::warn!(target: "idguard::gateway", server, "a reply or progress on an upstream's standalone stream: dropped");
        return None;
    }
    if method == Some("notifications/cancelled") {
        // It can only cancel a request of the same server's (renumbered as they are).
        let outward = outward_id(server, message.get("params")?.get("requestId")?)?;
        message
            .get_mut("params")?
            .as_object_mut()?
            .insert("requestId".into(), outward);
    }
    if method == Some("notifications/resources/updated") {
        let uri = message.get("params")?.get("uri")?.as_str()?;
        if servers.resource_server(uri).as_deref() != Some(server) {
            tracing::warn!(target: "idguard::gateway", server, "an upstream's update of a resource not its own: dropped");
            return None;
        }
    }
    if message.get("method").is_some()
        && let Some(id) = message.get("id")
    {
        let id = outward_id(server, id)?;
        message.as_object_mut()?.insert("id".into(), id);
    }
    Some(message)
}

/// `body` (an upstream's SSE reply, or its `standalone` `GET` stream) rewritten event by
/// event with [`rewrite_event`].
pub(super) fn rewrite_stream(
    server: Arc<str>,
    servers: Servers,
    standalone: bool,
    body: Body,
) -> Body {
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), Vec::<u8>::new(), false),
        move |(mut body, mut buf, done)| {
            let server = server.clone();
            let servers = servers.clone();
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
                        let out =
                            rewrite_event(&server, &servers, standalone, &text).unwrap_or_default();
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
                            let out = rewrite_event(&server, &servers, standalone, &text)
                                .unwrap_or_default();
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
        let out = rewrite_event("a", &servers, false, event).unwrap();
        assert!(out.contains("\"a:n3\"") && !out.contains("id: 9"), "{out}");
        assert_eq!(
            rewrite_event("a", &servers, false, "data: not json\n\n"),
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
        assert!(rewrite_event("a", &servers, false, &updated("docs://a/1")).is_some());
        assert_eq!(
            rewrite_event("a", &servers, false, &updated("docs://b/1")),
            None
        );
        assert_eq!(
            rewrite_event("a", &servers, false, &updated("docs://nobody")),
            None
        );
        let changed =
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";
        assert!(rewrite_event("b", &servers, true, changed).is_some());
    }

    #[test]
    fn a_standalone_stream_carries_no_replies() {
        let servers = Servers::new(["a"]);
        let event = |m: Value| format!("data: {m}\n\n");
        let reply = event(json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}));
        let progress = event(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1}}));
        let ask = event(json!({"jsonrpc": "2.0", "id": 2, "method": "roots/list"}));
        for standalone in [false, true] {
            let kept = |e: &str| rewrite_event("a", &servers, standalone, e).is_some();
            assert_eq!(kept(&reply), !standalone);
            assert_eq!(kept(&progress), !standalone);
            assert!(kept(&ask));
        }
        // A cancellation names the server's own request, as the caller knows it.
        let cancelled = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7}});
        let out = rewrite_message("a", &servers, true, cancelled).unwrap();
        assert_eq!(out["params"]["requestId"], "a:n7");
    }
}
