//! Plugin versions and hot reload: swapping under load, rejecting broken files, unloading,
//! manifests, pinned and retained versions.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kairos_runtime::{FailureKind, MAX_RETAINED, PluginSource, RunOutcome, Runtime};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn log_lines_containing(needle: &str) -> Vec<String> {
    let log = captured().lock().expect("lock");
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

const WAIT: Duration = Duration::from_secs(10);

struct Watched {
    rt: Arc<Runtime>,
    dir: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A runtime watching a fresh dir holding `name.wasm` (a variant of the hostile guest).
fn watched(name: &str, tag: &str) -> (Watched, String) {
    captured();
    let (rt, _) = runtime_with(config());
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = variant(&guest("hostile"), tag);
    std::fs::write(dir.path().join(format!("{name}.wasm")), &bytes).expect("write");
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, [name], "{:?}", summary.errors);
    let cancel = CancellationToken::new();
    rt.spawn_watcher(dir.path().to_path_buf(), cancel.clone())
        .expect("watcher");
    (Watched { rt, dir, cancel }, sha256_hex(&bytes))
}

async fn run_ok(rt: &Runtime, name: &str) -> Option<String> {
    let report = rt.run(task(name, json!({"mode": "ok"}))).await;
    assert_eq!(output(&report), "ok");
    report.digest
}

