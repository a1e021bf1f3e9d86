//! What idguard knows about the server's tools: annotations and tags by name, learned from
//! every `tools/list` reply that passes through, so a `tools/call` can be decided with the
//! tool's real annotations.

use std::hash::BuildHasher as _;
use std::time::Duration;

use moka::sync::Cache;

use super::filter::Shape;
use super::jsonrpc::ListKind;
use crate::policy::ToolInfo;

/// Tool metadata by name. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct ToolCatalog {
    tools: Cache<String, ToolInfo>,
    /// Fingerprint of the last list learned: the same list again costs no inserts.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Parsed list results by content.
    shapes: Cache<u64, std::sync::Arc<Shape>>,
    /// Hashes list results (tens of KiB each) for `shapes` and `last`: foldhash is several
    /// times faster than SipHash on long inputs, and a collision costs nothing but a miss
    /// (a shape is used only if its text equals the result).
    hasher: foldhash::fast::RandomState,
}

impl ToolCatalog {
    pub(crate) fn new() -> Self {
        Self {
            tools: Cache::builder()
                .name("idguard-tool-catalog")
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            last: std::sync::Arc::default(),
            shapes: Cache::builder()
                .name("idguard-list-shapes")
                .max_capacity(64)
                .time_to_live(Duration::from_secs(600))
                .build(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<ToolInfo> {
        self.tools.get(name)
    }

    /// The shape of a list result: from the cache when this exact result was seen before,
    /// else computed by `compute` (and cached).
    pub(crate) fn shape(
        &self,
        kind: ListKind,
        result: &str,
        compute: impl FnOnce() -> Option<Shape>,
    ) -> Option<std::sync::Arc<Shape>> {
        let key = self.hasher.hash_one((kind as u8, result));
        if let Some(shape) = self.shapes.get(&key)
            && shape.kind == kind
            && &*shape.result == result
        {
            return Some(shape);
        }
        let shape = std::sync::Arc::new(compute()?);
        self.shapes.insert(key, shape.clone());
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
            self.tools.insert(t.name.clone(), t);
        }
        self.last.store(fingerprint, Ordering::Relaxed);
    }
}
