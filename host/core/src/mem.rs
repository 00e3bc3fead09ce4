//! The in-memory store: a [`TaskStore`] held in one mutex, for the deterministic simulation of
//! the scheduler and as a third backend of the conformance suite.
//!
//! Every method locks, does its work synchronously and returns: nothing awaits while holding
//! the lock, nothing spawns, sleeps or draws random numbers, and everything observable is
//! iterated in a defined order (`BTreeMap`/`BTreeSet` only). So a single-threaded runtime with
//! paused time replays a run exactly.
//!
//! Its semantics mirror the embedded (redb) store, index for index:
//! - `pending` holds `(partition, (due_at, seq)) → id` for exactly the tasks that
//!   [`Task::is_pending`];
//! - `by_key` holds `(key, (due_at, seq)) → id` for every task.
//!
//! Like the embedded store, re-enqueueing an id that is already stored returns
//! [`EnqueueOutcome::Duplicate`] with the stored task. Nothing is durable: dropping the store
//! drops its state.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::model::{
    Attempt, EnqueueOutcome, KvEntryMeta, ListFilter, Millis, NewTask, OrderPos, Schedule,
    StateCounts, Task, TaskRecord, TaskState, Transition,
};
use crate::ownership::{Holder, Lease};
use crate::store::{FirstByPos, Purged, StoreError, StoreResult, TaskStore};

/// `limit` 0 in a [`ListFilter`] means this many.
const DEFAULT_LIST_LIMIT: usize = 100;

/// [`TaskStore`] in memory. Cheap to create; share it behind an `Arc`.
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemStore")
            .field("tasks", &inner.tasks.len())
            .field("pending", &inner.pending.len())
            .field("next_seq", &inner.next_seq)
            .finish_non_exhaustive()
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store: no tasks, no partition ever held, first `seq` 1.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                tasks: BTreeMap::new(),
                attempts: BTreeMap::new(),
                pending: BTreeMap::new(),
                by_key: BTreeMap::new(),
                ukeys: BTreeMap::new(),
                next_seq: 1,
                leases: BTreeMap::new(),
                paused: BTreeSet::new(),
                schedules: BTreeMap::new(),
                kv: BTreeMap::new(),
            }),
        }
    }

    /// The state, also after a panic of another holder of the lock (every operation validates
    /// before it mutates, so a panic cannot leave a half-applied change behind).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored task `id`, if any.
    pub fn snapshot_task(&self, id: &str) -> Option<Task> {
        self.lock().tasks.get(id).cloned()
    }

    /// Every task of ordering key `key` (any state), in `(due_at, seq)` order.
    pub fn tasks_of_key(&self, key: &str) -> Vec<Task> {
        let inner = self.lock();
        inner
            .key_ids(key)
            .filter_map(|id| inner.tasks.get(id).cloned())
            .collect()
    }

    /// Every stored task, in id order.
    pub fn all_tasks(&self) -> Vec<Task> {
        self.lock().tasks.values().cloned().collect()
    }

    /// The current lease epoch of `partition`; `None` if it was never held.
    pub fn current_epoch(&self, partition: u32) -> Option<u64> {
        self.lock().leases.get(&partition).map(|h| h.epoch)
    }
}

/// The whole state, behind [`MemStore`]'s mutex.
struct Inner {
    tasks: BTreeMap<String, Task>,
    /// Attempt history per task id, by attempt number.
    attempts: BTreeMap<String, BTreeMap<u32, Attempt>>,
    pending: BTreeMap<(u32, OrderPos), String>,
    by_key: BTreeMap<(String, OrderPos), String>,
    /// Uniqueness key → id of the task that holds it.
    ukeys: BTreeMap<String, String>,
    next_seq: u64,
    leases: BTreeMap<u32, Holder>,
    paused: BTreeSet<String>,
    schedules: BTreeMap<String, Schedule>,
    /// Plugin → key → `(updated_at, value)`.
    kv: BTreeMap<String, BTreeMap<String, (Millis, Vec<u8>)>>,
}

fn conflict(t: &Task, what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "cannot {what} task {}: it is {}",
        t.id,
        t.state.as_str()
    ))
}

fn dangling(id: &str) -> StoreError {
    StoreError::Corrupt(format!("index points at missing task {id}"))
}

