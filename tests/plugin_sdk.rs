//! Plugins in Rust, Python and JavaScript, from `kairos plugin new` to a task on a running
//! node, and hostile Python and JavaScript guests contained (the Rust ones are in
//! host/runtime's tests). Needs componentize-py in the repository's `.venv-plugins`
//! and componentize-js in `.node-plugins` (`scripts/setup-plugins`, run by `scripts/test`);
//! without them the tests fail saying so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Loading a 19 MB Python component compiles it; debug-built hosts take a while.
const LOAD_WAIT: Duration = Duration::from_secs(240);

fn componentize_py() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-plugins/bin/componentize-py");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup-plugins (scripts/test does)",
        p.display()
    );
    p
}

fn node_modules() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.node-plugins/node_modules");
    assert!(
        p.join("@bytecodealliance/componentize-js").is_dir(),
        "{} has no componentize-js: run scripts/setup-plugins (scripts/test does)",
        p.display()
    );
    p
}

fn kairos(args: &[&str], cwd: &Path) -> Output {
    Command::new(kairos_bin())
        .args(args)
        .current_dir(cwd)
        .env("KAIROS_COMPONENTIZE_PY", componentize_py())
        .env("KAIROS_NODE_MODULES", node_modules())
        .env("RUST_LOG", "warn")
        // A Rust plugin builds into its project's own target/ (not the one running this test).
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run kairos")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `outcome:` line of `kairos plugin run` as JSON.
fn outcome_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("outcome:"))
        .unwrap_or_else(|| {
            panic!(
                "no outcome in {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line.trim()).expect("outcome JSON")
}

fn wait_task(s: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (code, t) = s.call("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(code, 200, "{t}");
        if done(&t) {
            return t;
        }
        assert!(start.elapsed() < LOAD_WAIT, "task {id} did not finish: {t}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_python_plugin_goes_from_plugin_new_to_a_task_on_a_running_node() {
    from_new_to_a_task("python", &["app.py", "README.md", "test_app.py"]);
}

#[test]
fn a_javascript_plugin_goes_from_plugin_new_to_a_task_on_a_running_node() {
    from_new_to_a_task(
        "js",
        &[
            "app.js",
            "package.json",
            "README.md",
            "test.mjs",
            "jsconfig.json",
            "types/index.d.ts",
        ],
    );
}

/// `tsc -p jsconfig.json` in `dir`, with the TypeScript of `.node-plugins`.
fn tsc(dir: &Path) -> Output {
    Command::new("node")
        .arg(node_modules().join("typescript/bin/tsc"))
        .args(["-p", "jsconfig.json"])
        .current_dir(dir)
        .output()
        .expect("run node (tsc)")
}

/// The JavaScript SDK's declarations are built on types generated from `wit/plugin.wit`
/// (`plugin-sdk/js/generate-types.mjs`; `--check` fails when the WIT changed and they were
/// not regenerated), and a new project carries them: its `app.js`, and the example's, type-check
/// against them, and a misuse of the SDK does not.
#[test]
fn the_javascript_sdk_types_follow_the_wit_and_check_a_new_project() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("node")
        .arg(repo.join("plugin-sdk/js/generate-types.mjs"))
        .arg("--check")
        .env("KAIROS_NODE_MODULES", node_modules())
        .output()
        .expect("run node");
    ok(&out, "generate-types.mjs --check");

    let tmp = tempfile::tempdir().expect("tmp");
    ok(
        &kairos(&["plugin", "new", "hello", "--lang", "js"], tmp.path()),
        "plugin new",
    );
    let project = tmp.path().join("hello");
    ok(&tsc(&project), "tsc on the new project's app.js");

    std::fs::copy(
        repo.join("plugins/examples/js/app.js"),
        project.join("app.js"),
    )
    .expect("copy the example");
    ok(&tsc(&project), "tsc on plugins/examples/js/app.js");

    // Calls the WIT does not have, and a payload typed by the plugin used wrongly.
    std::fs::write(
        project.join("app.js"),
        "import { task, log, schedule } from '@kairos/plugin';\n\
         export const run = task((t) => {\n\
           log.information('hi');\n\
           schedule('other', t.key, {}, { delayMs: 'soon' });\n\
           return t.dueAtMs.toUpperCase();\n\
         });\n",
    )
    .expect("write app.js");
    let out = tsc(&project);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "tsc accepted a misuse:\n{text}");
    for wanted in [
        "'information'",
        "'string' is not assignable to type 'number'",
        "'toUpperCase'",
    ] {
        assert!(text.contains(wanted), "tsc names {wanted}:\n{text}");
    }
}

#[test]
fn a_rust_plugin_goes_from_plugin_new_to_a_task_on_a_running_node() {
    from_new_to_a_task(
        "rust",
        &[
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "sdk/kairos-plugin-sdk/Cargo.toml",
            "sdk/wit/plugin.wit",
        ],
    );
}

/// The README's path for a newcomer: `plugin new`, `plugin build`, copy into the plugins dir
/// of a running node, enqueue, see it succeed.
fn from_new_to_a_task(lang: &str, files: &[&str]) {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = kairos(&["plugin", "new", "hello", "--lang", lang], tmp.path());
    ok(&out, "plugin new");
    let project = tmp.path().join("hello");
    for f in files {
        assert!(project.join(f).is_file(), "plugin new wrote {f}");
    }
    let out = kairos(&["plugin", "build", "hello"], tmp.path());
    ok(&out, "plugin build");
    let wasm = project.join("hello.wasm");
    assert!(wasm.is_file(), "plugin build wrote hello.wasm");
    if lang == "rust" {
        // The project's local test, as its README says.
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--quiet"])
            .current_dir(&project)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo test");
        ok(&out, "cargo test in the new Rust project");
    }

    // A running node hot-loads it from its plugins directory.
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let port = free_port();
    let config = tmp.path().join("kairos.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nplugins_dir = \"{}\"\n\n[plugin.hello.config]\ngreeting = \"Bonjour\"\n",
            tmp.path().join("data").display(),
            plugins.display()
        ),
    )
    .expect("config");
    let s = Server::start(&config);
    std::fs::copy(&wasm, plugins.join("hello.wasm")).expect("copy hello.wasm");
    let start = Instant::now();
    loop {
        let (_, list) = s.call("GET", "/v1/plugins", None);
        if list.as_array().is_some_and(|l| {
            l.iter()
                .any(|p| p["name"] == "hello" && p["loaded"] == true)
        }) {
            break;
        }
        assert!(
            start.elapsed() < LOAD_WAIT,
            "hello was not hot-loaded: {list}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let body = json!({"plugin": "hello", "key": "greet", "payload": {"name": "Ada"}}).to_string();
    let (code, v) = s.call("POST", "/v1/tasks", Some(&body));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let t = wait_task(&s, &id, |t| {
        t["state"] != "scheduled" && t["state"] != "running"
    });
    assert_eq!(t["state"], "succeeded", "{t}");
    let output: Value = serde_json::from_str(t["output"].as_str().expect("output")).expect("JSON");
    assert_eq!(
        output["message"], "Bonjour, Ada!",
        "config reached the plugin: {t}"
    );
    assert_eq!(output["runs"], 1, "{t}");
    let logs = t["history"][0]["logs"].as_str().unwrap_or_default();
    assert!(logs.contains("greeted") && logs.contains("name=Ada"), "{t}");

    // The kv count carries over to the next task; a payload without a name is permanent.
    let body = json!({"plugin": "hello", "key": "greet", "payload": {"name": "Grace"}}).to_string();
    let (_, v) = s.call("POST", "/v1/tasks", Some(&body));
    let t = wait_task(&s, v["id"].as_str().expect("id"), |t| {
        t["state"] == "succeeded"
    });
    assert!(
        t["output"]
            .as_str()
            .is_some_and(|o| o.contains("\"runs\":2")),
        "{t}"
    );
    let body = json!({"plugin": "hello", "key": "bad", "payload": {}}).to_string();
    let (_, v) = s.call("POST", "/v1/tasks", Some(&body));
    let t = wait_task(&s, v["id"].as_str().expect("id"), |t| t["state"] == "dead");
    assert_eq!(t["attempts"], 1, "permanent: no retry: {t}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the payload needs a name")),
        "{t}"
    );
}

const HOSTILE_PY: &str = r#"
from kairos_plugin import Retry, log, schedule, task

@task
def run(t):
    mode = t.payload.get("mode")
    if mode == "loop":
        while True:
            pass
    if mode == "bomb":
        hoard = []
        while True:
            hoard.append(bytearray(8 << 20))
    if mode == "raise":
        raise ValueError("a bug in the plugin")
    if mode == "retry":
        raise Retry("the backend is busy", retry_after_ms=5000)
    if mode == "follow":
        return schedule("hostile", t.key, {"mode": "done"}, delay_ms=1000)
    log.info("done")
    return None
"#;

const HOSTILE_JS: &str = r#"
import { Retry, log, schedule, task } from '@kairos/plugin';

export const run = task((t) => {
  const mode = t.payload.mode;
  if (mode === 'loop') { for (;;) {} }
  if (mode === 'bomb') { const hoard = []; for (;;) hoard.push(new Array(1 << 20).fill(7)); }
  if (mode === 'raise') throw new TypeError('a bug in the plugin');
  if (mode === 'retry') throw new Retry('the backend is busy', { retryAfterMs: 5000 });
  if (mode === 'follow') return schedule('hostile', t.key, { mode: 'done' }, { delayMs: 1000 });
  log.info('done');
  return null;
});
"#;

#[test]
fn python_plugins_that_loop_eat_memory_or_raise_are_contained_with_clear_reasons() {
    hostile_guests_are_contained(
        "app.py",
        HOSTILE_PY,
        "ValueError: a bug in the plugin",
        "MemoryError",
    );
}

#[test]
fn javascript_plugins_that_loop_eat_memory_or_raise_are_contained_with_clear_reasons() {
    hostile_guests_are_contained(
        "app.js",
        HOSTILE_JS,
        "TypeError: a bug in the plugin",
        "out of memory",
    );
}

/// The hostile modes: an endless loop, a memory bomb, an uncaught exception; and the SDK's
/// retry and follow-up.
fn hostile_guests_are_contained(file: &str, source: &str, raised: &str, oom: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = tmp.path().join("hostile");
    std::fs::create_dir_all(&project).expect("project");
    std::fs::write(project.join(file), source).expect("source");
    if file.ends_with(".js") {
        std::fs::write(project.join("package.json"), "{\"type\": \"module\"}")
            .expect("package.json");
    }
    ok(
        &kairos(&["plugin", "build", "hostile"], tmp.path()),
        "plugin build",
    );
    let config = tmp.path().join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\ncpu_ms = 1000\ntimeout_ms = 5000\nmemory_mb = 64\n",
    )
    .expect("config");
    let run = |mode: &str| {
        let payload = json!({ "mode": mode }).to_string();
        let dir = project.to_string_lossy().to_string();
        let cfg = config.to_string_lossy().to_string();
        let args = [
            "plugin",
            "run",
            "hostile",
            "--plugins",
            &dir,
            "--config",
            &cfg,
            "--payload",
            &payload,
        ];
        let out = kairos(&args, tmp.path());
        (outcome_of(&out), out)
    };

    let (o, _) = run("loop");
    assert_eq!(o["outcome"], "failed", "{o}");
    assert!(o["kind"] == "cpu_limit" || o["kind"] == "timeout", "{o}");

    let (o, _) = run("bomb");
    let contained = (o["outcome"] == "failed" && o["kind"] == "out_of_memory")
        || (o["outcome"] == "retryable" && o["message"].as_str().is_some_and(|m| m.contains(oom)));
    assert!(contained, "the memory bomb is refused memory: {o}");

    let (o, out) = run("raise");
    assert_eq!(o["outcome"], "retryable", "{o}");
    assert_eq!(o["message"], raised, "{o}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("uncaught exception"),
        "the exception is logged: {stdout}"
    );

    let (o, _) = run("retry");
    assert_eq!(
        o,
        json!({"outcome": "retryable", "message": "the backend is busy", "retry_after_ms": 5000})
    );

    let (o, out) = run("follow");
    assert_eq!(o["outcome"], "success", "{o}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("follow-up tasks") && stdout.contains("\\\"mode\\\":\\\"done\\\""),
        "the follow-up was scheduled: {stdout}"
    );
}

