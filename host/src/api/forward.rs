//! Cluster mode: an operation on a task (cancel, reschedule, retry; pause and resume of a
//! key) must run on the node that owns the task's partition, whose partition actor serialises
//! it against starting attempts. Any node accepts it: one that does not own the partition
//! looks up the owner (`partition_owners` → node id → the API address in `nodes`) and
//! forwards the same request (method, path, body) to it, answering with the owner's status
//! and body as they are.
//!
//! A forwarded request carries [`FORWARDED_BY`] and [`SIGNATURE`], an HMAC by the cluster
//! secret over the request (see [`crate::auth::sign_forwarded`]); the caller's own
//! `Authorization` goes along and is checked again by the owner. A forwarded request is never
//! forwarded again (a node that gets one for a partition it does not own answers 503: the
//! partition is moving).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kairos_core::store::StoreError;

use super::{ApiError, State};
use crate::scheduler::OpError;

/// Header of a forwarded request: the id of the node that forwarded it.
pub const FORWARDED_BY: &str = "x-kairos-forwarded";
/// Header of a forwarded request: its signature by the cluster secret.
pub const SIGNATURE: &str = "x-kairos-signature";
/// Header of a forwarded answer: the id of the node that executed the operation.
pub const SERVED_BY: &str = "x-kairos-served-by";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole forwarded exchange (the owner's operation is one or two Cassandra round trips).
const TIMEOUT: Duration = Duration::from_secs(6);
/// Largest answer read back from the owner.
const MAX_ANSWER: u64 = 32 * 1024 * 1024;

/// Who owns a partition, and where a node's API is reached (cluster mode).
#[async_trait]
pub trait Owners: Send + Sync + 'static {
    /// The node that holds the partition's ownership epoch, if any did yet.
    async fn owner(&self, partition: u32) -> Result<Option<String>, StoreError>;
    /// The `host:port` at which `node_id` serves its API, if it registered one.
    async fn api_addr(&self, node_id: &str) -> Result<Option<String>, StoreError>;
}

/// Forwards task operations to the owner of their partition.
pub struct Forwarder {
    owners: Arc<dyn Owners>,
    agent: ureq::Agent,
    /// `https` when the nodes serve TLS (`[api.tls]`), else `http`.
    scheme: &'static str,
    /// Signs forwarded requests (`api.cluster_secret`).
    secret: String,
}

