//! Incident notifier, the Rust edition of plugins/examples (rust, python, js do the same).
//!
//! Payload: `{"incident": "42", "url": "http://hooks.example/incident", "message": "disk full",
//! "remind_in_ms": 60000}` (`remind_in_ms` optional). Posts the message to `url` (which must
//! be in the plugin's `allowed_hosts`) with the task id as idempotency key, counts the notices
//! per incident in kv, and schedules one reminder of itself after `remind_in_ms`. Config:
//! `channel` (default "ops").

use anyhow::anyhow;
use kairos_plugin_sdk::serde_json::{Value, json};
use kairos_plugin_sdk::{FollowUp, Outcome, Task, When, config, http, kv, log, permanent};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Clone)]
struct Notice {
    incident: String,
    url: String,
    #[serde(default)]
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remind_in_ms: Option<u64>,
    #[serde(default)]
    reminder: bool,
}

#[kairos_plugin_sdk::task]
fn run(task: Task<Notice>) -> anyhow::Result<Outcome> {
    let p = &task.payload;
    log::info!(incident = p.incident, attempt = task.attempt, reminder = p.reminder; "notifying");
    let counter = format!("sent/{}", p.incident);
    let count = kv::get_json::<u64>(&counter)?.unwrap_or(0) + 1;
    let body = json!({
        "incident": p.incident,
        "message": p.message,
        "channel": config::get("channel").unwrap_or_else(|| "ops".into()),
        "count": count,
        "reminder": p.reminder,
        "task": task.id,
        "lang": "rust",
    });
    // Denied hosts and invalid URLs are permanent errors; connection errors retry.
    let r = http::post_json_with(&p.url, &[("idempotency-key", &task.id)], &body)?;
    if (400..500).contains(&r.status) {
        return Err(permanent(anyhow!(
            "the hook refused the notice: HTTP {}",
            r.status
        )));
    }
    if !(200..300).contains(&r.status) {
        return Err(anyhow!("the hook answered HTTP {}", r.status)); // retryable
    }
    kv::set_json(&counter, &count)?;
    let mut follow_up = Value::Null;
    if let (Some(ms), false) = (p.remind_in_ms, p.reminder) {
        let again = Notice {
            reminder: true,
            remind_in_ms: None,
            ..p.clone()
        };
        let f = FollowUp::new(&task.plugin, &task.key, When::Delay(ms), again)
            .unique(format!("remind:{}", task.id));
        follow_up = Value::String(kairos_plugin_sdk::schedule(f)?);
    }
    let output = json!({"status": r.status, "count": count, "follow_up": follow_up});
    Ok(Outcome::with_output(output.to_string()))
}
