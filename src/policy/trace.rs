//! The live decision trace: every decision the engine makes, as it happens, for whoever
//! listens ([`PolicyEngine::trace`](super::PolicyEngine::trace)).
//!
//! Nobody listening costs one atomic load per decision: events are built only while a
//! [`DecisionTrace`] exists. The channel is a bounded broadcast: a listener that falls
//! behind loses the oldest events (and is told how many), it never slows a request down.
//!
//! Events name the caller by ids (tenant, object id, client application, sign-in name), the
//! item, the outcome, the determining policies and the obligations. They never carry
//! tokens, tool arguments or evaluation error texts (which may quote argument values): an
//! error is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Action, Decision, Item, Phase};
use crate::principal::Principal;

/// Events kept for a listener that has not read them yet; beyond, the oldest are dropped.
const CAPACITY: usize = 4096;

/// One decision of the live trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DecisionEvent {
    /// When it was decided (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// Who asked.
    pub caller: TracedCaller,
    /// Listing or calling.
    pub phase: Phase,
    /// The action (`call_tool`, `read_resource`, `get_prompt`).
    pub action: Action,
    /// The item's id: tool name, resource URI or prompt name.
    pub item: String,
    /// The answer in force.
    #[serde(flatten)]
    pub answer: TracedAnswer,
    /// Whether a decision cache answered (then a list decision names no policies).
    pub cached: bool,
    /// The shadow policies' answer, when a shadow set is loaded (never used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<TracedShadow>,
}

/// The caller of a traced decision: ids only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TracedCaller {
    /// Tenant id (`tid`).
    pub tenant: String,
    /// Object id (`oid`) of the user or the application's service principal.
    pub oid: String,
    /// An app-only token.
    pub app_only: bool,
    /// The client application (`azp`/`appid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_app: Option<String>,
    /// Sign-in name (`upn`, else `preferred_username`), for people reading the trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
}

/// An outcome with its determining policies and obligations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TracedAnswer {
    /// `"allow"` or `"deny"`.
    pub decision: Outcome,
    /// The determining policies (none for a default deny or a cached list decision).
    pub policies: Vec<String>,
    /// Fields removed from results (`@redact`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// The message a denied caller sees (`@reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step-up offered (`@step_up`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_up: Option<String>,
    /// Policies that failed to evaluate (their messages are not shown).
    #[serde(skip_serializing_if = "is_zero")]
    pub errors: usize,
}

/// The shadow policies' answer to a traced decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TracedShadow {
    /// Whether it gives the same outcome and obligations as the policies in force.
    pub agrees: bool,
    /// The answer.
    #[serde(flatten)]
    pub answer: TracedAnswer,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Allow or deny, as traced and filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Permitted.
    Allow,
    /// Not permitted.
    Deny,
}

impl TracedAnswer {
    pub(crate) fn of(decision: &Decision) -> Self {
        match decision {
            Decision::Allow(a) => Self {
                decision: Outcome::Allow,
                policies: a.policies.clone(),
                redact: a.redact.clone(),
                reason: None,
                step_up: None,
                errors: 0,
            },
            Decision::Deny(d) => Self {
                decision: Outcome::Deny,
                policies: d.policies.clone(),
                redact: Vec::new(),
                reason: d.reason.clone(),
                step_up: d.step_up.clone(),
                errors: d.errors.len(),
            },
        }
    }

