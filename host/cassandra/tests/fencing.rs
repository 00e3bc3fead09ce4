//! Partition leases and fencing against a real Cassandra (127.0.0.1:9042; run
//! `scripts/services up cassandra` first). The conformance suite covers the contract on one
//! store; these cases add what is particular to Cassandra: several stores (nodes) on one
//! keyspace, the claim batchers, and the batch claim.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use kairos_cassandra::CassandraStore;
use kairos_conformance::{T0, enqueue_all, enqueue_one, expect_fenced, new_task_in, succeeded};
use kairos_core::model::{Attempt, AttemptOutcome, TaskState};
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{StoreError, TaskStore};

fn attempt(number: u32) -> Attempt {
    Attempt {
        number,
        started_at: T0,
        ended_at: T0 + 5,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    }
}

/// A second store (another node) on the keyspace of `guard`.
async fn other_node(guard: &common::KeyspaceGuard) -> CassandraStore {
    CassandraStore::connect(common::options(&guard.keyspace))
        .await
        .expect("second store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_bumps_the_epoch_and_lease_holder_reports_it() {
    let (s, _guard) = common::fresh_store().await;
    assert_eq!(s.lease_holder(3).await.expect("holder"), None);
    assert_eq!(
        s.acquire_lease(3, "node-a").await.expect("acquire"),
        Lease {
            partition: 3,
            epoch: 1
        }
    );
    assert_eq!(
        s.lease_holder(3).await.expect("holder"),
        Some(Holder {
            epoch: 1,
            node_id: "node-a".into()
        })
    );
    assert_eq!(
        s.acquire_lease(3, "node-b").await.expect("acquire").epoch,
        2
    );
    assert_eq!(
        s.acquire_lease(3, "node-b").await.expect("acquire").epoch,
        3
    );
    assert_eq!(
        s.lease_holder(3).await.expect("holder"),
        Some(Holder {
            epoch: 3,
            node_id: "node-b".into()
        })
    );
    assert_eq!(
        s.acquire_lease(4, "node-a")
            .await
            .expect("other partition")
            .epoch,
        1
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
    let (s, guard) = common::fresh_store().await;
    let stores = [Arc::new(s), Arc::new(other_node(&guard).await)];
    let mut handles = Vec::new();
    for n in 0..8 {
        let s = stores[n % 2].clone();
        handles.push(tokio::spawn(async move {
            s.acquire_lease(0, &format!("node-{n}"))
                .await
                .expect("acquire")
                .epoch
        }));
    }
    let mut epochs = BTreeSet::new();
    for h in handles {
        epochs.insert(h.await.expect("join"));
    }
    assert_eq!(epochs, (1..=8).collect::<BTreeSet<u64>>());
    let holder = stores[0]
        .lease_holder(0)
        .await
        .expect("holder")
        .expect("held");
    assert_eq!(holder.epoch, 8);
}

/// Node A starts a task, loses the partition to node B (another store, so A's store learns
/// of it only from the database), B takes the task over: A can neither complete it nor start
/// or change the partition's other tasks; B can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_is_fenced_across_nodes() {
    let (a_store, guard) = common::fresh_store().await;
    let b_store = other_node(&guard).await;
    let t = enqueue_all(
        &a_store,
        vec![
            new_task_in(5, "k1", T0),
            new_task_in(5, "k2", T0),
            new_task_in(5, "k3", T0),
        ],
    )
    .await;
    let a = a_store.acquire_lease(5, "node-a").await.expect("acquire a");
    let running = a_store
        .start_attempt(&a, &t[0].id, 1, T0)
        .await
        .expect("a starts");
    assert_eq!(running.state, TaskState::Running);

    let b = b_store.acquire_lease(5, "node-b").await.expect("acquire b");
    assert!(b.epoch > a.epoch);
    // B takes the in-flight task over; A's end is refused (by the task's stamp: A's store has
    // not seen epoch b) and leaves no trace.
    b_store
        .start_attempt(&b, &t[0].id, 2, T0 + 1)
        .await
        .expect("b takes the task over");
    expect_fenced(
        a_store
            .finish_attempt(&a, &t[0].id, attempt(1), succeeded(Some("from a")), T0 + 2)
            .await,
        &a,
        "finish under the stale lease",
    );
    expect_fenced(
        a_store.start_attempt(&a, &t[0].id, 3, T0 + 3).await,
        &a,
        "start under the stale lease",
    );
    let done = b_store
        .finish_attempt(&b, &t[0].id, attempt(2), succeeded(Some("from b")), T0 + 4)
        .await
        .expect("b finishes");
    assert_eq!(done.state, TaskState::Succeeded);
    let rec = b_store.get(&t[0].id).await.expect("get").expect("stored");
    assert_eq!(rec.task.output.as_deref(), Some("from b"));
    assert_eq!(rec.attempts.len(), 1, "the stale finish recorded nothing");
    assert_eq!(rec.attempts[0].number, 2);

    // The operator calls read the partition's epoch and refuse.
    expect_fenced(a_store.cancel(&a, &t[2].id, T0).await, &a, "cancel under a");
    expect_fenced(
        a_store.reschedule(&a, &t[2].id, T0 + 9, T0).await,
        &a,
        "reschedule under a",
    );
    expect_fenced(a_store.unpark_key(&a, "k3", T0).await, &a, "unpark under a");
    // From then on A's store knows: a start of a task B never touched is refused at once.
    expect_fenced(
        a_store.start_attempt(&a, &t[1].id, 1, T0).await,
        &a,
        "start of an untouched task under the stale lease",
    );
    let untouched = b_store.get(&t[1].id).await.expect("get").expect("stored");
    assert_eq!(untouched.task.state, TaskState::Scheduled);

    // B may change the tasks A could not.
    b_store
        .reschedule(&b, &t[2].id, T0 + 9, T0)
        .await
        .expect("b reschedules");
    b_store.cancel(&b, &t[2].id, T0).await.expect("b cancels");
}

/// A node whose lease was superseded before it claimed a task is told not to run it, even
/// though the new holder has not touched the task yet (the claim is confirmed against
/// `partition_owners` after it was made); the new holder then claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_under_a_superseded_lease_is_not_run() {
    let (a_store, guard) = common::fresh_store().await;
    let b_store = other_node(&guard).await;
    let t = enqueue_one(&a_store, new_task_in(2, "k", T0)).await;
    let a = a_store.acquire_lease(2, "node-a").await.expect("acquire a");
    let b = b_store.acquire_lease(2, "node-b").await.expect("acquire b");
    expect_fenced(
        a_store.start_attempt(&a, &t.id, 1, T0).await,
        &a,
        "claim under a superseded lease",
    );
    match a_store.start_attempt(&a, &t.id, 1, T0).await {
        Err(StoreError::Fenced { current, .. }) => {
            assert_eq!(current, Some(b.epoch), "a's store now knows the new epoch")
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    // The overridden claim is the same attempt to the new holder (the claim is idempotent).
    let claimed = b_store
        .start_attempt(&b, &t.id, 1, T0 + 1)
        .await
        .expect("b claims");
    assert_eq!((claimed.state, claimed.attempts), (TaskState::Running, 1));
    b_store
        .finish_attempt(&b, &t.id, attempt(1), succeeded(None), T0 + 2)
        .await
        .expect("b finishes");
}

/// The batch claim on one store: under a superseded lease nothing is claimed; under the
/// current one every task is; a finished task conflicts (it is not fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_claims_are_fenced_as_a_whole() {
    let (s, _guard) = common::fresh_store().await;
    let t1 = enqueue_one(&s, new_task_in(2, "k1", T0)).await;
    let t2 = enqueue_one(&s, new_task_in(2, "k2", T0)).await;
    let a = s.acquire_lease(2, "node-a").await.expect("acquire a");
    let b = s.acquire_lease(2, "node-b").await.expect("acquire b");
    let batch = vec![(t1.id.clone(), 1), (t2.id.clone(), 1)];
    let out = s
        .start_attempts_fenced(2, a.epoch, &batch, T0)
        .await
        .expect("batch");
    assert_eq!(out.len(), 2);
    for r in out {
        expect_fenced(r, &a, "claim under a superseded lease");
    }
    for id in [&t1.id, &t2.id] {
        let t = s.get(id).await.expect("get").expect("stored").task;
        assert_eq!(
            (t.state, t.attempts),
            (TaskState::Scheduled, 0),
            "untouched"
        );
    }
    let out = s
        .start_attempts_fenced(2, b.epoch, &batch, T0)
        .await
        .expect("batch");
    for r in out {
        assert_eq!(r.expect("b claims").state, TaskState::Running);
    }
    expect_fenced(
        s.finish_attempt(&a, &t1.id, attempt(1), succeeded(None), T0)
            .await,
        &a,
        "finish under the stale lease",
    );
    s.finish_attempt(&b, &t1.id, attempt(1), succeeded(None), T0)
        .await
        .expect("b finishes");
    let r = s
        .start_attempts_fenced(2, b.epoch, &[(t1.id.clone(), 2)], T0)
        .await;
    assert!(
        matches!(r.as_deref(), Ok([Err(StoreError::Conflict(_))])),
        "a finished task conflicts, got {r:?}"
    );
}

/// Many concurrent starts of several partitions go through the claim batchers, one per
/// lease; a batcher is let go once a newer epoch of its partition is seen, and ends when
/// it idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_are_batched_per_lease() {
    const PER_PARTITION: usize = 300;
    let (s, _guard) = common::fresh_store().await;
    let s = Arc::new(s);
    let mut leases = Vec::new();
    let mut tasks = Vec::new();
    for p in 0..3 {
        leases.push(s.acquire_lease(p, "node-a").await.expect("acquire"));
        let batch = (0..PER_PARTITION)
            .map(|i| new_task_in(p, &format!("k{i}"), T0))
            .collect();
        tasks.extend(
            enqueue_all(&*s, batch)
                .await
                .into_iter()
                .map(|t| (t.partition, t.id)),
        );
    }
    let mut handles = Vec::new();
    for (p, id) in tasks.clone() {
        let (s, lease) = (s.clone(), leases[p as usize]);
        handles.push(tokio::spawn(async move {
            s.start_attempt(&lease, &id, 1, T0).await
        }));
    }
    for h in handles {
        let t = h.await.expect("join").expect("claimed");
        assert_eq!((t.state, t.attempts), (TaskState::Running, 1));
    }
    assert_eq!(s.claim_batchers(), 3, "one batcher per lease");

    // Partition 0 moves on: its batcher goes; the stale lease is refused at once.
    let newer = s.acquire_lease(0, "node-b").await.expect("acquire");
    assert_eq!(s.claim_batchers(), 2);
    let (_, id0) = &tasks[0];
    expect_fenced(
        s.start_attempt(&leases[0], id0, 1, T0).await,
        &leases[0],
        "start under the stale lease",
    );
    assert_eq!(s.claim_batchers(), 2, "a stale lease starts no batcher");
    s.start_attempt(&newer, id0, 2, T0).await.expect("takeover");
    assert_eq!(s.claim_batchers(), 3);

    tokio::time::sleep(kairos_cassandra::fencing::BATCHER_IDLE + std::time::Duration::from_secs(1))
        .await;
    assert_eq!(s.claim_batchers(), 0, "idle batchers end");
    // A new start after that gets a new batcher.
    let (_, id1) = &tasks[1];
    s.start_attempt(&newer, id1, 1, T0 + 1)
        .await
        .expect("start after idling");
}

