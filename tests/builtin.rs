//! The binary carries its standard plugins: copied out of the build tree it serves `notify`,
//! `alerting` and `chores` with no plugin directory; a directory adds to them and overrides
//! them by name (deleting the file brings the built-in version back); `builtin_plugins = false`
//! turns them off; `kairos plugin list/run` use them without `--plugins`.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;
use support::{Receiver, Server, free_port, kairos_bin, write_config};

const STANDARD: [&str; 3] = ["notify", "alerting", "chores"];

/// The target directory the binary under test was built in.
fn target_dir() -> PathBuf {
    Path::new(kairos_bin())
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The digest of the standard plugin `name` as `build.rs` built it (`<target>/plugins`).
fn built_digest(name: &str) -> String {
    sha256_file(&target_dir().join("plugins").join(format!("{name}.wasm")))
}

fn test_guest(name: &str) -> PathBuf {
    Path::new(kairos_runtime::TEST_GUESTS_DIR).join(format!("{name}.wasm"))
}

/// A copy of the `kairos` binary in `dir` (outside the target tree).
fn copied_binary(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let bin = bin_dir.join("kairos");
    std::fs::copy(kairos_bin(), &bin).expect("copy the kairos binary");
    assert!(!bin.starts_with(target_dir()), "{}", bin.display());
    bin
}

/// Whether the file at `path` holds the bytes of `needle` (ASCII), read in chunks.
fn file_contains(path: &Path, needle: &str) -> bool {
    const CHUNK: usize = 32 << 20;
    let mut file = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; CHUNK];
    let keep = needle.len().saturating_sub(1);
    let mut filled = 0;
    loop {
        let n = file.read(&mut buf[filled..]).expect("read");
        let end = filled + n;
        // Lossy decoding never swallows an ASCII byte, so an ASCII needle survives it.
        if String::from_utf8_lossy(&buf[..end]).contains(needle) {
            return true;
        }
        if n == 0 {
            return false;
        }
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        filled = end - tail;
    }
}

/// Writes `top` (top-level keys) above what `write_config` wrote.
fn with_top_level(config: &Path, top: &str) {
    let text = std::fs::read_to_string(config).expect("config");
    std::fs::write(config, format!("{top}\n{text}")).expect("config");
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn plugins(s: &Server) -> Vec<Value> {
    let (code, v) = s.call("GET", "/v1/plugins", None);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().expect("an array")
}

fn plugin<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|p| p["name"] == name)
}

fn enqueue(s: &Server, plugin: &str, key: &str, payload: Value) -> (u16, Value) {
    let body = json!({ "plugin": plugin, "key": key, "payload": payload }).to_string();
    s.call("POST", "/v1/tasks", Some(&body))
}

/// Waits for task `id` to succeed; returns it.
fn succeeded(s: &Server, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, t) = s.call("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(code, 200, "{t}");
        if t["state"] == "succeeded" {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "task {id} did not succeed: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(bin: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .current_dir(cwd)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kairos")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_copied_binary_serves_its_builtin_plugins_with_no_plugin_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let bin = copied_binary(dir.path());
    // Nothing of the build tree's plugin directories is baked in.
    for sub in ["plugins", "test-guests"] {
        let path = target_dir().join(sub).display().to_string();
        assert!(
            !file_contains(&bin, &path),
            "the binary holds the build path {path}"
        );
    }
    let rx = Receiver::start();
    let config = write_config(dir.path(), free_port(), &rx.addr, "");
    assert!(
        !std::fs::read_to_string(&config)
            .expect("config")
            .contains("plugins_dir")
    );
    let server = Server::start_bin(&bin, &config, Some(dir.path()));

    let list = plugins(&server);
    for name in STANDARD {
        let p = plugin(&list, name).unwrap_or_else(|| panic!("{name} not listed: {list:?}"));
        assert_eq!(p["source"], "builtin", "{p}");
        assert_eq!(p["loaded"], true, "{p}");
        assert_eq!(p["digest"], built_digest(name), "{p}");
    }
    assert_eq!(list.len(), STANDARD.len(), "{list:?}");

    let (code, v) = enqueue(
        &server,
        "notify",
        "builtin-1",
        json!({ "url": rx.url(), "message": "from anywhere" }),
    );
    assert_eq!(code, 201, "{v}");
    let got = rx.wait_for("the notify POST", Duration::from_secs(30), |b| {
        !b.is_empty()
    });
    assert_eq!(got[0]["message"], "from anywhere", "{got:?}");
    let t = succeeded(&server, v["id"].as_str().expect("id"));
    assert_eq!(
        t["history"][0]["plugin_digest"],
        built_digest("notify"),
        "{t}"
    );
}