fn current(rt: &Runtime, name: &str) -> Option<String> {
    rt.resolve(name, None).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_while_tasks_run() {
    let (w, v1) = watched("swap", "v1");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (rt, stop) = (w.rt.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reports = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    reports.push(rt.run(task("swap", json!({"mode": "ok"}))).await);
                    tokio::task::yield_now().await;
                }
                reports
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let v2_bytes = variant(&guest("hostile"), "v2");
    let v2 = sha256_hex(&v2_bytes);
    let landed = Instant::now();
    std::fs::write(w.dir.path().join("swap.wasm"), &v2_bytes).expect("write v2");
    assert!(
        eventually(WAIT, || current(&w.rt, "swap").as_deref()
            == Some(v2.as_str()))
        .await,
        "new version not picked up"
    );
    let took = landed.elapsed();
    assert_eq!(run_ok(&w.rt, "swap").await.as_deref(), Some(v2.as_str()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_digest = std::collections::HashMap::<String, usize>::new();
    for h in workers {
        for r in h.await.expect("join") {
            assert_eq!(
                r.outcome,
                RunOutcome::Success {
                    output: Some("ok".into())
                }
            );
            *by_digest.entry(r.digest.expect("digest")).or_default() += 1;
        }
    }
    assert!(by_digest.get(&v1).is_some_and(|n| *n > 0), "{by_digest:?}");
    assert!(by_digest.get(&v2).is_some_and(|n| *n > 0), "{by_digest:?}");
    assert_eq!(by_digest.len(), 2);
    // Debug build, shared machine: a loose bound (the release benchmark measures it).
    assert!(took < Duration::from_secs(8), "swap took {took:?}");
    let info = w.rt.plugins();
    assert_eq!(info[0].versions, [v2, v1], "old version retained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_rejected_once_and_the_old_version_serves() {
    let (w, v1) = watched("broken", "v1");
    let path = w.dir.path().join("broken.wasm");
    let good = std::fs::read(&path).expect("read");
    let empty_component: &[u8] = b"\0asm\x0d\0\x01\0";
    let core_module: &[u8] = b"\0asm\x01\0\0\0";
    let cases: [(&[u8], &str); 3] = [
        (&good[..good.len() / 2], "not a valid WebAssembly component"),
        (core_module, "not a WebAssembly component"),
        (empty_component, "does not export"),
    ];
    for (i, (bytes, reason)) in cases.into_iter().enumerate() {
        std::fs::write(&path, bytes).expect("write broken");
        assert!(
            eventually(WAIT, || log_lines_containing(
                "rejected new version of plugin `broken`"
            )
            .len()
                > i)
            .await,
            "no rejection logged for case {i}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = log_lines_containing("rejected new version of plugin `broken`");
        assert_eq!(lines.len(), i + 1, "one line per rejected file: {lines:#?}");
        assert!(lines[i].contains("ERROR"), "{}", lines[i]);
        assert!(lines[i].contains(reason), "{}", lines[i]);
        assert!(lines[i].contains("keeps serving"), "{}", lines[i]);
        let last_error = w.rt.plugins()[0].last_error.clone().unwrap_or_default();
        assert!(last_error.contains(reason), "{last_error}");
        assert_eq!(current(&w.rt, "broken"), Some(v1.clone()));
        assert_eq!(run_ok(&w.rt, "broken").await, Some(v1.clone()));
    }
    // Fixing the file clears the error.
    std::fs::write(&path, &good).expect("restore");
    assert!(eventually(WAIT, || w.rt.plugins()[0].last_error.is_none()).await);
    assert_eq!(current(&w.rt, "broken"), Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_file_unloads_the_plugin() {
    let (w, v1) = watched("gone", "v1");
    std::fs::remove_file(w.dir.path().join("gone.wasm")).expect("remove");
    assert!(
        eventually(WAIT, || current(&w.rt, "gone").is_none()).await,
        "not unloaded"
    );
    let report = w.rt.run(task("gone", json!({"mode": "ok"}))).await;
    assert_eq!(
        report.outcome.failure_kind(),
        Some(FailureKind::UnknownPlugin)
    );
    let mut pinned = task("gone", json!({"mode": "ok"}));
    pinned.pin_version = Some(v1);
    let report = w.rt.run(pinned).await;
    assert_eq!(
        report.outcome.failure_kind(),
        Some(FailureKind::UnknownPlugin)
    );
    assert!(w.rt.plugins().is_empty());

    // A new file appearing is loaded.
    std::fs::copy(guest("noop"), w.dir.path().join("fresh.wasm")).expect("copy");
    assert!(eventually(WAIT, || current(&w.rt, "fresh").is_some()).await);
    let report = w.rt.run(task("fresh", json!({}))).await;
    assert_eq!(report.outcome, RunOutcome::Success { output: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_changes_reload_the_plugin() {
    let (w, v1) = watched("cfg", "v1");
    let config_of = |rt: Arc<Runtime>| async move {
        let report = rt.run(task("cfg", json!({"mode": "config"}))).await;
        serde_json::from_str::<Value>(&output(&report)).expect("json")
    };
    assert_eq!(config_of(w.rt.clone()).await, json!({}));
    let manifest = w.dir.path().join("cfg.toml");
    std::fs::write(&manifest, "[config]\ncolour = \"blue\"\n").expect("write");
    assert!(
        eventually(WAIT, || w.rt.plugins()[0].loaded_at_ms > 0
            && log_lines_containing("plugin `cfg` reloaded (manifest changed)")
                .len()
                == 1)
        .await
    );
    assert_eq!(config_of(w.rt.clone()).await, json!({"colour": "blue"}));
    assert_eq!(
        current(&w.rt, "cfg"),
        Some(v1.clone()),
        "same wasm, same digest"
    );
    assert_eq!(w.rt.plugins()[0].versions, std::slice::from_ref(&v1));

    std::fs::write(&manifest, "[config]\ncolour = \"red\"\ncolor = 1\n").expect("write");
    assert!(eventually(WAIT, || w.rt.plugins()[0].last_error.is_some()).await);
    let err = w.rt.plugins()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("invalid manifest cfg.toml"), "{err}");
    assert_eq!(config_of(w.rt.clone()).await, json!({"colour": "blue"}));

    std::fs::write(
        &manifest,
        "allowed_hosts = [\"x.example\"]\n[limits]\ncpu_ms = 77\n",
    )
    .expect("write");
    assert!(eventually(WAIT, || w.rt.plugins()[0].limits.cpu_ms == 77).await);
    let info = &w.rt.plugins()[0];
    assert_eq!(
        info.allowed_hosts,
        Vec::<String>::new(),
        "not granted by the operator"
    );
    assert_eq!(info.warnings.len(), 1, "{:?}", info.warnings);
    assert!(
        info.warnings[0].contains("`x.example`, not covered"),
        "{:?}",
        info.warnings
    );
    assert_eq!(config_of(w.rt.clone()).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_finish_on_their_version_and_pins_work() {
    let rx = Receiver::start().await;
    let mut cfg = config();
    cfg.grants.insert(
        "pin".into(),
        grant(
            &[&rx.addr.to_string()],
            kairos_runtime::LimitsOverride::default(),
        ),
    );
    let (rt, _) = runtime_with(cfg);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pin.wasm");
    let v1_bytes = variant(&guest("hostile"), "pin-v1");
    let v1 = sha256_hex(&v1_bytes);
    std::fs::write(&path, &v1_bytes).expect("write");
    assert!(rt.load_dir(dir.path()).errors.is_empty());

    let slow = {
        let rt = rt.clone();
        let url = rx.url("/slow/800");
        tokio::spawn(async move {
            rt.run(task("pin", json!({"mode": "http", "url": url})))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2_bytes = variant(&guest("hostile"), "pin-v2");
    let v2 = sha256_hex(&v2_bytes);
    std::fs::write(&path, &v2_bytes).expect("write");
    assert!(rt.load_dir(dir.path()).errors.is_empty());
    assert_eq!(current(&rt, "pin"), Some(v2.clone()));

    let report = slow.await.expect("join");
    assert_eq!(
        report.digest,
        Some(v1.clone()),
        "finished on the version it started on"
    );
    assert!(
        output(&report).contains("\"status\":200"),
        "{}",
        output(&report)
    );

    let mut pinned = task("pin", json!({"mode": "ok"}));
    pinned.pin_version = Some(v1.clone());
    let report = rt.run(pinned).await;
    assert_eq!(report.digest, Some(v1));
    assert_eq!(run_ok(&rt, "pin").await, Some(v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_versions_are_retained_up_to_the_limit() {
    let (rt, _) = runtime_with(config());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut digests = Vec::new();
    for i in 0..MAX_RETAINED + 2 {
        let bytes = variant(&guest("noop"), &format!("retain-{i}"));
        digests.push(sha256_hex(&bytes));
        std::fs::write(dir.path().join("keep.wasm"), &bytes).expect("write");
        let summary = rt.load_dir(dir.path());
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    }
    let versions = rt.plugins()[0].versions.clone();
    assert_eq!(versions.len(), MAX_RETAINED + 1);
    let newest_first: Vec<String> = digests
        .iter()
        .rev()
        .take(MAX_RETAINED + 1)
        .cloned()
        .collect();
    assert_eq!(versions, newest_first);
    let err = rt.resolve("keep", Some(&digests[0])).expect_err("dropped");
    assert_eq!(err.kind, FailureKind::UnknownVersion);
    assert_eq!(
        rt.resolve("keep", Some(&digests[1])).ok(),
        Some(digests[1].clone())
    );

    // Loading the same bytes again changes nothing.
    let before = rt.plugins();
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["keep"]);
    assert_eq!(rt.plugins(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_dir_reports_bad_files() {
    let (rt, _) = runtime_with(config());
    let dir = plugin_dir(&[(&guest("noop"), "good.wasm")]);
    std::fs::write(dir.path().join("junk.wasm"), b"definitely not wasm").expect("write");
    std::fs::copy(guest("noop"), dir.path().join("strict.wasm")).expect("copy");
    std::fs::write(
        dir.path().join("strict.toml"),
        "allowed_hosts = []\nmemory_mb = 3\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("README.md"), "not a plugin").expect("write");
    let summary = rt.load_dir(dir.path());
    assert_eq!(summary.loaded, ["good"]);
    assert_eq!(summary.errors.len(), 2, "{:?}", summary.errors);
    let junk = summary
        .errors
        .iter()
        .find(|e| e.plugin.as_deref() == Some("junk"));
    assert!(
        junk.is_some_and(|e| e.message.contains("not a valid WebAssembly component")),
        "{:?}",
        summary.errors
    );
    let strict = summary
        .errors
        .iter()
        .find(|e| e.plugin.as_deref() == Some("strict"));
    assert!(
        strict.is_some_and(
            |e| e.message.contains("invalid manifest strict.toml: line 2")
                && e.message.contains("unknown field `memory_mb`")
        ),
        "{:?}",
        summary.errors
    );
    assert!(rt.resolve("strict", None).is_err());

    let digest = sha256_hex(&std::fs::read(guest("noop")).expect("read"));
    assert_eq!(rt.load_file(&guest("noop")).ok(), Some(digest));
    assert!(rt.resolve("noop", None).is_ok());
    let err = rt
        .load_file(&dir.path().join("junk.wasm"))
        .expect_err("junk");
    assert!(
        err.message.contains("not a valid WebAssembly component"),
        "{err}"
    );
    let err = rt
        .load_file(&dir.path().join("missing.wasm"))
        .expect_err("missing");
    assert_eq!(err.message, "file not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_plugin_overrides_a_builtin_and_removing_it_falls_back() {
    captured();
    let (rt, _) = runtime_with(config());
    let builtin_bytes = variant(&guest("hostile"), "builtin");
    let builtin = sha256_hex(&builtin_bytes);
    assert_eq!(
        rt.load_builtin("over", builtin_bytes.clone()).ok(),
        Some(builtin.clone())
    );
    assert_eq!(rt.plugins()[0].source, PluginSource::Builtin);
    assert_eq!(run_ok(&rt, "over").await, Some(builtin.clone()));
    // The same built-in bytes again change nothing.
    let before = rt.plugins();
    assert_eq!(
        rt.load_builtin("over", builtin_bytes.clone()).ok(),
        Some(builtin.clone())
    );
    assert_eq!(rt.plugins(), before);

    // A directory's file of the same name overrides it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("over.wasm");
    let dir_bytes = variant(&guest("hostile"), "from-dir");
    let from_dir = sha256_hex(&dir_bytes);
    std::fs::write(&path, &dir_bytes).expect("write");
    assert_eq!(rt.load_dir(dir.path()).loaded, ["over"]);
    let cancel = CancellationToken::new();
    rt.spawn_watcher(dir.path().to_path_buf(), cancel.clone())
        .expect("watcher");
    let info = rt.plugins().remove(0);
    assert_eq!(info.source, PluginSource::Dir(dir.path().to_path_buf()));
    assert_eq!(info.versions, [from_dir.clone(), builtin.clone()]);
    assert_eq!(run_ok(&rt, "over").await, Some(from_dir.clone()));
    // Registering the built-in version again does not displace the directory's.
    assert_eq!(
        rt.load_builtin("over", builtin_bytes).ok(),
        Some(builtin.clone())
    );
    assert_eq!(current(&rt, "over"), Some(from_dir.clone()));

    // Removing the file brings the built-in version back, not nothing.
    std::fs::remove_file(&path).expect("remove");
    assert!(
        eventually(WAIT, || current(&rt, "over") == Some(builtin.clone())).await,
        "did not fall back to the built-in version: {:?}",
        rt.plugins()
    );
    assert_eq!(rt.plugins()[0].source, PluginSource::Builtin);
    assert_eq!(run_ok(&rt, "over").await, Some(builtin.clone()));
    assert_eq!(
        log_lines_containing("plugin `over` serves its built-in version again").len(),
        1
    );
    // A task pinned to the directory's version still runs it.
    let mut pinned = task("over", json!({"mode": "ok"}));
    pinned.pin_version = Some(from_dir.clone());
    assert_eq!(rt.run(pinned).await.digest, Some(from_dir.clone()));

    // A new file overrides it again.
    std::fs::write(&path, &dir_bytes).expect("write");
    assert!(eventually(WAIT, || current(&rt, "over") == Some(from_dir.clone())).await);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_builtin_bytes_and_names_are_refused() {
    let (rt, _) = runtime_with(config());
    let err = rt
        .load_builtin("junk", b"not wasm".to_vec())
        .expect_err("junk");
    assert_eq!(err.plugin.as_deref(), Some("junk"));
    assert!(
        err.message.contains("not a valid WebAssembly component"),
        "{err}"
    );
    assert!(rt.resolve("junk", None).is_err());
    let bytes = std::fs::read(guest("noop")).expect("read");
    assert!(rt.load_builtin("a b", bytes).is_err());
    assert!(rt.plugins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rejected_files_are_reported_once_and_other_ones_each_time() {
    captured();
    let (rt, _) = runtime_with(config());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("again.wasm");
    let good = variant(&guest("hostile"), "v1");
    std::fs::write(&path, &good).expect("write");
    let v1 = rt.load_file(&path).expect("good file loads");
    let lines = || log_lines_containing("rejected new version of plugin `again`").len();
    let half: &[u8] = &good[..good.len() / 2];
    let core_module: &[u8] = b"\0asm\x01\0\0\0";
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes).expect("write");
        rt.load_file(&path).map_err(|e| e.message)
    };

    // The same broken file twice (as a second file-system event for one write would load
    // it): the same error each time, logged once.
    let first = load(half).expect_err("half a component is rejected");
    assert_eq!(lines(), 1);
    assert_eq!(load(half).expect_err("still rejected"), first);
    assert_eq!(lines(), 1, "the same files are not reported again");
    // Another broken file is reported, and so is the first one again after it.
    let other = load(core_module).expect_err("a core module is rejected");
    assert_ne!(other, first);
    assert_eq!(lines(), 2);
    assert_eq!(load(half).expect_err("rejected"), first);
    assert_eq!(lines(), 3);
    // A manifest beside it makes them different files.
    std::fs::write(dir.path().join("again.toml"), "").expect("manifest");
    assert_eq!(load(half).expect_err("rejected"), first);
    assert_eq!(lines(), 4);
    std::fs::remove_file(dir.path().join("again.toml")).expect("remove manifest");
    // Fixing the file clears the error and the memory of the rejection.
    assert_eq!(load(&good), Ok(v1.clone()));
    assert!(rt.plugins()[0].last_error.is_none());
    assert_eq!(load(half).expect_err("rejected"), first);
    assert_eq!(lines(), 5, "reported again after a good version in between");
    assert!(
        rt.plugins()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e == first),
        "{:?}",
        rt.plugins()[0].last_error
    );
    assert_eq!(current(&rt, "again"), Some(v1));
}
