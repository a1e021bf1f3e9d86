//! The minimal JSON-RPC 2.0 envelope idguard reads: what a client asks for, and which
//! replies to look at.

use serde_json::{Map, Value};

use crate::policy::{Item, PromptInfo, ResourceInfo};

/// A JSON-RPC request id (number or string).
pub(crate) type Id = Value;

/// What one client message asks for, as far as authorization is concerned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ask {
    /// `tools/call`: a tool by name, with arguments.
    CallTool {
        id: Id,
        name: String,
        arguments: Option<Map<String, Value>>,
    },
    /// `resources/read` or `prompts/get`: an item whose decision needs no annotations.
    Use { id: Id, item: Item },
    /// A list whose reply must be filtered for the caller.
    List { id: Id, kind: ListKind },
    /// Anything else (initialize, ping, notifications, responses from the client…).
    Other,
}

/// The lists idguard filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// `tools/list` → `result.tools`.
    Tools,
    /// `resources/list` → `result.resources`.
    Resources,
    /// `resources/templates/list` → `result.resourceTemplates`.
    ResourceTemplates,
    /// `prompts/list` → `result.prompts`.
    Prompts,
}

/// Why a body is not acceptable JSON-RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// One parsed client message: its method (if a request or notification) and what it asks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Message {
    pub(crate) method: Option<String>,
    /// The name or URI the `Mcp-Name` header must agree with.
    pub(crate) name: Option<String>,
    pub(crate) ask: Ask,
}

/// Parses a POST body: one message or a batch.
pub(crate) fn parse_body(body: &[u8]) -> Result<Vec<Message>, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Malformed("body is not JSON"))?;
    match value {
        Value::Array(items) if items.is_empty() => Err(Malformed("empty batch")),
        Value::Array(items) => items.into_iter().map(parse_message).collect(),
        other => Ok(vec![parse_message(other)?]),
    }
}

fn parse_message(v: Value) -> Result<Message, Malformed> {
    let Value::Object(mut m) = v else {
        return Err(Malformed("a message is not a JSON object"));
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Malformed("`jsonrpc` must be \"2.0\""));
    }
    let id = m.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_number() || id.is_null())
    {
        return Err(Malformed("`id` must be a string or a number"));
    }
    let method = match m.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => return Err(Malformed("`method` must be a string")),
        // A response from the client (to a server request): passes through.
        None if m.contains_key("result") || m.contains_key("error") => {
            return Ok(Message {
                method: None,
                name: None,
                ask: Ask::Other,
            });
        }
        None => return Err(Malformed("neither a request nor a response")),
    };
    let mut params = match m.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Malformed("`params` must be an object")),
    };
    let string = |key: &str| params.get(key).and_then(Value::as_str).map(str::to_owned);
    let (name, ask) = match (method.as_str(), id) {
        // Notifications (no id) never get a reply; nothing to decide.
        (_, None) => (None, Ask::Other),
        ("tools/call", Some(id)) => {
            let name = string("name").ok_or(Malformed("`tools/call` needs `params.name`"))?;
            let arguments = match params.remove("arguments") {
                None | Some(Value::Null) => None,
                Some(Value::Object(a)) => Some(a),
                Some(_) => return Err(Malformed("`params.arguments` must be an object")),
            };
            (
                Some(name.clone()),
                Ask::CallTool {
                    id,
                    name,
                    arguments,
                },
            )
        }
        ("resources/read", Some(id)) => {
            let uri = string("uri").ok_or(Malformed("`resources/read` needs `params.uri`"))?;
            (
                Some(uri.clone()),
                Ask::Use {
                    id,
                    item: Item::Resource(ResourceInfo { uri }),
                },
            )
        }
        ("prompts/get", Some(id)) => {
            let name = string("name").ok_or(Malformed("`prompts/get` needs `params.name`"))?;
            (
                Some(name.clone()),
                Ask::Use {
                    id,
                    item: Item::Prompt(PromptInfo { name }),
                },
            )
        }
        ("tools/list", Some(id)) => (None, list(id, ListKind::Tools)),
        ("resources/list", Some(id)) => (None, list(id, ListKind::Resources)),
        ("resources/templates/list", Some(id)) => (None, list(id, ListKind::ResourceTemplates)),
        ("prompts/list", Some(id)) => (None, list(id, ListKind::Prompts)),
        (_, Some(_)) => (None, Ask::Other),
    };
    Ok(Message {
        method: Some(method),
        name,
        ask,
    })
}

fn list(id: Id, kind: ListKind) -> Ask {
    Ask::List { id, kind }
}

/// A JSON-RPC error response.
pub(crate) fn error(id: &Id, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::from(message));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_calls_lists_and_batches() {
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {"a": 1}}},
            {"jsonrpc": "2.0", "id": "x", "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 5, "result": {}},
        ]);
        let msgs = parse_body(body.to_string().as_bytes()).unwrap();
        assert!(matches!(&msgs[0].ask, Ask::CallTool { name, .. } if name == "t"));
        assert_eq!(msgs[0].name.as_deref(), Some("t"));
        assert!(matches!(
            &msgs[1].ask,
            Ask::List {
                kind: ListKind::Tools,
                ..
            }
        ));
        assert_eq!(msgs[2].ask, Ask::Other);
        assert_eq!(msgs[3].method, None);
    }

    #[test]
    fn refuses_wrong_shapes() {
        for bad in [
            "not json",
            "[]",
            "42",
            r#"{"id": 1, "method": "x"}"#,
            r#"{"jsonrpc": "1.0", "id": 1, "method": "x"}"#,
            r#"{"jsonrpc": "2.0", "id": {}, "method": "x"}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": 7}"#,
            r#"{"jsonrpc": "2.0", "id": 1}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": []}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": 3}"#,
        ] {
            assert!(parse_body(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
