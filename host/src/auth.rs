//! Who may call the API, and how it is exposed: the `[api]` section of the config, bearer
//! tokens with scopes, and the cluster secret that signs requests forwarded between nodes.
//!
//! ```toml
//! [api]
//! allowed_hosts = ["kairos.internal:7400"]   # Host headers served, besides the defaults
//! cluster_secret = "…"                       # cluster mode: signs forwarded requests
//! [[api.tokens]]
//! name = "ops"
//! hash = "sha256:…"                          # `kairos token new` prints a token and its hash
//! scopes = ["operate", "read"]
//! ```

use std::net::SocketAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Create tasks (`POST /v1/tasks`, `/v1/tasks/batch`).
    Enqueue,
    /// Every `GET` (tasks, schedules, plugins; metrics with `api.metrics_token`).
    Read,
    /// Cancel, retry, reschedule, pause and resume keys, manage schedules.
    Operate,
    /// Everything.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Enqueue => "enqueue",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

/// `[[api.tokens]]`: a named token, stored as the SHA-256 of its secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDecl {
    pub name: String,
    /// `sha256:` and 64 hex digits: the SHA-256 of the token the client sends.
    pub hash: String,
    pub scopes: Vec<Scope>,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// API tokens. With none, the API is open — allowed only on a loopback `listen` address
    /// unless `allow_unauthenticated = true`.
    pub tokens: Vec<TokenDecl>,
    /// Serve without tokens on a non-loopback address (behind your own authenticating proxy).
    pub allow_unauthenticated: bool,
    /// `Host` header values served besides the defaults (the listen and advertise addresses,
    /// and `localhost`/`127.0.0.1`/`[::1]` on the listen port). Anything else gets 421, so a
    /// web page cannot reach the API through a rebound DNS name. `"*"` serves any host.
    pub allowed_hosts: Vec<String>,
    /// Cluster mode (required there): the secret shared by the nodes; a request forwarded to
    /// a partition's owner is signed with it and refused unsigned.
    pub cluster_secret: Option<String>,
    /// Open connections beyond this are answered 503 and closed.
    pub max_connections: usize,
    /// A client must send a request's headers within this, milliseconds (slow clients are
    /// closed), and an idle keep-alive connection is closed after it.
    pub header_timeout_ms: u64,
    /// A whole request, body and handling included, milliseconds (408 after it).
    pub request_timeout_ms: u64,
    /// Requests per second per token (with tokens configured), with bursts of twice that;
    /// 0: no limit. Beyond it: 429.
    pub rate_limit_per_s: u32,
    /// Serve HTTPS (rustls) instead of plain HTTP.
    pub tls: Option<TlsSection>,
    /// With tokens configured, `/metrics` needs one with the `read` scope too (default: open,
    /// like `/healthz`, for scrapers).
    pub metrics_token: bool,
}

/// `[api.tls]`: PEM files; read when the node starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// Cluster mode: the certificates (PEM) trusted when this node forwards a request to
    /// another node over HTTPS. Default: `cert` itself (every node serving the same
    /// certificate, whose names cover each node's advertised address).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            cluster_secret: None,
            max_connections: 1_024,
            header_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            rate_limit_per_s: 1_000,
            tls: None,
            metrics_token: false,
        }
    }
}

/// Shortest accepted cluster secret.
pub const MIN_SECRET_LEN: usize = 16;

