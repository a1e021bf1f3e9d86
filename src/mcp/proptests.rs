//! Property tests: idguard's readings of MCP traffic against a plain reading.
//!
//! - [`parse_body`] against `serde_json::Value` read the way a server reads a request
//!   (`JSON.parse`, Python's `json`: the last of a duplicated member wins): idguard either
//!   refuses a body or reads the same method, name or URI, id and arguments.
//! - [`ReplyRewriter::rewrite_json`] (fast paths first) against its general path alone, on
//!   list replies, twice in a row (the second run finds the list among the recent ones).
//! - [`SseRewriter`] over those replies: the events do not depend on chunk boundaries.
//!
//! `PROPTEST_CASES` runs more cases than the default 256 (e.g. `PROPTEST_CASES=20000`).
//!
//! Over 800 lines: test code only (strategies and their reference readings).

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

use super::catalog::ToolCatalog;
use super::filter::{Pending, ReplyRewriter, TaskIds};
use super::jsonrpc::{Ask, ListKind, parse_body};
use super::sse::SseRewriter;
use crate::policy::{Item, PolicyEngine};
use crate::principal::Principal;

/// Cases per property: 256, or `PROPTEST_CASES`.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        // Failures are reported (and kept as unit tests), not written next to the source.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// JSON as written: members in order, duplicates kept, rendered with varying whitespace and
// escapes.

/// A JSON value as it will be written.
#[derive(Clone, Debug)]
enum J {
    /// A literal written as it is (`null`, `1.0`, `-0`, …).
    Lit(&'static str),
    Str(String),
    Arr(Vec<J>),
    /// Members in order; a key may repeat.
    Obj(Vec<(String, J)>),
}

fn s(text: &str) -> J {
    J::Str(text.to_owned())
}

/// A tiny xorshift PRNG: how a value is written (whitespace, escapes) follows from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// True about once in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// How a value is written.
struct Writer {
    rng: Rng,
    /// 1 in `ws` gaps get whitespace (0: none).
    ws: u64,
    /// 1 in `escape` characters of strings and keys are written as `\uXXXX` (0: none).
    escape: u64,
}

impl Writer {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let ws = [0, 0, 2, 5][rng.below(4) as usize];
        let escape = [0, 0, 3, 8][rng.below(4) as usize];
        Self { rng, ws, escape }
    }

    fn gap(&mut self, out: &mut String) {
        if self.ws > 0 && self.rng.one_in(self.ws) {
            out.push_str([" ", "\n", "\t", "\r\n", "  "][self.rng.below(5) as usize]);
        }
    }

    fn string(&mut self, text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            let escape = self.escape > 0 && self.rng.one_in(self.escape);
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if escape && self.rng.one_in(2) => out.push_str("\\/"),
                c if (c as u32) < 0x20 || escape => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        if self.rng.one_in(2) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        } else {
                            out.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn value(&mut self, v: &J, out: &mut String) {
        match v {
            J::Lit(l) => out.push_str(l),
            J::Str(text) => self.string(text, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.gap(out);
                    self.value(item, out);
                    self.gap(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, item)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.gap(out);
                    self.string(k, out);
                    self.gap(out);
                    out.push(':');
                    self.gap(out);
                    self.value(item, out);
                    self.gap(out);
                }
                out.push('}');
            }
        }
    }

    fn write(seed: u64, v: &J) -> String {
        let mut w = Self::new(seed);
        let mut out = String::new();
        w.gap(&mut out);
        w.value(v, &mut out);
        w.gap(&mut out);
        out
    }
}

/// A change to the bytes of a written value.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replaces the byte at this fraction of the length.
    Replace(f64, u8),
    Insert(f64, u8),
    Delete(f64),
    Prefix(&'static [u8]),
    Suffix(&'static [u8]),
}

/// Bytes that change what JSON means.
const INTERESTING: &[u8] = b"\"\\{}[],: \t\n01-.eEu+naeltrs\x00\x0c\xef\xbb\xbf\xff";

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(INTERESTING);
    prop_oneof![
        (0.0..1.0f64, byte.clone()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (0.0..1.0f64, byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (0.0..1.0f64).prop_map(Mutation::Delete),
        prop::sample::select(vec![
            &b"\xef\xbb\xbf"[..],
            b" ",
            b"\x0c",
            b"\x00",
            b"[",
            b"{}",
        ])
        .prop_map(Mutation::Prefix),
        prop::sample::select(vec![&b" x"[..], b"}", b"]", b"\n", b"{}", b",", b"\x00"])
            .prop_map(Mutation::Suffix),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Replace(f, b) if len > 0 => bytes[at(f, len - 1)] = b,
            Mutation::Insert(f, b) => bytes.insert(at(f, len), b),
            Mutation::Delete(f) if len > 0 => {
                bytes.remove(at(f, len - 1));
            }
            Mutation::Prefix(p) => bytes.splice(0..0, p.iter().copied()).for_each(drop),
            Mutation::Suffix(x) => bytes.extend_from_slice(x),
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Requests.

const METHODS: &[&str] = &[
    "tools/call",
    "tools/call",
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/subscribe",
    "resources/directory/read",
    "resources/list",
    "prompts/get",
    "prompts/list",
    "completion/complete",
    "tasks/get",
    "tasks/list",
    "initialize",
    "ping",
    "notifications/initialized",
    "notifications/cancelled",
    "x/unknown",
    "tools/Call",
];

const NAMES: &[&str] = &[
    "t",
    "delete",
    "read_doc",
    "docs://public/a",
    "docs://secret/plan",
    "docs://public/../secret",
    "é漢🙂",
    "a\"b\\c",
    "",
    "tools/call",
    "n\u{0}",
];

/// Literals a server may read otherwise than idguard: odd numbers, non-strings.
const ODD: &[&str] = &[
    "null",
    "true",
    "0",
    "-0",
    "1.0",
    "1e0",
    "1E+0",
    "0.5",
    "-1",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "-9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "100000000000000000000000",
];

fn name() -> impl Strategy<Value = J> {
    prop::sample::select(NAMES).prop_map(s)
}

fn odd() -> impl Strategy<Value = J> {
    prop::sample::select(ODD).prop_map(J::Lit)
}

/// Any small JSON value, objects with keys that matter to idguard.
fn any_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![name(), odd()];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(J::Arr),
            prop::collection::vec(
                (
                    prop::sample::select(&["a", "name", "uri", "type", "x", "_meta", "ttl"][..])
                        .prop_map(str::to_owned),
                    inner
                ),
                0..4
            )
            .prop_map(J::Obj),
        ]
    })
}

