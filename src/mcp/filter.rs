//! The pure core of MCP interception: filter list replies for a caller, remove redacted
//! fields from tool results. Used by the HTTP layer (JSON and SSE replies) and by the rmcp
//! handler wrapper alike.
//!
//! Over 800 lines: one state machine (what each decided request lets through, on every
//! stream) and its unit tests; the parsing and the session set are submodules.

use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::jsonrpc::{Id, ListKind};
use super::retired::{Kind, RETIRED_PER_REMEMBERED, Retired};
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

/// What replaces content that cannot be redacted field by field.
pub(crate) const WITHHELD: &str =
    "[withheld by idguard: this content cannot be redacted for this caller]";

/// Removes `fields` (at any depth) from a `tools/call` result: from `structuredContent`,
/// `_meta` and every other member, from text content (and embedded resource text) that is
/// JSON, and from resource links. Content that is not JSON text (plain text, images,
/// audio, blobs, unknown kinds) could carry a redacted value in a form idguard cannot read:
/// it is withheld, replaced by a text block saying so.
pub(crate) fn redact_result(result: &mut Map<String, Value>, fields: &[String]) {
    for (key, value) in result.iter_mut() {
        if key == "content" {
            continue;
        }
        remove_fields(value, fields);
    }
    if let Some(content) = result.get_mut("content") {
        match content {
            Value::Array(blocks) => {
                for block in blocks {
                    redact_block(block, fields);
                }
            }
            other => *other = Value::Array(Vec::new()),
        }
    }
}

/// Redacts one content block in place, or replaces it with the [`WITHHELD`] notice.
fn redact_block(block: &mut Value, fields: &[String]) {
    let kind = block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let redacted = match kind {
        "text" => block
            .get_mut("text")
            .is_some_and(|text| redact_json_text(text, fields)),
        "resource" => block
            .get_mut("resource")
            .and_then(|r| r.as_object_mut())
            .is_some_and(|r| {
                !r.contains_key("blob")
                    && r.get_mut("text")
                        .is_some_and(|text| redact_json_text(text, fields))
            }),
        "resource_link" => true,
        _ => false,
    };
    if redacted {
        // Annotations and `_meta` of the block too.
        if let Value::Object(map) = block {
            for (key, value) in map.iter_mut() {
                if key != "text" && key != "resource" {
                    remove_fields(value, fields);
                }
            }
            if let Some(Value::Object(r)) = map.get_mut("resource") {
                for (key, value) in r.iter_mut() {
                    if key != "text" {
                        remove_fields(value, fields);
                    }
                }
            }
        }
    } else {
        *block = serde_json::json!({"type": "text", "text": WITHHELD});
    }
}

/// Removes `fields` from a string holding a JSON object or array: `false` when it holds
/// anything else.
fn redact_json_text(text: &mut Value, fields: &[String]) -> bool {
    let Value::String(s) = text else {
        return false;
    };
    match serde_json::from_str::<Value>(s) {
        Ok(mut json) if json.is_object() || json.is_array() => {
            remove_fields(&mut json, fields);
            *s = json.to_string();
            true
        }
        _ => false,
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
        // An entry the fast read refuses (a duplicated member, say) that the general read
        // accepts: read the whole list the general way, so both paths show the same.
        let disagree = entries.iter().zip(&items).any(|(raw, item)| {
            item.is_none()
                && serde_json::from_str::<Value>(raw.get())
                    .ok()
                    .and_then(|v| Entry::deserialize(&v).ok())
                    .and_then(|e| e.item(kind))
                    .is_some()
        });
        if disagree {
            return None;
        }
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
    /// Pass it; task ids in it are bound to the caller.
    Pass,
    /// Filter the list for the caller.
    List(ListKind),
    /// Remove these fields from the tool result (and withhold what cannot be read).
    Redact(Vec<String>),
    /// `tasks/list`: the server's tasks cannot be attributed to callers; none are shown.
    TaskList,
    /// Drop it (an id a session used for two requests).
    Drop,
}

/// Requests decided in one session (per process): a stream that replays replies (`GET`
/// with `Last-Event-ID`) is filtered with them. Bounded: the oldest are forgotten, and
/// their replies then dropped. A forgotten request id (or progress token) is retired
/// ([`Retired`]): used again, it is refused like a reused id, so an old reply the server
/// replays is never filtered under a new request's decision. A session that would retire
/// more than its bound is ended ([`Recorded::Ended`]).
#[derive(Debug)]
pub(crate) struct Decided {
    inner: std::sync::Mutex<DecidedInner>,
    /// How many requests (and, apart, progress tokens) are remembered.
    limit: usize,
}

impl Default for Decided {
    fn default() -> Self {
        Self::new(usize::try_from(super::DEFAULT_REQUESTS_PER_SESSION).unwrap_or(usize::MAX))
    }
}

#[derive(Debug)]
struct DecidedInner {
    by_id: std::collections::HashMap<String, Pending>,
    order: std::collections::VecDeque<String>,
    /// Progress tokens of redacted calls, and the fields to remove from their progress.
    progress: std::collections::HashMap<String, Vec<String>>,
    progress_order: std::collections::VecDeque<String>,
    /// Request ids and progress tokens forgotten.
    retired: Retired,
    /// The session retired as many as it may: it is over.
    ended: bool,
}

/// What recording a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// A new id: recorded.
    Fresh,
    /// An id the session used before (remembered or retired): the request is refused.
    Reused,
    /// The session retired as many ids as it may: it is over, like an unknown session.
    Ended,
}

