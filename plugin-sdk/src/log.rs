//! Structured logging into the task's log (and the host's).
//!
//! The [`log`](https://docs.rs/log) crate's macros work: the SDK installs a `log::Log`
//! backend before it calls the plugin's code. They are re-exported here, so no `log`
//! dependency is needed (a plugin's own `log = "0.4"` dependency reaches the same backend, as
//! do the plugin's dependencies that log):
//!
//! ```rust,ignore
//! use kairos_plugin_sdk::log;
//!
//! log::info!("delivered to {url}");
//! log::warn!(url = url.as_str(), status = response.status; "delivery refused");
//! ```
//!
//! Key-values (`key = value;` before the message) become the line's fields. Every level is
//! sent; each line is a host call (counted in `max_host_calls`) and counts in the attempt's
//! log caps, so a chatty dependency can be quietened with
//! `log::set_max_level(log::LevelFilter::Info)` (re-exported too) in the task function. The
//! line's target (the module that logged) is not kept.
//!
//! The functions below log with explicit fields, each a name and anything that implements
//! [`Display`]:
//!
//! ```rust,ignore
//! log::info("delivered", &[("url", &url), ("status", &response.status)]);
//! ```
//!
//! Plain `println!`/`eprintln!` output is captured too, but without level or fields.

use std::fmt::Display;

pub use ::log::{LevelFilter, debug, error, info, set_max_level, trace, warn};

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
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_string()))
        .collect();
    wit::log(level.into(), message, &fields);
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
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

/// The `log` crate's backend: each record becomes one line of the task log, its key-values
/// the line's fields.
struct HostLogger;

impl ::log::Log for HostLogger {
    fn enabled(&self, _: &::log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &::log::Record<'_>) {
        let level = match record.level() {
            ::log::Level::Trace => wit::Level::Trace,
            ::log::Level::Debug => wit::Level::Debug,
            ::log::Level::Info => wit::Level::Info,
            ::log::Level::Warn => wit::Level::Warn,
            ::log::Level::Error => wit::Level::Error,
        };
        let message = record.args().to_string();
        let mut fields = Fields(Vec::new());
        // A visitor that never fails: every pair is kept.
        let _ = record.key_values().visit(&mut fields);
        wit::log(level, &message, &fields.0);
    }

    fn flush(&self) {}
}

struct Fields(Vec<(String, String)>);

impl<'kvs> ::log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: ::log::kv::Key<'kvs>,
        value: ::log::kv::Value<'kvs>,
    ) -> Result<(), ::log::kv::Error> {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

/// Makes [`HostLogger`] the `log` crate's logger with every level on (before each attempt's
/// code runs; an instance runs one attempt, so this is once per instance).
pub(crate) fn install_logger() {
    static LOGGER: HostLogger = HostLogger;
    if ::log::set_logger(&LOGGER).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Trace);
    }
}
