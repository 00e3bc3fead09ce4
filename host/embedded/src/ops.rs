//! The write operations, run by the writer thread on a batch's staged view of the database.
//!
//! Every operation validates before it mutates. Index upkeep lives in `WriteTables::reindex`,
//! which keeps two invariants:
//! - `pending` holds `(partition, due_at, seq) → id` for exactly the tasks that
//!   [`Task::is_pending`];
//! - `by_key` holds `(key, due_at, seq) → id` for every task.
//!
//! It also counts the tasks entering and leaving each state; `finish` applies the differences
//! to `state_counts` once per batch.
//!
//! An operation that fails after it staged writes has them undone by the writer
//! ([`WriteTables::undo_to`]), so no operation is ever half applied.

use super::codec;
use super::staged::{Mark, Staged};
use super::tables::{
    FORMAT, Keyspaces, Ks, META_FORMAT, META_NEXT_SEQ, attempt_key, by_key_key, by_key_prefix,
    decode_kv_value, decode_owner, decode_u64, id_value, indexed_task, kv_key, kv_usage, kv_value,
    load_task, owner_key, owner_value, pending_key, u64_value,
};
use kairos_core::model::{
    Attempt, EnqueueOutcome, Millis, NewTask, Schedule, StateCounts, Task, TaskState, Transition,
};
use kairos_core::ownership::Lease;
use kairos_core::store::{Purged, StoreError, StoreResult};

/// One batch's staged writes and what the batch changes besides them.
pub(crate) struct WriteTables<'t> {
    tx: Staged<'t>,
    ks: &'t Keyspaces,
    /// Tasks that entered each state in this batch (new tasks included).
    entered: StateCounts,
    /// Tasks that left each state in this batch (purged tasks included).
    left: StateCounts,
    next_seq: u64,
    first_seq: u64,
}

/// Where the batch stood before an operation ([`WriteTables::mark`]).
pub(crate) struct OpMark {
    staged: Mark,
    entered: StateCounts,
    left: StateCounts,
    next_seq: u64,
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
    pub(crate) fn new(tx: Staged<'t>, ks: &'t Keyspaces, next_seq: u64) -> Self {
        Self {
            tx,
            ks,
            entered: StateCounts::default(),
            left: StateCounts::default(),
            next_seq,
            first_seq: next_seq,
        }
    }

    /// Where the batch stands, before an operation.
    pub(crate) fn mark(&self) -> OpMark {
        OpMark {
            staged: self.tx.mark(),
            entered: self.entered,
            left: self.left,
            next_seq: self.next_seq,
        }
    }

    /// The operation since the last mark succeeded: its writes stay (see [`Staged::keep`]).
    /// Marks taken before this no longer apply.
    pub(crate) fn keep(&mut self) {
        self.tx.keep();
    }

    /// Takes back everything done since `mark` (the operation after it failed).
    pub(crate) fn undo_to(&mut self, mark: OpMark) {
        self.tx.undo_to(mark.staged);
        self.entered = mark.entered;
        self.left = mark.left;
        self.next_seq = mark.next_seq;
    }

    /// Stages the sequence counter and the state counts; returns the batch's writes with the
    /// next sequence number after it, for the caller to commit.
    pub(crate) fn finish(mut self) -> StoreResult<(Staged<'t>, u64)> {
        if self.next_seq != self.first_seq {
            self.tx
                .insert(Ks::Meta, META_NEXT_SEQ, u64_value(self.next_seq));
        }
        if self.entered != self.left {
            for state in TaskState::ALL {
                let (entered, left) = (self.entered.get(state), self.left.get(state));
                if entered == left {
                    continue;
                }
                let key = state.as_str();
                let stored = match self.tx.get(Ks::StateCounts, key.as_bytes())? {
                    Some(v) => decode_u64(&v)?,
                    None => 0,
                };
                let count = stored.saturating_add(entered).saturating_sub(left);
                self.tx.insert(Ks::StateCounts, key, u64_value(count));
            }
        }
        Ok((self.tx, self.next_seq))
    }

    /// A write of no consequence (the health probe): rewrites the format marker.
    pub(crate) fn probe(&mut self) -> StoreResult<()> {
        self.tx.insert(Ks::Meta, META_FORMAT, u64_value(FORMAT));
        Ok(())
    }

