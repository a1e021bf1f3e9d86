//! Hot reload: watch the policy directory and reload on change.
//!
//! The watcher polls the directory's `*.cedar` and `*.cedarschema` files every interval
//! and compares, for each name, what it points to: the resolved path (symbolic links
//! followed), the inode, the size and the modification time. Polling needs no file events,
//! so it works where none arrive (network file systems, some container mounts) and is
//! indifferent to how editors save (rename, truncate, rewrite). Following links matters
//! for a Kubernetes ConfigMap or Secret volume: each file there is a link
//! `x.cedar -> ..data/x.cedar`, and an update swaps the `..data` link to a new directory
//! in one rename, leaving the links themselves untouched; the resolved path changes with
//! the swap.
//!
//! A change is reloaded once the files have stopped changing for one poll interval
//! (debounce). Reloading is parse → validate → swap: a broken edit keeps the policies in
//! force and is reported in [`PolicyEngine::status`](super::PolicyEngine::status).
//! Requests in flight keep the snapshot they started with.

use std::path::{Path, PathBuf};
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

/// What the watcher compares between polls, per file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    name: String,
    /// Where the name leads once every link is followed (`None`: a dangling link).
    target: Option<PathBuf>,
    /// Device and inode of the target (Unix), so a file replaced in place is noticed even
    /// when size and modification time match.
    inode: Option<(u64, u64)>,
    len: u64,
    modified: Option<SystemTime>,
}

type Fingerprint = Vec<Seen>;

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
        .map(|e| {
            let path = e.path();
            // `metadata` follows links (a `DirEntry`'s own metadata would describe the link).
            let meta = std::fs::metadata(&path).ok();
            Seen {
                name: e.file_name().to_string_lossy().into_owned(),
                target: std::fs::canonicalize(&path).ok(),
                inode: meta.as_ref().and_then(inode),
                len: meta.as_ref().map_or(0, std::fs::Metadata::len),
                modified: meta.and_then(|m| m.modified().ok()),
            }
        })
        .collect();
    files.sort();
    files
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A Kubernetes-style volume: `x.cedar -> ..data/x.cedar`, `..data -> ..v1`.
    #[test]
    fn a_swapped_data_link_changes_the_fingerprint() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("idguard-fp-{}", uuid::Uuid::new_v4()));
        for v in ["..v1", "..v2"] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            // Same size and (very likely) the same modification time in both versions.
            std::fs::write(dir.join(v).join("x.cedar"), format!("// {v}\n")).unwrap();
        }
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/x.cedar", dir.join("x.cedar")).unwrap();
        let before = fingerprint(&dir);
        assert_eq!(before.len(), 1, "{before:?}");
        assert!(before[0].target.as_ref().unwrap().ends_with("..v1/x.cedar"));

        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let after = fingerprint(&dir);
        assert_ne!(before, after);
        assert!(after[0].target.as_ref().unwrap().ends_with("..v2/x.cedar"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
