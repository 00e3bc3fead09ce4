//! The write operations, run by the writer thread inside a batch transaction.
//!
//! Every operation validates before it mutates. Index upkeep lives in `WriteTables::reindex`,
//! which keeps two invariants:
//! - `pending` holds `(partition, due_at, seq) → id` for exactly the tasks that
//!   [`Task::is_pending`];
//! - `by_key` holds `(key, due_at, seq) → id` for every task.
//!
//! It also counts the tasks entering and leaving each state; `finish` applies the differences
//! to `state_counts` once per transaction.

use redb::{ReadableTable, Table, WriteTransaction};

use super::codec;
use super::tables::{
    ATTEMPTS, BY_KEY, DbResult, FORMAT, KV, KV_USAGE, META, META_FORMAT, META_NEXT_SEQ, OWNERS,
    PAUSED, PENDING, SCHEDULES, STATE_COUNTS, TASKS, UKEYS, indexed_task, key_range_bounds,
    kv_usage, load_task,
};
use kairos_core::model::{
    Attempt, EnqueueOutcome, Millis, NewTask, Schedule, StateCounts, Task, TaskState, Transition,
};
use kairos_core::ownership::Lease;
use kairos_core::store::{Purged, StoreError, StoreResult};
use std::ops::Bound;

/// The tables of one write transaction.
pub(crate) struct WriteTables<'t> {
    tasks: Table<'t, &'static str, &'static [u8]>,
    pending: Table<'t, (u32, i64, u64), &'static str>,
    ukeys: Table<'t, &'static str, &'static str>,
    attempts: Table<'t, (&'static str, u32), &'static [u8]>,
    by_key: Table<'t, (&'static str, i64, u64), &'static str>,
    meta: Table<'t, &'static str, u64>,
    paused: Table<'t, &'static str, ()>,
    schedules: Table<'t, &'static str, &'static [u8]>,
    kv: Table<'t, (&'static str, &'static str), (i64, &'static [u8])>,
    kv_usage: Table<'t, &'static str, u64>,
    owners: Table<'t, u32, (u64, &'static str)>,
    state_counts: Table<'t, &'static str, u64>,
    /// Tasks that entered each state in this transaction (new tasks included).
    entered: StateCounts,
    /// Tasks that left each state in this transaction (purged tasks included).
    left: StateCounts,
    next_seq: u64,
    first_seq: u64,
    /// Set by every mutation; the writer resets it before each operation so it knows whether a
    /// failed operation left changes behind.
    pub(crate) dirty: bool,
}

/// What of a task's previous version decides its index entries.
#[derive(Debug, Clone, Copy)]
struct Before {
    due_at: Millis,
    pending: bool,
    state: TaskState,
}

impl Before {
    fn of(t: &Task) -> Self {
        Self {
            due_at: t.due_at,
            pending: t.is_pending(),
            state: t.state,
        }
    }
}

fn conflict(t: &Task, what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "cannot {what} task {}: it is {}",
        t.id,
        t.state.as_str()
    ))
}