    /// A list decision known only by its flag (from a cache).
    pub(crate) fn flag(allowed: bool) -> Self {
        Self {
            decision: if allowed {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            policies: Vec::new(),
            redact: Vec::new(),
            reason: None,
            step_up: None,
            errors: 0,
        }
    }
}

impl TracedCaller {
    fn of(principal: &Principal) -> Self {
        Self {
            tenant: principal.tenant_id().to_owned(),
            oid: principal.object_id().to_owned(),
            app_only: principal.is_app_only(),
            client_app: principal.app_id().map(str::to_owned),
            upn: principal.upn().map(str::to_owned),
        }
    }
}

impl DecisionEvent {
    pub(crate) fn new(
        principal: &Principal,
        item: &Item,
        phase: Phase,
        answer: TracedAnswer,
        cached: bool,
        shadow: Option<TracedShadow>,
    ) -> Self {
        Self {
            at_ms: super::unix_now_ms(),
            caller: TracedCaller::of(principal),
            phase,
            action: item.action(),
            item: item.id().to_owned(),
            answer,
            cached,
            shadow,
        }
    }
}

/// Which events a listener wants. Every given field must match; none given: everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TraceFilter {
    /// The caller's object id, client application id, or sign-in name (case-insensitive).
    pub caller: Option<String>,
    /// The item's id (tool name, resource URI, prompt name).
    pub item: Option<String>,
    /// `allow` or `deny`.
    pub outcome: Option<Outcome>,
    /// `list` or `call`.
    pub phase: Option<Phase>,
    /// Only decisions where the shadow policies answer differently.
    #[serde(default)]
    pub disagreements: bool,
}

impl TraceFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &DecisionEvent) -> bool {
        let caller = self.caller.as_deref().is_none_or(|c| {
            let c = c.trim();
            let is = |v: &str| v.eq_ignore_ascii_case(c);
            is(&event.caller.oid)
                || event.caller.client_app.as_deref().is_some_and(is)
                || event.caller.upn.as_deref().is_some_and(is)
        });
        caller
            && self.item.as_deref().is_none_or(|i| i == event.item)
            && self.outcome.is_none_or(|o| o == event.answer.decision)
            && self.phase.is_none_or(|p| p == event.phase)
            && (!self.disagreements || event.shadow.as_ref().is_some_and(|s| !s.agrees))
    }
}

/// Why [`DecisionTrace::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The listener fell behind and this many events were dropped; later ones follow.
    #[error("{0} decision events dropped: the listener fell behind")]
    Lagged(u64),
    /// The engine is gone.
    #[error("the policy engine stopped")]
    Closed,
}

/// A listener of the live decision trace. Events are produced while at least one exists.
#[derive(Debug)]
pub struct DecisionTrace {
    rx: broadcast::Receiver<Arc<DecisionEvent>>,
    listeners: Arc<AtomicUsize>,
}

impl DecisionTrace {
    /// The next decision.
    ///
    /// # Errors
    ///
    /// [`TraceError::Lagged`] when events were dropped because this listener fell behind
    /// (call again for the next ones); [`TraceError::Closed`] when the engine is gone.
    pub async fn recv(&mut self) -> Result<Arc<DecisionEvent>, TraceError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => TraceError::Lagged(n),
            broadcast::error::RecvError::Closed => TraceError::Closed,
        })
    }

    /// The next decision if one is waiting, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv); `Ok(None)` when nothing is waiting.
    pub fn try_recv(&mut self) -> Result<Option<Arc<DecisionEvent>>, TraceError> {
        match self.rx.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(TraceError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(TraceError::Closed),
        }
    }
}

impl Drop for DecisionTrace {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending side, owned by the engine.
#[derive(Debug)]
pub(crate) struct Tracer {
    tx: broadcast::Sender<Arc<DecisionEvent>>,
    /// Live [`DecisionTrace`]s: the hot path reads only this.
    listeners: Arc<AtomicUsize>,
}

impl Tracer {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::Sender::new(CAPACITY),
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens (one relaxed load: a listener that subscribes concurrently
    /// may miss a decision being made at that moment).
    #[inline]
    pub(crate) fn listening(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn send(&self, event: DecisionEvent) {
        // An error only means every listener left meanwhile.
        let _ = self.tx.send(Arc::new(event));
    }

    pub(crate) fn subscribe(&self) -> DecisionTrace {
        // Subscribe first, count second: a counted listener always has a receiver.
        let rx = self.tx.subscribe();
        self.listeners.fetch_add(1, Ordering::Relaxed);
        DecisionTrace {
            rx,
            listeners: self.listeners.clone(),
        }
    }
}
