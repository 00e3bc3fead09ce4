//! State changes of one task: a read (or the row this store read or wrote last, see
//! [`crate::rowcache`]), the new state computed by the same rules as the embedded store, then
//! a compare-and-set LWT `UPDATE task_rows … IF rev = <read rev> AND seq = <read seq>`
//! (the scheduler's starts and finishes do the same in batches: [`crate::batch`]). A lost
//! race re-reads and re-checks, so the `Conflict` rules hold exactly against concurrent
//! operators and schedulers.
//!
//! Index upkeep around the CAS: rows the new state needs are written *before* it (if the CAS
//! loses they are stale and skipped by readers), rows the old state no longer needs are
//! deleted *after* it (if that fails they are stale and skipped).
//!
//! Every change takes the caller's lease: see [`crate::fencing`] for how it is checked.

use std::collections::HashMap;

use crate::batch::{bounded_batches, each_bounded};
use kairos_core::model::{Millis, Task, TaskState, Transition};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, StoreResult};

use crate::CassandraStore;
use crate::rows::Stored;

pub(crate) fn conflict(t: &Task, what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "cannot {what} task {}: it is {}",
        t.id,
        t.state.as_str()
    ))
}

/// The index rows a change from `old` to `new` adds before its compare-and-set and drops
/// after it.
pub(crate) struct IndexPlan {
    /// `new` needs a `pending` row (it is pending at a new position).
    pub add_pending: bool,
    /// The due time moved: a new `tasks_by_key` row, the old one dropped.
    pub moved: bool,
    /// `old`'s `pending` row goes.
    pub drop_pending: bool,
}

impl IndexPlan {
    pub(crate) fn of(old: &Task, new: &Task) -> Self {
        let moved = old.due_at != new.due_at;
        Self {
            add_pending: new.is_pending() && (moved || !old.is_pending()),
            moved,
            drop_pending: old.is_pending() && (moved || !new.is_pending()),
        }
    }
}

impl CassandraStore {
    /// Applies `f` (old → new task and the owner epoch to store) with compare-and-set: the
    /// one-task case of [`cas_many`](Self::cas_many). Returns the old and the new state.
    pub(crate) async fn cas<F>(&self, id: &str, f: F) -> StoreResult<(Stored, Task)>
    where
        F: Fn(&Stored) -> StoreResult<(Task, u64)> + Sync,
    {
        let answer = self
            .cas_many(&[id], &[], |_, old| f(old))
            .await
            .into_iter()
            .next();
        answer.unwrap_or_else(|| Err(StoreError::Other(format!("task {id}: no answer"))))
    }

    /// The index rows a change needs before its compare-and-set.
    pub(crate) async fn before_cas(&self, old: &Stored, new: &Task) -> StoreResult<()> {
        let plan = IndexPlan::of(&old.task, new);
        if plan.add_pending || plan.moved {
            self.index_add(new, old.home, plan.add_pending, plan.moved)
                .await?;
        }
        Ok(())
    }

