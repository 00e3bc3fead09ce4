//! Cases: attempts, transitions and operator actions on tasks.

use super::*;
use kairos_core::model::{ListFilter, TaskState};

pub async fn attempts_are_durable_and_history_ordered<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task("k", T0)).await;
    s.start_attempt(&lease_for(&s, &t.id).await, &t.id, 1, T0 + 1)
        .await
        .expect("start 1");
    let running = task(&s, &t.id).await;
    assert_eq!(running.state, TaskState::Running);
    assert_eq!(running.attempts, 1, "the attempt count is stored at start");
    assert_eq!(running.updated_at, T0 + 1);

    let a1 = Attempt {
        number: 1,
        started_at: T0 + 1,
        ended_at: T0 + 2,
        outcome: AttemptOutcome::Retryable,
        error: Some("e1".into()),
        plugin_digest: Some("d1".into()),
        logs: Some("INFO fetching ünïcode\nWARN [host] request refused url=x\nERROR e1".into()),
    };
    let after1 = s
        .finish_attempt(
            &lease_for(&s, &t.id).await,
            &t.id,
            a1.clone(),
            retry(T0 + 1_000, "e1"),
            T0 + 2,
        )
        .await
        .expect("finish 1");
    assert_eq!(after1.state, TaskState::Retrying);
    assert_eq!(after1.attempts, 1);
    assert_eq!(after1.last_error.as_deref(), Some("e1"));
    assert_eq!(
        after1,
        task(&s, &t.id).await,
        "finish returns the stored task"
    );

    run_attempt(&s, &t.id, retry(T0 + 2_000, "e2")).await;
    let done = run_attempt(&s, &t.id, succeeded(Some("ok"))).await;
    assert_eq!(done.attempts, 3);

    let rec = s.get(&t.id).await.expect("get").expect("stored");
    assert_eq!(rec.task.attempts, 3);
    assert_eq!(rec.attempts.len(), 3);
    assert_eq!(rec.attempts[0], a1);
    let numbers: Vec<u32> = rec.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    let outcomes: Vec<_> = rec.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            AttemptOutcome::Retryable,
            AttemptOutcome::Retryable,
            AttemptOutcome::Succeeded
        ]
    );
    assert_eq!(rec.attempts[1].error.as_deref(), Some("e2"));
    assert_eq!(rec.attempts[2].error, None);
    assert_eq!(rec.attempts[2].plugin_digest.as_deref(), Some("digest-3"));
    assert_eq!(rec.attempts[2].ended_at, rec.attempts[2].started_at + 10);
    // The log tail round-trips, and an attempt that logged nothing has none.
    assert!(rec.attempts[0].logs.is_some());
    assert_eq!(rec.attempts[1].logs, None);
    assert_eq!(rec.attempts[2].logs, None);
}

pub async fn retry_keeps_the_task_pending_at_its_position<S: TaskStore>(s: S) {
    let t = enqueue_all(&s, vec![new_task("k", T0), new_task("k", T0 + 10)]).await;
    let retried = run_attempt(&s, &t[0].id, retry(T0 + 5_000, "busy")).await;
    assert_eq!(retried.state, TaskState::Retrying);
    assert_eq!(retried.next_at, T0 + 5_000);
    assert_eq!(
        retried.due_at, T0,
        "a retry does not move the ordering position"
    );
    assert_eq!(retried.last_error.as_deref(), Some("busy"));

    let got = window(&s, 0).await;
    assert_eq!(ids(&got), ids(&t), "still first: it holds its key");
    assert_eq!(got[0], retried);
    // `up_to` filters on the position (due_at), not on next_at.
    let due = s
        .load_window(0, OrderPos::MIN, T0, 10)
        .await
        .expect("load_window");
    assert_eq!(ids(&due), vec![t[0].id.as_str()]);
}

