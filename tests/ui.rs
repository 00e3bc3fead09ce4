//! The status page in a real browser: headless Chromium drives `/ui` of a real node over the
//! DevTools protocol. Signs in with a token, checks that the counts shown equal the API's,
//! clicks Retry on a dead task and sees it succeed, and saves a screenshot: in the target
//! directory, or over `docs/status-page.png` (the README shows it) when
//! `KAIROS_UPDATE_SCREENSHOT=1`, so running the tests leaves the work tree clean.

mod browser;
mod support;

use std::path::Path;
use std::time::Duration;

use browser::Browser;
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn counts_of(s: &Server, token: &str) -> Value {
    let (code, v) = s.call_as(Some(token), "GET", "/v1/stats", None);
    assert_eq!(code, 200, "{v}");
    v["counts"].clone()
}

fn wait_counts(s: &Server, token: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let c = counts_of(s, token);
        if cond(&c) {
            return c;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const STATES: [&str; 6] = [
    "scheduled",
    "running",
    "retrying",
    "dead",
    "cancelled",
    "succeeded",
];

/// The counts the page shows, as a JSON object of numbers.
const PAGE_COUNTS: &str = r##"(() => { const o = {}; for (const s of ["scheduled","running","retrying","dead","cancelled","succeeded"]) { o[s] = Number(document.getElementById("count-" + s).textContent); } return o; })()"##;

#[test]
fn the_status_page_shows_the_apis_numbers_and_retries_a_dead_task() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    *rx.status.lock().expect("lock") = 500;
    // The standard plugins are built in; the directory gets a broken file later.
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let (ops, ops_cfg) = new_token("oncall", &["read", "enqueue", "operate"]);
    let port = free_port();
    let config = dir.path().join("kairos.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nplugins_dir = \"{}\"\n\n[scheduler]\nshutdown_grace_ms = 5000\n\n{ops_cfg}\n[plugin.notify]\nallowed_hosts = [\"{addr}\"]\n[plugin.alerting]\nmay_schedule = [\"notify\"]\n",
            dir.path().join("data").display(),
            plugins.display(),
            addr = rx.addr,
        ),
    )
    .expect("config");
    let s = Server::start(&config);
    let call = |method: &str, path: &str, body: Value| {
        let body = body.to_string();
        let (code, v) = s.call_as(
            Some(&ops),
            method,
            path,
            (method != "GET").then_some(body.as_str()),
        );
        assert!(code < 300, "{method} {path}: {code} {v}");
        v
    };

    // One task dies: the receiver answers 500 and it has a single attempt.
    let dead = call(
        "POST",
        "/v1/tasks",
        json!({"plugin": "notify", "key": "billing-7", "max_attempts": 1,
               "payload": {"url": rx.url(), "message": "invoice run failed"}}),
    );
    let dead_id = dead["id"].as_str().expect("id").to_string();
    wait_counts(&s, &ops, "the task to die", |c| c["dead"] == 1);
    *rx.status.lock().expect("lock") = 200;
    // The tour's escalation and its ack, three notifications, four tasks due later, one
    // cancelled, and a schedule.
    call(
        "POST",
        "/v1/tasks",
        json!({"plugin": "alerting", "key": "incident-42", "payload": {"incident": "incident-42", "level": 0,
               "policy": [{"after_ms": 0, "targets": [rx.url()]}, {"after_ms": 30000, "targets": [rx.url()]}]}}),
    );
    call(
        "POST",
        "/v1/tasks",
        json!({"plugin": "alerting", "key": "incident-42", "payload": {"incident": "incident-42", "action": "ack"}}),
    );
    for i in 0..3 {
        call(
            "POST",
            "/v1/tasks",
            json!({"plugin": "notify", "key": format!("deploy-{i}"), "payload": {"url": rx.url(), "message": "deployed"}}),
        );
    }
    for i in 0..4 {
        call(
            "POST",
            "/v1/tasks",
            json!({"plugin": "notify", "key": format!("reminder-{i}"), "delay_ms": 3_600_000,
                   "payload": {"url": rx.url(), "message": "standup"}}),
        );
    }
    let doomed = call(
        "POST",
        "/v1/tasks",
        json!({"plugin": "notify", "key": "reminder-9", "delay_ms": 3_600_000, "payload": {"url": rx.url()}}),
    );
    call(
        "DELETE",
        &format!("/v1/tasks/{}", doomed["id"].as_str().expect("id")),
        json!({}),
    );
    call(
        "POST",
        "/v1/schedules",
        json!({"name": "daily-digest", "cron": "0 9 * * *", "plugin": "notify", "key": "digest",
               "payload": {"url": rx.url()}, "timezone": "Europe/Berlin"}),
    );
    // A corrupt plugin file is rejected and shown with its error.
    std::fs::write(plugins.join("broken.wasm"), b"not a component").expect("write broken.wasm");
    let settled = wait_counts(&s, &ops, "the tasks to settle", |c| {
        c["running"] == 0 && c["retrying"] == 0 && c["succeeded"].as_u64() >= Some(4)
    });
    assert_eq!(settled["dead"], 1, "{settled}");
    assert_eq!(settled["cancelled"], 1, "{settled}");
    assert!(settled["scheduled"].as_u64() >= Some(4), "{settled}");

    let mut b = Browser::launch();
    let base = format!("http://127.0.0.1:{port}");
    b.navigate(&format!("{base}/"));
    // Without a token the API refuses and the page says so.
    b.wait_for(
        "the sign-in prompt",
        WAIT,
        r##"!document.getElementById("error").hidden && document.getElementById("error").textContent.includes("Sign in")"##,
    );
    assert_eq!(
        b.eval("location.pathname"),
        json!("/ui"),
        "/ redirects to /ui"
    );
    b.eval(&format!(
        r##"document.getElementById("token").value = {}; document.querySelector("#login button[type=submit]").click(); true"##,
        json!(ops)
    ));
    b.wait_for(
        "the first refresh",
        WAIT,
        r##"document.body.dataset.ready === "true""##,
    );

    // The counts shown equal the API's (the page refreshes every 1.5 s; nothing changes now).
    let api = counts_of(&s, &ops);
    let start = std::time::Instant::now();
    loop {
        let page = b.eval(PAGE_COUNTS);
        if STATES.iter().all(|k| page[k] == api[k]) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the page shows {page}, the API says {api}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let slots = b.eval(r##"document.getElementById("slots").textContent"##);
    let (_, stats) = s.call_as(Some(&ops), "GET", "/v1/stats", None);
    assert!(
        slots
            .as_str()
            .is_some_and(|t| t.ends_with(&format!("/ {}", stats["slots"]["total"]))),
        "slots shown {slots}, API {stats}"
    );

    // Plugins: the loaded ones with their counts, and the rejected file with its error.
    let notify_runs = b.wait_for(
        "notify's success count",
        WAIT,
        r##"(() => { const r = document.querySelector('tr[data-plugin="notify"]'); return r && Number(r.children[4].textContent) >= 3 ? r.children[4].textContent : null; })()"##,
    );
    assert!(notify_runs.as_str().is_some(), "{notify_runs}");
    let broken = b.wait_for(
        "the rejected plugin's error",
        WAIT,
        r##"(() => { const r = document.querySelector('tr[data-plugin="broken"]'); return r && r.textContent; })()"##,
    );
    assert!(
        broken.as_str().is_some_and(|t| t.contains("not loaded")),
        "{broken}"
    );
    // Partitions: every one owned by this node, none moving.
    let (_, parts) = s.call_as(Some(&ops), "GET", "/v1/partitions", None);
    let shown = b.eval(r##"document.querySelectorAll("#partition-grid .tile").length"##);
    assert_eq!(shown, parts["count"], "{parts}");
    assert_eq!(parts["moving"], 0, "{parts}");
    // The schedule with its next three occurrences.
    let schedule = b.wait_for(
        "the schedule",
        WAIT,
        r##"(() => { const r = document.querySelector("#schedule-rows tr"); return r && r.textContent.includes("daily-digest") && r.querySelectorAll(".occurrence").length; })()"##,
    );
    assert_eq!(schedule, json!(3), "the next three occurrences");

    // The dead task is listed with its error; Retry runs it again and the page shows it
    // succeed (the receiver answers 200 now).
    let row = format!(r##"document.querySelector('#dead-rows tr[data-task-id="{dead_id}"]')"##);
    let error = b.wait_for(
        "the dead task's row",
        WAIT,
        &format!("(() => {{ const r = {row}; return r && r.children[4].textContent; }})()"),
    );
    assert!(
        error.as_str().is_some_and(|e| e.contains("500")),
        "the dead task's error is shown: {error}"
    );
    // With the last attempt's log lines (notify logs the answer's status).
    let logs = b.wait_for(
        "the dead task's log lines",
        WAIT,
        &format!("(() => {{ const r = {row}; return r && r.children[5].textContent; }})()"),
    );
    assert!(
        logs.as_str()
            .is_some_and(|l| l.contains("notification posted") && l.contains("500")),
        "the dead task's log lines are shown: {logs}"
    );
    b.eval(&format!(
        "{row}.querySelector('button.retry').click(); true"
    ));
    b.wait_for(
        "the retried task to succeed on the page",
        WAIT,
        r##"(() => { const e = document.getElementById("task-state"); return e && e.textContent === "succeeded"; })()"##,
    );
    b.wait_for(
        "the dead list to empty",
        WAIT,
        &format!(r##"!{row} && document.getElementById("count-dead").textContent === "0""##),
    );
    let (_, task) = s.call_as(Some(&ops), "GET", &format!("/v1/tasks/{dead_id}"), None);
    assert_eq!(task["state"], "succeeded", "{task}");
    let attempts = b.eval(r##"document.querySelectorAll("#task .attempt").length"##);
    assert_eq!(attempts, json!(2), "the timeline shows both attempts");
    let timeline_logs = b.eval(r##"document.querySelectorAll("#task .attempt pre").length"##);
    assert_eq!(timeline_logs, json!(2), "each attempt shows its log lines");

    // The escalation and its ack, for the README.
    b.eval(
        r##"document.getElementById("find-input").value = "incident-42"; document.querySelector("#find button").click(); true"##,
    );
    b.wait_for(
        "the incident's tasks",
        WAIT,
        r##"document.querySelectorAll("#task .task").length >= 2"##,
    );
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = if std::env::var_os("KAIROS_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png")
    };
    std::fs::write(&out, &png).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    eprintln!("status page screenshot: {}", out.display());
}
