//! Errors of a [`#[task]`](macro@crate::task) function: any error type, retryable unless marked.

use std::error::Error as StdError;
use std::fmt;

use crate::http::HttpError;
use crate::kv::KvError;
use crate::{Outcome, ScheduleError, TaskError};

/// Marks `error` permanent: the task is dead at once, without another attempt.
///
/// ```rust,ignore
/// let region = regions.get(&task.payload.region).ok_or_else(|| {
///     kairos_plugin_sdk::permanent(anyhow::anyhow!("no region {}", task.payload.region))
/// })?;
/// ```
pub fn permanent(error: impl Into<anyhow::Error>) -> anyhow::Error {
    Marked::wrap(error.into(), Mark::Permanent)
}

/// Marks `error` retryable, not before `retry_after_ms` milliseconds (a 429 with
/// `Retry-After`, a known maintenance window).
pub fn retry_after(error: impl Into<anyhow::Error>, retry_after_ms: u64) -> anyhow::Error {
    Marked::wrap(error.into(), Mark::RetryAfter(retry_after_ms))
}

/// [`permanent`] and [`retry_after`] as methods on any `Result` whose error converts into
/// `anyhow::Error`.
///
/// ```rust,ignore
/// use kairos_plugin_sdk::ResultExt as _;
///
/// let when = chrono::DateTime::parse_from_rfc3339(&task.payload.when).permanent()?;
/// ```
pub trait ResultExt<T> {
    /// The error, if any, marked with [`permanent`].
    fn permanent(self) -> anyhow::Result<T>;

    /// The error, if any, marked with [`retry_after`].
    fn retry_after(self, retry_after_ms: u64) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> anyhow::Result<T> {
        self.map_err(permanent)
    }

    fn retry_after(self, retry_after_ms: u64) -> anyhow::Result<T> {
        self.map_err(|e| retry_after(e, retry_after_ms))
    }
}

/// What a [`#[task]`](macro@crate::task) function may return: `Result<Outcome, E>`, or
/// `Result<(), E>` (success without output), for any `E` that converts into `anyhow::Error`:
/// `anyhow::Error` itself, [`TaskError`], any `std::error::Error + Send + Sync + 'static`.
/// The error becomes a [`TaskError`] as its `From<anyhow::Error>` describes.
#[diagnostic::on_unimplemented(
    message = "a #[task] function returns `Result<Outcome, E>` or `Result<(), E>`, not `{Self}`",
    label = "not a `Result<Outcome, E>` or `Result<(), E>` with `E: Into<anyhow::Error>`",
    note = "E may be anyhow::Error, kairos_plugin_sdk::TaskError, or any \
            std::error::Error + Send + Sync + 'static"
)]
pub trait TaskReturn {
    /// The attempt's result as the host sees it.
    fn into_task_result(self) -> Result<Outcome, TaskError>;
}

impl<E: Into<anyhow::Error>> TaskReturn for Result<Outcome, E> {
    fn into_task_result(self) -> Result<Outcome, TaskError> {
        self.map_err(|e| TaskError::from(e.into()))
    }
}

impl<E: Into<anyhow::Error>> TaskReturn for Result<(), E> {
    fn into_task_result(self) -> Result<Outcome, TaskError> {
        self.map(|()| Outcome::done())
            .map_err(|e| TaskError::from(e.into()))
    }
}

