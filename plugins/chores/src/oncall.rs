//! The on-call reminder: one task per shift, each scheduling the next.
//!
//! The next reminder is scheduled *before* this one is posted, so a receiver that keeps
//! failing does not end the rotation; its uniqueness key (which includes the next shift's
//! start) makes retries of this attempt enqueue it once. A reminder that was delivered is
//! recorded in kv (`reminders/{engineer}/{shift_start_ms}`), so a retry after a later failure
//! does not post it twice. Those records are what `purge-kv` with prefix `reminders/` cleans.

use kairos_plugin_sdk::{
    FollowUp, Outcome, Task, TaskError, When, http, kv, log, now_ms, schedule,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Reminder {
    url: String,
    engineer: String,
    shift_start_ms: i64,
    remind_before_ms: i64,
    rotation_ms: i64,
}

/// The `chore` tag is consumed by the enum; the follow-up must carry it again.
#[derive(Serialize)]
struct NextPayload<'a> {
    chore: &'static str,
    #[serde(flatten)]
    reminder: &'a Reminder,
}

pub fn run(task: &Task, reminder: &Reminder) -> Result<Outcome, TaskError> {
    if reminder.rotation_ms <= 0 {
        return Err(TaskError::permanent(format!(
            "invalid payload: rotation_ms must be positive, got {}",
            reminder.rotation_ms
        )));
    }
    let next_shift = reminder
        .shift_start_ms
        .checked_add(reminder.rotation_ms)
        .ok_or_else(|| TaskError::permanent("invalid payload: next shift start overflows"))?;
    let next_due = next_shift.saturating_sub(reminder.remind_before_ms);
    let next = Reminder {
        shift_start_ms: next_shift,
        ..reminder.clone()
    };
    schedule(
        FollowUp::new(
            &task.plugin,
            &task.key,
            When::At(next_due),
            NextPayload {
                chore: "oncall-reminder",
                reminder: &next,
            },
        )
        .unique(format!(
            "oncall-reminder:{}:{}:{next_shift}",
            task.key, reminder.engineer
        )),
    )?;

    let sent_key = format!(
        "reminders/{}/{}",
        reminder.engineer, reminder.shift_start_ms
    );
    if kv::get(&sent_key)?.is_some() {
        return Ok(Outcome::with_output(format!(
            "reminder for {} already delivered; next due at {next_due}",
            reminder.engineer
        )));
    }
    let starts_in_min = (reminder.shift_start_ms - now_ms()) / 60_000;
    let body = kairos_plugin_sdk::serde_json::json!({
        "chore": "oncall-reminder",
        "engineer": reminder.engineer,
        "shift_start_ms": reminder.shift_start_ms,
        "message": format!(
            "{} is on call from {} (in {starts_in_min} min)",
            reminder.engineer,
            utc(reminder.shift_start_ms)
        ),
        "task_id": task.id,
        "attempt": task.attempt,
    });
    let response = http::post_json(&reminder.url, &body)?;
    if !response.is_success() {
        let message = format!("POST {} returned {}", reminder.url, response.status);
        return Err(if response.status >= 500 || response.status == 429 {
            TaskError::retryable(message)
        } else {
            TaskError::permanent(message)
        });
    }
    kv::set(&sent_key, task.id.as_bytes())?;
    log::info(
        "on-call reminder sent",
        &[
            ("engineer", &reminder.engineer),
            ("shift_start_ms", &reminder.shift_start_ms),
            ("next_due_ms", &next_due),
        ],
    );
    Ok(Outcome::with_output(format!(
        "reminded {}; next reminder at {next_due} for the shift at {next_shift}",
        reminder.engineer
    )))
}

/// `ms` as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian calendar).
fn utc(ms: i64) -> String {
    let minutes = ms.div_euclid(60_000);
    let (days, minute_of_day) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}
