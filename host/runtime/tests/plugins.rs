//! The standard plugins (notify, alerting, chores) and the SDK's example against a local
//! HTTP receiver and the in-memory host services.

mod common;

use std::sync::Arc;

use common::*;
use kairos_runtime::{FailureKind, LimitsOverride, MemoryServices, RunOutcome, Runtime, When};
use serde_json::{Value, json};

/// A runtime with the standard plugins loaded, allowed to call `hosts` (`127.0.0.1:PORT`).
fn standard(hosts: &[&str]) -> (Arc<Runtime>, Arc<MemoryServices>) {
    let mut cfg = config();
    for name in ["notify", "chores", "alerting"] {
        cfg.grants
            .insert(name.to_string(), grant(hosts, LimitsOverride::default()));
    }
    if let Some(g) = cfg.grants.get_mut("alerting") {
        g.may_schedule = vec!["notify".into()];
    }
    let (rt, services) = runtime_with(cfg);
    let summary = rt.load_builtins();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    for name in ["alerting", "chores", "notify"] {
        assert!(summary.loaded.contains(&name.to_string()), "{summary:?}");
    }
    assert!(
        rt.plugins()
            .iter()
            .all(|p| p.source == kairos_runtime::PluginSource::Builtin)
    );
    (rt, services)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_delivers_and_classifies_statuses() {
    let rx = Receiver::start().await;
    let closed = closed_port();
    let (rt, _) = standard(&[&rx.addr.to_string(), &format!("127.0.0.1:{closed}")]);

    let mut req = task(
        "notify",
        json!({"url": rx.url("/status/200"), "message": "disk full", "severity": "critical"}),
    );
    req.task.attempt = 2;
    let (id, key) = (req.task.id.clone(), req.task.key.clone());
    let report = rt.run(req).await;
    assert_eq!(output(&report), "delivered: 200");
    assert_eq!(report.digest, rt.resolve("notify", None).ok());
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let body = &got[0].body;
    assert_eq!(body["task_id"], json!(id));
    assert_eq!(body["key"], json!(key));
    assert_eq!(body["attempt"], json!(2));
    assert_eq!(
        got[0].idempotency_key.as_deref(),
        Some(id.as_str()),
        "the task id is the Idempotency-Key"
    );
    assert_eq!(body["message"], json!("disk full"));
    assert_eq!(body["severity"], json!("critical"));
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.message == "notification posted"),
        "{}",
        logs_text(&report)
    );

    let report = rt
        .run(task("notify", json!({"url": rx.url("/status/503")})))
        .await;
    match &report.outcome {
        RunOutcome::Retryable { message, .. } => assert!(message.contains("503"), "{message}"),
        other => panic!("5xx must be retryable, got {other}"),
    }

    let report = rt
        .run(task("notify", json!({"url": rx.url("/status/404")})))
        .await;
    match &report.outcome {
        RunOutcome::Permanent { message } => assert!(message.contains("404"), "{message}"),
        other => panic!("4xx must be permanent, got {other}"),
    }

    let url = format!("http://127.0.0.1:{closed}/hook");
    let report = rt.run(task("notify", json!({ "url": url }))).await;
    assert!(
        matches!(report.outcome, RunOutcome::Retryable { .. }),
        "connection refused must be retryable, got {}",
        report.outcome
    );
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_to_a_host_outside_its_allowlist_is_refused() {
    let (rt, _) = runtime_with(config());
    rt.load_builtins();
    let rx = Receiver::start().await;
    let report = rt
        .run(task("notify", json!({"url": rx.url("/status/200")})))
        .await;
    assert!(
        matches!(report.outcome, RunOutcome::Permanent { .. }),
        "{}",
        report.outcome
    );
    let expected = format!(
        "outbound HTTP to {} refused: not in allowed_hosts of plugin `notify` (allowed: [])",
        rx.addr
    );
    assert!(
        logs_text(&report).contains(&expected),
        "{}",
        logs_text(&report)
    );
    assert!(rx.received().is_empty(), "the request must not be sent");
}

