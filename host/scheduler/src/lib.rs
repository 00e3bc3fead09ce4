//! The scheduler: one actor per owned partition (see [`partition`]), run slots shared fairly
//! between plugins (see [`slots`]), and the operations the API needs (cancel, reschedule, retry, pause).
//!
//! It sees only contracts: a [`TaskStore`], the [`Lease`] under which it holds each partition
//! (see [`kairos_core::ownership`] for the protocol), an [`Executor`] and a [`Clock`]; it does
//! not know whether it runs embedded or in a cluster. There is one code path: every start,
//! finish and operation goes through the store under the partition's lease.
//!
//! What it promises (checked by the deterministic simulation in `tests/sim`):
//! - per key, attempts start in `(due_at, seq)` order, one at a time; a key's next task never
//!   starts before its predecessor's end is durable;
//! - an attempt runs only after its start is durable (so `max_attempts` holds across crashes);
//! - nothing starts before it is due; a task whose cancel was acknowledged never starts;
//! - every accepted task reaches a final state once faults stop.

pub mod metrics;
mod pace;
mod partition;
mod run;
pub mod slots;
pub mod stats;
pub mod window;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use kairos_core::clock::Clock;
use kairos_core::model::{Millis, Task};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, TaskStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use metrics::Metrics;
use partition::{Msg, PartitionActor};
pub use run::decide;
pub use slots::{PluginShare, SlotShares};

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecResult {
    Success {
        output: Option<String>,
    },
    /// Try again (after at least `retry_after_ms` when given).
    Retry {
        error: String,
        retry_after_ms: Option<u64>,
    },
    Permanent {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    pub result: ExecResult,
    /// The plugin version that ran, when one was found.
    pub digest: Option<String>,
    /// The tail of what the attempt logged, stored with the attempt
    /// ([`Attempt::logs`](kairos_core::model::Attempt::logs); build it with
    /// [`log_tail`](kairos_core::model::log_tail)).
    pub logs: Option<String>,
}

/// Runs one attempt of a task. The Wasm runtime implements it; tests use fakes.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(&self, task: &Task, attempt: u32) -> ExecOutcome;

    /// Memory an attempt of `plugin` reserves from the executor's budget, MiB (see
    /// [`SlotShares::memory_budget_mb`]).
    fn reservation_mb(&self, _plugin: &str) -> u64 {
        0
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most tasks held in memory per partition.
    pub window_capacity: usize,
    /// How far ahead of now the window is loaded.
    pub horizon_ms: Millis,
    /// Attempts running at once on this node (its run slots).
    pub concurrency: usize,
    /// Attempts that may be recording their start at once (claim slots; `None`:
    /// [`CLAIMS_PER_RUN_SLOT`] × `concurrency`).
    pub claim_slots: Option<usize>,
    /// How the run slots are shared between plugins (caps, weights, the reserve).
    pub shares: SlotShares,
    /// A task found `running` when a partition is taken over was in flight under an older
    /// lease; it runs again (as its next attempt) only this long after that start was
    /// recorded, once that attempt has certainly hit its deadline. The embedded deployment
    /// sets 0: its previous holder was this process before a restart, so nothing still runs.
    pub takeover_wait_ms: Millis,
    /// Seed of the retry jitter (`None`: from the OS). Simulations fix it.
    pub rng_seed: Option<u64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            window_capacity: 2_000,
            horizon_ms: 60_000,
            concurrency: 64,
            claim_slots: None,
            shares: SlotShares::default(),
            takeover_wait_ms: 12_000,
            rng_seed: None,
        }
    }
}

/// Why an operation on a task was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("task {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("partition {0} is not owned by this node")]
    NotOwned(u32),
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => OpError::NotFound(id),
            StoreError::Conflict(m) => OpError::Conflict(m),
            StoreError::Fenced { partition, .. } => OpError::NotOwned(partition),
            other => OpError::Store(other),
        }
    }
}

