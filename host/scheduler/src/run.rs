//! One attempt: record its start under the partition's lease, run it, decide what follows,
//! record the end (retrying until it is durable or the lease is lost).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use kairos_core::model::{Attempt, AttemptOutcome, Millis, Task, TaskState, Transition};
use kairos_core::ownership::Lease;
use kairos_core::store::StoreError;
use rand::Rng;

use super::{ExecOutcome, ExecResult, Shared};

/// How an attempt ended, as the partition actor sees it.
pub(crate) enum Done {
    /// The task as stored now: after this attempt's end was recorded, or as found in the
    /// store when the attempt could not start.
    Stored(Box<Task>),
    /// The start could not be recorded, or its outcome is unknown, or the partition was
    /// released while the attempt waited for a run slot (its start given back if it could
    /// be, else left for the next owner to take over). The attempt did not run.
    StartFailed { id: String, retry_at: Millis },
    /// The task is finished (or gone) in the store: it leaves the window.
    Gone { id: String },
    /// The lease is stale: the partition belongs to another node now.
    Fenced { id: String },
}

/// Longest a claim may take before the attempt runs (see `run_attempt`); the takeover wait
/// must exceed the attempt timeout by more than this.
const CLAIM_SLACK_MS: Millis = 1_000;

/// First and longest pause between retries of a store call that must succeed.
const STORE_RETRY_MS: (Millis, Millis) = (50, 5_000);

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

/// Gives back the recorded start of `attempt` of `task` (as it was before its claim), which
/// never ran because the partition is being released: the next owner (or this node after a
/// restart) runs it at once as the same attempt, instead of waiting `takeover_wait_ms` and
/// counting it as an attempt in doubt. The task goes back to its state and `updated_at` from
/// before the claim, so the next owner sees it exactly as this node did. Tried once; if it
/// fails the task is taken over as after a crash. A task in doubt (found running, or whose
/// attempt task panicked, see `Window::in_doubt_until`) is never given back.
async fn unclaim(shared: &Shared, lease: &Lease, task: &Task, attempt: u32) {
    if !matches!(task.state, TaskState::Scheduled | TaskState::Retrying) {
        return;
    }
    if let Err(e) = shared
        .store
        .unclaim_attempt(lease, &task.id, attempt, task.state, task.updated_at)
        .await
    {
        tracing::info!(task = %task.id, attempt, %lease, error = %e, "could not give back the start of an attempt that did not run; the next owner takes it over");
    }
}

/// Runs one attempt and reports to the partition actor. Holds a claim slot while its start
/// is recorded, then a run slot until the guest is done (not while the end is recorded), so
/// durable writes overlap other attempts' runs. The attempt runs only once its start is
/// durable; its end is retried until it is durable too, so the key's next task cannot start
/// before this one's end is known. Once `release` is cancelled (the partition goes to another
/// node), an attempt still waiting for its run slot does not run: its recorded start is given
/// back (see [`unclaim`]), so the next owner runs it as the same attempt.
pub(crate) async fn run_attempt(
    shared: Arc<Shared>,
    lease: Lease,
    task: Task,
    claim: crate::slots::Slot,
    release: tokio_util::sync::CancellationToken,
) -> Done {
    // A task found running (in doubt) whose interrupted attempt was its last: it is claimed
    // under this lease and recorded dead without running again.
    let last_interrupted = task.state == TaskState::Running && task.attempts >= task.max_attempts;
    let attempt = if last_interrupted {
        task.attempts
    } else {
        task.attempts + 1
    };
    let first_try = shared.clock.now();
    let m = &shared.metrics;
    // The start time recorded with the claim is what a next owner's takeover wait counts
    // from; the attempt's deadline counts from when it runs. A claim that took long, or that
    // then waited long for a run slot, is made again (idempotently, with a fresh time, the
    // run slot held) so the two stay within CLAIM_SLACK_MS.
    let mut claim = Some(claim);
    let mut slot = None;
    let mut tries = 0;
    let claimed = loop {
        let at = shared.clock.now();
        match shared
            .store
            .start_attempt(&lease, &task.id, attempt, at)
            .await
        {
            Ok(t) => {
                // The first durable start trades the claim slot for a run slot.
                if let Some(claim) = claim.take() {
                    if !last_interrupted {
                        // Biased: the simulation replays a seed exactly.
                        tokio::select! {
                            biased;
                            s = shared.slots.acquire(&task.plugin) => slot = Some(s),
                            _ = release.cancelled() => {
                                drop(claim);
                                unclaim(&shared, &lease, &task, attempt).await;
                                return Done::StartFailed {
                                    retry_at: shared.clock.now(),
                                    id: task.id,
                                };
                            }
                        }
                    }
                    drop(claim);
                }
                if shared.clock.now() - at <= CLAIM_SLACK_MS {
                    break t;
                }
                if tries >= 3 {
                    tracing::warn!(task = %task.id, %lease, "recording the start keeps taking longer than {CLAIM_SLACK_MS} ms; trying later");
                    return Done::StartFailed {
                        retry_at: shared.clock.now() + 1_000,
                        id: task.id,
                    };
                }
                tries += 1;
            }
            Err(e) => return start_failed(&shared, &lease, task, e).await,
        }
    };
    let started = first_try;
    let run_from = shared.clock.now();
    m.start_record
        .observe_ms((run_from - started).max(0) as u64);
    m.lateness
        .observe_ms((run_from - task.next_at).max(0) as u64);
    let ExecOutcome {
        result,
        digest,
        logs,
    } = if last_interrupted {
        ExecOutcome {
            result: ExecResult::Retry {
                error: format!(
                    "attempt {attempt} was interrupted (its node or partition was lost) and was the last one"
                ),
                retry_after_ms: None,
            },
            digest: None,
            logs: None,
        }
    } else {
        m.running.fetch_add(1, Relaxed);
        let o = shared.executor.execute(&claimed, attempt).await;
        m.running.fetch_sub(1, Relaxed);
        o
    };
    // The run slot (and its memory reservation) is free as soon as the guest is done: the
    // end's durable write below holds only the task's key, not a slot another attempt could
    // run in.
    drop(slot);
    let ended = shared.clock.now();
    let run_ms = (ended - run_from).max(0) as u64;
    m.run_time.observe_ms(run_ms);
    if !last_interrupted {
        let run_cap = shared.slots.cap_of(&claimed.plugin);
        let claims = &shared.claims;
        shared
            .pace
            .ran(&claimed.plugin, run_ms, run_cap, claims, CLAIM_SLACK_MS);
    }
    let transition = match shared.rng.lock() {
        Ok(mut rng) => decide(&claimed, attempt, &result, ended, &mut *rng),
        Err(poisoned) => decide(
            &claimed,
            attempt,
            &result,
            ended,
            &mut *poisoned.into_inner(),
        ),
    };
    match &transition {
        Transition::Succeeded { .. } => m.succeeded.fetch_add(1, Relaxed),
        Transition::Retry { .. } => m.retried.fetch_add(1, Relaxed),
        Transition::Dead { .. } => m.dead.fetch_add(1, Relaxed),
    };
    m.attempt_finished(
        &claimed.plugin,
        ended,
        (run_from - task.next_at).max(0) as u64,
        (ended - run_from).max(0) as u64,
        matches!(transition, Transition::Succeeded { .. }),
    );
    if let Transition::Dead { error } | Transition::Retry { error, .. } = &transition {
        tracing::info!(task = %task.id, key = %task.key, plugin = %task.plugin, attempt, %error, "attempt failed");
    }
    let (outcome, error) = outcome_of(&result);
    let record = Attempt {
        number: attempt,
        started_at: run_from,
        ended_at: ended,
        outcome,
        error,
        plugin_digest: digest,
        logs,
    };
    let done = record_end(&shared, &lease, &task.id, record, transition, ended).await;
    m.finish_record
        .observe_ms((shared.clock.now() - ended).max(0) as u64);
    done
}

