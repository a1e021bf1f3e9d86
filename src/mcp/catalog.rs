//! What idguard knows about the server's tools: annotations and tags by name, learned from
//! every `tools/list` reply that passes through, so a `tools/call` can be decided with the
//! tool's real annotations.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::sync::Cache;

use super::filter::Shape;
use super::jsonrpc::ListKind;
use crate::policy::ToolInfo;

/// How long a parsed list result is used: as long as the catalog keeps the tools it learned
/// from it.
pub(crate) const SHAPE_TTL: Duration = Duration::from_secs(600);

/// How long a name the server did not list is answered as unknown without asking again.
pub(crate) const UNLISTED_TTL: Duration = Duration::from_secs(30);

/// How many recently used list results are tried before a reply is parsed.
pub(crate) const RECENT_SHAPES: usize = 4;

/// Tool metadata by name. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct ToolCatalog {
    tools: Cache<String, ToolInfo>,
    /// Fingerprint of the last list learned: the same list again costs no inserts.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Names the server did not list when last asked: a call to one is refused without
    /// asking again for a short while.
    unlisted: Cache<String, ()>,
    /// Parsed list results by content.
    shapes: Cache<u64, Arc<Shape>>,
    /// The shapes used last, most recent first: a reply that ends with one of these results
    /// is filtered without parsing or hashing the result (`ReplyRewriter`).
    recent: Arc<ArcSwap<Vec<Arc<Shape>>>>,
    /// Hashes list results (tens of KiB each) for `shapes` and `last`: foldhash is several
    /// times faster than SipHash on long inputs, and a collision costs nothing but a miss
    /// (a shape is used only if its text equals the result).
    hasher: foldhash::fast::RandomState,
}

impl ToolCatalog {
    /// A catalog of the default sizes.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_capacities(&super::McpCacheCapacities::default())
    }

    /// A catalog of at most `catalog_tools` tools, `unlisted_tools` unlisted names and
    /// `list_results` parsed list results.
    pub(crate) fn with_capacities(capacities: &super::McpCacheCapacities) -> Self {
        Self {
            tools: Cache::builder()
                .name("idguard-tool-catalog")
                .max_capacity(capacities.catalog_tools())
                .time_to_live(SHAPE_TTL)
                .build(),
            last: std::sync::Arc::default(),
            unlisted: Cache::builder()
                .name("idguard-unlisted-tools")
                .max_capacity(capacities.unlisted_tools())
                .time_to_live(UNLISTED_TTL)
                .build(),
            shapes: Cache::builder()
                .name("idguard-list-shapes")
                .max_capacity(capacities.list_results())
                .time_to_live(SHAPE_TTL)
                .build(),
            recent: Arc::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The list results used last, most recent first (at most [`RECENT_SHAPES`]).
    pub(crate) fn recent(&self) -> arc_swap::Guard<Arc<Vec<Arc<Shape>>>> {
        self.recent.load()
    }

    /// Puts `shape` first among the recent shapes (no write when it already is).
    fn remember(&self, shape: &Arc<Shape>) {
        if self
            .recent
            .load()
            .first()
            .is_some_and(|s| Arc::ptr_eq(s, shape))
        {
            return;
        }
        self.recent.rcu(|old| {
            let mut next = Vec::with_capacity(RECENT_SHAPES);
            next.push(shape.clone());
            next.extend(
                old.iter()
                    .filter(|s| !Arc::ptr_eq(s, shape))
                    .take(RECENT_SHAPES - 1)
                    .cloned(),
            );
            next
        });
    }

    pub(crate) fn get(&self, name: &str) -> Option<ToolInfo> {
        self.tools.get(name)
    }

    /// Whether the server did not list `name` when last asked (within [`UNLISTED_TTL`]).
    pub(crate) fn is_unlisted(&self, name: &str) -> bool {
        self.unlisted.contains_key(name)
    }

    /// Remembers that the server does not list `name`.
    pub(crate) fn unlisted(&self, name: &str) {
        self.unlisted.insert(name.to_owned(), ());
    }

    /// The shape of a list result: from the cache when this exact result was seen before,
    /// else computed by `compute` (and cached).
    pub(crate) fn shape(
        &self,
        kind: ListKind,
        result: &str,
        compute: impl FnOnce() -> Option<Shape>,
    ) -> Option<Arc<Shape>> {
        let key = self.hasher.hash_one((kind as u8, result));
        if let Some(shape) = self.shapes.get(&key)
            && shape.kind == kind
            && &*shape.result == result
        {
            self.remember(&shape);
            return Some(shape);
        }
        let shape = Arc::new(compute()?);
        self.shapes.insert(key, shape.clone());
        self.remember(&shape);
        Some(shape)
    }

    pub(crate) fn learn(&self, tools: impl IntoIterator<Item = ToolInfo>) {
        use std::sync::atomic::Ordering;
        let tools: Vec<ToolInfo> = tools.into_iter().collect();
        let fingerprint = self.hasher.hash_one(&tools);
        // Entries expire: refresh them at least when the list changes, or every time the
        // same list was last learned long ago (the cache answers `None` then).
        let known = self.last.load(Ordering::Relaxed) == fingerprint
            && tools
                .first()
                .is_none_or(|t| self.tools.contains_key(&t.name));
        if known {
            return;
        }
        for t in tools {
            self.unlisted.invalidate(&t.name);
            self.tools.insert(t.name.clone(), t);
        }
        self.last.store(fingerprint, Ordering::Relaxed);
    }
}
