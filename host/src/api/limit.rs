//! Per-token request rate limit (tower_governor), keyed by the name of the token the guard
//! found on the request. Installed only when tokens are configured; then every request but
//! `/healthz` has one (those share one bucket).

use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use super::ApiError;
use crate::auth::Principal;

#[derive(Debug, Clone, Copy)]
struct TokenName;

impl KeyExtractor for TokenName {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        Ok(req
            .extensions()
            .get::<Principal>()
            .map(|p| p.name.clone())
            .unwrap_or_default())
    }
}

/// `routes` with at most `per_s` requests per second per token (bursts of `2 × per_s`);
/// 0: unlimited.
pub fn per_token(routes: Router, per_s: u32) -> Router {
    if per_s == 0 {
        return routes;
    }
    let period = Duration::from_nanos((1_000_000_000 / u64::from(per_s)).max(1));
    let Some(config) = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(per_s.saturating_mul(2))
        .key_extractor(TokenName)
        .finish()
    else {
        return routes;
    };
    routes.layer(
        GovernorLayer::new(config).error_handler(move |e| match e {
            GovernorError::TooManyRequests { wait_time, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit of {per_s} requests/s for this token exceeded; retry in {wait_time} s"),
            )
            .into_response(),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
                .into_response(),
        }),
    )
}
