//! The checks every request passes before a handler sees it, in this order:
//! 1. `Host` is one this node serves (421 otherwise: DNS rebinding);
//! 2. a browser's `Origin`, when sent, is one too (403: cross-site requests);
//! 3. a `POST`/`PUT`/`PATCH` body is JSON (415: a web form cannot send one);
//! 4. a request forwarded by another node carries a valid cluster signature (401);
//! 5. with tokens configured, `Authorization: Bearer TOKEN` names a token (401) whose scopes
//!    allow the call (403). `/healthz` is open, for load balancers, and so are the status
//!    page's static files (`/`, `/ui`, `/ui/*`), which read the API with the token the
//!    operator types in.
//!
//! Every refusal is a JSON `{"error": …}`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::forward::{FORWARDED_BY, SIGNATURE};
use crate::auth::{self, ApiSection, Principal, Scope, Tokens};

/// Largest body of a forwarded request (task operations; their bodies are small).
const MAX_FORWARDED_BODY: usize = 1024 * 1024;

pub struct Guard {
    tokens: Tokens,
    /// `None`: any host (`allowed_hosts = ["*"]`).
    hosts: Option<HashSet<String>>,
    cluster_secret: Option<String>,
    /// `/metrics` needs a token too.
    metrics_token: bool,
}

impl Guard {
    /// The guard of a node bound to `bound` (its actual address, port 0 resolved).
    pub fn new(
        api: &ApiSection,
        bound: SocketAddr,
        advertise: Option<&str>,
    ) -> anyhow::Result<Self> {
        let hosts = if api.allowed_hosts.iter().any(|h| h == "*") {
            None
        } else {
            let port = bound.port();
            let mut set: HashSet<String> = [
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
                bound.to_string(),
            ]
            .into_iter()
            .collect();
            set.extend(advertise.map(str::to_string));
            set.extend(api.allowed_hosts.iter().cloned());
            Some(set.into_iter().map(|h| h.to_ascii_lowercase()).collect())
        };
        Ok(Self {
            tokens: Tokens::new(&api.tokens)?,
            metrics_token: api.metrics_token,
            hosts,
            cluster_secret: api.cluster_secret.clone(),
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(set) = &self.hosts else {
            return true;
        };
        let host = host.to_ascii_lowercase();
        if set.contains(&host) {
            return true;
        }
        // An entry without a port allows its host on any port.
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host.as_str(),
        };
        set.contains(bare)
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The scope a call needs.
pub fn required_scope(method: &Method, path: &str) -> Scope {
    match *method {
        Method::GET | Method::HEAD => Scope::Read,
        Method::POST if path == "/v1/tasks" || path == "/v1/tasks/batch" => Scope::Enqueue,
        _ => Scope::Operate,
    }
}

fn is_json(ct: &HeaderValue) -> bool {
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The `Host` of a request: the header (HTTP/1.1) or the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = request_host(&req);
    match host.as_deref() {
        Some(h) if g.host_allowed(h) => {}
        Some(h) => {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!("host {h:?} is not served here (add it to `api.allowed_hosts`)"),
            );
        }
        None => return refuse(StatusCode::BAD_REQUEST, "the request has no Host header"),
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("null");
        let origin_host = o.split_once("://").map(|(_, h)| h.trim_end_matches('/'));
        if !origin_host.is_some_and(|h| g.host_allowed(h)) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from {o:?} refused"),
            );
        }
    }
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        let ct = req.headers().get(header::CONTENT_TYPE);
        let ok = match ct {
            Some(ct) => is_json(ct),
            None => !has_body(req.headers()),
        };
        if !ok {
            let got = ct
                .and_then(|c| c.to_str().ok())
                .unwrap_or("no content type");
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be JSON (Content-Type: application/json), not {got}"),
            );
        }
    }
    let mut req = if req.headers().contains_key(FORWARDED_BY) {
        match verify_forwarded(&g, req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        }
    } else {
        req
    };
    let open = match req.uri().path() {
        // The status page's own files carry no data; it asks for a token to read the API.
        "/healthz" | "/" | "/ui" => true,
        p if p.starts_with("/ui/") => true,
        "/metrics" => !g.metrics_token,
        _ => false,
    };
    if !g.tokens.is_empty() && !open {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(principal) = token.and_then(|t| g.tokens.verify(t)) else {
            let mut resp = refuse(
                StatusCode::UNAUTHORIZED,
                if token.is_some() {
                    "unknown token"
                } else {
                    "authentication required: send `Authorization: Bearer TOKEN`"
                },
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        };
        let need = required_scope(req.method(), req.uri().path());
        if !principal.may(need) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} lacks the `{}` scope this call needs",
                    principal.name,
                    need.as_str()
                ),
            );
        }
        let principal: Principal = principal.clone();
        req.extensions_mut().insert(principal);
    }
    next.run(req).await
}

/// A forwarded request is accepted only with a valid signature by the cluster secret.
async fn verify_forwarded(g: &Guard, req: Request) -> Result<Request, Response> {
    let Some(secret) = &g.cluster_secret else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "forwarded requests are not accepted by this node (no `api.cluster_secret`)",
        ));
    };
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORWARDED_BODY)
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "forwarded body too large"))?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    auth::verify_forwarded(
        secret,
        header(SIGNATURE),
        parts.method.as_str(),
        path,
        header(FORWARDED_BY),
        kairos_core::clock::system_now(),
        &bytes,
    )
    .map_err(|e| {
        refuse(
            StatusCode::UNAUTHORIZED,
            format!("forwarded request refused: {e}"),
        )
    })?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_call() {
        assert_eq!(required_scope(&Method::GET, "/v1/tasks"), Scope::Read);
        assert_eq!(required_scope(&Method::POST, "/v1/tasks"), Scope::Enqueue);
        assert_eq!(
            required_scope(&Method::POST, "/v1/tasks/batch"),
            Scope::Enqueue
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/tasks/x/retry"),
            Scope::Operate
        );
        assert_eq!(
            required_scope(&Method::DELETE, "/v1/tasks/x"),
            Scope::Operate
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/keys/k/pause"),
            Scope::Operate
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/schedules"),
            Scope::Operate
        );
    }

    #[test]
    fn hosts_default_to_the_listen_address_and_localhost() {
        let api = ApiSection::default();
        let g = Guard::new(&api, "127.0.0.1:7400".parse().expect("addr"), None).expect("guard");
        for ok in [
            "127.0.0.1:7400",
            "localhost:7400",
            "LOCALHOST:7400",
            "[::1]:7400",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7400",
            "localhost:7401",
            "127.0.0.1",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let api = ApiSection {
            allowed_hosts: vec!["kairos.internal".into()],
            ..ApiSection::default()
        };
        let g = Guard::new(
            &api,
            "0.0.0.0:7400".parse().expect("addr"),
            Some("10.0.0.7:7400"),
        )
        .expect("guard");
        assert!(g.host_allowed("kairos.internal:7400") && g.host_allowed("kairos.internal"));
        assert!(g.host_allowed("10.0.0.7:7400"));
        assert!(!g.host_allowed("10.0.0.8:7400"));
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
