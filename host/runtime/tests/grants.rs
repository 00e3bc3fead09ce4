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
