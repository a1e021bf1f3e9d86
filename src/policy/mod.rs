//! Cedar policies: who may list and use which MCP tools, resources and prompts.
//!
//! This is the only module that touches Cedar types. A [`PolicyEngine`] holds an immutable
//! snapshot of the policies in a directory (`schema.cedarschema`, an optional generated
//! `arguments.cedarschema`, and every `*.cedar` file), validated strictly against the
//! schema, behind a lock-free swap. [`PolicyEngine::decide`] is a pure function of the
//! snapshot, the caller and the item:
//!
//! - default deny; a policy that fails to evaluate makes the answer a deny;
//! - obligations come from annotations on the determining policies: `@redact("a,b")` on
//!   permits, `@reason("…")` and `@step_up("mfa")` on forbids;
//! - list-phase decisions are cached per (policy epoch, caller, item), so listing the same
//!   tools again for the same caller costs hash lookups, and a reload invalidates them;
//! - call-phase decisions are cached the same way when none of the policies that can apply
//!   to the item reads the request beyond the caller (`context.arguments`, `context.now`):
//!   such a decision is a function of the key, so the cache never answers differently from
//!   an evaluation. Every call is still counted and audited;
//! - a shadow policy set ([`PolicyEngine::with_shadow`]) answers every decision alongside,
//!   for comparison only: disagreements are counted ([`PolicyEngine::shadow_stats`]) and
//!   audited, the shadow answer is never used;
//! - [`PolicyEngine::trace`] streams every decision as it happens to whoever listens.
//!
//! Without a shadow set and without a listener, neither costs more than a check of an
//! `Option` and of an atomic counter per decision.
//!
//! ```
//! use idguard::policy::{Item, PolicyEngine, Phase, ToolInfo};
//! use idguard::Principal;
//!
//! let engine = PolicyEngine::from_sources(
//!     include_str!("../../policies/schema.cedarschema"),
//!     None,
//!     [("rules.cedar", r#"@id("readers") permit (principal in Role::"Tools.Read", action == Action::"call_tool", resource) when { resource.read_only };"#)],
//! )?;
//! let bob = Principal::from_unvalidated_claims(&serde_json::json!({
//!     "tid": "b0f1a3c2-7d4e-4f6a-9c8b-1e2d3f4a5b6c", "oid": "b0b", "scp": "mcp.tools", "roles": ["Tools.Read"]
//! }))?;
//! let list = Item::Tool(ToolInfo::new("list_documents").read_only(true));
//! let delete = Item::Tool(ToolInfo::new("delete_document").destructive(true));
//! assert!(engine.decide(&bob, &list, Phase::Call, None).is_allow());
//! assert!(!engine.decide(&bob, &delete, Phase::Call, None).is_allow());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Over 800 lines: the engine and its decision paths (list, call, shadow, trace) share one
//! snapshot and its caches; the parts that stand alone are submodules.

mod arguments;
mod cache;
pub mod cases;
mod entities;
mod reload;
pub mod review;
mod servers;
mod shadow;
mod slice;
mod store;
mod trace;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer, Decision as CedarDecision, PolicyId};
use serde::{Deserialize, Serialize};

pub use arguments::{ARGUMENTS_SCHEMA_FILE, generate_arguments_schema};
pub use entities::{Item, PromptInfo, ResourceInfo, ToolInfo};
pub use reload::PolicyWatch;
pub use servers::{SERVER_SEPARATOR, Servers};
pub use shadow::{Disagreement, ItemDisagreements, OTHER_ITEMS, ShadowStats};
pub use store::{PolicyLoadError, PolicyProblem};
pub use trace::{
    DecisionEvent, DecisionTrace, Outcome, TraceError, TraceFilter, TracedAnswer, TracedCaller,
    TracedShadow,
};

use crate::principal::Principal;
use cache::{CallCache, ListCache, SceneCache, Shown};
use shadow::Shadow;
use store::Snapshot;
use trace::Tracer;

/// Which MCP operation a decision is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `tools/call` (and listing tools).
    CallTool,
    /// `resources/read` (and listing resources).
    ReadResource,
    /// `prompts/get` (and listing prompts).
    GetPrompt,
}

impl Action {
    /// The Cedar action id (`call_tool`, `read_resource`, `get_prompt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CallTool => "call_tool",
            Action::ReadResource => "read_resource",
            Action::GetPrompt => "get_prompt",
        }
    }
}

/// When the decision is made: while listing, or for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Filtering a `*/list` reply: an item is shown iff its action is permitted.
    List,
    /// A `tools/call`, `resources/read` or `prompts/get`.
    Call,
}

impl Phase {
    /// `list` or `call`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::List => "list",
            Phase::Call => "call",
        }
    }
}

/// The outcome of a policy decision. Match it exhaustively.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Permitted, with obligations.
    Allow(Allowed),
    /// Not permitted (explicitly, by default, or because a policy failed to evaluate).
    Deny(Denied),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The ids of the policies that determined the decision.
    pub fn policies(&self) -> &[String] {
        match self {
            Decision::Allow(a) => &a.policies,
            Decision::Deny(d) => &d.policies,
        }
    }
}

/// Details of an allow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Allowed {
    /// Fields to remove from the result for this caller (`@redact` on determining permits).
    pub redact: Vec<String>,
    /// The determining permit policies.
    pub policies: Vec<String>,
}

