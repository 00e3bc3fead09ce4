//! One attempt: record its start, run it, decide what follows, record the end.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use kairos_core::model::{Attempt, AttemptOutcome, Millis, Task, Transition};
use kairos_core::store::StoreError;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{ExecOutcome, ExecResult, Shared};

/// The result of an attempt as the partition actor sees it.
pub(crate) struct Done {
    pub id: String,
    /// The task as stored after the attempt, or the error that prevented storing it.
    pub result: Result<Task, StoreError>,
    /// The task must leave this node's window without being paged in again: the partition
    /// belongs to another node now (fenced), or the task was finished elsewhere.
    pub dropped: bool,
}

/// What follows an attempt: success, a retry after backoff with jitter (at least the
/// plugin's retry-after), or death when attempts are used up or the error is permanent.
pub fn decide(
    task: &Task,
    attempt: u32,
    result: &ExecResult,
    now: Millis,
    rng: &mut impl Rng,
) -> Transition {
    match result {
        ExecResult::Success { output } => Transition::Succeeded {
            output: output.clone(),
        },
        ExecResult::Permanent { error } => Transition::Dead {
            error: format!("permanent error: {error}"),
        },
        ExecResult::Retry { error, .. } if attempt >= task.max_attempts => Transition::Dead {
            error: format!("gave up after {attempt} attempt(s): {error}"),
        },
        ExecResult::Retry {
            error,
            retry_after_ms,
        } => {
            let cap = task.backoff.cap_ms(attempt + 1);
            let jittered = rng.gen_range(cap / 2..=cap.max(1));
            let delay = jittered.max(retry_after_ms.unwrap_or(0));
            Transition::Retry {
                next_at: now.saturating_add(delay as Millis),
                error: error.clone(),
            }
        }
    }
}

fn outcome_of(result: &ExecResult) -> (AttemptOutcome, Option<String>) {
    match result {
        ExecResult::Success { .. } => (AttemptOutcome::Succeeded, None),
        ExecResult::Retry { error, .. } => (AttemptOutcome::Retryable, Some(error.clone())),
        ExecResult::Permanent { error } => (AttemptOutcome::Permanent, Some(error.clone())),
    }
}

/// Runs one attempt and reports to the partition actor. Holds a concurrency permit throughout.
pub(crate) async fn run_attempt(
    shared: Arc<Shared>,
    task: Task,
    permit: OwnedSemaphorePermit,
    done: mpsc::Sender<Done>,
) {
    let attempt = task.attempts + 1;
    let started = shared.clock.now();
    shared
        .metrics
        .lateness
        .observe_ms((started - task.next_at).max(0) as u64);
    shared.metrics.running.fetch_add(1, Relaxed);
    let ExecOutcome { result, digest } = match &shared.fence {
        // Fenced (cluster): claim under the partition's epoch first; run only if that worked.
        Some(fence) => match fence.start(&task, attempt, started).await {
            Ok(()) => {
                let claimed = shared.clock.now();
                let m = &shared.metrics;
                m.start_record.observe_ms((claimed - started).max(0) as u64);
                let outcome = shared.executor.execute(&task, attempt).await;
                m.run_time
                    .observe_ms((shared.clock.now() - claimed).max(0) as u64);
                outcome
            }
            Err(e) => {
                shared.metrics.running.fetch_sub(1, Relaxed);
                let dropped = fence.is_fenced(&e) || matches!(e, StoreError::Conflict(_));
                if fence.is_fenced(&e) {
                    tracing::warn!(task = %task.id, partition = task.partition, error = %e, "not running: the partition belongs to another node now");
                } else if !dropped {
                    shared.metrics.store_errors.fetch_add(1, Relaxed);
                }
                drop(permit);
                let _ = done
                    .send(Done {
                        id: task.id,
                        result: Err(e),
                        dropped,
                    })
                    .await;
                return;
            }
        },
        None => {
            // The start record and the run go together: the attempt count is durable by the
            // time the attempt's end is recorded, and a slow fsync does not delay the start.
            let m = &shared.metrics;
            let (started_rec, outcome) = tokio::join!(
                async {
                    let r = shared.store.start_attempt(&task.id, attempt, started).await;
                    m.start_record
                        .observe_ms((shared.clock.now() - started).max(0) as u64);
                    r
                },
                async {
                    let o = shared.executor.execute(&task, attempt).await;
                    m.run_time
                        .observe_ms((shared.clock.now() - started).max(0) as u64);
                    o
                }
            );
            if let Err(e) = started_rec {
                tracing::warn!(task = %task.id, error = %e, "could not record attempt start");
            }
            outcome
        }
    };
    shared.metrics.running.fetch_sub(1, Relaxed);
    let ended = shared.clock.now();
    let transition = decide(&task, attempt, &result, ended, &mut rand::thread_rng());
    match &transition {
        Transition::Succeeded { .. } => shared.metrics.succeeded.fetch_add(1, Relaxed),
        Transition::Retry { .. } => shared.metrics.retried.fetch_add(1, Relaxed),
        Transition::Dead { .. } => shared.metrics.dead.fetch_add(1, Relaxed),
    };
    if let Transition::Dead { error } | Transition::Retry { error, .. } = &transition {
        tracing::info!(task = %task.id, key = %task.key, plugin = %task.plugin, attempt, %error, "attempt failed");
    }
    let (outcome, error) = outcome_of(&result);
    let record = Attempt {
        number: attempt,
        started_at: started,
        ended_at: ended,
        outcome,
        error,
        plugin_digest: digest,
    };
    let result = finish_with_retries(&shared, &task, record, transition, ended).await;
    shared
        .metrics
        .finish_record
        .observe_ms((shared.clock.now() - ended).max(0) as u64);
    drop(permit);
    let dropped = match (&result, &shared.fence) {
        (Err(e), Some(f)) if f.is_fenced(e) => {
            tracing::warn!(task = %task.id, partition = task.partition, error = %e, "attempt result discarded: the partition belongs to another node now");
            true
        }
        _ => false,
    };
    let _ = done
        .send(Done {
            id: task.id,
            result,
            dropped,
        })
        .await;
}