/// Claim slots per run slot by default. The starts recorded at once bound how many operations
/// one group commit of the embedded store carries: with one claim per run slot (64 by
/// default) a commit carried about 55 operations and the writer paid its fixed cost per
/// commit over few tasks; with 8 it carries about 380. With 32 (2,048 claims) the writer
/// writes about a third fewer bytes per task and end-to-end throughput rose by ×1.2–1.4;
/// 16, 64 and 128 measured slower than 32 (BENCHMARKS.md, issue 10). An attempt whose claim
/// then waits for a run slot longer than the claim slack records its start again under the
/// run slot. (Cluster nodes default to eight per run slot: on Cassandra the claims of one
/// partition that fall due together share a Paxos round, so more claims in flight make
/// fewer, larger rounds; BENCHMARKS.md, issue 10, seventh session.)
pub const CLAIMS_PER_RUN_SLOT: usize = 32;

/// Everything the partition actors share.
pub(crate) struct Shared {
    pub store: Arc<dyn TaskStore>,
    pub executor: Arc<dyn Executor>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Run slots: held by an attempt while its guest runs (with its plugin's memory).
    pub slots: Arc<slots::SlotPool>,
    /// Claim slots ([`SchedulerConfig::claim_slots`]): held from when an attempt is
    /// started until it has a run slot, so the durable write of its start overlaps other
    /// attempts' runs. Shared between plugins like the run slots (same weights, the reserve
    /// scaled alike, a plugin's `max_concurrency` as it is; no memory).
    pub claims: Arc<slots::SlotPool>,
    /// Each plugin's claims capped by how soon its run slots start them (see [`pace`]).
    pub pace: pace::ClaimPace,
    pub paused: RwLock<HashSet<String>>,
    pub cfg: SchedulerConfig,
    pub rng: StdMutex<StdRng>,
    /// Every actor and attempt task started, so a crash (or drop) stops them all at once.
    pub tasks: StdMutex<Tracked>,
}

/// Abort handles of the tasks started, with the finished ones swept out now and then.
#[derive(Default)]
pub(crate) struct Tracked {
    handles: Vec<tokio::task::AbortHandle>,
    /// The next sweep runs when this many handles are held: twice as many as were left
    /// alive by the last one (at least [`Tracked::MIN_SWEEP`]), so each handle costs O(1)
    /// sweeping however many tasks run at once. (A fixed threshold swept every live handle on
    /// every start once more than that many attempts were in flight.)
    sweep_at: usize,
}

impl Tracked {
    const MIN_SWEEP: usize = 1_024;

    fn push(&mut self, h: tokio::task::AbortHandle) {
        if self.handles.len() >= self.sweep_at.max(Self::MIN_SWEEP) {
            self.handles.retain(|h| !h.is_finished());
            self.sweep_at = self.handles.len().saturating_mul(2);
        }
        self.handles.push(h);
    }

