//! Keys, schedules, plugins, health and metrics.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kairos_core::model::Schedule;
use kairos_core::partition::partition_for;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::forward::{self, OpRequest};
use super::view::ScheduleView;
use super::{ApiError, State, read_json};
use crate::cron::{self, CronSpec};

type ApiResult<T> = Result<T, ApiError>;

fn partitions(st: &State) -> u32 {
    st.enqueuer.partitions
}

/// Pausing or resuming a key changes what its partition's actor may start: in cluster mode
/// it runs on the partition's owner (forwarded there from any other node).
pub async fn pause_key(
    st: State,
    Path(key): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = partition_for(&key, partitions(&st));
    if forward::elsewhere(&st, p).await {
        let req = OpRequest::new(method, uri, &headers, Bytes::new());
        return forward::forward(&st, p, req).await;
    }
    st.scheduler.pause_key(&key, p).await?;
    Ok(Json(json!({ "key": key, "paused": true })).into_response())
}

pub async fn resume_key(
    st: State,
    Path(key): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = partition_for(&key, partitions(&st));
    if forward::elsewhere(&st, p).await {
        let req = OpRequest::new(method, uri, &headers, Bytes::new());
        return forward::forward(&st, p, req).await;
    }
    let unparked = st.scheduler.resume_key(&key, p).await?;
    Ok(
        Json(json!({ "key": key, "paused": false, "unparked_dead_tasks": unparked }))
            .into_response(),
    )
}

/// `GET /v1/keys/paused`: keys an operator paused (keys parked by a dead task show as dead
/// tasks with `park_on_dead`).
pub async fn paused_keys(st: State) -> ApiResult<Json<serde_json::Value>> {
    let mut keys = st.store.paused_keys().await?;
    keys.sort();
    Ok(Json(json!({ "paused": keys })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    name: String,
    cron: String,
    plugin: String,
    key: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    timezone: Option<String>,
}

/// How many upcoming occurrences a schedule's answer lists.
const NEXT_RUNS: usize = 3;

/// The next [`NEXT_RUNS`] occurrences after now (and after the last one fired).
fn next_runs(s: &Schedule, now: i64) -> Vec<i64> {
    let Ok(spec) = CronSpec::parse(&s.cron, s.timezone.as_deref()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(NEXT_RUNS);
    let mut after = s.last_fired.unwrap_or(now).max(now);
    while out.len() < NEXT_RUNS {
        match spec.next_after(after) {
            Some(t) if t > after => {
                out.push(t);
                after = t;
            }
            _ => break,
        }
    }
    out
}

/// Creates or replaces a schedule. Occurrences start after now.
pub async fn put_schedule(st: State, body: Body) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    let b: ScheduleBody =
        read_json(body, st.enqueuer.defaults.max_payload_bytes + 64 * 1024).await?;
    let now = st.enqueuer.clock.now();
    let s = Schedule {
        name: b.name,
        cron: b.cron,
        plugin: b.plugin,
        key: b.key,
        payload: b
            .payload
            .map(|p| p.get().to_string())
            .unwrap_or_else(|| "{}".into()),
        timezone: b.timezone,
        last_fired: None,
        created_at: now,
    };
    cron::validate(&s, &st.enqueuer)?;
    st.store.put_schedule(s.clone()).await?;
    st.schedules_changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(ScheduleView::new(&s, next_runs(&s, now))),
    ))
}

pub async fn list_schedules(st: State) -> ApiResult<Json<Vec<ScheduleView>>> {
    let now = st.enqueuer.clock.now();
    let all = st.store.list_schedules().await?;
    Ok(Json(
        all.iter()
            .map(|s| ScheduleView::new(s, next_runs(s, now)))
            .collect(),
    ))
}

pub async fn get_schedule(st: State, Path(name): Path<String>) -> ApiResult<Json<ScheduleView>> {
    let now = st.enqueuer.clock.now();
    match st.store.get_schedule(&name).await? {
        Some(s) => Ok(Json(ScheduleView::new(&s, next_runs(&s, now)))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("schedule {name:?} not found"),
        )),
    }
}

pub async fn delete_schedule(
    st: State,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if st.store.delete_schedule(&name).await? {
        st.schedules_changed.notify_one();
        Ok(Json(json!({ "deleted": name })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("schedule {name:?} not found"),
        ))
    }
}

/// 200 while the node can take work; 503 with the reason while its store cannot write.
pub async fn healthz(st: State) -> Response {
    let owned = st.scheduler.owned().await;
    match st.store.health().await {
        Ok(()) => Json(
            json!({ "status": "ok", "node_id": st.node_id, "partitions_owned": owned.len(), "partitions": owned }),
        )
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "error": format!("the store cannot write: {e}"),
                "node_id": st.node_id,
                "partitions_owned": owned.len(),
                "partitions": owned,
            })),
        )
            .into_response(),
    }
}

pub async fn metrics(st: State) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}