/// The start was refused or its answer lost.
async fn start_failed(shared: &Shared, lease: &Lease, task: Task, e: StoreError) -> Done {
    let id = task.id;
    match e {
        StoreError::Fenced { .. } => Done::Fenced { id },
        StoreError::NotFound(_) => Done::Gone { id },
        StoreError::Conflict(msg) => {
            // Finished meanwhile (cancelled, or an answer of ours was lost): take the task
            // as stored.
            tracing::debug!(task = %id, error = %msg, "start refused; reloading the task");
            match shared.store.get(&id).await {
                Ok(Some(rec)) if rec.task.is_pending() => Done::Stored(Box::new(rec.task)),
                Ok(_) => Done::Gone { id },
                Err(_) => Done::StartFailed {
                    retry_at: shared.clock.now() + 1_000,
                    id,
                },
            }
        }
        e => {
            shared.metrics.store_errors.fetch_add(1, Relaxed);
            tracing::warn!(task = %id, %lease, error = %e, "could not record the start of an attempt; it keeps its key and is claimed again");
            Done::StartFailed {
                retry_at: shared.clock.now() + 1_000,
                id,
            }
        }
    }
}

/// Records the end of an attempt: retried (backoff 50 ms doubling to 5 s) until it is
/// durable, for as long as the lease is current. Meanwhile the task keeps its key.
async fn record_end(
    shared: &Shared,
    lease: &Lease,
    id: &str,
    record: Attempt,
    transition: Transition,
    at: Millis,
) -> Done {
    let number = record.number;
    let mut delay = STORE_RETRY_MS.0;
    loop {
        let res = shared
            .store
            .finish_attempt(lease, id, record.clone(), transition.clone(), at)
            .await;
        let err = match res {
            Ok(t) => return Done::Stored(Box::new(t)),
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!(task = %id, %lease, "attempt result discarded: the partition belongs to another node now");
                return Done::Fenced { id: id.to_owned() };
            }
            Err(StoreError::NotFound(_)) => return Done::Gone { id: id.to_owned() },
            Err(StoreError::Conflict(msg)) => {
                // Not running any more: an earlier try of this very call took effect (its
                // answer was lost), or the task changed under us. The store knows which.
                match shared.store.get(id).await {
                    Ok(Some(rec))
                        if rec.task.state != TaskState::Running || rec.task.attempts != number =>
                    {
                        return Done::Stored(Box::new(rec.task));
                    }
                    Ok(None) => return Done::Gone { id: id.to_owned() },
                    Ok(Some(_)) => StoreError::Conflict(msg),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        shared.metrics.store_errors.fetch_add(1, Relaxed);
        tracing::warn!(task = %id, %lease, error = %err, "could not record the end of an attempt; retrying (the key waits)");
        shared
            .clock
            .sleep_until(shared.clock.now().saturating_add(delay))
            .await;
        delay = (delay * 2).min(STORE_RETRY_MS.1);
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
            generation: 0,
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