/// Details of a deny.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Denied {
    /// The message for the caller (`@reason` of a determining forbid), if any.
    pub reason: Option<String>,
    /// An authentication step-up that would help (`@step_up`, e.g. `mfa`).
    pub step_up: Option<String>,
    /// The determining forbid policies (empty for a default deny).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (any failure denies).
    pub errors: Vec<String>,
}

/// The state of the loaded policies, for health endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// Increases on every successful load.
    pub epoch: u64,
    /// Number of policies in force.
    pub policies: usize,
    /// When the policies in force were loaded (seconds since the epoch).
    pub loaded_at: u64,
    /// The last failed reload, if it happened after the last good one.
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<u64>,
}

/// Where a policy is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyOrigin {
    /// File name within the policy directory.
    pub file: String,
    /// 1-based line of the policy's first line (its first annotation).
    pub line: usize,
}

/// Default of [`PolicyCacheCapacities::with_lists`]: callers whose list decisions are
/// cached.
pub const DEFAULT_LIST_CACHE_CAPACITY: u64 = 10_000;
/// Default of [`PolicyCacheCapacities::with_calls`]: cached call decisions, one per (caller,
/// item).
pub const DEFAULT_CALL_CACHE_CAPACITY: u64 = 10_000;
/// Default of [`PolicyCacheCapacities::with_entities`]: cached decision entities, one per
/// (caller, item), about 10.7 KiB each.
pub const DEFAULT_ENTITY_CACHE_CAPACITY: u64 = 2_000;
/// Default of [`PolicyCacheCapacities::with_slices`]: cached policy slices, one per (action,
/// item, the caller's groups that policies name).
pub const DEFAULT_SLICE_CACHE_CAPACITY: u64 = 20_000;

/// How many entries each cache of a [`PolicyEngine`] holds, for
/// [`PolicyEngine::with_cache_capacities`]. `Default` gives the `DEFAULT_*_CACHE_CAPACITY`
/// values.
///
/// The caches only save work: what is not in them is evaluated, never assumed, so every
/// capacity gives the same decisions; smaller ones cost more evaluations (and memory is
/// bounded by them). A capacity of `0` is taken as `1`.
///
/// ```
/// use idguard::policy::PolicyCacheCapacities;
///
/// let small = PolicyCacheCapacities::default().with_calls(1_000).with_entities(500);
/// assert_eq!(small.calls(), 1_000);
/// assert_eq!(PolicyCacheCapacities::default().with_lists(0).lists(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct PolicyCacheCapacities {
    lists: u64,
    calls: u64,
    entities: u64,
    slices: u64,
}

impl Default for PolicyCacheCapacities {
    fn default() -> Self {
        Self {
            lists: DEFAULT_LIST_CACHE_CAPACITY,
            calls: DEFAULT_CALL_CACHE_CAPACITY,
            entities: DEFAULT_ENTITY_CACHE_CAPACITY,
            slices: DEFAULT_SLICE_CACHE_CAPACITY,
        }
    }
}

impl PolicyCacheCapacities {
    /// Callers whose list decisions are kept (each for a minute, with one flag per item
    /// listed; the items themselves are shared by all callers, at most 100 000), default
    /// [`DEFAULT_LIST_CACHE_CAPACITY`]. `mcp.list_cache_capacity` in `idguard.toml`.
    pub fn with_lists(mut self, callers: u64) -> Self {
        self.lists = callers.max(1);
        self
    }

    /// Call decisions kept, one per (policy epoch, caller, item) and for five minutes,
    /// default [`DEFAULT_CALL_CACHE_CAPACITY`]. `mcp.call_cache_capacity`.
    pub fn with_calls(mut self, decisions: u64) -> Self {
        self.calls = decisions.max(1);
        self
    }

    /// Decision entities kept (the caller and one item as Cedar entities, about 10.7 KiB
    /// each, for five minutes), default [`DEFAULT_ENTITY_CACHE_CAPACITY`].
    /// `mcp.entity_cache_capacity`.
    pub fn with_entities(mut self, entries: u64) -> Self {
        self.entities = entries.max(1);
        self
    }

    /// Policy slices kept per policy snapshot (the policies that can apply to one action,
    /// item and set of the caller's groups), default [`DEFAULT_SLICE_CACHE_CAPACITY`].
    /// `mcp.slice_cache_capacity`.
    pub fn with_slices(mut self, slices: u64) -> Self {
        self.slices = slices.max(1);
        self
    }

    /// Callers whose list decisions are kept.
    pub fn lists(&self) -> u64 {
        self.lists
    }

    /// Call decisions kept.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Decision entities kept.
    pub fn entities(&self) -> u64 {
        self.entities
    }

    /// Policy slices kept per snapshot.
    pub fn slices(&self) -> u64 {
        self.slices
    }
}

/// The policy engine: a cheap-clone handle to the current policy snapshot.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: Option<PathBuf>,
    server: String,
    /// The named servers whose items this engine judges, if any.
    servers: Option<Servers>,
    snapshot: ArcSwap<Snapshot>,
    next_epoch: AtomicU64,
    reload_lock: Mutex<()>,
    status: tokio::sync::watch::Sender<PolicyStatus>,
    /// The sizes of the caches below, and of each snapshot's slice cache.
    capacities: PolicyCacheCapacities,
    list_cache: ListCache,
    call_cache: CallCache,
    /// Shared with a shadow set: entities depend on the caller and the item only.
    scenes: Arc<SceneCache>,
    authorizer: Authorizer,
    counters: [AtomicU64; 5],
    /// The shadow set, if any: asked after every decision, never obeyed.
    shadow: Option<Shadow>,
    tracer: Tracer,
}

