//! `reuse_instances = N`: an instance serves up to N successful tasks of one ordering key and
//! nothing of another key; it is dropped after a failure, after N tasks, on a new version of
//! its plugin, and when attempts need the memory it holds. Without the setting every task
//! gets a fresh instance.

mod common;

use std::sync::Arc;

use common::*;
use kairos_runtime::{LimitsOverride, RunOutcome, RunRequest, Runtime};
use serde_json::{Value, json};

/// The hostile guest loaded with `reuse_instances` (and a memory budget of `budget_mb`, each
/// instance taking 16 MiB of it).
fn counting(reuse: u32, budget_mb: u64) -> (Arc<Runtime>, tempfile::TempDir) {
    let mut cfg = config();
    cfg.memory_budget_mb = budget_mb;
    let mut g = grant(
        &[],
        LimitsOverride {
            memory_mb: Some(16),
            cpu_ms: Some(300),
            ..Default::default()
        },
    );
    g.reuse_instances = reuse;
    cfg.grants.insert("hostile".into(), g);
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["hostile"], "{:?}", summary.errors);
    (rt, dir)
}

fn on_key(key: &str, payload: Value) -> RunRequest {
    let mut req = task("hostile", payload);
    req.task.key = key.to_string();
    req
}

/// What the instance that ran this task had served: (`count`, keys).
async fn count(rt: &Runtime, key: &str) -> (u64, Vec<String>) {
    let report = rt.run(on_key(key, json!({"mode": "count"}))).await;
    let v: Value = serde_json::from_str(&output(&report)).expect("count output");
    let keys = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    (v["count"].as_u64().expect("count"), keys)
}

#[tokio::test]
async fn without_reuse_every_task_gets_a_fresh_instance() {
    let (rt, _dir) = counting(0, 2048);
    for _ in 0..3 {
        assert_eq!(count(&rt, "a").await, (1, vec!["a".to_string()]));
    }
    assert_eq!(rt.idle_instances(), 0);
}

#[tokio::test]
async fn an_instance_serves_n_tasks_of_its_key_and_none_of_another() {
    let (rt, _dir) = counting(3, 2048);
    // Interleaved keys: each key's tasks see only that key's state.
    let mut seen = Vec::new();
    for key in ["a", "b", "a", "b", "a", "b", "a"] {
        let (n, keys) = count(&rt, key).await;
        assert!(
            keys.iter().all(|k| k == key),
            "an instance of key {key} had served {keys:?}"
        );
        seen.push((key, n));
    }
    // Three tasks per instance, then a fresh one.
    assert_eq!(
        seen,
        [
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("b", 2),
            ("a", 3),
            ("b", 3),
            ("a", 1)
        ]
    );
    // The fourth "a" instance is idle; both third-task instances were dropped.
    assert_eq!(rt.idle_instances(), 1);
}

#[tokio::test]
async fn a_failed_task_drops_its_instance() {
    let (rt, _dir) = counting(10, 2048);
    assert_eq!(count(&rt, "k").await.0, 1);
    assert_eq!(count(&rt, "k").await.0, 2);
    let failed = rt.run(on_key("k", json!({"mode": "fail"}))).await;
    assert!(
        matches!(failed.outcome, RunOutcome::Retryable { .. }),
        "{}",
        failed.outcome
    );
    assert_eq!(
        count(&rt, "k").await.0,
        1,
        "a fresh instance after the failure"
    );
    let trapped = rt.run(on_key("k", json!({"mode": "trap"}))).await;
    assert!(
        matches!(trapped.outcome, RunOutcome::Failed { .. }),
        "{}",
        trapped.outcome
    );
    assert_eq!(
        count(&rt, "k").await.0,
        1,
        "a fresh instance after the trap"
    );
}

#[tokio::test]
async fn a_new_version_of_the_plugin_starts_from_a_fresh_instance() {
    let (rt, dir) = counting(10, 2048);
    assert_eq!(count(&rt, "k").await.0, 1);
    assert_eq!(count(&rt, "k").await.0, 2);
    std::fs::write(
        dir.path().join("hostile.wasm"),
        variant(&guest("hostile"), "reuse-v2"),
    )
    .expect("write v2");
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["hostile"], "{:?}", summary.errors);
    assert_eq!(count(&rt, "k").await.0, 1);
}

#[tokio::test]
async fn idle_instances_give_their_memory_back_to_attempts_that_need_it() {
    // Room for three 16 MiB instances.
    let (rt, _dir) = counting(10, 48);
    assert_eq!(count(&rt, "a").await.0, 1);
    assert_eq!(count(&rt, "b").await.0, 1);
    assert_eq!(rt.idle_instances(), 2, "a and b kept: the budget had room");
    // "c" spins (until its 300 ms CPU budget) on the last free 16 MiB; "d" then needs
    // memory: the least recently used idle instance ("a") gives its share back instead of
    // "d" waiting for it.
    let spinning = std::cell::Cell::new(true);
    let spin = async {
        let report = rt.run(on_key("c", json!({"mode": "loop"}))).await;
        spinning.set(false);
        report
    };
    let then_d = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let d = count(&rt, "d").await;
        (d, spinning.get())
    };
    let (spun, (d, c_still_spinning)) = tokio::join!(spin, then_d);
    assert!(
        matches!(spun.outcome, RunOutcome::Failed { .. }),
        "{}",
        spun.outcome
    );
    assert_eq!(d.0, 1);
    assert!(
        c_still_spinning,
        "d ran only after c ended: it waited for memory an idle instance held"
    );
    assert_eq!(count(&rt, "b").await.0, 2, "b's instance was kept");
    assert_eq!(count(&rt, "a").await.0, 1, "a's instance was evicted");
}

#[tokio::test]
async fn an_instance_is_not_kept_when_the_budget_has_no_room_for_another_attempt() {
    // Room for one 16 MiB instance: keeping it idle would leave other keys none.
    let (rt, _dir) = counting(10, 16);
    assert_eq!(count(&rt, "a").await.0, 1);
    assert_eq!(rt.idle_instances(), 0);
    assert_eq!(count(&rt, "a").await.0, 1);
}
