//! Kairos Wasm plugin runtime.
//!
//! Runs task plugins (WebAssembly components of the `kairos:plugin/task-plugin` world,
//! `wit/plugin.wit`) in a sandbox: one wasmtime engine with a pooling allocator, a fresh
//! store and instance per task, memory / CPU / wall-clock / output / host-call limits,
//! WASI that grants nothing, and outbound HTTP only to the plugin's `allowed_hosts`, checked
//! by name and by resolved address.
//! Plugins are loaded from a directory (`NAME.wasm` + optional `NAME.toml` manifest),
//! identified by the sha256 of their bytes, and hot-swapped when the files change.
//!
//! No wasmtime type appears in this crate's public API.

mod bindings;
mod config;
mod egress;
mod engine;
mod host_impl;
mod http;
mod limits;
mod logs;
mod manifest;
mod outcome;
mod registry;
mod run;
mod runtime;
mod services;
mod watcher;

pub use config::{DEFAULT_MEMORY_BUDGET_MB, PluginGrant, RuntimeConfig};
pub use limits::{Limits, LimitsOverride};
pub use logs::{LogLevel, LogLine, LogSource};
pub use manifest::Manifest;
pub use outcome::{FailureKind, RunFailure, RunOutcome, RunReport, RunRequest};
pub use registry::{MAX_RETAINED, PluginInfo, Rejected};
pub use runtime::{LoadError, LoadSummary, Runtime};
pub use services::{
    FollowUp, HostServices, KvEntry, MemoryServices, ScheduledFollowUp, TaskInfo, When,
};

/// Directory holding the standard plugins (`notify.wasm`, `alerting.wasm`,
/// `chores.wasm`) as built by this crate's build script.
pub const DEFAULT_PLUGINS_DIR: &str = env!("KAIROS_PLUGINS_DIR");
