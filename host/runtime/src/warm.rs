//! Idle instances kept for plugins that opt into `reuse_instances`: one per (plugin version,
//! ordering key), bounded in number and age, each holding its share of the memory budget.
//!
//! An instance goes back to the pool only after a successful task, and only while it has
//! served fewer than `reuse_instances` tasks. It is dropped when it is older than
//! [`MAX_IDLE`] unused, when the pool is full (the least recently used goes), when its plugin
//! has a newer version, and when an attempt needs memory the idle instances hold.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;

use crate::bindings::TaskPlugin;
use crate::host_impl::StoreState;
use crate::logs::CapturePipe;
use crate::registry::PluginVersion;

/// Longest an instance waits unused for its key's next task.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(60);

/// How many idle instances a runtime with `max_instances` pool slots keeps: a quarter of the
/// slots, so running attempts always find room.
pub(crate) fn warm_capacity(max_instances: u32) -> usize {
    (max_instances / 4) as usize
}

/// A live instance between tasks.
pub(crate) struct Warm {
    pub(crate) store: Store<StoreState>,
    pub(crate) plugin: TaskPlugin,
    pub(crate) stdout: CapturePipe,
    pub(crate) stderr: CapturePipe,
    /// Tasks it has served.
    pub(crate) served: u32,
    /// Its plugin's `memory_mb` of the node's budget, held while it lives.
    pub(crate) permit: OwnedSemaphorePermit,
}

struct Idle {
    version: Arc<PluginVersion>,
    key: String,
    since: Instant,
    warm: Warm,
}

pub(crate) struct WarmPool {
    capacity: usize,
    /// Least recently returned first.
    idle: Mutex<VecDeque<Idle>>,
    /// `idle.len()`, read without the lock.
    count: AtomicUsize,
}

impl WarmPool {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            idle: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The idle instance of `version` for `key`, if there is one. Drops expired instances
    /// and those of other versions of the same plugin.
    pub(crate) fn take(&self, version: &Arc<PluginVersion>, key: &str) -> Option<Warm> {
        let (found, dropped) = {
            let mut idle = self.lock();
            let dropped = self.drain_where(&mut idle, |i| {
                i.version.name == version.name && !Arc::ptr_eq(&i.version, version)
            });
            let found = idle
                .iter()
                .position(|i| Arc::ptr_eq(&i.version, version) && i.key == key)
                .and_then(|at| idle.remove(at));
            self.count.store(idle.len(), Ordering::Relaxed);
            (found, dropped)
        };
        // Instances are dropped outside the lock: tearing one down returns its pool slot.
        drop(dropped);
        found.map(|i| i.warm)
    }

    /// Keeps `warm` for `key`'s next task; when full, the least recently used goes.
    pub(crate) fn put(&self, version: Arc<PluginVersion>, key: String, warm: Warm) {
        if self.capacity == 0 {
            return;
        }
        let evicted = {
            let mut idle = self.lock();
            let evicted = if idle.len() >= self.capacity {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(Idle {
                version,
                key,
                since: Instant::now(),
                warm,
            });
            self.count.store(idle.len(), Ordering::Relaxed);
            evicted
        };
        drop(evicted);
    }

    /// Drops the least recently used idle instance; false if there was none.
    pub(crate) fn evict_one(&self) -> bool {
        let evicted = {
            let mut idle = self.lock();
            let e = idle.pop_front();
            self.count.store(idle.len(), Ordering::Relaxed);
            e
        };
        evicted.is_some()
    }

    /// Drops the instances unused for longer than [`MAX_IDLE`] (called on every attempt, so
    /// they go even when no task of a reusing plugin comes again).
    pub(crate) fn prune(&self) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let expired = {
            let mut idle = self.lock();
            let expired = self.drain_where(&mut idle, |_| false);
            self.count.store(idle.len(), Ordering::Relaxed);
            expired
        };
        drop(expired);
    }

    /// Takes out of `idle` the expired instances and those `also` picks, for the caller to
    /// drop once the lock is released.
    fn drain_where(
        &self,
        idle: &mut VecDeque<Idle>,
        also: impl Fn(&Idle) -> bool,
    ) -> VecDeque<Idle> {
        let now = Instant::now();
        let (gone, keep) = std::mem::take(idle)
            .into_iter()
            .partition(|i| now.duration_since(i.since) >= MAX_IDLE || also(i));
        *idle = keep;
        gone
    }

    /// Idle instances now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