/// A store remembers the rows its window read and its starts wrote, and begins the next
/// change of a task from them (without reading the row again). When another store (node) has
/// changed the task since, the compare-and-set refuses the remembered row and the change is
/// judged on the row as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_rows_are_not_trusted_after_another_node_changed_the_task() {
    let (a_store, guard) = common::fresh_store().await;
    let b_store = other_node(&guard).await;
    let t = enqueue_all(
        &a_store,
        vec![
            new_task_in(6, "k1", T0),
            new_task_in(6, "k2", T0),
            new_task_in(6, "k3", T0),
        ],
    )
    .await;
    let lease = a_store.acquire_lease(6, "node-a").await.expect("acquire");
    // A's window reads (and remembers) all three rows.
    assert_eq!(kairos_conformance::window(&a_store, 6).await.len(), 3);

    // Operators reach the tasks through B meanwhile (under the same, current lease).
    let moved = b_store
        .reschedule(&lease, &t[0].id, T0 - 7, T0)
        .await
        .expect("b reschedules");
    assert_eq!(moved.due_at, T0 - 7);
    b_store
        .cancel(&lease, &t[1].id, T0)
        .await
        .expect("b cancels");

    // A's start of the rescheduled task starts it as it is now, not as A read it.
    let started = a_store
        .start_attempt(&lease, &t[0].id, 1, T0 + 1)
        .await
        .expect("a starts the rescheduled task");
    assert_eq!(
        (started.state, started.due_at),
        (TaskState::Running, T0 - 7)
    );
    // A's start of the cancelled task is refused, though A read it as scheduled.
    match a_store.start_attempt(&lease, &t[1].id, 1, T0 + 1).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected Conflict for a cancelled task, got {other:?}"),
    }
    assert_eq!(
        b_store
            .get(&t[1].id)
            .await
            .expect("get")
            .expect("stored")
            .task
            .state,
        TaskState::Cancelled
    );

    // A's start wrote (and remembered) t[2]'s row; B finishes that attempt, so A's remembered
    // row is stale: A's own finish of it is refused as a conflict, and B's end stands.
    a_store
        .start_attempt(&lease, &t[2].id, 1, T0 + 2)
        .await
        .expect("a starts");
    b_store
        .finish_attempt(
            &lease,
            &t[2].id,
            attempt(1),
            succeeded(Some("from b")),
            T0 + 3,
        )
        .await
        .expect("b finishes");
    match a_store
        .finish_attempt(
            &lease,
            &t[2].id,
            attempt(1),
            succeeded(Some("from a")),
            T0 + 4,
        )
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected Conflict for a finished task, got {other:?}"),
    }
    let rec = a_store.get(&t[2].id).await.expect("get").expect("stored");
    assert_eq!(rec.task.output.as_deref(), Some("from b"));
    assert_eq!(rec.attempts.len(), 1);
}