pub async fn success_stores_output_and_leaves_the_window<S: TaskStore>(s: S) {
    let t = enqueue_all(&s, vec![new_task("k", T0), new_task("k", T0 + 1)]).await;
    let done = run_attempt(&s, &t[0].id, succeeded(Some(r#"{"sent":true}"#))).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.output.as_deref(), Some(r#"{"sent":true}"#));
    assert_eq!(task(&s, &t[0].id).await, done);
    let quiet = run_attempt(&s, &t[1].id, succeeded(None)).await;
    assert_eq!(quiet.output, None);
    assert!(window(&s, 0).await.is_empty());
}

pub async fn dead_parks_the_key_only_when_asked<S: TaskStore>(s: S) {
    let parked = enqueue_one(&s, parking(new_task("a", T0))).await;
    let released = enqueue_one(&s, new_task("b", T0)).await;
    run_attempt(&s, &parked.id, retry(T0 + 1, "1")).await;
    let p = run_attempt(&s, &parked.id, dead("last")).await;
    let r = run_attempt(&s, &released.id, dead("permanent")).await;
    assert_eq!((p.state, r.state), (TaskState::Dead, TaskState::Dead));
    assert_eq!(p.last_error.as_deref(), Some("last"));
    assert_eq!(p.attempts, 2);
    assert_eq!(ids(&window(&s, 0).await), vec![parked.id.as_str()]);
}

pub async fn finish_after_cancel_or_finish_conflicts<S: TaskStore>(s: S) {
    let t = enqueue_one(&s, new_task("k", T0)).await;
    run_attempt(&s, &t.id, retry(T0 + 100, "again")).await;
    s.cancel(&lease_for(&s, &t.id).await, &t.id, T0 + 50)
        .await
        .expect("cancel retrying");
    let late = Attempt {
        number: 2,
        started_at: T0 + 60,
        ended_at: T0 + 70,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    };
    expect_conflict(
        s.finish_attempt(
            &lease_for(&s, &t.id).await,
            &t.id,
            late.clone(),
            succeeded(None),
            T0 + 70,
        )
        .await,
        "finish on a cancelled task",
    );
    expect_conflict(
        s.start_attempt(&lease_for(&s, &t.id).await, &t.id, 2, T0 + 80)
            .await,
        "start on a cancelled task",
    );
    let rec = s.get(&t.id).await.expect("get").expect("stored");
    assert_eq!(rec.task.state, TaskState::Cancelled);
    assert_eq!(
        rec.attempts.len(),
        1,
        "the rejected attempt is not recorded"
    );

    let ok = enqueue_one(&s, new_task("k", T0)).await;
    run_attempt(&s, &ok.id, succeeded(None)).await;
    expect_conflict(
        s.finish_attempt(&lease_for(&s, &ok.id).await, &ok.id, late, dead("x"), T0)
            .await,
        "finish on a succeeded task",
    );
    expect_conflict(
        s.start_attempt(&lease_for(&s, &ok.id).await, &ok.id, 2, T0)
            .await,
        "start on a succeeded task",
    );
    assert_eq!(task(&s, &ok.id).await.state, TaskState::Succeeded);
    expect_not_found(
        s.start_attempt(&lease_for(&s, "nope").await, "nope", 1, T0)
            .await,
        "start unknown",
    );
}

pub async fn cancel_follows_the_state_rules<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task("scheduled", T0),
            new_task("retrying", T0),
            new_task("running", T0),
            new_task("succeeded", T0),
            parking(new_task("dead", T0)),
        ],
    )
    .await;
    run_attempt(&s, &t[1].id, retry(T0 + 10, "x")).await;
    s.start_attempt(&lease_for(&s, &t[2].id).await, &t[2].id, 1, T0)
        .await
        .expect("start");
    run_attempt(&s, &t[3].id, succeeded(None)).await;
    run_attempt(&s, &t[4].id, dead("x")).await;

    let c = s
        .cancel(&lease_for(&s, &t[0].id).await, &t[0].id, T0 + 7)
        .await
        .expect("cancel scheduled");
    assert_eq!(c.state, TaskState::Cancelled);
    assert_eq!(c.updated_at, T0 + 7);
    assert_eq!(task(&s, &t[0].id).await, c);
    s.cancel(&lease_for(&s, &t[1].id).await, &t[1].id, T0)
        .await
        .expect("cancel retrying");
    expect_conflict(
        s.cancel(&lease_for(&s, &t[2].id).await, &t[2].id, T0).await,
        "cancel running",
    );
    expect_conflict(
        s.cancel(&lease_for(&s, &t[3].id).await, &t[3].id, T0).await,
        "cancel succeeded",
    );
    expect_conflict(
        s.cancel(&lease_for(&s, &t[0].id).await, &t[0].id, T0).await,
        "cancel cancelled",
    );
    s.cancel(&lease_for(&s, &t[4].id).await, &t[4].id, T0)
        .await
        .expect("cancel dead");
    expect_not_found(
        s.cancel(&lease_for(&s, "nope").await, "nope", T0).await,
        "cancel unknown",
    );

    assert_eq!(task(&s, &t[2].id).await.state, TaskState::Running);
    assert_eq!(
        ids(&window(&s, 0).await),
        vec![t[2].id.as_str()],
        "cancelled tasks (also a parked dead one) leave the window"
    );
}

