//! Where task rows live (`task_rows` by `(partition, home)`, found by id through
//! `task_homes`): an id is one task wherever it is enqueued again. Needs Cassandra on
//! 127.0.0.1:9042.

mod common;

use kairos_conformance::{T0, new_task_in, window};
use kairos_core::model::EnqueueOutcome;
use kairos_core::store::TaskStore;

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