fn policy(rx: &Receiver) -> Value {
    json!([
        {"after_ms": 0, "targets": [rx.url("/status/200"), rx.url("/status/201")]},
        {"after_ms": 60000, "targets": [rx.url("/status/202")]}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerting_escalates_until_acknowledged() {
    let rx = Receiver::start().await;
    let (rt, services) = standard(&[&rx.addr.to_string()]);

    let report = rt
        .run(task(
            "alerting",
            json!({"incident": "db-42", "policy": policy(&rx), "level": 0, "message": "db down"}),
        ))
        .await;
    output(&report);
    let f = services.follow_ups();
    assert_eq!(f.len(), 3, "{f:#?}");
    let notifies: Vec<_> = f.iter().filter(|f| f.plugin == "notify").collect();
    assert_eq!(notifies.len(), 2);
    for n in &notifies {
        assert_eq!(n.key, "db-42");
        let p: Value = serde_json::from_str(&n.payload).expect("json payload");
        assert_eq!(p["message"], json!("db down"));
        assert!(
            p["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://127.0.0.1"))
        );
    }
    let next = f
        .iter()
        .find(|f| f.plugin == "alerting")
        .expect("next level");
    assert_eq!(next.when, When::DelayMs(60000));
    let p: Value = serde_json::from_str(&next.payload).expect("json payload");
    assert_eq!(p["level"], json!(1));

    // Acknowledge, then the next level runs and schedules nothing.
    services.clear_follow_ups();
    let ack = rt
        .run(task(
            "alerting",
            json!({"incident": "db-42", "action": "ack"}),
        ))
        .await;
    assert!(output(&ack).contains("acknowledged"), "{}", output(&ack));
    let report = rt
        .run(task(
            "alerting",
            json!({"incident": "db-42", "policy": policy(&rx), "level": 1}),
        ))
        .await;
    assert!(output(&report).contains("stopped"), "{}", output(&report));
    assert!(
        services.follow_ups().is_empty(),
        "{:#?}",
        services.follow_ups()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chores_reminder_posts_and_schedules_the_next() {
    let rx = Receiver::start().await;
    let (rt, services) = standard(&[&rx.addr.to_string()]);
    let shift = 1_800_000_000_000i64;
    let report = rt
        .run(task(
            "chores",
            json!({"chore": "oncall-reminder", "url": rx.url("/status/200"), "engineer": "ada",
                   "shift_start_ms": shift, "remind_before_ms": 600000, "rotation_ms": 604800000}),
        ))
        .await;
    assert!(
        output(&report).contains("reminded ada"),
        "{}",
        output(&report)
    );
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["engineer"], json!("ada"));
    assert_eq!(got[0].body["shift_start_ms"], json!(shift));
    let f = services.follow_ups();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].plugin, "chores");
    assert_eq!(f[0].when, When::AtMs(shift + 604_800_000 - 600_000));
    let p: Value = serde_json::from_str(&f[0].payload).expect("json payload");
    assert_eq!(p["chore"], json!("oncall-reminder"));
    assert_eq!(p["shift_start_ms"], json!(shift + 604_800_000));
    assert!(
        services
            .get("chores", &format!("reminders/ada/{shift}"))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chores_purge_deletes_old_entries_only() {
    let (rt, services) = standard(&[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    services.put_at(
        "chores",
        "reminders/ada/1",
        b"old".to_vec(),
        now - 90_000_000,
    );
    services.put_at(
        "chores",
        "reminders/bob/2",
        b"old".to_vec(),
        now - 90_000_000,
    );
    services.put_at("chores", "reminders/cy/3", b"new".to_vec(), now - 1_000);
    services.put_at("chores", "other/x", b"old".to_vec(), now - 90_000_000);
    services.put_at("notify", "reminders/z", b"old".to_vec(), now - 90_000_000);
    let report = rt
        .run(task(
            "chores",
            json!({"chore": "purge-kv", "prefix": "reminders/", "older_than_ms": 86400000}),
        ))
        .await;
    let out: Value = serde_json::from_str(&output(&report)).expect("json output");
    assert_eq!(out["deleted"], json!(2));
    assert_eq!(services.keys("chores"), ["other/x", "reminders/cy/3"]);
    assert_eq!(services.keys("notify"), ["reminders/z"], "kv is per plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_hello_example_runs() {
    let rx = Receiver::start().await;
    let mut cfg = config();
    let mut g = grant(&[&rx.addr.to_string()], LimitsOverride::default());
    g.may_schedule = vec!["notify".into()];
    cfg.grants.insert("hello".into(), g);
    let (rt, services) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hello"), "hello.wasm")]);
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["hello"], "{:?}", summary.errors);
    let req = task(
        "hello",
        json!({"name": "Ada", "url": rx.url("/status/200")}),
    );
    let id = req.task.id.clone();
    let report = rt.run(req).await;
    assert_eq!(output(&report), "greeted Ada");
    let greeting = report.logs.iter().find(|l| l.message == "greeting");
    assert_eq!(
        greeting.map(|l| l.fields.clone()),
        Some(vec![
            ("name".to_string(), "Ada".to_string()),
            ("id".to_string(), id.clone())
        ]),
        "{}",
        logs_text(&report)
    );
    assert_eq!(
        services.get("hello", "greeted/Ada"),
        Some(id.clone().into_bytes())
    );
    let f = services.follow_ups();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].plugin, "notify");
    assert_eq!(f[0].when, When::DelayMs(3_600_000));
    assert_eq!(rx.received()[0].body["name"], json!("Ada"));
    assert_eq!(rx.received()[0].idempotency_key, Some(id));

    let report = rt
        .run(task(
            "hello",
            json!({"name": "Ada", "url": rx.url("/status/404")}),
        ))
        .await;
    assert_eq!(
        report.outcome,
        RunOutcome::Permanent {
            message: "the greeting was refused: HTTP 404 Not Found".into()
        }
    );
    let report = rt
        .run(task(
            "hello",
            json!({"name": "Ada", "url": rx.url("/status/503")}),
        ))
        .await;
    assert!(
        matches!(&report.outcome, RunOutcome::Retryable { message, .. } if message.contains("503")),
        "{}",
        report.outcome
    );

    let report = rt.run(task("hello", json!({"nombre": "Ada"}))).await;
    assert!(
        matches!(&report.outcome, RunOutcome::Permanent { message } if message.contains("missing field `name`")),
        "bad payload: {}",
        report.outcome
    );
    let report = rt.run(task("nope", json!({}))).await;
    assert_eq!(
        report.outcome.failure_kind(),
        Some(FailureKind::UnknownPlugin)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_need_a_grant_for_another_plugin_and_are_capped_per_attempt() {
    let rx = Receiver::start().await;
    let hosts = [rx.addr.to_string()];
    let mut cfg = config();
    for name in ["notify", "alerting"] {
        cfg.grants.insert(
            name.to_string(),
            grant(&[&hosts[0]], LimitsOverride::default()),
        );
    }
    let (rt, services) = runtime_with(cfg);
    let summary = rt.load_builtins();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    // Without `may_schedule`, alerting cannot borrow notify (and its HTTP grant).
    let report = rt
        .run(task(
            "alerting",
            json!({"incident": "db-7", "policy": policy(&rx), "level": 0, "message": "x"}),
        ))
        .await;
    let text = format!("{:?}", report.outcome);
    assert!(text.contains("may not schedule plugin `notify`"), "{text}");
    assert!(services.follow_ups().iter().all(|f| f.plugin != "notify"));

    // Granted, but at most `max_follow_ups` per attempt: level 0 of this policy schedules
    // 2 notifications and the next level, 3 in all.
    let mut cfg = config();
    for name in ["notify", "alerting"] {
        let mut g = grant(&[&hosts[0]], LimitsOverride::default());
        if name == "alerting" {
            g.may_schedule = vec!["notify".into()];
            g.limits.max_follow_ups = Some(2);
        }
        cfg.grants.insert(name.to_string(), g);
    }
    let (rt, services) = runtime_with(cfg);
    rt.load_builtins();
    let report = rt
        .run(task(
            "alerting",
            json!({"incident": "db-8", "policy": policy(&rx), "level": 0, "message": "x"}),
        ))
        .await;
    let text = format!("{:?}", report.outcome);
    assert!(text.contains("max_follow_ups"), "{text}");
    assert_eq!(services.follow_ups().len(), 2);
}