/// What the record says about progress with one token, on a replayed stream.
#[derive(Debug, PartialEq)]
enum ProgressRecord {
    /// Progress of a redacted call: these fields are removed.
    Redact(Vec<String>),
    /// The token of a redacted call, forgotten: its progress is dropped.
    Retired,
    /// Not a redacted call's (as far as the session knows).
    Unknown,
}

/// An id as a server may key it: `1` and `"1"` are one (the Python SDK keys its streams by
/// `str(id)`).
fn id_key(id: &Id) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Decided {
    /// A record of the last `limit` requests (at least one) of a session, which may retire
    /// [`RETIRED_PER_REMEMBERED`] times as many before it is ended.
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            inner: std::sync::Mutex::new(DecidedInner {
                by_id: std::collections::HashMap::new(),
                order: std::collections::VecDeque::new(),
                progress: std::collections::HashMap::new(),
                progress_order: std::collections::VecDeque::new(),
                retired: Retired::new(limit.saturating_mul(RETIRED_PER_REMEMBERED)),
                ended: false,
            }),
            limit,
        }
    }

    /// Records what was decided for each request of one `POST` (and the progress tokens of
    /// its redacted calls). [`Recorded::Reused`] when the session used an id before, even
    /// one forgotten since: a server may route the replies of both requests to either
    /// stream, or replay the old reply as the new one's, so the request is refused, and
    /// replies with that id are dropped from then on. [`Recorded::Ended`] when the session
    /// is over (retired as many ids as it may).
    pub(crate) fn record(
        &self,
        requests: &[(Id, Pending)],
        progress: &[(Value, Vec<String>)],
    ) -> Recorded {
        let Ok(mut d) = self.inner.lock() else {
            return Recorded::Ended;
        };
        let d = &mut *d;
        if d.ended {
            return Recorded::Ended;
        }
        let mut outcome = Recorded::Fresh;
        for (id, pending) in requests {
            let key = id_key(id);
            if let Some(old) = d.by_id.get_mut(&key) {
                *old = Pending::Drop;
                outcome = Recorded::Reused;
                continue;
            }
            if d.retired.contains(Kind::Request, &key) {
                outcome = Recorded::Reused;
                continue;
            }
            if d.order.len() >= self.limit
                && let Some(oldest) = d.order.front()
            {
                if !d.retired.insert(Kind::Request, oldest) {
                    return d.end();
                }
                if let Some(oldest) = d.order.pop_front() {
                    d.by_id.remove(&oldest);
                }
            }
            d.order.push_back(key.clone());
            d.by_id.insert(key, pending.clone());
        }
        for (token, fields) in progress {
            let key = id_key(token);
            if d.retired.contains(Kind::Progress, &key) {
                // Its progress is dropped on replays already.
                continue;
            }
            if let Some(known) = d.progress.get_mut(&key) {
                // A token two redacted calls share: both calls' fields are removed.
                for f in fields {
                    if !known.contains(f) {
                        known.push(f.clone());
                    }
                }
                continue;
            }
            if d.progress_order.len() >= self.limit
                && let Some(oldest) = d.progress_order.front()
            {
                if !d.retired.insert(Kind::Progress, oldest) {
                    return d.end();
                }
                if let Some(oldest) = d.progress_order.pop_front() {
                    d.progress.remove(&oldest);
                }
            }
            d.progress_order.push_back(key.clone());
            d.progress.insert(key, fields.clone());
        }
        outcome
    }

    /// Whether the session is over (see [`Recorded::Ended`]).
    pub(crate) fn is_ended(&self) -> bool {
        self.inner.lock().map_or(true, |d| d.ended)
    }

    /// What was decided for `id`. A retired id is never recorded again, so its replies are
    /// dropped.
    fn get(&self, id: &Id) -> Option<Pending> {
        self.inner.lock().ok()?.by_id.get(&id_key(id)).cloned()
    }

    fn progress_fields(&self, token: &Value) -> ProgressRecord {
        let Ok(d) = self.inner.lock() else {
            return ProgressRecord::Retired;
        };
        let key = id_key(token);
        if d.retired.contains(Kind::Progress, &key) {
            return ProgressRecord::Retired;
        }
        match d.progress.get(&key) {
            Some(fields) => ProgressRecord::Redact(fields.clone()),
            None => ProgressRecord::Unknown,
        }
    }
}