    fn require(&self, id: &str) -> StoreResult<Task> {
        load_task(&self.tx, self.ks, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    fn epoch_of(&self, partition: u32) -> StoreResult<Option<u64>> {
        match self.tx.get(Ks::Owners, &owner_key(partition))? {
            Some(v) => Ok(Some(decode_owner(&v)?.0)),
            None => Ok(None),
        }
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
        self.tx.insert(
            Ks::Owners,
            owner_key(partition),
            owner_value(epoch, node_id),
        );
        Ok(Lease { partition, epoch })
    }

    /// Writes `t`, which was `before` (if it existed), and moves its index entries along.
    fn save(&mut self, before: Option<Before>, t: &Task) -> StoreResult<()> {
        self.reindex(before, t)?;
        let bytes = codec::encode_task(t)?;
        self.tx.insert(Ks::Tasks, t.id.as_str(), bytes);
        Ok(())
    }

    /// Index entries of a task just stored for the first time.
    fn index_new(&mut self, t: &Task) -> StoreResult<()> {
        self.reindex(None, t)
    }

    /// Id, key, partition and seq never change; the position moves only with `due_at`. Also
    /// counts the change of state.
    fn reindex(&mut self, before: Option<Before>, t: &Task) -> StoreResult<()> {
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
                self.tx
                    .remove(Ks::Pending, pending_key(t.partition, b.due_at, t.seq));
            }
            if moved {
                self.tx
                    .remove(Ks::ByKey, by_key_key(&t.key, b.due_at, t.seq));
            }
        }
        if t.is_pending() && (moved || !was_pending) {
            self.tx.insert(
                Ks::Pending,
                pending_key(t.partition, t.due_at, t.seq),
                t.id.as_str(),
            );
        }
        if before.is_none() || moved {
            self.tx.insert(
                Ks::ByKey,
                by_key_key(&t.key, t.due_at, t.seq),
                t.id.as_str(),
            );
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
        let mut last = None;
        let seen = self.tx.scan(
            Ks::Tasks,
            after.map(str::as_bytes),
            b"",
            scan,
            |id, bytes| {
                last = Some(id_value(id)?.to_string());
                if let Ok(t) = codec::decode_task(bytes)
                    && t.expired(before)
                {
                    expired.push(t);
                }
                Ok(())
            },
        )?;
        for t in &expired {
            self.left.add(t.state, 1);
            self.tx.remove(Ks::Tasks, t.id.as_str());
            for n in 1..=t.attempts {
                self.tx.remove(Ks::Attempts, attempt_key(&t.id, n));
            }
            self.tx
                .remove(Ks::ByKey, by_key_key(&t.key, t.due_at, t.seq));
            if let Some(u) = &t.uniqueness_key {
                let holder = self.tx.get(Ks::Ukeys, u.as_bytes())?;
                if holder.is_some_and(|v| *v == *t.id.as_bytes()) {
                    self.tx.remove(Ks::Ukeys, u.as_str());
                }
            }
        }
        Ok(Purged {
            deleted: expired.len(),
            next: if seen == scan { last } else { None },
        })
    }

    pub(crate) fn enqueue(&mut self, batch: &[NewTask]) -> StoreResult<Vec<EnqueueOutcome>> {
        let ks = self.ks;
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(ukey) = &new.uniqueness_key
                && let Some(owner) = self.tx.get(Ks::Ukeys, ukey.as_bytes())?
            {
                out.push(EnqueueOutcome::Duplicate(indexed_task(
                    &self.tx, ks, &owner,
                )?));
                continue;
            }
            // A replayed enqueue (same id) never resets the stored task.
            if let Some(previous) = self.tx.get(Ks::Tasks, new.id.as_bytes())? {
                out.push(EnqueueOutcome::Duplicate(codec::decode_task(&previous)?));
                continue;
            }
            let task = Task::from_new(new.clone(), self.next_seq);
            let bytes = codec::encode_task(&task)?;
            self.tx.insert(Ks::Tasks, task.id.as_str(), bytes);
            self.next_seq += 1;
            self.index_new(&task)?;
            if let Some(ukey) = &task.uniqueness_key {
                self.tx.insert(Ks::Ukeys, ukey.as_str(), task.id.as_str());
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
        let bytes = codec::encode_attempt(attempt)?;
        self.tx
            .insert(Ks::Attempts, attempt_key(id, attempt.number), bytes);
        self.save(Some(before), &t)?;
        Ok(t)
    }

    pub(crate) fn unclaim_attempt(
        &mut self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        let mut t = self.require_under(lease, id)?;
        let before = Before::of(&t);
        t.apply_unclaim(attempt, back_to, at)
            .map_err(StoreError::Conflict)?;
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
        let ks = self.ks;
        // Find the parked tasks first (reading only), then update them.
        let mut parked = Vec::new();
        let tx = &self.tx;
        tx.scan(Ks::ByKey, None, &by_key_prefix(key), usize::MAX, |_, id| {
            let t = indexed_task(tx, ks, id)?;
            if t.state == TaskState::Dead && t.park_on_dead {
                parked.push(t);
            }
            Ok(())
        })?;
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
        if paused {
            self.tx.insert(Ks::Paused, key, b"");
        } else {
            self.tx.remove(Ks::Paused, key);
        }
        Ok(())
    }

    pub(crate) fn put_schedule(&mut self, schedule: &Schedule) -> StoreResult<()> {
        let bytes = codec::encode_schedule(schedule)?;
        self.tx.insert(Ks::Schedules, schedule.name.as_str(), bytes);
        Ok(())
    }

    pub(crate) fn delete_schedule(&mut self, name: &str) -> StoreResult<bool> {
        let existed = self.tx.get(Ks::Schedules, name.as_bytes())?.is_some();
        if existed {
            self.tx.remove(Ks::Schedules, name);
        }
        Ok(existed)
    }

    pub(crate) fn mark_schedule_fired(
        &mut self,
        name: &str,
        occurrence: Millis,
    ) -> StoreResult<()> {
        let mut s = match self.tx.get(Ks::Schedules, name.as_bytes())? {
            Some(v) => codec::decode_schedule(&v)?,
            None => return Err(StoreError::NotFound(format!("schedule {name}"))),
        };
        if s.last_fired.is_some_and(|last| last >= occurrence) {
            return Ok(());
        }
        s.last_fired = Some(occurrence);
        self.put_schedule(&s)
    }

    /// The size an existing kv entry counts for, if there is one.
    fn kv_size(&self, plugin: &str, key: &str) -> StoreResult<Option<u64>> {
        match self.tx.get(Ks::Kv, &kv_key(plugin, key))? {
            Some(v) => Ok(Some((key.len() + decode_kv_value(&v)?.1.len()) as u64)),
            None => Ok(None),
        }
    }

    pub(crate) fn kv_set(
        &mut self,
        plugin: &str,
        key: &str,
        value: &[u8],
        at: Millis,
    ) -> StoreResult<()> {
        let ks = self.ks;
        let total = kv_usage(&self.tx, ks, plugin)?;
        let old = self.kv_size(plugin, key)?.unwrap_or(0);
        self.tx
            .insert(Ks::Kv, kv_key(plugin, key), kv_value(at, value));
        let new = total.saturating_sub(old) + (key.len() + value.len()) as u64;
        self.tx.insert(Ks::KvUsage, plugin, u64_value(new));
        Ok(())
    }

    pub(crate) fn kv_delete(&mut self, plugin: &str, key: &str) -> StoreResult<bool> {
        let ks = self.ks;
        let total = kv_usage(&self.tx, ks, plugin)?;
        let Some(old) = self.kv_size(plugin, key)? else {
            return Ok(false);
        };
        self.tx.remove(Ks::Kv, kv_key(plugin, key));
        self.tx
            .insert(Ks::KvUsage, plugin, u64_value(total.saturating_sub(old)));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Db, by_key_key, pending_key};
    use fjall::Readable;
    use kairos_conformance::{T0, new_task};

    #[test]
    fn an_undone_operation_leaves_no_record_no_count_and_no_sequence_number_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("db"), 1 << 20).expect("open");
        let mut w = WriteTables::new(Staged::new(db.db.read_tx(), &db.ks), &db.ks, 1);
        let a = w.enqueue(&[new_task("a", T0)]).expect("enqueue a");
        let mark = w.mark();
        let b = w.enqueue(&[new_task("b", T0 + 5)]).expect("enqueue b");
        w.undo_to(mark);
        let c = w.enqueue(&[new_task("c", T0)]).expect("enqueue c");
        let (staged, next_seq) = w.finish().expect("finish");
        staged.into_batch(db.db.inner()).commit().expect("commit");

        let (a, b, c) = (a[0].task(), b[0].task(), c[0].task());
        assert_eq!(
            (a.seq, b.seq, c.seq),
            (1, 2, 2),
            "b's number is given again"
        );
        assert_eq!(next_seq, 3);
        let snap = db.db.read_tx();
        assert!(crate::read::get(&db, &a.id).expect("get").is_some());
        assert!(crate::read::get(&db, &c.id).expect("get").is_some());
        assert!(crate::read::get(&db, &b.id).expect("get").is_none());
        let pending = snap.get(&db.ks.pending, pending_key(b.partition, b.due_at, b.seq));
        assert!(pending.expect("read").is_none());
        let by_key = snap.get(&db.ks.by_key, by_key_key(&b.key, b.due_at, b.seq));
        assert!(by_key.expect("read").is_none());
        let counts = crate::read::state_counts(&db).expect("counts");
        assert_eq!(counts.scheduled, 2, "{counts:?}");
    }
}
