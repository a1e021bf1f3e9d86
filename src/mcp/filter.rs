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
        let fields: std::collections::HashMap<&str, &RawValue> =
            serde_json::from_str(result).ok()?;
        if fields.contains_key("cacheScope") {
            return None;
        }
        let entries: Vec<&RawValue> = serde_json::from_str(fields.get(field(kind))?.get()).ok()?;
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
        Some(Self {
            kind,
            result: result.into(),
            spans,
            items,
            known,
        })
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
    pub(crate) catalog: super::catalog::ToolCatalog,
}

impl ReplyRewriter {
    /// Rewrites one JSON-RPC message if it answers a pending id. `true` when changed.
    fn rewrite_message(&self, msg: &mut Value) -> bool {
        let Some(id) = msg.get("id") else {
            return false;
        };
        let Some((_, pending)) = self.pending.iter().find(|(p, _)| p == id) else {
            return false;
        };
        let Some(Value::Object(result)) = msg.get_mut("result") else {
            return false;
        };
        match pending {
            Pending::List(kind) => {
                let seen = filter_list(&self.engine, &self.principal, *kind, result);
                self.catalog.learn(seen);
            }
            Pending::Redact(fields) => redact_result(result, fields),
        }
        true
    }

    /// Rewrites a JSON body (one message or a batch); `None` when nothing changed or the
    /// body is not JSON.
    pub(crate) fn rewrite_json(&self, body: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(body).ok()?;
        if let Some(fast) = self.filter_list_in_place(text) {
            return fast;
        }
        let mut v: Value = serde_json::from_slice(body).ok()?;
        let changed = match &mut v {
            Value::Array(msgs) => msgs
                .iter_mut()
                .fold(false, |acc, m| self.rewrite_message(m) | acc),
            msg => self.rewrite_message(msg),
        };
        changed.then(|| v.to_string().into_bytes())
    }

    /// The fast path for the common case, a single list reply: the entries are located as
    /// raw slices of the body, only their name, annotations and tags are parsed, and the
    /// output is the body with the hidden entries cut out (no tree is built and no JSON is
    /// re-serialized). `None` when the reply is not that shape: the general path handles it.
    fn filter_list_in_place(&self, text: &str) -> Option<Option<Vec<u8>>> {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct Reply<'a> {
            id: Option<Value>,
            #[serde(borrow)]
            result: Option<&'a RawValue>,
        }
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
        let (Some(&(start, _)), Some(&(_, end))) = (shape.spans.first(), shape.spans.last()) else {
            return Some(None);
        };
        let offset = result.as_ptr() as usize - text.as_ptr() as usize;
        let before = text.get(..offset + start)?;
        let after = text.get(offset + end..)?;
        let mut visible = self
            .engine
            .visible(&self.principal, &shape.known)
            .into_iter();
        let mut out = String::with_capacity(text.len());
        out.push_str(before);
        let mut first_kept = true;
        for (&(from, to), item) in shape.spans.iter().zip(&shape.items) {
            if item.is_some() && visible.next().unwrap_or(false) {
                if !first_kept {
                    out.push(',');
                }
                out.push_str(result.get(from..to)?);
                first_kept = false;
            }
        }
        out.push_str(after);
        Some(Some(out.into_bytes()))
    }

    /// Rewrites the data of one SSE event; `None` leaves the event as it was.
    pub(crate) fn rewrite_event(&self, data: &str) -> Option<String> {
        if data.is_empty() {
            return None;
        }
        let bytes = self.rewrite_json(data.as_bytes())?;
        String::from_utf8(bytes).ok()
    }
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
}