impl DecidedInner {
    /// Ends the session, freeing what it remembered: nothing is decided or replayed in it
    /// any more.
    fn end(&mut self) -> Recorded {
        self.ended = true;
        self.by_id = std::collections::HashMap::new();
        self.order = std::collections::VecDeque::new();
        self.progress = std::collections::HashMap::new();
        self.progress_order = std::collections::VecDeque::new();
        self.retired.clear();
        Recorded::Ended
    }
}

/// Binds the server's task ids to the caller (see [`super::binding`]).
#[derive(Clone, Debug)]
pub(crate) struct TaskIds {
    pub(crate) binder: super::binding::Binder,
    pub(crate) owner: String,
}

impl TaskIds {
    fn wrap(&self, id: &str) -> Option<String> {
        self.binder
            .wrap(super::binding::Handle::Task, &self.owner, id)
    }
}

/// What happens to one server-to-client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Keep,
    Changed,
    Drop,
}

/// Notifications from the server that pass as they are.
const PASSING_NOTIFICATIONS: [&str; 6] = [
    "notifications/message",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
    "notifications/cancelled",
    "notifications/elicitation/complete",
];

/// Requests from the server to the client that pass as they are.
const PASSING_SERVER_REQUESTS: [&str; 4] = [
    "ping",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
];

/// Where MCP puts the task a message belongs to.
const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// Filters what the server sends back to one caller: every reply must answer a request
/// idguard decided (in this exchange, or, for a replayed stream, in the session), and is
/// rewritten as decided; notifications and server requests pass only when they are known
/// and, where they name an item, the caller may see it.
#[derive(Clone, Debug)]
pub(crate) struct ReplyRewriter {
    pub(crate) engine: PolicyEngine,
    pub(crate) principal: Principal,
    /// Every request of this exchange and what to do with its reply.
    pub(crate) pending: Vec<(Id, Pending)>,
    /// For streams not tied to one exchange (`GET`): the session's decided requests.
    pub(crate) session: Option<std::sync::Arc<Decided>>,
    /// Progress tokens of calls whose results are redacted: their progress is redacted too.
    pub(crate) progress: Vec<(Value, Vec<String>)>,
    pub(crate) tasks: TaskIds,
    pub(crate) catalog: super::catalog::ToolCatalog,
}

impl ReplyRewriter {
    fn lookup(&self, id: &Value) -> Option<Pending> {
        if let Some((_, p)) = self.pending.iter().find(|(p, _)| p == id) {
            return Some(p.clone());
        }
        self.session.as_ref()?.get(id)
    }

