//! Shadow policies: a second policy set that answers every decision alongside the policies
//! in force, for comparison only ([`PolicyEngine::with_shadow`](super::PolicyEngine::with_shadow)).
//!
//! The shadow answer is never used. When it differs from the answer in force, in outcome
//! (allow against deny, either way) or in obligations (`@redact`, `@reason`, `@step_up`),
//! the disagreement is counted by phase and direction, and by item, and logged as an audit
//! event (target `idguard::audit`, `event = "shadow_disagreement"`) with both outcomes and
//! the determining policies of each, never tokens or argument values. Call-phase
//! disagreements are logged every time (like call decisions); a list-phase disagreement is
//! logged once per caller, item and pair of policy epochs a minute, since lists repeat.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use serde::Serialize;

use super::{Action, Decision, Item, Phase, PolicyEngine};
use crate::principal::Principal;

/// Distinct items whose disagreements are counted one by one; the rest count as one.
const ITEMS: usize = 1000;

/// The item label of disagreements beyond `ITEMS` distinct items.
pub const OTHER_ITEMS: &str = "(other)";

/// How a shadow answer differs from the answer in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disagreement {
    /// The policies in force allow, the shadow policies deny.
    EnforcedAllowShadowDeny,
    /// The policies in force deny, the shadow policies allow.
    EnforcedDenyShadowAllow,
    /// Same outcome, other obligations (redaction, reason or step-up).
    Obligations,
}

impl Disagreement {
    /// All kinds, in counter order.
    pub const ALL: [Disagreement; 3] = [
        Disagreement::EnforcedAllowShadowDeny,
        Disagreement::EnforcedDenyShadowAllow,
        Disagreement::Obligations,
    ];

    /// The metrics label: `enforced_allow_shadow_deny`, `enforced_deny_shadow_allow`,
    /// `obligations`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disagreement::EnforcedAllowShadowDeny => "enforced_allow_shadow_deny",
            Disagreement::EnforcedDenyShadowAllow => "enforced_deny_shadow_allow",
            Disagreement::Obligations => "obligations",
        }
    }

    fn index(self) -> usize {
        match self {
            Disagreement::EnforcedAllowShadowDeny => 0,
            Disagreement::EnforcedDenyShadowAllow => 1,
            Disagreement::Obligations => 2,
        }
    }

    /// How `shadow` differs from `enforced`, decisions of `phase`, if it does. List
    /// decisions only show or hide an item, so only their outcome counts.
    pub fn between(phase: Phase, enforced: &Decision, shadow: &Decision) -> Option<Self> {
        if phase == Phase::List {
            return Self::between_flags(enforced.is_allow(), shadow.is_allow());
        }
        match (enforced, shadow) {
            (Decision::Allow(_), Decision::Deny(_)) => Some(Self::EnforcedAllowShadowDeny),
            (Decision::Deny(_), Decision::Allow(_)) => Some(Self::EnforcedDenyShadowAllow),
            (Decision::Allow(a), Decision::Allow(b)) => {
                (!same_fields(&a.redact, &b.redact)).then_some(Self::Obligations)
            }
            (Decision::Deny(a), Decision::Deny(b)) => {
                (a.reason != b.reason || a.step_up != b.step_up).then_some(Self::Obligations)
            }
        }
    }

    /// Between two list flags (lists have no obligations).
    fn between_flags(enforced: bool, shadow: bool) -> Option<Self> {
        match (enforced, shadow) {
            (true, false) => Some(Self::EnforcedAllowShadowDeny),
            (false, true) => Some(Self::EnforcedDenyShadowAllow),
            _ => None,
        }
    }
}

/// Redactions are sets: the order in which policies name fields does not matter.
fn same_fields(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|f| b.contains(f))
}

/// Comparison counters of a shadow set, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShadowStats {
    /// List-phase decisions compared (one per listed item).
    pub list_compared: u64,
    /// Call-phase decisions compared.
    pub call_compared: u64,
    /// List-phase disagreements, by [`Disagreement::ALL`] order.
    pub list_disagreements: [u64; 3],
    /// Call-phase disagreements, by [`Disagreement::ALL`] order.
    pub call_disagreements: [u64; 3],
    /// Disagreements (both phases) per item, sorted by action and item id; items beyond
    /// the first thousand count under [`OTHER_ITEMS`].
    pub items: Vec<ItemDisagreements>,
}

/// Disagreements about one item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ItemDisagreements {
    /// The item's action.
    pub action: Action,
    /// The item's id, or [`OTHER_ITEMS`].
    pub item: String,
    /// Counts by [`Disagreement::ALL`] order.
    pub counts: [u64; 3],
}

type Hasher = foldhash::fast::RandomState;

/// A shadow set with its comparison state.
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) engine: PolicyEngine,
    compared: [AtomicU64; 2],
    disagreements: [[AtomicU64; 3]; 2],
    items: Mutex<HashMap<(Action, String), [u64; 3]>>,
    /// List-phase disagreements logged lately (a hash of caller, item and epochs).
    reported: Cache<u64, (), Hasher>,
    hasher: Hasher,
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::List => 0,
        Phase::Call => 1,
    }
}

