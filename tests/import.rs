//! `kairos task add --file`: bulk import through `POST /v1/tasks/batch`, against a real node
//! and against a fake batch endpoint that fails on purpose (503s, batches too large).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{Receiver, Server, free_port, kairos_bin, write_config};

/// `kairos task add --file FILE --server BASE ARGS…`; `stdin` is piped in with `--file -`.
fn import(base: &str, file: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(kairos_bin())
        .args(["task", "add", "--file", file, "--server", base])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kairos task add --file");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("kairos task add --file")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every task on the node, all pages.
fn all_tasks(server: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/tasks?limit=1000", server.base);
        if let Some(c) = &cursor {
            url += &format!("&cursor={c}");
        }
        let r = server.agent.get(&url).call().expect("GET /v1/tasks");
        cursor = r.header("kairos-next-cursor").map(str::to_string);
        let page: Vec<Value> = r.into_json().expect("a JSON array");
        let n = page.len();
        out.extend(page);
        if cursor.is_none() || n == 0 {
            return out;
        }
    }
}

/// A valid task for line `line`, due in an hour (it stays `scheduled` during the test).
fn task_line(line: usize) -> String {
    json!({ "plugin": "notify", "key": format!("k{}", line % 37), "delay_ms": 3_600_000,
            "payload": { "line": line } })
    .to_string()
}

#[test]
fn a_jsonl_import_reports_rejected_lines_and_stores_exactly_the_rest() {
    const LINES: usize = 1_204;
    const MALFORMED: usize = 17;
    const BLANK: usize = 18;
    const UNKNOWN_PLUGIN: usize = 777; // in the second batch of 500
    const FIRST_UNIQUE: usize = 40;
    const DUPLICATE: usize = 1_100; // same uniqueness key as line 40, third batch
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let server = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    let mut file = String::new();
    for line in 1..=LINES {
        let l = match line {
            MALFORMED => r#"{"plugin": "notify", "key": "#.to_string(),
            BLANK => "   ".to_string(),
            UNKNOWN_PLUGIN => json!({ "plugin": "nope", "key": "k" }).to_string(),
            FIRST_UNIQUE | DUPLICATE => json!({ "plugin": "notify", "key": "u",
                "delay_ms": 3_600_000, "uniqueness_key": "once", "payload": { "line": line } })
            .to_string(),
            _ => task_line(line),
        };
        file += &l;
        file.push('\n');
    }
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(&path, &file).expect("write tasks.jsonl");
    let out = import(
        &server.base,
        path.to_str().expect("utf-8 path"),
        &["--batch-size", "500"],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // 1,204 lines: one blank, one malformed, one unknown plugin, one duplicate.
    let want_accepted = LINES - 4;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("accepted {want_accepted}, duplicates 1, rejected 2").as_str()),
        "{stdout}"
    );
    assert_eq!(lines.len(), 3, "one line per rejected line: {stdout}");
    assert!(
        lines[1].starts_with(&format!("line {MALFORMED}: invalid JSON: ")),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(&format!("line {UNKNOWN_PLUGIN}: unknown plugin `nope`")),
        "the server's message, without the batch index: {stdout}"
    );
    // stderr is not a terminal: plain progress lines, the last one complete.
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert!(
        stderr.contains(&format!("import: {LINES}/{LINES} lines (100%), ")),
        "{stderr}"
    );

    // The node holds exactly the accepted lines, once each.
    let tasks = all_tasks(&server);
    let mut by_line: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &tasks {
        let line = t["payload"]["line"]
            .as_u64()
            .unwrap_or_else(|| panic!("{t}"));
        *by_line.entry(line).or_default() += 1;
    }
    let want: BTreeSet<u64> = (1..=LINES as u64)
        .filter(|l| ![MALFORMED, BLANK, UNKNOWN_PLUGIN, DUPLICATE].contains(&(*l as usize)))
        .collect();
    assert_eq!(tasks.len(), want_accepted, "tasks on the node");
    assert_eq!(by_line.keys().copied().collect::<BTreeSet<_>>(), want);
    assert!(by_line.values().all(|n| *n == 1), "a line imported twice");
    assert!(
        tasks.iter().all(|t| t["plugin"] == "notify"),
        "no task for the unknown plugin"
    );
    // The duplicate line kept the first line's task; the others got this import's keys.
    let once: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["uniqueness_key"] == "once")
        .collect();
    assert_eq!(once.len(), 1);
    assert_eq!(once[0]["payload"]["line"], FIRST_UNIQUE as u64);
    let t2 = tasks
        .iter()
        .find(|t| t["payload"]["line"] == 2)
        .expect("line 2");
    let key = t2["uniqueness_key"].as_str().unwrap_or_default();
    assert!(key.starts_with("import:") && key.ends_with(":2"), "{key}");
}

