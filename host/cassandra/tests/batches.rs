//! Starts and finishes of tasks that fall due together are one conditional batch (one Paxos
//! round) per home, and a batch that meets a task changed behind it still gets every answer
//! right. Needs Cassandra on 127.0.0.1:9042.

mod common;

use kairos_cassandra::CassandraStore;
use kairos_conformance::{T0, enqueue_all, new_task_in, succeeded, window};
use kairos_core::model::{Task, TaskState};
use kairos_core::store::{StoreError, TaskStore};

async fn due_together(store: &CassandraStore, partition: u32, n: usize) -> Vec<Task> {
    let tasks = enqueue_all(
        store,
        (0..n)
            .map(|i| new_task_in(partition, &format!("k{i}"), T0))
            .collect(),
    )
    .await;
    // The window reads (and remembers) their rows, as the scheduler's does.
    assert_eq!(window(store, partition).await.len(), n);
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_finishes_of_tasks_due_together_take_one_paxos_round_per_batch() {
    let (store, _guard) = common::fresh_store().await;
    let n = 100;
    let tasks = due_together(&store, 4, n).await;
    let lease = store.acquire_lease(4, "node-a").await.expect("lease");

    let before = store.task_lwts();
    let starts: Vec<(String, u32)> = tasks.iter().map(|t| (t.id.clone(), 1)).collect();
    let started = store
        .start_attempts_fenced(4, lease.epoch, &starts, T0)
        .await
        .expect("batch");
    for r in &started {
        let t = r.as_ref().expect("started");
        assert_eq!((t.state, t.attempts), (TaskState::Running, 1));
    }
    assert_eq!(store.task_lwts() - before, 1, "100 starts, one Paxos round");

    let before = store.task_lwts();
    let finishes = tasks
        .iter()
        .map(|t| {
            (
                t.id.clone(),
                common::succeeded_attempt(1),
                succeeded(Some("ok")),
            )
        })
        .collect();
    let finished = store
        .finish_attempts_fenced(4, lease.epoch, finishes, T0 + 1)
        .await;
    for r in &finished {
        assert_eq!(r.as_ref().expect("finished").state, TaskState::Succeeded);
    }
    assert_eq!(
        store.task_lwts() - before,
        1,
        "100 finishes, one Paxos round"
    );

    // As stored, attempts included; nothing is left pending.
    for t in &tasks {
        let rec = store.get(&t.id).await.expect("get").expect("stored");
        assert_eq!(rec.task.state, TaskState::Succeeded);
        assert_eq!(rec.task.output.as_deref(), Some("ok"));
        assert_eq!(rec.attempts.len(), 1);
    }
    assert!(window(&store, 4).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_meets_a_task_changed_behind_it_answers_each_task_on_its_own_row() {
    let (store, guard) = common::fresh_store().await;
    let tasks = due_together(&store, 6, 10).await;
    let lease = store.acquire_lease(6, "node-a").await.expect("lease");
    // Another node's store (same lease: an operator's call forwarded there) cancels one task
    // and reschedules another; this store still remembers both as scheduled.
    let other = CassandraStore::connect(common::options(&guard.keyspace))
        .await
        .expect("second store");
    other
        .cancel(&lease, &tasks[3].id, T0)
        .await
        .expect("cancel");
    other
        .reschedule(&lease, &tasks[7].id, T0 + 5_000, T0)
        .await
        .expect("reschedule");

    let starts: Vec<(String, u32)> = tasks.iter().map(|t| (t.id.clone(), 1)).collect();
    let started = store
        .start_attempts_fenced(6, lease.epoch, &starts, T0)
        .await
        .expect("batch");
    for (i, r) in started.iter().enumerate() {
        match i {
            3 => assert!(
                matches!(r, Err(StoreError::Conflict(_))),
                "a cancelled task is not started: {r:?}"
            ),
            // A rescheduled task may still start (it is scheduled), from its new row.
            7 => assert_eq!(r.as_ref().expect("started").due_at, T0 + 5_000),
            _ => assert_eq!(r.as_ref().expect("started").state, TaskState::Running),
        }
    }
    let cancelled = store.get(&tasks[3].id).await.expect("get").expect("stored");
    assert_eq!(cancelled.task.state, TaskState::Cancelled);

    // A finish of a task that is not running (the cancelled one) is refused; the others in
    // the same batch finish.
    let finishes = tasks
        .iter()
        .map(|t| (t.id.clone(), common::succeeded_attempt(1), succeeded(None)))
        .collect();
    let finished = store
        .finish_attempts_fenced(6, lease.epoch, finishes, T0 + 1)
        .await;
    for (i, r) in finished.iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        } else {
            assert_eq!(r.as_ref().expect("finished").state, TaskState::Succeeded);
        }
    }

    // Under a lease a newer one replaced, the batch is answered `Fenced` (its claim is
    // confirmed against the partition's owner), and the newer lease's start overrides it.
    let more = enqueue_all(&store, vec![new_task_in(6, "late", T0)]).await;
    let newer = other.acquire_lease(6, "node-b").await.expect("newer lease");
    assert!(newer.epoch > lease.epoch);
    let refused = store
        .start_attempts_fenced(6, lease.epoch, &[(more[0].id.clone(), 1)], T0)
        .await
        .expect("batch");
    assert!(
        matches!(refused[0], Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
    let taken = other
        .start_attempts_fenced(6, newer.epoch, &[(more[0].id.clone(), 1)], T0 + 2)
        .await
        .expect("batch");
    assert_eq!(
        taken[0].as_ref().expect("started").state,
        TaskState::Running
    );
    // And the older lease can no longer finish it.
    let late = store
        .finish_attempts_fenced(
            6,
            lease.epoch,
            vec![(
                more[0].id.clone(),
                common::succeeded_attempt(1),
                succeeded(None),
            )],
            T0 + 3,
        )
        .await;
    assert!(
        matches!(late[0], Err(StoreError::Fenced { .. })),
        "{late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_of_many_tasks_of_few_keys_stays_within_cassandras_batch_limits() {
    let (store, _guard) = common::fresh_store().await;
    // 1,000 by-key rows over two long keys would be one unlogged batch of two partitions and
    // about 250 KB, which Cassandra refuses (`batch_size_fail_threshold`, 50 KiB).
    let keys = ["a".repeat(200), "b".repeat(200)];
    let batch = (0..1_000)
        .map(|i| new_task_in(8, &keys[i % 2], T0))
        .collect();
    let tasks = enqueue_all(&store, batch).await;
    assert_eq!(tasks.len(), 1_000);
    assert_eq!(window(&store, 8).await.len(), 1_000);
    let listed = store
        .list(&kairos_core::model::ListFilter {
            key: Some(keys[0].clone()),
            state: None,
            limit: 1_000,
            after: None,
        })
        .await
        .expect("list by key");
    assert_eq!(listed.len(), 500);
}
