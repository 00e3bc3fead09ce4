//! `/v1/tasks`: enqueue (one or a batch), inspect, list, cancel, retry, reschedule.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use kairos_core::model::{EnqueueOutcome, ListFilter, OrderPos, TaskState};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::forward::{self, OpRequest};
use super::view::{Accepted, TaskView, rfc3339};
use super::{ApiError, State, parse_json, read_body, read_json};
use crate::enqueue::EnqueueRequest;

type ApiResult<T> = Result<T, ApiError>;

fn accepted(o: &EnqueueOutcome) -> Accepted {
    let t = o.task();
    Accepted {
        id: t.id.clone(),
        partition: t.partition,
        run_at: rfc3339(t.due_at),
        duplicate: matches!(o, EnqueueOutcome::Duplicate(_)),
    }
}

/// Body limit: the payload limit plus room for the other fields.
fn body_limit(st: &State) -> usize {
    st.enqueuer.defaults.max_payload_bytes + 64 * 1024
}

pub async fn create(st: State, body: Body) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let req: EnqueueRequest = read_json(body, body_limit(&st)).await?;
    let task = st.enqueuer.build(req, st.enqueuer.clock.now())?;
    let outcomes = st.enqueuer.submit(vec![task]).await?;
    let o = outcomes.first().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store returned no outcome",
        )
    })?;
    let status = if matches!(o, EnqueueOutcome::Duplicate(_)) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(accepted(o))))
}

/// All or nothing at validation: one bad task rejects the batch, naming its index (in the
/// message, `task [N]: …`, and as `"index": N`), and nothing of it is stored.
pub async fn create_batch(st: State, body: Body) -> ApiResult<(StatusCode, Json<Vec<Accepted>>)> {
    let max = st.enqueuer.defaults.max_batch;
    let limit = body_limit(&st).saturating_mul(max.min(64));
    // Each element is parsed on its own, so a malformed one is named by its index too.
    let raw: Vec<Box<RawValue>> = read_json(body, limit).await?;
    if raw.is_empty() || raw.len() > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a batch holds 1 to {max} tasks; got {}", raw.len()),
        ));
    }
    let now = st.enqueuer.clock.now();
    let mut tasks = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let req: EnqueueRequest = serde_json::from_str(r.get()).map_err(|e| {
            // The element is valid JSON; its position within the body says nothing more.
            let msg = e.to_string();
            let msg = msg.rfind(" at line ").map_or(&*msg, |at| &msg[..at]);
            ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request: {msg}")).at_index(i)
        })?;
        let t = st
            .enqueuer
            .build(req, now)
            .map_err(|e| ApiError::from(e).at_index(i))?;
        tasks.push(t);
    }
    let outcomes = st.enqueuer.submit(tasks).await?;
    Ok((
        StatusCode::CREATED,
        Json(outcomes.iter().map(accepted).collect()),
    ))
}

pub async fn get(st: State, Path(id): Path<String>) -> ApiResult<Json<TaskView>> {
    match st.store.get(&id).await? {
        Some(rec) => Ok(Json(TaskView::new(&rec.task, Some(&rec.attempts)))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("task {id} not found"),
        )),
    }
}

/// Most tasks in one `GET /v1/tasks` answer.
const MAX_LIST: usize = 1_000;
/// An answer stops growing past this many bytes of JSON (payloads are up to
/// `tasks.max_payload_bytes` each); the rest is on the next page.
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;
/// The response header carrying the cursor of the next page, when there may be one.
pub const NEXT_CURSOR: &str = "kairos-next-cursor";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    key: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    /// The `kairos-next-cursor` of the previous page.
    cursor: Option<String>,
}

/// A cursor is the last listed task's position, `DUE_AT.SEQ`.
fn parse_cursor(c: &str) -> Option<OrderPos> {
    let (due, seq) = c.split_once('.')?;
    Some(OrderPos {
        due_at: due.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// Tasks in `(due, seq)` order, a page at a time: at most `limit` (≤ 1,000) and about 4 MiB;
/// when more may follow, the `kairos-next-cursor` header says where the next page starts.
pub async fn list(
    st: State,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown state {s:?}; one of scheduled, running, retrying, succeeded, dead, cancelled"),
            )
        })?),
    };
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid cursor {c:?}: pass the kairos-next-cursor header of the previous page"
                ),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let tasks = st
        .store
        .list(&ListFilter {
            key: q.key,
            state,
            limit,
            after,
        })
        .await?;
    let mut body = b"[".to_vec();
    let mut last = None;
    let mut listed = 0;
    for t in &tasks {
        if listed > 0 && body.len() >= MAX_LIST_BYTES {
            break;
        }
        if listed > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &TaskView::new(t, None))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        last = Some(t.order());
        listed += 1;
    }
    body.push(b']');
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    let more = listed < tasks.len() || tasks.len() == limit;
    if let Some(pos) = last.filter(|_| more)
        && let Ok(v) = axum::http::HeaderValue::from_str(&format!("{}.{}", pos.due_at, pos.seq))
    {
        resp.headers_mut().insert(NEXT_CURSOR, v);
    }
    Ok(resp)
}

/// The task as an operation left it.
fn view(t: kairos_core::model::Task) -> Response {
    Json(TaskView::new(&t, None)).into_response()
}

pub async fn cancel(
    st: State,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let r = st.scheduler.cancel(&id).await;
    let req = OpRequest::new(method, uri, &headers, Bytes::new());
    forward::answer(&st, r, req, view).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Attempts granted for this retry (default: the node's `tasks.max_attempts`).
    max_attempts: Option<u32>,
}

pub async fn retry(
    st: State,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    let b: RetryBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?
    };
    let extra = b
        .max_attempts
        .unwrap_or(st.enqueuer.defaults.max_attempts)
        .max(1);
    let r = st.scheduler.retry_dead(&id, extra).await;
    // Forwarded as sent: without `max_attempts`, the owner's default applies.
    let req = OpRequest::new(method, uri, &headers, bytes);
    forward::answer(&st, r, req, view).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    run_at: String,
}

pub async fn reschedule(
    st: State,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, 4096).await?;
    let b: PatchBody = parse_json(&bytes)?;
    let run_at = DateTime::parse_from_rfc3339(&b.run_at)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`run_at` {:?} is not an RFC 3339 time: {e}", b.run_at),
            )
        })?
        .timestamp_millis();
    let r = st.scheduler.reschedule(&id, run_at).await;
    let req = OpRequest::new(method, uri, &headers, bytes);
    forward::answer(&st, r, req, view).await
}
