//! The durable store contract. Every backend (embedded redb, Cassandra) implements
//! [`TaskStore`] and passes the shared suite in `kairos-conformance`.

use async_trait::async_trait;

use crate::model::{
    Attempt, EnqueueOutcome, KvEntryMeta, ListFilter, Millis, NewTask, OrderPos, Schedule,
    StateCounts, Task, TaskRecord, TaskState, Transition,
};
use crate::ownership::{Holder, Lease};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("task {0} not found")]
    NotFound(String),
    /// The operation does not fit the task's current state (e.g. cancelling a finished task).
    #[error("{0}")]
    Conflict(String),
    /// The backend could not be reached or timed out; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded, or the database is from an incompatible version.
    #[error("store data corrupt or incompatible: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Other(String),
    /// The caller's lease is not the partition's current one: another node (or a later
    /// incarnation of this one) owns the partition now. Nothing was changed; the caller must
    /// stop working on the partition.
    #[error(
        "fenced: partition {partition} is held under epoch {}, this lease has epoch {epoch}",
        current.map_or_else(|| "none".to_string(), |c| c.to_string())
    )]
    Fenced {
        partition: u32,
        epoch: u64,
        current: Option<u64>,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed. Drives retries in the scheduler.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// The `Fenced` error for `lease` when the partition's current epoch is `current`.
    pub fn fenced(lease: &Lease, current: Option<u64>) -> Self {
        Self::Fenced {
            partition: lease.partition,
            epoch: lease.epoch,
            current,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Durable task state. All methods are durable when they return `Ok` (embedded: after the
/// group commit that carried them was fsynced).
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Persist a batch. A task whose `uniqueness_key` is already taken (by a task in any state)
    /// is not stored; the existing task comes back as [`EnqueueOutcome::Duplicate`]. Within one
    /// batch the first task with a given uniqueness key wins. Likewise a task whose `id` is
    /// already stored (a replayed enqueue) comes back as `Duplicate` of the stored task, which
    /// is left as it is. A store may refuse the whole batch with [`StoreError::Conflict`] when an
    /// id of the form that names its home (`kairos_core::ids`) names another partition than
    /// its task's (Cassandra does: it finds such rows from the id alone; the ids the API
    /// makes never do this). Assigns `seq`, strictly increasing
    /// across calls and within the batch in input order. One outcome per input, in input order.
    async fn enqueue(&self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>>;

    /// Pending tasks of `partition` (see [`Task::is_pending`]) whose position is strictly after
    /// `after` and whose `due_at <= up_to`, ordered by `(due_at, seq)`, at most `limit`.
    /// Overdue tasks are included however old they are.
    async fn load_window(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>>;

    /// Makes `node_id` the holder of `partition` under a new epoch: the previous epoch + 1 (1
    /// for a partition never held), durable before it returns. From then on every call under
    /// an older lease of the partition fails with [`StoreError::Fenced`]. Concurrent callers
    /// each get a distinct epoch; the last one to return holds the partition.
    async fn acquire_lease(&self, partition: u32, node_id: &str) -> StoreResult<Lease>;

    /// The partition's current holder, read linearizably; `None` if it was never held.
    async fn lease_holder(&self, partition: u32) -> StoreResult<Option<Holder>>;

    /// Record, under `lease`, that attempt number `attempt` (1-based) starts: state `running`,
    /// `attempts = attempt`; returns the task as stored. Idempotent: claiming the same attempt
    /// again (after an answer was lost) succeeds. `Fenced` if the lease is stale; `Conflict`
    /// if the task is finished (succeeded, dead, cancelled) or belongs to another partition.
    async fn start_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task>;

    /// Record, under `lease`, the end of the attempt started under it, and apply
    /// `transition`. Returns the updated task. `Fenced` if the lease is stale (including when
    /// a newer lease claimed the task meanwhile); `Conflict` if the task is not `running`
    /// (cancelled, finished, or this end was recorded already).
    async fn finish_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    ) -> StoreResult<Task>;

    /// Gives back, under `lease`, the start of attempt `attempt` that this lease recorded and
    /// that never ran: its partition is being released while the attempt waited for a run
    /// slot. The task returns to `back_to` (`scheduled` or `retrying`, the state it was
    /// started from) with `attempts = attempt - 1` and `updated_at = restored_at` (the
    /// scheduler passes the task's `updated_at` from before the start), keeping its position,
    /// due and next times (see [`Task::apply_unclaim`]). So the next owner runs it as attempt
    /// `attempt` at once, instead of taking it over as an attempt in doubt. `Fenced` if the
    /// lease is not current; `Conflict` if the task is not running attempt `attempt` or
    /// `back_to` is another state. Only the caller knows that the start was its own and that
    /// the attempt never ran: a store whose rows carry the epoch that changed them
    /// (Cassandra) also refuses another lease's start (`Fenced`); the others cannot tell.
    async fn unclaim_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        restored_at: Millis,
    ) -> StoreResult<Task>;

    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>>;

    async fn find_by_uniqueness_key(&self, uniqueness_key: &str) -> StoreResult<Option<Task>>;

    /// Tasks matching the filter, ordered by `(due_at, seq)`; `limit` 0 means 100.
    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>>;

    /// `scheduled` / `retrying` / `dead` (any dead, parked or not) → `cancelled`.
    /// `Conflict` when running, succeeded or already cancelled; `NotFound` when unknown.
    /// `Fenced` under a stale lease (so for the next four calls).
    async fn cancel(&self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task>;

    /// `dead` → `scheduled` with `next_at = at` and `max_attempts = attempts + extra_attempts`.
    /// `Conflict` for any other state.
    async fn retry_dead(
        &self,
        lease: &Lease,
        id: &str,
        extra_attempts: u32,
        at: Millis,
    ) -> StoreResult<Task>;

    /// Move a `scheduled` or `retrying` task: `due_at = next_at = run_at`, state `scheduled`
    /// (it takes its new ordering position; a retrying task no longer holds its key; its
    /// attempt count stays). `Conflict` for any other state.
    async fn reschedule(
        &self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task>;

    /// Dead tasks of `key` (which must map to `lease.partition`) that park their key stop
    /// doing so (they stay dead). Returns how many.
    async fn unpark_key(&self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32>;

    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()>;
    async fn paused_keys(&self) -> StoreResult<Vec<String>>;

    /// Insert or replace a schedule by name (keeps nothing of the old one).
    async fn put_schedule(&self, schedule: Schedule) -> StoreResult<()>;
    async fn get_schedule(&self, name: &str) -> StoreResult<Option<Schedule>>;
    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>>;
    /// `true` if it existed.
    async fn delete_schedule(&self, name: &str) -> StoreResult<bool>;
    /// Set `last_fired` (only ever moves forward). `NotFound` if the schedule is gone.
    async fn mark_schedule_fired(&self, name: &str, occurrence: Millis) -> StoreResult<()>;

    /// Plugin key-value state, scoped by plugin name.
    async fn kv_get(&self, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;
    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>, at: Millis) -> StoreResult<()>;
    /// `true` if it existed.
    async fn kv_delete(&self, plugin: &str, key: &str) -> StoreResult<bool>;
    /// Entries of `plugin` whose key starts with `prefix`, in key order, at most `limit`.
    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>>;

    /// Bytes (keys plus values) `plugin` keeps in kv.
    async fn kv_usage(&self, plugin: &str) -> StoreResult<u64>;

    /// How many stored tasks are in each state, over all partitions. Purged tasks (see
    /// [`TaskStore::purge_finished`]) no longer count. The embedded and in-memory stores answer
    /// exactly (the embedded one from counts kept in the same write batch as every task
    /// change); Cassandra scans every task (O(tasks)), so callers polling it should cache the
    /// answer.
    async fn state_counts(&self) -> StoreResult<StateCounts>;

    /// `Err` while the store cannot write, saying why (`/healthz` answers 503 with it); a
    /// store that was failing tries to recover here. Stores that cannot tell answer `Ok`.
    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Retention: looks at up to `scan` tasks after id `after` (in the store's own order of
    /// ids; `None`: from the start) and deletes those that are finished — not
    /// [`Task::is_pending`]: succeeded, cancelled, or dead without parking their key — and
    /// were last updated before `before`, with their attempts, their key-index entries and
    /// their uniqueness keys (which may then be claimed again). A task changed meanwhile is
    /// left alone.
    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged>;
}

/// What one [`TaskStore::purge_finished`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub deleted: usize,
    /// Where the next call continues; `None`: the scan reached the last task.
    pub next: Option<String>,
}

/// Keeps the first `limit` tasks by position `(due_at, seq)` out of a scan in any order, holding
/// at most `limit` of them in memory. For stores whose `list` has no index to walk in order.
pub struct FirstByPos {
    heap: std::collections::BinaryHeap<ByPos>,
    limit: usize,
}

impl FirstByPos {
    pub fn new(limit: usize) -> Self {
        Self {
            heap: std::collections::BinaryHeap::with_capacity(limit.min(4096) + 1),
            limit,
        }
    }

    pub fn offer(&mut self, t: Task) {
        if self.heap.len() == self.limit
            && self
                .heap
                .peek()
                .is_some_and(|top| top.0.order() <= t.order())
        {
            return;
        }
        self.heap.push(ByPos(t));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// The kept tasks in `(due_at, seq)` order.
    pub fn into_sorted(self) -> Vec<Task> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|b| b.0)
            .collect()
    }
}

/// Orders tasks by `(due_at, seq)` only.
struct ByPos(Task);

impl PartialEq for ByPos {
    fn eq(&self, other: &Self) -> bool {
        self.0.order() == other.0.order()
    }
}
impl Eq for ByPos {}
impl PartialOrd for ByPos {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByPos {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.order().cmp(&other.0.order())
    }
}
