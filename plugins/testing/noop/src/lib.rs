//! Test guest (not shipped): returns `Ok` at once, for measuring the host's per-task cost.

use kairos_plugin_sdk::{Outcome, Plugin, Task, TaskError};

struct Noop;

impl Plugin for Noop {
    fn run(_task: Task) -> Result<Outcome, TaskError> {
        Ok(Outcome::done())
    }
}

kairos_plugin_sdk::export_plugin!(Noop);