impl ApiSection {
    pub fn validate(&self, cluster: bool) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tokens {
            anyhow::ensure!(
                !t.name.is_empty(),
                "`api.tokens`: a token has an empty name"
            );
            anyhow::ensure!(
                names.insert(t.name.as_str()),
                "`api.tokens`: the name {:?} is used twice",
                t.name
            );
            parse_hash(&t.hash).map_err(|e| anyhow::anyhow!("`api.tokens` {:?}: {e}", t.name))?;
            anyhow::ensure!(
                !t.scopes.is_empty(),
                "`api.tokens` {:?}: `scopes` is empty (enqueue, read, operate, admin)",
                t.name
            );
        }
        for h in &self.allowed_hosts {
            anyhow::ensure!(
                !h.is_empty() && !h.contains('/') && !h.contains(' '),
                "`api.allowed_hosts`: {h:?} is not a host or host:port"
            );
        }
        anyhow::ensure!(
            self.max_connections >= 1,
            "`api.max_connections` must be at least 1"
        );
        anyhow::ensure!(
            self.header_timeout_ms >= 100 && self.request_timeout_ms >= 100,
            "`api.header_timeout_ms` and `api.request_timeout_ms` must be at least 100"
        );
        match (&self.cluster_secret, cluster) {
            (Some(s), _) if s.len() < MIN_SECRET_LEN => {
                anyhow::bail!("`api.cluster_secret` must be at least {MIN_SECRET_LEN} characters")
            }
            (None, true) => anyhow::bail!(
                "cluster mode needs `api.cluster_secret` (the same on every node; at least {MIN_SECRET_LEN} characters): nodes sign the requests they forward to each other with it"
            ),
            _ => {}
        }
        Ok(())
    }

    /// Refuses to expose an unauthenticated API beyond this machine.
    pub fn check_exposure(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if self.tokens.is_empty() && !listen.ip().is_loopback() && !self.allow_unauthenticated {
            anyhow::bail!(
                "refusing to serve the API on {listen} without authentication: add `[[api.tokens]]` (`kairos token new` makes one), listen on 127.0.0.1, or set `api.allow_unauthenticated = true` if a proxy in front authenticates"
            );
        }
        Ok(())
    }
}

