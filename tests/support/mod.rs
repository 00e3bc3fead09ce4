//! Shared pieces of the end-to-end tests: a `kairos serve` child process, a local HTTP
//! receiver that records what the `notify` plugin POSTs, and a small JSON client.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Records every JSON body POSTed to it. Answers with the status in `status` (default 200).
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    /// When each body arrived (same index as `bodies`).
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
    pub status: Arc<Mutex<u16>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    pub fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let (b, s, a) = (bodies.clone(), status.clone(), arrivals.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let (b, s, a) = (b.clone(), s.clone(), a.clone());
                    async move {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        {
                            let mut bodies = b.lock().expect("lock");
                            bodies.push(v);
                            a.lock().expect("lock").push(Instant::now());
                        }
                        let code = *s.lock().expect("lock");
                        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK)
                    }
                }),
            );
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            bodies,
            arrivals,
            status,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Bodies with their arrival times.
    pub fn received_timed(&self) -> Vec<(Instant, Value)> {
        let bodies = self.bodies.lock().expect("lock");
        let arrivals = self.arrivals.lock().expect("lock");
        arrivals
            .iter()
            .copied()
            .zip(bodies.iter().cloned())
            .collect()
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if cond(&got) {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; received {} bodies",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `kairos serve` child process with its own data directory and port.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// What calls it (one trusting the node's certificate for HTTPS: [`Server::over_tls`]).
    pub agent: ureq::Agent,
    pub config: PathBuf,
    pub data: PathBuf,
}

/// A TLS client config trusting only `ca` (DER).
pub fn client_trusting(ca: &[u8]) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.to_vec()))
        .expect("a usable CA certificate");
    let cfg = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

pub fn kairos_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kairos")
}

/// Writes a config granting `notify` access to the receiver, and starts a server on it.
pub fn write_config(dir: &Path, port: u16, receiver: &SocketAddr, extra: &str) -> PathBuf {
    let config = dir.join("kairos.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[scheduler]\nshutdown_grace_ms = 5000\n\n[plugin.notify]\nallowed_hosts = [\"{receiver}\"]\n{extra}\n",
        dir.join("data").display()
    );
    std::fs::write(&config, text).expect("write config");
    config
}

impl Server {
    /// The node serves HTTPS (`[api.tls]`) with a certificate issued by (or equal to) `ca`:
    /// calls go to `https://` and trust `ca` only.
    pub fn over_tls(mut self, ca: &[u8]) -> Server {
        self.agent = ureq::AgentBuilder::new()
            .tls_config(client_trusting(ca))
            .build();
        self.base = self.base.replacen("http://", "https://", 1);
        self
    }

    pub fn start(config: &Path) -> Server {
        Server::start_bin(Path::new(kairos_bin()), config, None)
    }

    /// `bin serve --config CONFIG`, run in `cwd` when given.
    pub fn start_bin(bin: &Path, config: &Path, cwd: Option<&Path>) -> Server {
        let text = std::fs::read_to_string(config).expect("config");
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse::<u16>().ok())
            .expect("listen port in config");
        let mut cmd = Command::new(bin);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kairos serve");
        let base = format!("http://127.0.0.1:{port}");
        let s = Server {
            child,
            base,
            agent: ureq::Agent::new(),
            config: config.to_path_buf(),
            data: PathBuf::new(),
        };
        s.wait_healthy();
        s
    }

    /// A cluster node: `kairos serve --config FILE --node-id ID --listen 127.0.0.1:PORT
    /// --data DIR`, its log (RUST_LOG=info) in `DIR/node.log`. Does not wait for it.
    pub fn spawn_node(config: &Path, node_id: &str, port: u16, data: &Path) -> Server {
        std::fs::create_dir_all(data).expect("node data dir");
        let log = std::fs::File::create(data.join("node.log")).expect("node log");
        let child = Command::new(kairos_bin())
            .args(["serve", "--config"])
            .arg(config)
            .args([
                "--node-id",
                node_id,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data",
            ])
            .arg(data)
            .env(
                "RUST_LOG",
                "info,librdkafka=warn,wasmtime=warn,cranelift=warn",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kairos serve");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::new(),
            config: config.to_path_buf(),
            data: data.to_path_buf(),
        }
    }

    /// Waits until `/healthz` answers; panics with the node's log tail after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self
                .agent
                .get(&format!("{}/healthz", self.base))
                .call()
                .is_ok()
            {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "kairos at {} exited ({st}) before it was ready; log:\n{}",
                    self.base,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "kairos did not become healthy at {} within {timeout:?}; log:\n{}",
            self.base,
            self.log_tail(60)
        );
    }

    /// The last `n` lines of a node's log (nodes started with `spawn_node`).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.data.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `/healthz` as JSON (`partitions_owned`, …), or `None` when it does not answer.
    pub fn health(&self) -> Option<Value> {
        self.agent
            .get(&format!("{}/healthz", self.base))
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self
                .agent
                .get(&format!("{}/healthz", self.base))
                .call()
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kairos did not become healthy at {}", self.base);
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("kairos did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a request; returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_as(None, method, path, body)
    }

    /// Sends a request with `Authorization: Bearer TOKEN` when `token` is set.
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("content-type", "application/json");
        if let Some(t) = token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let (code, text) = match res {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kairos token new NAME --scope …`: (token, the config lines).
pub fn new_token(name: &str, scopes: &[&str]) -> (String, String) {
    let mut cmd = Command::new(kairos_bin());
    cmd.args(["token", "new", name]);
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let out = cmd.output().expect("kairos token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    token_and_config(&String::from_utf8_lossy(&out.stdout))
}

/// The token and the config lines `kairos token new` (or `create`) printed.
pub fn token_and_config(text: &str) -> (String, String) {
    let token = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("kairos_")
                .map(|t| format!("kairos_{t}"))
        })
        .expect("a token line");
    let config = text[text.find("[[api.tokens]]").expect("config lines")..].to_string();
    assert!(
        !config.contains(&token),
        "the config lines hold only the hash"
    );
    (token, config)
}
