//! The conformance suite every [`TaskStore`] implementation must pass.
//!
//! Each case is a `pub async fn` taking a fresh, empty store and panicking on the first
//! violated expectation. [`store_conformance_tests!`](crate::store_conformance_tests) expands to
//! one `#[test]` per case, so a failure is reported under the case's name:
//!
//! ```ignore
//! kairos_conformance::store_conformance_tests!(|| async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = EmbeddedStore::open(&dir.path().join("db"), Default::default()).unwrap();
//!     (store, dir) // the second value is a guard kept alive until the case ends
//! });
//! ```
//!
//! The factory is called once per case and returns `(store, guard)`; the guard (a temporary
//! directory, a keyspace to drop, or `()`) is dropped after the store. Every case runs on its
//! own multi-threaded tokio runtime (2 workers) with a time limit of [`CASE_TIMEOUT`].

mod admin;
mod counts;
mod enqueue;
mod fencing;
mod ids;
mod lifecycle;
mod retention;
pub mod source;
pub mod tmpfs;

use std::future::Future;
use std::time::Duration;

use kairos_core::model::{
    Attempt, AttemptOutcome, Backoff, EnqueueOutcome, Millis, NewTask, OrderPos, Task, Transition,
};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, StoreResult, TaskStore};

pub use admin::*;
pub use counts::*;
pub use enqueue::*;
pub use fencing::*;
pub use ids::*;
pub use lifecycle::*;
pub use retention::*;

/// A fixed "now" for the suite (2023-11-14T22:13:20Z).
pub const T0: Millis = 1_700_000_000_000;