    /// Rewrites one server-to-client message as decided.
    fn rewrite_message(&self, msg: &mut Value) -> Outcome {
        let Value::Object(m) = msg else {
            return Outcome::Drop;
        };
        // A message that is two things at once is read differently by different clients
        // (one reads the `result` of an error, or of a request): never passed.
        if m.contains_key("result") && (m.contains_key("error") || m.contains_key("method")) {
            return Outcome::Drop;
        }
        if let Some(method) = m.get("method") {
            let Some(method) = method.as_str().map(str::to_owned) else {
                return Outcome::Drop;
            };
            let method = method.as_str();
            return if m.contains_key("id") {
                if PASSING_SERVER_REQUESTS.contains(&method) {
                    Outcome::Keep
                } else {
                    Outcome::Drop
                }
            } else {
                self.rewrite_notification(method, m)
            };
        }
        let is_error = m.contains_key("error");
        if !is_error && !m.contains_key("result") {
            return Outcome::Drop;
        }
        let pending = match m.get("id") {
            // A server's error about no request in particular (a parse error, an unknown
            // session): it answers nothing that was decided, and reveals nothing.
            None | Some(Value::Null) if is_error => return Outcome::Keep,
            None | Some(Value::Null) => return Outcome::Drop,
            Some(id) => match self.lookup(id) {
                Some(p) => p,
                None => return Outcome::Drop,
            },
        };
        if is_error {
            return match &pending {
                Pending::Drop => Outcome::Drop,
                Pending::Redact(fields) => {
                    if let Some(error) = m.get_mut("error") {
                        remove_fields(error, fields);
                    }
                    Outcome::Changed
                }
                _ => Outcome::Keep,
            };
        }
        let Some(Value::Object(result)) = m.get_mut("result") else {
            return Outcome::Drop;
        };
        match pending {
            Pending::Drop => Outcome::Drop,
            Pending::List(kind) => {
                let seen = filter_list(&self.engine, &self.principal, kind, result);
                self.catalog.learn(seen);
                Outcome::Changed
            }
            Pending::Redact(fields) => {
                // A call answered with a task would deliver its result later through
                // `tasks/get` or `tasks/result`: refused.
                if result.get("resultType") == Some(&Value::from("task"))
                    || result.get("task").is_some_and(Value::is_object)
                {
                    let id = m.get("id").cloned().unwrap_or(Value::Null);
                    *msg = super::jsonrpc::error(
                        &id,
                        super::FORBIDDEN_CODE,
                        "forbidden: this tool's results are redacted for this caller, so it cannot run as a task",
                        None,
                    );
                    return Outcome::Changed;
                }
                redact_result(result, &fields);
                Outcome::Changed
            }
            Pending::TaskList => {
                result.insert("tasks".into(), Value::Array(Vec::new()));
                result.remove("nextCursor");
                Outcome::Changed
            }
            Pending::Pass => self.bind_tasks(result),
        }
    }

    /// Replaces the server's task ids in a result with handles bound to the caller.
    fn bind_tasks(&self, result: &mut Map<String, Value>) -> Outcome {
        let mut outcome = Outcome::Keep;
        let mut slots: Vec<&mut Value> = Vec::new();
        let mut related = None;
        let mut nested = None;
        let mut own = None;
        for (k, v) in result.iter_mut() {
            match k.as_str() {
                "taskId" => own = Some(v),
                "task" => nested = v.get_mut("taskId"),
                "_meta" => related = v.get_mut(RELATED_TASK).and_then(|r| r.get_mut("taskId")),
                _ => {}
            }
        }
        slots.extend(own);
        slots.extend(nested);
        slots.extend(related);
        for slot in slots {
            let wrapped = slot.as_str().and_then(|id| self.tasks.wrap(id));
            match wrapped {
                Some(w) => {
                    *slot = Value::String(w);
                    outcome = Outcome::Changed;
                }
                None => return Outcome::Drop,
            }
        }
        outcome
    }