fn object_of(
    members: impl Strategy<Value = (String, J)>,
    size: std::ops::Range<usize>,
) -> impl Strategy<Value = J> {
    prop::collection::vec(members, size).prop_map(J::Obj)
}

fn member(
    key: &'static str,
    value: impl Strategy<Value = J>,
) -> impl Strategy<Value = (String, J)> {
    value.prop_map(move |v| (key.to_owned(), v))
}

fn reference() -> impl Strategy<Value = J> {
    let kind = prop_oneof![
        4 => prop::sample::select(&["ref/prompt", "ref/resource"][..]).prop_map(s),
        1 => any_json(),
    ];
    object_of(
        prop_oneof![
            member("type", kind),
            member("name", name()),
            member("uri", name()),
            member("x", any_json()),
        ],
        0..4,
    )
}

fn param() -> impl Strategy<Value = (String, J)> {
    prop_oneof![
        4 => member("name", prop_oneof![6 => name(), 1 => any_json()]),
        3 => member("uri", prop_oneof![6 => name(), 1 => any_json()]),
        3 => member("arguments", prop_oneof![
            4 => object_of(
                (prop::sample::select(&["a", "b", "name", "path"][..]).prop_map(str::to_owned), any_json()),
                0..4,
            ),
            1 => any_json(),
        ]),
        1 => member("_meta", any_json()),
        1 => member("task", prop_oneof![Just(J::Lit("null")), any_json()]),
        1 => member("taskId", prop_oneof![3 => name(), 1 => any_json()]),
        2 => member("ref", prop_oneof![3 => reference(), 1 => any_json()]),
        1 => member("cursor", any_json()),
    ]
}

fn params() -> impl Strategy<Value = J> {
    prop_oneof![
        10 => object_of(param(), 0..5),
        1 => Just(J::Lit("null")),
        1 => prop::collection::vec(any_json(), 0..3).prop_map(J::Arr),
        1 => any_json(),
    ]
}

fn id() -> impl Strategy<Value = J> {
    prop_oneof![
        6 => prop::sample::select(&["0", "1", "2", "7", "-3", "42"][..]).prop_map(J::Lit),
        2 => prop::sample::select(&["1", "a", "", "é"][..]).prop_map(s),
        2 => odd(),
        1 => any_json(),
    ]
}

fn optional(
    weight_present: u32,
    m: impl Strategy<Value = (String, J)> + 'static,
) -> BoxedStrategy<Option<(String, J)>> {
    prop_oneof![weight_present => m.prop_map(Some), 1 => Just(None)].boxed()
}

/// One message: the usual members (each may be missing), maybe a member again or another
/// member, in any order.
fn message() -> impl Strategy<Value = J> {
    let jsonrpc = prop_oneof![
        12 => Just(s("2.0")),
        1 => Just(s("1.0")),
        1 => Just(J::Lit("2.0")),
    ];
    let method = prop_oneof![
        12 => prop::sample::select(METHODS).prop_map(s),
        1 => any_json(),
    ];
    let extra = prop_oneof![
        member("jsonrpc", Just(s("2.0"))),
        member("id", id()),
        member("method", prop::sample::select(METHODS).prop_map(s)),
        member("params", params()),
        member("result", any_json()),
        member("error", any_json()),
        member("other", any_json()),
    ];
    (
        optional(12, member("jsonrpc", jsonrpc)),
        optional(5, member("id", id())),
        optional(10, member("method", method)),
        optional(8, member("params", params())),
        prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(extra, 1..3)],
    )
        .prop_flat_map(|(a, b, c, d, extra)| {
            let members: Vec<(String, J)> =
                [a, b, c, d].into_iter().flatten().chain(extra).collect();
            Just(members).prop_shuffle()
        })
        .prop_map(J::Obj)
}