pub async fn retry_dead_requeues_with_more_attempts<S: TaskStore>(s: S) {
    let mut asked = new_task("k", T0);
    asked.max_attempts = 2;
    let t = enqueue_one(&s, asked).await;
    run_attempt(&s, &t.id, retry(T0 + 1, "1")).await;
    run_attempt(&s, &t.id, dead("2")).await;
    assert!(window(&s, 0).await.is_empty());

    let back = s
        .retry_dead(&lease_for(&s, &t.id).await, &t.id, 3, T0 + 500)
        .await
        .expect("retry_dead");
    assert_eq!(back.state, TaskState::Scheduled);
    assert_eq!(back.next_at, T0 + 500);
    assert_eq!(back.attempts, 2);
    assert_eq!(back.max_attempts, 5);
    assert_eq!(back, task(&s, &t.id).await);
    assert_eq!(ids(&window(&s, 0).await), vec![t.id.as_str()]);

    expect_conflict(
        s.retry_dead(&lease_for(&s, &t.id).await, &t.id, 1, T0)
            .await,
        "retry a scheduled task",
    );
    expect_not_found(
        s.retry_dead(&lease_for(&s, "nope").await, "nope", 1, T0)
            .await,
        "retry unknown",
    );
    let done = run_attempt(&s, &t.id, succeeded(None)).await;
    assert_eq!(done.attempts, 3);
    expect_conflict(
        s.retry_dead(&lease_for(&s, &t.id).await, &t.id, 1, T0)
            .await,
        "retry a succeeded task",
    );
}

pub async fn reschedule_moves_the_ordering_position<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task("k", T0),
            new_task("k", T0 + 10),
            new_task("k", T0 + 20),
        ],
    )
    .await;
    let moved = s
        .reschedule(&lease_for(&s, &t[0].id).await, &t[0].id, T0 + 15, T0 + 1)
        .await
        .expect("reschedule");
    assert_eq!((moved.due_at, moved.next_at), (T0 + 15, T0 + 15));
    assert_eq!(moved.seq, t[0].seq);
    assert_eq!(moved, task(&s, &t[0].id).await);
    let order = vec![t[1].id.as_str(), t[0].id.as_str(), t[2].id.as_str()];
    assert_eq!(ids(&window(&s, 0).await), order);
    let early = s
        .load_window(0, OrderPos::MIN, T0 + 12, 10)
        .await
        .expect("load_window");
    assert_eq!(ids(&early), vec![t[1].id.as_str()]);
    let by_key = ListFilter {
        key: Some("k".into()),
        ..Default::default()
    };
    assert_eq!(ids(&s.list(&by_key).await.expect("list")), order);

    // A retrying task can be moved too (earlier this time): it takes its new position as a
    // scheduled task (it no longer holds its key), keeping its attempt count.
    run_attempt(&s, &t[2].id, retry(T0 + 99_000, "x")).await;
    let r = s
        .reschedule(&lease_for(&s, &t[2].id).await, &t[2].id, T0 - 5, T0)
        .await
        .expect("reschedule");
    assert_eq!(
        (r.due_at, r.next_at, r.state, r.attempts),
        (T0 - 5, T0 - 5, TaskState::Scheduled, 1)
    );
    assert_eq!(window(&s, 0).await[0].id, t[2].id);

    s.start_attempt(&lease_for(&s, &t[1].id).await, &t[1].id, 1, T0)
        .await
        .expect("start");
    expect_conflict(
        s.reschedule(&lease_for(&s, &t[1].id).await, &t[1].id, T0, T0)
            .await,
        "reschedule running",
    );
    run_attempt(&s, &t[0].id, succeeded(None)).await;
    expect_conflict(
        s.reschedule(&lease_for(&s, &t[0].id).await, &t[0].id, T0, T0)
            .await,
        "reschedule succeeded",
    );
    expect_not_found(
        s.reschedule(&lease_for(&s, "nope").await, "nope", T0, T0)
            .await,
        "reschedule unknown",
    );
}

pub async fn unpark_key_releases_parked_dead_tasks<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            parking(new_task("k", T0)),
            parking(new_task("k", T0 + 1)),
            new_task("k", T0 + 2),
            parking(new_task("other", T0 + 3)),
        ],
    )
    .await;
    for i in [0, 1, 3] {
        run_attempt(&s, &t[i].id, dead("x")).await;
    }
    assert_eq!(window(&s, 0).await.len(), 4);

    assert_eq!(
        s.unpark_key(&held(&s, 0).await, "k", T0 + 9)
            .await
            .expect("unpark"),
        2
    );
    assert_eq!(ids(&window(&s, 0).await), vec![&t[2].id, &t[3].id]);
    for i in [0, 1] {
        let after = task(&s, &t[i].id).await;
        assert_eq!(after.state, TaskState::Dead, "unparked tasks stay dead");
        assert!(!after.park_on_dead);
        assert_eq!(after.updated_at, T0 + 9);
    }
    assert!(
        task(&s, &t[3].id).await.park_on_dead,
        "other keys untouched"
    );
    assert_eq!(
        s.unpark_key(&held(&s, 0).await, "k", T0)
            .await
            .expect("unpark again"),
        0
    );
    assert_eq!(
        s.unpark_key(&held(&s, 0).await, "unknown", T0)
            .await
            .expect("unpark unknown"),
        0
    );
    // An unparked dead task can still be retried.
    s.retry_dead(&lease_for(&s, &t[0].id).await, &t[0].id, 1, T0 + 10)
        .await
        .expect("retry_dead");
    assert_eq!(window(&s, 0).await[0].id, t[0].id);
}
