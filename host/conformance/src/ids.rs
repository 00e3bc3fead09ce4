//! Ids that name their home (`kairos_core::ids::TaskIds::Homed`, the ids a cluster node makes):
//! every store treats them as any other id, except that the Cassandra store refuses one that
//! names another partition than its task's (`host/cassandra/tests/homes.rs`). It finds their
//! rows from the id alone, without `task_homes`, so these cases check that path end to end
//! there.

use kairos_core::ids::TaskIds;
use kairos_core::model::{ListFilter, NewTask, TaskState};
use kairos_core::store::TaskStore;

use crate::{
    T0, created, duplicate, enqueue_all, new_task_in, purge_in_steps, run_attempt, succeeded, task,
    window,
};

/// A task of `partition` with an id that names its home (buckets of a minute).
pub fn homed_task(partition: u32, key: &str, due_at: i64) -> NewTask {
    NewTask {
        id: TaskIds::Homed { bucket_ms: 60_000 }.new_id(partition, due_at),
        ..new_task_in(partition, key, due_at)
    }
}

pub async fn ids_that_name_their_home_are_found_and_replays_are_duplicates<S: TaskStore>(s: S) {
    // Two partitions, two homes (due a minute apart), and a plain id among them.
    let batch = vec![
        homed_task(0, "a", T0),
        homed_task(0, "a", T0 + 60_000),
        homed_task(1, "b", T0 + 1_000),
        new_task_in(1, "b", T0 + 2_000),
    ];
    let first = s.enqueue(batch.clone()).await.expect("enqueue");
    let tasks: Vec<_> = first.iter().map(created).collect();
    for t in &tasks {
        let rec = s.get(&t.id).await.expect("get").expect("stored");
        assert_eq!(rec.task, *t);
    }
    assert_eq!(window(&s, 0).await.len(), 2);
    assert_eq!(window(&s, 1).await.len(), 2);
    // The same records again (a replay), before and after the first one ran: the stored
    // tasks, unchanged.
    let again = s.enqueue(batch.clone()).await.expect("enqueue again");
    for (o, t) in again.iter().zip(&tasks) {
        assert_eq!(duplicate(o), *t);
    }
    let done = run_attempt(&s, &tasks[0].id, succeeded(Some("ok"))).await;
    assert_eq!(done.state, TaskState::Succeeded);
    let replayed = s.enqueue(vec![batch[0].clone()]).await.expect("replay");
    let kept = duplicate(&replayed[0]);
    assert_eq!((kept.state, kept.attempts), (TaskState::Succeeded, 1));
    assert_eq!(window(&s, 0).await.len(), 1, "not pending again");
    let rec = s.get(&tasks[0].id).await.expect("get").expect("stored");
    assert_eq!(rec.attempts.len(), 1);
    // Listed by key like any other.
    let listed = s
        .list(&ListFilter {
            key: Some("b".into()),
            state: None,
            limit: 10,
            after: None,
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
}

pub async fn retention_purges_tasks_whose_ids_name_their_home<S: TaskStore>(s: S) {
    // Five in one home of partition 0 (due within the same minute: more than one page of the
    // scan), two in two homes of partition 1, and a pending one with a plain id.
    let mut batch = vec![new_task_in(0, "plain", T0)];
    batch.extend((0..5).map(|i| homed_task(0, &format!("h{i}"), T0 + i * 1_000)));
    batch.extend((0..2).map(|i| homed_task(1, &format!("g{i}"), T0 + 30_000 + i * 60_000)));
    let tasks = enqueue_all(&s, batch).await;
    for t in &tasks[1..] {
        run_attempt(&s, &t.id, succeeded(None)).await;
    }
    let deleted = purge_in_steps(&s, T0 + 3_600_000).await;
    assert_eq!(deleted, 7, "the seven finished tasks, whatever their ids");
    for t in &tasks[1..] {
        assert!(
            s.get(&t.id).await.expect("get").is_none(),
            "{} purged",
            t.id
        );
    }
    assert_eq!(task(&s, &tasks[0].id).await.state, TaskState::Scheduled);
}
