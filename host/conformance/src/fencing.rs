//! The ownership contract: leases, and fencing of every call that changes a task.

use super::*;
use kairos_core::model::TaskState;
use kairos_core::ownership::Holder;

fn attempt(number: u32, at: Millis) -> Attempt {
    Attempt {
        number,
        started_at: at,
        ended_at: at + 1,
        outcome: kairos_core::model::AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    }
}

pub async fn leases_get_increasing_epochs_per_partition<S: TaskStore>(s: S) {
    assert_eq!(s.lease_holder(3).await.expect("holder"), None);
    let a = s.acquire_lease(3, "node-a").await.expect("acquire a");
    assert_eq!(a.partition, 3);
    assert_eq!(a.epoch, 1, "first lease of a partition");
    let b = s.acquire_lease(3, "node-b").await.expect("acquire b");
    assert_eq!(b.epoch, 2);
    assert_eq!(
        s.lease_holder(3).await.expect("holder"),
        Some(Holder {
            epoch: 2,
            node_id: "node-b".into()
        })
    );
    // Re-acquiring by the same node (a restart) is a new epoch too.
    let b2 = s.acquire_lease(3, "node-b").await.expect("acquire b again");
    assert_eq!(b2.epoch, 3);
    // Partitions are independent.
    let other = s.acquire_lease(4, "node-a").await.expect("acquire 4");
    assert_eq!(other.epoch, 1);
    assert_eq!(
        s.lease_holder(3).await.expect("holder").map(|h| h.epoch),
        Some(3)
    );
}

pub async fn stale_lease_cannot_start_or_finish<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(5, "k", T0)).await;
    let old = s.acquire_lease(5, "a").await.expect("a");
    let started = s
        .start_attempt(&old, &t.id, 1, T0)
        .await
        .expect("start under a");
    assert_eq!((started.state, started.attempts), (TaskState::Running, 1));
    let new = s.acquire_lease(5, "b").await.expect("b");
    // The old holder's end is refused and changes nothing.
    expect_fenced(
        s.finish_attempt(&old, &t.id, attempt(1, T0), succeeded(Some("a")), T0 + 1)
            .await,
        &old,
        "finish under a stale lease",
    );
    expect_fenced(
        s.start_attempt(&old, &t.id, 2, T0 + 2).await,
        &old,
        "start under a stale lease",
    );
    let still = task(&s, &t.id).await;
    assert_eq!((still.state, still.attempts), (TaskState::Running, 1));
    // The new holder takes the in-flight task over as its next attempt and finishes it.
    s.start_attempt(&new, &t.id, 2, T0 + 3)
        .await
        .expect("takeover");
    let done = s
        .finish_attempt(
            &new,
            &t.id,
            attempt(2, T0 + 3),
            succeeded(Some("b")),
            T0 + 4,
        )
        .await
        .expect("finish under b");
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.output.as_deref(), Some("b"));
    let rec = s.get(&t.id).await.expect("get").expect("stored");
    assert_eq!(
        rec.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [2],
        "the fenced end left no trace"
    );
}

pub async fn stale_lease_cannot_change_tasks<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task_in(6, "k", T0),
            parking(new_task_in(6, "k", T0 + 1)),
            new_task_in(6, "k", T0 + 2),
        ],
    )
    .await;
    let old = s.acquire_lease(6, "a").await.expect("a");
    s.start_attempt(&old, &t[1].id, 1, T0).await.expect("start");
    s.finish_attempt(&old, &t[1].id, attempt(1, T0), dead("x"), T0 + 1)
        .await
        .expect("dead, parking");
    let new = s.acquire_lease(6, "b").await.expect("b");
    expect_fenced(s.cancel(&old, &t[0].id, T0).await, &old, "cancel");
    expect_fenced(
        s.reschedule(&old, &t[0].id, T0 + 9, T0).await,
        &old,
        "reschedule",
    );
    expect_fenced(
        s.retry_dead(&old, &t[1].id, 1, T0).await,
        &old,
        "retry_dead",
    );
    expect_fenced(s.unpark_key(&old, "k", T0).await, &old, "unpark_key");
    let a = task(&s, &t[0].id).await;
    assert_eq!((a.state, a.due_at), (TaskState::Scheduled, T0), "unchanged");
    assert!(task(&s, &t[1].id).await.park_on_dead, "still parking");
    // The current holder may.
    s.reschedule(&new, &t[0].id, T0 + 9, T0)
        .await
        .expect("reschedule");
    s.cancel(&new, &t[2].id, T0).await.expect("cancel");
    assert_eq!(s.unpark_key(&new, "k", T0).await.expect("unpark"), 1);
    s.retry_dead(&new, &t[1].id, 1, T0)
        .await
        .expect("retry_dead");
}