fn parse_hash(h: &str) -> Result<[u8; 32], String> {
    let hex = h
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("hash {h:?} must start with `sha256:`"))?;
    let bytes = hex::decode(hex).map_err(|_| format!("hash {h:?} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("hash {h:?} must have 64 hex digits"))
}

/// The SHA-256 of a token, as written in the config: `sha256:HEX`.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// A new random token (256 bits, URL-safe) and its config hash.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("kairos_{}", hex::encode(bytes));
    let hash = token_hash(&token);
    (token, hash)
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Principal {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// The configured tokens, by hash.
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl Tokens {
    pub fn new(decls: &[TokenDecl]) -> anyhow::Result<Self> {
        let mut entries = Vec::with_capacity(decls.len());
        for d in decls {
            let hash = parse_hash(&d.hash).map_err(|e| anyhow::anyhow!("{e}"))?;
            entries.push((
                hash,
                Principal {
                    name: d.name.clone(),
                    scopes: d.scopes.clone(),
                },
            ));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of a presented token. Every entry is compared in constant time.
    pub fn verify(&self, token: &str) -> Option<&Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, p) in &self.entries {
            if ct_eq(hash, &presented) {
                found = Some(p);
            }
        }
        found
    }
}

/// Constant-time equality of two byte strings of the same length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// How long a forwarded request's signature stays valid (clock skew between nodes plus the
/// forwarding time).
pub const SIGNATURE_WINDOW_MS: i64 = 60_000;

/// The signature of a forwarded request: `v1:UNIX_MS:HEX`, an HMAC over the method, path and
/// query, time, forwarding node and the body's SHA-256.
pub fn sign_forwarded(
    secret: &str,
    method: &str,
    path: &str,
    from: &str,
    now_ms: i64,
    body: &[u8],
) -> String {
    let mac = hmac_sha256(
        secret.as_bytes(),
        &signed_text(method, path, from, now_ms, body),
    );
    format!("v1:{now_ms}:{}", hex::encode(mac))
}

/// Checks a forwarded request's signature (see [`sign_forwarded`]).
pub fn verify_forwarded(
    secret: &str,
    signature: &str,
    method: &str,
    path: &str,
    from: &str,
    now_ms: i64,
    body: &[u8],
) -> Result<(), &'static str> {
    let mut parts = signature.splitn(3, ':');
    let (Some("v1"), Some(ts), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed signature");
    };
    let ts: i64 = ts.parse().map_err(|_| "malformed signature time")?;
    if (now_ms - ts).abs() > SIGNATURE_WINDOW_MS {
        return Err("signature expired (or the nodes' clocks differ by over a minute)");
    }
    let mac = hex::decode(mac).map_err(|_| "malformed signature")?;
    let want = hmac_sha256(
        secret.as_bytes(),
        &signed_text(method, path, from, ts, body),
    );
    if ct_eq(&mac, &want) {
        Ok(())
    } else {
        Err("bad signature (is `api.cluster_secret` the same on every node?)")
    }
}

fn signed_text(method: &str, path: &str, from: &str, ts: i64, body: &[u8]) -> Vec<u8> {
    format!(
        "{method}\n{path}\n{from}\n{ts}\n{}",
        hex::encode(Sha256::digest(body))
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_by_hash_and_scopes_decide() {
        let (token, hash) = new_token();
        let tokens = Tokens::new(&[TokenDecl {
            name: "ci".into(),
            hash,
            scopes: vec![Scope::Enqueue, Scope::Read],
        }])
        .expect("valid");
        let p = tokens.verify(&token).expect("known token");
        assert_eq!(p.name, "ci");
        assert!(p.may(Scope::Enqueue) && p.may(Scope::Read));
        assert!(!p.may(Scope::Operate) && !p.may(Scope::Admin));
        assert!(tokens.verify("kairos_wrong").is_none());
        assert!(tokens.verify(&token[..token.len() - 1]).is_none());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn forwarded_signatures_bind_method_path_body_sender_and_time() {
        let s = "0123456789abcdef-secret";
        let sig = sign_forwarded(s, "DELETE", "/v1/tasks/a", "node-1", 1_000_000, b"");
        let ok = |sig: &str, m: &str, p: &str, f: &str, now: i64, b: &[u8]| {
            verify_forwarded(s, sig, m, p, f, now, b)
        };
        assert_eq!(
            ok(&sig, "DELETE", "/v1/tasks/a", "node-1", 1_000_500, b""),
            Ok(())
        );
        assert!(ok(&sig, "POST", "/v1/tasks/a", "node-1", 1_000_500, b"").is_err());
        assert!(ok(&sig, "DELETE", "/v1/tasks/b", "node-1", 1_000_500, b"").is_err());
        assert!(ok(&sig, "DELETE", "/v1/tasks/a", "node-2", 1_000_500, b"").is_err());
        assert!(ok(&sig, "DELETE", "/v1/tasks/a", "node-1", 1_000_500, b"{}").is_err());
        assert!(ok(&sig, "DELETE", "/v1/tasks/a", "node-1", 1_070_000, b"").is_err());
        let other = sign_forwarded(
            "another-secret-0000",
            "DELETE",
            "/v1/tasks/a",
            "node-1",
            1_000_000,
            b"",
        );
        assert!(ok(&other, "DELETE", "/v1/tasks/a", "node-1", 1_000_500, b"").is_err());
        assert!(ok("v1:x:y", "DELETE", "/v1/tasks/a", "node-1", 1_000_500, b"").is_err());
    }

    #[test]
    fn config_errors_are_clear() {
        let mut a = ApiSection {
            tokens: vec![TokenDecl {
                name: "x".into(),
                hash: "sha256:abcd".into(),
                scopes: vec![Scope::Read],
            }],
            ..ApiSection::default()
        };
        let e = a.validate(false).expect_err("short hash");
        assert!(e.to_string().contains("64 hex"), "{e}");
        a.tokens[0].hash = token_hash("t");
        a.validate(false).expect("valid");
        let e = a.validate(true).expect_err("cluster needs a secret");
        assert!(e.to_string().contains("cluster_secret"), "{e}");
        a.cluster_secret = Some("short".into());
        assert!(a.validate(true).is_err());
        a.cluster_secret = Some("a-long-enough-cluster-secret".into());
        a.validate(true).expect("valid");
    }

    #[test]
    fn an_open_api_is_refused_beyond_loopback() {
        let open = ApiSection::default();
        open.check_exposure("127.0.0.1:7400".parse().expect("addr"))
            .expect("loopback is fine");
        open.check_exposure("[::1]:7400".parse().expect("addr"))
            .expect("loopback is fine");
        let e = open
            .check_exposure("0.0.0.0:7400".parse().expect("addr"))
            .expect_err("wildcard without tokens");
        assert!(e.to_string().contains("api.tokens"), "{e}");
        let proxied = ApiSection {
            allow_unauthenticated: true,
            ..ApiSection::default()
        };
        proxied
            .check_exposure("0.0.0.0:7400".parse().expect("addr"))
            .expect("explicitly allowed");
    }
}
