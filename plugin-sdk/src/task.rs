//! The task handed to a plugin, and what the plugin hands back.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A task plugin as a trait: one `run` per attempt, each in a fresh instance (no state survives
/// between calls except through [`kv`](crate::kv)). Export it with
/// [`export_plugin!`](crate::export_plugin).
///
/// Superseded by [`#[task]`](macro@crate::task) on a function, which parses the payload and takes any
/// error type; kept for one release so existing plugins build unchanged.
pub trait Plugin {
    /// Runs one attempt of `task` (its payload is the JSON text: see [`Task::payload_json`]).
    ///
    /// `Ok` completes the task; [`TaskError::retryable`] asks for another attempt (after backoff,
    /// or after [`TaskError::retry_after`]'s delay); [`TaskError::permanent`] kills the task.
    /// A panic is a failed attempt: its message reaches stderr and the task log.
    fn run(task: Task) -> Result<Outcome, TaskError>;
}

/// One attempt of one task, with its payload parsed into `P`.
///
/// A [`#[task]`](macro@crate::task) function takes a `Task<MyPayload>` (any
/// [`Deserialize`](serde::Deserialize) type; `Task<serde_json::Value>` for any JSON). The
/// [`Plugin`] trait gets a `Task` (`Task<String>`), whose payload is the JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task<P = String> {
    /// Stable across attempts: use it (with `attempt`) as an idempotency key.
    pub id: String,
    /// The ordering key: tasks with the same key run one at a time, in order.
    pub key: String,
    /// This plugin's name.
    pub plugin: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When the task was due, Unix epoch milliseconds.
    pub due_at_ms: i64,
    /// The payload: parsed for a `#[task]` function, the JSON text for a [`Plugin`].
    pub payload: P,
}

impl Task {
    /// Decodes the JSON payload into `T`.
    ///
    /// A payload that does not match `T` cannot get better by retrying, so the error is
    /// [`TaskError::Permanent`], naming the type and serde's reason (field, line, column).
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_str(&self.payload).map_err(|e| {
            TaskError::permanent(format!(
                "invalid payload for plugin `{}` (expected {}): {e}",
                self.plugin,
                short_type_name::<T>()
            ))
        })
    }

    /// The same task with its payload decoded (a permanent error as for [`Task::payload_json`]).
    pub(crate) fn parse<T: DeserializeOwned>(self) -> Result<Task<T>, TaskError> {
        let payload = self.payload_json()?;
        Ok(Task {
            id: self.id,
            key: self.key,
            plugin: self.plugin,
            attempt: self.attempt,
            due_at_ms: self.due_at_ms,
            payload,
        })
    }
}

/// `my_plugin::Payload` → `Payload`, `Vec<my_plugin::Item>` → `Vec<Item>`.
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or_default());
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or_default());
    out
}

/// A successful run, with an optional output kept in the task's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Shown with the task (`kairos task show`, the API); keep it short.
    pub output: Option<String>,
}

impl Outcome {
    /// Success without output.
    pub fn done() -> Self {
        Outcome { output: None }
    }

    /// Success with a text output.
    pub fn with_output(output: impl Into<String>) -> Self {
        Outcome {
            output: Some(output.into()),
        }
    }

    /// Success with `value` serialized as the JSON output.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, TaskError> {
        serde_json::to_string(value)
            .map(Outcome::with_output)
            .map_err(|e| TaskError::permanent(format!("cannot serialize the output: {e}")))
    }
}

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// Try again later (counts against the task's maximum attempts).
    Retryable {
        /// What went wrong, kept in the task's attempt history.
        message: String,
        /// Wait at least this long before the next attempt (otherwise backoff decides).
        retry_after_ms: Option<u64>,
    },
    /// Retrying is pointless: the task is dead at once.
    Permanent {
        /// What went wrong, kept in the task's attempt history.
        message: String,
    },
}

impl TaskError {
    /// A failure worth retrying after the task's backoff (a 5xx, a timeout, a lost connection).
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError::Retryable {
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A failure worth retrying, but not before `retry_after_ms` milliseconds (a 429 with
    /// `Retry-After`, a known maintenance window).
    pub fn retry_after(message: impl Into<String>, retry_after_ms: u64) -> Self {
        TaskError::Retryable {
            message: message.into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }

    /// A failure that retrying cannot fix (a bad payload, a 4xx, a denied host).
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskError::Permanent {
            message: message.into(),
        }
    }

    /// The message, whichever the kind.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Retryable { message, .. } | TaskError::Permanent { message } => message,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Retryable { .. })
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Retryable {
                message,
                retry_after_ms: Some(ms),
            } => write!(f, "{message} (retry after {ms} ms)"),
            TaskError::Retryable { message, .. } => f.write_str(message),
            TaskError::Permanent { message } => write!(f, "{message} (permanent)"),
        }
    }
}

impl std::error::Error for TaskError {}
