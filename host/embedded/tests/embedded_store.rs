//! Embedded-store specific tests: durability across reopen, group commit, corrupt data,
//! all-or-nothing operations.

use std::path::Path;
use std::sync::Arc;

use kairos_conformance::{
    T0, dead, enqueue_all, enqueue_one, held, lease_for, new_task, parking, retry, run_attempt,
    succeeded, window, with_ukey,
};
use kairos_core::model::{EnqueueOutcome, ListFilter, OrderPos, Schedule, TaskState};
use kairos_core::store::{StoreError, TaskStore};
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};

fn open(path: &Path) -> EmbeddedStore {
    EmbeddedStore::open(path, EmbeddedOptions::default()).expect("open embedded store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen_and_seq_continues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");

    let store = open(&path);
    let t = enqueue_all(
        &store,
        vec![
            with_ukey(new_task("k", T0), "u1"),
            new_task("k", T0 + 10),
            parking(new_task("p", T0 + 20)),
            new_task("done", T0 + 30),
        ],
    )
    .await;
    run_attempt(&store, &t[0].id, retry(T0 + 500, "flaky")).await;
    store
        .start_attempt(&lease_for(&store, &t[1].id).await, &t[1].id, 1, T0 + 1)
        .await
        .expect("start");
    run_attempt(&store, &t[2].id, dead("broken")).await;
    run_attempt(&store, &t[3].id, succeeded(Some("out"))).await;
    store.set_key_paused("k", true).await.expect("pause");
    let sched = Schedule {
        name: "nightly".into(),
        cron: "0 3 * * *".into(),
        plugin: "chores".into(),
        key: "nightly".into(),
        payload: "{}".into(),
        timezone: None,
        last_fired: Some(T0),
        created_at: T0,
    };
    store
        .put_schedule(sched.clone())
        .await
        .expect("put schedule");
    store
        .kv_set("notify", "cursor", b"42".to_vec(), T0)
        .await
        .expect("kv");

    let mut records = Vec::new();
    for task in &t {
        records.push(store.get(&task.id).await.expect("get").expect("stored"));
    }
    let before_window = window(&store, 0).await;
    let before_list = store.list(&ListFilter::default()).await.expect("list");
    let max_seq = t.iter().map(|t| t.seq).max().expect("tasks");
    drop(store);

    // Reopening right after the drop works: the writer released the file.
    let store = open(&path);
    for rec in &records {
        let again = store
            .get(&rec.task.id)
            .await
            .expect("get")
            .expect("still stored");
        assert_eq!(&again, rec);
    }
    assert_eq!(records[0].attempts.len(), 1);
    assert_eq!(records[3].task.output.as_deref(), Some("out"));
    assert_eq!(window(&store, 0).await, before_window);
    assert_eq!(
        store.list(&ListFilter::default()).await.expect("list"),
        before_list
    );
    assert_eq!(store.paused_keys().await.expect("paused"), vec!["k"]);
    assert_eq!(
        store.get_schedule("nightly").await.expect("get"),
        Some(sched)
    );
    assert_eq!(
        store.kv_get("notify", "cursor").await.expect("kv"),
        Some(b"42".to_vec())
    );

    // Uniqueness survives, and new tasks continue the sequence.
    let dup = store
        .enqueue(vec![with_ukey(new_task("k", T0), "u1")])
        .await
        .expect("enqueue");
    assert!(matches!(&dup[0], EnqueueOutcome::Duplicate(d) if d.id == t[0].id));
    let fresh = enqueue_one(&store, new_task("k", T0)).await;
    assert!(fresh.seq > max_seq, "seq {} after {max_seq}", fresh.seq);
    drop(store);

    let store = open(&path);
    let fresher = enqueue_one(&store, new_task("k", T0)).await;
    assert!(fresher.seq > fresh.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let _store = open(&path);
    let second = EmbeddedStore::open(&path, EmbeddedOptions::default());
    assert!(
        second.is_err(),
        "the directory is locked by the first store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir.path().join("store")));
    let tasks: Vec<_> = (0..500).map(|i| new_task(&format!("k{i}"), T0)).collect();
    let t = enqueue_all(&*store, tasks).await;
    let lease = held(&*store, 0).await;
    let before = store.commit_stats();
    let mut handles = Vec::new();
    for task in t {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .start_attempt(&lease, &task.id, 1, T0)
                .await
                .expect("start");
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    let after = store.commit_stats();
    assert_eq!(after.ops - before.ops, 500);
    assert!(
        after.commits - before.commits < 500,
        "500 concurrent writes took {} commits",
        after.commits - before.commits
    );
    // The longest commit is the longest of all: it covers at least the average one, and the
    // slow ones are some of them.
    let average = (after.apply_micros + after.commit_micros) / after.commits.max(1);
    assert!(after.max_commit_micros > 0 && after.max_commit_micros >= average);
    assert!(after.slow_commits <= after.commits);
    assert!(
        window(&*store, 0)
            .await
            .iter()
            .all(|t| t.state == TaskState::Running)
    );
    // The counts of the operations sharing a commit add up.
    let counts = store.state_counts().await.expect("counts");
    assert_eq!((counts.running, counts.total()), (500, 500), "{counts:?}");
}

/// Writes raw records into a store file of the earlier redb layout.
fn plant_corrupt_task(path: &Path, id: &str, ukey: &str) {
    const TASKS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("tasks");
    const UKEYS: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("ukeys");
    const PENDING: redb::TableDefinition<(u32, i64, u64), &str> =
        redb::TableDefinition::new("pending");
    let db = redb::Database::create(path).expect("open raw");
    let txn = db.begin_write().expect("write txn");
    {
        let mut tasks = txn.open_table(TASKS).expect("tasks");
        tasks.insert(id, &[1u8, 0xff, 0xff][..]).expect("insert");
        let mut ukeys = txn.open_table(UKEYS).expect("ukeys");
        ukeys.insert(ukey, id).expect("insert");
        let mut pending = txn.open_table(PENDING).expect("pending");
        pending.insert((5, T0, 1_000_000), id).expect("insert");
    }
    txn.commit().expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_reported_and_operations_stay_all_or_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Planted in a store file of the earlier (redb) layout, which the open migrates: the
    // record that does not decode is carried over as it is.
    let legacy = dir.path().join("kairos.redb");
    plant_corrupt_task(&legacy, "bad", "u-bad");
    let store = Arc::new(
        EmbeddedStore::open_migrating(
            &dir.path().join("store"),
            &legacy,
            EmbeddedOptions::default(),
        )
        .expect("open and migrate"),
    );

    assert!(matches!(
        store.get("bad").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.load_window(5, OrderPos::MIN, i64::MAX, 10).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.cancel(&held(&*store, 5).await, "bad", T0).await,
        Err(StoreError::Corrupt(_))
    ));

    // An enqueue that stores one task and then trips over the corrupt one fails as a whole,
    // while concurrent writes (possibly in the same group commit) go through.
    let first = new_task("k", T0);
    let mut good = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        good.push(tokio::spawn(async move {
            enqueue_one(&*store, new_task(&format!("g{i}"), T0)).await
        }));
    }
    let bad = store
        .enqueue(vec![first.clone(), with_ukey(new_task("k", T0), "u-bad")])
        .await;
    assert!(matches!(bad, Err(StoreError::Corrupt(_))), "{bad:?}");
    assert!(
        store.get(&first.id).await.expect("get").is_none(),
        "the failed enqueue left nothing behind"
    );
    // Nor for the writer: a start of it finds no task.
    let lease = held(&*store, first.partition).await;
    let start = store.start_attempt(&lease, &first.id, 1, T0).await;
    assert!(matches!(start, Err(StoreError::NotFound(_))), "{start:?}");
    for g in good {
        let t = g.await.expect("join");
        assert_eq!(
            store.get(&t.id).await.expect("get").map(|r| r.task),
            Some(t)
        );
    }
    let later = enqueue_one(&*store, new_task("k", T0)).await;
    assert_eq!(
        store.get(&later.id).await.expect("get").map(|r| r.task),
        Some(later)
    );
    // The failed enqueue counted nothing (the planted record was never counted either).
    let counts = store.state_counts().await.expect("counts");
    assert_eq!((counts.scheduled, counts.total()), (21, 21), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    drop(open(&path));
    {
        // The format marker as a later, incompatible version would leave it.
        let db = fjall::SingleWriterTxDatabase::builder(&path)
            .open()
            .expect("open raw");
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("meta");
        meta.insert("format", 99u64.to_be_bytes()).expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    match EmbeddedStore::open(&path, EmbeddedOptions::default()) {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_store_file_of_another_format_is_refused_and_kept() {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let dir = tempfile::tempdir().expect("temp dir");
    let legacy = dir.path().join("kairos.redb");
    {
        let db = redb::Database::create(&legacy).expect("open raw");
        let txn = db.begin_write().expect("write txn");
        txn.open_table(META)
            .expect("meta")
            .insert("format", 99)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let path = dir.path().join("store");
    match EmbeddedStore::open_migrating(&path, &legacy, EmbeddedOptions::default()) {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(legacy.is_file(), "the old file is left where it was");
    assert!(!path.exists(), "no store was put in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_path_that_is_a_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kairos.redb");
    std::fs::write(&path, b"not a directory").expect("write");
    match EmbeddedStore::open(&path, EmbeddedOptions::default()) {
        Err(StoreError::Other(msg)) => assert!(msg.contains("is a file"), "{msg}"),
        other => panic!("expected a clear error, got {other:?}"),
    }
}
