//! Write Kairos task plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2` (which makes it a WebAssembly
//! component: no extra tooling) with one function marked [`#[task]`](macro@task). The host calls
//! it once per attempt of a task, each time in a fresh sandboxed instance with its own memory,
//! CPU and wall-clock limits:
//!
//! ```rust,ignore
//! use kairos_plugin_sdk::{Outcome, Task};
//!
//! #[derive(serde::Deserialize)]
//! struct Payload {
//!     name: String,
//! }
//!
//! #[kairos_plugin_sdk::task]
//! fn run(task: Task<Payload>) -> anyhow::Result<Outcome> {
//!     kairos_plugin_sdk::log::info!("hello {}", task.payload.name);
//!     Ok(Outcome::with_output(format!("greeted {}", task.payload.name)))
//! }
//! ```
//!
//! - **The task**: [`Task<P>`](Task) carries the payload parsed into `P` (any
//!   `serde::Deserialize` type; `serde_json::Value` for any JSON) and the task's `id`, `key`,
//!   `attempt`, `due_at_ms` and `plugin`. A payload that does not parse fails the task
//!   permanently, with serde's message, before the function runs.
//! - **The result**: `Result<Outcome, E>`, or `Result<(), E>` for success without output, with
//!   any error type `E` that converts into `anyhow::Error` (so `?` works on anything):
//!   `anyhow::Result<Outcome>`, `Result<Outcome, TaskError>`, `Result<(), MyError>`
//!   ([`TaskReturn`]).
//! - **Retryable or permanent**: see [Errors and retries](#errors-and-retries).
//!
//! Everything the plugin may do outside its memory goes through this crate:
//!
//! | item | what |
//! |---|---|
//! | [`log`] | the `log` crate's macros (`log::info!`), and log lines with explicit fields |
//! | [`kv`] | durable key-value state private to the plugin |
//! | [`schedule`] | enqueue follow-up tasks (for this plugin or another) |
//! | [`config`] | the plugin's configuration values and secrets |
//! | [`http`] | outbound HTTP to the hosts in the plugin's `allowed_hosts`: [`http::send`] on the `http` crate's types, or [`http::post_json`] |
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
//! anyhow = "1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! (`anyhow` and `serde_json` are also re-exported, as [`anyhow`] and [`serde_json`].)
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (once:
//! `rustup target add wasm32-wasip2`) and drop `target/wasm32-wasip2/release/hello.wasm`,
//! into the host's plugin directory; the hosts it calls are granted in the host config
//! (`[plugin.hello] allowed_hosts`).
//!
//! # Errors and retries
//!
//! An error is **retryable** (another attempt after the task's backoff) unless it says
//! otherwise. The first of these in its chain (outermost first, through `.context(...)`)
//! decides:
//!
//! - [`permanent(err)`](permanent) or `result.permanent()` ([`ResultExt`]): the task is dead
//!   at once;
//! - [`retry_after(err, ms)`](retry_after) or `result.retry_after(ms)`: retryable, not before
//!   `ms` milliseconds;
//! - a [`TaskError`]: [`TaskError::retryable`], [`TaskError::retry_after`],
//!   [`TaskError::permanent`];
//! - the SDK's errors: kv and scheduler failures of the host are retryable, undecodable data is
//!   permanent; HTTP connection errors and timeouts are retryable, a host outside
//!   `allowed_hosts` and an invalid URL are permanent; an `http::Error` (a request that could
//!   not be built) is permanent.
//!
//! The attempt's message is the error chain joined with `": "`, as `format!("{err:#}")` prints
//! an `anyhow::Error`. A panic fails the attempt (retryable by the host's policy); its message
//! goes to stderr and the task log.
//!
//! ```rust,ignore
//! use kairos_plugin_sdk::ResultExt as _;
//!
//! let rota = kv::get_json::<Rota>("rota")?.context("no rota")?;  // retryable
//! let when = parse_time(&task.payload.at).permanent()?;            // permanent
//! if response.status() == 429 {
//!     return Err(kairos_plugin_sdk::retry_after(anyhow!("rate limited"), 60_000));
//! }
//! ```
//!
//! Attempts can repeat (a retry, a crash between the work and its acknowledgement): use
//! [`Task::id`] as an idempotency key and give follow-ups a [`FollowUp::uniqueness_key`].
//!
//! # The `Plugin` trait (deprecated form)
//!
//! Before `#[task]`, a plugin implemented [`Plugin`] (`fn run(task: Task) -> Result<Outcome,
//! TaskError>`, the payload as JSON text, decoded with [`Task::payload_json`]) and exported it
//! with [`export_plugin!`]. Both still work, for one more release; new plugins should use
//! `#[task]`.

pub mod config;
mod error;
pub mod http;
pub mod kv;
pub mod log;
mod scheduler;
mod task;

#[doc(hidden)]
#[path = "export.rs"]
pub mod __private;

pub use error::{ResultExt, TaskReturn, permanent, retry_after};
/// Exports a function as the plugin's `run`: see [the crate documentation](crate).
///
/// ```rust,ignore
/// #[kairos_plugin_sdk::task]
/// fn run(task: kairos_plugin_sdk::Task<Payload>) -> anyhow::Result<kairos_plugin_sdk::Outcome>
/// ```
///
/// The function takes one [`Task<P>`](Task) and returns a [`TaskReturn`]. Use it once per
/// plugin crate. `#[task(crate = "path")]` names this crate when it is not a dependency called
/// `kairos_plugin_sdk` (renamed, or re-exported by another crate).
pub use kairos_plugin_macros::task;
pub use scheduler::{FollowUp, ScheduleError, When, schedule};
pub use task::{Outcome, Plugin, Task, TaskError};

/// Re-exported for `anyhow::Result`, `anyhow!` and `.context(...)` without a separate
/// dependency.
pub use anyhow;
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

/// Exports a [`Plugin`] implementation as the component's `run` function (the deprecated form:
/// prefer [`#[task]`](macro@task) on a function).
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
