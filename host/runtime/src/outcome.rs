//! What a run is asked to do and what it reports.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::logs::LogLine;
use crate::services::TaskInfo;

/// One attempt to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub task: TaskInfo,
    /// Run this version (sha256 hex digest of the `.wasm`, or a unique prefix of at least
    /// 8 hex digits) instead of the current one.
    pub pin_version: Option<String>,
}

/// The report of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: RunOutcome,
    /// Digest of the plugin version that ran (`None` if none could be chosen).
    pub digest: Option<String>,
    /// Plugin log lines and host notes (in order), then captured stdout and stderr.
    pub logs: Vec<LogLine>,
    pub elapsed: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunOutcome {
    /// The plugin returned `ok`.
    Success { output: Option<String> },
    /// The plugin asked to be retried.
    Retryable {
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The plugin said retrying is pointless.
    Permanent { message: String },
    /// The host ended or could not start the attempt.
    Failed { kind: FailureKind, message: String },
}

impl RunOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Success { .. })
    }

    /// The failure kind, for `Failed` outcomes.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            RunOutcome::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::Success { output: None } => write!(f, "success"),
            RunOutcome::Success { output: Some(o) } => write!(f, "success: {o}"),
            RunOutcome::Retryable {
                message,
                retry_after_ms: Some(ms),
            } => write!(f, "retryable (after {ms} ms): {message}"),
            RunOutcome::Retryable { message, .. } => write!(f, "retryable: {message}"),
            RunOutcome::Permanent { message } => write!(f, "permanent: {message}"),
            RunOutcome::Failed { kind, message } => write!(f, "failed ({kind}): {message}"),
        }
    }
}

/// Why the host failed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    UnknownPlugin,
    UnknownVersion,
    Trap,
    OutOfMemory,
    CpuLimit,
    Timeout,
    OutputTooLarge,
    HostCallLimit,
    Instantiate,
}

impl FailureKind {
    /// A stable snake_case name (for metrics labels and stored records).
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::UnknownPlugin => "unknown_plugin",
            FailureKind::UnknownVersion => "unknown_version",
            FailureKind::Trap => "trap",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::CpuLimit => "cpu_limit",
            FailureKind::Timeout => "timeout",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::HostCallLimit => "host_call_limit",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::UnknownPlugin => "unknown plugin",
            FailureKind::UnknownVersion => "unknown plugin version",
            FailureKind::Trap => "trap",
            FailureKind::OutOfMemory => "out of memory",
            FailureKind::CpuLimit => "CPU limit",
            FailureKind::Timeout => "timeout",
            FailureKind::OutputTooLarge => "output too large",
            FailureKind::HostCallLimit => "host call limit",
            FailureKind::Instantiate => "instantiation failed",
        })
    }
}

/// A failure found before running (see [`crate::Runtime::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl RunFailure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        RunFailure {
            kind,
            message: message.into(),
        }
    }
}

impl From<RunFailure> for RunOutcome {
    fn from(f: RunFailure) -> Self {
        RunOutcome::Failed {
            kind: f.kind,
            message: f.message,
        }
    }
}
