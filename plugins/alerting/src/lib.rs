//! `alerting`: an escalation policy per incident.
//!
//! Escalate (one task per level, the plugin schedules the next one itself):
//!
//! ```json
//! {"incident": "db-42",
//!  "policy": [{"after_ms": 0, "targets": ["http://pager.internal/oncall"]},
//!             {"after_ms": 300000, "targets": ["http://pager.internal/lead", "http://chat.internal/ops"]}],
//!  "level": 0, "message": "primary database down", "severity": "critical"}
//! ```
//!
//! `level` (0-based) defaults to 0; `message` and `severity` are optional. A run of level `n`
//! does nothing if the incident is acknowledged or resolved. Otherwise it schedules one `notify`
//! task per target of level `n` and, when level `n + 1` exists, this plugin again for that level,
//! `policy[n + 1].after_ms` from now. Level 0's `after_ms` is not used: level 0 runs when the
//! task enqueued by the caller is due.
//!
//! Acknowledge or resolve: `{"incident": "db-42", "action": "ack"}` (or `"resolve"`) records
//! the state in this plugin's kv under `incident/{incident}/state`.
//!
//! # Ordering
//!
//! Every task of an incident, escalation levels, acks and the notifications they fan out to,
//! uses the incident id as its ordering key, and tasks with one key run one at a time in due
//! order. So an ack is ordered with the escalation: it either runs before a level, which then
//! reads the recorded state and stops, or after it, and the next level stops. A level never
//! races an ack into paging someone after the incident was acknowledged. (The flip side: a
//! notification still retrying holds the key, so it delays the next level and the ack until it
//! succeeds or dies; keep `notify`'s retry budget short.)
//!
//! # Retries
//!
//! Follow-ups carry uniqueness keys (`alert:{incident}:{level}:{i}` per notification,
//! `alert:{incident}:{level}` per level), so a retried attempt does not page anyone twice or
//! fork the escalation.

mod escalate;
mod payload;
mod state;

use kairos_plugin_sdk::{Outcome, Plugin, Task, TaskError};

use payload::{Command, Payload};

struct Alerting;

impl Plugin for Alerting {
    fn run(task: Task) -> Result<Outcome, TaskError> {
        let payload: Payload = task.payload_json()?;
        match payload.command()? {
            Command::Record { incident, action } => state::record(&task, &incident, action),
            Command::Escalate(escalation) => escalate::run(&task, &escalation),
        }
    }
}

kairos_plugin_sdk::export_plugin!(Alerting);
