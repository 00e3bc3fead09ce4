//! What a response status means for the task.

use kairos_plugin_sdk::http::HttpResponse;
use kairos_plugin_sdk::{Outcome, TaskError};

/// At most this much of a failing response's body goes into the error message.
const BODY_EXCERPT: usize = 200;

pub fn outcome(url: &str, response: &HttpResponse) -> Result<Outcome, TaskError> {
    let status = response.status;
    if response.is_success() {
        return Ok(Outcome::with_output(format!("delivered: {status}")));
    }
    let message = format!(
        "POST {url} returned {status}: {}",
        excerpt(&response.text(), BODY_EXCERPT)
    );
    match status {
        500..=599 => Err(TaskError::retryable(message)),
        408 | 429 => Err(match retry_after_ms(response) {
            Some(ms) => TaskError::retry_after(message, ms),
            None => TaskError::retryable(message),
        }),
        _ => Err(TaskError::permanent(message)),
    }
}

/// `Retry-After` in delay-seconds form (the HTTP-date form is left to the backoff).
fn retry_after_ms(response: &HttpResponse) -> Option<u64> {
    let seconds: u64 = response.header("retry-after")?.trim().parse().ok()?;
    Some(seconds.saturating_mul(1000))
}

fn excerpt(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".to_owned(),
        None => text.to_owned(),
    }
}
