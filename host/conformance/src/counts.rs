//! Cases: task counts by state (`state_counts`).

use super::*;
use kairos_core::model::{StateCounts, TaskState};

async fn expect_counts<S: TaskStore>(s: &S, want: StateCounts, when: &str) {
    let got = s.state_counts().await.expect("state_counts");
    assert_eq!(got, want, "state counts {when}");
}

/// One task went from `from` to `to`.
fn moved(c: &mut StateCounts, from: TaskState, to: TaskState) {
    c.add(from, -1);
    c.add(to, 1);
}

pub async fn state_counts_follow_every_change<S: TaskStore>(s: S) {
    use TaskState::*;
    let mut want = StateCounts::default();
    expect_counts(&s, want, "of an empty store").await;

    // Tasks of several partitions; duplicates (a taken uniqueness key, a replayed id) count
    // once.
    let batch = vec![
        with_ukey(new_task("k0", T0), "u0"),
        new_task_in(1, "k1", T0),
        new_task_in(2, "k2", T0),
        new_task("k3", T0),
        new_task_in(3, "k4", T0),
        new_task("k5", T0),
        parking(new_task("k6", T0)),
    ];
    let t = enqueue_all(&s, batch.clone()).await;
    let again = s
        .enqueue(vec![with_ukey(new_task("k0", T0), "u0"), batch[1].clone()])
        .await
        .expect("enqueue duplicates");
    assert!(
        again
            .iter()
            .all(|o| matches!(o, EnqueueOutcome::Duplicate(_)))
    );
    want.add(Scheduled, 7);
    expect_counts(&s, want, "after enqueueing").await;
    let [succ, retrying, dead_one, canc, sched, running, parked] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| t[i].id.clone());

    // A start, and the same start claimed again.
    let lease = lease_for(&s, &succ).await;
    for _ in 0..2 {
        s.start_attempt(&lease, &succ, 1, T0).await.expect("start");
    }
    moved(&mut want, Scheduled, Running);
    expect_counts(&s, want, "after a start").await;
    let attempt = Attempt {
        number: 1,
        started_at: T0,
        ended_at: T0 + 10,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    };
    s.finish_attempt(&lease, &succ, attempt, succeeded(Some("ok")), T0 + 10)
        .await
        .expect("finish");
    moved(&mut want, Running, Succeeded);
    expect_counts(&s, want, "after a success").await;

    run_attempt(&s, &retrying, retry(T0 + 60_000, "flaky")).await;
    moved(&mut want, Scheduled, Retrying);
    run_attempt(&s, &dead_one, dead("broken")).await;
    run_attempt(&s, &parked, dead("broken")).await;
    want.add(Scheduled, -2);
    want.add(Dead, 2);
    expect_counts(&s, want, "after a retry and two deaths").await;
    s.cancel(&lease_for(&s, &canc).await, &canc, T0 + 7)
        .await
        .expect("cancel");
    moved(&mut want, Scheduled, Cancelled);
    s.start_attempt(&lease_for(&s, &running).await, &running, 1, T0)
        .await
        .expect("start");
    moved(&mut want, Scheduled, Running);
    expect_counts(&s, want, "after a cancel and a start").await;
    assert_eq!(want.total(), 7);
    assert_eq!(want.get(Scheduled), 1, "only {sched} is left scheduled");

    // Refused changes count nothing.
    expect_conflict(
        s.cancel(&lease_for(&s, &succ).await, &succ, T0 + 20).await,
        "cancel a succeeded task",
    );
    expect_conflict(
        s.start_attempt(&lease_for(&s, &dead_one).await, &dead_one, 2, T0 + 20)
            .await,
        "start a dead task",
    );
    expect_counts(&s, want, "after refused changes").await;

    // An operator's retry and reschedule make tasks scheduled again.
    s.retry_dead(&lease_for(&s, &dead_one).await, &dead_one, 1, T0 + 2_000)
        .await
        .expect("retry dead");
    moved(&mut want, Dead, Scheduled);
    s.reschedule(
        &lease_for(&s, &retrying).await,
        &retrying,
        T0 + 9_000,
        T0 + 2_000,
    )
    .await
    .expect("reschedule");
    moved(&mut want, Retrying, Scheduled);
    expect_counts(&s, want, "after a retry of a dead task and a reschedule").await;

    // Purged tasks no longer count: the success and the cancel (the parked task stays).
    let p = s
        .purge_finished(T0 + 5_000, None, 1_000)
        .await
        .expect("purge");
    assert_eq!(p.deleted, 2);
    want.add(Succeeded, -1);
    want.add(Cancelled, -1);
    expect_counts(&s, want, "after purging").await;
    s.cancel(&lease_for(&s, &parked).await, &parked, T0 + 3_000)
        .await
        .expect("cancel the parked task");
    moved(&mut want, Dead, Cancelled);
    let p = s
        .purge_finished(T0 + 5_000, None, 1_000)
        .await
        .expect("purge");
    assert_eq!(p.deleted, 1);
    want.add(Cancelled, -1);
    expect_counts(&s, want, "after purging the cancelled parked task").await;
    assert_eq!(
        (want.get(Scheduled), want.get(Running), want.total()),
        (3, 1, 4)
    );
}
