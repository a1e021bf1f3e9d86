//! What idguard knows about the server's tools: annotations and tags by name, learned from
//! every `tools/list` reply that passes through, so a `tools/call` can be decided with the
//! tool's real annotations.

use std::time::Duration;

use moka::sync::Cache;

use crate::policy::ToolInfo;

/// Tool metadata by name. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct ToolCatalog {
    tools: Cache<String, ToolInfo>,
}

impl ToolCatalog {
    pub(crate) fn new() -> Self {
        Self {
            tools: Cache::builder()
                .name("idguard-tool-catalog")
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<ToolInfo> {
        self.tools.get(name)
    }

    pub(crate) fn learn(&self, tools: impl IntoIterator<Item = ToolInfo>) {
        for t in tools {
            self.tools.insert(t.name.clone(), t);
        }
    }
}