impl Inner {
    /// Makes `shadow` this engine's shadow set, under this engine's server name.
    fn attach_shadow(&mut self, shadow: PolicyEngine) {
        let mut shadow = shadow.with_server_name(self.server.clone());
        // Same server name, so the same entities: the shadow decides on the scenes the
        // policies in force just built.
        if let Some(theirs) = Arc::get_mut(&mut shadow.inner)
            && theirs.server == self.server
        {
            theirs.servers.clone_from(&self.servers);
            theirs.scenes = self.scenes.clone();
        }
        self.shadow = Some(Shadow::new(shadow));
    }
}

/// Decision counters of a [`PolicyEngine`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PolicyStats {
    /// Call-phase decisions that allowed.
    pub allowed: u64,
    /// Call-phase decisions that denied.
    pub denied: u64,
    /// List items answered from the list-decision cache.
    pub list_cached: u64,
    /// List items evaluated.
    pub list_evaluated: u64,
    /// Call-phase decisions answered from the call-decision cache (also counted in
    /// `allowed` or `denied`).
    pub call_cached: u64,
}

const ALLOWED: usize = 0;
const DENIED: usize = 1;
const LIST_CACHED: usize = 2;
const LIST_EVALUATED: usize = 3;
const CALL_CACHED: usize = 4;

