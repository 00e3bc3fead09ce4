//! End-to-end: the real `kairos` binary on its embedded default, tasks enqueued over HTTP,
//! the standard `notify` / `alerting` plugins POSTing to a local receiver.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Receiver, Server, free_port, write_config};

fn task(key: &str, url: &str, seq: usize, delay_ms: u64) -> Value {
    json!({ "plugin": "notify", "key": key, "delay_ms": delay_ms,
            "payload": { "url": url, "message": format!("m{seq}"), "seq": seq } })
}

#[test]
fn notify_posts_arrive_in_order_per_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let server = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    let keys = ["incident-1", "incident-2", "incident-3"];
    let n = 30;
    // Far enough ahead that all 30 are enqueued before the first is due, however slow the
    // machine: a task enqueued after an earlier-due one of its key already ran comes after it.
    let base = chrono::Utc::now() + chrono::Duration::milliseconds(5_000);
    for i in 0..n {
        let key = keys[i % keys.len()];
        // Later-enqueued tasks of a key are due earlier than some enqueued before them: order is
        // (due time, enqueue sequence), not arrival.
        let due = if i % 2 == 0 {
            base + chrono::Duration::milliseconds(100)
        } else {
            base
        };
        let mut t = task(key, &rx.url(), i, 0);
        t.as_object_mut().expect("object").remove("delay_ms");
        t["run_at"] = json!(due.to_rfc3339());
        let (code, body) = server.call("POST", "/v1/tasks", Some(&t.to_string()));
        assert_eq!(code, 201, "{body}");
        assert!(
            body["id"].is_string() && body["partition"].is_u64(),
            "{body}"
        );
    }
    let got = rx.wait_for("all notify POSTs", Duration::from_secs(30), |b| {
        b.len() >= n
    });
    assert_eq!(got.len(), n, "each task posts exactly once");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for b in &got {
        assert_eq!(b["attempt"], 1);
        assert!(b["task_id"].is_string() && b["message"].is_string(), "{b}");
        per_key
            .entry(b["key"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(b["seq"].as_u64().unwrap_or(0));
    }
    for (key, seqs) in per_key {
        let mut want = seqs.clone();
        // Odd sequence numbers were due first, then even ones (100 ms later).
        want.sort_by_key(|s| (s % 2 == 0, *s));
        assert_eq!(seqs, want, "order of key {key}");
    }
    // The task record shows success and its history.
    let id = got[0]["task_id"].as_str().unwrap_or_default();
    let (code, t) = server.call("GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["history"][0]["outcome"], "succeeded", "{t}");
    // The counter moves once the attempt's end is handled, a moment after the POST arrived.
    let want = format!("kairos_tasks_executed_total{{outcome=\"succeeded\"}} {n}");
    let start = std::time::Instant::now();
    loop {
        let (_, metrics) = server.call("GET", "/metrics", None);
        let text = metrics.as_str().unwrap_or_default().to_string();
        if text.contains(&want) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_requests_get_clear_errors_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let server = Server::start(&write_config(
        dir.path(),
        free_port(),
        &rx.addr,
        "[tasks]\nmax_payload_bytes = 1024",
    ));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            "{\"plugin\": \"notify\", ".into(),
            400,
            "malformed JSON",
        ),
        (
            "missing field",
            json!({ "plugin": "notify" }).to_string(),
            400,
            "missing field `key`",
        ),
        (
            "unknown plugin",
            json!({ "plugin": "nope", "key": "k" }).to_string(),
            422,
            "unknown plugin",
        ),
        (
            "bad time",
            json!({ "plugin": "notify", "key": "k", "run_at": "tomorrow" }).to_string(),
            400,
            "RFC 3339",
        ),
        (
            "past time",
            json!({ "plugin": "notify", "key": "k", "run_at": "2020-01-01T00:00:00Z" }).to_string(),
            400,
            "in the past",
        ),
        (
            "oversized payload",
            json!({ "plugin": "notify", "key": "k", "payload": { "x": "y".repeat(2000) } })
                .to_string(),
            413,
            "over the limit",
        ),
        (
            "oversized key",
            json!({ "plugin": "notify", "key": "k".repeat(2000) }).to_string(),
            413,
            "`key` is 2000 bytes, over the limit of 1024",
        ),
        (
            "oversized uniqueness key",
            json!({ "plugin": "notify", "key": "k", "uniqueness_key": "u".repeat(5000) })
                .to_string(),
            413,
            "`uniqueness_key` is 5000 bytes",
        ),
        (
            "unknown field",
            json!({ "plugin": "notify", "key": "k", "colour": 1 }).to_string(),
            400,
            "unknown field",
        ),
    ];
    for (what, body, status, needle) in cases {
        let (code, resp) = server.call("POST", "/v1/tasks", Some(&body));
        assert_eq!(code, status, "{what}: {resp}");
        let msg = resp["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {resp}"));
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should mention {needle:?}"
        );
    }
    // A batch with one bad task is refused whole, naming it; nothing of it is stored.
    let batch = json!([task("b", &rx.url(), 1, 0), { "plugin": "nope", "key": "b" }]).to_string();
    let (code, resp) = server.call("POST", "/v1/tasks/batch", Some(&batch));
    assert_eq!(code, 422, "{resp}");
    assert!(
        resp["error"].as_str().unwrap_or("").contains("task [1]"),
        "{resp}"
    );
    assert_eq!(resp["index"], 1, "the index, machine-readable: {resp}");
    // An element that is not a task at all is named too (parsed one by one).
    let batch =
        json!([task("b", &rx.url(), 1, 0), task("b", &rx.url(), 2, 0), { "plugin": "notify" }])
            .to_string();
    let (code, resp) = server.call("POST", "/v1/tasks/batch", Some(&batch));
    assert_eq!(code, 400, "{resp}");
    assert_eq!(resp["index"], 2, "{resp}");
    assert_eq!(
        resp["error"], "task [2]: invalid request: missing field `key`",
        "{resp}"
    );
    // Errors about the batch as a whole name no task.
    let (code, resp) = server.call("POST", "/v1/tasks/batch", Some("[]"));
    assert_eq!(code, 400, "{resp}");
    assert!(resp.get("index").is_none(), "{resp}");
    let (_, listed) = server.call("GET", "/v1/tasks?key=b", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    // Unknown ids and states.
    assert_eq!(server.call("GET", "/v1/tasks/nope", None).0, 404);
    assert_eq!(server.call("DELETE", "/v1/tasks/nope", None).0, 404);
    assert_eq!(server.call("GET", "/v1/tasks?state=bogus", None).0, 400);
    // Good requests still work afterwards; dedup answers 200 with the same id.
    let good = json!({ "plugin": "notify", "key": "k", "uniqueness_key": "once",
                       "payload": { "url": rx.url(), "message": "hi" } })
    .to_string();
    let (c1, r1) = server.call("POST", "/v1/tasks", Some(&good));
    let (c2, r2) = server.call("POST", "/v1/tasks", Some(&good));
    assert_eq!((c1, c2), (201, 200), "{r1} {r2}");
    assert_eq!(r1["id"], r2["id"]);
    rx.wait_for("the deduplicated task", Duration::from_secs(20), |b| {
        !b.is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx.received().len(),
        1,
        "a duplicate enqueue never runs twice"
    );
}

#[test]
fn kill_9_mid_run_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let config = write_config(dir.path(), free_port(), &rx.addr, "");
    let server = Server::start(&config);
    let n = 400;
    let mut acked = HashSet::new();
    for chunk in 0..4 {
        let batch: Vec<Value> = (0..n / 4)
            .map(|i| {
                task(
                    &format!("k{}", i % 40),
                    &rx.url(),
                    chunk * 100 + i,
                    100 + (i as u64 * 25),
                )
            })
            .collect();
        let (code, resp) = server.call(
            "POST",
            "/v1/tasks/batch",
            Some(&Value::Array(batch).to_string()),
        );
        assert_eq!(code, 201, "{resp}");
        for r in resp.as_array().expect("array") {
            acked.insert(r["id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(acked.len(), n);
    // Tasks are due over ~2.6 s; kill the server in the middle of it.
    rx.wait_for("some tasks to run", Duration::from_secs(20), |b| {
        b.len() >= 20
    });
    server.kill9();
    let before = rx.received().len();
    assert!(
        before < n,
        "the kill came too late to test anything ({before} of {n} done)"
    );
    let server = Server::start(&config);
    let got = rx.wait_for("every acknowledged task", Duration::from_secs(60), |b| {
        let ids: HashSet<&str> = b.iter().filter_map(|v| v["task_id"].as_str()).collect();
        acked.iter().all(|id| ids.contains(id.as_str()))
    });
    let ids: HashSet<&str> = got.iter().filter_map(|v| v["task_id"].as_str()).collect();
    assert_eq!(ids.len(), n);
    // At-least-once: only attempts that were in flight at the kill may repeat.
    assert!(
        got.len() - n <= 64,
        "{} duplicate deliveries",
        got.len() - n
    );
    assert_eq!(
        server.terminate(),
        Some(0),
        "SIGTERM stops the node cleanly"
    );
}

#[test]
fn escalation_fires_level_by_level_and_stops_after_ack() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let server = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    let policy = json!([
        { "after_ms": 0, "targets": [rx.url()] },
        { "after_ms": 300, "targets": [rx.url(), rx.url()] },
        { "after_ms": 4000, "targets": [rx.url()] },
    ]);
    let start = json!({ "plugin": "alerting", "key": "incident-42",
                        "payload": { "incident": "incident-42", "policy": policy, "level": 0 } });
    assert_eq!(
        server.call("POST", "/v1/tasks", Some(&start.to_string())).0,
        201
    );
    // Level 0 (one target), then level 1 (two targets).
    rx.wait_for("levels 0 and 1", Duration::from_secs(20), |b| b.len() >= 3);
    let ack = json!({ "plugin": "alerting", "key": "incident-42",
                      "payload": { "incident": "incident-42", "action": "ack" } });
    assert_eq!(
        server.call("POST", "/v1/tasks", Some(&ack.to_string())).0,
        201
    );
    // Past the time level 2 was due (4 s after level 1 ran, which was before the ack).
    std::thread::sleep(Duration::from_millis(5_500));
    let got = rx.received();
    assert_eq!(got.len(), 3, "level 2 must not fire after the ack: {got:?}");
    assert!(got.iter().all(|b| b["key"] == "incident-42"), "{got:?}");
}
