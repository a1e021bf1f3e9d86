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
            items.into_iter().map(parse_message).collect()
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
                #[serde(field_identifier, rename_all = "lowercase")]
                enum Key {
                    Name,
                    Uri,
                    Arguments,
                    #[serde(other)]
                    Other,
                }
                let mut p = Params::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Name => &mut p.name,
                        Key::Uri => &mut p.uri,
                        Key::Arguments => &mut p.arguments,
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
            Value::String(_) | Value::Null => Some(id),
            // Integers only, as written: a server may read `1.0`, `1e0` or `-0` as 1 and
            // answer `"id": 1`, a reply idguard would not know as the one to filter; and
            // beyond 2^53 a JavaScript server rounds.
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
        None if m.result.is_some() || m.error.is_some() => {
            return Ok(Message {
                method: None,
                name: None,
                ask: Ask::Other,
            });
        }
        None => return Err(Malformed("neither a request nor a response")),
    };
    let params = m.params;
    let (name, ask) = match (method.as_str(), id) {
        // Notifications (no id) never get a reply; nothing to decide.
        (_, None) => (None, Ask::Other),
        ("tools/call", Some(id)) => {
            let name = string(params.name).ok_or(Malformed("`tools/call` needs `params.name`"))?;
            let arguments = match params.arguments.map(RawValue::get) {
                None | Some("null") => None,
                Some(a) if a.starts_with('{') => Some(
                    serde_json::from_str::<Map<String, Value>>(a)
                        .map_err(|_| Malformed("`params.arguments` must be an object"))?,
                ),
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
            let uri = string(params.uri).ok_or(Malformed("`resources/read` needs `params.uri`"))?;
            (
                Some(uri.clone()),
                Ask::Use {
                    id,
                    item: Item::Resource(ResourceInfo { uri }),
                },
            )
        }
        ("prompts/get", Some(id)) => {
            let name = string(params.name).ok_or(Malformed("`prompts/get` needs `params.name`"))?;
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
    fn a_null_id_is_a_request_and_strings_are_decoded() {
        // `id: null` is not a notification: the call is decided like any other.
        let msgs = parse_body(
            br#"{"jsonrpc": "2\u002e0", "id": null, "method": "tools\/call", "params": {"name": "del\u0065te", "arguments": null}}"#,
        )
        .unwrap();
        assert_eq!(
            msgs[0].ask,
            Ask::CallTool {
                id: Value::Null,
                name: "delete".into(),
                arguments: None
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
        ] {
            assert!(parse_body(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