impl PolicyEngine {
    /// Loads every policy in `dir` (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// [`PolicyLoadError`] listing every problem with its file, line and column.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, PolicyLoadError> {
        let dir = dir.as_ref().to_path_buf();
        let snapshot = store::load_dir(&dir, 1, DEFAULT_SLICE_CACHE_CAPACITY)?;
        Ok(Self::with_snapshot(Some(dir), snapshot))
    }

    /// Builds an engine from in-memory sources: the base schema, optionally the generated
    /// arguments schema, and `(file name, policy text)` pairs.
    ///
    /// # Errors
    ///
    /// [`PolicyLoadError`] listing every problem.
    pub fn from_sources<'a>(
        schema: &str,
        arguments: Option<&str>,
        policies: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PolicyLoadError> {
        let files: Vec<(String, String)> = policies
            .into_iter()
            .map(|(n, s)| (n.to_owned(), s.to_owned()))
            .collect();
        let snapshot =
            store::load_sources(schema, arguments, &files, 1, DEFAULT_SLICE_CACHE_CAPACITY)?;
        Ok(Self::with_snapshot(None, snapshot))
    }

    fn with_snapshot(dir: Option<PathBuf>, snapshot: Snapshot) -> Self {
        let status = PolicyStatus {
            epoch: snapshot.epoch,
            policies: snapshot.len(),
            loaded_at: unix_now(),
            last_error: None,
            last_error_at: None,
        };
        Self {
            inner: Arc::new(Inner {
                dir,
                server: "default".to_owned(),
                servers: None,
                snapshot: ArcSwap::from_pointee(snapshot),
                next_epoch: AtomicU64::new(2),
                reload_lock: Mutex::new(()),
                status: tokio::sync::watch::Sender::new(status),
                capacities: PolicyCacheCapacities::default(),
                list_cache: ListCache::new(DEFAULT_LIST_CACHE_CAPACITY),
                call_cache: CallCache::new(DEFAULT_CALL_CACHE_CAPACITY),
                scenes: Arc::new(SceneCache::new(DEFAULT_ENTITY_CACHE_CAPACITY)),
                authorizer: Authorizer::new(),
                counters: Default::default(),
                shadow: None,
                tracer: Tracer::new(),
            }),
        }
    }

    /// Names the MCP server whose items this engine judges (the `server` attribute of
    /// tools, resources and prompts; default `"default"`). Call before sharing the engine.
    #[must_use]
    pub fn with_server_name(mut self, server: impl Into<String>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.server = server.into();
            if let Some(shadow) = inner.shadow.take() {
                let engine = shadow.engine.with_server_name(inner.server.clone());
                inner.shadow = Some(Shadow::new(engine));
            }
        }
        self
    }

    /// Judges the items of named MCP servers: each item [`servers`](Servers) attributes
    /// to a server gets `Server::"<name>"` as its parent and that name as its `server`
    /// attribute, so policies can say `resource in Server::"github"`. Items of no named
    /// server keep [`with_server_name`](Self::with_server_name)'s name and no parent. Call
    /// before sharing the engine (a shadow set takes the same servers): given to an engine
    /// already shared, the servers are ignored, and a [`Gateways`](crate::gateway::Gateways)
    /// routing to them refuses every request (`500`) rather than route items no policy saw
    /// as theirs.
    #[must_use]
    pub fn with_servers(mut self, servers: Servers) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                servers.set_judged();
                inner.servers = Some(servers);
                if let Some(shadow) = inner.shadow.take() {
                    inner.attach_shadow(shadow.engine);
                }
            }
            None => tracing::error!(
                target: "idguard::policy",
                "servers were given to an engine already in use; they are ignored (a gateway routing to them refuses every request)"
            ),
        }
        self
    }

    /// Adds a shadow policy set: every decision this engine makes, in the list and the call
    /// phase, is also put to `shadow`, whose answer is compared and never used.
    /// Disagreements are counted ([`shadow_stats`](Self::shadow_stats)) and logged as audit
    /// events with both answers and their determining policies. The shadow keeps its own
    /// caches, reloads on its own ([`shadow`](Self::shadow) gives it, to `watch`, `reload`
    /// or read its `status`), and takes this engine's server name (if no clone of it exists
    /// yet; otherwise name it alike first). Replaces an earlier shadow set.
    ///
    /// Call before sharing the engine (cloning it, or starting [`watch`](Self::watch)); on a
    /// shared engine this logs an error and changes nothing.
    #[must_use]
    pub fn with_shadow(mut self, shadow: PolicyEngine) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.attach_shadow(shadow),
            None => tracing::error!(
                target: "idguard::policy",
                "a shadow policy set was added to an engine already in use; it is ignored"
            ),
        }
        self
    }

    /// Sizes this engine's caches (default: [`PolicyCacheCapacities::default`]), and those
    /// of its shadow set if it has one already. The caches start empty. Capacities change
    /// how much work and memory decisions take, never what they decide.
    ///
    /// Call before sharing the engine (cloning it, or starting [`watch`](Self::watch)); on a
    /// shared engine this logs an error and changes nothing.
    ///
    /// ```
    /// use idguard::policy::{PolicyCacheCapacities, PolicyEngine};
    ///
    /// let engine = PolicyEngine::from_dir("policies")?
    ///     .with_cache_capacities(PolicyCacheCapacities::default().with_calls(1_000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_cache_capacities(mut self, capacities: PolicyCacheCapacities) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.capacities = capacities;
                inner.list_cache = ListCache::new(capacities.lists);
                inner.call_cache = CallCache::new(capacities.calls);
                inner.scenes = Arc::new(SceneCache::new(capacities.entities));
                let resized = inner.snapshot.load().with_slice_capacity(capacities.slices);
                inner.snapshot.store(Arc::new(resized));
                if let Some(shadow) = inner.shadow.take() {
                    inner.attach_shadow(shadow.engine.with_cache_capacities(capacities));
                }
            }
            None => tracing::error!(
                target: "idguard::policy",
                "cache capacities were set on an engine already in use; they are ignored"
            ),
        }
        self
    }

    /// The sizes of this engine's caches.
    pub fn cache_capacities(&self) -> PolicyCacheCapacities {
        self.inner.capacities
    }

    /// The shadow policy set, if any.
    pub fn shadow(&self) -> Option<&PolicyEngine> {
        self.inner.shadow.as_ref().map(|s| &s.engine)
    }

    /// Comparison counters of the shadow policy set (`None` without one).
    pub fn shadow_stats(&self) -> Option<ShadowStats> {
        self.inner.shadow.as_ref().map(Shadow::stats)
    }

    /// Listens to every decision from now on: the call and list decisions this engine makes,
    /// with their determining policies, obligations, whether a cache answered, and the
    /// shadow answer. Events are produced only while a listener exists; one that falls
    /// behind loses the oldest events (and learns how many) rather than slowing requests.
    /// Events never carry tokens or tool arguments.
    pub fn trace(&self) -> DecisionTrace {
        self.inner.tracer.subscribe()
    }

    /// The policy directory, if the engine was loaded from one.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// Reloads the directory: parse, validate, swap. On failure the policies in force stay
    /// and the error is recorded in [`status`](Self::status). Returns the new epoch.
    ///
    /// # Errors
    ///
    /// [`PolicyLoadError`] when the new files do not load; nothing changes then.
    pub fn reload(&self) -> Result<u64, PolicyLoadError> {
        let Some(dir) = &self.inner.dir else {
            return Ok(self.epoch());
        };
        // One reload at a time, so snapshots are swapped in epoch order.
        let _serial = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = self.inner.next_epoch.fetch_add(1, Ordering::Relaxed);
        match store::load_dir(dir, epoch, self.inner.capacities.slices) {
            Ok(snapshot) => {
                let policies = snapshot.len();
                self.inner.snapshot.store(Arc::new(snapshot));
                self.inner.status.send_replace(PolicyStatus {
                    epoch,
                    policies,
                    loaded_at: unix_now(),
                    last_error: None,
                    last_error_at: None,
                });
                tracing::info!(target: "idguard::policy", epoch, policies, "policies reloaded");
                Ok(epoch)
            }
            Err(e) => {
                tracing::error!(target: "idguard::policy", error = %e, "policy reload failed; keeping the policies in force");
                self.inner.status.send_modify(|status| {
                    status.last_error = Some(e.to_string());
                    status.last_error_at = Some(unix_now());
                });
                Err(e)
            }
        }
    }

    /// The epoch of the policies in force.
    pub fn epoch(&self) -> u64 {
        self.inner.snapshot.load().epoch
    }

    /// Epoch, size and last reload error of the policies in force.
    pub fn status(&self) -> PolicyStatus {
        self.inner.status.borrow().clone()
    }

    /// Decision counters since start.
    pub fn stats(&self) -> PolicyStats {
        let c = |i: usize| {
            self.inner
                .counters
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        PolicyStats {
            allowed: c(ALLOWED),
            denied: c(DENIED),
            list_cached: c(LIST_CACHED),
            list_evaluated: c(LIST_EVALUATED),
            call_cached: c(CALL_CACHED),
        }
    }

    fn count(&self, which: usize, n: u64) {
        if let Some(c) = self.inner.counters.get(which) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A receiver that sees every change of [`status`](Self::status): a successful reload
    /// (new epoch) or a failed one (new `last_error`). Use it to tell clients that lists
    /// changed, or to wait for a reload in tests.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<PolicyStatus> {
        self.inner.status.subscribe()
    }

    /// Where policy `id` is written.
    pub fn origin(&self, id: &str) -> Option<PolicyOrigin> {
        self.inner.snapshot.load().origin(id)
    }

    /// The ids of the policies in force, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        self.inner.snapshot.load().ids()
    }

    /// App role values the policies mention (`Role::"…"`), sorted.
    pub fn referenced_roles(&self) -> Vec<String> {
        self.inner.snapshot.load().referenced("Role")
    }

    /// Decides whether `principal` may use `item` in `phase`, with the tool `arguments` of a
    /// call. Call-phase decisions are audited (tracing target `idguard::audit`), whether
    /// they were evaluated or answered from the call-decision cache (see the
    /// [module docs](self)).
    pub fn decide(
        &self,
        principal: &Principal,
        item: &Item,
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Decision {
        let (decision, cached) = self.decide_counted(principal, item, phase, arguments);
        if phase == Phase::Call {
            audit(principal, item, &decision);
        }
        let shadow = self
            .inner
            .shadow
            .as_ref()
            .map(|shadow| shadow.check(principal, item, phase, arguments, &decision));
        if self.inner.tracer.listening() {
            let shadow = shadow.map(|(answer, _)| TracedShadow {
                agrees: shadow::Disagreement::between(phase, &decision, &answer).is_none(),
                answer: TracedAnswer::of(&answer),
            });
            self.inner.tracer.send(DecisionEvent::new(
                principal,
                item,
                phase,
                TracedAnswer::of(&decision),
                cached,
                shadow,
            ));
        }
        decision
    }

    /// [`decide`](Self::decide) without audit, shadow or trace: the decision (from the call
    /// cache when it may be) and whether the cache gave it. Counts it.
    fn decide_counted(
        &self,
        principal: &Principal,
        item: &Item,
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> (Decision, bool) {
        let snapshot = self.inner.snapshot.load();
        let cache = &self.inner.call_cache;
        let cached = match phase {
            Phase::Call => cache.get(snapshot.epoch, principal, item),
            Phase::List => None,
        };
        let hit = cached.is_some();
        let decision = match cached {
            Some(decision) => {
                self.count(CALL_CACHED, 1);
                decision
            }
            None => {
                let mut reads_request = false;
                let decision = self.decide_uncached(
                    &snapshot,
                    principal,
                    item,
                    phase,
                    arguments,
                    &mut reads_request,
                );
                if phase == Phase::Call && !reads_request {
                    cache.insert(snapshot.epoch, principal, item, decision.clone());
                }
                decision
            }
        };
        if phase == Phase::Call {
            self.count(if decision.is_allow() { ALLOWED } else { DENIED }, 1);
        }
        (decision, hit)
    }

    /// The decision, evaluated, touching no decision cache, counter, audit log, shadow or
    /// trace: for
    /// tools that ask many questions at once (`idguard policy diff`, `matrix`). The same
    /// answer [`decide`](Self::decide) gives.
    pub(crate) fn decide_quiet(
        &self,
        principal: &Principal,
        item: &Item,
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Decision {
        let snapshot = self.inner.snapshot.load();
        self.decide_uncached(&snapshot, principal, item, phase, arguments, &mut false)
    }

    /// [`decide`](Self::decide) without the call cache, counters and audit. Sets
    /// `reads_request` when the decision may depend on more than (snapshot, caller, item)
    /// or could not be made cleanly (an error), i.e. when it must not be reused.
    fn decide_uncached(
        &self,
        snapshot: &Snapshot,
        principal: &Principal,
        item: &Item,
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
        reads_request: &mut bool,
    ) -> Decision {
        let one = std::slice::from_ref(item);
        let mut decision = self.first(
            snapshot,
            principal,
            one,
            phase,
            arguments,
            principal.mfa(),
            reads_request,
        );
        // Offer a step-up only when it would help: with MFA, would the call be allowed?
        if let Decision::Deny(denied) = &decision
            && denied.step_up.as_deref() == Some("mfa")
            && !principal.mfa()
        {
            let with_mfa = self.first(
                snapshot,
                principal,
                one,
                phase,
                arguments,
                true,
                reads_request,
            );
            if !with_mfa.is_allow() {
                decision = with_mfa;
            }
        }
        if let Decision::Deny(denied) = &decision
            && !denied.errors.is_empty()
        {
            *reads_request = true;
        }
        decision
    }

    /// Which of `items` `principal` may see in a list: one flag per item, in order. Each
    /// item is evaluated once per (policy epoch, caller); repeated lists hit the cache.
    pub fn visible(&self, principal: &Principal, items: &[Item]) -> Vec<bool> {
        let snapshot = self.inner.snapshot.load();
        let shadow = self.shadowing();
        let shadow = shadow.as_ref().map(|(s, snap)| (*s, &***snap));
        let shadow_epoch = shadow.map_or(0, |(_, snap)| snap.epoch);
        let decisions = self
            .inner
            .list_cache
            .decisions(snapshot.epoch, shadow_epoch, principal);
        let tracing = self.inner.tracer.listening();
        let listed = self.visible_with(&snapshot, shadow, &decisions, principal, items, tracing);
        if shadow.is_some() || tracing {
            self.after_list(principal, items, &listed, tracing);
        }
        listed.flags
    }

    /// The shadow set and its policies in force, if there is a shadow set.
    fn shadowing(&self) -> Option<(&Shadow, arc_swap::Guard<Arc<Snapshot>>)> {
        self.inner
            .shadow
            .as_ref()
            .map(|s| (s, s.engine.inner.snapshot.load()))
    }

    /// After a list was decided: the shadow's flags compared, the trace told.
    #[cold]
    fn after_list<F: std::ops::Deref<Target = [bool]>>(
        &self,
        principal: &Principal,
        items: &[Item],
        listed: &Listed<F>,
        tracing: bool,
    ) {
        let theirs = listed.shadow.as_deref();
        if let (Some(shadow), Some(theirs)) = (&self.inner.shadow, theirs) {
            shadow.compare_list(self, principal, items, &listed.flags, theirs);
        }
        if !tracing {
            return;
        }
        let mut evaluated = listed.evaluated.iter().peekable();
        for (i, (item, &allowed)) in items.iter().zip(listed.flags.iter()).enumerate() {
            let fresh = evaluated.next_if(|e| e.index == i);
            let answer = fresh.map_or_else(
                || TracedAnswer::flag(allowed),
                |e| TracedAnswer::of(&e.decision),
            );
            let shadow = theirs.and_then(|t| t.get(i)).map(|&shown| TracedShadow {
                agrees: shown == allowed,
                answer: fresh
                    .and_then(|e| e.shadow.as_ref())
                    .map_or_else(|| TracedAnswer::flag(shown), TracedAnswer::of),
            });
            self.inner.tracer.send(DecisionEvent::new(
                principal,
                item,
                Phase::List,
                answer,
                fresh.is_none(),
                shadow,
            ));
        }
    }

    /// [`Self::visible`] for a list whose items never change under `id` (a process-unique
    /// id): the caller's flags for the whole list are remembered with its other list
    /// decisions (same epoch, same lifetime), so the list seen again costs one lookup.
    pub(crate) fn visible_list(
        &self,
        principal: &Principal,
        id: u64,
        items: &[Item],
    ) -> Arc<[bool]> {
        let snapshot = self.inner.snapshot.load();
        let shadow = self.shadowing();
        let shadow = shadow.as_ref().map(|(s, snap)| (*s, &***snap));
        let shadow_epoch = shadow.map_or(0, |(_, snap)| snap.epoch);
        let decisions = self
            .inner
            .list_cache
            .decisions(snapshot.epoch, shadow_epoch, principal);
        let tracing = self.inner.tracer.listening();
        let listed = self.list_with(&snapshot, shadow, &decisions, principal, id, items, tracing);
        if shadow.is_some() || tracing {
            self.after_list(principal, items, &listed, tracing);
        }
        listed.flags
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "internal; visible_with and an id"
    )]
    fn list_with(
        &self,
        snapshot: &Snapshot,
        shadow: Option<(&Shadow, &Snapshot)>,
        decisions: &cache::CallerDecisions,
        principal: &Principal,
        id: u64,
        items: &[Item],
        keep: bool,
    ) -> Listed<Arc<[bool]>> {
        if let Some(flags) = decisions.list(id) {
            self.count(LIST_CACHED, items.len() as u64);
            return Listed {
                flags: flags.enforced,
                shadow: flags.shadow,
                evaluated: Vec::new(),
            };
        }
        let listed = self.visible_with(snapshot, shadow, decisions, principal, items, keep);
        let flags = cache::ListFlags {
            enforced: listed.flags.into(),
            shadow: listed.shadow.map(Into::into),
        };
        decisions.remember_list(id, flags.clone());
        Listed {
            flags: flags.enforced,
            shadow: flags.shadow,
            evaluated: listed.evaluated,
        }
    }

    /// The flags (with a shadow set, its flags too), and with `keep` the decisions
    /// evaluated (not from the cache) by index.
    fn visible_with(
        &self,
        snapshot: &Snapshot,
        shadow: Option<(&Shadow, &Snapshot)>,
        decisions: &cache::CallerDecisions,
        principal: &Principal,
        items: &[Item],
        keep: bool,
    ) -> Listed<Vec<bool>> {
        let mut visible = Vec::with_capacity(items.len());
        let mut theirs = shadow.map(|_| Vec::with_capacity(items.len()));
        let mut missing = Vec::new();
        {
            let known = decisions.read();
            for (i, item) in items.iter().enumerate() {
                let shown = known.get(item).copied();
                visible.push(shown.is_some_and(Shown::enforced));
                if let Some(theirs) = &mut theirs {
                    theirs.push(shown.is_some_and(Shown::shadow));
                }
                if shown.is_none() {
                    missing.push(i);
                }
            }
        }
        self.count(LIST_CACHED, (items.len() - missing.len()) as u64);
        self.count(LIST_EVALUATED, missing.len() as u64);
        if missing.is_empty() {
            return Listed {
                flags: visible,
                shadow: theirs,
                evaluated: Vec::new(),
            };
        }
        let todo: Vec<Item> = missing
            .iter()
            .filter_map(|&i| items.get(i).cloned())
            .collect();
        let results = self.evaluate(
            snapshot,
            principal,
            &todo,
            Phase::List,
            None,
            principal.mfa(),
            &mut false,
        );
        let mut shadow_results = shadow.map(|(shadow, snapshot)| {
            shadow
                .engine
                .evaluate(
                    snapshot,
                    principal,
                    &todo,
                    Phase::List,
                    None,
                    principal.mfa(),
                    &mut false,
                )
                .into_iter()
        });
        let mut evaluated = Vec::new();
        let mut known = decisions.write();
        for ((i, item), decision) in missing.iter().zip(todo).zip(results) {
            let allowed = decision.is_allow();
            let their = shadow_results.as_mut().and_then(Iterator::next);
            let their_allowed = their.as_ref().is_some_and(Decision::is_allow);
            if let Some(slot) = visible.get_mut(*i) {
                *slot = allowed;
            }
            if let Some(slot) = theirs.as_mut().and_then(|t| t.get_mut(*i)) {
                *slot = their_allowed;
            }
            known.insert(
                self.inner.list_cache.intern(item),
                Shown::new(allowed, their_allowed),
            );
            if keep {
                evaluated.push(Evaluated {
                    index: *i,
                    decision,
                    shadow: their,
                });
            }
        }
        Listed {
            flags: visible,
            shadow: theirs,
            evaluated,
        }
    }

    #[expect(clippy::too_many_arguments, reason = "internal; mirrors evaluate")]
    fn first(
        &self,
        snapshot: &Snapshot,
        principal: &Principal,
        items: &[Item],
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
        mfa: bool,
        reads_request: &mut bool,
    ) -> Decision {
        self.evaluate(
            snapshot,
            principal,
            items,
            phase,
            arguments,
            mfa,
            reads_request,
        )
        .into_iter()
        .next()
        .unwrap_or_else(|| deny_error("no decision".into()))
    }

    /// One decision per item, in order. Sets `reads_request` when a slice used reads the
    /// request (see `slice::reads_request`) or something failed.
    #[expect(
        clippy::too_many_arguments,
        reason = "internal; the inputs of one evaluation"
    )]
    fn evaluate(
        &self,
        snapshot: &Snapshot,
        principal: &Principal,
        items: &[Item],
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
        mfa: bool,
        reads_request: &mut bool,
    ) -> Vec<Decision> {
        let scene = match items {
            // Single decisions repeat (a caller calling a tool again): reuse the entities.
            [item] => self.inner.scenes.get(principal, item, || {
                entities::scene(
                    &snapshot.names,
                    principal,
                    items,
                    &self.inner.server,
                    self.inner.servers.as_ref(),
                )
            }),
            _ => entities::scene(
                &snapshot.names,
                principal,
                items,
                &self.inner.server,
                self.inner.servers.as_ref(),
            )
            .map(Arc::new),
        };
        let requests = scene.and_then(|scene| {
            let requests = entities::requests(
                &snapshot.names,
                &scene,
                principal,
                items,
                mfa,
                phase,
                arguments,
                snapshot.arguments.as_ref(),
                unix_now(),
            )?;
            Ok((scene, requests))
        });
        let (scene, requests) = match requests {
            Ok(parts) => parts,
            Err(e) => {
                *reads_request = true;
                return items.iter().map(|_| deny_error(e.clone())).collect();
            }
        };
        requests
            .into_iter()
            .map(|request| {
                let decided = request.and_then(|(request, action, resource)| {
                    let slice = snapshot.slicer.slice(&scene.caller, &action, &resource)?;
                    *reads_request |= slice.reads_request;
                    let response =
                        self.inner
                            .authorizer
                            .is_authorized(&request, &slice.set, &scene.entities);
                    Ok(snapshot.to_decision(&response))
                });
                decided.unwrap_or_else(|e| {
                    *reads_request = true;
                    deny_error(e)
                })
            })
            .collect()
    }
}

