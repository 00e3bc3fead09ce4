//! Test guest (not shipped): the SDK's one-function form, `#[task]` on a function taking a
//! `Task<Payload>` and returning `anyhow::Result<Outcome>`. The payload's `mode` picks what it
//! does (`host/runtime/tests/sdk.rs` runs each):
//!
//! | payload | result |
//! |---|---|
//! | `{"mode": "greet", "name": N}` | output `hello N (attempt A, key K)` |
//! | `{"mode": "parse", "number": S}` | output `S + 1`; `?` on the `ParseIntError` with context: retryable |
//! | `{"mode": "permanent", "why": W}` | `permanent(anyhow!(W))` |
//! | `{"mode": "retry_after", "why": W, "ms": M}` | `Err(..).retry_after(M)` |
//! | `{"mode": "log", "message": M}` | `log::info!` with a field, `::log::warn!`, then done |
//! | `{"mode": "http", "url": U, "body": B}` | POST `B` to `U` with `http::send`; output `STATUS BODY` |

use anyhow::{Context as _, anyhow};
use kairos_plugin_sdk::{Outcome, ResultExt as _, Task, http};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Payload {
    Greet { name: String },
    Parse { number: String },
    Permanent { why: String },
    RetryAfter { why: String, ms: u64 },
    Log { message: String },
    Http { url: String, body: String },
}

#[kairos_plugin_sdk::task]
fn run(task: Task<Payload>) -> anyhow::Result<Outcome> {
    match &task.payload {
        Payload::Greet { name } => Ok(Outcome::with_output(format!(
            "hello {name} (attempt {}, key {})",
            task.attempt, task.key
        ))),
        Payload::Parse { number } => {
            let n: u64 = number
                .parse()
                .with_context(|| format!("parsing `{number}`"))?;
            Ok(Outcome::with_output((n + 1).to_string()))
        }
        Payload::Permanent { why } => Err(kairos_plugin_sdk::permanent(anyhow!("{why}"))),
        Payload::RetryAfter { why, ms } => {
            let failed: Result<(), _> = Err(anyhow!("{why}"));
            failed.retry_after(*ms)?;
            Ok(Outcome::done())
        }
        Payload::Log { message } => {
            kairos_plugin_sdk::log::info!(task_id = task.id, attempt = task.attempt; "{message}");
            log::warn!("through the plugin's own log dependency");
            Ok(Outcome::done())
        }
        Payload::Http { url, body } => {
            let request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", &task.id)
                .body(body.as_str())?;
            let response = http::send(request)?;
            let text = String::from_utf8_lossy(response.body());
            Ok(Outcome::with_output(format!(
                "{} {text}",
                response.status().as_u16()
            )))
        }
    }
}
