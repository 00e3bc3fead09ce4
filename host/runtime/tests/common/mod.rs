//! Shared helpers of the runtime's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use kairos_runtime::{
    HostServices, LimitsOverride, MemoryServices, PluginGrant, RunOutcome, RunReport, RunRequest,
    Runtime, RuntimeConfig, TaskInfo,
};
use serde_json::Value;

pub const GUESTS_DIR: &str = env!("KAIROS_TEST_GUESTS_DIR");

pub fn guest(name: &str) -> PathBuf {
    Path::new(GUESTS_DIR).join(format!("{name}.wasm"))
}

/// Compiled artifacts shared by all tests (and runs), so each guest compiles once.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kairos-runtime-cache")
}

pub fn config() -> RuntimeConfig {
    RuntimeConfig {
        cache_dir: Some(cache_dir()),
        max_instances: 32,
        ..RuntimeConfig::default()
    }
}

pub fn grant(hosts: &[&str], limits: LimitsOverride) -> PluginGrant {
    PluginGrant {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        allow_private: false,
        config: BTreeMap::new(),
        limits,
        ..PluginGrant::default()
    }
}

pub fn runtime_with(cfg: RuntimeConfig) -> (Arc<Runtime>, Arc<MemoryServices>) {
    let services = Arc::new(MemoryServices::new());
    let rt = Runtime::new(cfg, services.clone() as Arc<dyn HostServices>).expect("runtime");
    (rt, services)
}

/// A temp dir holding copies of the given files (`(source, name in dir)`).
pub fn plugin_dir(files: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (src, name) in files {
        std::fs::copy(src, dir.path().join(name)).expect("copy guest");
    }
    dir
}

/// The bytes of `src` with a custom section appended: the same guest under a new digest.
pub fn variant(src: &Path, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(src).expect("read guest");
    let name = b"kairos-test-variant";
    let mut content = leb(name.len() as u32);
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    bytes.extend(leb(content.len() as u32));
    bytes.extend(content);
    bytes
}

fn leb(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

static NEXT_TASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn task(plugin: &str, payload: Value) -> RunRequest {
    let n = NEXT_TASK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    RunRequest {
        task: TaskInfo {
            id: format!("task-{n}"),
            key: format!("key-{n}"),
            plugin: plugin.to_string(),
            attempt: 1,
            due_at_ms: 1_700_000_000_000,
            payload: payload.to_string(),
            generation: 0,
        },
        pin_version: None,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn output(report: &RunReport) -> String {
    match &report.outcome {
        RunOutcome::Success { output } => output.clone().unwrap_or_default(),
        other => panic!("expected success, got {other}\nlogs: {:#?}", report.logs),
    }
}

pub fn logs_text(report: &RunReport) -> String {
    report
        .logs
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: Value,
    /// The `idempotency-key` request header, if sent.
    pub idempotency_key: Option<String>,
}

/// A local HTTP receiver: `POST /status/{code}` answers `code`, `POST /slow/{ms}` answers
/// 200 after `ms`; every request is recorded.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = Router::new()
            .route("/status/{code}", post(status))
            .route("/slow/{ms}", post(slow))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

type Shared = State<Arc<Mutex<Vec<Received>>>>;

fn record(state: &Shared, path: String, headers: &HeaderMap, body: &[u8]) {
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.lock().expect("lock").push(Received {
        path,
        body,
        idempotency_key,
    });
}

async fn status(
    state: Shared,
    UrlPath(code): UrlPath<u16>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    record(&state, format!("/status/{code}"), &headers, &body);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, format!("receiver says {}", code.as_u16()))
}

async fn slow(
    state: Shared,
    UrlPath(ms): UrlPath<u64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    record(&state, format!("/slow/{ms}"), &headers, &body);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    StatusCode::OK
}

/// A 127.0.0.1 port with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Everything logged through `tracing` in this test binary (what the daemon writes to stderr).
pub fn captured() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(log))
            .try_init();
        log
    })
}

pub struct Capture(&'static Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
