//! The operator's config is the ceiling: a plugin's manifest can only narrow its limits and
//! hosts.

mod common;

use common::*;
use kairos_runtime::{FailureKind, LimitsOverride, RunOutcome};
use serde_json::json;

fn failed(outcome: &RunOutcome) -> (FailureKind, &str) {
    match outcome {
        RunOutcome::Failed { kind, message } => (*kind, message.as_str()),
        other => panic!("expected a failure, got {other}"),
    }
}

/// The probe: `hostile.toml` raising memory to 4096 MiB, host calls to 4e9 and allowing
/// `127.0.0.1` on every port was accepted, and its memory bomb grew the daemon by 4 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_asking_beyond_the_ceiling_is_clamped_and_listed() {
    let (rt, _) = runtime_with(config());
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    std::fs::write(
        dir.path().join("hostile.toml"),
        "allowed_hosts = [\"127.0.0.1\"]\n[limits]\nmemory_mb = 4096\nmax_host_calls = 4000000000\n",
    )
    .expect("write manifest");
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["hostile"], "{:?}", summary.errors);

    let info = &rt.plugins()[0];
    assert_eq!(info.limits.memory_mb, 64, "the node's [limits] default");
    assert_eq!(info.limits.max_host_calls, 1_000);
    assert!(info.allowed_hosts.is_empty(), "{:?}", info.allowed_hosts);
    assert_eq!(info.warnings.len(), 3, "{:#?}", info.warnings);
    assert!(info.warnings[0].contains("memory_mb = 4096"));
    assert!(info.warnings[0].ends_with("clamped to 64"));
    assert!(info.warnings[1].contains("max_host_calls = 4000000000"));
    assert!(info.warnings[2].contains("`127.0.0.1`"));
    assert!(info.warnings[2].ends_with("dropped"));

    let report = rt.run(task("hostile", json!({"mode": "memory"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::OutOfMemory, "{message}");
    assert!(
        message.starts_with("plugin exceeded its memory limit of 64 MiB"),
        "{message}"
    );
}

/// A manifest may still narrow what the operator granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_narrowing_the_grant_is_taken() {
    let mut cfg = config();
    cfg.grants.insert(
        "hostile".into(),
        grant(
            &["*.example.com"],
            LimitsOverride {
                memory_mb: Some(32),
                ..Default::default()
            },
        ),
    );
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    std::fs::write(
        dir.path().join("hostile.toml"),
        "allowed_hosts = [\"hooks.example.com:443\"]\n[limits]\nmemory_mb = 16\n",
    )
    .expect("write manifest");
    assert!(rt.load_dir(dir.path()).errors.is_empty());
    let info = &rt.plugins()[0];
    assert_eq!(info.limits.memory_mb, 16);
    assert_eq!(info.allowed_hosts, ["hooks.example.com:443"]);
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
}

/// Copies of the hostile guest under `names`, each granted `127.0.0.1:port` and `memory_mb`
/// (plus `timeout_ms` where given), in a runtime with a `budget_mb` memory budget.
fn budgeted(
    budget_mb: u64,
    port: u16,
    plugins: &[(&str, u64, Option<u64>)],
) -> (std::sync::Arc<kairos_runtime::Runtime>, tempfile::TempDir) {
    let mut cfg = config();
    cfg.memory_budget_mb = budget_mb;
    let host = format!("127.0.0.1:{port}");
    for (name, memory_mb, timeout_ms) in plugins {
        cfg.grants.insert(
            name.to_string(),
            grant(
                &[host.as_str()],
                LimitsOverride {
                    memory_mb: Some(*memory_mb),
                    timeout_ms: *timeout_ms,
                    ..Default::default()
                },
            ),
        );
    }
    let (rt, _) = runtime_with(cfg);
    let files: Vec<(std::path::PathBuf, String)> = plugins
        .iter()
        .map(|(name, _, _)| (guest("hostile"), format!("{name}.wasm")))
        .collect();
    let refs: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let dir = plugin_dir(&refs);
    let summary = rt.load_dir(dir.path());
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    (rt, dir)
}

/// Before: nothing bounded memory per instance × instances, so concurrent memory bombs
/// could take the node's RSS to gigabytes. Now attempts beyond the budget wait for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_beyond_the_memory_budget_wait_for_room() {
    let rx = Receiver::start().await;
    // Two 32 MiB attempts fit in 64 MiB; four are started at once.
    let (rt, _dir) = budgeted(64, rx.addr.port(), &[("hostile", 32, None)]);
    let start = std::time::Instant::now();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            let url = rx.url("/slow/2000");
            tokio::spawn(async move {
                rt.run(task("hostile", json!({"mode": "http", "url": url})))
                    .await
            })
        })
        .collect();
    // Two requests arrive (however loaded the machine), and no third while they are held.
    assert!(
        eventually(std::time::Duration::from_secs(20), || rx.received().len()
            >= 2)
        .await,
        "{} of 2 requests arrived in 20 s",
        rx.received().len()
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        rx.received().len(),
        2,
        "only two attempts may hold memory at once"
    );
    for r in runs {
        let report = r.await.expect("join");
        assert!(
            output(&report).contains("\"status\":200"),
            "{}",
            report.outcome
        );
    }
    assert_eq!(rx.received().len(), 4);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(4000),
        "the last two ran after the first two: {:?}",
        start.elapsed()
    );
}