impl Inner {
    /// Ids of the tasks of `key`, in `(due_at, seq)` order.
    fn key_ids<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a String> + 'a {
        let lo = (key.to_owned(), OrderPos::MIN);
        let hi = (key.to_owned(), OrderPos::end_of(Millis::MAX));
        self.by_key.range(lo..=hi).map(|(_, id)| id)
    }

    /// The task an index entry points at.
    fn indexed(&self, id: &str) -> StoreResult<Task> {
        self.tasks.get(id).cloned().ok_or_else(|| dangling(id))
    }

    /// `Fenced` unless `lease` is the current lease of its partition.
    fn check_lease(&self, lease: &Lease) -> StoreResult<()> {
        let current = self.leases.get(&lease.partition).map(|h| h.epoch);
        if current == Some(lease.epoch) {
            Ok(())
        } else {
            Err(StoreError::fenced(lease, current))
        }
    }

    /// The task `id` for a change under `lease`: the lease must be current, the task must
    /// exist and belong to the lease's partition.
    fn leased_task(&self, lease: &Lease, id: &str) -> StoreResult<Task> {
        self.check_lease(lease)?;
        let t = self
            .tasks
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        if t.partition != lease.partition {
            return Err(StoreError::Conflict(format!(
                "task {id} belongs to partition {}, not to the lease's {lease}",
                t.partition
            )));
        }
        Ok(t.clone())
    }

    /// Stores `t` (new or changed) and moves its index entries along; returns it.
    fn save(&mut self, t: Task) -> Task {
        if let Some(old) = self.tasks.get(&t.id) {
            self.pending.remove(&(old.partition, old.order()));
            self.by_key.remove(&(old.key.clone(), old.order()));
        }
        if t.is_pending() {
            self.pending.insert((t.partition, t.order()), t.id.clone());
        }
        self.by_key.insert((t.key.clone(), t.order()), t.id.clone());
        self.tasks.insert(t.id.clone(), t.clone());
        t
    }

    fn enqueue(&mut self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(owner) = new.uniqueness_key.as_ref().and_then(|u| self.ukeys.get(u)) {
                out.push(EnqueueOutcome::Duplicate(self.indexed(owner)?));
                continue;
            }
            if let Some(stored) = self.tasks.get(&new.id) {
                // A replayed enqueue (same id) never resets the stored task.
                out.push(EnqueueOutcome::Duplicate(stored.clone()));
                continue;
            }
            let task = Task::from_new(new, self.next_seq);
            self.next_seq += 1;
            if let Some(ukey) = &task.uniqueness_key {
                self.ukeys.insert(ukey.clone(), task.id.clone());
            }
            out.push(EnqueueOutcome::Created(self.save(task)));
        }
        Ok(out)
    }

    fn load_window(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let start = (partition, after);
        let end = (partition, OrderPos::end_of(up_to));
        if limit == 0 || start >= end {
            return Ok(Vec::new());
        }
        self.pending
            .range((Bound::Excluded(start), Bound::Included(end)))
            .take(limit)
            .map(|(_, id)| self.indexed(id))
            .collect()
    }

    fn acquire_lease(&mut self, partition: u32, node_id: &str) -> Lease {
        let epoch = self.leases.get(&partition).map_or(1, |h| h.epoch + 1);
        self.leases.insert(
            partition,
            Holder {
                epoch,
                node_id: node_id.to_owned(),
            },
        );
        Lease { partition, epoch }
    }

    fn start_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        if t.state.is_terminal() {
            return Err(conflict(&t, "start"));
        }
        // A new attempt, or the same attempt claimed again after its answer was lost.
        let reclaim = attempt == t.attempts && t.state == TaskState::Running;
        if attempt <= t.attempts && !reclaim {
            return Err(StoreError::Conflict(format!(
                "cannot start attempt {attempt} of task {id}: it is {} after {} attempts",
                t.state.as_str(),
                t.attempts
            )));
        }
        t.state = TaskState::Running;
        t.attempts = attempt;
        t.updated_at = at;
        Ok(self.save(t))
    }

    fn finish_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: Attempt,
        transition: &Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        if t.state != TaskState::Running {
            return Err(conflict(&t, "finish an attempt of"));
        }
        t.apply_finish(attempt.number, transition, at);
        self.attempts
            .entry(id.to_owned())
            .or_default()
            .insert(attempt.number, attempt);
        Ok(self.save(t))
    }

    fn unclaim_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        t.apply_unclaim(attempt, back_to, at)
            .map_err(StoreError::Conflict)?;
        Ok(self.save(t))
    }

    fn get(&self, id: &str) -> Option<TaskRecord> {
        let task = self.tasks.get(id)?.clone();
        let attempts = self
            .attempts
            .get(id)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        Some(TaskRecord { task, attempts })
    }

    fn find_by_uniqueness_key(&self, ukey: &str) -> StoreResult<Option<Task>> {
        self.ukeys.get(ukey).map(|id| self.indexed(id)).transpose()
    }

    fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        let limit = if filter.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            filter.limit
        };
        let wanted = |t: &Task| filter.admits(t);
        match &filter.key {
            Some(key) => {
                let mut out = Vec::new();
                for id in self.key_ids(key) {
                    let t = self.indexed(id)?;
                    if wanted(&t) {
                        out.push(t);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                Ok(out)
            }
            None => {
                let mut first = FirstByPos::new(limit);
                for t in self.tasks.values().filter(|t| wanted(t)) {
                    first.offer(t.clone());
                }
                Ok(first.into_sorted())
            }
        }
    }

    fn cancel(&mut self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        match t.state {
            TaskState::Scheduled | TaskState::Retrying | TaskState::Dead => {}
            _ => return Err(conflict(&t, "cancel")),
        }
        t.state = TaskState::Cancelled;
        t.updated_at = at;
        Ok(self.save(t))
    }

    fn retry_dead(&mut self, lease: &Lease, id: &str, extra: u32, at: Millis) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        if t.state != TaskState::Dead {
            return Err(conflict(&t, "retry"));
        }
        t.state = TaskState::Scheduled;
        t.next_at = at;
        t.max_attempts = t.attempts.saturating_add(extra);
        t.updated_at = at;
        Ok(self.save(t))
    }

    fn reschedule(
        &mut self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.leased_task(lease, id)?;
        if !matches!(t.state, TaskState::Scheduled | TaskState::Retrying) {
            return Err(conflict(&t, "reschedule"));
        }
        // It takes its new position as a scheduled task: a retrying one no longer holds its key.
        t.state = TaskState::Scheduled;
        t.due_at = run_at;
        t.next_at = run_at;
        t.updated_at = at;
        Ok(self.save(t))
    }

    fn unpark_key(&mut self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.check_lease(lease)?;
        // Find the parked tasks first (reading only), then update them.
        let mut parked = Vec::new();
        for id in self.key_ids(key) {
            let t = self.indexed(id)?;
            if t.state == TaskState::Dead && t.park_on_dead {
                parked.push(t);
            }
        }
        let count = u32::try_from(parked.len()).unwrap_or(u32::MAX);
        for mut t in parked {
            t.park_on_dead = false;
            t.updated_at = at;
            self.save(t);
        }
        Ok(count)
    }

    fn mark_schedule_fired(&mut self, name: &str, occurrence: Millis) -> StoreResult<()> {
        let s = self
            .schedules
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(format!("schedule {name}")))?;
        if s.last_fired.is_none_or(|last| last < occurrence) {
            s.last_fired = Some(occurrence);
        }
        Ok(())
    }

    fn kv_list(&self, plugin: &str, prefix: &str, limit: usize) -> Vec<KvEntryMeta> {
        let Some(entries) = self.kv.get(plugin) else {
            return Vec::new();
        };
        entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, (updated_at, value))| KvEntryMeta {
                key: k.clone(),
                updated_at: *updated_at,
                size: value.len() as u64,
            })
            .collect()
    }
}

