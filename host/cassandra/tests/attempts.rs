//! A finish records its attempt in the task's own row, by the same compare-and-set that ends
//! the attempt: there is no second write to lose. Only an attempt's log lines go to the
//! `attempts` table (so rows of tasks due together do not fill with logs), where the attempts
//! an earlier release recorded are also still listed. Needs Cassandra on 127.0.0.1:9042.

mod common;

use kairos_conformance::{T0, enqueue_all, new_task_in, retry, succeeded, window};
use kairos_core::model::{Attempt, AttemptOutcome, TaskState};
use kairos_core::store::{StoreError, TaskStore};
use scylla::client::session::Session;

fn attempt(number: u32, outcome: AttemptOutcome, logs: Option<&str>) -> Attempt {
    Attempt {
        number,
        started_at: T0 + i64::from(number) * 10,
        ended_at: T0 + i64::from(number) * 10 + 1,
        outcome,
        error: (outcome != AttemptOutcome::Succeeded).then(|| format!("failed {number}")),
        plugin_digest: Some("sha256:abc".into()),
        logs: logs.map(Into::into),
    }
}

async fn count(session: &Session, cql: String) -> i64 {
    session
        .query_unpaged(cql, ())
        .await
        .expect("query")
        .into_rows_result()
        .expect("rows")
        .first_row::<(i64,)>()
        .expect("count")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_records_its_attempt_in_the_task_row() {
    let (store, guard) = common::fresh_store().await;
    let ks = &guard.keyspace;
    let tasks = enqueue_all(&store, vec![new_task_in(3, "k", T0)]).await;
    let id = tasks[0].id.clone();
    assert_eq!(window(&store, 3).await.len(), 1);
    let lease = store.acquire_lease(3, "node-a").await.expect("lease");

    // Attempt 1 fails (retryable), attempt 2 succeeds.
    store
        .start_attempt(&lease, &id, 1, T0)
        .await
        .expect("start 1");
    let first = attempt(1, AttemptOutcome::Retryable, Some("line one\nline two"));
    let t = store
        .finish_attempt(&lease, &id, first.clone(), retry(T0 + 20, "boom"), T0 + 11)
        .await
        .expect("finish 1");
    assert_eq!(t.state, TaskState::Retrying);
    store
        .start_attempt(&lease, &id, 2, T0 + 20)
        .await
        .expect("start 2");
    let second = attempt(2, AttemptOutcome::Succeeded, None);
    store
        .finish_attempt(&lease, &id, second.clone(), succeeded(Some("ok")), T0 + 21)
        .await
        .expect("finish 2");

    // A second finish of the same attempt is refused and records nothing.
    let again = store
        .finish_attempt(
            &lease,
            &id,
            attempt(2, AttemptOutcome::Permanent, Some("late")),
            succeeded(None),
            T0 + 30,
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    let rec = store.get(&id).await.expect("get").expect("stored");
    assert_eq!(rec.task.state, TaskState::Succeeded);
    assert_eq!(rec.attempts, vec![first, second]);

    // Both records live in the task row, without logs; only the attempt with log lines
    // went to the `attempts` table too.
    let s = common::session().await;
    assert_eq!(
        count(&s, format!("SELECT count(*) FROM {ks}.attempts")).await,
        1
    );
    let log = s
        .query_unpaged(format!("SELECT attempt_log FROM {ks}.task_rows"), ())
        .await
        .expect("query")
        .into_rows_result()
        .expect("rows")
        .first_row::<(std::collections::BTreeMap<i64, Attempt6>,)>()
        .expect("row")
        .0;
    assert_eq!(log.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert!(log.values().all(|cell| cell.5.is_none()), "{log:?}");
    assert_eq!(log[&1].2, "retryable");
}

/// An `attempt_log` entry as CQL returns it.
type Attempt6 = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_an_earlier_release_recorded_are_listed_with_the_new_ones() {
    let (store, guard) = common::fresh_store().await;
    let ks = &guard.keyspace;
    let tasks = enqueue_all(&store, vec![new_task_in(5, "k", T0)]).await;
    let id = tasks[0].id.clone();
    assert_eq!(window(&store, 5).await.len(), 1);
    let lease = store.acquire_lease(5, "node-a").await.expect("lease");
    store
        .start_attempt(&lease, &id, 1, T0)
        .await
        .expect("start 1");
    store
        .finish_attempt(
            &lease,
            &id,
            attempt(1, AttemptOutcome::Retryable, None),
            retry(T0 + 20, "boom"),
            T0 + 11,
        )
        .await
        .expect("finish 1");
    // As an earlier release wrote them (or this one, for attempts with log lines): attempt 1
    // again (the row's record wins, the table lends it its logs) and an attempt 7 only the
    // table has.
    let s = common::session().await;
    for (number, logs) in [(1i64, "old"), (7, "only in the table")] {
        s.query_unpaged(
            format!(
                "INSERT INTO {ks}.attempts (task_id, number, started_at, ended_at, outcome, \
                 error, plugin_digest, logs) VALUES (?, ?, 1, 2, 'permanent', 'e', null, ?)"
            ),
            (&id, number, logs),
        )
        .await
        .expect("insert old attempt");
    }
    let rec = store.get(&id).await.expect("get").expect("stored");
    let listed: Vec<(u32, AttemptOutcome, Option<&str>)> = rec
        .attempts
        .iter()
        .map(|a| (a.number, a.outcome, a.logs.as_deref()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (1, AttemptOutcome::Retryable, Some("old")),
            (7, AttemptOutcome::Permanent, Some("only in the table"))
        ]
    );
}
