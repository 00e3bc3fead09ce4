//! Enqueue follow-up tasks: an escalation scheduling its next level, a reminder its next run.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::__private::bindings::kairos::plugin::scheduler as wit;

/// When a follow-up is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This many milliseconds from now.
    Delay(u64),
    /// At this Unix epoch millisecond (in the past means as soon as possible).
    At(i64),
}

impl When {
    /// As soon as possible (behind the tasks already queued on the same key).
    pub const NOW: When = When::Delay(0);

    /// `duration` from now (saturating at `u64::MAX` milliseconds).
    pub fn after(duration: Duration) -> Self {
        When::Delay(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A task to enqueue with [`schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp<P> {
    /// The plugin that runs it (this one, or any other).
    pub plugin: String,
    /// Its ordering key: tasks with the same key run one at a time, in order.
    pub key: String,
    /// When it is due.
    pub when: When,
    /// Its payload, serialized to JSON.
    pub payload: P,
    /// Enqueueing the same uniqueness key twice yields one task: set it whenever the attempt
    /// that schedules may be retried, so a retry does not enqueue a duplicate.
    pub uniqueness_key: Option<String>,
}

impl<P: Serialize> FollowUp<P> {
    /// A follow-up without uniqueness key.
    pub fn new(plugin: impl Into<String>, key: impl Into<String>, when: When, payload: P) -> Self {
        FollowUp {
            plugin: plugin.into(),
            key: key.into(),
            when,
            payload,
            uniqueness_key: None,
        }
    }

    /// The same follow-up with a uniqueness key.
    pub fn unique(mut self, uniqueness_key: impl Into<String>) -> Self {
        self.uniqueness_key = Some(uniqueness_key.into());
        self
    }
}

/// A follow-up that could not be enqueued.
///
/// Converts into a retryable [`TaskError`](crate::TaskError) when the host refused or failed,
/// and a permanent one when the payload could not be serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    message: String,
    data: bool,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScheduleError {}

impl From<ScheduleError> for crate::TaskError {
    fn from(error: ScheduleError) -> Self {
        if error.data {
            crate::TaskError::permanent(error.message)
        } else {
            crate::TaskError::retryable(error.message)
        }
    }
}

/// Enqueues `follow_up`; returns the task id (the existing task's when its uniqueness key was
/// already taken).
pub fn schedule<P: Serialize>(follow_up: FollowUp<P>) -> Result<String, ScheduleError> {
    let FollowUp {
        plugin,
        key,
        when,
        payload,
        uniqueness_key,
    } = follow_up;
    let payload = serde_json::to_string(&payload).map_err(|e| ScheduleError {
        message: format!("cannot serialize the payload of a `{plugin}` follow-up: {e}"),
        data: true,
    })?;
    let when = match when {
        When::Delay(ms) => wit::When::DelayMs(ms),
        When::At(ms) => wit::When::AtMs(ms),
    };
    let task = wit::FollowUp {
        plugin,
        key,
        when,
        payload,
        uniqueness_key,
    };
    wit::schedule(&task).map_err(|e| ScheduleError {
        message: format!(
            "scheduling a `{}` follow-up on key `{}` failed: {e}",
            task.plugin, task.key
        ),
        data: false,
    })
}
