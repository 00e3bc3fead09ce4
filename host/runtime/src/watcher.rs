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
        let (tx, rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .context("cannot create the plugin directory watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch plugin directory {}", dir.display()))?;

        let mut initial: Vec<String> = names_in_dir(&dir);
        initial.extend(self.registry.names_in(&dir));
        let weak = Arc::downgrade(self);
        tracing::info!(dir = %dir.display(), "watching plugin directory for changes");
        Ok(tokio::spawn(async move {
            // Keep the watcher alive as long as the loop runs.
            let _watcher = watcher;
            watch_loop(weak, dir, rx, cancel, initial).await;
        }))
    }
}

async fn watch_loop(
    runtime: Weak<Runtime>,
    dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<notify::Result<Event>>,
    cancel: CancellationToken,
    initial: Vec<String>,
) {
    let now = Instant::now();
    let mut pending: HashMap<String, Instant> = initial.into_iter().map(|n| (n, now)).collect();
    loop {
        let next_due = pending.values().min().copied();
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = rx.recv() => match ev {
                None => break,
                Some(Ok(ev)) => {
                    if relevant(&ev.kind) {
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
}