/// Two inserts of one task id (an enqueue replayed by two nodes at once) both leave the row at
/// `rev` 0, with different sequence numbers. A row remembered from the first insert is not
/// taken for the second: the compare-and-set checks the sequence number too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_row_is_not_taken_for_a_second_insert_of_the_same_id() {
    let (store, guard) = common::fresh_store().await;
    let t = enqueue_one(&store, new_task_in(7, "k", T0)).await;
    let lease = store.acquire_lease(7, "node-a").await.expect("acquire");
    // The window reads (and remembers) the row of the first insert.
    assert_eq!(kairos_conformance::window(&store, 7).await.len(), 1);

    // The second insert's row: the same task, `rev` 0, another sequence number.
    let second_seq = t.seq + 1_000_000;
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(common::NODE)
        .build()
        .await
        .expect("session");
    let ks = &guard.keyspace;
    let (partition, home) = session
        .query_unpaged(
            format!("SELECT partition, home FROM {ks}.task_homes WHERE id = ?"),
            (t.id.as_str(),),
        )
        .await
        .expect("home")
        .into_rows_result()
        .expect("rows")
        .single_row::<(i64, i64)>()
        .expect("one home");
    session
        .query_unpaged(
            format!(
                "UPDATE {ks}.task_rows SET seq = ? WHERE partition = ? AND home = ? AND id = ?"
            ),
            (
                i64::try_from(second_seq).expect("seq"),
                partition,
                home,
                t.id.as_str(),
            ),
        )
        .await
        .expect("second insert");

    let started = store
        .start_attempt(&lease, &t.id, 1, T0 + 1)
        .await
        .expect("start");
    assert_eq!(
        (started.state, started.seq),
        (TaskState::Running, second_seq),
        "the start began from the row as it is, not from the remembered one"
    );
}

