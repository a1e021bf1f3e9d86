//! The minimal JSON-RPC 2.0 envelope idguard reads: what a client asks for, and which
//! replies to look at.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::policy::{Item, PromptInfo, ResourceInfo};

/// A JSON-RPC request id (number or string).
pub(crate) type Id = Value;

/// What one client message asks for, as far as authorization is concerned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ask {
    /// `tools/call`: a tool by name, with arguments; `task` when the call asks to run as a
    /// task (the 2025-11-25 `params.task`).
    CallTool {
        id: Id,
        name: String,
        arguments: Option<Map<String, Value>>,
        task: bool,
    },
    /// A request that names one item and needs no annotations to decide: `resources/read`,
    /// `prompts/get`, `resources/subscribe`, `resources/unsubscribe`, `completion/complete`
    /// (by its `ref`). `list` when the reply is also a list to filter
    /// (`resources/directory/read`).
    Use {
        id: Id,
        item: Item,
        list: Option<ListKind>,
    },
    /// A list whose reply must be filtered for the caller.
    List { id: Id, kind: ListKind },
    /// `tasks/get`, `tasks/result`, `tasks/cancel`, `tasks/update`: a task by the handle
    /// idguard issued.
    Task { id: Id, task_id: String },
    /// `tasks/list`: the server's list cannot be attributed to callers.
    TaskList { id: Id },
    /// A request that names no item (`initialize`, `ping`, `server/discover`…).
    Plain { id: Id },
    /// A request whose method idguard does not know.
    Unknown { id: Id },
    /// A notification or a response from the client.
    Other,
    /// A notification whose method idguard does not know.
    UnknownNotification,
}

impl Ask {
    /// The id of a request (`None` for notifications and responses).
    pub(crate) fn id(&self) -> Option<&Id> {
        match self {
            Self::CallTool { id, .. }
            | Self::Use { id, .. }
            | Self::List { id, .. }
            | Self::Task { id, .. }
            | Self::TaskList { id }
            | Self::Plain { id }
            | Self::Unknown { id } => Some(id),
            Self::Other | Self::UnknownNotification => None,
        }
    }
}

/// Requests that name no item and are passed as they are.
const PLAIN_METHODS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
];

/// Notifications a client sends.
const CLIENT_NOTIFICATIONS: [&str; 5] = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/elicitation/complete",
];

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
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) method: Option<String>,
    /// The name or URI the `Mcp-Name` header must agree with.
    pub(crate) name: Option<String>,
    pub(crate) ask: Ask,
    /// `params._meta` as written (the 2026-07-28 protocol envelope travels there).
    pub(crate) meta: Option<Box<RawValue>>,
}

/// Parses a POST body: one message or a batch.
///
/// Typed and borrowed: the envelope and params are read into structs, not a tree of maps
/// (the request path's largest cost of idguard's own). Stricter than a tree where it
/// matters, so idguard and the server never read a message differently: a duplicated
/// member of the envelope or of `params` (`params.name` twice, say) is refused rather
/// than read as its last value (inside `arguments`, the last value counts, as in the
/// server's own parse); a message or `params` that is an array (which derived structs
/// would read by position) is refused; an `id` must be a string or an integer written as
/// one.
pub(crate) fn parse_body(body: &[u8]) -> Result<Vec<Message>, Malformed> {
    let not_json = |_| Malformed("body is not JSON");
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(not_json)?;
            if items.is_empty() {
                return Err(Malformed("empty batch"));
            }
            let messages: Vec<Message> = items
                .into_iter()
                .map(parse_message)
                .collect::<Result<_, _>>()?;
            // Replies are matched to requests by id: two requests with one id (or with ids a
            // server may take for one, `1` and `"1"`) could not be told apart.
            let mut ids: Vec<String> = messages
                .iter()
                .filter_map(|m| m.ask.id())
                .map(|id| match id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w.first() == w.last()) {
                return Err(Malformed("two requests in a batch share an id"));
            }
            Ok(messages)
        }
        Some(b'{') => Ok(vec![parse_message(
            serde_json::from_slice(body).map_err(not_json)?,
        )?]),
        _ => {
            // Valid JSON that is not an object or array is "not a message"; anything else
            // is not JSON.
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(not_json)?;
            Err(Malformed("a message is not a JSON object"))
        }
    }
}

