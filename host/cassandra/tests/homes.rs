//! Where task rows live (`task_rows` by `(partition, home)`, found by id through
//! `task_homes`, or from the id itself when it names its home): an id is one task wherever it
//! is enqueued again. Needs Cassandra on 127.0.0.1:9042.

mod common;

use kairos_conformance::{T0, homed_task, new_task_in, window};
use kairos_core::ids::home_named;
use kairos_core::model::{EnqueueOutcome, NewTask};
use kairos_core::store::{StoreError, TaskStore};
use scylla::client::session::Session;

/// How many rows `SELECT … WHERE {filter}` finds in `table` of keyspace `ks`.
async fn count(session: &Session, ks: &str, table: &str, filter: &str, id: &str) -> usize {
    session
        .query_unpaged(format!("SELECT id FROM {ks}.{table} WHERE {filter}"), (id,))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows_num()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_names_its_home_has_its_row_there_and_no_task_homes_row() {
    let (store, guard) = common::fresh_store().await;
    let ks = guard.keyspace.clone();
    let homed = homed_task(4, "k", T0);
    let plain = new_task_in(4, "k", T0 + 1);
    store
        .enqueue(vec![homed.clone(), plain.clone()])
        .await
        .expect("enqueue");
    let s = common::session().await;
    let homes = "task_homes";
    assert_eq!(count(&s, &ks, homes, "id = ?", &homed.id).await, 0);
    assert_eq!(count(&s, &ks, homes, "id = ?", &plain.id).await, 1);
    let (p, home) = home_named(&homed.id).expect("a homed id");
    let at_home = format!("partition = {p} AND home = {home} AND id = ?");
    assert_eq!(count(&s, &ks, "task_rows", &at_home, &homed.id).await, 1);
    for t in [&homed, &plain] {
        let rec = store.get(&t.id).await.expect("get").expect("stored");
        assert_eq!(rec.task.key, "k");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_names_a_home_in_another_partition_is_refused() {
    let (store, _guard) = common::fresh_store().await;
    let t = NewTask {
        partition: 5,
        ..homed_task(4, "k", T0)
    };
    match store.enqueue(vec![t.clone()]).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("names partition 4"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store.get(&t.id).await.expect("get").is_none());
    assert!(window(&store, 4).await.is_empty());
    assert!(window(&store, 5).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_enqueued_again_in_another_partition_is_the_same_task() {
    let (store, _guard) = common::fresh_store().await;
    let first = new_task_in(1, "k", T0);
    let created = store.enqueue(vec![first.clone()]).await.expect("enqueue");
    let EnqueueOutcome::Created(task) = &created[0] else {
        panic!("{created:?}");
    };
    // The same id again, routed to another partition and due at another time (a producer
    // that hashes keys differently, or a changed partition count).
    let mut again = first.clone();
    again.partition = 2;
    again.due_at = T0 + 3_600_000;
    let replayed = store.enqueue(vec![again]).await.expect("enqueue");
    match &replayed[0] {
        EnqueueOutcome::Duplicate(t) => {
            assert_eq!((t.id.as_str(), t.partition), (task.id.as_str(), 1))
        }
        other => panic!("expected the first task as a duplicate, got {other:?}"),
    }
    assert_eq!(window(&store, 1).await.len(), 1);
    assert!(
        window(&store, 2).await.is_empty(),
        "no second copy in partition 2"
    );
    let rec = store.get(&task.id).await.expect("get").expect("stored");
    assert_eq!(rec.task.partition, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_twice_in_one_batch_is_one_task() {
    let (store, _guard) = common::fresh_store().await;
    let first = new_task_in(3, "k", T0 + 2_000);
    let mut again = first.clone();
    again.due_at = T0 + 1_000;
    let out = store.enqueue(vec![first, again]).await.expect("enqueue");
    let EnqueueOutcome::Created(task) = &out[0] else {
        panic!("{out:?}");
    };
    match &out[1] {
        EnqueueOutcome::Duplicate(t) => assert_eq!((&t.id, t.due_at), (&task.id, T0 + 2_000)),
        other => panic!("expected a duplicate of the first, got {other:?}"),
    }
    let due = window(&store, 3).await;
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].due_at, due[0].seq), (task.due_at, task.seq));
}

/// Two batches, each holding the uniqueness key the other one's second task wants: each
/// writes its own tasks before it looks for the other's, so both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_hold_each_others_uniqueness_keys_both_complete() {
    let (store, _guard) = common::fresh_store().await;
    let keyed = |key: &str, ukey: &str| {
        let mut t = new_task_in(0, key, T0);
        t.uniqueness_key = Some(ukey.into());
        t
    };
    let x = vec![keyed("a", "u1"), keyed("b", "u2")];
    let y = vec![keyed("c", "u2"), keyed("d", "u1")];
    let (x, y) = tokio::join!(store.enqueue(x), store.enqueue(y));
    let (x, y) = (x.expect("batch x"), y.expect("batch y"));
    // Whichever claimed u1 first, "a" and "d" are one task, and "b" and "c" another.
    assert_eq!(x[0].task().id, y[1].task().id);
    assert_eq!(x[1].task().id, y[0].task().id);
    assert_eq!(window(&store, 0).await.len(), 2);
}

/// Retention reads only what it needs of each row, so a row it cannot judge (here one with
/// nothing but its key, as a partial write might leave) is passed over, not an error that
/// would stop every later sweep at the same page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_passes_over_a_row_it_cannot_judge() {
    let (store, guard) = common::fresh_store().await;
    let ks = guard.keyspace.clone();
    let s = common::session().await;
    let (p, home) = (2i64, T0.div_euclid(60_000));
    let odd = format!("odd.p{p}.h{home}");
    s.query_unpaged(
        format!("INSERT INTO {ks}.task_rows (partition, home, id) VALUES (?, ?, ?)"),
        (p, home, odd.as_str()),
    )
    .await
    .expect("insert a bare row");
    let tasks: Vec<_> = (0..3)
        .map(|i| homed_task(2, &format!("k{i}"), T0 + i * 1_000))
        .collect();
    store.enqueue(tasks.clone()).await.expect("enqueue");
    for t in &tasks {
        kairos_conformance::run_attempt(&store, &t.id, kairos_conformance::succeeded(None)).await;
    }
    let deleted = kairos_conformance::purge_in_steps(&store, T0 + 3_600_000).await;
    assert_eq!(deleted, 3, "the finished tasks around the bare row");
    let at_home = format!("partition = {p} AND home = {home} AND id = ?");
    assert_eq!(count(&s, &ks, "task_rows", &at_home, &odd).await, 1);
}
