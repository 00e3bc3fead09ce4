//! State changes of one task: a read, the new state computed by the same rules as the
//! embedded store, then a compare-and-set LWT `UPDATE tasks … IF rev = <read rev>`. A lost
//! race re-reads and re-checks, so the `Conflict` rules hold exactly against concurrent
//! operators and schedulers.
//!
//! Index upkeep around the CAS: rows the new state needs are written *before* it (if the CAS
//! loses they are stale and skipped by readers), rows the old state no longer needs are
//! deleted *after* it (if that fails they are stale and skipped).

use kairos_core::model::{Attempt, Task, TaskState, Transition};
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

/// Prefix of the `Conflict` message when a fencing epoch is stale.
pub const FENCED: &str = "fenced:";

fn fenced(t: &Task, mine: u64, theirs: u64) -> StoreError {
    StoreError::Conflict(format!(
        "{FENCED} task {} of partition {} is held by epoch {theirs}, this node has epoch {mine}",
        t.id, t.partition
    ))
}

impl CassandraStore {
    /// Applies `f` (old → new task and the owner epoch to store) with compare-and-set.
    /// Returns the old and the new state.
    pub(crate) async fn cas<F>(&self, id: &str, f: F) -> StoreResult<(Stored, Task)>
    where
        F: Fn(&Stored) -> StoreResult<(Task, u64)>,
    {
        for _ in 0..MAX_CAS_TRIES {
            let old = self.require(id).await?;
            let (new, epoch) = f(&old)?;
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

    /// `start_attempt`; with `fence`, also refuses when the task was claimed by a newer epoch,
    /// and stamps the task with `fence`.
    pub(crate) async fn start_impl(
        &self,
        id: &str,
        attempt: u32,
        at: i64,
        fence: Option<u64>,
    ) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| {
                if old.task.state.is_terminal() {
                    return Err(conflict(&old.task, "start"));
                }
                if let Some(e) = fence
                    && old.owner_epoch > e
                {
                    return Err(fenced(&old.task, e, old.owner_epoch));
                }
                let mut t = old.task.clone();
                t.state = TaskState::Running;
                t.attempts = attempt;
                t.updated_at = at;
                Ok((t, fence.unwrap_or(old.owner_epoch)))
            })
            .await?;
        Ok(new)
    }

    /// `finish_attempt`; with `fence`, only the epoch that started the attempt may finish it.
    pub(crate) async fn finish_impl(
        &self,
        id: &str,
        attempt: &Attempt,
        transition: &Transition,
        at: i64,
        fence: Option<u64>,
    ) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| {
                if old.task.state.is_terminal() {
                    return Err(conflict(&old.task, "finish an attempt of"));
                }
                if let Some(e) = fence {
                    if old.owner_epoch != e {
                        return Err(fenced(&old.task, e, old.owner_epoch));
                    }
                    if old.task.state != TaskState::Running {
                        return Err(conflict(&old.task, "finish an attempt of"));
                    }
                }
                let mut t = old.task.clone();
                t.apply_finish(attempt.number, transition, at);
                Ok((t, old.owner_epoch))
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
                ),
            )
            .await
            .exec()?;
        Ok(new)
    }

    pub(crate) async fn cancel_impl(&self, id: &str, at: i64) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| match old.task.state {
                TaskState::Scheduled | TaskState::Retrying | TaskState::Dead => {
                    let mut t = old.task.clone();
                    t.state = TaskState::Cancelled;
                    t.updated_at = at;
                    Ok((t, old.owner_epoch))
                }
                _ => Err(conflict(&old.task, "cancel")),
            })
            .await?;
        Ok(new)
    }

    pub(crate) async fn retry_dead_impl(&self, id: &str, extra: u32, at: i64) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| {
                if old.task.state != TaskState::Dead {
                    return Err(conflict(&old.task, "retry"));
                }
                let mut t = old.task.clone();
                t.state = TaskState::Scheduled;
                t.next_at = at;
                t.max_attempts = t.attempts.saturating_add(extra);
                t.updated_at = at;
                Ok((t, old.owner_epoch))
            })
            .await?;
        Ok(new)
    }

    pub(crate) async fn reschedule_impl(
        &self,
        id: &str,
        run_at: i64,
        at: i64,
    ) -> StoreResult<Task> {
        let (_, new) = self
            .cas(id, |old| {
                if !matches!(old.task.state, TaskState::Scheduled | TaskState::Retrying) {
                    return Err(conflict(&old.task, "reschedule"));
                }
                let mut t = old.task.clone();
                t.due_at = run_at;
                t.next_at = run_at;
                t.updated_at = at;
                Ok((t, old.owner_epoch))
            })
            .await?;
        Ok(new)
    }

    pub(crate) async fn unpark_key_impl(&self, key: &str, at: i64) -> StoreResult<u32> {
        let filter = kairos_core::model::ListFilter {
            key: Some(key.to_owned()),
            state: Some(TaskState::Dead),
            limit: usize::MAX,
        };
        let mut n = 0;
        for t in self.list_impl(&filter).await? {
            if !t.park_on_dead {
                continue;
            }
            let r = self
                .cas(&t.id, |old| {
                    if old.task.state != TaskState::Dead || !old.task.park_on_dead {
                        return Err(conflict(&old.task, "unpark"));
                    }
                    let mut t = old.task.clone();
                    t.park_on_dead = false;
                    t.updated_at = at;
                    Ok((t, old.owner_epoch))
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