/// The members `params` needs for `method`, mostly as it needs them.
fn params_for(method: &'static str) -> BoxedStrategy<Vec<(String, J)>> {
    let needed: BoxedStrategy<Vec<(String, J)>> = match method {
        "tools/call" => (
            member("name", name()),
            optional(
                4,
                member(
                    "arguments",
                    object_of(
                        (
                            prop::sample::select(&["a", "b", "name", "path"][..])
                                .prop_map(str::to_owned),
                            any_json(),
                        ),
                        0..4,
                    ),
                ),
            ),
            optional(1, member("task", any_json())),
        )
            .prop_map(|(n, a, t)| [Some(n), a, t].into_iter().flatten().collect())
            .boxed(),
        "resources/read" | "resources/subscribe" | "resources/directory/read" => {
            member("uri", name()).prop_map(|m| vec![m]).boxed()
        }
        "prompts/get" => member("name", name()).prop_map(|m| vec![m]).boxed(),
        "completion/complete" => member("ref", reference()).prop_map(|m| vec![m]).boxed(),
        "tasks/get" => member("taskId", name()).prop_map(|m| vec![m]).boxed(),
        _ => Just(Vec::new()).boxed(),
    };
    (
        needed,
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(param(), 1..3)],
    )
        .prop_map(|(mut needed, extra)| {
            needed.extend(extra);
            needed
        })
        .boxed()
}

/// A message much as a client writes it: a known method, its params, maybe a member more.
fn plausible_message() -> impl Strategy<Value = J> {
    (prop::sample::select(METHODS), any::<bool>())
        .prop_flat_map(|(method, notification)| {
            let envelope_id = if notification && method.starts_with("notifications/") {
                Just(None).boxed()
            } else {
                optional(12, member("id", id()))
            };
            (
                Just(method),
                envelope_id,
                params_for(method).prop_shuffle(),
                prop_oneof![
                    8 => Just(Vec::new()),
                    1 => prop::collection::vec(
                        prop_oneof![
                            member("id", id()),
                            member("method", prop::sample::select(METHODS).prop_map(s)),
                            member("params", params()),
                            member("result", any_json()),
                            member("other", any_json()),
                        ],
                        1..2,
                    ),
                ],
            )
        })
        .prop_flat_map(|(method, id, params, extra)| {
            let members: Vec<(String, J)> = [
                Some(("jsonrpc".to_owned(), s("2.0"))),
                id,
                Some(("method".to_owned(), s(method))),
                Some(("params".to_owned(), J::Obj(params))),
            ]
            .into_iter()
            .flatten()
            .chain(extra)
            .collect();
            Just(members).prop_shuffle()
        })
        .prop_map(J::Obj)
}

fn body() -> impl Strategy<Value = J> {
    prop_oneof![
        6 => plausible_message(),
        2 => prop::collection::vec(prop_oneof![plausible_message(), message()], 1..4).prop_map(J::Arr),
        3 => message(),
        2 => prop::collection::vec(message(), 1..4).prop_map(J::Arr),
        1 => prop::collection::vec(prop_oneof![4 => message(), 1 => any_json()], 0..3).prop_map(J::Arr),
        1 => any_json(),
    ]
}

/// `body` with every `\uXXXX` escape of a lone surrogate written as `\ufffd`.
fn lone_surrogates_replaced(body: &[u8]) -> Vec<u8> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    // The code unit of a `\u` escape at `at`, if there is one.
    let unit = |at: usize| -> Option<u16> {
        (body.get(at..at + 2)? == b"\\u").then_some(())?;
        hex(at + 2)
    };
    let surrogate = |u: u16| (0xD800..0xE000).contains(&u);
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match unit(i) {
            Some(u) if high(u) && unit(i + 6).is_some_and(low) => {
                out.extend_from_slice(&body[i..i + 12]);
                i += 12;
            }
            Some(u) if surrogate(u) => {
                out.extend_from_slice(b"\\ufffd");
                i += 6;
            }
            // Any other escape, as it is (its second byte too: `\\` is one escape).
            _ => {
                out.extend_from_slice(body.get(i..i + 2).unwrap_or(&body[i..]));
                i += 2;
            }
        }
    }
    out
}

/// A member of `v` by name, as a server reads it (the last one written).
fn get<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    v?.as_object()?.get(key)
}

