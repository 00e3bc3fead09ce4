//! Kairos Wasm plugin runtime.
//!
//! Runs task plugins (WebAssembly components of the `kairos:plugin/task-plugin` world,
//! `wit/plugin.wit`) in a sandbox: one wasmtime engine with a pooling allocator, a fresh
//! store and instance per task, memory / CPU / wall-clock / output / host-call limits,
//! WASI that grants nothing, and outbound HTTP only to the plugin's `allowed_hosts`, checked
//! by name and by resolved address.
//! Plugins are loaded from a directory (`NAME.wasm` + optional `NAME.toml` manifest) or from
//! bytes (the standard plugins built into the binary, [`BUILTIN_PLUGINS`]), identified by the
//! sha256 of their bytes, and hot-swapped when the files change. A directory's plugin
//! overrides a built-in one of the same name; when its file is removed, the built-in one
//! serves again.
//!
//! No wasmtime type appears in this crate's public API.

mod bindings;
mod builtin;
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
mod warm;
mod watcher;

pub use builtin::{BUILTIN_PLUGINS, BuiltinPlugin, builtin_plugin};
pub use config::{DEFAULT_MEMORY_BUDGET_MB, PluginGrant, RuntimeConfig};
pub use limits::{Limits, LimitsOverride};
pub use logs::{LogLevel, LogLine, LogSource};
pub use manifest::Manifest;
pub use outcome::{FailureKind, RunFailure, RunOutcome, RunReport, RunRequest};
pub use registry::{MAX_RETAINED, PluginInfo, PluginSource, Rejected};
pub use runtime::{LoadError, LoadSummary, Runtime};
pub use services::{
    FollowUp, HostServices, KvEntry, MemoryServices, ScheduledFollowUp, TaskInfo, When,
};

/// The build tree's test guests (`noop.wasm`, `hostile.wasm`, `hello.wasm`), for the
/// workspace's tests and benchmarks only: a path on the build machine. The `kairos` binary
/// never uses it (`tests/builtin.rs` checks that it holds no such path).
#[doc(hidden)]
pub const TEST_GUESTS_DIR: &str = env!("KAIROS_TEST_GUESTS_DIR");
