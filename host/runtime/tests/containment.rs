//! Hostile guests: every way of misbehaving ends as a clear failed attempt, and the
//! runtime keeps serving.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kairos_runtime::{FailureKind, LimitsOverride, RunOutcome, Runtime};
use serde_json::{Value, json};

fn hostile_with(limits: LimitsOverride, hosts: &[&str]) -> (Arc<Runtime>, tempfile::TempDir) {
    let mut cfg = config();
    cfg.grants.insert("hostile".into(), grant(hosts, limits));
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["hostile"], "{:?}", summary.errors);
    (rt, dir)
}

fn hostile() -> (Arc<Runtime>, tempfile::TempDir) {
    hostile_with(
        LimitsOverride {
            cpu_ms: Some(300),
            memory_mb: Some(16),
            ..Default::default()
        },
        &[],
    )
}

async fn still_serves(rt: &Runtime) {
    let report = rt.run(task("hostile", json!({"mode": "ok"}))).await;
    assert_eq!(output(&report), "ok");
}

fn failed(outcome: &RunOutcome) -> (FailureKind, &str) {
    match outcome {
        RunOutcome::Failed { kind, message } => (*kind, message.as_str()),
        other => panic!("expected a failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_cpu_budget() {
    let (rt, _dir) = hostile();
    let start = Instant::now();
    let report = rt.run(task("hostile", json!({"mode": "loop"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::CpuLimit, "{message}");
    assert_eq!(
        message,
        "plugin used its CPU budget of 300 ms (epoch interrupt)"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_wall_clock_timeout() {
    let (rt, _dir) = hostile_with(
        LimitsOverride {
            cpu_ms: Some(60_000),
            timeout_ms: Some(400),
            ..Default::default()
        },
        &[],
    );
    let start = Instant::now();
    let report = rt.run(task("hostile", json!({"mode": "loop"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::Timeout, "{message}");
    assert!(
        message.contains("wall-clock timeout of 400 ms"),
        "{message}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_do_not_starve_others() {
    let (rt, _dir) = hostile_with(
        LimitsOverride {
            cpu_ms: Some(10_000),
            timeout_ms: Some(30_000),
            ..Default::default()
        },
        &[],
    );
    // More spinning guests than worker threads: without the per-tick yield, the ok task
    // below would wait for their full 10 s CPU budgets.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.run(task("hostile", json!({"mode": "loop"}))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    still_serves(&rt).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "an ok task waited {:?} behind spinning guests",
        start.elapsed()
    );
    // A running guest is cancelled by dropping its future (at its next tick).
    let start = Instant::now();
    for l in loops {
        l.abort();
        assert!(l.await.expect_err("aborted").is_cancelled());
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_out_of_memory() {
    let (rt, _dir) = hostile();
    let report = rt.run(task("hostile", json!({"mode": "memory"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::OutOfMemory, "{message}");
    assert!(
        message.starts_with("plugin exceeded its memory limit of 16 MiB"),
        "{message}"
    );
    assert!(
        logs_text(&report).contains("memory allocation of"),
        "{}",
        logs_text(&report)
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_reported_as_trap() {
    let (rt, _dir) = hostile();
    let report = rt.run(task("hostile", json!({"mode": "trap"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::Trap);
    assert!(message.starts_with("plugin trapped: "), "{message}");
    assert!(message.contains("unreachable"), "{message}");
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_message_is_in_the_report() {
    let (rt, _dir) = hostile();
    let report = rt.run(task("hostile", json!({"mode": "panic"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::Trap);
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        message.contains("stderr: ") && message.contains("hostile guest panicked on purpose"),
        "{message}"
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_the_limit_fails() {
    let (rt, _dir) = hostile();
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "big_output", "size": 65_537}),
        ))
        .await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::OutputTooLarge);
    assert_eq!(
        message,
        "plugin output of 65537 bytes exceeds max_output_bytes (65536 bytes)"
    );
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "big_output", "size": 65_536}),
        ))
        .await;
    assert_eq!(output(&report).len(), 65_536);
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outside_the_allowlist_is_denied_and_logged() {
    let (rt, _dir) = hostile_with(
        LimitsOverride::default(),
        &["example.com:443", "*.internal"],
    );
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "http", "url": "http://127.0.0.1:9/x"}),
        ))
        .await;
    match &report.outcome {
        RunOutcome::Permanent { message } => assert!(message.contains("denied"), "{message}"),
        other => panic!("expected a permanent error, got {other}"),
    }
    let logs = logs_text(&report);
    assert!(
        logs.contains(
            "outbound HTTP to 127.0.0.1:9 refused: not in allowed_hosts of plugin `hostile` \
             (allowed: [example.com:443, *.internal])"
        ),
        "{logs}"
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_an_allowed_host_goes_through() {
    let rx = Receiver::start().await;
    let (rt, _dir) = hostile_with(LimitsOverride::default(), &[&rx.addr.to_string()]);
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "http", "url": rx.url("/status/202"), "body": {"a": 1}}),
        ))
        .await;
    let out: Value = serde_json::from_str(&output(&report)).expect("json output");
    assert_eq!(out["status"], json!(202));
    assert_eq!(rx.received()[0].body, json!({"a": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_limited_and_timed_out() {
    let rx = Receiver::start().await;
    let granted = rx.addr.to_string();
    let (rt, _dir) = hostile_with(
        LimitsOverride {
            http_timeout_ms: Some(200),
            ..Default::default()
        },
        &[&granted],
    );
    let start = Instant::now();
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "http", "url": rx.url("/slow/3000")}),
        ))
        .await;
    assert!(
        matches!(report.outcome, RunOutcome::Retryable { .. }),
        "{}",
        report.outcome
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let logs = logs_text(&report);
    assert!(
        logs.contains("/slow/3000") && (logs.contains("timeout") || logs.contains("timed out")),
        "{logs}"
    );

    let (rt, _dir) = hostile_with(
        LimitsOverride {
            max_http_requests: Some(0),
            ..Default::default()
        },
        &[&granted],
    );
    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "http", "url": rx.url("/status/200")}),
        ))
        .await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::HostCallLimit);
    assert_eq!(
        message,
        "plugin exceeded its limit of 0 outbound HTTP requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_flood_hits_the_host_call_limit() {
    let (rt, _dir) = hostile();
    let start = Instant::now();
    let report = rt.run(task("hostile", json!({"mode": "kv_flood"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::HostCallLimit, "{message}");
    assert!(
        message.starts_with("plugin exceeded its limit of 1000 host calls"),
        "{message}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    still_serves(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_fields_config_and_errors_reach_the_guest() {
    let mut cfg = config();
    let mut g = grant(&[], LimitsOverride::default());
    g.config = BTreeMap::from([("token".to_string(), "from-grant".to_string())]);
    cfg.grants.insert("hostile".into(), g);
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[config]\ntoken = \"from-manifest\"\nchannel = \"#ops\"\n",
    )
    .expect("write manifest");
    assert!(rt.load_dir(dir.path()).errors.is_empty());

    let mut req = task("hostile", json!({"mode": "echo"}));
    req.task.attempt = 3;
    let payload = req.task.payload.clone();
    let out: Value = serde_json::from_str(&output(&rt.run(req.clone()).await)).expect("json");
    assert_eq!(out["id"], json!(req.task.id));
    assert_eq!(out["key"], json!(req.task.key));
    assert_eq!(out["plugin"], json!("hostile"));
    assert_eq!(out["attempt"], json!(3));
    assert_eq!(out["due_at_ms"], json!(1_700_000_000_000i64));
    assert_eq!(out["payload"], json!(payload));

    let out = output(&rt.run(task("hostile", json!({"mode": "config"}))).await);
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(out, json!({"token": "from-grant", "channel": "#ops"}));

    let report = rt
        .run(task(
            "hostile",
            json!({"mode": "fail", "retry_after_ms": 1234}),
        ))
        .await;
    assert_eq!(
        report.outcome,
        RunOutcome::Retryable {
            message: "hostile guest failing on purpose (attempt 1)".into(),
            retry_after_ms: Some(1234)
        }
    );
    let report = rt.run(task("hostile", json!({"mode": "permanent"}))).await;
    assert_eq!(
        report.outcome,
        RunOutcome::Permanent {
            message: "hostile guest failing permanently on purpose".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugin_and_version_are_clear() {
    let (rt, _dir) = hostile();
    let err = rt.resolve("nope", None).expect_err("unknown");
    assert_eq!(err.kind, FailureKind::UnknownPlugin);
    assert!(
        err.message.contains("unknown plugin `nope`"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("hostile"),
        "lists loaded plugins: {}",
        err.message
    );

    let digest = sha256_hex(&std::fs::read(guest("hostile")).expect("read"));
    assert_eq!(rt.resolve("hostile", None).ok(), Some(digest.clone()));
    assert_eq!(
        rt.resolve("hostile", Some(&digest[..10])).ok(),
        Some(digest.clone())
    );
    assert_eq!(
        rt.resolve("hostile", Some(&format!("sha256:{digest}")))
            .ok(),
        Some(digest.clone())
    );
    let err = rt
        .resolve("hostile", Some("deadbeefdeadbeef"))
        .expect_err("unknown");
    assert_eq!(err.kind, FailureKind::UnknownVersion);
    assert!(
        err.message.contains("has no version `deadbeefdeadbeef`"),
        "{}",
        err.message
    );

    let mut req = task("hostile", json!({"mode": "ok"}));
    req.pin_version = Some("deadbeefdeadbeef".into());
    let report = rt.run(req).await;
    assert_eq!(
        report.outcome.failure_kind(),
        Some(FailureKind::UnknownVersion)
    );
    assert_eq!(report.digest, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_info_reports_effective_settings() {
    let (rt, _dir) = hostile();
    let info = rt.plugins();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].allowed_hosts, Vec::<String>::new());
    assert_eq!(info[0].limits.memory_mb, 16);
    assert_eq!(info[0].limits.cpu_ms, 300);
    assert_eq!(info[0].limits.timeout_ms, 10_000);
}
