//! The pure core of MCP interception: filter list replies for a caller, remove redacted
//! fields from tool results. Used by the HTTP layer (JSON and SSE replies) and by the rmcp
//! handler wrapper alike.

use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::jsonrpc::{Id, ListKind};
use crate::policy::{Item, PolicyEngine, PromptInfo, ResourceInfo, ToolInfo};
use crate::principal::Principal;

/// The fields of a list entry that policies read. Deserializing into it skips the rest
/// (schemas, descriptions) without building them.
#[derive(Default, serde::Deserialize)]
struct Entry {
    #[serde(default)]
    name: Value,
    #[serde(default)]
    uri: Value,
    #[serde(default, rename = "uriTemplate")]
    uri_template: Value,
    #[serde(default)]
    annotations: Value,
    #[serde(default, rename = "_meta")]
    meta: Value,
}

impl Entry {
    fn item(&self, kind: ListKind) -> Option<Item> {
        let string = |v: &Value| v.as_str().map(str::to_owned);
        match kind {
            ListKind::Tools => {
                ToolInfo::from_fields(&self.name, &self.annotations, &self.meta).map(Item::Tool)
            }
            ListKind::Resources => {
                string(&self.uri).map(|uri| Item::Resource(ResourceInfo { uri }))
            }
            ListKind::ResourceTemplates => {
                string(&self.uri_template).map(|uri| Item::Resource(ResourceInfo { uri }))
            }
            ListKind::Prompts => string(&self.name).map(|name| Item::Prompt(PromptInfo { name })),
        }
    }
}

/// The items of a list result, as policies see them. Entries without a name (or URI) are
/// `None` and never shown.
pub(crate) fn items(kind: ListKind, entries: &[Value]) -> Vec<Option<Item>> {
    entries
        .iter()
        .map(|e| {
            Entry::deserialize(e)
                .ok()
                .and_then(|entry| entry.item(kind))
        })
        .collect()
}

/// An entry's item from its raw JSON (the fast path), read exactly as [`items`] reads it.
fn head(kind: ListKind, raw: &str) -> Option<Item> {
    serde_json::from_str::<Entry>(raw).ok()?.item(kind)
}

fn field(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Tools => "tools",
        ListKind::Resources => "resources",
        ListKind::ResourceTemplates => "resourceTemplates",
        ListKind::Prompts => "prompts",
    }
}

/// Keeps only the entries of a list `result` the caller may see, marks the result private
/// where it carries a cache scope, and returns the tools it saw (for the tool catalog).
/// Pagination fields are kept.
pub(crate) fn filter_list(
    engine: &PolicyEngine,
    principal: &Principal,
    kind: ListKind,
    result: &mut Map<String, Value>,
) -> Vec<ToolInfo> {
    let Some(Value::Array(entries)) = result.get_mut(field(kind)) else {
        // No list where one must be: show nothing rather than pass an unknown shape.
        result.insert(field(kind).to_owned(), Value::Array(Vec::new()));
        return Vec::new();
    };
    let parsed = items(kind, entries);
    let known: Vec<Item> = parsed.iter().flatten().cloned().collect();
    let mut visible = engine.visible(principal, &known).into_iter();
    let keep: Vec<bool> = parsed
        .iter()
        .map(|p| p.is_some() && visible.next().unwrap_or(false))
        .collect();
    let mut flags = keep.iter();
    entries.retain(|_| flags.next().copied().unwrap_or(false));
    if result.contains_key("cacheScope") {
        result.insert("cacheScope".into(), Value::from("private"));
    }
    known
        .into_iter()
        .filter_map(|i| match i {
            Item::Tool(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Removes `fields` (at any depth) from a `tools/call` result: from `structuredContent`,
/// and from text content blocks whose text is JSON.
pub(crate) fn redact_result(result: &mut Map<String, Value>, fields: &[String]) {
    if let Some(structured) = result.get_mut("structuredContent") {
        remove_fields(structured, fields);
    }
    if let Some(Value::Array(blocks)) = result.get_mut("content") {
        for block in blocks {
            let Some(Value::String(text)) = block.get_mut("text") else {
                continue;
            };
            if let Ok(mut json) = serde_json::from_str::<Value>(text)
                && (json.is_object() || json.is_array())
            {
                remove_fields(&mut json, fields);
                *text = json.to_string();
            }
        }
    }
}

fn remove_fields(v: &mut Value, fields: &[String]) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !fields.iter().any(|f| f == k));
            for child in map.values_mut() {
                remove_fields(child, fields);
            }
        }
        Value::Array(items) => {
            for child in items {
                remove_fields(child, fields);
            }
        }
        _ => {}
    }
}