/// Where idguard's reading of `body` differs from a server's (`Ok` when idguard refuses it).
fn compare_request(body: &[u8]) -> Result<(), String> {
    let Ok(messages) = parse_body(body) else {
        return Ok(());
    };
    // `JSON.parse` and Python read a lone surrogate (`"\ud83d"`), which a Rust `String`
    // cannot hold: the reference reads it as U+FFFD (idguard refuses one where it decides).
    let lenient = lone_surrogates_replaced(body);
    let server: Value = match serde_json::from_slice(&lenient) {
        Ok(v) => v,
        // A number beyond f64 in a member idguard skips: `serde_json::Value` refuses it,
        // `JSON.parse` and Python read it as infinity; nothing idguard decides on.
        Err(e) if e.to_string().starts_with("number out of range") => return Ok(()),
        Err(e) => return Err(format!("idguard accepts a body a server cannot parse: {e}")),
    };
    let read: Vec<&Value> = match &server {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    if read.len() != messages.len() {
        return Err(format!(
            "{} messages, the server reads {}",
            messages.len(),
            read.len()
        ));
    }
    for (m, r) in messages.iter().zip(read) {
        let Some(obj) = r.as_object() else {
            return Err(format!(
                "idguard reads a message where the server reads {r}"
            ));
        };
        let method = obj.get("method").and_then(Value::as_str);
        let params = obj.get("params");
        let pname = get(params, "name").and_then(Value::as_str);
        let puri = get(params, "uri").and_then(Value::as_str);
        let id = obj.get("id");
        let differs = |what: &str, ours: &dyn std::fmt::Debug, theirs: &dyn std::fmt::Debug| {
            Err(format!(
                "{what}: idguard reads {ours:?}, the server {theirs:?}"
            ))
        };
        if m.method.as_deref() != method {
            return differs("method", &m.method, &method);
        }
        // The id of a request, as the server reads it.
        match m.ask.id() {
            Some(ours) if Some(ours) != id => return differs("id", &ours, &id),
            None if m.method.is_some() && id.is_some() => {
                return differs("id (a notification for idguard)", &None::<()>, &id);
            }
            _ => {}
        }
        if m.method.is_none() && !(obj.contains_key("result") || obj.contains_key("error")) {
            return Err("idguard reads a response without `result` or `error`".into());
        }
        let expected_name = match method {
            Some("tools/call" | "prompts/get") if id.is_some() => pname,
            Some(
                "resources/read"
                | "resources/subscribe"
                | "resources/unsubscribe"
                | "resources/directory/read",
            ) if id.is_some() => puri,
            _ => None,
        };
        if m.name.as_deref() != expected_name {
            return differs("name", &m.name, &expected_name);
        }
        match &m.ask {
            Ask::CallTool {
                name,
                arguments,
                task,
                ..
            } => {
                if method != Some("tools/call") || Some(name.as_str()) != pname {
                    return differs("tools/call name", &name, &pname);
                }
                let theirs: Option<&Map<String, Value>> = match get(params, "arguments") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(map)) => Some(map),
                    Some(other) => return differs("arguments", arguments, &other),
                };
                if arguments.as_ref() != theirs {
                    return differs("arguments", arguments, &theirs);
                }
                let their_task = get(params, "task").is_some_and(|t| !t.is_null());
                if *task != their_task {
                    return differs("task", task, &their_task);
                }
            }
            Ask::Use { item, list, .. } => {
                let theirs = match method {
                    Some("prompts/get") => pname.map(|n| ("prompt", n.to_owned())),
                    Some("completion/complete") => {
                        let r = get(params, "ref");
                        match get(r, "type").and_then(Value::as_str) {
                            Some("ref/prompt") => get(r, "name")
                                .and_then(Value::as_str)
                                .map(|n| ("prompt", n.to_owned())),
                            Some("ref/resource") => get(r, "uri")
                                .and_then(Value::as_str)
                                .map(|u| ("resource", u.to_owned())),
                            _ => None,
                        }
                    }
                    _ => puri.map(|u| ("resource", u.to_owned())),
                };
                let ours = match item {
                    Item::Prompt(p) => Some(("prompt", p.name.clone())),
                    Item::Resource(r) => Some(("resource", r.uri.clone())),
                    Item::Tool(t) => Some(("tool", t.name.clone())),
                };
                if ours != theirs {
                    return differs("item", &ours, &theirs);
                }
                let their_list =
                    (method == Some("resources/directory/read")).then_some(ListKind::Resources);
                if *list != their_list {
                    return differs("list", list, &their_list);
                }
            }
            Ask::List { kind, .. } => {
                let theirs = match method {
                    Some("tools/list") => Some(ListKind::Tools),
                    Some("resources/list") => Some(ListKind::Resources),
                    Some("resources/templates/list") => Some(ListKind::ResourceTemplates),
                    Some("prompts/list") => Some(ListKind::Prompts),
                    _ => None,
                };
                if Some(*kind) != theirs {
                    return differs("list", kind, &theirs);
                }
            }
            Ask::Task { task_id, .. } => {
                let theirs = get(params, "taskId").and_then(Value::as_str);
                if Some(task_id.as_str()) != theirs {
                    return differs("taskId", task_id, &theirs);
                }
            }
            Ask::Other | Ask::UnknownNotification => {
                if m.method.is_some() && id.is_some() {
                    return differs("notification", &m.ask, &id);
                }
            }
            _ => {
                // `Plain`, `Unknown`, `TaskList`: a request whose id was compared above.
                if !matches!(
                    (method, &m.ask),
                    (Some("tasks/list"), Ask::TaskList { .. })
                        | (Some(_), Ask::Plain { .. } | Ask::Unknown { .. })
                ) {
                    return differs("kind", &m.ask, &method);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Written messages, duplicated and escaped members, odd ids, arrays for objects.
    #[test]
    fn requests_are_read_as_a_server_reads_them(body in body(), seed in any::<u64>()) {
        let text = Writer::write(seed, &body);
        if let Err(why) = compare_request(text.as_bytes()) {
            prop_assert!(false, "{why}\nbody: {text}");
        }
    }

    /// The same with their bytes changed, a BOM or garbage around them.
    #[test]
    fn mutated_requests_are_read_as_a_server_reads_them(
        body in prop_oneof![3 => plausible_message(), 1 => message()],
        seed in any::<u64>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = mutate(Writer::write(seed, &body).into_bytes(), &mutations);
        if let Err(why) = compare_request(&bytes) {
            prop_assert!(false, "{why}\nbody: {}", String::from_utf8_lossy(&bytes));
        }
    }
}

// ---------------------------------------------------------------------------------------
// List replies.

/// The one policy: tools tagged `keep` are visible.
fn rewriter(catalog: &ToolCatalog) -> ReplyRewriter {
    // Built once: cases share it (list decisions are remembered per list, never shared).
    static ENGINE: std::sync::OnceLock<PolicyEngine> = std::sync::OnceLock::new();
    let engine = ENGINE.get_or_init(|| PolicyEngine::from_sources(
        include_str!("../../policies/schema.cedarschema"),
        None,
        [(
            "p.cedar",
            r#"@id("keep") permit (principal, action == Action::"call_tool", resource) when { resource.tags.contains("keep") };"#,
        )],
    )
    .unwrap());
    let principal =
        Principal::from_unvalidated_claims(&json!({"tid": "t", "oid": "o", "scp": "mcp.tools"}))
            .unwrap();
    ReplyRewriter {
        engine: engine.clone(),
        principal,
        pending: vec![(json!(1), Pending::List(ListKind::Tools))],
        session: None,
        progress: Vec::new(),
        tasks: TaskIds {
            binder: super::binding::Binder::random(),
            owner: "t/o".into(),
        },
        catalog: catalog.clone(),
    }
}

fn tags() -> impl Strategy<Value = J> {
    prop_oneof![
        6 => prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(&["keep", "other", "kee", "Keep"][..]).prop_map(s),
                1 => any_json(),
            ],
            0..3,
        )
        .prop_map(J::Arr),
        1 => any_json(),
    ]
}

fn meta() -> impl Strategy<Value = J> {
    object_of(
        prop_oneof![
            6 => member("tags", tags()),
            1 => member("x", any_json()),
        ],
        0..3,
    )
}

fn annotations() -> impl Strategy<Value = J> {
    let hint = prop_oneof![Just(J::Lit("true")), Just(J::Lit("false")), any_json()];
    object_of(
        prop_oneof![
            member("readOnlyHint", hint.clone()),
            member("destructiveHint", hint.clone()),
            member("openWorldHint", hint.clone()),
            member("idempotentHint", hint),
            member("title", name()),
        ],
        0..3,
    )
}

/// Tool names start with one of these (so they can be told from other strings).
const TOOL_PREFIXES: &[&str] = &["tool_", "t\"é漢🙂_", "a\\b/"];

fn tool_name() -> impl Strategy<Value = J> {
    prop_oneof![
        10 => (0..40u32, prop::sample::select(TOOL_PREFIXES))
            .prop_map(|(n, prefix)| J::Str(format!("{prefix}{n}"))),
        1 => any_json(),
    ]
}

/// A tool entry: usually `name`, `inputSchema`, maybe annotations and tags, any order, a
/// member maybe written twice.
fn tool() -> impl Strategy<Value = J> {
    let extra = prop_oneof![
        member("name", tool_name()),
        member("_meta", meta()),
        member("annotations", annotations()),
        member(
            "description",
            prop_oneof![
                Just(s("\"result\":{\"tools\":[]}")),
                Just(s("}],\"tools\":[{\"name\":\"x\"}")),
                name(),
            ]
        ),
        member("title", name()),
    ];
    (
        optional(12, member("name", tool_name())),
        optional(
            6,
            member(
                "inputSchema",
                Just(J::Obj(vec![("type".into(), s("object"))])),
            ),
        ),
        optional(2, member("annotations", annotations())),
        optional(3, member("_meta", meta())),
        prop_oneof![5 => Just(Vec::new()), 1 => prop::collection::vec(extra, 1..3)],
    )
        .prop_flat_map(|(a, b, c, d, extra)| {
            let members: Vec<(String, J)> =
                [a, b, c, d].into_iter().flatten().chain(extra).collect();
            Just(members).prop_shuffle()
        })
        .prop_map(J::Obj)
}

fn list_result() -> impl Strategy<Value = J> {
    let tools = prop_oneof![
        12 => prop::collection::vec(prop_oneof![12 => tool(), 1 => any_json()], 0..7).prop_map(J::Arr),
        1 => any_json(),
    ];
    let extra = prop_oneof![
        member(
            "tools",
            prop::collection::vec(tool(), 0..3).prop_map(J::Arr)
        ),
        member(
            "cacheScope",
            prop::sample::select(&["public", "private"][..]).prop_map(s)
        ),
        member("_meta", any_json()),
        member("result", any_json()),
    ];
    (
        optional(20, member("tools", tools)),
        optional(1, member("nextCursor", name())),
        optional(1, member("cacheScope", Just(s("public")))),
        prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(extra, 1..3)],
    )
        .prop_flat_map(|(a, b, c, extra)| {
            let members: Vec<(String, J)> = [a, b, c].into_iter().flatten().chain(extra).collect();
            Just(members).prop_shuffle()
        })
        .prop_map(J::Obj)
}

