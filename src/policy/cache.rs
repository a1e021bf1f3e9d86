//! The list-phase and call-phase decision caches, and the entities cache.
//!
//! Keyed by (policy epoch, caller's policy-relevant attributes); each entry maps items to
//! their list-phase decision. Listing the same items again for the same caller costs one
//! cache lookup and one hash lookup per item. A reload bumps the epoch, so old entries are
//! never consulted again (and age out). Entries live at most a minute, which bounds how
//! stale a list-phase decision that reads `context.now` can be. With a shadow policy set,
//! each entry also holds the shadow set's answer, keyed by the shadow set's epoch too: the
//! shadow comparison of a list seen before costs no lookup of its own.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use moka::sync::Cache;

use super::Decision;
use super::entities::{Item, Scene};
use crate::principal::Principal;

/// Everything about a caller that policies can read (the principal minus `exp`).
#[derive(Clone, Debug)]
struct CallerKey {
    epoch: u64,
    /// The shadow set's epoch (0: no shadow answers in this entry).
    shadow: u64,
    principal: Principal,
}

impl CallerKey {
    fn fields(&self) -> impl PartialEq + Hash + '_ {
        let p = &self.principal;
        (
            (self.epoch, self.shadow),
            p.tenant_id(),
            p.object_id(),
            p.app_id(),
            p.is_app_only(),
            (p.name(), p.upn(), p.email()),
            (p.scopes(), p.roles(), p.groups()),
            (p.auth_methods(), p.acrs()),
        )
    }
}

impl PartialEq for CallerKey {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.shadow == other.shadow
            && (self.principal.same(&other.principal) || self.fields() == other.fields())
    }
}

impl Eq for CallerKey {}

impl Hash for CallerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fields().hash(state);
    }
}

/// The per-caller map's hasher: fast on short keys, seeded per process (tool names come
/// from servers, so a fixed-key hash would invite collision floods).
type Hasher = foldhash::fast::RandomState;

/// A list decision: whether the policies in force show the item, and (with a shadow set)
/// whether the shadow set would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shown(u8);

impl Shown {
    const ENFORCED: u8 = 1;
    const SHADOW: u8 = 2;

    pub(crate) fn new(enforced: bool, shadow: bool) -> Self {
        Self((u8::from(enforced) * Self::ENFORCED) | (u8::from(shadow) * Self::SHADOW))
    }

    #[inline]
    pub(crate) fn enforced(self) -> bool {
        self.0 & Self::ENFORCED != 0
    }

    #[inline]
    pub(crate) fn shadow(self) -> bool {
        self.0 & Self::SHADOW != 0
    }
}

/// Item → decision for one caller. Items are shared (interned by [`ListCache::intern`]):
/// a caller's map holds a pointer and a flag per item, not a copy of every tool.
pub(crate) type Decisions = HashMap<Arc<Item>, Shown, Hasher>;

/// The flags of a whole list: the policies in force, and the shadow set's if there is one.
#[derive(Clone, Debug)]
pub(crate) struct ListFlags {
    pub(crate) enforced: Arc<[bool]>,
    pub(crate) shadow: Option<Arc<[bool]>>,
}

/// One caller's list decisions: per item, and for the few whole lists seen last.
#[derive(Debug, Default)]
pub(crate) struct CallerDecisions {
    items: RwLock<Decisions>,
    /// Flags of whole lists by list id (see [`super::PolicyEngine::visible_list`]), most
    /// recent first: a list seen again costs no per-item lookup.
    lists: RwLock<Vec<(u64, ListFlags)>>,
}

/// Whole lists remembered per caller (a server has a handful of distinct lists).
const REMEMBERED_LISTS: usize = 4;

impl CallerDecisions {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Decisions> {
        self.items
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Decisions> {
        self.items
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The flags of list `id`, if decided before.
    pub(crate) fn list(&self, id: u64) -> Option<ListFlags> {
        let lists = self
            .lists
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lists.iter().find(|(l, _)| *l == id).map(|(_, f)| f.clone())
    }

    pub(crate) fn remember_list(&self, id: u64, flags: ListFlags) {
        let mut lists = self
            .lists
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lists.retain(|(l, _)| *l != id);
        lists.insert(0, (id, flags));
        lists.truncate(REMEMBERED_LISTS);
    }
}

#[derive(Debug)]
pub(crate) struct ListCache {
    callers: Cache<CallerKey, Arc<CallerDecisions>, Hasher>,
    /// One shared copy of each item seen in a list.
    items: Cache<Item, Arc<Item>, Hasher>,
}

/// Distinct items kept for sharing (tools, resources and prompts of all servers).
const INTERNED_ITEMS: u64 = 100_000;

impl ListCache {
    pub(crate) fn new(callers: u64) -> Self {
        Self {
            callers: Cache::builder()
                .name("idguard-list-decisions")
                .max_capacity(callers)
                .time_to_live(Duration::from_secs(60))
                .build_with_hasher(Hasher::default()),
            items: Cache::builder()
                .name("idguard-list-items")
                .max_capacity(INTERNED_ITEMS)
                .time_to_idle(Duration::from_secs(600))
                .build_with_hasher(Hasher::default()),
        }
    }