    /// After applied compare-and-sets: remembers the new rows, drops the index rows the old
    /// states no longer need (a failure leaves a stale row that readers skip). The `pending`
    /// rows that go and share a Cassandra partition are deleted by one unlogged batch.
    pub(crate) async fn after_cas_many(&self, applied: &[(&Stored, &Task, u64)]) {
        let mut drop_pending: HashMap<(u32, i64), Vec<&Task>> = HashMap::new();
        let mut moved: Vec<&Task> = Vec::new();
        for &(old, new, epoch) in applied {
            if new.state == TaskState::Running || new.is_pending() {
                // The next change of a running or pending task starts from this row.
                self.rows.put(Stored {
                    task: new.clone(),
                    home: old.home,
                    owner_epoch: epoch,
                    rev: old.rev.wrapping_add(1),
                });
            }
            let plan = IndexPlan::of(&old.task, new);
            if plan.drop_pending {
                let bucket = self.bucket_of(old.task.due_at);
                drop_pending
                    .entry((old.task.partition, bucket))
                    .or_default()
                    .push(&old.task);
            }
            if plan.moved {
                moved.push(&old.task);
            }
        }
        let groups: Vec<Vec<&Task>> = drop_pending
            .into_values()
            .flat_map(|tasks| bounded_batches(tasks, usize::MAX, |_| 0))
            .collect();
        let conc = self.opts.concurrency;
        let dropped = each_bounded(&groups, conc, |tasks| self.pending_remove_many(tasks)).await;
        for r in dropped {
            if let Err(e) = r {
                tracing::warn!(error = %e, "stale pending rows left behind");
            }
        }
        let unkeyed = each_bounded(&moved, conc, |t| self.bykey_remove(t)).await;
        for (t, r) in moved.iter().zip(unkeyed) {
            if let Err(e) = r {
                tracing::warn!(task = %t.id, error = %e, "stale by-key row left behind");
            }
        }
    }

    /// The checks every change under `lease` makes on the task row it read: the task belongs
    /// to the lease's partition (else `Conflict`) and no newer lease has changed it (else
    /// `Fenced`).
    fn check_leased(&self, old: &Stored, lease: &Lease) -> StoreResult<()> {
        if old.task.partition != lease.partition {
            return Err(StoreError::Conflict(format!(
                "task {} belongs to partition {}, not to {lease}",
                old.task.id, old.task.partition
            )));
        }
        if old.owner_epoch > lease.epoch {
            return Err(self.leases.fenced_by_stamp(lease, old.owner_epoch));
        }
        Ok(())
    }

    /// The checks of a change to the attempt running under `lease` (its end, or giving its
    /// start back): [`check_leased`](Self::check_leased), the task is running (else
    /// `Conflict`), and the lease's epoch started it (else `Fenced`: running since an older
    /// lease claimed it, it is not an attempt of this lease).
    fn check_own_attempt(&self, old: &Stored, lease: &Lease, what: &str) -> StoreResult<()> {
        self.check_leased(old, lease)?;
        if old.task.state != TaskState::Running {
            return Err(conflict(&old.task, what));
        }
        if old.owner_epoch != lease.epoch {
            return Err(self.leases.fenced_by_stamp(lease, old.owner_epoch));
        }
        Ok(())
    }

