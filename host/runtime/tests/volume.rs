//! Volume caps: what a plugin writes to its log and to kv in one attempt is bounded before
//! it reaches the host's log or the store.

mod common;

use std::sync::Arc;

use common::*;
use kairos_runtime::{LimitsOverride, LogSource, MemoryServices, RunOutcome, Runtime};
use serde_json::json;

/// Bytes of the captured host log on lines mentioning `needle`.
fn host_log_bytes(needle: &str) -> usize {
    let log = captured().lock().expect("lock");
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| l.len() + 1)
        .sum()
}

fn hostile_with(limits: LimitsOverride) -> (Arc<Runtime>, tempfile::TempDir) {
    let (rt, _, dir) = hostile_kv(limits);
    (rt, dir)
}

fn hostile_kv(limits: LimitsOverride) -> (Arc<Runtime>, Arc<MemoryServices>, tempfile::TempDir) {
    captured();
    let mut cfg = config();
    cfg.grants.insert("hostile".into(), grant(&[], limits));
    let (rt, services) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    assert!(rt.load_dir(dir.path()).errors.is_empty());
    (rt, services, dir)
}

fn retryable(report: &kairos_runtime::RunReport) -> &str {
    match &report.outcome {
        RunOutcome::Retryable { message, .. } => message,
        other => panic!("expected a retryable error, got {other}"),
    }
}

/// Bytes of values the plugin holds in kv.
fn stored_bytes(services: &MemoryServices) -> usize {
    services
        .keys("hostile")
        .iter()
        .filter_map(|k| services.get("hostile", k))
        .map(|v| v.len())
        .sum()
}

/// The probe: a plugin logging 1 MiB lines wrote 280 MB to the daemon's stderr in 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_log_lines_is_capped_before_the_host_log() {
    let (rt, _dir) = hostile_with(LimitsOverride::default());
    let req = task(
        "hostile",
        json!({"mode": "log_flood", "lines": 200, "line_size": 1_048_576}),
    );
    let id = req.task.id.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), "logged 200");

    let plugin_lines: Vec<_> = report
        .logs
        .iter()
        .filter(|l| l.source == LogSource::Plugin)
        .collect();
    // 64 KiB of max_log_bytes hold 7 lines of 8 KiB (plus markers).
    assert_eq!(plugin_lines.len(), 7, "{}", plugin_lines.len());
    for l in &plugin_lines {
        assert!(l.message.len() < 8 * 1024 + 100, "{}", l.message.len());
        assert!(
            l.message
                .ends_with("… [line of 1048578 bytes truncated to max_log_line_bytes (8192)]"),
            "{}",
            &l.message[l.message.len().saturating_sub(80)..]
        );
    }
    let last = report.logs.last().expect("a closing line");
    assert_eq!(
        last.message,
        "193 log line(s) dropped: the attempt's log reached max_log_bytes (65536 bytes)"
    );
    let written = host_log_bytes(&id);
    assert!(
        written < 100 * 1024,
        "{written} bytes reached the host's log for 200 MiB logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_small_log_lines_is_capped_by_count() {
    let (rt, _dir) = hostile_with(LimitsOverride {
        max_host_calls: Some(10_000),
        max_log_lines: Some(100),
        ..Default::default()
    });
    let req = task(
        "hostile",
        json!({"mode": "log_flood", "lines": 5000, "line_size": 10}),
    );
    let id = req.task.id.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), "logged 5000");
    assert_eq!(report.logs.len(), 101);
    assert_eq!(
        report.logs[100].message,
        "4900 log line(s) dropped: the attempt's log reached max_log_lines (100)"
    );
    let host_lines = {
        let log = captured().lock().expect("lock");
        String::from_utf8_lossy(&log)
            .lines()
            .filter(|l| l.contains(id.as_str()))
            .count()
    };
    assert_eq!(host_lines, 101, "100 lines and one note about the rest");
}

/// The probe: kv accepted ~700 MB from one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_of_one_attempt_are_capped() {
    let (rt, services, _dir) = hostile_kv(LimitsOverride::default());
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_flood", "value_size": 60_000}),
        ))
        .await;
    let message = retryable(&report);
    // 17 sets of 18-byte keys and 60,000-byte values fit in 1 MiB; the 18th does not.
    assert!(
        message.starts_with("kv_flood: set #17 refused: ")
            && message.ends_with(
                "kv set refused: this attempt has written 1020306 bytes to kv; 60018 more \
                 would exceed kv_write_max_bytes (1048576)"
            ),
        "{message}"
    );
    assert_eq!(services.keys("hostile").len(), 17);
    assert_eq!(stored_bytes(&services), 17 * 60_000);
    assert!(
        logs_text(&report).contains("[host warn] kv set refused: this attempt has written"),
        "{}",
        logs_text(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_value_over_the_cap_is_refused() {
    let (rt, services, _dir) = hostile_kv(LimitsOverride::default());
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_flood", "value_size": 100_000}),
        ))
        .await;
    let message = retryable(&report);
    assert!(
        message.starts_with("kv_flood: set #0 refused: ")
            && message.ends_with(
                "kv set refused: value of 100000 bytes exceeds kv_value_max_bytes (65536)"
            ),
        "{message}"
    );
    assert!(services.keys("hostile").is_empty());

    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "value_size": 65_536}),
        ))
        .await;
    assert_eq!(output(&report), "stored", "a value at the cap is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_key_over_the_cap_is_refused() {
    let (rt, services, _dir) = hostile_kv(LimitsOverride {
        kv_key_max_bytes: Some(64),
        ..Default::default()
    });
    let key = "k".repeat(65);
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "key": key, "value_size": 1}),
        ))
        .await;
    let message = retryable(&report);
    assert!(
        message.ends_with("kv set refused: key of 65 bytes exceeds kv_key_max_bytes (64)"),
        "{message}"
    );
    assert!(services.keys("hostile").is_empty());
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "key": "k".repeat(64)}),
        ))
        .await;
    assert_eq!(output(&report), "stored");
}

/// The probe's kv flood, across attempts: a plugin's kv total is capped, whatever the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_kv_total_is_capped_across_attempts() {
    let (rt, services, _dir) = hostile_kv(LimitsOverride {
        kv_total_max_bytes: Some(10_000),
        ..LimitsOverride::default()
    });
    let first = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "key": "k1", "value_size": 6_000}),
        ))
        .await;
    assert!(
        matches!(first.outcome, RunOutcome::Success { .. }),
        "{}",
        first.outcome
    );
    // A later attempt (of another task) may not add what would pass the total.
    let second = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "key": "k2", "value_size": 6_000}),
        ))
        .await;
    let message = retryable(&second);
    assert!(
        message.ends_with(
            "kv set refused: plugin `hostile` keeps 6002 bytes in kv; 6002 more would exceed \
             kv_total_max_bytes (10000)"
        ),
        "{message}"
    );
    assert_eq!(services.keys("hostile"), ["k1"]);
    // Within the total, it may.
    let third = rt
        .run(task(
            "hostile",
            json!({"mode": "kv_set", "key": "k3", "value_size": 3_000}),
        ))
        .await;
    assert!(
        matches!(third.outcome, RunOutcome::Success { .. }),
        "{}",
        third.outcome
    );
}