impl Forwarder {
    /// `tls`: what to trust when the nodes serve HTTPS (see [`crate::api::tls::peer_client`]).
    pub fn new(
        owners: Arc<dyn Owners>,
        secret: String,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Self {
        // No pooled connections: a node closes an idle keep-alive connection after its header
        // timeout, and a request sent on one as it closes gets no answer (seen in cluster
        // scenario (f) once the status page's calls left a connection idle). A fresh
        // connection per forwarded request costs a handshake; these are operator calls.
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .max_idle_connections(0)
            .redirects(0);
        let scheme = match tls {
            Some(cfg) => {
                agent = agent.tls_config(cfg);
                "https"
            }
            None => "http",
        };
        Self {
            owners,
            agent: agent.build(),
            scheme,
            secret,
        }
    }
}

impl Forwarder {
    /// `GET path` from node `node_id`'s API as a request forwarded (signed) by `from`, with the
    /// caller's `authorization`; the answer's JSON when it is a 200.
    pub async fn get_json(
        &self,
        from: &str,
        node_id: &str,
        path: &str,
        authorization: Option<String>,
    ) -> Result<serde_json::Value, String> {
        let addr = self
            .owners
            .api_addr(node_id)
            .await
            .map_err(|e| format!("cannot look up its API address: {e}"))?
            .ok_or_else(|| "it has not registered its API address".to_string())?;
        let url = format!("{}://{addr}{path}", self.scheme);
        let signature = crate::auth::sign_forwarded(
            &self.secret,
            "GET",
            path,
            from,
            kairos_core::clock::system_now(),
            &[],
        );
        let agent = self.agent.clone();
        let from = from.to_string();
        let sent = tokio::task::spawn_blocking(move || {
            let headers = Outgoing {
                from: &from,
                signature: &signature,
                content_type: None,
                authorization: authorization.as_deref(),
            };
            send(&agent, "GET", &url, &headers, &[])
        })
        .await
        .map_err(|e| e.to_string())?;
        match sent {
            Ok((200, _, body)) => {
                serde_json::from_slice(&body).map_err(|e| format!("unreadable answer: {e}"))
            }
            Ok((status, _, body)) => Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
            Err(Failure::NotSent(e) | Failure::NoAnswer(e)) => Err(format!("not reachable: {e}")),
        }
    }
}

/// A task operation's request, kept so that it can be sent on unchanged.
pub struct OpRequest {
    method: Method,
    uri: Uri,
    content_type: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    forwarded_by: Option<String>,
    body: Bytes,
}

impl OpRequest {
    pub fn new(method: Method, uri: Uri, headers: &HeaderMap, body: Bytes) -> Self {
        let forwarded_by = headers
            .get(FORWARDED_BY)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Self {
            method,
            uri,
            content_type: headers.get(header::CONTENT_TYPE).cloned(),
            authorization: headers.get(header::AUTHORIZATION).cloned(),
            forwarded_by,
            body,
        }
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

/// The answer to a task operation: `ok` of its result; if this node does not own the task's
/// partition (cluster mode), the owner's answer to the same request.
pub async fn answer<T>(
    st: &State,
    result: Result<T, OpError>,
    req: OpRequest,
    ok: impl FnOnce(T) -> Response,
) -> Result<Response, ApiError> {
    match result {
        Ok(v) => Ok(ok(v)),
        Err(OpError::NotOwned(p)) => forward(st, p, req).await,
        Err(e) => Err(e.into()),
    }
}

/// Whether an operation on `partition` must go to another node: cluster mode, and this node
/// does not run the partition now.
pub async fn elsewhere(st: &State, partition: u32) -> bool {
    st.forwarder.is_some() && !st.scheduler.owns(partition).await
}

/// Sends `req` to the owner of `partition` and answers with its status and body.
pub async fn forward(st: &State, partition: u32, req: OpRequest) -> Result<Response, ApiError> {
    let p = partition;
    let Some(fwd) = &st.forwarder else {
        // Embedded: this node owns every partition; NotOwned means it is shutting down.
        return Err(OpError::NotOwned(p).into());
    };
    let moving = || unavailable(format!("partition {p} is moving between nodes; retry"));
    if let Some(from) = &req.forwarded_by {
        tracing::debug!(partition = p, from = %from, "forwarded operation for a partition this node does not own");
        return Err(moving());
    }
    let owner = match fwd.owners.owner(p).await {
        Ok(Some(node)) if node != st.node_id => node,
        // No owner yet, or this node's epoch is recorded while it takes up or lets go of the
        // partition.
        Ok(_) => return Err(moving()),
        Err(e) => {
            return Err(unavailable(format!(
                "partition {p} is not owned by this node and its owner cannot be looked up ({e}); retry"
            )));
        }
    };
    let addr = match fwd.owners.api_addr(&owner).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return Err(unavailable(format!(
                "partition {p} is owned by node {owner}, whose API address is unknown (it registers it at start); retry"
            )));
        }
        Err(e) => {
            return Err(unavailable(format!(
                "partition {p} is owned by node {owner}, whose API address cannot be looked up ({e}); retry"
            )));
        }
    };
    let path = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = format!("{}://{addr}{path}", fwd.scheme);
    tracing::debug!(partition = p, %owner, %url, method = %req.method, "forwarding a task operation to the partition's owner");
    let agent = fwd.agent.clone();
    let from = st.node_id.clone();
    let method = req.method.to_string();
    let header = |v: Option<HeaderValue>| v.and_then(|v| v.to_str().ok().map(str::to_string));
    let content_type = header(req.content_type);
    let authorization = header(req.authorization);
    let body = req.body;
    let signature = crate::auth::sign_forwarded(
        &fwd.secret,
        &method,
        path,
        &from,
        kairos_core::clock::system_now(),
        &body,
    );
    let sent = tokio::task::spawn_blocking(move || {
        let headers = Outgoing {
            from: &from,
            signature: &signature,
            content_type: content_type.as_deref(),
            authorization: authorization.as_deref(),
        };
        send(&agent, &method, &url, &headers, &body)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("forwarding to node {owner} failed: {e}"),
        )
    })?;
    let (status, content_type, body) = match sent {
        Ok(a) => a,
        Err(Failure::NotSent(e)) => {
            return Err(unavailable(format!(
                "partition {p} is owned by node {owner}, which is not reachable at {addr} ({e}); retry"
            )));
        }
        Err(Failure::NoAnswer(e)) => {
            return Err(unavailable(format!(
                "partition {p} is owned by node {owner} at {addr}, which did not answer ({e}); the operation may have been applied: read the task before retrying"
            )));
        }
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, Body::from(body)).into_response();
    let headers = resp.headers_mut();
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(&owner) {
        headers.insert(SERVED_BY, v);
    }
    Ok(resp)
}

enum Failure {
    /// Nothing reached the owner (connection refused, unknown host, ...).
    NotSent(String),
    /// The request may have reached it (timeout, connection reset, ...).
    NoAnswer(String),
}

/// The headers a forwarded request carries.
struct Outgoing<'a> {
    from: &'a str,
    signature: &'a str,
    content_type: Option<&'a str>,
    authorization: Option<&'a str>,
}

/// One blocking HTTP exchange: (status, content type, body).
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    h: &Outgoing<'_>,
    body: &[u8],
) -> Result<(u16, Option<String>, Vec<u8>), Failure> {
    let mut r = agent
        .request(method, url)
        .set(FORWARDED_BY, h.from)
        .set(SIGNATURE, h.signature);
    if let Some(ct) = h.content_type {
        r = r.set("content-type", ct);
    }
    if let Some(a) = h.authorization {
        r = r.set("authorization", a);
    }
    let res = if body.is_empty() {
        r.call()
    } else {
        r.send_bytes(body)
    };
    let resp = match res {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => {
            let msg = e.to_string();
            return Err(match e.kind() {
                ureq::ErrorKind::InvalidUrl
                | ureq::ErrorKind::UnknownScheme
                | ureq::ErrorKind::Dns
                | ureq::ErrorKind::ConnectionFailed => Failure::NotSent(msg),
                _ => Failure::NoAnswer(msg),
            });
        }
    };
    let status = resp.status();
    let content_type = resp.header("content-type").map(str::to_string);
    let mut out = Vec::new();
    resp.into_reader()
        .take(MAX_ANSWER)
        .read_to_end(&mut out)
        .map_err(|e| Failure::NoAnswer(format!("reading the answer: {e}")))?;
    Ok((status, content_type, out))
}