/// A member that is present, even as `null` (absent is `None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The members of a message idguard reads, in one pass.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    params: Params<'a>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// The members of `params` idguard reads. `params` must be an object or `null` (then
/// empty): anything else, and a member named twice, fails the parse.
#[derive(Default)]
struct Params<'a> {
    name: Option<&'a RawValue>,
    uri: Option<&'a RawValue>,
    arguments: Option<&'a RawValue>,
    meta: Option<&'a RawValue>,
    task: Option<&'a RawValue>,
    task_id: Option<&'a RawValue>,
    reference: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Params<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                #[derive(Deserialize)]
                #[serde(field_identifier)]
                enum Key {
                    #[serde(rename = "name")]
                    Name,
                    #[serde(rename = "uri")]
                    Uri,
                    #[serde(rename = "arguments")]
                    Arguments,
                    #[serde(rename = "_meta")]
                    Meta,
                    #[serde(rename = "task")]
                    Task,
                    #[serde(rename = "taskId")]
                    TaskId,
                    #[serde(rename = "ref")]
                    Ref,
                    #[serde(other)]
                    Other,
                }
                let mut p = Params::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Name => &mut p.name,
                        Key::Uri => &mut p.uri,
                        Key::Arguments => &mut p.arguments,
                        Key::Meta => &mut p.meta,
                        Key::Task => &mut p.task,
                        Key::TaskId => &mut p.task_id,
                        Key::Ref => &mut p.reference,
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.replace(map.next_value()?).is_some() {
                        return Err(A::Error::custom("a member of `params` is named twice"));
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// A JSON string's value (`None` for any other JSON).
fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<Cow<'_, str>>(raw?.get())
        .ok()
        .map(Cow::into_owned)
}

fn parse_message(raw: &RawValue) -> Result<Message, Malformed> {
    if !raw.get().starts_with('{') {
        return Err(Malformed("a message is not a JSON object"));
    }
    let m: Envelope<'_> =
        serde_json::from_str(raw.get()).map_err(|_| Malformed("a message is not valid"))?;
    if string(m.jsonrpc).as_deref() != Some("2.0") {
        return Err(Malformed("`jsonrpc` must be \"2.0\""));
    }
    let id: Option<Id> = match m.id {
        None => None,
        Some(id) => match id {
            Value::String(_) => Some(id),
            // Integers only, as written: a server may read `1.0`, `1e0` or `-0` as 1 and
            // answer `"id": 1`, a reply idguard would not know as the one to filter; and
            // beyond 2^53 a JavaScript server rounds. MCP forbids `null`.
            Value::Number(n) if n.as_i64().is_some_and(|i| i.unsigned_abs() < 1 << 53) => {
                Some(Value::Number(n))
            }
            _ => {
                return Err(Malformed(
                    "`id` must be a string or an integer (at most 2^53 - 1 in magnitude)",
                ));
            }
        },
    };
    let method = match m.method {
        Some(raw) => string(Some(raw)).ok_or(Malformed("`method` must be a string"))?,
        // A response from the client (to a server request): passes through.
        None if (m.result.is_some() || m.error.is_some()) && id.is_some() => {
            return Ok(Message {
                method: None,
                name: None,
                ask: Ask::Other,
                meta: None,
            });
        }
        None => return Err(Malformed("neither a request nor a response")),
    };
    if m.result.is_some() || m.error.is_some() {
        return Err(Malformed("a request cannot carry `result` or `error`"));
    }
    let params = m.params;
    let meta = params.meta.map(RawValue::to_owned);
    let Some(id) = id else {
        // Notifications never get a reply; nothing to decide, but only known ones pass.
        let ask = if CLIENT_NOTIFICATIONS.contains(&method.as_str()) {
            Ask::Other
        } else {
            Ask::UnknownNotification
        };
        return Ok(Message {
            method: Some(method),
            name: None,
            ask,
            meta,
        });
    };
    let resource = |uri: String| Item::Resource(ResourceInfo { uri });
    let (name, ask) = match method.as_str() {
        "tools/call" => {
            let name = string(params.name).ok_or(Malformed("`tools/call` needs `params.name`"))?;
            let arguments = match params.arguments.map(RawValue::get) {
                None | Some("null") => None,
                Some(a) if a.starts_with('{') => Some(
                    serde_json::from_str::<Map<String, Value>>(a)
                        .map_err(|_| Malformed("`params.arguments` must be an object"))?,
                ),
                Some(_) => return Err(Malformed("`params.arguments` must be an object")),
            };
            let task = params.task.is_some_and(|t| t.get() != "null");
            (
                Some(name.clone()),
                Ask::CallTool {
                    id,
                    name,
                    arguments,
                    task,
                },
            )
        }
        "resources/read"
        | "resources/subscribe"
        | "resources/unsubscribe"
        | "resources/directory/read" => {
            let uri = string(params.uri).ok_or(Malformed("this method needs `params.uri`"))?;
            plain_uri(&uri)?;
            let list = (method == "resources/directory/read").then_some(ListKind::Resources);
            (
                Some(uri.clone()),
                Ask::Use {
                    id,
                    item: resource(uri),
                    list,
                },
            )
        }
        "prompts/get" => {
            let name = string(params.name).ok_or(Malformed("`prompts/get` needs `params.name`"))?;
            (
                Some(name.clone()),
                Ask::Use {
                    id,
                    item: Item::Prompt(PromptInfo { name }),
                    list: None,
                },
            )
        }
        "completion/complete" => {
            let item = reference(params.reference)?;
            (
                None,
                Ask::Use {
                    id,
                    item,
                    list: None,
                },
            )
        }
        "tools/list" => (None, list(id, ListKind::Tools)),
        "resources/list" => (None, list(id, ListKind::Resources)),
        "resources/templates/list" => (None, list(id, ListKind::ResourceTemplates)),
        "prompts/list" => (None, list(id, ListKind::Prompts)),
        "tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/update" => {
            let task_id =
                string(params.task_id).ok_or(Malformed("this method needs `params.taskId`"))?;
            (None, Ask::Task { id, task_id })
        }
        "tasks/list" => (None, Ask::TaskList { id }),
        m if PLAIN_METHODS.contains(&m) => (None, Ask::Plain { id }),
        _ => (None, Ask::Unknown { id }),
    };
    Ok(Message {
        method: Some(method),
        name,
        ask,
        meta,
    })
}

