//! What a task costs in CQL requests on the cluster's path: enqueued by its partition's owner
//! (as the Kafka consumer does), started and finished there. Every per-task row goes in a
//! request shared with other tasks: homes and by-key rows in unlogged batches, the replay
//! check in `IN` reads, the rows just inserted remembered for the starts, attempts recorded by
//! the finishes' conditional batches. Counted by Cassandra itself
//! (`system_views.thread_pools`), so this file holds one test: nothing else runs meanwhile.
//! Needs Cassandra on 127.0.0.1:9042.

mod common;

use kairos_conformance::{T0, homed_task, new_task_in, succeeded};
use kairos_core::model::{EnqueueOutcome, TaskState};
use kairos_core::store::TaskStore;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn requests(session: &Session) -> i64 {
    session
        .query_unpaged(
            "SELECT completed_tasks FROM system_views.thread_pools \
             WHERE name = 'Native-Transport-Requests'",
            (),
        )
        .await
        .expect("thread_pools")
        .into_rows_result()
        .expect("rows")
        .first_row::<(i64,)>()
        .expect("Native-Transport-Requests")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_costs_a_small_share_of_a_request_to_enqueue_start_and_finish() {
    let (store, _guard) = common::fresh_store().await;
    let counter = SessionBuilder::new()
        .known_node(common::NODE)
        .build()
        .await
        .expect("session");
    let n = 200usize;
    let partition = 9;
    let lease = store
        .acquire_lease(partition, "node-a")
        .await
        .expect("lease");
    let batch = (0..n)
        .map(|i| new_task_in(partition, &format!("key-{i}"), T0))
        .collect();

    let before = requests(&counter).await;
    let outcomes = store.enqueue(batch).await.expect("enqueue");
    let enqueued = requests(&counter).await - before - 1;
    let ids: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            EnqueueOutcome::Created(t) => t.id.clone(),
            EnqueueOutcome::Duplicate(t) => panic!("{} is new", t.id),
        })
        .collect();

    let before = requests(&counter).await;
    let starts: Vec<(String, u32)> = ids.iter().map(|id| (id.clone(), 1)).collect();
    let started = store
        .start_attempts_fenced(partition, lease.epoch, &starts, T0)
        .await
        .expect("starts");
    assert!(started.iter().all(|r| r.is_ok()), "{started:?}");
    let finishes = ids
        .iter()
        .map(|id| (id.clone(), common::succeeded_attempt(1), succeeded(None)))
        .collect();
    let finished = store
        .finish_attempts_fenced(partition, lease.epoch, finishes, T0 + 1)
        .await;
    let ran = requests(&counter).await - before - 1;
    for r in &finished {
        assert_eq!(r.as_ref().expect("finished").state, TaskState::Succeeded);
    }

    // Per task, one request each for its home, its by-key row, its replay check, the reads
    // of its row and home before its start and its attempt record would be 6 * 200. Measured:
    // about 51 and 7; the bounds leave room for the driver's own background requests
    // (keep-alives, schema refreshes) that land in the same window.
    eprintln!("{n} tasks: enqueue {enqueued} requests, start and finish {ran}");
    assert!(
        enqueued <= 100,
        "enqueue of {n} tasks took {enqueued} requests"
    );
    assert!(
        ran <= 40,
        "starts and finishes of {n} tasks took {ran} requests"
    );
    let rec = store.get(&ids[0]).await.expect("get").expect("stored");
    assert_eq!(rec.attempts.len(), 1);

    // The same with ids that name their home (the ids the API makes): no `task_homes` row to
    // write, and the replay check reads the home's own partition.
    let homed = (0..n)
        .map(|i| homed_task(partition + 1, &format!("key-{i}"), T0))
        .collect();
    let before = requests(&counter).await;
    let outcomes = store.enqueue(homed).await.expect("enqueue");
    let enqueued_homed = requests(&counter).await - before - 1;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, EnqueueOutcome::Created(_)))
    );
    eprintln!("{n} tasks with ids that name their home: enqueue {enqueued_homed} requests");
    assert!(
        enqueued_homed + 15 <= enqueued,
        "ids that name their home took {enqueued_homed} requests to enqueue, other ids {enqueued}"
    );
}