pub async fn start_is_idempotent_per_attempt<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(7, "k", T0)).await;
    let l = s.acquire_lease(7, "a").await.expect("a");
    s.start_attempt(&l, &t.id, 1, T0).await.expect("start");
    // The answer was lost; the same claim again succeeds and changes nothing else.
    let again = s
        .start_attempt(&l, &t.id, 1, T0 + 5)
        .await
        .expect("re-claim");
    assert_eq!((again.state, again.attempts), (TaskState::Running, 1));
    s.finish_attempt(&l, &t.id, attempt(1, T0), retry(T0 + 100, "busy"), T0 + 6)
        .await
        .expect("finish 1");
    // Attempt 1 is over: claiming it again is a conflict, attempt 2 is fine.
    expect_conflict(
        s.start_attempt(&l, &t.id, 1, T0 + 7).await,
        "claim an ended attempt",
    );
    let second = s
        .start_attempt(&l, &t.id, 2, T0 + 100)
        .await
        .expect("start 2");
    assert_eq!(second.attempts, 2);
}

pub async fn finish_is_recorded_once<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(8, "k", T0)).await;
    let l = s.acquire_lease(8, "a").await.expect("a");
    s.start_attempt(&l, &t.id, 1, T0).await.expect("start");
    let first = s
        .finish_attempt(&l, &t.id, attempt(1, T0), retry(T0 + 50, "e"), T0 + 1)
        .await
        .expect("finish");
    assert_eq!(first.state, TaskState::Retrying);
    // A repeated finish (its first answer lost) is refused: the task is no longer running.
    expect_conflict(
        s.finish_attempt(&l, &t.id, attempt(1, T0), retry(T0 + 99, "e"), T0 + 2)
            .await,
        "second finish of one attempt",
    );
    assert_eq!(task(&s, &t.id).await.next_at, T0 + 50, "unchanged");
}

pub async fn lease_must_match_the_task_partition<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(9, "k", T0)).await;
    let wrong = s.acquire_lease(10, "a").await.expect("lease of 10");
    s.acquire_lease(9, "a").await.expect("lease of 9");
    expect_conflict(
        s.start_attempt(&wrong, &t.id, 1, T0).await,
        "start with another partition's lease",
    );
    expect_conflict(
        s.cancel(&wrong, &t.id, T0).await,
        "cancel with another partition's lease",
    );
    assert_eq!(task(&s, &t.id).await.state, TaskState::Scheduled);
}

