//! Hot reload: watch the plugin directory and swap in new versions.
//!
//! Events are debounced per plugin ([`DEBOUNCE`] of quiet), then the plugin is reloaded
//! off the async workers (`spawn_blocking`: read, hash, compile, validate, swap). A file
//! that fails is rejected with one error line and the previous version keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Runtime, valid_name};

/// Quiet period after the last event on a plugin's files before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Events queued between the watcher's thread and the reload loop. When it is full the
/// watcher's thread waits; the kernel queues events meanwhile and reports an overflow of its
/// own queue as a rescan, which reconciles the whole directory.
const EVENT_BUFFER: usize = 1_024;

/// The plugin name a path in the (non-recursively) watched directory belongs to
/// (`NAME.wasm` or `NAME.toml`).
fn plugin_of(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    if ext != "wasm" && ext != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    valid_name(stem).then(|| stem.to_string())
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        // Our own reads of the files must not trigger reloads.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn names_in_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension().and_then(|x| x.to_str()) == Some("wasm"))
                .then(|| plugin_of(&p))
                .flatten()
        })
        .collect()
}

impl Runtime {
    /// Watches `dir` and keeps the loaded plugins in line with it: a new or changed
    /// `NAME.wasm` / `NAME.toml` is (re)loaded, a removed `NAME.wasm` unloads `NAME`.
    /// On start it reconciles the directory once (so files that landed after
    /// [`Runtime::load_dir`] are not missed). Stops when `cancel` fires or the runtime
    /// is dropped. Must be called within a tokio runtime.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        dir: PathBuf,
        cancel: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let (tx, rx) = mpsc::channel::<notify::Result<Event>>(EVENT_BUFFER);
        let mut watcher = notify::recommended_watcher(move |ev| {
            // On the watcher's own thread, never a tokio worker. Fails only once the loop has
            // stopped.
            let _ = tx.blocking_send(ev);
        })
        .context("cannot create the plugin directory watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch plugin directory {}", dir.display()))?;

        let initial = self.names_known_in(&dir);
        let weak = Arc::downgrade(self);
        tracing::info!(dir = %dir.display(), "watching plugin directory for changes");
        Ok(tokio::spawn(async move {
            // Keep the watcher alive as long as the loop runs.
            let _watcher = watcher;
            watch_loop(weak, dir, rx, cancel, initial).await;
        }))
    }

    /// Every plugin with a `NAME.wasm` in `dir` or loaded from it.
    fn names_known_in(&self, dir: &Path) -> Vec<String> {
        let mut names = names_in_dir(dir);
        names.extend(self.registry.names_in(dir));
        names
    }
}

async fn watch_loop(
    runtime: Weak<Runtime>,
    dir: PathBuf,
    mut rx: mpsc::Receiver<notify::Result<Event>>,
    cancel: CancellationToken,
    initial: Vec<String>,
) {
    // The first reconcile waits out the same quiet period as an event: a file still being
    // written when the watch began is read once its writes have stopped.
    let first = Instant::now() + DEBOUNCE;
    let mut pending: HashMap<String, Instant> = initial.into_iter().map(|n| (n, first)).collect();
    loop {
        let next_due = pending.values().min().copied();
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = rx.recv() => match ev {
                None => break,
                Some(Ok(ev)) => {
                    if ev.need_rescan() {
                        // Events were dropped (the kernel's queue overflowed): reconcile all.
                        tracing::warn!(dir = %dir.display(), "plugin directory events were lost; rescanning it");
                        let Some(rt) = runtime.upgrade() else { return };
                        let at = Instant::now() + DEBOUNCE;
                        for name in rt.names_known_in(&dir) {
                            pending.insert(name, at);
                        }
                    } else if relevant(&ev.kind) {
                        for p in &ev.paths {
                            if let Some(name) = plugin_of(p) {
                                pending.insert(name, Instant::now() + DEBOUNCE);
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(dir = %dir.display(), "plugin directory watch error: {e}"),
            },
            _ = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                let mut due: Vec<String> = pending
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(n, _)| n.clone())
                    .collect();
                due.sort();
                for name in due {
                    pending.remove(&name);
                    let Some(rt) = runtime.upgrade() else { return };
                    let d = dir.clone();
                    let reloaded = tokio::task::spawn_blocking(move || rt.reload(&d, &name)).await;
                    if let Err(e) = reloaded {
                        tracing::error!(dir = %dir.display(), "plugin reload task failed: {e}");
                    }
                    if cancel.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_from_paths() {
        assert_eq!(
            plugin_of(Path::new("/p/notify.wasm")).as_deref(),
            Some("notify")
        );
        assert_eq!(
            plugin_of(Path::new("/p/notify.toml")).as_deref(),
            Some("notify")
        );
        assert_eq!(plugin_of(Path::new("/p/notify.wasm.tmp")), None);
        assert_eq!(plugin_of(Path::new("/p/.notify.wasm.swp")), None);
        assert_eq!(plugin_of(Path::new("/p/a b.wasm")), None);
    }

    #[tokio::test]
    async fn a_rescan_reconciles_the_whole_directory() {
        let services = Arc::new(crate::MemoryServices::new());
        let cfg = crate::RuntimeConfig {
            max_instances: 2,
            ..crate::RuntimeConfig::default()
        };
        let rt = Runtime::new(cfg, services).expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        let watching = tokio::spawn(watch_loop(
            Arc::downgrade(&rt),
            dir.path().to_path_buf(),
            rx,
            cancel.clone(),
            Vec::new(),
        ));
        // A plugin file lands and its events are lost; the watcher is told to rescan.
        let guest = Path::new(env!("KAIROS_TEST_GUESTS_DIR")).join("noop.wasm");
        std::fs::copy(&guest, dir.path().join("quiet.wasm")).expect("copy guest");
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        tx.send(Ok(rescan)).await.expect("loop running");
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.resolve("quiet", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "the rescan did not load the plugin"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        watching.await.expect("loop joined");
    }
}
