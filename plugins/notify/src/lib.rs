//! `notify`: delivers one notification as a JSON POST.
//!
//! Payload: a JSON object with a string `url`, plus any fields to deliver, e.g.
//! `{"url": "http://pager.internal/hook", "message": "disk full", "severity": "critical"}`.
//! The POST body is every field of the payload (`url` included) plus `task_id`, `key` and
//! `attempt`; the request carries the task id as its `Idempotency-Key` header. A receiver
//! drops duplicates by it: the same task id arrives again when an attempt is retried, or, after
//! a node crashed mid-attempt, when its attempt runs again on the partition's next owner.
//!
//! | outcome of the POST | task |
//! |---|---|
//! | 2xx | done, output `delivered: <status>` |
//! | 5xx, connection error, timeout | retryable |
//! | 429 or 408 | retryable, after `Retry-After` seconds when the receiver sends one |
//! | other 4xx (and 1xx/3xx) | permanent |
//! | host not in `allowed_hosts` | permanent, with the allowlist message |

mod status;

use kairos_plugin_sdk::serde_json::{Map, Value};
use kairos_plugin_sdk::{Outcome, Task, TaskError, http, log};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    url: String,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

#[kairos_plugin_sdk::task]
fn run(task: Task<Payload>) -> Result<Outcome, TaskError> {
    let Payload { url, mut fields } = task.payload;
    fields.insert("url".into(), Value::from(url.as_str()));
    fields.insert("task_id".into(), Value::from(task.id.as_str()));
    fields.insert("key".into(), Value::from(task.key.as_str()));
    fields.insert("attempt".into(), Value::from(task.attempt));

    let response = http::post_json_with(&url, &[("idempotency-key", &task.id)], &fields)?;
    log::info(
        "notification posted",
        &[("url", &url), ("status", &response.status)],
    );
    status::outcome(&url, &response)
}