/// A start given back (its attempt never ran) leaves the task as it was before the start:
/// same state, attempt count, position and times, pending, with no attempt recorded; the same
/// attempt number can then be started again. Only a running attempt of that number can be
/// given back, and only to `scheduled` or `retrying`.
pub async fn unclaim_gives_back_a_start_that_did_not_run<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(11, "k", T0)).await;
    let l = s.acquire_lease(11, "a").await.expect("a");
    s.start_attempt(&l, &t.id, 1, T0 + 1)
        .await
        .expect("start 1");
    let back = s
        .unclaim_attempt(&l, &t.id, 1, TaskState::Scheduled, T0 + 2)
        .await
        .expect("give back 1");
    assert_eq!(
        (back.state, back.attempts, back.due_at, back.next_at),
        (TaskState::Scheduled, 0, T0, T0),
        "as before its start"
    );
    assert_eq!(
        back.updated_at,
        T0 + 2,
        "updated_at as the caller restores it"
    );
    let stored = task(&s, &t.id).await;
    assert_eq!((stored.state, stored.attempts), (TaskState::Scheduled, 0));
    let window = s
        .load_window(11, OrderPos::MIN, T0, 10)
        .await
        .expect("window");
    assert_eq!(
        window.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        [t.id.as_str()],
        "still pending at its position"
    );
    let counts = s.state_counts().await.expect("counts");
    assert_eq!((counts.scheduled, counts.running), (1, 0), "{counts:?}");
    // The same attempt number starts again; it fails and is retried.
    s.start_attempt(&l, &t.id, 1, T0 + 3)
        .await
        .expect("start 1 again");
    s.finish_attempt(
        &l,
        &t.id,
        attempt(1, T0 + 3),
        retry(T0 + 100, "busy"),
        T0 + 4,
    )
    .await
    .expect("finish 1");
    // Attempt 2's start given back returns it to retrying, at the same retry time.
    s.start_attempt(&l, &t.id, 2, T0 + 100)
        .await
        .expect("start 2");
    // Refused: another attempt's number, a state it cannot go back to.
    expect_conflict(
        s.unclaim_attempt(&l, &t.id, 1, TaskState::Retrying, T0 + 101)
            .await,
        "give back an attempt that is not the running one",
    );
    for to in [TaskState::Running, TaskState::Dead, TaskState::Succeeded] {
        expect_conflict(
            s.unclaim_attempt(&l, &t.id, 2, to, T0 + 101).await,
            &format!("give back to {}", to.as_str()),
        );
    }
    let back = s
        .unclaim_attempt(&l, &t.id, 2, TaskState::Retrying, T0 + 102)
        .await
        .expect("give back 2");
    assert_eq!(
        (back.state, back.attempts, back.next_at),
        (TaskState::Retrying, 1, T0 + 100)
    );
    // Not running any more: giving it back again is refused and changes nothing.
    expect_conflict(
        s.unclaim_attempt(&l, &t.id, 2, TaskState::Retrying, T0 + 103)
            .await,
        "give back twice",
    );
    let stored = task(&s, &t.id).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.next_at),
        (TaskState::Retrying, 1, T0 + 100)
    );
    // Attempt 2 runs after all and succeeds: one record per attempt that ended.
    s.start_attempt(&l, &t.id, 2, T0 + 104)
        .await
        .expect("start 2 again");
    s.finish_attempt(&l, &t.id, attempt(2, T0 + 104), succeeded(None), T0 + 105)
        .await
        .expect("finish 2");
    expect_conflict(
        s.unclaim_attempt(&l, &t.id, 2, TaskState::Retrying, T0 + 106)
            .await,
        "give back a finished attempt",
    );
    let rec = s.get(&t.id).await.expect("get").expect("stored");
    assert_eq!(rec.task.state, TaskState::Succeeded);
    assert_eq!(
        rec.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2]
    );
}

/// Only the current lease gives a start back; after a newer lease took the task over, the
/// old holder's give-back is fenced and changes nothing.
pub async fn stale_lease_cannot_unclaim<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task_in(12, "k", T0)).await;
    let old = s.acquire_lease(12, "a").await.expect("a");
    s.start_attempt(&old, &t.id, 1, T0).await.expect("start 1");
    let new = s.acquire_lease(12, "b").await.expect("b");
    expect_fenced(
        s.unclaim_attempt(&old, &t.id, 1, TaskState::Scheduled, T0 + 1)
            .await,
        &old,
        "give back under a stale lease",
    );
    let still = task(&s, &t.id).await;
    assert_eq!((still.state, still.attempts), (TaskState::Running, 1));
    // The new holder takes it over as attempt 2; the old holder still cannot give it back.
    s.start_attempt(&new, &t.id, 2, T0 + 2)
        .await
        .expect("takeover");
    expect_fenced(
        s.unclaim_attempt(&old, &t.id, 2, TaskState::Scheduled, T0 + 3)
            .await,
        &old,
        "give back the new holder's attempt",
    );
    let still = task(&s, &t.id).await;
    assert_eq!((still.state, still.attempts), (TaskState::Running, 2));
}