/// Node A claims a task and then gives its start back, after node B (another store: A's
/// store learns of it only from the database) took the partition but before B touched the
/// task. The give-back is fenced by the owner read it makes first, so B, which may have loaded
/// the task as running, finds it as it left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_after_the_partition_moved_is_fenced() {
    let (a_store, guard) = common::fresh_store().await;
    let b_store = other_node(&guard).await;
    let t = enqueue_one(&a_store, new_task_in(6, "k1", T0)).await;
    let a = a_store.acquire_lease(6, "node-a").await.expect("acquire a");
    a_store
        .start_attempt(&a, &t.id, 1, T0)
        .await
        .expect("a starts");
    let b = b_store.acquire_lease(6, "node-b").await.expect("acquire b");
    assert!(b.epoch > a.epoch);
    expect_fenced(
        a_store
            .unclaim_attempt(&a, &t.id, 1, TaskState::Scheduled, T0)
            .await,
        &a,
        "give back under the stale lease",
    );
    let stored = b_store.get(&t.id).await.expect("get").expect("stored").task;
    assert_eq!((stored.state, stored.attempts), (TaskState::Running, 1));
    // B may give back nothing of A's either: the row says A's lease started it.
    expect_fenced(
        b_store
            .unclaim_attempt(&b, &t.id, 1, TaskState::Scheduled, T0)
            .await,
        &b,
        "give back another lease's start",
    );
}