    /// The shared copy of `item` (equal to it in every field).
    pub(crate) fn intern(&self, item: Item) -> Arc<Item> {
        if let Some(shared) = self.items.get(&item) {
            return shared;
        }
        let shared = Arc::new(item);
        self.items.get_with(Item::clone(&shared), || shared.clone())
    }

    /// The decisions of this caller under this epoch, and this shadow epoch (0 without a
    /// shadow set), empty at first.
    pub(crate) fn decisions(
        &self,
        epoch: u64,
        shadow: u64,
        principal: &Principal,
    ) -> Arc<CallerDecisions> {
        self.callers.get_with(
            CallerKey {
                epoch,
                shadow,
                principal: principal.clone(),
            },
            || Arc::new(CallerDecisions::default()),
        )
    }
}

/// Entities of (caller, one item), reused by repeated single decisions. Entities depend on
/// the caller and the item only, not on the policies, so no epoch is needed.
pub(crate) struct SceneCache {
    scenes: Cache<(CallerKey, Item), Arc<Scene>, Hasher>,
}

impl std::fmt::Debug for SceneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SceneCache")
            .field("entries", &self.scenes.entry_count())
            .finish()
    }
}

impl SceneCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            scenes: Cache::builder()
                .name("idguard-decision-entities")
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(300))
                .build_with_hasher(Hasher::default()),
        }
    }

    pub(crate) fn get(
        &self,
        principal: &Principal,
        item: &Item,
        build: impl FnOnce() -> Result<Scene, String>,
    ) -> Result<Arc<Scene>, String> {
        let key = (
            CallerKey {
                epoch: 0,
                shadow: 0,
                principal: principal.clone(),
            },
            item.clone(),
        );
        if let Some(scene) = self.scenes.get(&key) {
            return Ok(scene);
        }
        let scene = Arc::new(build()?);
        self.scenes.insert(key, scene.clone());
        Ok(scene)
    }
}

/// Call-phase decisions of (policy epoch, caller, item), for items whose applicable
/// policies read nothing of the request but the caller (no `context.arguments`, no
/// `context.now`: see `slice::reads_request`). Such a decision is a function of the key, so
/// reusing it is exact, not an approximation: there is no staleness to bound. A reload
/// bumps the epoch, so older entries are never consulted again; they age out after five
/// minutes or when the cache is full. Decisions that carry evaluation errors are never
/// stored.
///
/// Entries are found by a hash of their key and hold the key itself, compared on every
/// hit: a lookup copies nothing, and a hash collision is a miss (the later entry replaces
/// the earlier), never another caller's decision.
#[derive(Debug)]
pub(crate) struct CallCache {
    decisions: Cache<u64, Arc<CallEntry>, Hasher>,
    hasher: Hasher,
}

#[derive(Debug)]
struct CallEntry {
    caller: CallerKey,
    item: Item,
    decision: Decision,
}

impl CallCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            decisions: Cache::builder()
                .name("idguard-call-decisions")
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(300))
                .build_with_hasher(Hasher::default()),
            hasher: Hasher::default(),
        }
    }

    fn key(&self, epoch: u64, principal: &Principal, item: &Item) -> (u64, CallerKey) {
        let caller = CallerKey {
            epoch,
            shadow: 0,
            principal: principal.clone(),
        };
        (self.hasher.hash_one((&caller, item)), caller)
    }

    pub(crate) fn get(&self, epoch: u64, principal: &Principal, item: &Item) -> Option<Decision> {
        let (hash, caller) = self.key(epoch, principal, item);
        let entry = self.decisions.get(&hash)?;
        (entry.caller == caller && entry.item == *item).then(|| entry.decision.clone())
    }

    pub(crate) fn insert(
        &self,
        epoch: u64,
        principal: &Principal,
        item: &Item,
        decision: Decision,
    ) {
        let (hash, caller) = self.key(epoch, principal, item);
        let entry = CallEntry {
            caller,
            item: item.clone(),
            decision,
        };
        self.decisions.insert(hash, Arc::new(entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Denied, ToolInfo};

    fn principal(oid: &str) -> Principal {
        Principal::from_unvalidated_claims(&serde_json::json!({"tid": "t", "oid": oid, "scp": "x"}))
            .unwrap()
    }

    #[test]
    fn a_call_entry_answers_only_its_own_key() {
        let cache = CallCache::new(10);
        let (a, b) = (principal("a"), principal("b"));
        let item = Item::Tool(ToolInfo::new("t"));
        cache.insert(1, &a, &item, Decision::Deny(Denied::default()));
        assert!(cache.get(1, &a, &item).is_some());
        // The same caller from another token (another instance, equal fields) hits.
        assert!(cache.get(1, &principal("a"), &item).is_some());
        assert!(cache.get(2, &a, &item).is_none());
        assert!(cache.get(1, &a, &Item::Tool(ToolInfo::new("u"))).is_none());
        // A forged collision: a's entry under b's hash is not b's decision.
        let (ha, _) = cache.key(1, &a, &item);
        let (hb, _) = cache.key(1, &b, &item);
        let entry = cache.decisions.get(&ha).unwrap();
        cache.decisions.insert(hb, entry);
        assert!(cache.get(1, &b, &item).is_none());
    }
}