/// Where the entries of a list result are, and what they are: computed once per distinct
/// result (servers answer the same list again and again) and cached by the catalog.
#[derive(Debug)]
pub(crate) struct Shape {
    /// Unique in the process: callers' flags for this list are remembered under it.
    id: u64,
    /// When it was parsed: the fast path uses it for [`super::catalog::SHAPE_TTL`] only, so
    /// the list is parsed (and its tools learned) again as the catalog's entries expire.
    pub(crate) born: std::time::Instant,
    /// The list and result text this shape describes (compared on lookup: no hash is
    /// trusted).
    pub(crate) kind: ListKind,
    pub(crate) result: Box<str>,
    /// Byte spans of the entries within `result`.
    spans: Vec<(usize, usize)>,
    items: Vec<Option<Item>>,
    known: Vec<Item>,
}

impl Shape {
    /// `None` when the result is not a plain list object (or carries a cache scope, which
    /// the general path rewrites).
    fn of(kind: ListKind, result: &str) -> Option<Self> {
        use serde_json::value::RawValue;
        // Members as written: a duplicated member falls to the general path (a map would
        // keep the last `tools` and copy an earlier one out unfiltered).
        let members: Members<'_> = serde_json::from_str(result).ok()?;
        let mut names: Vec<&str> = members.0.iter().map(|(k, _)| &**k).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w.first() == w.last()) || names.contains(&"cacheScope") {
            return None;
        }
        let (_, list) = members.0.iter().find(|(k, _)| k == field(kind))?;
        let entries: Vec<&RawValue> = serde_json::from_str(list.get()).ok()?;
        let base = result.as_ptr() as usize;
        let spans = entries
            .iter()
            .map(|raw| {
                let from = raw.get().as_ptr() as usize - base;
                (from, from + raw.get().len())
            })
            .collect();
        let items: Vec<Option<Item>> = entries.iter().map(|raw| head(kind, raw.get())).collect();
        let known = items.iter().flatten().cloned().collect();
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Some(Self {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            born: std::time::Instant::now(),
            kind,
            result: result.into(),
            spans,
            items,
            known,
        })
    }
}

/// An object's members in order, duplicates kept (a map would keep only the last).
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What to do with the reply to one request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pending {
    /// Filter the list for the caller.
    List(ListKind),
    /// Remove these fields from the tool result.
    Redact(Vec<String>),
}

/// Rewrites the replies of one HTTP exchange: which ids to touch, and how.
#[derive(Clone, Debug)]
pub(crate) struct ReplyRewriter {
    pub(crate) engine: PolicyEngine,
    pub(crate) principal: Principal,
    pub(crate) pending: Vec<(Id, Pending)>,
    /// The request was one message (so every response in the reply must answer it).
    pub(crate) sole: bool,
    pub(crate) catalog: super::catalog::ToolCatalog,
}

impl ReplyRewriter {
    /// Rewrites one JSON-RPC message if it answers a pending id: `Ok(true)` when changed.
    /// A reply that cannot be the one expected is [`Unreadable`]: a pending id answered
    /// with a `result` that is not an object, or, when the request was a single message,
    /// a response to any other id (a server that reads ids otherwise than idguard).
    fn rewrite_message(&self, msg: &mut Value) -> Result<bool, Unreadable> {
        let Value::Object(m) = &mut *msg else {
            return Ok(false);
        };
        let is_response =
            !m.contains_key("method") && (m.contains_key("result") || m.contains_key("error"));
        let pending = m
            .get("id")
            .and_then(|id| self.pending.iter().find(|(p, _)| p == id));
        let Some((_, pending)) = pending else {
            return if self.sole && is_response {
                Err(Unreadable)
            } else {
                Ok(false)
            };
        };
        // A call answered with a task (the tasks extension, `resultType: "task"`) would
        // deliver its result later through `tasks/get`, past the redaction: refused.
        if let Pending::Redact(_) = pending
            && m.get("result").and_then(|r| r.get("resultType")) == Some(&Value::from("task"))
        {
            let id = m.get("id").cloned().unwrap_or(Value::Null);
            *msg = super::jsonrpc::error(
                &id,
                super::FORBIDDEN_CODE,
                "forbidden: this tool's results are redacted for this caller, so it cannot run as a task",
                None,
            );
            return Ok(true);
        }
        let result = match m.get_mut("result") {
            None => return Ok(false),
            Some(Value::Object(result)) => result,
            Some(_) => return Err(Unreadable),
        };
        match pending {
            Pending::List(kind) => {
                let seen = filter_list(&self.engine, &self.principal, *kind, result);
                self.catalog.learn(seen);
            }
            Pending::Redact(fields) => redact_result(result, fields),
        }
        Ok(true)
    }

