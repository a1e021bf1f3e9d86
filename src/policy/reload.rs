//! Hot reload: watch the policy directory and reload on change.
//!
//! The watcher polls the directory's `*.cedar` and `*.cedarschema` files (names, sizes,
//! modification times) — portable, and indifferent to how editors save (rename, truncate,
//! rewrite). A change is reloaded once the files have stopped changing for one poll
//! interval (debounce). Reloading is parse → validate → swap: a broken edit keeps the
//! policies in force and is reported in [`PolicyEngine::status`](super::PolicyEngine::status).
//! Requests in flight keep the snapshot they started with.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use super::{Inner, PolicyEngine};

/// A running policy watcher. Stops when dropped (or when the engine is dropped).
#[derive(Debug)]
pub struct PolicyWatch {
    task: JoinHandle<()>,
}

impl Drop for PolicyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the watcher compares between polls.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "cedar" || x == "cedarschema")
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                meta.len(),
                meta.modified().ok(),
            ))
        })
        .collect();
    files.sort();
    files
}

impl PolicyEngine {
    /// Starts watching the policy directory, polling every `interval` (250 ms is a good
    /// default). Needs a tokio runtime. Without a directory there is nothing to watch and
    /// the watcher ends at once.
    pub fn watch(&self, interval: Duration) -> PolicyWatch {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let dir = self.inner.dir.clone();
        // Taken now, not when the task first runs, so edits right after `watch` count.
        let first = dir.as_deref().map(fingerprint);
        let task = tokio::spawn(async move {
            let (Some(dir), Some(mut last)) = (dir, first) else {
                return;
            };
            let mut pending: Option<Fingerprint> = None;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = fingerprint(&dir);
                match pending.take() {
                    // Unchanged since the last poll that saw a change: settled, reload.
                    Some(seen) if seen == now => {
                        let Some(engine) = upgrade(&weak) else { return };
                        // Parsing and validation are CPU work: keep them off the reactor.
                        let _ = tokio::task::spawn_blocking(move || engine.reload()).await;
                        last = now;
                    }
                    _ if now != last => pending = Some(now),
                    _ => {}
                }
            }
        });
        PolicyWatch { task }
    }
}

fn upgrade(weak: &Weak<Inner>) -> Option<PolicyEngine> {
    weak.upgrade().map(|inner| PolicyEngine { inner })
}
