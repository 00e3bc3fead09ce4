//! The simulated world's parts: a clock on tokio's paused time, a store that fails, delays or
//! loses answers, and an executor whose attempts succeed, fail, hang or outlive their deadline.
//! All randomness comes from one seeded RNG, so a seed replays exactly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kairos_core::clock::{Clock, Sleep};
use kairos_core::mem::MemStore;
use kairos_core::model::*;
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{Purged, StoreError, StoreResult, TaskStore};
use kairos_scheduler::{ExecOutcome, ExecResult, Executor};
use rand::Rng;
use rand::rngs::StdRng;

use super::oracle::Oracle;

pub const T0: Millis = 1_767_225_600_000;
/// The executor's attempt deadline; `takeover_wait_ms` must exceed it plus the longest store
/// delay.
pub const ATTEMPT_TIMEOUT_MS: u64 = 3_000;
pub const MAX_STORE_DELAY_MS: u64 = 1_500;
pub const TAKEOVER_WAIT_MS: Millis = 8_000;

pub type Rand = Arc<Mutex<StdRng>>;

pub fn roll(rng: &Rand, p: f64) -> bool {
    rng.lock().map(|mut r| r.gen_bool(p)).unwrap_or(false)
}

pub fn below(rng: &Rand, n: u64) -> u64 {
    rng.lock()
        .map(|mut r| r.gen_range(0..n.max(1)))
        .unwrap_or(0)
}

/// Simulated wall clock: `T0` plus tokio's (paused, auto-advancing) time since the start.
pub struct SimClock {
    start: tokio::time::Instant,
}

impl SimClock {
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Millis {
        T0 + self.start.elapsed().as_millis() as Millis
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let ms = (at.saturating_sub(T0)).clamp(0, 1 << 40) as u64;
        let deadline = self.start + Duration::from_millis(ms);
        Box::pin(tokio::time::sleep_until(deadline))
    }
}

/// Which faults are on (the world turns them off to check liveness).
#[derive(Default)]
pub struct Faults {
    pub on: std::sync::atomic::AtomicBool,
}