/// Longest a single case may run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case on a fresh multi-threaded runtime, failing it if it exceeds [`CASE_TIMEOUT`].
#[doc(hidden)]
pub fn run_case<F: Future<Output = ()>>(case: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the test runtime");
    rt.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("conformance case did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// Expands to one `#[test]` per conformance case. The argument is an expression that can be
/// called with no arguments and returns a future of `(store, guard)`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::__store_conformance_cases!(
            $factory;
            enqueue_assigns_increasing_seq,
            uniqueness_dedups_across_batches,
            uniqueness_dedups_within_a_batch,
            uniqueness_holds_after_the_task_finished,
            reenqueueing_a_stored_id_is_a_duplicate,
            load_window_orders_by_due_then_seq,
            load_window_honours_cursor_up_to_and_limit,
            load_window_isolates_partitions,
            load_window_includes_tasks_overdue_by_years,
            load_window_holds_exactly_the_pending_tasks,
            attempts_are_durable_and_history_ordered,
            retry_keeps_the_task_pending_at_its_position,
            success_stores_output_and_leaves_the_window,
            dead_parks_the_key_only_when_asked,
            finish_after_cancel_or_finish_conflicts,
            cancel_follows_the_state_rules,
            retry_dead_requeues_with_more_attempts,
            reschedule_moves_the_ordering_position,
            unpark_key_releases_parked_dead_tasks,
            paused_keys_set_clear_list,
            schedules_put_get_list_delete,
            schedule_fired_only_moves_forward,
            kv_get_set_delete_scoped_per_plugin,
            kv_list_by_prefix_with_limit,
            list_filters_by_key_state_and_limit,
            concurrent_enqueues_get_distinct_increasing_seqs,
            leases_get_increasing_epochs_per_partition,
            stale_lease_cannot_start_or_finish,
            stale_lease_cannot_change_tasks,
            start_is_idempotent_per_attempt,
            finish_is_recorded_once,
            lease_must_match_the_task_partition,
            unclaim_gives_back_a_start_that_did_not_run,
            stale_lease_cannot_unclaim,
            retention_purges_only_finished_tasks_past_the_cutoff,
            ids_that_name_their_home_are_found_and_replays_are_duplicates,
            retention_purges_tasks_whose_ids_name_their_home,
            state_counts_follow_every_change,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(async {
                    let (store, guard) = ($factory)().await;
                    $crate::$case(store).await;
                    drop(guard);
                });
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the cases (public so backend crates can write extra cases in the same style).

/// A new task in partition 0 with a fresh UUID v7 id.
pub fn new_task(key: &str, due_at: Millis) -> NewTask {
    new_task_in(0, key, due_at)
}

pub fn new_task_in(partition: u32, key: &str, due_at: Millis) -> NewTask {
    NewTask {
        id: uuid::Uuid::now_v7().to_string(),
        partition,
        plugin: "conformance".into(),
        pin_version: None,
        key: key.into(),
        due_at,
        payload: format!(r#"{{"key":"{key}","due_at":{due_at}}}"#),
        uniqueness_key: None,
        max_attempts: 3,
        backoff: Backoff::default(),
        park_on_dead: false,
        generation: 0,
        created_at: T0,
    }
}

pub fn with_ukey(mut t: NewTask, ukey: &str) -> NewTask {
    t.uniqueness_key = Some(ukey.into());
    t
}

pub fn parking(mut t: NewTask) -> NewTask {
    t.park_on_dead = true;
    t
}

pub fn created(o: &EnqueueOutcome) -> Task {
    match o {
        EnqueueOutcome::Created(t) => t.clone(),
        EnqueueOutcome::Duplicate(t) => panic!("expected Created, got Duplicate of {}", t.id),
    }
}

pub fn duplicate(o: &EnqueueOutcome) -> Task {
    match o {
        EnqueueOutcome::Duplicate(t) => t.clone(),
        EnqueueOutcome::Created(t) => panic!("expected Duplicate, got Created {}", t.id),
    }
}

pub async fn enqueue_all<S: TaskStore + ?Sized>(s: &S, batch: Vec<NewTask>) -> Vec<Task> {
    let n = batch.len();
    let out = s.enqueue(batch).await.expect("enqueue");
    assert_eq!(out.len(), n, "one outcome per input");
    out.iter().map(created).collect()
}

pub async fn enqueue_one<S: TaskStore + ?Sized>(s: &S, t: NewTask) -> Task {
    enqueue_all(s, vec![t]).await.remove(0)
}

/// The stored task; panics if it is missing.
pub async fn task<S: TaskStore + ?Sized>(s: &S, id: &str) -> Task {
    s.get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("task {id} not found"))
        .task
}

/// The partition's current lease, acquired for node `conformance` if nobody holds it yet.
pub async fn held<S: TaskStore + ?Sized>(s: &S, partition: u32) -> Lease {
    match s.lease_holder(partition).await.expect("lease_holder") {
        Some(h) => Lease {
            partition,
            epoch: h.epoch,
        },
        None => s
            .acquire_lease(partition, "conformance")
            .await
            .expect("acquire_lease"),
    }
}

/// The current lease of the task's partition (partition 0 for an unknown id).
pub async fn lease_for<S: TaskStore + ?Sized>(s: &S, id: &str) -> Lease {
    let partition = s
        .get(id)
        .await
        .expect("get")
        .map_or(0, |r| r.task.partition);
    held(s, partition).await
}

pub fn expect_fenced<T: std::fmt::Debug>(r: StoreResult<T>, lease: &Lease, what: &str) {
    match r {
        Err(StoreError::Fenced {
            partition, epoch, ..
        }) if partition == lease.partition && epoch == lease.epoch => {}
        other => panic!("{what}: expected Fenced for {lease}, got {other:?}"),
    }
}

/// The whole pending window of a partition.
pub async fn window<S: TaskStore + ?Sized>(s: &S, partition: u32) -> Vec<Task> {
    s.load_window(partition, OrderPos::MIN, Millis::MAX, 10_000)
        .await
        .expect("load_window")
}

pub fn ids(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.id.as_str()).collect()
}

pub fn outcome_of(transition: &Transition) -> (AttemptOutcome, Option<String>) {
    match transition {
        Transition::Succeeded { .. } => (AttemptOutcome::Succeeded, None),
        Transition::Retry { error, .. } => (AttemptOutcome::Retryable, Some(error.clone())),
        Transition::Dead { error } => (AttemptOutcome::Permanent, Some(error.clone())),
    }
}

/// Starts the next attempt of `id` and finishes it with `transition`; returns the task.
pub async fn run_attempt<S: TaskStore + ?Sized>(s: &S, id: &str, transition: Transition) -> Task {
    let number = task(s, id).await.attempts + 1;
    let started_at = T0 + Millis::from(number) * 1_000;
    s.start_attempt(&lease_for(s, id).await, id, number, started_at)
        .await
        .expect("start_attempt");
    let (outcome, error) = outcome_of(&transition);
    let attempt = Attempt {
        number,
        started_at,
        ended_at: started_at + 10,
        outcome,
        error,
        plugin_digest: Some(format!("digest-{number}")),
        logs: None,
    };
    s.finish_attempt(
        &lease_for(s, id).await,
        id,
        attempt,
        transition,
        started_at + 10,
    )
    .await
    .expect("finish_attempt")
}

pub fn retry(next_at: Millis, error: &str) -> Transition {
    Transition::Retry {
        next_at,
        error: error.into(),
    }
}

pub fn dead(error: &str) -> Transition {
    Transition::Dead {
        error: error.into(),
    }
}

pub fn succeeded(output: Option<&str>) -> Transition {
    Transition::Succeeded {
        output: output.map(Into::into),
    }
}

pub fn expect_conflict<T: std::fmt::Debug>(r: StoreResult<T>, what: &str) {
    match r {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

pub fn expect_not_found<T: std::fmt::Debug>(r: StoreResult<T>, what: &str) {
    match r {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}
