//! Kairos host: the scheduler, the HTTP API, the CLI and the supervisor that wires them to a
//! store, a partition source and the Wasm runtime.

pub mod api;
pub mod bench;
pub mod bench_cluster;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cron;
pub mod enqueue;
pub mod metrics;
pub mod node;
pub mod plugins;
pub mod scheduler;