/// The item a `completion/complete` request completes for: `ref/prompt` by name,
/// `ref/resource` by URI (template).
fn reference(raw: Option<&RawValue>) -> Result<Item, Malformed> {
    #[derive(Deserialize)]
    struct Ref {
        #[serde(rename = "type")]
        kind: String,
        name: Option<String>,
        uri: Option<String>,
    }
    let bad = Malformed("`completion/complete` needs `params.ref` naming a prompt or resource");
    let r: Ref = serde_json::from_str(raw.ok_or(bad.clone())?.get()).map_err(|_| bad.clone())?;
    match (r.kind.as_str(), r.name, r.uri) {
        ("ref/prompt", Some(name), _) => Ok(Item::Prompt(PromptInfo { name })),
        ("ref/resource", _, Some(uri)) => {
            plain_uri(&uri)?;
            Ok(Item::Resource(ResourceInfo { uri }))
        }
        _ => Err(bad),
    }
}

/// Refuses a resource URI that a server may resolve to another resource than the one
/// policies see: dot segments (`/../`, `/./`, also percent-encoded), encoded slashes or
/// backslashes, backslashes, whitespace and control characters. `docs://public/../secret`
/// matches `like "docs://public/*"`, yet a URL parser reads it as `docs://public/secret`,
/// and `file:///public/../etc` as `file:///etc`.
fn plain_uri(uri: &str) -> Result<(), Malformed> {
    let bad = Malformed(
        "a resource URI may not hold dot segments, encoded slashes, backslashes or spaces",
    );
    if uri
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(bad);
    }
    let lower = uri.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(bad);
    }
    // The part a URL parser normalizes: after the scheme, before the query or fragment.
    let rest = lower.split_once(':').map_or(lower.as_str(), |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let dotted = path
        .replace("%2e", ".")
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if dotted {
        return Err(bad);
    }
    Ok(())
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
    fn strings_are_decoded_as_a_server_decodes_them() {
        let msgs = parse_body(
            br#"{"jsonrpc": "2\u002e0", "id": 0, "method": "tools\/call", "params": {"name": "del\u0065te", "arguments": null}}"#,
        )
        .unwrap();
        assert_eq!(
            msgs[0].ask,
            Ask::CallTool {
                id: Value::from(0),
                name: "delete".into(),
                arguments: None,
                task: false,
            }
        );
        assert_eq!(msgs[0].method.as_deref(), Some("tools/call"));
        for id in ["0", "-1", "9007199254740991", "-9007199254740991"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            assert!(parse_body(body.as_bytes()).is_ok(), "{id}");
        }
        let msgs = parse_body(br#" {"jsonrpc":"2.0","id":"r","result":null} "#).unwrap();
        assert_eq!(
            (msgs[0].method.clone(), msgs[0].ask.clone()),
            (None, Ask::Other)
        );
        let msgs =
            parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://a","extra":[1]}}"#)
                .unwrap();
        assert_eq!(msgs[0].name.as_deref(), Some("docs://a"));
        // Escaped member names are read as the server reads them.
        let msgs = parse_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"t","_meta":{}}}"#,
        )
        .unwrap();
        assert_eq!(msgs[0].name.as_deref(), Some("t"));
        assert!(
            parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#)
                .is_err()
        );
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
            r#"{"jsonrpc": "2.0", "id": 1, "method": null}"#,
            // What a tree would read as its last value, a server may read otherwise.
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "name": "b"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "method": "tools/call", "params": {"name": "a"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "tools/list"}"#,
            // Arrays where objects belong (a struct would read them by position).
            r#"["2.0", 1, "tools/call", {"name": "a"}]"#,
            r#"[["2.0", 1, "tools/call", {"name": "a"}]]"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["a", {}]}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}} x"#,
            // Ids a server may read as another id (its reply would not be recognised).
            r#"{"jsonrpc": "2.0", "id": 1.0, "method": "tools/list"}"#,
            r#"{"jsonrpc": "2.0", "id": 1e0, "method": "tools/list"}"#,
            r#"{"jsonrpc": "2.0", "id": -0, "method": "tools/list"}"#,
            r#"{"jsonrpc": "2.0", "id": 9007199254740993, "method": "tools/list"}"#,
            r#"{"jsonrpc": "2.0", "id": 18446744073709551615, "method": "tools/list"}"#,
            "",
            // MCP forbids `null` ids; replies are matched by id, so ids must be unique.
            r#"{"jsonrpc": "2.0", "id": null, "method": "tools/list"}"#,
            r#"[{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}}, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]"#,
            r#"[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": "1", "method": "tools/list"}]"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "result": {}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": {"type": "ref/prompt"}}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": {"type": "ref/prompt", "name": "a", "name": "b"}}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tasks/result", "params": {"taskId": 7}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "_meta": {}, "_meta": {}}}"#,
            // Resource URIs a server may resolve elsewhere than policies see.
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "docs://public/../secret/plan"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///public/%2E%2e/etc/passwd"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "docs://public/."}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "docs://public/x%2F..%2Fsecret"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": "docs://public\\..\\secret"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "docs://public/a b"}}"#,
            r#"{"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": {"type": "ref/resource", "uri": "docs://public/../{x}"}}}"#,
        ] {
            assert!(parse_body(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_method_that_names_an_item_is_decided() {
        let ask = |body: &str| parse_body(body.as_bytes()).unwrap().remove(0).ask;
        let prompt = |name: &str| Item::Prompt(PromptInfo { name: name.into() });
        let resource = |uri: &str| Item::Resource(ResourceInfo { uri: uri.into() });
        assert_eq!(
            ask(
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":""}}}"#
            ),
            Ask::Use {
                id: json!(1),
                item: prompt("p"),
                list: None
            }
        );
        assert_eq!(
            ask(
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"docs://{x}"}}}"#
            ),
            Ask::Use {
                id: json!(1),
                item: resource("docs://{x}"),
                list: None
            }
        );
        for method in [
            "resources/subscribe",
            "resources/unsubscribe",
            "resources/read",
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"uri":"docs://s"}}}}"#
            );
            assert_eq!(
                ask(&body),
                Ask::Use {
                    id: json!(1),
                    item: resource("docs://s"),
                    list: None
                }
            );
        }
        assert_eq!(
            ask(
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/directory/read","params":{"uri":"docs://d/"}}"#
            ),
            Ask::Use {
                id: json!(1),
                item: resource("docs://d/"),
                list: Some(ListKind::Resources)
            }
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/result","params":{"taskId":"t"}}"#),
            Ask::Task {
                id: json!(1),
                task_id: "t".into()
            }
        );
        assert_eq!(
            ask(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","task":{"ttl":1000}}}"#
            ),
            Ask::CallTool {
                id: json!(1),
                name: "t".into(),
                arguments: None,
                task: true
            }
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/list"}"#),
            Ask::TaskList { id: json!(1) }
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ask::Plain { id: json!(1) }
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","id":1,"method":"x/unknown"}"#),
            Ask::Unknown { id: json!(1) }
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","method":"notifications/x"}"#),
            Ask::UnknownNotification
        );
        assert_eq!(
            ask(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#),
            Ask::Other
        );
    }
}
