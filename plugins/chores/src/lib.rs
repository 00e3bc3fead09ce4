//! `chores`: recurring housekeeping, chosen by the payload's `chore`.
//!
//! - `{"chore": "oncall-reminder", "url", "engineer", "shift_start_ms", "remind_before_ms",
//!   "rotation_ms"}`: POSTs a reminder that `engineer`'s shift starts at `shift_start_ms`, and
//!   schedules the next reminder, for the shift one rotation later, `remind_before_ms` before it
//!   starts (see `oncall.rs`).
//! - `{"chore": "purge-kv", "prefix", "older_than_ms"}`: deletes this plugin's kv entries under
//!   `prefix` last written more than `older_than_ms` ago; the output is
//!   `{"deleted": N, "complete": bool}` (`complete` is false when stale entries may remain; see
//!   `purge.rs`).

mod oncall;
mod purge;

use kairos_plugin_sdk::{Outcome, Plugin, Task, TaskError};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "chore", rename_all = "kebab-case")]
enum Chore {
    OncallReminder(oncall::Reminder),
    PurgeKv(purge::Purge),
}

struct Chores;

impl Plugin for Chores {
    fn run(task: Task) -> Result<Outcome, TaskError> {
        match task.payload_json()? {
            Chore::OncallReminder(reminder) => oncall::run(&task, &reminder),
            Chore::PurgeKv(purge) => purge::run(&purge),
        }
    }
}

kairos_plugin_sdk::export_plugin!(Chores);
