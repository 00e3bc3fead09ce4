//! The acknowledged/resolved state of an incident, in this plugin's kv.

use kairos_plugin_sdk::{Outcome, Task, TaskError, kv, log, now_ms};
use serde::{Deserialize, Serialize};

use crate::payload::{Action, Incident};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Acknowledged,
    Resolved,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub state: State,
    pub at_ms: i64,
    pub task_id: String,
}

pub fn key(incident: &Incident) -> String {
    format!("incident/{}/state", incident.id)
}

/// The recorded state, if the incident was acknowledged or resolved.
pub fn load(incident: &Incident) -> Result<Option<Record>, TaskError> {
    Ok(kv::get_json(&key(incident))?)
}

/// Records an ack or a resolve (a resolved incident stays resolved when acknowledged later).
pub fn record(task: &Task, incident: &Incident, action: Action) -> Result<Outcome, TaskError> {
    let wanted = match action {
        Action::Ack => State::Acknowledged,
        Action::Resolve => State::Resolved,
    };
    if let Some(current) = load(incident)?
        && (current.state == State::Resolved || current.state == wanted)
    {
        return Ok(Outcome::with_output(format!(
            "incident {} already {}",
            incident.id,
            name(current.state)
        )));
    }
    let record = Record {
        state: wanted,
        at_ms: now_ms(),
        task_id: task.id.clone(),
    };
    kv::set_json(&key(incident), &record)?;
    log::info(
        "incident state recorded",
        &[("incident", &incident.id), ("state", &name(wanted))],
    );
    Ok(Outcome::with_output(format!(
        "incident {} {}",
        incident.id,
        name(wanted)
    )))
}

pub fn name(state: State) -> &'static str {
    match state {
        State::Acknowledged => "acknowledged",
        State::Resolved => "resolved",
    }
}