    fn rewrite_notification(&self, method: &str, m: &mut Map<String, Value>) -> Outcome {
        match method {
            "notifications/resources/updated" => {
                let uri = m
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str);
                let Some(uri) = uri else {
                    return Outcome::Drop;
                };
                let item = Item::Resource(ResourceInfo {
                    uri: uri.to_owned(),
                });
                if self
                    .engine
                    .decide(&self.principal, &item, crate::policy::Phase::Call, None)
                    .is_allow()
                {
                    Outcome::Keep
                } else {
                    Outcome::Drop
                }
            }
            "notifications/progress" => {
                let Some(params) = m.get_mut("params") else {
                    return Outcome::Drop;
                };
                let token = params.get("progressToken");
                let fields = token.and_then(|token| {
                    if let Some((_, f)) = self.progress.iter().find(|(t, _)| t == token) {
                        return Some(ProgressRecord::Redact(f.clone()));
                    }
                    Some(self.session.as_ref()?.progress_fields(token))
                });
                match fields {
                    // Progress of a redacted call the record forgot: its fields are unknown.
                    Some(ProgressRecord::Retired) => Outcome::Drop,
                    Some(ProgressRecord::Redact(fields)) => {
                        if let Value::Object(p) = params {
                            // Free text cannot be redacted field by field: withheld.
                            p.remove("message");
                        }
                        remove_fields(params, &fields);
                        Outcome::Changed
                    }
                    Some(ProgressRecord::Unknown) | None => Outcome::Keep,
                }
            }
            m if PASSING_NOTIFICATIONS.contains(&m) => Outcome::Keep,
            // Task status carries the server's task ids; anything unknown may carry anything.
            _ => Outcome::Drop,
        }
    }

    /// Rewrites a JSON body (one message or a batch): `Ok(None)` when nothing changed,
    /// [`Unreadable`] when the body is not JSON, or when a message in it is dropped and
    /// nothing else would be left to send.
    pub(crate) fn rewrite_json(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Unreadable> {
        let text = std::str::from_utf8(body).map_err(|_| Unreadable)?;
        if let Some(quick) = self.pass_plain_reply(text) {
            return quick;
        }
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
        self.rewrite_tree(text)
    }

    /// The general path: the body parsed whole, each message rewritten as decided; a
    /// dropped message is removed from a batch, and a body left empty is [`Unreadable`].
    fn rewrite_tree(&self, text: &str) -> Result<Option<Vec<u8>>, Unreadable> {
        let mut v: Value = serde_json::from_str(text).map_err(|_| Unreadable)?;
        let changed = match &mut v {
            Value::Array(msgs) => {
                let mut changed = false;
                let mut keep = Vec::with_capacity(msgs.len());
                for m in msgs.iter_mut() {
                    let outcome = self.rewrite_message(m);
                    changed |= outcome != Outcome::Keep;
                    keep.push(outcome != Outcome::Drop);
                }
                let mut keep = keep.into_iter();
                msgs.retain(|_| keep.next().unwrap_or(false));
                if msgs.is_empty() {
                    return Err(Unreadable);
                }
                changed
            }
            msg => match self.rewrite_message(msg) {
                Outcome::Keep => false,
                Outcome::Changed => true,
                Outcome::Drop => return Err(Unreadable),
            },
        };
        Ok(changed.then(|| v.to_string().into_bytes()))
    }

    /// The common reply that needs no rewriting, recognised without building a tree: one
    /// response to a request of this exchange that is passed as it is, whose result holds
    /// no task id. `None` when the reply is anything else.
    fn pass_plain_reply(&self, text: &str) -> Option<Result<Option<Vec<u8>>, Unreadable>> {
        if !self.pending.iter().any(|(_, p)| *p == Pending::Pass)
            || !text.trim_start().starts_with('{')
        {
            return None;
        }
        let reply: PlainReply<'_> = serde_json::from_str(text).ok()?;
        if reply.method.is_some() {
            return None;
        }
        let id = reply.id?;
        let (_, pending) = self.pending.iter().find(|(p, _)| *p == id)?;
        if *pending != Pending::Pass {
            return None;
        }
        match (reply.result, reply.error) {
            (Some(r), None) if r.get().starts_with('{') && !r.get().contains("taskId") => {
                Some(Ok(None))
            }
            (None, Some(_)) => Some(Ok(None)),
            _ => None,
        }
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
        let reply = Reply::parse(&envelope)?;
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
        let reply = Reply::parse(text)?;
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

/// The members of a reply that is passed as it is; `result` stays raw text.
#[derive(serde::Deserialize)]
struct PlainReply<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    method: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    result: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    error: Option<&'a serde_json::value::RawValue>,
}

/// The members of a reply the fast paths read; `result` stays raw text.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    result: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    method: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    error: Option<&'a serde_json::value::RawValue>,
}

impl<'a> Reply<'a> {
    /// A plain response: a JSON object (not an array read by position) with a `result` and
    /// neither `method` nor `error`. Anything else is left to the general path.
    fn parse(text: &'a str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let reply: Self = serde_json::from_str(text).ok()?;
        (reply.method.is_none() && reply.error.is_none() && reply.result.is_some()).then_some(reply)
    }
}

