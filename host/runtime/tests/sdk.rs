//! The SDK's one-function form on the real runtime: the test guest `typed`
//! (`plugins/testing/typed`) is a `#[kairos_plugin_sdk::task]` function taking a
//! `Task<Payload>` and returning `anyhow::Result<Outcome>`. Checked here: the parsed payload,
//! how errors are classified, the `log` crate backend and `http::send` on the `http` crate's
//! types.

mod common;

use common::*;
use kairos_runtime::{LimitsOverride, LogLevel, LogSource, RunOutcome, RunReport, Runtime};
use serde_json::{Value, json};
use std::sync::Arc;

/// A runtime with `typed` loaded, allowed to call `hosts`. The directory must outlive the
/// runtime's use of it.
fn typed(hosts: &[&str]) -> (Arc<Runtime>, tempfile::TempDir) {
    let mut cfg = config();
    cfg.grants
        .insert("typed".into(), grant(hosts, LimitsOverride::default()));
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("typed"), "typed.wasm")]);
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["typed"], "{:?}", summary.errors);
    (rt, dir)
}

async fn run(rt: &Runtime, payload: Value) -> RunReport {
    rt.run(task("typed", payload)).await
}

fn retryable(report: &RunReport) -> (&str, Option<u64>) {
    match &report.outcome {
        RunOutcome::Retryable {
            message,
            retry_after_ms,
        } => (message, *retry_after_ms),
        other => panic!("expected a retryable failure, got {other}"),
    }
}

fn permanent(report: &RunReport) -> &str {
    match &report.outcome {
        RunOutcome::Permanent { message } => message,
        other => panic!("expected a permanent failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_arrives_parsed_with_the_task() {
    let (rt, _dir) = typed(&[]);
    let mut req = task("typed", json!({"mode": "greet", "name": "Ada"}));
    req.task.attempt = 3;
    let key = req.task.key.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), format!("hello Ada (attempt 3, key {key})"));

    let report = run(&rt, json!({"mode": "parse", "number": "41"})).await;
    assert_eq!(output(&report), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_parse_is_permanent_with_serdes_message() {
    let (rt, _dir) = typed(&[]);
    let report = run(&rt, json!({"mode": "greet", "nombre": "Ada"})).await;
    let message = permanent(&report);
    assert!(
        message.starts_with("invalid payload for plugin `typed` (expected Payload): "),
        "{message}"
    );
    assert!(message.contains("missing field `name`"), "{message}");

    let report = run(&rt, json!({"mode": "dance"})).await;
    assert!(
        permanent(&report).contains("unknown variant `dance`"),
        "{}",
        report.outcome
    );

    let mut req = task("typed", json!(null));
    req.task.payload = "{not json".into();
    let report = rt.run(req).await;
    assert!(
        permanent(&report).contains("line 1 column 2"),
        "serde's position: {}",
        report.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_retryable_unless_marked() {
    let (rt, _dir) = typed(&[]);
    // `?` on a std error with anyhow context: retryable, the whole chain as the message.
    let report = run(&rt, json!({"mode": "parse", "number": "forty-one"})).await;
    assert_eq!(
        retryable(&report),
        ("parsing `forty-one`: invalid digit found in string", None)
    );

    let report = run(&rt, json!({"mode": "permanent", "why": "no such region"})).await;
    assert_eq!(permanent(&report), "no such region");

    let report = run(
        &rt,
        json!({"mode": "retry_after", "why": "rate limited", "ms": 1500}),
    )
    .await;
    assert_eq!(retryable(&report), ("rate limited", Some(1500)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_macros_reach_the_task_log_with_their_fields() {
    let (rt, _dir) = typed(&[]);
    let req = task("typed", json!({"mode": "log", "message": "hello from log"}));
    let id = req.task.id.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), "");
    let info = report
        .logs
        .iter()
        .find(|l| l.message == "hello from log")
        .unwrap_or_else(|| panic!("no `log::info!` line: {}", logs_text(&report)));
    assert_eq!(
        (info.source, info.level),
        (LogSource::Plugin, LogLevel::Info)
    );
    assert_eq!(
        info.fields,
        [
            ("task_id".to_string(), id),
            ("attempt".to_string(), "1".to_string())
        ]
    );
    let warn = report
        .logs
        .iter()
        .find(|l| l.message == "through the plugin's own log dependency")
        .unwrap_or_else(|| panic!("no `log::warn!` line: {}", logs_text(&report)));
    assert_eq!(
        (warn.source, warn.level),
        (LogSource::Plugin, LogLevel::Warn)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_send_takes_and_returns_the_http_crates_types() {
    let rx = Receiver::start().await;
    let (rt, _dir) = typed(&[&rx.addr.to_string()]);
    let req = task(
        "typed",
        json!({"mode": "http", "url": rx.url("/status/201"), "body": r#"{"greeting":"hi"}"#}),
    );
    let id = req.task.id.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), "201 receiver says 201");
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/status/201");
    assert_eq!(got[0].body, json!({"greeting": "hi"}));
    assert_eq!(got[0].idempotency_key.as_deref(), Some(id.as_str()));

    // A host outside the grant: the SDK's `HttpError::Denied`, through `?` into anyhow,
    // stays permanent.
    let other = Receiver::start().await;
    let report = run(
        &rt,
        json!({"mode": "http", "url": other.url("/status/200"), "body": "{}"}),
    )
    .await;
    assert!(
        permanent(&report).contains("denied"),
        "{}\n{}",
        report.outcome,
        logs_text(&report)
    );
    assert!(other.received().is_empty());

    // A connection that fails: retryable.
    let closed = closed_port();
    let (rt, _dir) = typed(&[&format!("127.0.0.1:{closed}")]);
    let url = format!("http://127.0.0.1:{closed}/hook");
    let report = run(&rt, json!({"mode": "http", "url": url, "body": "{}"})).await;
    retryable(&report);
}