/// A list's flags, the shadow set's flags (with one), and the decisions evaluated for it.
struct Listed<F> {
    flags: F,
    shadow: Option<F>,
    evaluated: Vec<Evaluated>,
}

/// A list decision evaluated (not from the cache), for the trace.
struct Evaluated {
    index: usize,
    decision: Decision,
    shadow: Option<Decision>,
}

impl Snapshot {
    fn to_decision(&self, response: &cedar_policy::Response) -> Decision {
        let mut errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        errors.sort_unstable();
        // Cedar gives the determining policies as a set: sorted, decisions (and which
        // `@reason` is shown) are the same from one evaluation, or engine, to the next.
        let mut reasons: Vec<&PolicyId> = response.diagnostics().reason().collect();
        reasons.sort_unstable();
        let ids: Vec<String> = reasons.iter().map(|id| id.to_string()).collect();
        if !errors.is_empty() {
            return Decision::Deny(Denied {
                reason: None,
                step_up: None,
                policies: ids,
                errors,
            });
        }
        match response.decision() {
            CedarDecision::Allow => {
                let mut redact: Vec<String> = Vec::new();
                for id in &reasons {
                    if let Some(o) = self.obligations.get(*id) {
                        for field in &o.redact {
                            if !redact.contains(field) {
                                redact.push(field.clone());
                            }
                        }
                    }
                }
                Decision::Allow(Allowed {
                    redact,
                    policies: ids,
                })
            }
            CedarDecision::Deny => {
                let obligations = reasons.iter().filter_map(|id| self.obligations.get(*id));
                let mut reason = None;
                let mut step_up = None;
                for o in obligations {
                    if reason.is_none() {
                        reason.clone_from(&o.reason);
                    }
                    if step_up.is_none() {
                        step_up.clone_from(&o.step_up);
                    }
                }
                Decision::Deny(Denied {
                    reason,
                    step_up,
                    policies: ids,
                    errors: Vec::new(),
                })
            }
        }
    }
}