    /// Rewrites a JSON body (one message or a batch): `Ok(None)` when nothing changed,
    /// [`Unreadable`] when the body is not JSON (it may carry what must be filtered).
    pub(crate) fn rewrite_json(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Unreadable> {
        let text = std::str::from_utf8(body).map_err(|_| Unreadable)?;
        // The fast paths only filter lists: a reply to redact would be read twice.
        if self
            .pending
            .iter()
            .any(|(_, p)| matches!(p, Pending::List(_)))
        {
            if let Some(fast) = self.filter_seen_list(text) {
                return Ok(fast);
            }
            if let Some(fast) = self.filter_list_in_place(text) {
                return Ok(fast);
            }
        }
        let mut v: Value = serde_json::from_str(text).map_err(|_| Unreadable)?;
        let changed = match &mut v {
            Value::Array(msgs) => {
                let mut changed = false;
                for m in msgs {
                    changed |= self.rewrite_message(m)?;
                }
                changed
            }
            msg => self.rewrite_message(msg)?,
        };
        Ok(changed.then(|| v.to_string().into_bytes()))
    }

    /// The cheapest path, for a server answering the same list again: the body is a reply
    /// with a member `"result": R`, where R is, byte for byte, a list result used recently,
    /// and R is the last member (as rmcp and the Python SDK write replies) or starts within
    /// the first bytes (as the TypeScript SDK writes them). R is compared, not parsed; only
    /// the envelope around it is parsed, with `0` in R's place, which must be read as the
    /// `result` exactly where R was. `None` when the body is not that: the next path
    /// handles it.
    fn filter_seen_list(&self, text: &str) -> Option<Option<Vec<u8>>> {
        let recent = self.catalog.recent();
        if recent.is_empty() {
            return None;
        }
        let candidates = ResultCandidates::of(text);
        let (shape, start) = recent.iter().find_map(|s| {
            if s.born.elapsed() >= super::catalog::SHAPE_TTL {
                return None;
            }
            candidates.find(text, &s.result).map(|at| (s.clone(), at))
        })?;
        drop(recent);
        let head = text.get(..start)?;
        let tail = text.get(start + shape.result.len()..)?;
        if head.len() + tail.len() > MAX_ENVELOPE_BYTES {
            return None;
        }
        let mut envelope = String::with_capacity(head.len() + 1 + tail.len());
        envelope.push_str(head);
        envelope.push('0');
        envelope.push_str(tail);
        let reply: Reply<'_> = serde_json::from_str(&envelope).ok()?;
        let result = reply.result?.get();
        if result.as_ptr() as usize != envelope.as_ptr() as usize + head.len() {
            return None;
        }
        let id = reply.id?;
        match self.pending.iter().find(|(p, _)| *p == id)? {
            (_, Pending::List(kind)) if *kind == shape.kind => {}
            _ => return None,
        }
        self.cut(&shape, head, tail)
    }

    /// The fast path for the common case, a single list reply: the entries are located as
    /// raw slices of the body, only their name, annotations and tags are parsed, and the
    /// output is the body with the hidden entries cut out (no tree is built and no JSON is
    /// re-serialized). `None` when the reply is not that shape: the general path handles it.
    fn filter_list_in_place(&self, text: &str) -> Option<Option<Vec<u8>>> {
        let reply: Reply<'_> = serde_json::from_str(text).ok()?;
        let id = reply.id?;
        let (_, pending) = self.pending.iter().find(|(p, _)| *p == id)?;
        let Pending::List(kind) = pending else {
            return None;
        };
        let result = reply.result?.get();
        let shape = self.catalog.shape(*kind, result, || {
            let shape = Shape::of(*kind, result)?;
            self.catalog
                .learn(shape.known.iter().filter_map(|i| match i {
                    Item::Tool(t) => Some(t.clone()),
                    _ => None,
                }));
            Some(shape)
        })?;
        let offset = result.as_ptr() as usize - text.as_ptr() as usize;
        let before = text.get(..offset)?;
        let after = text.get(offset + result.len()..)?;
        self.cut(&shape, before, after)
    }

    /// `before`, then the shape's result with the entries the caller may not see cut out,
    /// then `after`: `Some(None)` when nothing is cut (the reply stays as it is), `None`
    /// when the shape cannot be cut (the general path then filters the reply).
    fn cut(&self, shape: &Shape, before: &str, after: &str) -> Option<Option<Vec<u8>>> {
        let result = &*shape.result;
        let (Some(&(start, _)), Some(&(_, end))) = (shape.spans.first(), shape.spans.last()) else {
            return Some(None);
        };
        let visible = self
            .engine
            .visible_list(&self.principal, shape.id, &shape.known);
        let mut visible = visible.iter();
        let keep: Vec<bool> = shape
            .items
            .iter()
            .map(|item| item.is_some() && visible.next().copied().unwrap_or(false))
            .collect();
        if keep.iter().all(|k| *k) {
            return Some(None);
        }
        let mut out = String::with_capacity(before.len() + result.len() + after.len());
        out.push_str(before);
        out.push_str(result.get(..start)?);
        // Runs of neighbouring kept entries are copied whole, separators included.
        let mut run: Option<(usize, usize)> = None;
        let mut first_run = true;
        let mut flush = |out: &mut String, run: Option<(usize, usize)>| -> Option<()> {
            if let Some((from, to)) = run {
                if !first_run {
                    out.push(',');
                }
                out.push_str(result.get(from..to)?);
                first_run = false;
            }
            Some(())
        };
        let mut previous_kept = false;
        for (&(from, to), kept) in shape.spans.iter().zip(keep) {
            match (kept, previous_kept, &mut run) {
                (true, true, Some(r)) => r.1 = to,
                (true, _, _) => {
                    flush(&mut out, run.take())?;
                    run = Some((from, to));
                }
                (false, _, _) => {}
            }
            previous_kept = kept;
        }
        flush(&mut out, run)?;
        out.push_str(result.get(end..)?);
        out.push_str(after);
        Some(Some(out.into_bytes()))
    }

    /// Rewrites the data of one SSE event; `None` leaves the event as it was. Data that is
    /// not JSON may carry what must be filtered: the event is emptied (clients skip it).
    pub(crate) fn rewrite_event(&self, data: &str) -> Option<String> {
        if data.is_empty() {
            return None;
        }
        match self.rewrite_json(data.as_bytes()) {
            Ok(None) => None,
            Ok(Some(bytes)) => Some(String::from_utf8(bytes).unwrap_or_default()),
            Err(Unreadable) => {
                tracing::warn!(target: "idguard::rejection", "mcp event unreadable where a reply must be filtered: emptied");
                Some(String::new())
            }
        }
    }
}

/// The envelope around a list result that the cheapest path parses at most.
const MAX_ENVELOPE_BYTES: usize = 4096;

/// Where a reply's `result` may start, found without parsing: right after a `"result":`
/// within the first bytes, or so that it ends the last member. Only candidates: the
/// envelope's parse decides.
struct ResultCandidates {
    /// The end of the body's last member (before the closing brace and whitespace).
    last_end: Option<usize>,
    /// Starts of values that follow a `"result"` key near the beginning.
    early: Vec<usize>,
}

impl ResultCandidates {
    /// How far into a body a `"result"` key is looked for.
    const EARLY: usize = 256;

