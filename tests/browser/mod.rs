//! Headless Chromium driven over the DevTools protocol (CDP): launch, evaluate JavaScript in
//! the page, wait for conditions, take screenshots. Chromium is Debian's `chromium` package
//! (`scripts/setup` installs it), or the binary named by `KAIROS_CHROMIUM`. A missing browser
//! fails the test, saying how to install it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn chromium() -> String {
    if let Ok(b) = std::env::var("KAIROS_CHROMIUM") {
        return b;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_string();
        }
    }
    panic!(
        "no Chromium found: run scripts/setup (installs Debian's `chromium`), or set KAIROS_CHROMIUM"
    );
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and attaches to its first page.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("browser profile dir");
        // Its stderr goes to a file in the profile, shown when it fails to start.
        let log_path = profile.path().join("chromium-stderr.log");
        let log = std::fs::File::create(&log_path).expect("chromium log file");
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromium");
        // Chromium writes its DevTools port to the profile once it listens.
        let port_file: PathBuf = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "chromium exited ({status}) before opening its DevTools port; its stderr ends with:\n{}",
                    log_tail(&log_path)
                );
            }
            // Generous: a loaded 2-core machine has taken seconds; a hang shows its stderr.
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not open its DevTools port within 60 s (df for {}: {}); its stderr ends with:\n{}",
                    profile.path().display(),
                    free_space(profile.path()),
                    log_tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let targets: Value = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .expect("DevTools target list")
            .into_json()
            .expect("DevTools target list JSON");
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// One CDP command; its `result` (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .unwrap_or_else(|e| panic!("CDP {method}: {e}"));
        loop {
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("CDP {method}: {e}"));
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("CDP JSON");
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("CDP {method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expr` in the page (promises awaited); its value, or a panic with the
    /// page's exception.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw evaluating {expr:?}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; its value. Panics after `timeout` with `what` and
    /// the last value seen.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let r = self.call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            );
            let v = r["result"]["value"].clone();
            let truthy = !(v.is_null()
                || v == Value::Bool(false)
                || v == json!(0)
                || v == json!("")
                || r.get("exceptionDetails").is_some());
            if truthy {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; last value {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// The last 40 lines of Chromium's stderr.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `df`'s size, used and available space of the file system holding `path` (a full disk
/// stops Chromium writing its profile; "available" leaves out the blocks reserved for root).
fn free_space(path: &std::path::Path) -> String {
    Command::new("df")
        .args(["-h", "--output=size,used,avail,target"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', " "))
        .unwrap_or_else(|e| format!("df failed: {e}"))
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
