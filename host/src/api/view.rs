//! JSON shapes of the API's answers.

use chrono::{SecondsFormat, TimeZone, Utc};
use kairos_core::model::{Attempt, Millis, Schedule, Task};
use serde::Serialize;
use serde_json::value::RawValue;

pub fn rfc3339(ms: Millis) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default())
}

#[derive(Serialize)]
pub struct TaskView {
    pub id: String,
    pub partition: u32,
    pub plugin: String,
    pub pin_version: Option<String>,
    pub key: String,
    pub state: &'static str,
    pub run_at: String,
    pub next_attempt_at: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub uniqueness_key: Option<String>,
    pub park_on_dead: bool,
    /// Follow-up generation: 0 from a client or schedule, +1 per plugin follow-up.
    pub generation: u32,
    pub payload: Box<RawValue>,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AttemptView>>,
}

#[derive(Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: String,
    pub ended_at: String,
    pub outcome: kairos_core::model::AttemptOutcome,
    pub error: Option<String>,
    pub plugin_digest: Option<String>,
    /// The last lines the plugin logged in this attempt (at most 20 lines, 2 KiB).
    pub logs: Option<String>,
}

impl TaskView {
    pub fn new(t: &Task, history: Option<&[Attempt]>) -> Self {
        Self {
            id: t.id.clone(),
            partition: t.partition,
            plugin: t.plugin.clone(),
            pin_version: t.pin_version.clone(),
            key: t.key.clone(),
            state: t.state.as_str(),
            run_at: rfc3339(t.due_at),
            next_attempt_at: (!t.state.is_terminal()).then(|| rfc3339(t.next_at)),
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            uniqueness_key: t.uniqueness_key.clone(),
            park_on_dead: t.park_on_dead,
            generation: t.generation,
            payload: raw(&t.payload),
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            last_error: t.last_error.clone(),
            output: t.output.clone(),
            history: history.map(|h| {
                h.iter()
                    .map(|a| AttemptView {
                        attempt: a.number,
                        started_at: rfc3339(a.started_at),
                        ended_at: rfc3339(a.ended_at),
                        outcome: a.outcome,
                        error: a.error.clone(),
                        plugin_digest: a.plugin_digest.clone(),
                        logs: a.logs.clone(),
                    })
                    .collect()
            }),
        }
    }
}

/// The answer to an enqueue.
#[derive(Serialize)]
pub struct Accepted {
    pub id: String,
    pub partition: u32,
    pub run_at: String,
    /// True when the uniqueness key was taken and this is the existing task.
    pub duplicate: bool,
}

#[derive(Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub plugin: String,
    pub key: String,
    pub payload: Box<RawValue>,
    pub timezone: Option<String>,
    pub last_fired: Option<String>,
    pub next_run: Option<String>,
    /// The next three occurrences, the first being `next_run`.
    pub next_runs: Vec<String>,
    pub created_at: String,
}

impl ScheduleView {
    pub fn new(s: &Schedule, next_runs: Vec<Millis>) -> Self {
        Self {
            name: s.name.clone(),
            cron: s.cron.clone(),
            plugin: s.plugin.clone(),
            key: s.key.clone(),
            payload: raw(&s.payload),
            timezone: s.timezone.clone(),
            last_fired: s.last_fired.map(rfc3339),
            next_run: next_runs.first().copied().map(rfc3339),
            next_runs: next_runs.into_iter().map(rfc3339).collect(),
            created_at: rfc3339(s.created_at),
        }
    }
}
