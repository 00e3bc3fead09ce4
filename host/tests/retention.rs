//! `tasks.retention`: finished tasks go, with their uniqueness keys, on a real node; pending
//! ones stay.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use kairos::config::Config;
use kairos::enqueue::EnqueueRequest;
use kairos::node::Node;
use kairos_core::model::{EnqueueOutcome, TaskState};
use serde_json::json;

async fn enqueue(node: &Node, req: serde_json::Value) -> EnqueueOutcome {
    let req: EnqueueRequest = serde_json::from_value(req).expect("request");
    let task = node
        .enqueuer
        .build(req, node.enqueuer.clock.now())
        .expect("valid");
    let mut out = node.enqueuer.submit(vec![task]).await.expect("durable");
    out.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_deleted_after_the_retention_and_their_keys_freed() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = Config {
        data_dir: dir.path().join("data"),
        plugins_dir: Some(kairos_runtime::TEST_GUESTS_DIR.into()),
        builtin_plugins: false,
        ..Config::default()
    };
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.tasks.retention = "3s".into();
    cfg.tasks.retention_sweep_ms = 200;
    let node = Node::start(cfg).await.expect("node");
    let mut done = Vec::new();
    for i in 0..3 {
        let out = enqueue(
            &node,
            json!({ "plugin": "hostile", "key": format!("k{i}"), "uniqueness_key": format!("u{i}"),
                    "payload": { "mode": "ok" } }),
        )
        .await;
        done.push(out.task().id.clone());
    }
    let later = enqueue(
        &node,
        json!({ "plugin": "hostile", "key": "later", "delay_ms": 3_600_000, "payload": { "mode": "ok" } }),
    )
    .await
    .task()
    .id
    .clone();

    let start = Instant::now();
    for id in &done {
        loop {
            let state = node.store.get(id).await.expect("get").map(|r| r.task.state);
            match state {
                Some(TaskState::Succeeded) => break,
                None => panic!("task {id} deleted before it was seen to succeed"),
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{id}: {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Kept for the retention (3 s), then deleted within a sweep or two.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for id in &done {
        assert!(
            node.store.get(id).await.expect("get").is_some(),
            "{id} deleted early"
        );
    }
    let start = Instant::now();
    while node.metrics.purged.load(Relaxed) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "purged {} of 3",
            node.metrics.purged.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &done {
        assert!(
            node.store.get(id).await.expect("get").is_none(),
            "{id} kept"
        );
    }
    assert!(
        node.store.get(&later).await.expect("get").is_some(),
        "a pending task went"
    );
    // The uniqueness keys are free again.
    let again = enqueue(
        &node,
        json!({ "plugin": "hostile", "key": "k0", "uniqueness_key": "u0", "payload": { "mode": "ok" } }),
    )
    .await;
    assert!(matches!(again, EnqueueOutcome::Created(_)), "{again:?}");
    node.shutdown().await;
}
