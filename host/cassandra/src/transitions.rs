//! State changes of one task: a read (or the row this store read or wrote last, see
//! [`crate::rowcache`]), the new state computed by the same rules as the embedded store, then
//! a compare-and-set LWT `UPDATE tasks … IF rev = <read rev> AND seq = <read seq>`. A lost
//! race re-reads and re-checks, so the `Conflict` rules hold exactly against concurrent
//! operators and schedulers.
//!
//! Index upkeep around the CAS: rows the new state needs are written *before* it (if the CAS
//! loses they are stale and skipped by readers), rows the old state no longer needs are
//! deleted *after* it (if that fails they are stale and skipped).
//!
//! Every change takes the caller's lease: see [`crate::fencing`] for how it is checked.

use kairos_core::model::{Attempt, Millis, Task, TaskState, Transition};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, StoreResult};

use crate::error::Exec;
use crate::rows::{Stored, TaskCas, outcome_str};
use crate::{CassandraStore, Lwt};

const MAX_CAS_TRIES: u32 = 32;

pub(crate) fn conflict(t: &Task, what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "cannot {what} task {}: it is {}",
        t.id,
        t.state.as_str()
    ))
}

impl CassandraStore {
    /// Applies `f` (old → new task and the owner epoch to store) with compare-and-set.
    /// Returns the old and the new state.
    pub(crate) async fn cas<F>(&self, id: &str, f: F) -> StoreResult<(Stored, Task)>
    where
        F: Fn(&Stored) -> StoreResult<(Task, u64)>,
    {
        // The row this store read or wrote last, if any: the compare-and-set refuses it if
        // the task changed since (see `crate::rowcache`), and then the row is read.
        let mut cached = self.rows.take(id);
        for _ in 0..MAX_CAS_TRIES {
            let (old, from_cache) = match cached.take() {
                Some(row) => (row, true),
                None => (self.require(id).await?, false),
            };
            let (new, epoch) = match f(&old) {
                Ok(v) => v,
                // A refusal is only ever judged on a row read now.
                Err(_) if from_cache => continue,
                Err(e) => return Err(e),
            };
            let moved = old.task.due_at != new.due_at;
            let add_pending = new.is_pending() && (moved || !old.task.is_pending());
            if add_pending || moved {
                self.index_add(&new, add_pending, moved).await?;
            }
            let res = self
                .session
                .execute_unpaged(&self.st.task_cas, TaskCas::new(&old, &new, epoch)?)
                .await
                .exec()?;
            if !Lwt::parse(res)?.applied {
                continue;
            }
            if new.state == TaskState::Running || new.is_pending() {
                // The next change of a running or pending task starts from this row.
                self.rows.put(Stored {
                    task: new.clone(),
                    owner_epoch: epoch,
                    rev: old.rev.wrapping_add(1),
                });
            }
            let drop_pending = old.task.is_pending() && (moved || !new.is_pending());
            if drop_pending && let Err(e) = self.pending_remove(&old.task).await {
                tracing::warn!(task = id, error = %e, "stale pending row left behind");
            }
            if moved && let Err(e) = self.bykey_remove(&old.task).await {
                tracing::warn!(task = id, error = %e, "stale by-key row left behind");
            }
            return Ok((old, new));
        }
        Err(StoreError::Unavailable(format!(
            "task {id}: too many concurrent changes"
        )))
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

    /// One claim of `start_attempt` under `lease` (the caller confirms the lease afterwards):
    /// refused if a newer lease changed the task; stamps the task with the lease's epoch.
    pub(crate) async fn start_impl(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| {
                self.check_leased(old, lease)?;
                let t = &old.task;
                if t.state.is_terminal() {
                    return Err(conflict(t, "start"));
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
                let mut t = t.clone();
                t.state = TaskState::Running;
                t.attempts = attempt;
                t.updated_at = at;
                Ok((t, lease.epoch))
            })
            .await?;
        Ok(new)
    }

    /// `finish_attempt`: only the epoch that started the attempt may finish it.
    pub(crate) async fn finish_impl(
        &self,
        lease: &Lease,
        id: &str,
        attempt: &Attempt,
        transition: &Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        self.leases.check_not_superseded(lease)?;
        let (_, new) = self
            .cas(id, |old| {
                self.check_leased(old, lease)?;
                if old.task.state != TaskState::Running {
                    return Err(conflict(&old.task, "finish an attempt of"));
                }
                if old.owner_epoch != lease.epoch {
                    // Running since an older lease claimed it: not an attempt of this lease.
                    return Err(self.leases.fenced_by_stamp(lease, old.owner_epoch));
                }
                let mut t = old.task.clone();
                t.apply_finish(attempt.number, transition, at);
                Ok((t, lease.epoch))
            })
            .await?;
        self.session
            .execute_unpaged(
                &self.st.attempt_insert,
                (
                    id,
                    i64::from(attempt.number),
                    attempt.started_at,
                    attempt.ended_at,
                    outcome_str(attempt.outcome),
                    &attempt.error,
                    &attempt.plugin_digest,
                    &attempt.logs,
                ),
            )
            .await
            .exec()?;
        Ok(new)
    }

    /// An operator's change of one task under `lease`: the lease is confirmed current first,
    /// then `change` (old → new task) is applied with compare-and-set, stamped with the
    /// lease's epoch.
    async fn leased_change<F>(&self, lease: &Lease, id: &str, change: F) -> StoreResult<Task>
    where
        F: Fn(&Task) -> StoreResult<Task>,
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