#[cfg(test)]
impl ReplyRewriter {
    /// The general path of [`Self::rewrite_json`] alone (no fast path): what the fast paths
    /// must agree with (`super::proptests`).
    pub(crate) fn rewrite_general(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Unreadable> {
        self.rewrite_tree(std::str::from_utf8(body).map_err(|_| Unreadable)?)
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
    fn redaction_reaches_every_part_of_a_result() {
        let mut result = json!({
            "content": [
                {"type": "text", "text": "{\"id\":\"d1\",\"owner_email\":\"a@b\",\"nested\":{\"owner_email\":\"x\"}}"},
                {"type": "text", "text": "plain owner_email: a@b"},
                {"type": "resource", "resource": {"uri": "docs://d1", "mimeType": "application/json",
                    "text": "{\"owner_email\":\"a@b\",\"id\":\"d1\"}", "_meta": {"owner_email": "a@b"}}},
                {"type": "resource", "resource": {"uri": "docs://d1", "blob": "b3duZXJfZW1haWw="}},
                {"type": "image", "data": "aGk=", "mimeType": "image/png"},
                {"type": "resource_link", "uri": "docs://d1", "name": "d1", "_meta": {"owner_email": "a@b"}},
                {"type": "something_new", "owner": "a@b"}
            ],
            "structuredContent": {"id": "d1", "owner_email": "a@b"},
            "_meta": {"owner_email": "a@b", "trace": "t"}
        });
        redact_result(result.as_object_mut().unwrap(), &["owner_email".into()]);
        assert_eq!(result["structuredContent"], json!({"id": "d1"}));
        assert_eq!(result["_meta"], json!({"trace": "t"}));
        let content = result["content"].as_array().unwrap();
        assert_eq!(content[0]["text"], "{\"id\":\"d1\",\"nested\":{}}");
        assert_eq!(content[2]["resource"]["text"], "{\"id\":\"d1\"}");
        assert_eq!(content[2]["resource"]["_meta"], json!({}));
        assert_eq!(content[5]["_meta"], json!({}));
        // What cannot be read field by field is withheld, never passed.
        for i in [1, 3, 4, 6] {
            assert_eq!(content[i], json!({"type": "text", "text": WITHHELD}), "{i}");
        }
        assert!(!result.to_string().contains("a@b"));
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
            session: None,
            progress: Vec::new(),
            tasks: TaskIds {
                binder: super::super::binding::Binder::random(),
                owner: "t/o".into(),
            },
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
        // A response to an id that was not asked for: refused, alone or in a batch.
        assert!(r.rewrite_json(body(7).as_bytes()).is_err());
        let batch = format!("[{},{}]", body(7), body(1));
        let out: Value =
            serde_json::from_slice(&r.rewrite_json(batch.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(out.as_array().unwrap().len(), 1);
        assert_eq!(out[0]["id"], json!(1));
        let not_an_object = r#"{"jsonrpc":"2.0","id":1,"result":[{"name":"drop"}]}"#;
        assert!(r.rewrite_json(not_an_object.as_bytes()).is_err());
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#;
        assert!(r.rewrite_json(error.as_bytes()).unwrap().is_none());
        // Not a reply at all: nothing is passed.
        let nested = format!(r#"{{"jsonrpc":"2.0","id":1,"x":{{"result":{result}}}}}"#);
        assert!(r.rewrite_json(nested.as_bytes()).is_err());
        let other = format!(r#"{{"jsonrpc":"2.0","id":1,"x":{result}}}"#);
        assert!(r.rewrite_json(other.as_bytes()).is_err());
        let twice = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{}},"result":{result}}}"#);
        let out = r.rewrite_json(twice.as_bytes());
        assert!(!matches!(out, Ok(Some(ref b)) if names(b).contains(&"drop".to_owned())));
        let in_string = format!(
            r#"{{"jsonrpc":"2.0","id":1,"note":"\"result\":{}"}}"#,
            result.replace('"', "\\\"")
        );
        assert!(r.rewrite_json(in_string.as_bytes()).is_err());
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
    fn progress_of_a_redacted_call_is_redacted_live_and_replayed() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let fields = vec!["owner_email".to_owned()];
        let live = ReplyRewriter {
            pending: vec![(json!(4), Pending::Redact(fields.clone()))],
            progress: vec![(json!("p1"), fields.clone())],
            ..rewriter(&catalog, 4)
        };
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p1","progress":1,"message":"owner is a@b","owner_email":"a@b"}}"#;
        let out =
            String::from_utf8(live.rewrite_json(progress.as_bytes()).unwrap().unwrap()).unwrap();
        assert!(!out.contains("a@b"), "{out}");
        // A replay on the session's GET stream: the session record knows the token.
        let session = std::sync::Arc::new(Decided::default());
        let call = [(json!(4), Pending::Redact(fields.clone()))];
        let tokens = [(json!("p1"), fields.clone())];
        assert_eq!(session.record(&call, &tokens), Recorded::Fresh);
        let replay = ReplyRewriter {
            pending: Vec::new(),
            session: Some(session.clone()),
            ..rewriter(&catalog, 4)
        };
        let out =
            String::from_utf8(replay.rewrite_json(progress.as_bytes()).unwrap().unwrap()).unwrap();
        assert!(!out.contains("a@b"), "{out}");
        // Another call's progress passes; a reply to an id nobody decided is dropped; an id
        // used twice in the session is refused, and its replies dropped from then on.
        let other = progress.replace("\"p1\"", "\"p2\"");
        assert!(replay.rewrite_json(other.as_bytes()).unwrap().is_none());
        let stray = r#"{"jsonrpc":"2.0","id":9,"result":{"content":[]}}"#;
        assert!(replay.rewrite_json(stray.as_bytes()).is_err());
        let again = [(json!("4"), Pending::Pass)];
        assert_eq!(session.record(&again, &[]), Recorded::Reused);
        let done = r#"{"jsonrpc":"2.0","id":4,"result":{"content":[]}}"#;
        assert!(replay.rewrite_json(done.as_bytes()).is_err());
    }

    #[test]
    fn forgotten_ids_stay_used_and_forgotten_progress_is_dropped() {
        let catalog = super::super::catalog::ToolCatalog::new();
        let fields = vec!["owner_email".to_owned()];
        let session = std::sync::Arc::new(Decided::new(2));
        let redacted = |id: i64, token: &str| {
            session.record(
                &[(json!(id), Pending::Redact(fields.clone()))],
                &[(json!(token), fields.clone())],
            )
        };
        assert_eq!(redacted(1, "p1"), Recorded::Fresh);
        assert_eq!(redacted(2, "p2"), Recorded::Fresh);
        assert_eq!(redacted(3, "p3"), Recorded::Fresh, "forgets 1 and p1");
        // Id 1 (or "1") again is refused, though the record no longer knows its decision.
        for id in [json!(1), json!("1")] {
            assert_eq!(
                session.record(&[(id, Pending::Pass)], &[]),
                Recorded::Reused
            );
        }
        // A progress token is not a request id: id "p1" is new.
        assert_eq!(
            session.record(&[(json!("p1"), Pending::Pass)], &[]),
            Recorded::Fresh
        );
        let replay = ReplyRewriter {
            pending: Vec::new(),
            session: Some(session.clone()),
            ..rewriter(&catalog, 9)
        };
        // A replayed reply to id 1 is dropped; the progress of p1, whose fields the record
        // forgot, too; p3's is still redacted.
        let old =
            r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"owner_email":"a@b"}}}"#;
        assert!(replay.rewrite_json(old.as_bytes()).is_err());
        let progress = |token: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"{token}","progress":1,"owner_email":"a@b"}}}}"#
            )
        };
        assert!(replay.rewrite_json(progress("p1").as_bytes()).is_err());
        let p3 = replay
            .rewrite_json(progress("p3").as_bytes())
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8(p3).unwrap().contains("a@b"));
    }

    #[test]
    fn a_session_that_retires_too_many_ids_is_ended() {
        let session = Decided::new(1);
        let ping = |id: usize| session.record(&[(json!(id), Pending::Pass)], &[]);
        // One remembered, 64 retired; the next would retire a 65th.
        for id in 0..=RETIRED_PER_REMEMBERED {
            assert_eq!(ping(id), Recorded::Fresh, "{id}");
        }
        assert!(!session.is_ended());
        assert_eq!(ping(RETIRED_PER_REMEMBERED + 1), Recorded::Ended);
        assert!(session.is_ended());
        assert_eq!(
            ping(0),
            Recorded::Ended,
            "even a reused id: the session is over"
        );
        assert_eq!(session.get(&json!(RETIRED_PER_REMEMBERED)), None);
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