    fn of(text: &str) -> Self {
        let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
        let last_end = text
            .trim_end_matches(ws)
            .strip_suffix('}')
            .map(|inner| inner.trim_end_matches(ws).len());
        let mut cut = Self::EARLY.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let early = text
            .get(..cut)
            .unwrap_or_default()
            .match_indices("\"result\"")
            .filter_map(|(i, key)| {
                let rest = text.get(i + key.len()..)?.trim_start_matches(ws);
                let value = rest.strip_prefix(':')?.trim_start_matches(ws);
                Some(text.len() - value.len())
            })
            .collect();
        Self { last_end, early }
    }

    /// Where `result` starts in `text` at one of the candidates.
    fn find(&self, text: &str, result: &str) -> Option<usize> {
        if let Some(end) = self.last_end
            && let Some(start) = end.checked_sub(result.len())
            && text.get(start..end) == Some(result)
        {
            return Some(start);
        }
        self.early
            .iter()
            .copied()
            .find(|&at| text.get(at..).is_some_and(|rest| rest.starts_with(result)))
    }
}

/// A reply body that is not JSON where one had to be rewritten.
#[derive(Debug)]
pub(crate) struct Unreadable;

/// The members of a reply the fast paths read; `result` stays raw text.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    result: Option<&'a serde_json::value::RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fast_path_reads_entries_as_the_general_one_does() {
        let tool = json!({"name": "t", "inputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": true, "destructiveHint": false, "openWorldHint": true},
            "_meta": {"tags": ["a", 1, "b"]}});
        let general = items(ListKind::Tools, std::slice::from_ref(&tool))
            .pop()
            .flatten();
        assert_eq!(head(ListKind::Tools, &tool.to_string()), general);
        let res = json!({"uri": "docs://x", "name": "x"});
        assert_eq!(
            head(ListKind::Resources, &res.to_string()),
            items(ListKind::Resources, std::slice::from_ref(&res))
                .pop()
                .flatten()
        );
        assert_eq!(
            head(ListKind::Tools, "{\"description\": \"no name\"}"),
            None
        );
    }

    #[test]
    fn redaction_reaches_structured_and_text_json() {
        let mut result = json!({
            "content": [
                {"type": "text", "text": "{\"id\":\"d1\",\"owner_email\":\"a@b\",\"nested\":{\"owner_email\":\"x\"}}"},
                {"type": "text", "text": "plain owner_email text stays"}
            ],
            "structuredContent": {"id": "d1", "owner_email": "a@b"}
        });
        redact_result(result.as_object_mut().unwrap(), &["owner_email".into()]);
        assert_eq!(result["structuredContent"], json!({"id": "d1"}));
        assert_eq!(
            result["content"][0]["text"],
            "{\"id\":\"d1\",\"nested\":{}}"
        );
        assert_eq!(result["content"][1]["text"], "plain owner_email text stays");
    }

    fn rewriter(catalog: &super::super::catalog::ToolCatalog, id: i64) -> ReplyRewriter {
        let engine = PolicyEngine::from_sources(
            include_str!("../../policies/schema.cedarschema"),
            None,
            [(
                "p.cedar",
                r#"@id("keep") permit (principal, action == Action::"call_tool", resource) when { resource.tags.contains("keep") };"#,
            )],
        )
        .unwrap();
        let principal = Principal::from_unvalidated_claims(
            &json!({"tid": "t", "oid": "o", "scp": "mcp.tools"}),
        )
        .unwrap();
        ReplyRewriter {
            engine,
            principal,
            pending: vec![(json!(id), Pending::List(ListKind::Tools))],
            sole: true,
            catalog: catalog.clone(),
        }
    }

    fn names(body: &[u8]) -> Vec<String> {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_path_filters_a_list_alike() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let result = r#"{"tools":[{"name":"keep_1","inputSchema":{},"_meta":{"tags":["keep"]}}, {"name":"keep_2","inputSchema":{},"_meta":{"tags":["keep"]}},{"name":"drop","inputSchema":{}},{"name":"keep_3","inputSchema":{},"_meta":{"tags":["keep"]}}],"nextCursor":"c"}"#;
        let body = |id: i64| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
        // First: parsed and remembered. Then: recognised by its result, with another id.
        for id in [1, 2] {
            let out = rewriter(&catalog, id)
                .rewrite_json(body(id).as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(names(&out), ["keep_1", "keep_2", "keep_3"]);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                (v["id"].clone(), v["result"]["nextCursor"].clone()),
                (json!(id), json!("c"))
            );
        }
        assert_eq!(catalog.recent().len(), 1);
        assert!(rewriter(&catalog, 3).filter_seen_list(&body(3)).is_some());
        // Neighbours are copied as they were, separators included.
        let out = rewriter(&catalog, 3)
            .rewrite_json(body(3).as_bytes())
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains(r#"["keep"]}}, {"name":"keep_2""#)
        );
        // A list the caller sees whole is left as it is.
        let all = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"k","inputSchema":{},"_meta":{"tags":["keep"]}}]}}"#;
        for _ in 0..2 {
            assert!(
                rewriter(&catalog, 1)
                    .rewrite_json(all.as_bytes())
                    .unwrap()
                    .is_none()
            );
        }
        // The same result in a reply to an id that is not pending, or nested deeper, or
        // after a member that makes the envelope not a reply: not filtered as a list.
        let r = rewriter(&catalog, 1);
        // A response to another id, when the request was one message: refused.
        assert!(r.rewrite_json(body(7).as_bytes()).is_err());
        let batch = ReplyRewriter {
            sole: false,
            ..rewriter(&catalog, 1)
        };
        assert!(batch.rewrite_json(body(7).as_bytes()).unwrap().is_none());
        let not_an_object = r#"{"jsonrpc":"2.0","id":1,"result":[{"name":"drop"}]}"#;
        assert!(r.rewrite_json(not_an_object.as_bytes()).is_err());
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#;
        assert!(r.rewrite_json(error.as_bytes()).unwrap().is_none());
        let nested = format!(r#"{{"jsonrpc":"2.0","id":1,"x":{{"result":{result}}}}}"#);
        assert!(r.rewrite_json(nested.as_bytes()).unwrap().is_none());
        let other = format!(r#"{{"jsonrpc":"2.0","id":1,"x":{result}}}"#);
        assert!(r.rewrite_json(other.as_bytes()).unwrap().is_none());
        let twice = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{}},"result":{result}}}"#);
        let out = r.rewrite_json(twice.as_bytes());
        assert!(!matches!(out, Ok(Some(ref b)) if names(b).contains(&"drop".to_owned())));
        let in_string = format!(
            r#"{{"jsonrpc":"2.0","id":1,"note":"\"result\":{}"}}"#,
            result.replace('"', "\\\"")
        );
        assert!(r.rewrite_json(in_string.as_bytes()).unwrap().is_none());
        // The TypeScript SDK writes `result` first.
        let first = format!(r#"{{"result":{result},"jsonrpc":"2.0","id":1}}"#);
        assert!(r.filter_seen_list(&first).is_some());
        let out = r.rewrite_json(first.as_bytes()).unwrap().unwrap();
        assert_eq!(names(&out), ["keep_1", "keep_2", "keep_3"]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], json!(1));
        // A key that only looks like `"result"` (inside a string) is not taken for it.
        let fake = format!(r#"{{"note":"x\"result\":","jsonrpc":"2.0","id":1,"result":{result}}}"#);
        let out = r.rewrite_json(fake.as_bytes()).unwrap().unwrap();
        assert_eq!(names(&out), ["keep_1", "keep_2", "keep_3"]);
        // Whitespace around the result is kept as it was.
        let spaced = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\": {result} }}\n");
        let out = r.rewrite_json(spaced.as_bytes()).unwrap().unwrap();
        assert_eq!(names(&out), ["keep_1", "keep_2", "keep_3"]);
        assert!(out.ends_with(b"} }\n"));
    }

    #[test]
    fn a_redacted_call_answered_with_a_task_is_refused() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let r = ReplyRewriter {
            pending: vec![(json!(4), Pending::Redact(vec!["secret".into()]))],
            ..rewriter(&catalog, 4)
        };
        let task = r#"{"jsonrpc":"2.0","id":4,"result":{"resultType":"task","taskId":"t1","status":"working","createdAt":"x","lastUpdatedAt":"x"}}"#;
        let out: Value =
            serde_json::from_slice(&r.rewrite_json(task.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(out["id"], json!(4));
        assert_eq!(out["error"]["code"], json!(super::super::FORBIDDEN_CODE));
        assert!(!out.to_string().contains("t1"));
        let done = r#"{"jsonrpc":"2.0","id":4,"result":{"content":[],"structuredContent":{"secret":1,"ok":2}}}"#;
        let out: Value =
            serde_json::from_slice(&r.rewrite_json(done.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(out["result"]["structuredContent"], json!({"ok": 2}));
    }

    #[test]
    fn a_duplicated_list_member_is_never_copied_out() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"drop","inputSchema":{}}],"tools":[{"name":"keep_1","inputSchema":{},"_meta":{"tags":["keep"]}}]}}"#;
        for _ in 0..2 {
            let out = rewriter(&catalog, 1).rewrite_json(body.as_bytes()).unwrap();
            let out = String::from_utf8(out.unwrap()).unwrap();
            assert!(!out.contains("drop"), "{out}");
        }
    }

    #[test]
    fn a_reply_that_is_not_json_fails_closed() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let r = rewriter(&catalog, 1);
        assert!(
            r.rewrite_json(b"{\"id\":1,\"result\":{\"tools\":[")
                .is_err()
        );
        assert!(r.rewrite_json(b"\xff").is_err());
        assert_eq!(r.rewrite_event("not json").as_deref(), Some(""));
        assert_eq!(r.rewrite_event(""), None);
    }
}