#[test]
fn plugin_list_and_run_use_the_builtin_plugins_without_plugins() {
    let dir = tempfile::tempdir().expect("tmp");
    let bin = copied_binary(dir.path());
    let out = run(&bin, dir.path(), &["plugin", "list"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for name in STANDARD {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        assert!(line.contains(&built_digest(name)), "{line}");
        assert!(line.trim_end().ends_with("builtin"), "{line}");
    }
    assert!(!stdout.contains("rejected"), "{stdout}");

    // With a config granting the receiver (and no plugin directory), notify delivers.
    let rx = Receiver::start();
    let config = write_config(dir.path(), free_port(), &rx.addr, "");
    let payload = json!({ "url": rx.url(), "message": "from the CLI" }).to_string();
    let out = run(
        &bin,
        dir.path(),
        &[
            "plugin",
            "run",
            "notify",
            "--payload",
            &payload,
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "plugin:   notify {} (builtin)",
            built_digest("notify")
        )),
        "{stdout}"
    );
    assert_eq!(rx.received()[0]["message"], "from the CLI");

    // Without the grant the plugin still loads; its request is refused.
    let out = run(
        &bin,
        dir.path(),
        &["plugin", "run", "notify", "--payload", &payload],
    );
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains(&built_digest("notify")), "{stdout}");
    assert!(!stdout.contains("(not loaded)"), "{stdout}");
    assert_eq!(rx.received().len(), 1);
}

#[test]
fn a_directory_plugin_overrides_a_builtin_and_deleting_it_falls_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugins dir");
    // Another `notify`: the no-op test guest, which posts nothing.
    let file = plugin_dir.join("notify.wasm");
    std::fs::copy(test_guest("noop"), &file).expect("copy noop");
    let noop = sha256_file(&file);
    let builtin = built_digest("notify");
    assert_ne!(noop, builtin);

    let rx = Receiver::start();
    let config = write_config(dir.path(), free_port(), &rx.addr, "");
    with_top_level(
        &config,
        &format!("plugins_dir = {}", toml_path(&plugin_dir)),
    );
    let server = Server::start(&config);

    let list = plugins(&server);
    let notify = plugin(&list, "notify").expect("notify listed");
    assert_eq!(notify["digest"], noop, "{notify}");
    assert_eq!(
        notify["source"],
        plugin_dir.display().to_string(),
        "{notify}"
    );
    for name in ["alerting", "chores"] {
        let p = plugin(&list, name).unwrap_or_else(|| panic!("{name}: {list:?}"));
        assert_eq!(p["source"], "builtin", "{p}");
    }
    let (code, v) = enqueue(
        &server,
        "notify",
        "override-1",
        json!({ "url": rx.url(), "message": "to the dir's notify" }),
    );
    assert_eq!(code, 201, "{v}");
    let t = succeeded(&server, v["id"].as_str().expect("id"));
    assert_eq!(t["history"][0]["plugin_digest"], noop, "{t}");
    assert!(rx.received().is_empty(), "the no-op posts nothing");

    // Deleting the file brings the built-in version back, not nothing.
    std::fs::remove_file(&file).expect("remove notify.wasm");
    let start = Instant::now();
    loop {
        let list = plugins(&server);
        let notify = plugin(&list, "notify").cloned();
        if let Some(n) = &notify
            && n["source"] == "builtin"
        {
            assert_eq!(n["digest"], builtin, "{n}");
            assert_eq!(n["loaded"], true, "{n}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "notify did not fall back to the built-in version: {notify:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = enqueue(
        &server,
        "notify",
        "override-2",
        json!({ "url": rx.url(), "message": "to the builtin notify" }),
    );
    assert_eq!(code, 201, "{v}");
    let got = rx.wait_for("the builtin's POST", Duration::from_secs(30), |b| {
        !b.is_empty()
    });
    assert_eq!(got[0]["message"], "to the builtin notify");
    let t = succeeded(&server, v["id"].as_str().expect("id"));
    assert_eq!(t["history"][0]["plugin_digest"], builtin, "{t}");
}

#[test]
fn builtin_plugins_false_serves_only_the_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugins dir");
    std::fs::copy(test_guest("noop"), plugin_dir.join("noop.wasm")).expect("copy noop");
    let rx = Receiver::start();
    let config = write_config(dir.path(), free_port(), &rx.addr, "");
    with_top_level(
        &config,
        &format!(
            "builtin_plugins = false\nplugins_dir = {}",
            toml_path(&plugin_dir)
        ),
    );
    let server = Server::start(&config);

    let names: Vec<Value> = plugins(&server).iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, [json!("noop")]);
    let (code, v) = enqueue(&server, "notify", "off", json!({ "url": rx.url() }));
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("unknown plugin"),
        "{v}"
    );
    let (code, v) = enqueue(&server, "noop", "off", json!({}));
    assert_eq!(code, 201, "{v}");
    succeeded(&server, v["id"].as_str().expect("id"));

    // The CLI reads the same config.
    let cfg = config.to_str().expect("utf-8 path");
    let out = run(
        Path::new(kairos_bin()),
        dir.path(),
        &["plugin", "list", "--config", cfg],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["noop"], "{stdout}");
    let out = run(
        Path::new(kairos_bin()),
        dir.path(),
        &["plugin", "run", "notify", "--config", cfg],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("(not loaded)"),
        "{}",
        text(&out.stdout)
    );
}
