//! Partition fencing against a real Cassandra (127.0.0.1:9042; run
//! `scripts/services up cassandra` first).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use kairos_cassandra::fencing::is_fenced;
use kairos_core::conformance::{T0, enqueue_one, new_task_in, succeeded};
use kairos_core::fencing::{LocalFencing, PartitionFencing};
use kairos_core::model::{Attempt, AttemptOutcome, TaskState};
use kairos_core::store::TaskStore;

fn attempt(number: u32) -> Attempt {
    Attempt {
        number,
        started_at: T0,
        ended_at: T0 + 5,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
    }
}

fn expect_fenced<T: std::fmt::Debug>(r: kairos_core::store::StoreResult<T>, what: &str) {
    match r {
        Err(e) if is_fenced(&e) => {}
        other => panic!("{what}: expected a fenced Conflict, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_bumps_the_epoch_and_current_reports_the_owner() {
    let (s, _guard) = common::fresh_store().await;
    assert_eq!(s.current(3).await.expect("current"), None);
    assert_eq!(s.acquire(3, "node-a").await.expect("acquire"), 1);
    assert_eq!(
        s.current(3).await.expect("current"),
        Some((1, "node-a".into()))
    );
    assert_eq!(s.acquire(3, "node-b").await.expect("acquire"), 2);
    assert_eq!(s.acquire(3, "node-b").await.expect("acquire"), 3);
    assert_eq!(
        s.current(3).await.expect("current"),
        Some((3, "node-b".into()))
    );
    assert_eq!(s.acquire(4, "node-a").await.expect("other partition"), 1);

    let local = LocalFencing::new("solo");
    assert_eq!(local.acquire(0, "solo").await.expect("local"), 1);
    assert_eq!(
        local.current(7).await.expect("local"),
        Some((1, "solo".into()))
    );
}

/// The `nodes` table: where an owner's API is reached (task operations are forwarded there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_their_api_address() {
    let (s, _guard) = common::fresh_store().await;
    assert_eq!(s.node_addr("node-a").await.expect("lookup"), None);
    s.register_node("node-a", "10.0.0.1:7400", T0)
        .await
        .expect("register");
    s.register_node("node-b", "10.0.0.2:7400", T0)
        .await
        .expect("register");
    // A restart on another address replaces the old one.
    s.register_node("node-a", "[::1]:7401", T0 + 1)
        .await
        .expect("re-register");
    assert_eq!(
        s.node_addr("node-a").await.expect("lookup").as_deref(),
        Some("[::1]:7401")
    );
    assert_eq!(
        s.node_addr("node-b").await.expect("lookup").as_deref(),
        Some("10.0.0.2:7400")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_get_distinct_epochs() {
    let (s, _guard) = common::fresh_store().await;
    let s = Arc::new(s);
    let mut handles = Vec::new();
    for n in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.acquire(0, &format!("node-{n}")).await.expect("acquire")
        }));
    }
    let mut epochs = BTreeSet::new();
    for h in handles {
        epochs.insert(h.await.expect("join"));
    }
    assert_eq!(epochs, (1..=8).collect::<BTreeSet<u64>>());
    let (epoch, _) = s.current(0).await.expect("current").expect("owned");
    assert_eq!(epoch, 8);
}

/// Node A starts a task, loses the partition to B, B takes the task over: A can no longer
/// complete it, B can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_cannot_complete_a_task() {
    let (s, _guard) = common::fresh_store().await;
    let t = enqueue_one(&s, new_task_in(5, "k", T0)).await;
    let a = s.acquire(5, "node-a").await.expect("acquire a");
    let running = s
        .start_attempt_fenced(&t.id, 1, T0, 5, a)
        .await
        .expect("a starts");
    assert_eq!(running.state, TaskState::Running);

    let b = s.acquire(5, "node-b").await.expect("acquire b");
    assert!(b > a);
    s.start_attempt_fenced(&t.id, 2, T0 + 1, 5, b)
        .await
        .expect("b takes the task over");
    expect_fenced(
        s.finish_attempt_fenced(&t.id, attempt(1), succeeded(Some("from a")), T0 + 2, a)
            .await,
        "finish under the stale epoch",
    );
    expect_fenced(
        s.start_attempt_fenced(&t.id, 3, T0 + 3, 5, a).await,
        "start under the stale epoch",
    );
    let done = s
        .finish_attempt_fenced(&t.id, attempt(2), succeeded(Some("from b")), T0 + 4, b)
        .await
        .expect("b finishes");
    assert_eq!(done.state, TaskState::Succeeded);
    let rec = s.get(&t.id).await.expect("get").expect("stored");
    assert_eq!(rec.task.output.as_deref(), Some("from b"));
    assert_eq!(rec.attempts.len(), 1, "the stale finish recorded nothing");
    assert_eq!(rec.attempts[0].number, 2);
}

/// A node whose epoch was superseded before it claimed a task is told not to run it, even
/// though the new owner has not touched the task yet; the new owner then claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_cannot_start_a_task_the_new_owner_has_not_touched() {
    let (s, _guard) = common::fresh_store().await;
    let t1 = enqueue_one(&s, new_task_in(2, "k1", T0)).await;
    let t2 = enqueue_one(&s, new_task_in(2, "k2", T0)).await;
    let a = s.acquire(2, "node-a").await.expect("acquire a");
    let b = s.acquire(2, "node-b").await.expect("acquire b");
    let batch = vec![(t1.id.clone(), 1), (t2.id.clone(), 1)];
    let out = s
        .start_attempts_fenced(2, a, &batch, T0)
        .await
        .expect("batch");
    assert_eq!(out.len(), 2);
    for r in out {
        expect_fenced(r, "claim under a superseded epoch");
    }
    let out = s
        .start_attempts_fenced(2, b, &batch, T0)
        .await
        .expect("batch");
    for r in out {
        assert_eq!(r.expect("b claims").state, TaskState::Running);
    }
    expect_fenced(
        s.finish_attempt_fenced(&t1.id, attempt(1), succeeded(None), T0, a)
            .await,
        "finish under the stale epoch",
    );
    s.finish_attempt_fenced(&t1.id, attempt(1), succeeded(None), T0, b)
        .await
        .expect("b finishes");
    // Unfenced operations keep working (admin path), and finished tasks stay finished.
    let r = s.start_attempt_fenced(&t1.id, 2, T0, 2, b).await;
    assert!(
        matches!(r, Err(kairos_core::store::StoreError::Conflict(ref m)) if !m.starts_with("fenced")),
        "a finished task conflicts, got {r:?}"
    );
}