#[async_trait]
impl TaskStore for MemStore {
    async fn enqueue(&self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        self.lock().enqueue(batch)
    }

    async fn load_window(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.lock().load_window(partition, after, up_to, limit)
    }

    async fn acquire_lease(&self, partition: u32, node_id: &str) -> StoreResult<Lease> {
        Ok(self.lock().acquire_lease(partition, node_id))
    }

    async fn lease_holder(&self, partition: u32) -> StoreResult<Option<Holder>> {
        Ok(self.lock().leases.get(&partition).cloned())
    }

    async fn start_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.lock().start_attempt(lease, id, attempt, at)
    }

    async fn finish_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        self.lock()
            .finish_attempt(lease, id, attempt, &transition, at)
    }

    async fn unclaim_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        self.lock().unclaim_attempt(lease, id, attempt, back_to, at)
    }

    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        Ok(self.lock().get(id))
    }

    async fn find_by_uniqueness_key(&self, uniqueness_key: &str) -> StoreResult<Option<Task>> {
        self.lock().find_by_uniqueness_key(uniqueness_key)
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        self.lock().list(filter)
    }

    async fn cancel(&self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        self.lock().cancel(lease, id, at)
    }

    async fn retry_dead(
        &self,
        lease: &Lease,
        id: &str,
        extra_attempts: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.lock().retry_dead(lease, id, extra_attempts, at)
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        self.lock().reschedule(lease, id, run_at, at)
    }

    async fn unpark_key(&self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.lock().unpark_key(lease, key, at)
    }

    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()> {
        let mut inner = self.lock();
        if paused {
            inner.paused.insert(key.to_owned());
        } else {
            inner.paused.remove(key);
        }
        Ok(())
    }

    async fn paused_keys(&self) -> StoreResult<Vec<String>> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    async fn put_schedule(&self, schedule: Schedule) -> StoreResult<()> {
        self.lock()
            .schedules
            .insert(schedule.name.clone(), schedule);
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> StoreResult<Option<Schedule>> {
        Ok(self.lock().schedules.get(name).cloned())
    }

    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn delete_schedule(&self, name: &str) -> StoreResult<bool> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn mark_schedule_fired(&self, name: &str, occurrence: Millis) -> StoreResult<()> {
        self.lock().mark_schedule_fired(name, occurrence)
    }

    async fn kv_get(&self, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let inner = self.lock();
        Ok(inner
            .kv
            .get(plugin)
            .and_then(|entries| entries.get(key))
            .map(|(_, value)| value.clone()))
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>, at: Millis) -> StoreResult<()> {
        self.lock()
            .kv
            .entry(plugin.to_owned())
            .or_default()
            .insert(key.to_owned(), (at, value));
        Ok(())
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> StoreResult<bool> {
        let mut inner = self.lock();
        let Some(entries) = inner.kv.get_mut(plugin) else {
            return Ok(false);
        };
        let existed = entries.remove(key).is_some();
        if entries.is_empty() {
            inner.kv.remove(plugin);
        }
        Ok(existed)
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>> {
        Ok(self.lock().kv_list(plugin, prefix, limit))
    }

    async fn kv_usage(&self, plugin: &str) -> StoreResult<u64> {
        Ok(self.lock().kv.get(plugin).map_or(0, |entries| {
            entries
                .iter()
                .map(|(k, (_, v))| (k.len() + v.len()) as u64)
                .sum()
        }))
    }

    async fn state_counts(&self) -> StoreResult<StateCounts> {
        let mut counts = StateCounts::default();
        for t in self.lock().tasks.values() {
            counts.add(t.state, 1);
        }
        Ok(counts)
    }

    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        let mut inner = self.lock();
        let from = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        let seen: Vec<(String, bool)> = inner
            .tasks
            .range((from, Bound::Unbounded))
            .take(scan.max(1))
            .map(|(id, t)| (id.clone(), t.expired(before)))
            .collect();
        let next = (seen.len() == scan.max(1))
            .then(|| seen.last().map(|(id, _)| id.clone()))
            .flatten();
        let mut deleted = 0;
        for (id, expired) in seen {
            if !expired {
                continue;
            }
            let Some(t) = inner.tasks.remove(&id) else {
                continue;
            };
            inner.attempts.remove(&id);
            inner.by_key.remove(&(t.key.clone(), t.order()));
            if let Some(u) = &t.uniqueness_key
                && inner.ukeys.get(u) == Some(&id)
            {
                inner.ukeys.remove(u);
            }
            deleted += 1;
        }
        Ok(Purged { deleted, next })
    }
}