impl Faults {
    pub fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A store shared by every node that fails before or after taking effect, or answers late.
pub struct FaultyStore {
    pub inner: Arc<MemStore>,
    pub rng: Rand,
    pub faults: Arc<Faults>,
    /// Where task-changing calls are traced (set once the oracle exists).
    pub oracle: std::sync::OnceLock<Arc<Oracle>>,
}

enum Fault {
    None,
    Before,
    After,
}

impl FaultyStore {
    async fn pre(&self) -> Fault {
        if !self.faults.on() {
            return Fault::None;
        }
        if roll(&self.rng, 0.1) {
            let ms = below(&self.rng, MAX_STORE_DELAY_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match below(&self.rng, 100) {
            0..=3 => Fault::Before,
            4..=7 => Fault::After,
            _ => Fault::None,
        }
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match self.pre().await {
            Fault::Before => Err(StoreError::Unavailable("sim: request failed".into())),
            Fault::After => {
                let _ = f.await;
                Err(StoreError::Unavailable(
                    "sim: answer lost (timed out)".into(),
                ))
            }
            Fault::None => f.await,
        }
    }

    /// A task-changing call, traced on the task's key with its outcome.
    async fn traced<T>(
        &self,
        id: &str,
        what: String,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let fault = self.pre().await;
        let (r, how) = match fault {
            Fault::Before => (
                Err(StoreError::Unavailable("sim: request failed".into())),
                "failed before".to_string(),
            ),
            Fault::After => {
                let r = f.await;
                let how = match &r {
                    Ok(_) => "applied, answer lost".to_string(),
                    Err(e) => format!("refused ({e}), answer lost"),
                };
                (
                    Err(StoreError::Unavailable(
                        "sim: answer lost (timed out)".into(),
                    )),
                    how,
                )
            }
            Fault::None => {
                let r = f.await;
                let how = match &r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("refused: {e}"),
                };
                (r, how)
            }
        };
        if let (Some(o), Some(t)) = (self.oracle.get(), self.inner.snapshot_task(id)) {
            o.event(
                &t.key,
                format!(
                    "store {what} -> {how} (now {} #{})",
                    t.state.as_str(),
                    t.attempts
                ),
            );
        }
        r
    }
}

#[async_trait]
impl TaskStore for FaultyStore {
    async fn enqueue(&self, b: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        self.call(self.inner.enqueue(b)).await
    }
    async fn load_window(
        &self,
        p: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.call(self.inner.load_window(p, after, up_to, limit))
            .await
    }
    async fn acquire_lease(&self, p: u32, node: &str) -> StoreResult<Lease> {
        self.call(self.inner.acquire_lease(p, node)).await
    }
    async fn lease_holder(&self, p: u32) -> StoreResult<Option<Holder>> {
        self.call(self.inner.lease_holder(p)).await
    }
    async fn start_attempt(&self, l: &Lease, id: &str, n: u32, at: Millis) -> StoreResult<Task> {
        let what = format!("start {id} #{n} e{}", l.epoch);
        // The scheduler committed to the task when it issued the claim: until its outcome is
        // known the task holds its key, whether or not the store applied it.
        if let Some(o) = self.oracle.get() {
            o.claimed(id, at);
        }
        let claim = self.inner.start_attempt(l, id, n, at);
        self.traced(id, what, claim).await
    }
    async fn finish_attempt(
        &self,
        l: &Lease,
        id: &str,
        a: Attempt,
        t: Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        let what = format!("finish {id} #{} {:?} e{}", a.number, a.outcome, l.epoch);
        self.traced(id, what, self.inner.finish_attempt(l, id, a, t, at))
            .await
    }
    async fn unclaim_attempt(
        &self,
        l: &Lease,
        id: &str,
        n: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        let what = format!("unclaim {id} #{n} to {} e{}", back_to.as_str(), l.epoch);
        let unclaim = async {
            let r = self.inner.unclaim_attempt(l, id, n, back_to, at).await;
            if let (Ok(t), Some(o)) = (&r, self.oracle.get()) {
                o.unclaimed(t, n);
            }
            r
        };
        self.traced(id, what, unclaim).await
    }
    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        self.call(self.inner.get(id)).await
    }
    async fn find_by_uniqueness_key(&self, k: &str) -> StoreResult<Option<Task>> {
        self.call(self.inner.find_by_uniqueness_key(k)).await
    }
    async fn list(&self, f: &ListFilter) -> StoreResult<Vec<Task>> {
        self.call(self.inner.list(f)).await
    }
    async fn cancel(&self, l: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        let what = format!("cancel {id} e{}", l.epoch);
        self.traced(id, what, self.inner.cancel(l, id, at)).await
    }
    async fn retry_dead(&self, l: &Lease, id: &str, n: u32, at: Millis) -> StoreResult<Task> {
        let what = format!("retry_dead {id} e{}", l.epoch);
        let retry = async {
            let r = self.inner.retry_dead(l, id, n, at).await;
            if r.is_ok()
                && let Some(o) = self.oracle.get()
            {
                o.retried(id);
            }
            r
        };
        self.traced(id, what, retry).await
    }
    async fn reschedule(&self, l: &Lease, id: &str, to: Millis, at: Millis) -> StoreResult<Task> {
        let what = format!("reschedule {id} to {} e{}", to - T0, l.epoch);
        let moved = async {
            let r = self.inner.reschedule(l, id, to, at).await;
            if r.is_ok()
                && let Some(o) = self.oracle.get()
            {
                o.retried(id);
            }
            r
        };
        self.traced(id, what, moved).await
    }
    async fn unpark_key(&self, l: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.call(self.inner.unpark_key(l, key, at)).await
    }
    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()> {
        self.call(self.inner.set_key_paused(key, paused)).await
    }
    async fn paused_keys(&self) -> StoreResult<Vec<String>> {
        self.call(self.inner.paused_keys()).await
    }
    async fn put_schedule(&self, s: Schedule) -> StoreResult<()> {
        self.inner.put_schedule(s).await
    }
    async fn get_schedule(&self, n: &str) -> StoreResult<Option<Schedule>> {
        self.inner.get_schedule(n).await
    }
    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.inner.list_schedules().await
    }
    async fn delete_schedule(&self, n: &str) -> StoreResult<bool> {
        self.inner.delete_schedule(n).await
    }
    async fn mark_schedule_fired(&self, n: &str, o: Millis) -> StoreResult<()> {
        self.inner.mark_schedule_fired(n, o).await
    }
    async fn kv_get(&self, p: &str, k: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.kv_get(p, k).await
    }
    async fn kv_set(&self, p: &str, k: &str, v: Vec<u8>, at: Millis) -> StoreResult<()> {
        self.inner.kv_set(p, k, v, at).await
    }
    async fn kv_delete(&self, p: &str, k: &str) -> StoreResult<bool> {
        self.inner.kv_delete(p, k).await
    }
    async fn kv_list(&self, p: &str, pre: &str, l: usize) -> StoreResult<Vec<KvEntryMeta>> {
        self.inner.kv_list(p, pre, l).await
    }
    async fn kv_usage(&self, p: &str) -> StoreResult<u64> {
        self.call(self.inner.kv_usage(p)).await
    }
    async fn state_counts(&self) -> StoreResult<StateCounts> {
        self.call(self.inner.state_counts()).await
    }
    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        self.call(self.inner.purge_finished(before, after, scan))
            .await
    }
}

/// One node's executor: reports every attempt to the oracle, which checks the invariants.
pub struct SimExecutor {
    pub node: usize,
    /// This start of the node (see [`Oracle::node_started`]).
    pub life: u64,
    pub oracle: Arc<Oracle>,
    pub rng: Rand,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Executor for SimExecutor {
    async fn execute(&self, task: &Task, attempt: u32) -> ExecOutcome {
        let token = self
            .oracle
            .attempt_started(self.node, self.life, task, attempt);
        let (ms, result) = if !self.faults.on() {
            (below(&self.rng, 50), ExecResult::Success { output: None })
        } else {
            match below(&self.rng, 100) {
                0..=64 => (below(&self.rng, 300), ExecResult::Success { output: None }),
                65..=79 => (
                    below(&self.rng, 300),
                    ExecResult::Retry {
                        error: "sim: retryable".into(),
                        retry_after_ms: None,
                    },
                ),
                80..=82 => (
                    below(&self.rng, 300),
                    ExecResult::Permanent {
                        error: "sim: permanent".into(),
                    },
                ),
                // Hangs until the runtime's deadline stops it.
                83..=92 => (
                    ATTEMPT_TIMEOUT_MS,
                    ExecResult::Retry {
                        error: "sim: deadline exceeded".into(),
                        retry_after_ms: None,
                    },
                ),
                // Outlives its deadline (a runtime that fails to stop it).
                _ => (
                    ATTEMPT_TIMEOUT_MS + below(&self.rng, ATTEMPT_TIMEOUT_MS),
                    ExecResult::Retry {
                        error: "sim: outlived the deadline".into(),
                        retry_after_ms: None,
                    },
                ),
            }
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.oracle.attempt_ended(token);
        ExecOutcome {
            logs: log_tail([format!("sim attempt {attempt}: {result:?}")]),
            result,
            digest: None,
        }
    }

    fn reservation_mb(&self, plugin: &str) -> u64 {
        super::reservation_mb(plugin)
    }
}