/// How long the end of an attempt is retried while the store is unavailable. The task keeps
/// its key meanwhile (its successor cannot run before its end is known anyway). Long enough
/// to ride out a store restart: giving up means the attempt runs again (at-least-once).
const FINISH_RETRY_FOR: Duration = Duration::from_secs(600);

/// The end of an attempt must be stored: transient store errors are retried (with backoff
/// capped at 5 s, for up to [`FINISH_RETRY_FOR`]) before giving up; the task then runs again.
async fn finish_with_retries(
    shared: &Shared,
    task: &Task,
    record: Attempt,
    transition: Transition,
    at: Millis,
) -> Result<Task, StoreError> {
    let id = task.id.as_str();
    let mut delay = Duration::from_millis(50);
    let give_up_at = std::time::Instant::now() + FINISH_RETRY_FOR;
    loop {
        let res = match &shared.fence {
            Some(fence) => {
                fence
                    .finish(task, record.clone(), transition.clone(), at)
                    .await
            }
            None => {
                shared
                    .store
                    .finish_attempt(id, record.clone(), transition.clone(), at)
                    .await
            }
        };
        match res {
            Err(e) if e.is_transient() && std::time::Instant::now() < give_up_at => {
                shared.metrics.store_errors.fetch_add(1, Relaxed);
                tracing::warn!(task = %id, error = %e, "store unavailable recording attempt end; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::model::{Backoff, TaskState};
    use rand::SeedableRng;

    fn task(max_attempts: u32) -> Task {
        Task {
            id: "t".into(),
            partition: 0,
            seq: 1,
            plugin: "p".into(),
            pin_version: None,
            key: "k".into(),
            due_at: 0,
            next_at: 0,
            payload: "{}".into(),
            uniqueness_key: None,
            max_attempts,
            backoff: Backoff {
                initial_ms: 1_000,
                max_ms: 8_000,
            },
            park_on_dead: false,
            state: TaskState::Running,
            attempts: 0,
            created_at: 0,
            updated_at: 0,
            last_error: None,
            output: None,
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_respects_cap_and_retry_after() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let retry = ExecResult::Retry {
            error: "x".into(),
            retry_after_ms: None,
        };
        for (attempt, lo, hi) in [
            (1, 500, 1_000),
            (2, 1_000, 2_000),
            (3, 2_000, 4_000),
            (9, 4_000, 8_000),
        ] {
            for _ in 0..50 {
                match decide(&task(100), attempt, &retry, 10_000, &mut rng) {
                    Transition::Retry { next_at, .. } => {
                        let d = next_at - 10_000;
                        assert!(
                            (lo..=hi).contains(&d),
                            "attempt {attempt}: delay {d} not in {lo}..={hi}"
                        );
                    }
                    other => panic!("expected a retry, got {other:?}"),
                }
            }
        }
        let asked = ExecResult::Retry {
            error: "x".into(),
            retry_after_ms: Some(60_000),
        };
        assert!(matches!(
            decide(&task(100), 1, &asked, 0, &mut rng),
            Transition::Retry {
                next_at: 60_000,
                ..
            }
        ));
    }

    #[test]
    fn last_attempt_and_permanent_errors_are_dead() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let retry = ExecResult::Retry {
            error: "boom".into(),
            retry_after_ms: None,
        };
        match decide(&task(3), 3, &retry, 0, &mut rng) {
            Transition::Dead { error } => {
                assert!(error.contains("gave up after 3") && error.contains("boom"))
            }
            other => panic!("{other:?}"),
        }
        let perm = ExecResult::Permanent {
            error: "bad request".into(),
        };
        assert!(matches!(
            decide(&task(3), 1, &perm, 0, &mut rng),
            Transition::Dead { .. }
        ));
    }
}