impl<'t> WriteTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction, next_seq: u64) -> StoreResult<Self> {
        Ok(Self {
            tasks: txn.open_table(TASKS).db()?,
            pending: txn.open_table(PENDING).db()?,
            ukeys: txn.open_table(UKEYS).db()?,
            attempts: txn.open_table(ATTEMPTS).db()?,
            by_key: txn.open_table(BY_KEY).db()?,
            meta: txn.open_table(META).db()?,
            paused: txn.open_table(PAUSED).db()?,
            schedules: txn.open_table(SCHEDULES).db()?,
            kv: txn.open_table(KV).db()?,
            kv_usage: txn.open_table(KV_USAGE).db()?,
            owners: txn.open_table(OWNERS).db()?,
            state_counts: txn.open_table(STATE_COUNTS).db()?,
            entered: StateCounts::default(),
            left: StateCounts::default(),
            next_seq,
            first_seq: next_seq,
            dirty: false,
        })
    }

    /// Persists the sequence counter and the state counts; returns the next sequence number
    /// after this batch.
    pub(crate) fn finish(mut self) -> StoreResult<u64> {
        if self.next_seq != self.first_seq {
            self.meta.insert(META_NEXT_SEQ, self.next_seq).db()?;
        }
        if self.entered != self.left {
            for state in TaskState::ALL {
                let (entered, left) = (self.entered.get(state), self.left.get(state));
                if entered == left {
                    continue;
                }
                let key = state.as_str();
                let stored = self.state_counts.get(key).db()?.map_or(0, |v| v.value());
                let count = stored.saturating_add(entered).saturating_sub(left);
                self.state_counts.insert(key, count).db()?;
            }
        }
        Ok(self.next_seq)
    }

    /// A write of no consequence (the health probe): rewrites the format marker.
    pub(crate) fn probe(&mut self) -> StoreResult<()> {
        self.meta.insert(META_FORMAT, FORMAT).db()?;
        Ok(())
    }

    fn require(&self, id: &str) -> StoreResult<Task> {
        load_task(&self.tasks, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    fn epoch_of(&self, partition: u32) -> StoreResult<Option<u64>> {
        Ok(self.owners.get(partition).db()?.map(|v| v.value().0))
    }

    /// `Fenced` unless `lease` is its partition's current lease.
    fn check_lease(&self, lease: &Lease) -> StoreResult<()> {
        let current = self.epoch_of(lease.partition)?;
        if current == Some(lease.epoch) {
            Ok(())
        } else {
            Err(StoreError::fenced(lease, current))
        }
    }

    /// The task, if `lease` is current and covers its partition.
    fn require_under(&self, lease: &Lease, id: &str) -> StoreResult<Task> {
        self.check_lease(lease)?;
        let t = self.require(id)?;
        if t.partition != lease.partition {
            return Err(StoreError::Conflict(format!(
                "task {id} is in partition {}, not under {lease}",
                t.partition
            )));
        }
        Ok(t)
    }

    pub(crate) fn acquire_lease(&mut self, partition: u32, node_id: &str) -> StoreResult<Lease> {
        let epoch = self.epoch_of(partition)?.unwrap_or(0) + 1;
        self.dirty = true;
        self.owners.insert(partition, (epoch, node_id)).db()?;
        Ok(Lease { partition, epoch })
    }

    /// Writes `t`, which was `before` (if it existed), and moves its index entries along.
    fn save(&mut self, before: Option<Before>, t: &Task) -> StoreResult<()> {
        self.reindex(before, t)?;
        let bytes = codec::encode_task(t)?;
        self.tasks.insert(t.id.as_str(), bytes.as_slice()).db()?;
        Ok(())
    }

    /// Index entries of a task just stored for the first time.
    fn index_new(&mut self, t: &Task) -> StoreResult<()> {
        self.reindex(None, t)
    }

    /// Id, key, partition and seq never change; the position moves only with `due_at`. Also
    /// counts the change of state.
    fn reindex(&mut self, before: Option<Before>, t: &Task) -> StoreResult<()> {
        self.dirty = true;
        let was = before.map(|b| b.state);
        if was != Some(t.state) {
            if let Some(s) = was {
                self.left.add(s, 1);
            }
            self.entered.add(t.state, 1);
        }
        let moved = before.is_some_and(|b| b.due_at != t.due_at);
        let was_pending = before.is_some_and(|b| b.pending);
        if let Some(b) = before {
            if b.pending && (moved || !t.is_pending()) {
                self.pending.remove((t.partition, b.due_at, t.seq)).db()?;
            }
            if moved {
                self.by_key.remove((t.key.as_str(), b.due_at, t.seq)).db()?;
            }
        }
        if t.is_pending() && (moved || !was_pending) {
            self.pending
                .insert((t.partition, t.due_at, t.seq), t.id.as_str())
                .db()?;
        }
        if before.is_none() || moved {
            self.by_key
                .insert((t.key.as_str(), t.due_at, t.seq), t.id.as_str())
                .db()?;
        }
        Ok(())
    }

    /// See [`kairos_core::store::TaskStore::purge_finished`]. A record that does not decode is
    /// left alone (and reported by `get`).
    pub(crate) fn purge_finished(
        &mut self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        let scan = scan.max(1);
        let mut expired = Vec::new();
        let mut seen = 0;
        let mut last = None;
        {
            let range = match after {
                Some(a) => self
                    .tasks
                    .range::<&str>((Bound::Excluded(a), Bound::Unbounded))
                    .db()?,
                None => self.tasks.range::<&str>(..).db()?,
            };
            for entry in range.take(scan) {
                let (id, bytes) = entry.db()?;
                seen += 1;
                last = Some(id.value().to_string());
                if let Ok(t) = codec::decode_task(bytes.value())
                    && t.expired(before)
                {
                    expired.push(t);
                }
            }
        }
        for t in &expired {
            self.dirty = true;
            self.left.add(t.state, 1);
            self.tasks.remove(t.id.as_str()).db()?;
            for n in 1..=t.attempts {
                self.attempts.remove((t.id.as_str(), n)).db()?;
            }
            self.by_key.remove((t.key.as_str(), t.due_at, t.seq)).db()?;
            if let Some(u) = &t.uniqueness_key {
                let holder = self.ukeys.get(u.as_str()).db()?.map(|v| v.value() == t.id);
                if holder == Some(true) {
                    self.ukeys.remove(u.as_str()).db()?;
                }
            }
        }
        Ok(Purged {
            deleted: expired.len(),
            next: if seen == scan { last } else { None },
        })
    }

    pub(crate) fn enqueue(&mut self, batch: &[NewTask]) -> StoreResult<Vec<EnqueueOutcome>> {
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(ukey) = &new.uniqueness_key {
                let owner = self
                    .ukeys
                    .get(ukey.as_str())
                    .db()?
                    .map(|v| v.value().to_owned());
                if let Some(owner) = owner {
                    out.push(EnqueueOutcome::Duplicate(indexed_task(
                        &self.tasks,
                        &owner,
                    )?));
                    continue;
                }
            }
            let task = Task::from_new(new.clone(), self.next_seq);
            // The record goes in first: its previous value tells whether the id is taken, which
            // saves a separate lookup on the common path.
            self.dirty = true;
            let bytes = codec::encode_task(&task)?;
            let previous = self
                .tasks
                .insert(task.id.as_str(), bytes.as_slice())
                .db()?
                .map(|old| old.value().to_vec());
            if let Some(previous) = previous {
                // A replayed enqueue (same id) never resets the stored task.
                self.tasks
                    .insert(task.id.as_str(), previous.as_slice())
                    .db()?;
                out.push(EnqueueOutcome::Duplicate(codec::decode_task(&previous)?));
                continue;
            }
            self.next_seq += 1;
            self.index_new(&task)?;
            if let Some(ukey) = &task.uniqueness_key {
                self.ukeys.insert(ukey.as_str(), task.id.as_str()).db()?;
            }
            out.push(EnqueueOutcome::Created(task));
        }
        Ok(out)
    }

    pub(crate) fn start_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        if t.state.is_terminal() {
            return Err(conflict(&t, "start"));
        }
        let reclaim = attempt == t.attempts && t.state == TaskState::Running;
        if attempt < t.attempts || (attempt == t.attempts && !reclaim) {
            return Err(StoreError::Conflict(format!(
                "cannot start attempt {attempt} of task {id}: attempt {} {}",
                t.attempts,
                if t.state == TaskState::Running {
                    "runs"
                } else {
                    "has ended"
                }
            )));
        }
        let before = Before::of(&t);
        t.state = TaskState::Running;
        t.attempts = attempt;
        t.updated_at = at;
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn finish_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: &Attempt,
        transition: &Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        if t.state != TaskState::Running {
            return Err(conflict(&t, "finish an attempt of"));
        }
        let before = Before::of(&t);
        t.apply_finish(attempt.number, transition, at);
        self.dirty = true;
        let bytes = codec::encode_attempt(attempt)?;
        self.attempts
            .insert((id, attempt.number), bytes.as_slice())
            .db()?;
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn cancel(&mut self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        match t.state {
            TaskState::Scheduled | TaskState::Retrying | TaskState::Dead => {}
            _ => return Err(conflict(&t, "cancel")),
        }
        let before = Before::of(&t);
        t.state = TaskState::Cancelled;
        t.updated_at = at;
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn retry_dead(
        &mut self,
        lease: &Lease,
        id: &str,
        extra: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        if t.state != TaskState::Dead {
            return Err(conflict(&t, "retry"));
        }
        let before = Before::of(&t);
        t.state = TaskState::Scheduled;
        t.next_at = at;
        t.max_attempts = t.attempts.saturating_add(extra);
        t.updated_at = at;
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn reschedule(
        &mut self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        if !matches!(t.state, TaskState::Scheduled | TaskState::Retrying) {
            return Err(conflict(&t, "reschedule"));
        }
        let before = Before::of(&t);
        // It takes its new position as a scheduled task: a retrying one no longer holds its key.
        t.state = TaskState::Scheduled;
        t.due_at = run_at;
        t.next_at = run_at;
        t.updated_at = at;
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn unpark_key(&mut self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.check_lease(lease)?;
        // Find the parked tasks first (reading only), then update them.
        let mut parked = Vec::new();
        for entry in self.by_key.range(key_range_bounds(key)).db()? {
            let (_, id) = entry.db()?;
            let t = indexed_task(&self.tasks, id.value())?;
            if t.state == TaskState::Dead && t.park_on_dead {
                parked.push(t);
            }
        }
        let count = parked.len() as u32;
        for mut t in parked {
            let before = Before::of(&t);
            t.park_on_dead = false;
            t.updated_at = at;
            self.save(Some(before), &t)?;
        }
        Ok(count)
    }

    pub(crate) fn set_key_paused(&mut self, key: &str, paused: bool) -> StoreResult<()> {
        self.dirty = true;
        if paused {
            self.paused.insert(key, ()).db()?;
        } else {
            self.paused.remove(key).db()?;
        }
        Ok(())
    }

    pub(crate) fn put_schedule(&mut self, schedule: &Schedule) -> StoreResult<()> {
        let bytes = codec::encode_schedule(schedule)?;
        self.dirty = true;
        self.schedules
            .insert(schedule.name.as_str(), bytes.as_slice())
            .db()?;
        Ok(())
    }

    pub(crate) fn delete_schedule(&mut self, name: &str) -> StoreResult<bool> {
        self.dirty = true;
        Ok(self.schedules.remove(name).db()?.is_some())
    }

    pub(crate) fn mark_schedule_fired(
        &mut self,
        name: &str,
        occurrence: Millis,
    ) -> StoreResult<()> {
        let mut s = match self.schedules.get(name).db()? {
            Some(v) => codec::decode_schedule(v.value())?,
            None => return Err(StoreError::NotFound(format!("schedule {name}"))),
        };
        if s.last_fired.is_some_and(|last| last >= occurrence) {
            return Ok(());
        }
        s.last_fired = Some(occurrence);
        self.put_schedule(&s)
    }

    pub(crate) fn kv_set(
        &mut self,
        plugin: &str,
        key: &str,
        value: &[u8],
        at: Millis,
    ) -> StoreResult<()> {
        self.dirty = true;
        let total = kv_usage(&self.kv_usage, &self.kv, plugin)?;
        let old = self.kv.insert((plugin, key), (at, value)).db()?;
        let old = old.map_or(0, |v| (key.len() + v.value().1.len()) as u64);
        let new = total.saturating_sub(old) + (key.len() + value.len()) as u64;
        self.kv_usage.insert(plugin, new).db()?;
        Ok(())
    }

    pub(crate) fn kv_delete(&mut self, plugin: &str, key: &str) -> StoreResult<bool> {
        self.dirty = true;
        let total = kv_usage(&self.kv_usage, &self.kv, plugin)?;
        let old = self.kv.remove((plugin, key)).db()?;
        let old = old.map(|v| (key.len() + v.value().1.len()) as u64);
        if let Some(n) = old {
            self.kv_usage.insert(plugin, total.saturating_sub(n)).db()?;
        }
        Ok(old.is_some())
    }
}