/// A reply to the pending `tools/list` (id 1), mostly; `result` before or after `id`.
fn list_reply() -> impl Strategy<Value = J> {
    let reply_id = prop_oneof![
        12 => Just(J::Lit("1")),
        1 => Just(s("1")),
        1 => Just(J::Lit("1.0")),
        1 => Just(J::Lit("2")),
    ];
    let extra = prop_oneof![
        member("id", prop_oneof![Just(J::Lit("1")), Just(J::Lit("2"))]),
        member("result", list_result()),
        member(
            "method",
            prop::sample::select(&["ping", "x/y", "notifications/message"][..]).prop_map(s)
        ),
        member(
            "error",
            Just(J::Obj(vec![
                ("code".into(), J::Lit("-1")),
                ("message".into(), s("no"))
            ]))
        ),
        member("note", prop_oneof![Just(s("\"result\":")), name()]),
        member("jsonrpc", Just(s("2.0"))),
    ];
    (
        optional(12, member("jsonrpc", Just(s("2.0")))),
        optional(20, member("id", reply_id)),
        optional(20, member("result", list_result())),
        prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(extra, 1..3)],
    )
        .prop_flat_map(|(a, b, c, extra)| {
            let members: Vec<(String, J)> = [a, b, c].into_iter().flatten().chain(extra).collect();
            Just(members).prop_shuffle()
        })
        .prop_map(J::Obj)
}

