//! The node's configuration: a TOML file (see `config/embedded.toml`), with command-line
//! flags over the file over the defaults. Unknown keys are errors, so a typo never silently
//! falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kairos_runtime::{Limits, PluginGrant};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name (logs, metrics; cluster membership).
    pub node_id: String,
    /// HTTP API address.
    pub listen: SocketAddr,
    /// Where the embedded database and the compiled-plugin cache live.
    pub data_dir: PathBuf,
    /// Directory watched for `NAME.wasm` (+ `NAME.toml`) plugins.
    pub plugins_dir: PathBuf,
    /// Number of partitions. Fixed for the life of a deployment (it decides where keys live).
    pub partitions: u32,
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub scheduler: SchedulerSection,
    pub tasks: TaskDefaults,
    /// Default sandbox limits for every plugin.
    pub limits: Limits,
    /// Grants per plugin: `[plugin.NAME] allowed_hosts = [...]`, `[plugin.NAME.config]`,
    /// `[plugin.NAME.limits]`.
    pub plugin: BTreeMap<String, PluginGrant>,
    /// Recurring tasks declared in the file (`[[schedule]]`); they are upserted at start.
    pub schedule: Vec<ScheduleDecl>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("kairos-data"),
            plugins_dir: PathBuf::from(kairos_runtime::DEFAULT_PLUGINS_DIR),
            partitions: 64,
            store: StoreConfig::default(),
            queue: QueueConfig::default(),
            scheduler: SchedulerSection::default(),
            tasks: TaskDefaults::default(),
            limits: Limits::default(),
            plugin: BTreeMap::new(),
            schedule: Vec::new(),
        }
    }
}

/// The durable store, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// One crash-safe redb file under `data_dir` (or `path`).
    Embedded {
        #[serde(default)]
        path: Option<PathBuf>,
        /// redb page cache, MiB.
        #[serde(default = "default_cache_mb")]
        cache_mb: usize,
    },
}

fn default_cache_mb() -> usize {
    64
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded { path: None, cache_mb: default_cache_mb() }
    }
}

/// Where tasks come from and who owns which partition, chosen by `type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// Every partition is owned by this process.
    #[default]
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// Attempts running at once on this node.
    pub concurrency: usize,
    /// Most tasks held in memory per partition.
    pub window_capacity: usize,
    /// How far ahead the window is loaded, milliseconds.
    pub horizon_ms: i64,
    /// On SIGTERM, how long running attempts may take to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self { concurrency: 64, window_capacity: 2_000, horizon_ms: 60_000, shutdown_grace_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDefaults {
    /// Attempts before a task is dead, unless the task says otherwise.
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Largest accepted payload (its JSON text), bytes.
    pub max_payload_bytes: usize,
    /// How far in the past an explicit `run_at` may lie (it then runs at once); older is refused.
    pub max_past_ms: i64,
    /// Most tasks in one batch request.
    pub max_batch: usize,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 120_000,
            max_payload_bytes: 1024 * 1024,
            max_past_ms: 5 * 60 * 1000,
            max_batch: 10_000,
        }
    }
}

/// A recurring task declared in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDecl {
    pub name: String,
    pub cron: String,
    pub plugin: String,
    pub key: String,
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    #[serde(default)]
    pub timezone: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Config {
    /// Reads a config file; every error names the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.partitions >= 1, "`partitions` must be at least 1");
        anyhow::ensure!(self.scheduler.concurrency >= 1, "`scheduler.concurrency` must be at least 1");
        anyhow::ensure!(self.scheduler.horizon_ms >= 1_000, "`scheduler.horizon_ms` must be at least 1000");
        anyhow::ensure!(self.tasks.max_attempts >= 1, "`tasks.max_attempts` must be at least 1");
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        match &self.store {
            StoreConfig::Embedded { path: Some(p), .. } => p.clone(),
            StoreConfig::Embedded { path: None, .. } => self.data_dir.join("kairos.redb"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(c.partitions, 64);
        assert!(matches!(c.store, StoreConfig::Embedded { .. }));
        assert!(matches!(c.queue, QueueConfig::Local));
    }

    #[test]
    fn backends_by_type_and_plugin_grants() {
        let c = Config::parse(
            r#"
            partitions = 16
            [store]
            type = "embedded"
            cache_mb = 32
            [queue]
            type = "local"
            [plugin.notify]
            allowed_hosts = ["127.0.0.1:8080"]
            [plugin.notify.config]
            token = "s3cret"
            "#,
        )
        .expect("valid");
        assert_eq!(c.partitions, 16);
        assert!(matches!(c.store, StoreConfig::Embedded { cache_mb: 32, .. }));
        assert_eq!(c.plugin["notify"].allowed_hosts, ["127.0.0.1:8080"]);
        assert_eq!(c.plugin["notify"].config["token"], "s3cret");
    }

    #[test]
    fn typos_and_unknown_backends_are_errors() {
        let e = Config::parse("partitons = 3").expect_err("typo");
        assert!(format!("{e:#}").contains("partitons"), "{e:#}");
        let e = Config::parse("[store]\ntype = \"postgres\"").expect_err("unknown backend");
        assert!(format!("{e:#}").contains("postgres"), "{e:#}");
        assert!(Config::parse("partitions = 0").is_err());
    }
}
