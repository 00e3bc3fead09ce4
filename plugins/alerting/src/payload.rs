//! The two payload shapes, checked into a [`Command`].

use kairos_plugin_sdk::TaskError;
use kairos_plugin_sdk::serde_json::Value;
use serde::{Deserialize, Serialize};

/// Both shapes at once; [`Payload::command`] tells which one was sent.
#[derive(Deserialize)]
pub struct Payload {
    incident: Value,
    action: Option<Action>,
    policy: Option<Vec<Level>>,
    #[serde(default)]
    level: usize,
    message: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[serde(alias = "acknowledge")]
    Ack,
    Resolve,
}

/// One level of a policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Level {
    /// Delay after the previous level ran.
    pub after_ms: u64,
    /// Webhook URLs, one `notify` task each.
    pub targets: Vec<String>,
}

/// An incident id: a JSON string or number, kept as sent (for payloads) and as text (for keys).
#[derive(Debug, Clone)]
pub struct Incident {
    pub json: Value,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Escalation {
    pub incident: Incident,
    pub policy: Vec<Level>,
    pub level: usize,
    pub message: Option<String>,
    pub severity: Option<String>,
}

pub enum Command {
    Record { incident: Incident, action: Action },
    Escalate(Escalation),
}

impl Payload {
    pub fn command(self) -> Result<Command, TaskError> {
        let id = match &self.incident {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(TaskError::permanent(format!(
                    "invalid payload: `incident` must be a non-empty string or a number, got {other}"
                )));
            }
        };
        let incident = Incident {
            json: self.incident,
            id,
        };
        if let Some(action) = self.action {
            return Ok(Command::Record { incident, action });
        }
        let policy = self.policy.ok_or_else(|| {
            TaskError::permanent(
                "invalid payload: expected `policy` (escalate) or `action` (\"ack\" or \"resolve\")",
            )
        })?;
        if self.level >= policy.len() {
            return Err(TaskError::permanent(format!(
                "invalid payload: level {} does not exist (the policy has {} level(s))",
                self.level,
                policy.len()
            )));
        }
        Ok(Command::Escalate(Escalation {
            incident,
            policy,
            level: self.level,
            message: self.message,
            severity: self.severity,
        }))
    }
}

impl Escalation {
    /// The payload of the task that runs `level` of this escalation.
    pub fn payload_for_level(&self, level: usize) -> Value {
        let mut payload = kairos_plugin_sdk::serde_json::json!({
            "incident": self.incident.json,
            "policy": self.policy,
            "level": level,
        });
        if let Some(map) = payload.as_object_mut() {
            if let Some(m) = &self.message {
                map.insert("message".into(), Value::from(m.as_str()));
            }
            if let Some(s) = &self.severity {
                map.insert("severity".into(), Value::from(s.as_str()));
            }
        }
        payload
    }
}
