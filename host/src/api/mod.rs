//! The HTTP/JSON API (axum). Every error is a 4xx/5xx with `{"error": "..."}` saying what was
//! wrong.

mod admin;
mod forward;
mod guard;
mod limit;
mod serve;
mod status;
mod tasks;
pub mod tls;
mod ui;
mod view;

pub use forward::{FORWARDED_BY, Forwarder, Owners, SERVED_BY, SIGNATURE};
pub use guard::Guard;
pub use serve::{ServeOptions, serve};
pub use status::CountsCache;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kairos_core::store::{StoreError, TaskStore};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::enqueue::{Enqueuer, Rejection};
use crate::metrics::Metrics;
use crate::scheduler::{OpError, Scheduler};

/// What `GET /v1/plugins` lists.
pub trait PluginLister: Send + Sync + 'static {
    /// The loaded plugins (an array of objects with a `name`).
    fn list(&self) -> serde_json::Value;
    /// Plugin files rejected while no version of their plugin is loaded: `[{name, error}]`.
    fn rejected(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
}

pub struct AppState {
    pub enqueuer: Arc<Enqueuer>,
    pub scheduler: Arc<Scheduler>,
    pub store: Arc<dyn TaskStore>,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<dyn PluginLister>,
    pub schedules_changed: Arc<Notify>,
    pub node_id: String,
    /// Cluster mode: sends task operations on partitions this node does not own to their
    /// owner. `None` (embedded): every partition is this node's.
    pub forwarder: Option<Forwarder>,
    /// Counts by state for `/v1/stats`, reused for a second.
    pub counts: CountsCache,
}

pub type State = axum::extract::State<Arc<AppState>>;

/// How the API is guarded: who may call it (`guard`), how long a request may take, and how
/// many requests per second a token may make.
pub struct Protection {
    pub guard: Arc<Guard>,
    pub request_timeout: std::time::Duration,
    /// Per token; 0: unlimited. Applies only with tokens configured.
    pub rate_limit_per_s: u32,
    pub tokens_configured: bool,
}

pub fn router(state: Arc<AppState>, protection: Protection) -> Router {
    let routes = routes(state);
    let routes = if protection.tokens_configured {
        limit::per_token(routes, protection.rate_limit_per_s)
    } else {
        routes
    };
    routes
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            protection.request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            protection.guard,
            guard::check,
        ))
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route(
            "/v1/tasks/{id}",
            get(tasks::get)
                .delete(tasks::cancel)
                .patch(tasks::reschedule),
        )
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/v1/keys/paused", get(admin::paused_keys))
        .route("/v1/keys/{key}/pause", post(admin::pause_key))
        .route("/v1/keys/{key}/resume", post(admin::resume_key))
        .route(
            "/v1/schedules",
            post(admin::put_schedule).get(admin::list_schedules),
        )
        .route(
            "/v1/schedules/{name}",
            get(admin::get_schedule).delete(admin::delete_schedule),
        )
        .route("/v1/plugins", get(status::plugins))
        .route("/v1/stats", get(status::stats))
        .route("/v1/partitions", get(status::partitions))
        .route("/", get(ui::root))
        .route("/ui", get(ui::page))
        .route("/ui/{asset}", get(ui::asset))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // Bodies are read by `read_json` with our own limit, so a 413 is JSON too.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// `POST /v1/tasks/batch`: the index of the task that rejected the batch, answered as
    /// `"index": N` next to `"error"`.
    index: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            index: None,
        }
    }

    /// The error of the batch element at `index`: the message says `task [index]: …`, and
    /// the answer carries `"index": index`.
    pub fn at_index(mut self, index: usize) -> Self {
        self.message = format!("task [{index}]: {}", self.message);
        self.index = Some(index);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.index {
            Some(i) => serde_json::json!({ "error": self.message, "index": i }),
            None => serde_json::json!({ "error": self.message }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        Self::new(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.message,
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        OpError::from(e).into()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let status = match &e {
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::NotOwned(_) | OpError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

/// Reads a JSON body of at most `limit` bytes into `T`, with errors that say what was wrong.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json(&read_body(body, limit).await?)
}

/// Reads a body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the limit of {limit} bytes"),
        )
    })
}

/// Parses a JSON body into `T`, with errors that say what was wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty; expected a JSON document",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}"))
    })
}
