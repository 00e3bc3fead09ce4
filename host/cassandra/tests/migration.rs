//! A keyspace made by an earlier release (no `tasks.generation` column, no `attempts.logs`
//! column) is brought up to date when a node starts, and its rows read as generation 0 and
//! attempts without logs. Needs Cassandra on 127.0.0.1:9042.

mod common;

use common::{NODE, fresh_store, options};
use kairos_cassandra::CassandraStore;
use kairos_core::store::TaskStore;
use scylla::client::session_builder::SessionBuilder;

#[tokio::test]
async fn a_keyspace_from_before_generations_gets_the_column_and_old_rows_read_as_0() {
    let (store, guard) = fresh_store().await;
    drop(store);
    let ks = guard.keyspace.clone();
    let session = SessionBuilder::new()
        .known_node(NODE)
        .build()
        .await
        .expect("session");
    // The table as the first release made it, with one of its rows.
    session
        .query_unpaged(format!("ALTER TABLE {ks}.tasks DROP generation"), ())
        .await
        .expect("drop column");
    session
        .query_unpaged(format!("ALTER TABLE {ks}.attempts DROP logs"), ())
        .await
        .expect("drop column");
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.attempts (task_id, number, started_at, ended_at, outcome, \
                 error, plugin_digest) VALUES ('old', 1, 5, 6, 'retryable', 'e1', null)"
            ),
            (),
        )
        .await
        .expect("old attempt row");
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.tasks (id, partition, seq, plugin, key, due_at, next_at, \
                 payload, max_attempts, backoff_initial_ms, backoff_max_ms, park_on_dead, \
                 state, attempts, created_at, updated_at, owner_epoch, rev) VALUES \
                 ('old', 0, 1, 'notify', 'k', 5, 5, '{{}}', 3, 1000, 8000, false, \
                 'retrying', 1, 1, 1, 0, 0)"
            ),
            (),
        )
        .await
        .expect("old row");
    let store = CassandraStore::connect(options(&ks))
        .await
        .expect("a node starts on the old keyspace");
    let old = store.get("old").await.expect("get").expect("stored");
    assert_eq!(old.task.generation, 0);
    assert_eq!(old.task.plugin, "notify");
    assert_eq!(old.attempts.len(), 1);
    assert_eq!(old.attempts[0].error.as_deref(), Some("e1"));
    assert_eq!(old.attempts[0].logs, None);
    // A second start finds the column there already.
    drop(store);
    CassandraStore::connect(options(&ks))
        .await
        .expect("a second start");
}