fn list_body() -> impl Strategy<Value = J> {
    prop_oneof![
        12 => list_reply(),
        1 => prop::collection::vec(list_reply(), 1..3).prop_map(J::Arr),
        // An array where the reply object belongs.
        1 => (prop_oneof![Just(J::Lit("1")), any_json()], list_result())
            .prop_map(|(id, result)| J::Arr(vec![id, result])),
    ]
}

/// What a client reads: the rewritten body, or the body itself when left unchanged.
fn client_reading(
    body: &[u8],
    out: &Result<Option<Vec<u8>>, super::filter::Unreadable>,
) -> Result<Value, ()> {
    match out {
        Ok(Some(bytes)) => serde_json::from_slice(bytes).map_err(|_| ()),
        Ok(None) => serde_json::from_slice(body).map_err(|_| ()),
        Err(_) => Err(()),
    }
}

/// JSON as written: members in order, duplicates kept (a `Value` keeps only the last).
#[derive(Debug)]
enum Written {
    Obj(Vec<(String, Written)>),
    Arr(Vec<Written>),
    Str(String),
    Other,
}

impl<'de> serde::Deserialize<'de> for Written {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Written;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_str<E>(self, v: &str) -> Result<Written, E> {
                Ok(Written::Str(v.to_owned()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Written, E> {
                Ok(Written::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Written, E> {
                Ok(Written::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Written, E> {
                Ok(Written::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Written, E> {
                Ok(Written::Other)
            }
            fn visit_unit<E>(self) -> Result<Written, E> {
                Ok(Written::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Written, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Written::Arr(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Written, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = a.next_entry()? {
                    members.push(member);
                }
                Ok(Written::Obj(members))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Written {
    fn parse(text: &[u8]) -> Option<Self> {
        serde_json::from_slice(text).ok()
    }

    /// Every string in it, duplicated members included.
    fn strings(&self, out: &mut Vec<String>) {
        match self {
            Self::Str(s) => out.push(s.clone()),
            Self::Arr(items) => items.iter().for_each(|i| i.strings(out)),
            Self::Obj(members) => members.iter().for_each(|(_, v)| v.strings(out)),
            Self::Other => {}
        }
    }

    /// Whether any object in it names one of `keys` twice.
    fn repeats(&self, keys: &[&str]) -> bool {
        match self {
            Self::Obj(members) => {
                keys.iter()
                    .any(|k| members.iter().filter(|(name, _)| name == k).count() > 1)
                    || members.iter().any(|(_, v)| v.repeats(keys))
            }
            Self::Arr(items) => items.iter().any(|i| i.repeats(keys)),
            _ => false,
        }
    }
}

/// The tool names anywhere in a reply, duplicated members included (what a client reading
/// the first of a duplicated member may see).
fn all_tool_names(text: &[u8]) -> Vec<String> {
    let mut all = Vec::new();
    if let Some(w) = Written::parse(text) {
        w.strings(&mut all);
    }
    all.retain(|s| TOOL_PREFIXES.iter().any(|p| s.starts_with(p)));
    all
}

/// Disagreements between the fast paths and the general path known today (see the ignored
/// tests `known_gap_*` below, which show each with its smallest input). Once one is fixed,
/// remove it here so the property covers it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code, reason = "no gap is known today; kept for the next one")]
enum Gap {
    /// A tool entry names `name`, `_meta`, `annotations`… twice: the fast paths read the
    /// entry as written and hide it (a duplicate fails their parse); the general path reads
    /// the last value and may show it. The fast paths hide more, never less.
    DuplicatedEntryMember,
    /// A message with `result` and also `error` or `method`, or an array whose items are not
    /// all messages: the fast paths read it as a reply to the list and filter it; the
    /// general path passes it whole (`result` + `error`, `result` + a passing `method`:
    /// unfiltered), or refuses it.
    NotAPlainReply,
}

const ENTRY_FIELDS: &[&str] = &["name", "uri", "uriTemplate", "annotations", "_meta"];

#[allow(dead_code, reason = "no gap is known today; kept for the next one")]
fn known_gap(body: &[u8]) -> Option<Gap> {
    let w = Written::parse(body)?;
    let messages: Vec<&Written> = match &w {
        Written::Arr(items) => items.iter().collect(),
        one => vec![one],
    };
    let odd = messages.iter().any(|m| match m {
        Written::Obj(members) => {
            let has = |k: &str| members.iter().any(|(name, _)| name == k);
            has("result") && (has("error") || has("method"))
        }
        _ => true,
    });
    if odd {
        return Some(Gap::NotAPlainReply);
    }
    w.repeats(ENTRY_FIELDS)
        .then_some(Gap::DuplicatedEntryMember)
}

/// Where the fast paths of `rewrite_json` disagree with its general path on `body`.
fn compare_list(r: &ReplyRewriter, body: &[u8]) -> Result<(), String> {
    // Every gap found so far is fixed; `known_gap` names their classes for the next one.
    let _ = known_gap;
    let gap: Option<Gap> = None;
    if gap == Some(Gap::NotAPlainReply) {
        return Ok(());
    }
    let general = r.rewrite_general(body);
    let expected = client_reading(body, &general);
    let show = |o: &Result<Option<Vec<u8>>, _>| match o {
        Ok(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Ok(None) => "(unchanged)".to_owned(),
        Err(_) => "(refused)".to_owned(),
    };
    let names = |o: &Result<Option<Vec<u8>>, _>| match o {
        Ok(Some(b)) => all_tool_names(b),
        Ok(None) => all_tool_names(body),
        Err(_) => Vec::new(),
    };
    let shown = names(&general);
    for run in ["first", "second"] {
        let fast = r.rewrite_json(body);
        let got = client_reading(body, &fast);
        let agree = match gap {
            // Refused alike, and never a name the general path does not show.
            Some(Gap::DuplicatedEntryMember) => got.is_ok() == expected.is_ok(),
            _ => got == expected,
        };
        if !agree {
            return Err(format!(
                "{run} run: rewrite_json gives {}\n  the general path gives {}",
                show(&fast),
                show(&general)
            ));
        }
        // Names a client reading the first of a duplicated member would see.
        let leaked: Vec<String> = names(&fast)
            .into_iter()
            .filter(|n| !shown.contains(n))
            .collect();
        if !leaked.is_empty() {
            return Err(format!(
                "{run} run: rewrite_json shows {leaked:?} that the general path hides: {}",
                show(&fast)
            ));
        }
    }
    Ok(())
}

/// Data lines of SSE events holding `bodies`, with `id`/`event` lines and mixed line ends.
fn sse_stream(bodies: &[String], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let ends = ["\n", "\r\n", "\r"];
    let mut out = Vec::new();
    if rng.one_in(4) {
        out.extend_from_slice(b"\xef\xbb\xbf");
    }
    for (i, body) in bodies.iter().enumerate() {
        let mut event = String::new();
        if rng.one_in(2) {
            event.push_str(&format!("id: 0/{i}{}", ends[rng.below(3) as usize]));
        }
        if rng.one_in(3) {
            event.push_str(&format!("event: message{}", ends[rng.below(3) as usize]));
        }
        if rng.one_in(5) {
            event.push_str(&format!(": keep-alive{}", ends[rng.below(3) as usize]));
        }
        // A body with line breaks is written over several data lines.
        for line in body.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let space = if rng.one_in(3) { "" } else { " " };
            event.push_str(&format!(
                "data:{space}{line}{}",
                ends[rng.below(3) as usize]
            ));
        }
        let last = ends[rng.below(3) as usize];
        // A `\r` then `\n` would be one line end, not a blank line.
        event.push_str(if event.ends_with('\r') && last == "\n" {
            "\r\n"
        } else {
            last
        });
        out.extend_from_slice(event.as_bytes());
    }
    out
}

/// Pushes `stream` cut at `cuts` through an `SseRewriter` filtering with `r`.
fn run_sse(r: &ReplyRewriter, stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut sse = SseRewriter::new(|data: &str| r.rewrite_event(data), 1 << 20);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([&stream.len()]) {
        let cut = cut.clamp(start, stream.len());
        sse.push(&stream[start..cut], &mut out).unwrap();
        start = cut;
    }
    sse.finish(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(config())]

    /// The fast paths give what the general path gives, also on the second run (the list
    /// is then among the recent ones).
    #[test]
    fn list_fast_paths_agree_with_the_general_path(body in list_body(), seed in any::<u64>()) {
        let r = rewriter(&ToolCatalog::new());
        let text = Writer::write(seed, &body);
        if let Err(why) = compare_list(&r, text.as_bytes()) {
            prop_assert!(false, "{why}\nbody: {text}");
        }
    }

    /// A list seen before, in another reply: same result, another envelope.
    #[test]
    fn a_list_seen_before_is_filtered_alike(
        first in list_reply(),
        second in list_reply(),
        seed in any::<u64>(),
    ) {
        let r = rewriter(&ToolCatalog::new());
        let first_text = Writer::write(seed, &first);
        let _ = r.rewrite_json(first_text.as_bytes());
        // The second reply carries the first one's result, byte for byte.
        let second_text = Writer::write(seed ^ 0x5555, &second);
        let body = match (raw_result(&first_text), raw_result(&second_text)) {
            (Some((a, b)), Some((from, to))) => format!(
                "{}{}{}",
                &second_text[..from],
                &first_text[a..b],
                &second_text[to..]
            ),
            _ => second_text,
        };
        if let Err(why) = compare_list(&r, body.as_bytes()) {
            prop_assert!(false, "{why}\nbody: {body}\nafter: {first_text}");
        }
    }

    /// SSE: the events do not depend on where the stream is cut.
    #[test]
    fn sse_events_do_not_depend_on_chunks(
        bodies in prop::collection::vec(list_body(), 1..4),
        seed in any::<u64>(),
        cuts in prop::collection::vec(0.0..1.0f64, 1..12),
    ) {
        let r = rewriter(&ToolCatalog::new());
        let texts: Vec<String> = bodies.iter().enumerate()
            .map(|(i, b)| Writer::write(seed.wrapping_add(i as u64), b))
            .collect();
        let stream = sse_stream(&texts, seed);
        // Once to learn the lists; then the same run must give the same bytes.
        let _ = run_sse(&r, &stream, &[]);
        let whole = run_sse(&r, &stream, &[]);
        let mut cuts: Vec<usize> = cuts.iter().map(|f| (f * stream.len() as f64) as usize).collect();
        cuts.sort_unstable();
        let chunked = run_sse(&r, &stream, &cuts);
        prop_assert!(
            chunked == whole,
            "cuts {cuts:?}\nstream: {:?}\nwhole:   {:?}\nchunked: {:?}",
            String::from_utf8_lossy(&stream),
            String::from_utf8_lossy(&whole),
            String::from_utf8_lossy(&chunked)
        );
        // And a fresh rewriter (general and fast paths alike) reads the same events.
        let fresh = rewriter(&ToolCatalog::new());
        let first = run_sse(&fresh, &stream, &cuts);
        prop_assert!(
            events(&first) == events(&whole),
            "first run differs\nstream: {:?}\nfirst: {:?}\nlater: {:?}",
            String::from_utf8_lossy(&stream),
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&whole)
        );
    }
}

/// The span of the top-level `result` of a reply as written.
fn raw_result(text: &str) -> Option<(usize, usize)> {
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        result: &'a serde_json::value::RawValue,
    }
    let r: R<'_> = serde_json::from_str(text).ok()?;
    let from = r.result.get().as_ptr() as usize - text.as_ptr() as usize;
    Some((from, from + r.result.get().len()))
}

/// The data of each event of an SSE stream, as JSON where it is JSON.
fn events(stream: &[u8]) -> Vec<Result<Value, String>> {
    let mut seen = Vec::new();
    let mut sse = SseRewriter::new(
        |data: &str| {
            seen.push(serde_json::from_str(data).map_err(|_| data.to_owned()));
            None
        },
        1 << 20,
    );
    let mut out = Vec::new();
    sse.push(stream, &mut out).unwrap();
    sse.finish(&mut out).unwrap();
    seen
}

// ---------------------------------------------------------------------------------------
// Known gaps: the smallest inputs the properties found where the paths disagree today. Each
// asserts the agreement wanted; un-ignore it (and remove its `Gap`) once fixed.

/// Two tools: `tool_1` hidden (untagged), `tool_2` visible (tagged `keep`).
const TWO_TOOLS: &str =
    r#"{"tools":[{"name":"tool_1","inputSchema":{}},{"name":"tool_2","_meta":{"tags":["keep"]}}]}"#;

fn shows_hidden_tool(out: &Result<Option<Vec<u8>>, super::filter::Unreadable>, body: &str) -> bool {
    match out {
        Ok(Some(b)) => String::from_utf8_lossy(b).contains("tool_1"),
        Ok(None) => body.contains("tool_1"),
        Err(_) => false,
    }
}

#[test]
fn known_gap_a_reply_with_result_and_error_is_passed_unfiltered() {
    let r = rewriter(&ToolCatalog::new());
    let reply = format!(
        r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":-1,"message":"x"}},"result":{TWO_TOOLS}}}"#
    );
    // In a batch (or with a `cacheScope`) no fast path applies: passed as it is.
    for body in [
        format!("[{reply}]"),
        reply.replace(r#"{"tools""#, r#"{"cacheScope":"public","tools""#),
    ] {
        let out = r.rewrite_json(body.as_bytes());
        assert!(!shows_hidden_tool(&out, &body), "{body}");
    }
}

#[test]
fn known_gap_a_request_with_a_result_is_passed_unfiltered() {
    let r = rewriter(&ToolCatalog::new());
    let body = format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"ping","result":{TWO_TOOLS}}}]"#);
    let out = r.rewrite_json(body.as_bytes());
    assert!(!shows_hidden_tool(&out, &body), "{body}");
}

#[test]
fn known_gap_an_array_is_read_as_a_reply() {
    let r = rewriter(&ToolCatalog::new());
    let body = format!("[1,{TWO_TOOLS}]");
    assert!(r.rewrite_general(body.as_bytes()).is_err());
    assert!(r.rewrite_json(body.as_bytes()).is_err(), "{body}");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"notifications/message","result":{TWO_TOOLS}}}"#
    );
    assert!(r.rewrite_general(body.as_bytes()).is_err());
    assert!(r.rewrite_json(body.as_bytes()).is_err(), "{body}");
}

#[test]
fn known_gap_a_duplicated_entry_member_is_read_otherwise() {
    let r = rewriter(&ToolCatalog::new());
    let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"tool_1"},{"name":"x","name":"tool_2","_meta":{"tags":["keep"]}}]}}"#;
    let general: Value =
        serde_json::from_slice(&r.rewrite_general(body.as_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(general["result"]["tools"][0]["name"], "tool_2");
    for _ in 0..2 {
        let fast = r.rewrite_json(body.as_bytes()).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&fast).unwrap(), general);
    }
}

#[test]
fn the_reference_reads_lone_surrogates_as_a_server_does() {
    let fixed = lone_surrogates_replaced(br#"["\ud83d\rx", "\ud83d\ude42", "\\ud83d", "\udc00"]"#);
    let v: Value = serde_json::from_slice(&fixed).unwrap();
    assert_eq!(v, json!(["\u{fffd}\rx", "🙂", "\\ud83d", "\u{fffd}"]));
    // Found by `mutated_requests_are_read_as_a_server_reads_them`: idguard passes a lone
    // surrogate in a member it skips, and refuses one where it decides.
    let skipped =
        br#"{"jsonrpc":"2.0","id":0,"method":"x/y","params":{"ref":{"name":"\ud83d\rx"}}}"#;
    assert!(parse_body(skipped).is_ok());
    compare_request(skipped).unwrap();
    let decided =
        br#"{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"\ud83d\rx"}}"#;
    assert!(parse_body(decided).is_err());
}
