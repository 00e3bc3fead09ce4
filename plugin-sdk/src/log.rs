//! Structured logging into the task's log (and the host's).
//!
//! ```rust,ignore
//! log::info("delivered", &[("url", &url), ("status", &response.status)]);
//! ```
//!
//! Each field is a name and anything that implements [`Display`]. Plain `println!`/`eprintln!`
//! output is captured too, but without level or fields.

use std::fmt::Display;

use crate::__private::bindings::kairos::plugin::log as wit;

/// A log line's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Diagnostics for the plugin's author.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd that did not stop the attempt.
    Warn,
    /// Something that failed.
    Error,
}

/// A structured field: a name and its value.
pub type Field<'a> = (&'a str, &'a dyn Display);

/// Logs `message` at `level` with structured `fields`.
pub fn log(level: Level, message: &str, fields: &[Field<'_>]) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_string()))
        .collect();
    wit::log(level, message, &fields);
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str, fields: &[Field<'_>]) {
    log(Level::Trace, message, fields);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str, fields: &[Field<'_>]) {
    log(Level::Debug, message, fields);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str, fields: &[Field<'_>]) {
    log(Level::Info, message, fields);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str, fields: &[Field<'_>]) {
    log(Level::Warn, message, fields);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str, fields: &[Field<'_>]) {
    log(Level::Error, message, fields);
}