fn deny_error(error: String) -> Decision {
    Decision::Deny(Denied {
        errors: vec![error],
        ..Denied::default()
    })
}

/// The obligations of a decision as audit events write them.
fn obligations(decision: &Decision) -> String {
    match decision {
        Decision::Allow(a) => a.redact.join(","),
        Decision::Deny(d) => d
            .step_up
            .as_deref()
            .map(|s| format!("step_up={s}"))
            .unwrap_or_default(),
    }
}

fn audit(principal: &Principal, item: &Item, decision: &Decision) {
    let outcome = if decision.is_allow() { "allow" } else { "deny" };
    let obligations = obligations(decision);
    tracing::info!(
        target: "idguard::audit",
        tenant = principal.tenant_id(),
        oid = principal.object_id(),
        app_only = principal.is_app_only(),
        client_app = principal.app_id().unwrap_or_default(),
        action = item.action().as_str(),
        resource = item.id(),
        decision = outcome,
        policies = %decision.policies().join(","),
        obligations = %obligations,
        errors = match decision { Decision::Deny(d) => d.errors.len(), Decision::Allow(_) => 0 },
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

    fn engine(rules: &str) -> PolicyEngine {
        PolicyEngine::from_sources(SCHEMA, None, [("p.cedar", rules)]).unwrap()
    }

    #[test]
    fn cache_capacities_reach_the_shadow_and_outlive_reloads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let caps = PolicyCacheCapacities::default()
            .with_lists(3)
            .with_calls(0)
            .with_entities(5)
            .with_slices(7);
        assert_eq!(caps.calls(), 1, "0 is taken as 1");
        let engine = PolicyEngine::from_dir(&dir)
            .unwrap()
            .with_shadow(PolicyEngine::from_dir(&dir).unwrap())
            .with_cache_capacities(caps);
        assert_eq!(engine.cache_capacities(), caps);
        let shadow = engine.shadow().unwrap();
        assert_eq!(shadow.cache_capacities(), caps);
        // Still one entity cache for both.
        assert!(Arc::ptr_eq(&engine.inner.scenes, &shadow.inner.scenes));
        let slices = |e: &PolicyEngine| e.inner.snapshot.load().slicer.capacity();
        assert_eq!(slices(&engine), Some(7));
        engine.reload().unwrap();
        assert_eq!(
            slices(&engine),
            Some(7),
            "a reload keeps the slice capacity"
        );
        // A shared engine is left as it is.
        let shared = engine.clone();
        let unchanged = shared.with_cache_capacities(PolicyCacheCapacities::default());
        assert_eq!(unchanged.cache_capacities(), caps);
    }

    #[test]
    fn whole_lists_compare_with_the_shadow_from_the_cache_too() {
        let readers = r#"@id("r") permit (principal in Role::"R", action == Action::"call_tool", resource) when { resource.read_only };"#;
        let everyone = r#"@id("all") permit (principal, action, resource);"#;
        let alone = engine(readers);
        let watched = engine(readers).with_shadow(engine(everyone));
        let p = Principal::from_unvalidated_claims(
            &serde_json::json!({"tid": "t", "oid": "o", "scp": "s", "roles": ["R"]}),
        )
        .unwrap();
        let items: Vec<Item> = (0..10)
            .map(|i| Item::Tool(ToolInfo::new(format!("t{i}")).read_only(i % 2 == 0)))
            .collect();
        for _ in 0..3 {
            assert_eq!(
                alone.visible_list(&p, 7, &items),
                watched.visible_list(&p, 7, &items)
            );
            assert_eq!(alone.visible(&p, &items), watched.visible(&p, &items));
        }
        let stats = watched.shadow_stats().unwrap();
        assert_eq!(stats.list_compared, 60);
        // Five hidden items the shadow would show, six times.
        assert_eq!(stats.list_disagreements, [0, 30, 0]);
        // The shadow's answers live in the enforced engine's list cache.
        assert_eq!(watched.stats().list_evaluated, 10);

        // A whole list from the cache is traced with the shadow's answers.
        let mut trace = watched.trace();
        assert_eq!(
            alone.visible_list(&p, 7, &items),
            watched.visible_list(&p, 7, &items)
        );
        let event = trace.try_recv().unwrap().unwrap();
        assert!(event.cached);
        assert_eq!(event.item, "t0");
        assert!(event.shadow.as_ref().unwrap().agrees);
        let event = trace.try_recv().unwrap().unwrap();
        assert!(
            !event.shadow.as_ref().unwrap().agrees,
            "t1 is not read-only"
        );
    }
}