/// `plugins/examples/{rust,python,js}`: the same incident notifier in three languages, each
/// built with its real toolchain by `kairos plugin build`, then run on a live node: each posts
/// to an allowed local receiver (config and kv in the body) and schedules its reminder, which
/// runs and posts again.
#[test]
fn the_example_plugin_in_rust_python_and_js_posts_and_follows_up_on_a_live_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let langs = ["rust", "python", "js"];
    for lang in langs {
        let out = plugins.join(format!("incident-{lang}.wasm"));
        let built = Command::new(kairos_bin())
            .args(["plugin", "build"])
            .arg(repo.join("plugins/examples").join(lang))
            .arg("--out")
            .arg(&out)
            .env("KAIROS_COMPONENTIZE_PY", componentize_py())
            .env("KAIROS_NODE_MODULES", node_modules())
            .env("RUST_LOG", "warn")
            // The Rust example builds into this test's scratch space, not the source tree.
            .env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples"),
            )
            .output()
            .expect("run kairos plugin build");
        ok(&built, &format!("plugin build plugins/examples/{lang}"));
        assert!(out.is_file(), "{} written", out.display());
    }

    let rx = Receiver::start();
    let port = free_port();
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nplugins_dir = \"{}\"\n",
        tmp.path().join("data").display(),
        plugins.display()
    );
    for lang in langs {
        text.push_str(&format!(
            "\n[plugin.incident-{lang}]\nallowed_hosts = [\"{}\"]\n[plugin.incident-{lang}.config]\nchannel = \"pager-{lang}\"\n",
            rx.addr
        ));
    }
    let config = tmp.path().join("kairos.toml");
    std::fs::write(&config, text).expect("config");
    let s = Server::start(&config);
    let mut ids = Vec::new();
    for lang in langs {
        let body = json!({
            "plugin": format!("incident-{lang}"),
            "key": format!("incident-{lang}"),
            "payload": {"incident": format!("42-{lang}"), "url": rx.url(), "message": "disk full", "remind_in_ms": 300},
        })
        .to_string();
        let (code, v) = s.call("POST", "/v1/tasks", Some(&body));
        assert_eq!(code, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    rx.wait_for("a notice and a reminder from each", LOAD_WAIT, |b| {
        b.len() >= 6
    });
    for (lang, id) in langs.iter().zip(&ids) {
        let t = wait_task(&s, id, |t| {
            t["state"] == "succeeded" || t["state"] == "dead"
        });
        assert_eq!(t["state"], "succeeded", "{lang}: {t}");
        let output: Value =
            serde_json::from_str(t["output"].as_str().expect("output")).expect("output JSON");
        let follow_up = output["follow_up"].as_str().expect("a follow-up id");
        let f = wait_task(&s, follow_up, |t| t["state"] == "succeeded");
        assert_eq!(f["plugin"], format!("incident-{lang}"), "{f}");
        let mut got: Vec<Value> = rx
            .received()
            .into_iter()
            .filter(|b| b["lang"] == *lang)
            .collect();
        got.sort_by_key(|b| b["count"].as_u64());
        assert_eq!(got.len(), 2, "{lang}: {got:?}");
        for (i, b) in got.iter().enumerate() {
            assert_eq!(b["incident"], format!("42-{lang}"), "{b}");
            assert_eq!(
                b["channel"],
                format!("pager-{lang}"),
                "config reached it: {b}"
            );
            assert_eq!(b["count"], i as u64 + 1, "kv counted: {b}");
            assert_eq!(b["reminder"], i == 1, "{b}");
        }
        assert_eq!(got[0]["task"], id.as_str());
        assert_eq!(got[1]["task"], follow_up);
    }
}
