//! Kairos host: the HTTP API, the CLI and the supervisor that wires the scheduler
//! (`kairos-scheduler`) to a store, a partition source and the Wasm runtime.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cron;
pub mod enqueue;
pub mod import;
pub mod node;
pub mod plugins;
pub mod progress;
pub mod retention;
pub mod scaffold;
pub use kairos_scheduler as scheduler;
pub use kairos_scheduler::metrics;