#[test]
fn a_stopped_import_says_where_to_resume_and_the_resume_imports_nothing_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let file: String = (1..=500).map(|l| task_line(l) + "\n").collect();
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(&path, &file).expect("write");
    let path = path.to_str().expect("utf-8 path");

    // No server: retried a few times, then a stop (exit 2) saying how to resume.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let out = import(&nobody, path, &["--import-id", "run1"], None);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.starts_with("accepted 0, duplicates 0, rejected 0\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stopped at line 1: cannot reach the server"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--file {path} --skip-lines 0 --import-id run1")),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr).matches("trying again").count(),
        4,
        "{}",
        text(&out.stderr)
    );

    // A run that stored lines 1-300 before it stopped (said to resume at 200: its last
    // batch's answer was lost); the resume from stdin finds 201-300 stored already.
    let rx = Receiver::start();
    let server = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    let first: String = file.lines().take(300).map(|l| format!("{l}\n")).collect();
    let out = import(
        &server.base,
        "-",
        &["--import-id", "run1"],
        Some(first.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "accepted 300, duplicates 0, rejected 0\n"
    );
    let out = import(
        &server.base,
        "-",
        &[
            "--skip-lines",
            "200",
            "--import-id",
            "run1",
            "--batch-size",
            "64",
        ],
        Some(file.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "accepted 200, duplicates 100, rejected 0\n"
    );
    assert_eq!(all_tasks(&server).len(), 500);
}

/// A fake `POST /v1/tasks/batch`: answers each request by `answer(request number, tasks)`,
/// recording the tasks of every request.
struct FakeApi {
    base: String,
    requests: Arc<Mutex<Vec<Vec<Value>>>>,
    _rt: tokio::runtime::Runtime,
}

type Answer = Box<dyn Fn(usize, &[Value]) -> (u16, Value) + Send + Sync>;

impl FakeApi {
    fn start(answer: Answer) -> FakeApi {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (reqs, answer) = (requests.clone(), Arc::new(answer));
        rt.spawn(async move {
            let app = axum::Router::new().route(
                "/v1/tasks/batch",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let (reqs, answer) = (reqs.clone(), answer.clone());
                    async move {
                        let tasks: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
                        let n = {
                            let mut r = reqs.lock().expect("lock");
                            r.push(tasks.clone());
                            r.len()
                        };
                        let (code, v) = answer(n, &tasks);
                        (
                            axum::http::StatusCode::from_u16(code).expect("status"),
                            axum::Json(v),
                        )
                    }
                }),
            );
            let _ = axum::serve(listener, app).await;
        });
        FakeApi {
            base,
            requests,
            _rt: rt,
        }
    }
}

fn stored(tasks: &[Value], duplicate: bool) -> (u16, Value) {
    let v: Vec<Value> = tasks
        .iter()
        .map(|_| json!({ "id": "x", "partition": 0, "run_at": "", "duplicate": duplicate }))
        .collect();
    (201, Value::Array(v))
}

fn write_lines(dir: &Path, n: usize) -> String {
    let path = dir.join("tasks.jsonl");
    let file: String = (1..=n).map(|l| task_line(l) + "\n").collect();
    std::fs::write(&path, file).expect("write");
    path.to_str().expect("utf-8 path").to_string()
}

#[test]
fn transient_failures_are_retried_and_a_lost_answer_is_not_counted_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write_lines(dir.path(), 10);
    // Two 503s, then the batch comes back as duplicates of this import's own keys: the try
    // whose answer was lost had stored it. Accepted, not duplicates.
    let fake = FakeApi::start(Box::new(|n, tasks| match n {
        1 | 2 => (503, json!({ "error": "the store cannot write" })),
        _ => stored(tasks, true),
    }));
    let out = import(&fake.base, &path, &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "accepted 10, duplicates 0, rejected 0\n");
    let reqs = fake.requests.lock().expect("lock").clone();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter().all(|r| *r == reqs[0]),
        "every try sends the same tasks"
    );
    assert!(
        reqs[0].iter().all(|t| t["uniqueness_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("import:"))),
        "{:?}",
        reqs[0]
    );

    // Always 503: five tries, then a stop.
    let fake = FakeApi::start(Box::new(|_, _| (503, json!({ "error": "busy" }))));
    let out = import(&fake.base, &path, &["--import-id", "x"], None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert_eq!(fake.requests.lock().expect("lock").len(), 5);
    assert!(
        stdout.contains("stopped at line 1: server answered 503: busy (tried 5 times)"),
        "{stdout}"
    );
}

#[test]
fn a_batch_refused_as_a_whole_is_split_and_an_indexed_refusal_drops_only_that_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write_lines(dir.path(), 1_000);
    // Over 100 tasks: 413 naming no task. Line 250 (wherever it is in a batch): 422 naming it.
    let fake = FakeApi::start(Box::new(|_, tasks| {
        if tasks.len() > 100 {
            return (
                413,
                json!({ "error": "request body is over the limit of 1 bytes" }),
            );
        }
        match tasks.iter().position(|t| t["payload"]["line"] == 250) {
            Some(i) => (
                422,
                json!({ "error": format!("task [{i}]: unknown plugin `x`"), "index": i }),
            ),
            None => stored(tasks, false),
        }
    }));
    let out = import(&fake.base, &path, &[], None);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout,
        "accepted 999, duplicates 0, rejected 1\nline 250: unknown plugin `x`\n"
    );
    let reqs = fake.requests.lock().expect("lock").clone();
    let sent: Vec<u64> = reqs
        .iter()
        .filter(|r| r.len() <= 100 && !r.iter().any(|t| t["payload"]["line"] == 250))
        .flat_map(|r| {
            r.iter()
                .map(|t| t["payload"]["line"].as_u64().expect("line"))
        })
        .collect();
    assert_eq!(
        sent,
        (1..=1_000).filter(|l| *l != 250).collect::<Vec<_>>(),
        "each line stored once, in order"
    );
    // Halved to 500, 250, 125, 62: from then on batches of at most 62.
    let too_large = reqs.iter().filter(|r| r.len() > 100).count();
    assert_eq!(
        too_large,
        3,
        "batch sizes: {:?}",
        reqs.iter().map(Vec::len).collect::<Vec<_>>()
    );
}
