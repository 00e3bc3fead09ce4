//! A keyspace made by an earlier release (task records in `tasks (id)` without a `generation`
//! column, `pending` rows without a home, no `attempts.logs` column) is brought up to date when
//! a node starts: its task rows are copied into `task_rows`, read as generation 0, found by
//! the window, and run. Needs Cassandra on 127.0.0.1:9042.

mod common;

use common::{NODE, fresh_store, options};
use kairos_cassandra::{CassandraOptions, CassandraStore};
use kairos_conformance::{succeeded, window};
use kairos_core::model::{Attempt, AttemptOutcome, TaskState};
use kairos_core::store::TaskStore;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn run(session: &Session, cql: String) {
    if let Err(e) = session.query_unpaged(cql.clone(), ()).await {
        panic!("{cql}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_of_an_earlier_release_is_copied_to_task_rows_once_and_its_tasks_run() {
    let (store, guard) = fresh_store().await;
    drop(store);
    let ks = guard.keyspace.clone();
    let session = SessionBuilder::new()
        .known_node(NODE)
        .build()
        .await
        .expect("session");
    // The tables as the first release made them, with one task (retrying after its first
    // attempt), its attempt and its pending row.
    run(&session, format!("ALTER TABLE {ks}.attempts DROP logs")).await;
    run(&session, format!("ALTER TABLE {ks}.pending DROP home")).await;
    run(
        &session,
        format!(
            "CREATE TABLE {ks}.tasks (
            id text PRIMARY KEY, partition bigint, seq bigint, plugin text, pin_version text,
            key text, due_at bigint, next_at bigint, payload text, uniqueness_key text,
            max_attempts bigint, backoff_initial_ms bigint, backoff_max_ms bigint,
            park_on_dead boolean, state text, attempts bigint, created_at bigint,
            updated_at bigint, last_error text, output text, owner_epoch bigint, rev bigint)"
        ),
    )
    .await;
    run(
        &session,
        format!(
            "INSERT INTO {ks}.attempts (task_id, number, started_at, ended_at, outcome, \
             error, plugin_digest) VALUES ('old', 1, 5, 6, 'retryable', 'e1', null)"
        ),
    )
    .await;
    run(
        &session,
        format!(
            "INSERT INTO {ks}.tasks (id, partition, seq, plugin, key, due_at, next_at, \
             payload, max_attempts, backoff_initial_ms, backoff_max_ms, park_on_dead, \
             state, attempts, created_at, updated_at, owner_epoch, rev) VALUES \
             ('old', 3, 1, 'notify', 'k', 5, 5, '{{}}', 3, 1000, 8000, false, \
             'retrying', 1, 1, 1, 0, 0)"
        ),
    )
    .await;
    run(
        &session,
        format!("INSERT INTO {ks}.pending (partition, bucket, due_at, seq, id) VALUES (3, 0, 5, 1, 'old')"),
    )
    .await;
    run(
        &session,
        format!("INSERT INTO {ks}.pending_buckets (partition, bucket, live) VALUES (3, 0, true)"),
    )
    .await;

    // A node that does not migrate refuses to start: it would not find the old tasks.
    let refused = CassandraStore::connect(CassandraOptions {
        migrate_on_start: false,
        ..options(&ks)
    })
    .await;
    match refused {
        Err(e) => assert!(e.to_string().contains("kairos migrate"), "{e}"),
        Ok(_) => panic!("a node started on a keyspace whose tasks are not copied"),
    }
    let store = CassandraStore::connect(options(&ks))
        .await
        .expect("a node starts on the old keyspace");
    let old = store.get("old").await.expect("get").expect("copied");
    assert_eq!(old.task.generation, 0);
    assert_eq!(old.task.plugin, "notify");
    assert_eq!(
        (old.task.state, old.task.attempts),
        (TaskState::Retrying, 1)
    );
    assert_eq!(old.attempts.len(), 1);
    assert_eq!(old.attempts[0].error.as_deref(), Some("e1"));
    assert_eq!(old.attempts[0].logs, None);

    // The window finds it through its old pending row (no home: found by id), and it runs.
    let due: Vec<String> = window(&store, 3).await.into_iter().map(|t| t.id).collect();
    assert_eq!(due, vec!["old".to_owned()]);
    let lease = store.acquire_lease(3, "node-a").await.expect("lease");
    let started = store
        .start_attempt(&lease, "old", 2, 10)
        .await
        .expect("start");
    assert_eq!(started.state, TaskState::Running);
    let attempt = Attempt {
        number: 2,
        started_at: 10,
        ended_at: 11,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    };
    store
        .finish_attempt(&lease, "old", attempt, succeeded(Some("done")), 11)
        .await
        .expect("finish");
    assert!(window(&store, 3).await.is_empty());

    // A copy that runs again (its mark lost, or a second node starting at the same time)
    // does not overwrite the row this release changed.
    drop(store);
    run(
        &session,
        format!("DELETE FROM {ks}.counters WHERE name = 'task_rows_copied'"),
    )
    .await;
    let store = CassandraStore::connect(options(&ks))
        .await
        .expect("a second start");
    let rec = store.get("old").await.expect("get").expect("stored");
    assert_eq!(rec.task.state, TaskState::Succeeded);
    assert_eq!(rec.task.output.as_deref(), Some("done"));
    assert_eq!(rec.attempts.len(), 2);
    drop(store);
    CassandraStore::connect(options(&ks))
        .await
        .expect("a third start (nothing left to do)");
}