/// Any error becomes a task error: retryable, unless an error in its chain (outermost first)
/// says otherwise:
///
/// - one marked with [`permanent`] or [`retry_after`];
/// - a [`TaskError`], which keeps its kind and delay;
/// - an SDK error, classified as when it converts into [`TaskError`] directly: kv and scheduler
///   failures of the host retryable, undecodable data permanent; HTTP connection errors and
///   timeouts retryable, a denied host or an invalid URL permanent;
/// - an `http::Error` (a request that could not be built), permanent.
///
/// The message is the chain's messages joined with `": "` (as anyhow's `{:#}` prints it).
impl From<anyhow::Error> for TaskError {
    fn from(error: anyhow::Error) -> Self {
        let kind = error
            .chain()
            .find_map(kind_of)
            .unwrap_or(Kind::Retryable(None));
        let mut message = String::new();
        for part in error.chain().map(message_of) {
            if part.is_empty() {
                continue;
            }
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&part);
        }
        if message.is_empty() {
            message = "the task failed (its error has no message)".to_owned();
        }
        match kind {
            Kind::Permanent => TaskError::Permanent { message },
            Kind::Retryable(retry_after_ms) => TaskError::Retryable {
                message,
                retry_after_ms,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Retryable(Option<u64>),
    Permanent,
}

impl From<&TaskError> for Kind {
    fn from(error: &TaskError) -> Self {
        match error {
            TaskError::Retryable { retry_after_ms, .. } => Kind::Retryable(*retry_after_ms),
            TaskError::Permanent { .. } => Kind::Permanent,
        }
    }
}

fn kind_of(error: &(dyn StdError + 'static)) -> Option<Kind> {
    if let Some(marked) = error.downcast_ref::<Marked>() {
        return Some(match marked.mark {
            Mark::Permanent => Kind::Permanent,
            Mark::RetryAfter(ms) => Kind::Retryable(Some(ms)),
        });
    }
    if let Some(e) = error.downcast_ref::<TaskError>() {
        return Some(e.into());
    }
    if let Some(e) = error.downcast_ref::<HttpError>() {
        return Some((&TaskError::from(e.clone())).into());
    }
    if let Some(e) = error.downcast_ref::<KvError>() {
        return Some((&TaskError::from(e.clone())).into());
    }
    if let Some(e) = error.downcast_ref::<ScheduleError>() {
        return Some((&TaskError::from(e.clone())).into());
    }
    if error.downcast_ref::<::http::Error>().is_some() {
        return Some(Kind::Permanent);
    }
    None
}

/// One error's own message: a [`TaskError`]'s without the kind its `Display` adds.
fn message_of(error: &(dyn StdError + 'static)) -> String {
    if let Some(marked) = error.downcast_ref::<Marked>() {
        let inner: &(dyn StdError + 'static) = &*marked.error;
        return message_of(inner);
    }
    if let Some(e) = error.downcast_ref::<TaskError>() {
        return e.message().to_owned();
    }
    error.to_string()
}

#[derive(Debug, Clone, Copy)]
enum Mark {
    Permanent,
    RetryAfter(u64),
}

/// An error with its kind decided by [`permanent`] or [`retry_after`]; transparent otherwise
/// (the wrapped error's message, the wrapped error's sources).
struct Marked {
    mark: Mark,
    error: anyhow::Error,
}

impl Marked {
    fn wrap(error: anyhow::Error, mark: Mark) -> anyhow::Error {
        anyhow::Error::new(Marked { mark, error })
    }
}

impl fmt::Display for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped error's own message only: its sources follow in the chain.
        write!(f, "{}", self.error)
    }
}

impl fmt::Debug for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl StdError for Marked {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_error(error: impl Into<anyhow::Error>) -> TaskError {
        TaskError::from(error.into())
    }

    #[test]
    fn any_error_is_retryable_with_its_chain_as_message() {
        let error = anyhow::anyhow!("connection reset").context("loading the rota");
        assert_eq!(
            task_error(error),
            TaskError::retryable("loading the rota: connection reset")
        );
        let io = std::io::Error::other("disk on fire");
        assert_eq!(task_error(io), TaskError::retryable("disk on fire"));
    }

    #[test]
    fn marks_decide_and_the_outermost_wins() {
        let error = permanent(anyhow::anyhow!("no such region")).context("routing");
        assert_eq!(
            task_error(error),
            TaskError::permanent("routing: no such region")
        );
        let error = retry_after(anyhow::anyhow!("busy"), 5000);
        assert_eq!(task_error(error), TaskError::retry_after("busy", 5000));
        let error = retry_after(permanent(anyhow::anyhow!("x")), 10);
        assert_eq!(task_error(error), TaskError::retry_after("x", 10));
        let result: Result<(), std::io::Error> = Err(std::io::Error::other("gone"));
        assert_eq!(
            task_error(result.permanent().expect_err("an error")),
            TaskError::permanent("gone")
        );
    }

    #[test]
    fn sdk_errors_keep_their_kind_through_anyhow() {
        let denied = HttpError::Denied {
            host: "evil.example".into(),
        };
        let error = anyhow::Error::new(denied.clone()).context("posting");
        let converted = task_error(error);
        assert!(!converted.is_retryable(), "{converted:?}");
        assert_eq!(converted.message(), format!("posting: {denied}"));
        assert!(task_error(HttpError::Timeout("slow".into())).is_retryable());
        let inner = TaskError::retry_after("rate limited", 7);
        assert_eq!(task_error(anyhow::Error::new(inner.clone())), inner);
        let inner = TaskError::permanent("bad");
        assert_eq!(task_error(inner.clone()), inner, "no `(permanent)` suffix");
        let built = ::http::Request::builder().uri("http://a b/").body(());
        assert!(!task_error(built.expect_err("invalid URI")).is_retryable());
    }

    #[test]
    fn return_types() {
        let unit: anyhow::Result<()> = Ok(());
        assert_eq!(unit.into_task_result(), Ok(Outcome::done()));
        let out: Result<Outcome, TaskError> = Ok(Outcome::with_output("x"));
        assert_eq!(out.into_task_result(), Ok(Outcome::with_output("x")));
        let failed: Result<(), std::fmt::Error> = Err(std::fmt::Error);
        assert!(failed.into_task_result().is_err_and(|e| e.is_retryable()));
    }
}