    /// The start of attempt `attempt` of the task stored as `old`, under `lease` (the caller
    /// confirms the lease afterwards): refused if a newer lease changed the task; stamps the
    /// task with the lease's epoch.
    pub(crate) fn start_change(
        &self,
        lease: &Lease,
        old: &Stored,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<(Task, u64)> {
        self.check_leased(old, lease)?;
        let t = &old.task;
        if t.state.is_terminal() {
            return Err(conflict(t, "start"));
        }
        // A new attempt, or the same attempt claimed again after its answer was lost.
        let reclaim = attempt == t.attempts && t.state == TaskState::Running;
        if attempt <= t.attempts && !reclaim {
            return Err(StoreError::Conflict(format!(
                "cannot start attempt {attempt} of task {}: it is {} after {} attempts",
                t.id,
                t.state.as_str(),
                t.attempts
            )));
        }
        let mut t = t.clone();
        t.state = TaskState::Running;
        t.attempts = attempt;
        t.updated_at = at;
        Ok((t, lease.epoch))
    }

    /// The end of attempt `number` of the task stored as `old`, under `lease`: only the epoch
    /// that started the attempt may finish it.
    pub(crate) fn finish_change(
        &self,
        lease: &Lease,
        old: &Stored,
        number: u32,
        transition: &Transition,
        at: Millis,
    ) -> StoreResult<(Task, u64)> {
        self.check_own_attempt(old, lease, "finish an attempt of")?;
        let mut t = old.task.clone();
        t.apply_finish(number, transition, at);
        Ok((t, lease.epoch))
    }

    /// Gives back the start of attempt `attempt` of the task stored as `old`, under `lease`:
    /// like a finish, only the epoch that started the attempt may give it back.
    pub(crate) fn unclaim_change(
        &self,
        lease: &Lease,
        old: &Stored,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<(Task, u64)> {
        self.check_own_attempt(old, lease, "give back an attempt of")?;
        let mut t = old.task.clone();
        t.apply_unclaim(attempt, back_to, at)
            .map_err(StoreError::Conflict)?;
        Ok((t, lease.epoch))
    }

    /// An operator's change of one task under `lease`: the lease is confirmed current first,
    /// then `change` (old → new task) is applied with compare-and-set, stamped with the
    /// lease's epoch.
    async fn leased_change<F>(&self, lease: &Lease, id: &str, change: F) -> StoreResult<Task>
    where
        F: Fn(&Task) -> StoreResult<Task> + Sync,
    {
        self.confirm_lease(lease).await?;
        let (_, new) = self
            .cas(id, |old| {
                self.check_leased(old, lease)?;
                Ok((change(&old.task)?, lease.epoch))
            })
            .await?;
        Ok(new)
    }

    pub(crate) async fn cancel_impl(
        &self,
        lease: &Lease,
        id: &str,
        at: Millis,
    ) -> StoreResult<Task> {
        self.leased_change(lease, id, |old| match old.state {
            TaskState::Scheduled | TaskState::Retrying | TaskState::Dead => {
                let mut t = old.clone();
                t.state = TaskState::Cancelled;
                t.updated_at = at;
                Ok(t)
            }
            _ => Err(conflict(old, "cancel")),
        })
        .await
    }

    pub(crate) async fn retry_dead_impl(
        &self,
        lease: &Lease,
        id: &str,
        extra: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.leased_change(lease, id, |old| {
            if old.state != TaskState::Dead {
                return Err(conflict(old, "retry"));
            }
            let mut t = old.clone();
            t.state = TaskState::Scheduled;
            t.next_at = at;
            t.max_attempts = t.attempts.saturating_add(extra);
            t.updated_at = at;
            Ok(t)
        })
        .await
    }

    pub(crate) async fn reschedule_impl(
        &self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        self.leased_change(lease, id, |old| {
            if !matches!(old.state, TaskState::Scheduled | TaskState::Retrying) {
                return Err(conflict(old, "reschedule"));
            }
            let mut t = old.clone();
            // It takes its new position as a scheduled task: a retrying one no longer holds its key.
            t.state = TaskState::Scheduled;
            t.due_at = run_at;
            t.next_at = run_at;
            t.updated_at = at;
            Ok(t)
        })
        .await
    }

    /// Unparks the parked dead tasks of `key` in the lease's partition (a key maps to one
    /// partition; tasks of it stored elsewhere are not this lease's to change).
    pub(crate) async fn unpark_key_impl(
        &self,
        lease: &Lease,
        key: &str,
        at: Millis,
    ) -> StoreResult<u32> {
        self.confirm_lease(lease).await?;
        let filter = kairos_core::model::ListFilter {
            key: Some(key.to_owned()),
            state: Some(TaskState::Dead),
            limit: usize::MAX,
            after: None,
        };
        let mut n = 0;
        for t in self.list_impl(&filter).await? {
            if !t.park_on_dead || t.partition != lease.partition {
                continue;
            }
            let r = self
                .cas(&t.id, |old| {
                    self.check_leased(old, lease)?;
                    if old.task.state != TaskState::Dead || !old.task.park_on_dead {
                        return Err(conflict(&old.task, "unpark"));
                    }
                    let mut t = old.task.clone();
                    t.park_on_dead = false;
                    t.updated_at = at;
                    Ok((t, lease.epoch))
                })
                .await;
            match r {
                Ok(_) => n += 1,
                // Someone else changed it meanwhile (retried, cancelled, unparked).
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}