    fn take(&mut self) -> Vec<tokio::task::AbortHandle> {
        self.sweep_at = 0;
        std::mem::take(&mut self.handles)
    }
}

impl Shared {
    /// Tracks a task for [`Scheduler::crash`].
    pub fn track(&self, h: tokio::task::AbortHandle) {
        let mut t = match self.tasks.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        t.push(h);
    }
}

impl Shared {
    pub fn paused_snapshot(&self) -> HashSet<String> {
        self.paused.read().map(|p| p.clone()).unwrap_or_default()
    }
}

struct PartitionHandle {
    lease: Lease,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
    /// Cancelled when the partition goes to another node: its attempts still waiting for a
    /// run slot then do not run (see [`Scheduler::revoke`]).
    release: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

/// The partition actors of one node. Dropping it aborts every actor and attempt still
/// running (a crash); [`Scheduler::shutdown`] drains them first.
pub struct Scheduler {
    shared: Arc<Shared>,
    partitions: Mutex<BTreeMap<u32, PartitionHandle>>,
    /// Actors of revoked partitions still draining past their grace period (their attempts'
    /// ends not recorded yet, e.g. while the store is down).
    draining: Mutex<BTreeMap<u32, tokio::task::JoinHandle<()>>>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.crash();
    }
}

impl Scheduler {
    /// Loads the paused keys from the store; partitions start when assigned.
    pub async fn new(
        store: Arc<dyn TaskStore>,
        executor: Arc<dyn Executor>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        cfg: SchedulerConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let paused = store.paused_keys().await?.into_iter().collect();
        let rng = match cfg.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let exec = executor.clone();
        let slots = slots::SlotPool::new(
            cfg.concurrency,
            cfg.shares.clone(),
            Arc::new(move |p: &str| exec.reservation_mb(p)),
        );
        let claim_slots = cfg
            .claim_slots
            .unwrap_or(cfg.concurrency.saturating_mul(CLAIMS_PER_RUN_SLOT))
            .max(1);
        // The reserve scales with the pool; a plugin's own cap stays as it is.
        let claim_reserve = cfg
            .shares
            .reserve
            .map(|r| (r as u128 * claim_slots as u128 / cfg.concurrency.max(1) as u128) as usize);
        let claims = slots::SlotPool::new(
            claim_slots,
            SlotShares {
                reserve: claim_reserve,
                memory_budget_mb: None,
                ..cfg.shares.clone()
            },
            Arc::new(|_: &str| 0),
        );
        // Until a plugin's pace is known, one claim waiting per run slot (see [`pace`]).
        claims.set_first_limit(Some(slots.default_cap()));
        let shared = Arc::new(Shared {
            store,
            executor,
            clock,
            metrics,
            slots,
            claims,
            pace: pace::ClaimPace::default(),
            paused: RwLock::new(paused),
            cfg,
            rng: StdMutex::new(rng),
            tasks: StdMutex::new(Tracked::default()),
        });
        Ok(Arc::new(Self {
            shared,
            partitions: Mutex::new(BTreeMap::new()),
            draining: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Starts the partition's actor under `lease` (acquired from the store by the partition
    /// source): it pages in every incomplete task, however overdue. An actor of the same
    /// partition under an older lease is stopped (it is fenced out anyway).
    pub async fn assign(&self, lease: Lease) {
        let partition = lease.partition;
        let mut parts = self.partitions.lock().await;
        if let Some(h) = parts.get(&partition) {
            if h.lease == lease && !h.join.is_finished() {
                return;
            }
            if let Some(old) = parts.remove(&partition) {
                // It stops on its own (drains what runs); its abort handle stays tracked.
                old.release.cancel();
                old.stop.cancel();
            }
        }
        // Keys may have been paused or resumed through the partition's previous owner since
        // this node loaded them: refresh before the partition's tasks are looked at.
        match self.shared.store.paused_keys().await {
            Ok(keys) => {
                if let Ok(mut p) = self.shared.paused.write() {
                    *p = keys.into_iter().collect();
                }
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "could not refresh the paused keys; using the ones known")
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let stop = CancellationToken::new();
        let release = CancellationToken::new();
        let actor = PartitionActor::new(
            lease,
            self.shared.clone(),
            rx,
            stop.clone(),
            release.clone(),
        );
        let join = tokio::spawn(actor.run());
        self.shared.track(join.abort_handle());
        parts.insert(
            partition,
            PartitionHandle {
                lease,
                tx,
                stop,
                release,
                join,
            },
        );
    }

    /// Stops everything at once, as a process crash would: every actor and attempt is
    /// aborted at its next await point, nothing is drained or recorded. The deterministic
    /// simulation crashes nodes with it; a node stops with [`Scheduler::shutdown`].
    pub fn crash(&self) {
        let actors = match self.shared.tasks.lock() {
            Ok(mut a) => a.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        for a in actors {
            a.abort();
        }
    }

    /// Stops the partition's actor (other partitions are not touched) and waits, up to
    /// `grace`, until its running attempts ended and were recorded. Returns false if attempts
    /// were still running after `grace`: they go on in the background, but can no longer
    /// record their end once the partition's next owner holds its lease (their tasks then
    /// run again there, after `takeover_wait_ms`). Attempts whose start is recorded but that
    /// still wait for a run slot do not run: their starts are given back
    /// ([`TaskStore::unclaim_attempt`](kairos_core::store::TaskStore::unclaim_attempt)), so
    /// the next owner runs them at once as the same attempts, and the drain waits only for
    /// the attempts running, however many claim slots there are. (A start that cannot be
    /// given back, or the claim of a task that was itself in doubt, is left to the next owner
    /// as a crash would leave it: it runs after `takeover_wait_ms`, as the next attempt.)
    pub async fn revoke(&self, partition: u32, grace: Duration) -> bool {
        let handle = self.partitions.lock().await.remove(&partition);
        let Some(mut h) = handle else {
            return true;
        };
        h.release.cancel();
        h.stop.cancel();
        // Past `grace` the actor goes on in the background (its abort handle stays tracked),
        // and is remembered until it ends: see `wait_released`.
        let drained = tokio::time::timeout(grace, &mut h.join).await.is_ok();
        if !drained {
            self.draining.lock().await.insert(partition, h.join);
        }
        self.shared.metrics.set_partition(partition, 0, None);
        drained
    }

    /// Before this node takes `partition`'s lease again: waits (up to `limit`) until the
    /// partition's previous actor here, revoked while attempts still ran, has ended, so those
    /// attempts record their ends under the old lease first. A new lease would fence them out
    /// and their tasks would run a second time. Returns false if it gave up after `limit`.
    pub async fn wait_released(&self, partition: u32, limit: Duration) -> bool {
        let Some(mut join) = self.draining.lock().await.remove(&partition) else {
            return true;
        };
        if join.is_finished() {
            return true;
        }
        tracing::info!(
            partition,
            "waiting for the partition's previous attempts here to record their ends before taking it again"
        );
        tokio::time::timeout(limit, &mut join).await.is_ok()
    }

    /// The lease under which this node runs `partition`, if it does.
    pub async fn lease_of(&self, partition: u32) -> Option<Lease> {
        self.partitions
            .lock()
            .await
            .get(&partition)
            .map(|h| h.lease)
    }

    /// Run slots `(in use, total)`.
    pub fn slots_in_use(&self) -> (usize, usize) {
        let total = self.shared.slots.total();
        (total.saturating_sub(self.shared.slots.available()), total)
    }

    /// The leases this node runs its partitions under, by partition.
    pub async fn leases(&self) -> Vec<Lease> {
        self.partitions
            .lock()
            .await
            .values()
            .map(|h| h.lease)
            .collect()
    }

    pub async fn owned(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.partitions.lock().await.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether this node runs the partition's actor now.
    pub async fn owns(&self, partition: u32) -> bool {
        self.partitions.lock().await.contains_key(&partition)
    }

    /// Drains every partition within `grace`; returns false if attempts were still running.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let parts: Vec<(u32, PartitionHandle)> = std::mem::take(&mut *self.partitions.lock().await)
            .into_iter()
            .collect();
        for (_, h) in &parts {
            h.stop.cancel();
        }
        let all = futures_join_all(parts.into_iter().map(|(_, h)| h.join));
        tokio::time::timeout(grace, all).await.is_ok()
    }

    async fn sender(&self, partition: u32) -> Result<mpsc::Sender<Msg>, OpError> {
        self.partitions
            .lock()
            .await
            .get(&partition)
            .map(|h| h.tx.clone())
            .ok_or(OpError::NotOwned(partition))
    }

    /// Hands newly persisted tasks to their partitions' windows. Tasks of partitions this node
    /// does not own are left to their owner (they are durable already).
    pub async fn deliver(&self, tasks: Vec<Task>) {
        let mut by_part: BTreeMap<u32, Vec<Task>> = BTreeMap::new();
        for t in tasks {
            by_part.entry(t.partition).or_default().push(t);
        }
        for (p, batch) in by_part {
            if let Ok(tx) = self.sender(p).await {
                let _ = tx.send(Msg::Deliver(batch)).await;
            }
        }
    }

    async fn ask<T>(
        &self,
        partition: u32,
        make: impl FnOnce(oneshot::Sender<Result<T, OpError>>) -> Msg,
    ) -> Result<T, OpError> {
        let tx = self.sender(partition).await?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| OpError::ShuttingDown)?;
        rx.await.map_err(|_| OpError::ShuttingDown)?
    }

    async fn partition_of(&self, id: &str) -> Result<u32, OpError> {
        match self.shared.store.get(id).await? {
            Some(r) => Ok(r.task.partition),
            None => Err(OpError::NotFound(id.to_string())),
        }
    }

    /// Cancels a task that has not started (or is waiting out a retry). 409 once running or
    /// finished.
    pub async fn cancel(&self, id: &str) -> Result<Task, OpError> {
        let p = self.partition_of(id).await?;
        self.ask(p, |reply| Msg::Cancel {
            id: id.to_string(),
            reply,
        })
        .await
    }

    /// Moves a scheduled or retrying task to `run_at`.
    pub async fn reschedule(&self, id: &str, run_at: Millis) -> Result<Task, OpError> {
        let p = self.partition_of(id).await?;
        self.ask(p, |reply| Msg::Reschedule {
            id: id.to_string(),
            run_at,
            reply,
        })
        .await
    }

    /// Sends a dead task back to run now, with `extra_attempts` more attempts.
    pub async fn retry_dead(&self, id: &str, extra_attempts: u32) -> Result<Task, OpError> {
        let p = self.partition_of(id).await?;
        self.ask(p, |reply| Msg::RetryDead {
            id: id.to_string(),
            extra_attempts,
            reply,
        })
        .await
    }

    /// Parks a key: none of its tasks starts until it is resumed.
    pub async fn pause_key(&self, key: &str, partition: u32) -> Result<(), OpError> {
        self.shared.store.set_key_paused(key, true).await?;
        if let Ok(mut p) = self.shared.paused.write() {
            p.insert(key.to_string());
        }
        let _ = self
            .ask(partition, |reply| Msg::KeyChanged {
                key: key.to_string(),
                unpark: false,
                reply,
            })
            .await;
        Ok(())
    }

    /// Resumes a paused key, and releases it from a dead task that parked it (under the
    /// partition's lease: the partition must be owned here).
    pub async fn resume_key(&self, key: &str, partition: u32) -> Result<u32, OpError> {
        self.shared.store.set_key_paused(key, false).await?;
        if let Ok(mut p) = self.shared.paused.write() {
            p.remove(key);
        }
        self.ask(partition, |reply| Msg::KeyChanged {
            key: key.to_string(),
            unpark: true,
            reply,
        })
        .await
    }

    pub fn is_paused(&self, key: &str) -> bool {
        self.shared
            .paused
            .read()
            .map(|p| p.contains(key))
            .unwrap_or(false)
    }
}

/// Awaits all join handles (no extra dependency for `join_all`).
async fn futures_join_all(handles: impl Iterator<Item = tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::Tracked;

    #[tokio::test]
    async fn tracking_sweeps_finished_tasks_without_rescanning_live_ones_at_every_start() {
        let mut t = Tracked::default();
        let live: Vec<_> = (0..5_000)
            .map(|_| tokio::spawn(std::future::pending::<()>()))
            .collect();
        for j in &live {
            t.push(j.abort_handle());
        }
        assert_eq!(t.handles.len(), 5_000, "live tasks are all kept");
        // The sweep threshold moved past the live handles: the next starts do not scan them.
        assert!(t.sweep_at > 4_096, "sweep at {}", t.sweep_at);
        for j in &live {
            j.abort();
        }
        for j in live {
            let _ = j.await;
        }
        // Once they have finished, the next sweep drops them.
        let done = tokio::spawn(async {});
        let h = done.abort_handle();
        let _ = done.await;
        for _ in 0..t.sweep_at {
            t.push(h.clone());
        }
        assert!(t.handles.len() < 5_000, "{} handles kept", t.handles.len());
        let kept = t.handles.len();
        assert_eq!(t.take().len(), kept);
        assert!(t.handles.is_empty() && t.sweep_at == 0);
    }
}