/// The wait is bounded by the attempt's timeout_ms, and says what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_the_memory_budget_is_bounded() {
    let rx = Receiver::start().await;
    let (rt, _dir) = budgeted(
        64,
        rx.addr.port(),
        &[("holder", 32, None), ("waiter", 32, Some(300))],
    );
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let rt = rt.clone();
            let url = rx.url("/slow/1500");
            tokio::spawn(async move {
                rt.run(task("holder", json!({"mode": "http", "url": url})))
                    .await
            })
        })
        .collect();
    // Both holders hold their memory while their requests are answered (1.5 s).
    assert!(
        eventually(std::time::Duration::from_secs(20), || rx.received().len()
            >= 2)
        .await,
        "{} of 2 holders' requests arrived in 20 s",
        rx.received().len()
    );
    let start = std::time::Instant::now();
    let report = rt.run(task("waiter", json!({"mode": "ok"}))).await;
    let (kind, message) = failed(&report.outcome);
    assert_eq!(kind, FailureKind::Timeout, "{message}");
    assert_eq!(
        message,
        "not started: waited 300 ms (its timeout_ms) for 32 MiB of the node's memory budget \
         (memory_budget_mb = 64), all in use by other attempts"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    for h in holders {
        let report = h.await.expect("join");
        assert!(
            output(&report).contains("\"status\":200"),
            "{}",
            report.outcome
        );
    }
    // Room again: the waiter runs.
    assert_eq!(
        output(&rt.run(task("waiter", json!({"mode": "ok"}))).await),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_larger_than_the_memory_budget_is_rejected_at_load() {
    let mut cfg = config();
    cfg.memory_budget_mb = 32;
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    let summary = rt.load_dir(dir.path());
    assert!(summary.loaded.is_empty());
    assert_eq!(summary.errors.len(), 1);
    assert_eq!(
        summary.errors[0].message,
        "its memory_mb of 64 MiB exceeds the node's memory budget (memory_budget_mb = 32): it \
         could never run; lower [plugin.hostile.limits] memory_mb or raise memory_budget_mb"
    );
}

/// The hostile guest granted `hosts` (and `allow_private`).
fn networked(
    hosts: &[&str],
    allow_private: bool,
) -> (std::sync::Arc<kairos_runtime::Runtime>, tempfile::TempDir) {
    let mut cfg = config();
    let mut g = grant(hosts, LimitsOverride::default());
    g.allow_private = allow_private;
    cfg.grants.insert("hostile".into(), g);
    let (rt, _) = runtime_with(cfg);
    let dir = plugin_dir(&[(&guest("hostile"), "hostile.wasm")]);
    assert!(rt.load_dir(dir.path()).errors.is_empty());
    (rt, dir)
}

fn post(url: String) -> kairos_runtime::RunRequest {
    task(
        "hostile",
        json!({"mode": "http", "url": url, "body": {"n": 1}}),
    )
}

fn denied(report: &kairos_runtime::RunReport) {
    match &report.outcome {
        RunOutcome::Permanent { message } => assert!(message.contains("denied"), "{message}"),
        other => panic!(
            "expected a denied request, got {other}\n{}",
            logs_text(report)
        ),
    }
}

/// The probe: the allowlist matched names only, so an allowed name resolving to 127.0.0.1
/// got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_resolving_to_loopback_is_refused() {
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    let (rt, _dir) = networked(&[&format!("localhost:{port}")], false);
    let report = rt
        .run(post(format!("http://localhost:{port}/status/200")))
        .await;
    denied(&report);
    let logs = logs_text(&report);
    assert!(
        logs.contains(&format!(
            "outbound HTTP to localhost:{port} refused: localhost resolves to"
        )) && logs
            .contains("a loopback address; allow it with an allowed_hosts entry naming the IP"),
        "{logs}"
    );
    assert!(rx.received().is_empty(), "nothing may reach the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_lets_an_allowed_name_reach_loopback() {
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    let (rt, _dir) = networked(&[&format!("localhost:{port}")], true);
    assert!(rt.plugins()[0].allow_private);
    let report = rt
        .run(post(format!("http://localhost:{port}/status/201")))
        .await;
    assert!(
        output(&report).contains("\"status\":201"),
        "{}",
        logs_text(&report)
    );
    assert_eq!(rx.received()[0].body, json!({"n": 1}));
}

/// An entry naming the IP literally reaches it (the tour's `127.0.0.1:8080`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_ip_grant_reaches_loopback() {
    let rx = Receiver::start().await;
    let (rt, _dir) = networked(&[&rx.addr.to_string()], false);
    let report = rt.run(post(rx.url("/status/200"))).await;
    assert!(
        output(&report).contains("\"status\":200"),
        "{}",
        logs_text(&report)
    );
    assert_eq!(rx.received().len(), 1);
}

/// The probe: a bare-host entry allowed every port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_host_entry_allows_ports_80_and_443_only() {
    let rx = Receiver::start().await;
    let (rt, _dir) = networked(&["127.0.0.1"], false);
    let report = rt.run(post(rx.url("/status/200"))).await;
    denied(&report);
    assert!(
        logs_text(&report).contains(&format!(
            "outbound HTTP to {} refused: not in allowed_hosts of plugin `hostile` (allowed: \
             [127.0.0.1])",
            rx.addr
        )),
        "{}",
        logs_text(&report)
    );
    assert!(rx.received().is_empty());
}

/// Redirects are handed to the plugin, not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let rx = Receiver::start().await;
    let (rt, _dir) = networked(&[&rx.addr.to_string()], false);
    let report = rt.run(post(rx.url("/status/307"))).await;
    assert!(
        output(&report).contains("\"status\":307"),
        "{}",
        logs_text(&report)
    );
    assert_eq!(rx.received().len(), 1);
}

/// `https` goes through TLS to the checked address (here a plain HTTP server: the
/// handshake fails, a retryable connection error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_tls_to_the_checked_address() {
    let rx = Receiver::start().await;
    let (rt, _dir) = networked(&[&rx.addr.to_string()], false);
    let report = rt
        .run(post(format!("https://{}/status/200", rx.addr)))
        .await;
    assert!(
        matches!(report.outcome, RunOutcome::Retryable { .. }),
        "{}",
        report.outcome
    );
    let logs = logs_text(&report);
    assert!(
        logs.contains(&format!(
            "outbound HTTP POST https://{}/status/200 failed: TLS error",
            rx.addr
        )),
        "{logs}"
    );
    assert!(rx.received().is_empty());
}
