//! Follow-up generations: a plugin that schedules copies of itself stops at
//! `tasks.max_follow_up_depth` (issue 9 saw one enqueue of such a plugin make 22,621 tasks in
//! 20 s). A real node with the `hostile` test guest's `fork` mode.

use std::time::{Duration, Instant};

use kairos::config::Config;
use kairos::enqueue::EnqueueRequest;
use kairos::node::Node;
use kairos_core::model::{ListFilter, Task, TaskState};
use serde_json::json;

async fn in_state(node: &Node, state: TaskState) -> Vec<Task> {
    node.store
        .list(&ListFilter {
            key: None,
            state: Some(state),
            limit: 1_000,
            after: None,
        })
        .await
        .expect("list")
}

fn config(data: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: data.to_path_buf(),
        plugins_dir: Some(kairos_runtime::TEST_GUESTS_DIR.into()),
        builtin_plugins: false,
        ..Config::default()
    };
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_scheduling_plugin_stops_at_the_follow_up_depth() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(&dir.path().join("data"));
    cfg.tasks.max_follow_up_depth = 3;
    let node = Node::start(cfg).await.expect("node");
    let req: EnqueueRequest = serde_json::from_value(json!({
        "plugin": "hostile", "key": "f", "payload": { "mode": "fork", "fanout": 2 }
    }))
    .expect("request");
    let now = node.enqueuer.clock.now();
    let task = node.enqueuer.build(req, now).expect("valid");
    node.enqueuer.submit(vec![task]).await.expect("durable");

    // Generations 0, 1 and 2 fork (1 + 2 + 4 succeed); the 8 of generation 3 are refused
    // their follow-ups and die.
    let start = Instant::now();
    loop {
        let ok = in_state(&node, TaskState::Succeeded).await.len();
        let dead = in_state(&node, TaskState::Dead).await.len();
        if ok + dead >= 15 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{ok} succeeded, {dead} dead after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = in_state(&node, TaskState::Succeeded).await;
    let dead = in_state(&node, TaskState::Dead).await;
    let mut gens: Vec<u32> = ok.iter().map(|t| t.generation).collect();
    gens.sort_unstable();
    assert_eq!(gens, [0, 1, 1, 2, 2, 2, 2], "the forks that succeeded");
    assert_eq!(dead.len(), 8, "generation 3: {dead:?}");
    for t in &dead {
        assert_eq!(t.generation, 3);
        let error = t.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("follow-up depth limit"), "{error}");
    }
    for state in [
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Retrying,
    ] {
        assert!(in_state(&node, state).await.is_empty(), "{state:?} left");
    }
    node.shutdown().await;
}

/// The follow-up path ties the runtime to the enqueuer, which holds the runtime: a node that
/// stopped once kept its store (and the database file's lock) through that cycle, so a node
/// started again in the same process could not open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_releases_its_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let node = Node::start(config(&data)).await.expect("node");
    let req: EnqueueRequest = serde_json::from_value(json!({
        "plugin": "noop", "key": "r", "payload": {}
    }))
    .expect("request");
    let task = node
        .enqueuer
        .build(req, node.enqueuer.clock.now())
        .expect("valid");
    let id = task.id.clone();
    node.enqueuer.submit(vec![task]).await.expect("durable");
    node.shutdown().await;

    let again = Node::start(config(&data))
        .await
        .expect("the same data directory opens again after shutdown");
    let stored = again.store.get(&id).await.expect("get");
    assert!(stored.is_some(), "the task enqueued before the restart");
    again.shutdown().await;
}