impl Shadow {
    pub(crate) fn new(engine: PolicyEngine) -> Self {
        Self {
            engine,
            compared: Default::default(),
            disagreements: Default::default(),
            items: Mutex::new(HashMap::new()),
            reported: Cache::builder()
                .name("idguard-shadow-reported")
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build_with_hasher(Hasher::default()),
            hasher: Hasher::default(),
        }
    }

    /// The shadow answer to a decision the policies in force made as `enforced`, compared
    /// and recorded. Returns the answer and whether the shadow's call cache gave it.
    pub(crate) fn check(
        &self,
        principal: &Principal,
        item: &Item,
        phase: Phase,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
        enforced: &Decision,
    ) -> (Decision, bool) {
        let (answer, cached) = self
            .engine
            .decide_counted(principal, item, phase, arguments);
        self.count_compared(phase, 1);
        if let Some(kind) = Disagreement::between(phase, enforced, &answer) {
            self.record(phase, item, kind);
            // A list decision made one at a time: logged like list disagreements.
            if phase == Phase::Call || self.first_report(0, principal, item) {
                audit(principal, item, phase, kind, enforced, &answer);
            }
        }
        (answer, cached)
    }

    /// Compares and records a list's flags: `enforced` by the policies in force, `shadow`
    /// by the shadow set.
    pub(crate) fn compare_list(
        &self,
        enforcing: &PolicyEngine,
        principal: &Principal,
        items: &[Item],
        enforced: &[bool],
        shadow: &[bool],
    ) {
        self.count_compared(Phase::List, items.len() as u64);
        if enforced == shadow {
            return;
        }
        for ((item, &mine), &theirs) in items.iter().zip(enforced).zip(shadow) {
            let Some(kind) = Disagreement::between_flags(mine, theirs) else {
                continue;
            };
            self.record(Phase::List, item, kind);
            if self.first_report(enforcing.epoch(), principal, item) {
                // Rare: decide both once more, for the policies that made each answer.
                let before = enforcing.decide_quiet(principal, item, Phase::List, None);
                let after = self.engine.decide_quiet(principal, item, Phase::List, None);
                audit(principal, item, Phase::List, kind, &before, &after);
            }
        }
    }

    fn count_compared(&self, phase: Phase, n: u64) {
        if let Some(c) = self.compared.get(phase_index(phase)) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn record(&self, phase: Phase, item: &Item, kind: Disagreement) {
        if let Some(c) = self
            .disagreements
            .get(phase_index(phase))
            .and_then(|p| p.get(kind.index()))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut items = self
            .items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (item.action(), item.id().to_owned());
        let key = if items.contains_key(&key) || items.len() < ITEMS {
            key
        } else {
            (item.action(), OTHER_ITEMS.to_owned())
        };
        if let Some(c) = items.entry(key).or_default().get_mut(kind.index()) {
            *c += 1;
        }
    }

    /// True the first time (in a minute) this caller's list disagreement about `item` under
    /// the current pair of epochs is seen.
    fn first_report(&self, epoch: u64, principal: &Principal, item: &Item) -> bool {
        let key = self.hasher.hash_one((
            epoch,
            self.engine.epoch(),
            principal.tenant_id(),
            principal.object_id(),
            principal.app_id(),
            principal.roles(),
            principal.groups(),
            item,
        ));
        if self.reported.contains_key(&key) {
            return false;
        }
        self.reported.insert(key, ());
        true
    }

    pub(crate) fn stats(&self) -> ShadowStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counts = |p: &[AtomicU64; 3]| p.each_ref().map(load);
        let [list, call] = &self.disagreements;
        let mut items: Vec<ItemDisagreements> = self
            .items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((action, item), counts)| ItemDisagreements {
                action: *action,
                item: item.clone(),
                counts: *counts,
            })
            .collect();
        items.sort_by(|a, b| (a.action.as_str(), &a.item).cmp(&(b.action.as_str(), &b.item)));
        let [list_compared, call_compared] = &self.compared;
        ShadowStats {
            list_compared: load(list_compared),
            call_compared: load(call_compared),
            list_disagreements: counts(list),
            call_disagreements: counts(call),
            items,
        }
    }
}

fn audit(
    principal: &Principal,
    item: &Item,
    phase: Phase,
    kind: Disagreement,
    enforced: &Decision,
    shadow: &Decision,
) {
    let outcome = |d: &Decision| if d.is_allow() { "allow" } else { "deny" };
    tracing::info!(
        target: "idguard::audit",
        event = "shadow_disagreement",
        tenant = principal.tenant_id(),
        oid = principal.object_id(),
        app_only = principal.is_app_only(),
        client_app = principal.app_id().unwrap_or_default(),
        action = item.action().as_str(),
        resource = item.id(),
        phase = phase.as_str(),
        disagreement = kind.as_str(),
        decision = outcome(enforced),
        policies = %enforced.policies().join(","),
        obligations = %super::obligations(enforced),
        shadow_decision = outcome(shadow),
        shadow_policies = %shadow.policies().join(","),
        shadow_obligations = %super::obligations(shadow),
    );
}
