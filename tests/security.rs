//! The API's hostile suite: every request below was accepted by an earlier Kairos (c5d4fee)
//! and must now be refused with a clear JSON error, losing nothing that was accepted.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use kairos_conformance::tmpfs::{Tmpfs, is_root};
use serde_json::{Value, json};
use support::{Receiver, Server, free_port, kairos_bin, new_token, token_and_config, write_config};

/// One raw HTTP/1.1 exchange (so that Host, Origin and Content-Type are exactly as written).
fn raw(base: &str, request: &str) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

fn post(
    base: &str,
    host: &str,
    extra_headers: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    raw(
        base,
        &format!(
            "POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn host_of(base: &str) -> &str {
    base.trim_start_matches("http://")
}

fn task_body(rx: &Receiver, key: &str) -> String {
    json!({ "plugin": "notify", "key": key, "payload": { "url": rx.url(), "message": key } })
        .to_string()
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error in {v}"))
}

#[test]
fn tokens_are_required_and_scopes_decide() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let (enq, enq_cfg) = new_token("producer", &["enqueue"]);
    let (reader, reader_cfg) = new_token("dashboard", &["read"]);
    let (ops, ops_cfg) = new_token("oncall", &["operate", "read"]);
    let port = free_port();
    let s = Server::start(&write_config(
        dir.path(),
        port,
        &rx.addr,
        &format!(
            "{enq_cfg}
{reader_cfg}
{ops_cfg}"
        ),
    ));

    // No token, a wrong one: 401 with a JSON error; nothing is stored.
    let (code, v) = s.call_as(None, "POST", "/v1/tasks", Some(&task_body(&rx, "a")));
    assert_eq!(code, 401, "{v}");
    assert!(error_of(&v).contains("Bearer"), "{v}");
    let (code, v) = s.call_as(Some("kairos_0000"), "GET", "/v1/tasks", None);
    assert_eq!((code, error_of(&v)), (401, "unknown token"));
    // /healthz stays open for load balancers, /metrics for scrapers (unless
    // `api.metrics_token`, below).
    assert_eq!(s.call_as(None, "GET", "/healthz", None).0, 200);
    assert_eq!(s.call_as(None, "GET", "/metrics", None).0, 200);

    // Scopes.
    let (code, created) = s.call_as(Some(&enq), "POST", "/v1/tasks", Some(&task_body(&rx, "a")));
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let (code, v) = s.call_as(Some(&enq), "GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(code, 403, "{v}");
    assert!(error_of(&v).contains("`read`"), "{v}");
    assert_eq!(
        s.call_as(Some(&reader), "GET", &format!("/v1/tasks/{id}"), None)
            .0,
        200
    );
    let (code, v) = s.call_as(Some(&reader), "POST", "/v1/keys/a/pause", None);
    assert_eq!(code, 403, "{v}");
    assert!(error_of(&v).contains("`operate`"), "{v}");
    let (code, v) = s.call_as(
        Some(&reader),
        "POST",
        "/v1/tasks",
        Some(&task_body(&rx, "b")),
    );
    assert_eq!(code, 403, "{v}");
    let (code, v) = s.call_as(Some(&ops), "POST", "/v1/keys/other-team/pause", None);
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.call_as(Some(&ops), "POST", "/v1/tasks", Some(&task_body(&rx, "c")));
    assert_eq!(code, 403, "operate does not include enqueue: {v}");

    // The accepted task ran; the refused ones were never stored.
    rx.wait_for("the accepted task", Duration::from_secs(20), |b| {
        !b.is_empty()
    });
    let (_, listed) = s.call_as(Some(&reader), "GET", "/v1/tasks?key=b", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // The CLI sends its token.
    let out = Command::new(kairos_bin())
        .args(["task", "get", &id, "--server", &s.base, "--token", &reader])
        .output()
        .expect("kairos task get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(kairos_bin())
        .args(["task", "get", &id, "--server", &s.base])
        .env_remove("KAIROS_TOKEN")
        .output()
        .expect("kairos task get");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn browser_requests_and_rebound_hosts_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let s = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    let host = host_of(&s.base).to_string();
    let body = task_body(&rx, "web");

    // A web page can POST text/plain or a form without a preflight: 415.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (code, v) = post(&s.base, &host, "", ct, &body);
        assert_eq!(code, 415, "{ct}: {v}");
        assert!(error_of(&v).contains("application/json"), "{v}");
    }
    // DNS rebinding: the page's own name in Host.
    let (code, v) = post(&s.base, "evil.example", "", "application/json", &body);
    assert_eq!(code, 421, "{v}");
    assert!(error_of(&v).contains("evil.example"), "{v}");
    let (code, _) = raw(
        &s.base,
        "GET /v1/tasks HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 421);
    // A cross-site fetch carries its Origin.
    let (code, v) = post(
        &s.base,
        &host,
        "Origin: http://evil.example\r\n",
        "application/json",
        &body,
    );
    assert_eq!(code, 403, "{v}");
    let (code, _) = post(
        &s.base,
        &host,
        "Origin: null\r\n",
        "application/json",
        &body,
    );
    assert_eq!(code, 403);
    // Forwarded-request headers do not make a request trusted.
    let (code, v) = raw(
        &s.base,
        &format!(
            "DELETE /v1/tasks/x HTTP/1.1\r\nHost: {host}\r\nx-kairos-forwarded: node-9\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 401, "{v}");

    // Nothing of the above was stored; the same request done right is accepted.
    let (_, listed) = s.call("GET", "/v1/tasks?key=web", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let (code, v) = post(
        &s.base,
        &format!("localhost:{}", host.rsplit(':').next().unwrap_or("")),
        &format!("Origin: http://{host}\r\n"),
        "application/json; charset=utf-8",
        &body,
    );
    assert_eq!(code, 201, "{v}");
}

#[test]
fn an_open_api_is_not_served_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let port = free_port();
    let config = write_config(dir.path(), port, &rx.addr, "");
    let out = Command::new(kairos_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .output()
        .expect("kairos serve");
    assert!(
        !out.status.success(),
        "serve exposed an unauthenticated API"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0"),
        "{err}"
    );
    assert!(err.contains("api.tokens"), "{err}");
}

#[test]
fn idle_slow_and_excess_connections_are_shed() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let s = Server::start(&write_config(
        dir.path(),
        free_port(),
        &rx.addr,
        "[api]\nmax_connections = 8\nheader_timeout_ms = 4000",
    ));
    let addr = host_of(&s.base).to_string();
    // Idle connections and slowloris ones (headers that never end) take the slots; the
    // first one past the limit is told 503 and closed at once.
    let mut held = Vec::new();
    let mut shed = None;
    for i in 0..12 {
        let mut c = TcpStream::connect(&addr).expect("connect");
        if i % 2 == 1 {
            c.write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("partial headers");
        }
        // Short while the slots fill; longer once the next one should be the 503 (a late
        // answer must not count as a held connection).
        let wait = if held.len() >= 7 { 1_000 } else { 200 };
        c.set_read_timeout(Some(Duration::from_millis(wait)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {
                shed = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
            _ => held.push(c),
        }
    }
    let shed = shed.expect("a connection past the limit is answered");
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(shed.contains("too many open connections"), "{shed}");
    // (The harness's own pooled connection may hold a slot too.)
    assert!(
        (7..=8).contains(&held.len()),
        "{} held before the 503",
        held.len()
    );
    // The held ones are closed by the header timeout, which frees the slots.
    let start = Instant::now();
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // a 408 before the close
            }
        }
    }
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "connections held for {waited:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.call("GET", "/healthz", None).0, 200);
}

#[test]
fn a_token_over_its_rate_gets_429() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let (token, cfg) = new_token("noisy", &["read"]);
    let (other, other_cfg) = new_token("quiet", &["read"]);
    let s = Server::start(&write_config(
        dir.path(),
        free_port(),
        &rx.addr,
        &format!("[api]\nrate_limit_per_s = 5\n{cfg}\n{other_cfg}"),
    ));
    let codes: Vec<u16> = (0..40)
        .map(|_| s.call_as(Some(&token), "GET", "/v1/plugins", None).0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 10,
        "burst of 2x: {codes:?}"
    );
    let (code, v) = s.call_as(Some(&token), "GET", "/v1/plugins", None);
    assert_eq!(code, 429, "{v}");
    assert!(error_of(&v).contains("rate limit"), "{v}");
    // Another token has its own budget.
    assert_eq!(s.call_as(Some(&other), "GET", "/v1/plugins", None).0, 200);
}

/// A tmpfs mounted for one test, unmounted on drop.
#[test]
fn a_full_disk_stops_work_and_recovers_without_a_restart() {
    if !is_root() {
        eprintln!(
            "NOT RUN: a_full_disk_stops_work_and_recovers_without_a_restart needs root to mount a tmpfs"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "48m").expect("mount a 48 MiB tmpfs (running as root)");
    let rx = Receiver::start();
    let port = free_port();
    let config = dir.path().join("kairos.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[store]\ntype = \"embedded\"\nmin_free_mb = 16\n[scheduler]\nshutdown_grace_ms = 2000\n[plugin.notify]\nallowed_hosts = [\"{}\"]\n",
            mnt.join("data").display(),
            rx.addr
        ),
    )
    .expect("config");
    let s = Server::start(&config);
    // Accepted before the disk fills: due in 3 s.
    let mut accepted = Vec::new();
    for i in 0..5 {
        let body = json!({ "plugin": "notify", "key": format!("k{i}"), "delay_ms": 3000,
                           "payload": { "url": rx.url(), "message": i } })
        .to_string();
        let (code, v) = s.call("POST", "/v1/tasks", Some(&body));
        assert_eq!(code, 201, "{v}");
        accepted.push(v["id"].as_str().expect("id").to_string());
    }
    // Fill the disk.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 256 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    // Enqueues now fail with 503 and a clear message (not 500), and /healthz says why.
    let big = "x".repeat(200 * 1024);
    let mut refused = None;
    for i in 0..100 {
        let body = json!({ "plugin": "notify", "key": "full", "delay_ms": 600_000, "payload": { "url": rx.url(), "pad": big, "i": i } })
            .to_string();
        let (code, v) = s.call("POST", "/v1/tasks", Some(&body));
        if code != 201 {
            refused = Some((code, v));
            break;
        }
    }
    let (code, v) = refused.expect("an enqueue is refused on a full disk");
    assert_eq!(code, 503, "{v}");
    assert!(
        error_of(&v).contains("I/O") || error_of(&v).contains("cannot write"),
        "{v}"
    );
    let (code, h) = s.call("GET", "/healthz", None);
    assert_eq!(code, 503, "{h}");
    assert!(error_of(&h).contains("cannot write"), "{h}");
    // The accepted tasks fall due meanwhile: each runs at most once (an attempt whose start
    // cannot be recorded does not run, so none repeats).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(s.call("GET", "/healthz", None).0, 503);
    let during = rx.received();
    for id in &accepted {
        let n = during
            .iter()
            .filter(|x| x["task_id"].as_str() == Some(id.as_str()))
            .count();
        assert!(
            n <= 1,
            "task {id} delivered {n} times while the disk was full"
        );
    }

    // Space comes back: the store reopens by itself, with nothing lost.
    std::fs::remove_file(&filler).expect("free the space");
    let start = Instant::now();
    while s.call("GET", "/healthz", None).0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the store did not recover"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = json!({ "plugin": "notify", "key": "after", "payload": { "url": rx.url(), "message": "after" } })
        .to_string();
    let (code, v) = s.call("POST", "/v1/tasks", Some(&body));
    assert_eq!(code, 201, "{v}");
    accepted.push(v["id"].as_str().expect("id").to_string());
    rx.wait_for("every accepted task", Duration::from_secs(60), |b| {
        accepted
            .iter()
            .all(|id| b.iter().any(|x| x["task_id"].as_str() == Some(id.as_str())))
    });
    let got = rx.received();
    for id in &accepted {
        let n = got
            .iter()
            .filter(|x| x["task_id"].as_str() == Some(id.as_str()))
            .count();
        assert_eq!(n, 1, "task {id} delivered {n} times");
    }
    drop(s);
}

#[test]
fn a_claimed_uniqueness_key_does_not_silence_a_plugins_follow_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let s = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    // Someone claims the key the escalation's first notification will use, far in the future.
    let squat = json!({ "plugin": "notify", "key": "squat", "uniqueness_key": "alert:inc-7:0:0",
                        "delay_ms": 3_600_000, "payload": { "url": rx.url(), "message": "squat" } });
    assert_eq!(s.call("POST", "/v1/tasks", Some(&squat.to_string())).0, 201);
    let start = json!({ "plugin": "alerting", "key": "inc-7",
                        "payload": { "incident": "inc-7", "level": 0,
                                     "policy": [{ "after_ms": 0, "targets": [rx.url()] }] } });
    assert_eq!(s.call("POST", "/v1/tasks", Some(&start.to_string())).0, 201);
    // The page still goes out: the plugin's key lives in its own namespace.
    rx.wait_for("the escalation's page", Duration::from_secs(20), |b| {
        b.iter().any(|x| x["key"] == "inc-7")
    });
}

/// One HTTPS GET over a client that trusts only `ca` (DER); the status line, or the error.
fn https_get(port: u16, ca: &[u8], path: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connector = tokio_rustls::TlsConnector::from(support::client_trusting(ca));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let req =
            format!("GET {path} HTTP/1.1\r\nhost: localhost:{port}\r\nconnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        Ok(text.lines().next().unwrap_or_default().to_string())
    })
}

#[test]
fn metrics_needs_a_token_with_metrics_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    // The issue's spelling of the command: `token create --name N --scopes a,b`.
    let out = Command::new(kairos_bin())
        .args([
            "token",
            "create",
            "--name",
            "scraper",
            "--scopes",
            "read,enqueue",
        ])
        .output()
        .expect("kairos token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (token, cfg_lines) = token_and_config(&String::from_utf8_lossy(&out.stdout));
    assert!(
        cfg_lines.contains(r#"scopes = ["read", "enqueue"]"#),
        "{cfg_lines}"
    );
    let extra = format!("[api]\nmetrics_token = true\n{cfg_lines}");
    let s = Server::start(&write_config(dir.path(), free_port(), &rx.addr, &extra));
    assert_eq!(s.call_as(None, "GET", "/metrics", None).0, 401);
    assert_eq!(s.call_as(Some(&token), "GET", "/metrics", None).0, 200);
    assert_eq!(s.call_as(None, "GET", "/healthz", None).0, 200);
}

#[test]
fn the_api_serves_https_with_the_configured_certificate_and_no_plain_http() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).expect("write key");
    let rx = Receiver::start();
    let port = free_port();
    let tls = format!(
        "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_pem.display(),
        key_pem.display()
    );
    let config = write_config(dir.path(), port, &rx.addr, &tls);
    let _node = Server::spawn_node(&config, "tls", port, &dir.path().join("data"));
    let ca = cert.cert.der().to_vec();
    let start = Instant::now();
    let status = loop {
        match https_get(port, &ca, "/healthz") {
            Ok(s) if !s.is_empty() => break s,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no HTTPS answer: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let tasks = https_get(port, &ca, "/v1/tasks?limit=1").expect("https");
    assert!(tasks.starts_with("HTTP/1.1 200"), "{tasks}");
    // The CLI trusts the certificate it is given (and only then).
    let server = format!("https://localhost:{port}");
    let cli = |ca: Option<&std::path::Path>| {
        let mut c = Command::new(kairos_bin());
        c.args(["task", "list", "--server", &server]);
        if let Some(ca) = ca {
            c.arg("--ca").arg(ca);
        }
        c.output().expect("run kairos task list")
    };
    let ok = cli(Some(&cert_pem));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let untrusted = cli(None);
    assert!(
        !untrusted.status.success(),
        "trusted a self-signed certificate"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // Plain HTTP on the same port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP was served"
    );
    // A client that does not trust the certificate cannot connect.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let refused = https_get(port, other.cert.der(), "/healthz");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("handshake")),
        "{refused:?}"
    );
}

#[test]
fn a_bad_tls_file_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    for (cert, key, expect) in [
        (&missing, &junk, "api.tls.cert"),
        (&junk, &junk, "holds no certificate"),
    ] {
        let tls = format!(
            "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let config = write_config(dir.path(), free_port(), &rx.addr, &tls);
        let out = Command::new(kairos_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .output()
            .expect("run kairos serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "served with a bad TLS file");
        assert!(stderr.contains(expect), "{stderr}");
    }
}

#[test]
fn task_lists_are_paged_by_cursor_within_a_byte_ceiling() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start();
    let s = Server::start(&write_config(dir.path(), free_port(), &rx.addr, ""));
    // 12 tasks of ~900 KiB each, due in an hour: 10 MiB in all.
    let big = "x".repeat(900 * 1024);
    let mut ids = Vec::new();
    for i in 0..12 {
        let body = json!({ "plugin": "notify", "key": format!("big{i}"), "delay_ms": 3_600_000,
                           "payload": { "url": rx.url(), "message": big } });
        let (code, v) = s.call("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(code, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..12 {
        let mut path = "/v1/tasks?limit=1000".to_string();
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let r = ureq::get(&format!("{}{path}", s.base))
            .call()
            .expect("list");
        cursor = r.header("kairos-next-cursor").map(str::to_string);
        let text = r.into_string().expect("body");
        assert!(
            text.len() < 6 * 1024 * 1024,
            "a page of {} bytes",
            text.len()
        );
        let page: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
        assert!(!page.is_empty());
        seen.extend(
            page.iter()
                .map(|t| t["id"].as_str().unwrap_or_default().to_string()),
        );
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "pages did not end");
    let mut want = ids.clone();
    want.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, want, "every task once, across pages");
    assert!(seen.len() == 12);
    // A bad cursor is a clear 400.
    let (code, v) = s.call("GET", "/v1/tasks?cursor=nonsense", None);
    assert_eq!(code, 400, "{v}");
    assert!(error_of(&v).contains("cursor"), "{v}");
}
