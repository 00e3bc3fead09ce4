//! Running one level of an escalation.

use kairos_plugin_sdk::serde_json::json;
use kairos_plugin_sdk::{FollowUp, Outcome, Task, TaskError, When, log, schedule};

use crate::payload::Escalation;
use crate::state;

const DEFAULT_SEVERITY: &str = "critical";

pub fn run(task: &Task, escalation: &Escalation) -> Result<Outcome, TaskError> {
    let incident = &escalation.incident;
    let level = escalation.level;
    if let Some(record) = state::load(incident)? {
        let state = state::name(record.state);
        log::info(
            "escalation stopped",
            &[
                ("incident", &incident.id),
                ("level", &level),
                ("state", &state),
            ],
        );
        return Ok(Outcome::with_output(format!(
            "incident {} is {state}: escalation stopped before level {level}",
            incident.id
        )));
    }

    let message = escalation.message.clone().unwrap_or_else(|| {
        format!(
            "Incident {} is not acknowledged (escalation level {level})",
            incident.id
        )
    });
    let severity = escalation.severity.as_deref().unwrap_or(DEFAULT_SEVERITY);
    let targets = escalation
        .policy
        .get(level)
        .map(|l| l.targets.as_slice())
        .ok_or_else(|| TaskError::permanent(format!("level {level} is not in the policy")))?;
    for (i, url) in targets.iter().enumerate() {
        let payload = json!({
            "url": url,
            "message": message,
            "severity": severity,
            "incident": incident.json,
            "level": level,
        });
        schedule(
            FollowUp::new("notify", &incident.id, When::NOW, payload)
                .unique(format!("alert:{}:{level}:{i}", incident.id)),
        )?;
    }

    let next = level + 1;
    let summary = match escalation.policy.get(next) {
        Some(next_level) => {
            schedule(
                FollowUp::new(
                    &task.plugin,
                    &incident.id,
                    When::Delay(next_level.after_ms),
                    escalation.payload_for_level(next),
                )
                .unique(format!("alert:{}:{next}", incident.id)),
            )?;
            format!("level {next} in {} ms", next_level.after_ms)
        }
        None => "last level".to_owned(),
    };
    log::info(
        "escalation level run",
        &[
            ("incident", &incident.id),
            ("level", &level),
            ("notifications", &targets.len()),
            ("next", &summary),
        ],
    );
    Ok(Outcome::with_output(format!(
        "incident {} level {level}: {} notification(s) scheduled; {summary}",
        incident.id,
        targets.len()
    )))
}
