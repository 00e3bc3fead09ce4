//! Write Kairos task plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2` (which makes it a WebAssembly
//! component: no extra tooling). It implements [`Plugin`] and exports it with
//! [`export_plugin!`]; the host calls [`Plugin::run`] once per attempt of a task, each time in a
//! fresh sandboxed instance with its own memory, CPU and wall-clock limits. Everything the
//! plugin may do outside its memory goes through this crate:
//!
//! | item | what |
//! |---|---|
//! | [`Task::payload_json`] | decode the task's JSON payload (a mismatch is a permanent error) |
//! | [`log`] | structured log lines into the task's log |
//! | [`kv`] | durable key-value state private to the plugin |
//! | [`schedule`] | enqueue follow-up tasks (for this plugin or another) |
//! | [`config`] | the plugin's configuration values and secrets |
//! | [`http`] | outbound HTTP to the hosts in the plugin's `allowed_hosts` |
//!
//! The clocks work ([`now_ms`], `std::time`), as do randomness and `println!`/`eprintln!`
//! (captured into the task log); files, environment variables and sockets do not.
//!
//! # Example
//!
//! This plugin is `plugin-sdk/examples/hello` in the repository; the tests build it and run it
//! (as `test-guests/hello.wasm`), so it stays correct.
//!
//! ```rust,ignore
#![doc = include_str!("../examples/hello/src/lib.rs")]
//! ```
//!
//! Its `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "hello"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! kairos-plugin-sdk = { path = "../plugin-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (once:
//! `rustup target add wasm32-wasip2`) and drop `target/wasm32-wasip2/release/hello.wasm`,
//! into the host's plugin directory; the hosts it calls are granted in the host config
//! (`[plugin.hello] allowed_hosts`).
//!
//! # Errors and retries
//!
//! [`Plugin::run`] returns [`TaskError::retryable`] (try again after backoff),
//! [`TaskError::retry_after`] (not before a delay) or [`TaskError::permanent`] (the task is
//! dead at once). The SDK's errors convert with `?`: kv and scheduler failures of the host are
//! retryable, undecodable data is permanent; HTTP connection errors and timeouts are retryable,
//! a host outside `allowed_hosts` is permanent. A panic fails the attempt (retryable by the
//! host's policy); its message goes to stderr and the task log.
//!
//! Attempts can repeat (a retry, a crash between the work and its acknowledgement): use
//! [`Task::id`] as an idempotency key and give follow-ups a [`FollowUp::uniqueness_key`].

pub mod config;
pub mod http;
pub mod kv;
pub mod log;
mod scheduler;
mod task;

#[doc(hidden)]
#[path = "export.rs"]
pub mod __private;

pub use scheduler::{FollowUp, ScheduleError, When, schedule};
pub use task::{Outcome, Plugin, Task, TaskError};

/// Re-exported so that plugins can build JSON values (`serde_json::json!`) without a separate
/// dependency.
pub use serde_json;

/// Now, Unix epoch milliseconds (the host's wall clock).
pub fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Exports a [`Plugin`] implementation as the component's `run` function.
///
/// Use it once per plugin crate, at the top level:
///
/// ```rust,ignore
/// struct MyPlugin;
///
/// impl kairos_plugin_sdk::Plugin for MyPlugin {
///     fn run(task: Task) -> Result<Outcome, TaskError> {
///         Ok(Outcome::done())
///     }
/// }
///
/// kairos_plugin_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct KairosPluginExport;

            impl $crate::__private::Guest for KairosPluginExport {
                fn run(
                    task: $crate::__private::bindings::Task,
                ) -> ::core::result::Result<
                    $crate::__private::bindings::Outcome,
                    $crate::__private::bindings::TaskError,
                > {
                    $crate::__private::run::<$plugin>(task)
                }
            }

            $crate::__private::bindings::__export_task_plugin!(
                KairosPluginExport with_types_in $crate::__private::bindings
            );
        };
    };
}
