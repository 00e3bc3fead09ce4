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
    /// Cluster mode: the `host:port` at which the other nodes reach this node's API (they
    /// forward task operations to the owner of the task's partition). Default: the bound
    /// `listen` address; set it when `listen` is a wildcard (`0.0.0.0`, `[::]`) or behind NAT.
    pub advertise_addr: Option<String>,
    /// Who may call the API and how it is exposed (`[api]`, `[[api.tokens]]`).
    pub api: crate::auth::ApiSection,
    /// Where the embedded database and the compiled-plugin cache live.
    pub data_dir: PathBuf,
    /// Directory watched for `NAME.wasm` (+ `NAME.toml`) plugins, added to the built-in ones
    /// (a file there overrides the built-in plugin of its name). `None`: no directory.
    pub plugins_dir: Option<PathBuf>,
    /// Serve the standard plugins built into the binary (`notify`, `alerting`, `chores`).
    pub builtin_plugins: bool,
    /// Number of partitions. Fixed for the life of a deployment (it decides where keys live).
    pub partitions: u32,
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub scheduler: SchedulerSection,
    pub tasks: TaskDefaults,
    /// Default sandbox limits for every plugin.
    pub limits: Limits,
    /// Node-wide settings of the Wasm runtime.
    pub runtime: RuntimeSection,
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
            advertise_addr: None,
            api: crate::auth::ApiSection::default(),
            data_dir: PathBuf::from("kairos-data"),
            plugins_dir: None,
            builtin_plugins: true,
            partitions: 64,
            store: StoreConfig::default(),
            queue: QueueConfig::default(),
            scheduler: SchedulerSection::default(),
            tasks: TaskDefaults::default(),
            limits: Limits::default(),
            runtime: RuntimeSection::default(),
            plugin: BTreeMap::new(),
            schedule: Vec::new(),
        }
    }
}

/// The durable store, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// One crash-safe fjall database directory, `<data_dir>/store` (or `path`).
    Embedded {
        #[serde(default)]
        path: Option<PathBuf>,
        /// Block cache, MiB.
        #[serde(default = "default_cache_mb")]
        cache_mb: usize,
        /// Below this much free disk space, MiB, new tasks are refused (503) and /healthz
        /// answers 503, keeping room for the tasks already accepted. 0: no check.
        #[serde(default = "default_min_free_mb")]
        min_free_mb: u64,
    },
    /// Apache Cassandra 5 (or ScyllaDB), shared by every node of a cluster.
    Cassandra(CassandraSection),
}

/// `[store] type = "cassandra"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraSection {
    /// Contact points, `host:port`.
    #[serde(default = "default_cassandra_nodes")]
    pub nodes: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// SimpleStrategy replication factor (one datacenter). Ignored when `datacenters` is set.
    #[serde(default = "default_rf")]
    pub replication_factor: u32,
    /// NetworkTopologyStrategy: replicas per datacenter, e.g. `{ dc1 = 3, dc2 = 3 }`.
    #[serde(default)]
    pub datacenters: BTreeMap<String, u32>,
    /// Consistency of reads and writes: `local_quorum` (default; with one replica per DC it is
    /// one replica), `local_one`, `one`, `quorum`, `each_quorum`, `all`. Lightweight
    /// transactions (fencing) use `local_serial` with the `local_*` levels, else `serial`.
    #[serde(default = "default_consistency")]
    pub consistency: String,
    /// Create the keyspace and tables at start (`CREATE … IF NOT EXISTS`); else run
    /// `kairos migrate` first.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Width of a pending-window bucket, milliseconds.
    #[serde(default = "default_bucket_ms")]
    pub bucket_ms: i64,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for CassandraSection {
    fn default() -> Self {
        Self {
            nodes: default_cassandra_nodes(),
            keyspace: default_keyspace(),
            replication_factor: default_rf(),
            datacenters: BTreeMap::new(),
            consistency: default_consistency(),
            migrate_on_start: true,
            bucket_ms: default_bucket_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

// The Cassandra backend owns its defaults (`CassandraOptions::default`).
fn default_cassandra_nodes() -> Vec<String> {
    kairos_cassandra::CassandraOptions::default().nodes
}
fn default_keyspace() -> String {
    kairos_cassandra::CassandraOptions::default().keyspace
}
fn default_rf() -> u32 {
    1
}
fn default_consistency() -> String {
    kairos_cassandra::CassandraOptions::default().consistency
}
fn default_true() -> bool {
    true
}
fn default_bucket_ms() -> i64 {
    kairos_cassandra::CassandraOptions::default().bucket_ms
}
fn default_request_timeout_ms() -> u64 {
    kairos_cassandra::CassandraOptions::default()
        .request_timeout
        .as_millis() as u64
}

fn default_cache_mb() -> usize {
    64
}

fn default_min_free_mb() -> u64 {
    kairos_embedded::EmbeddedOptions::default().min_free_bytes / (1024 * 1024)
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: None,
            cache_mb: default_cache_mb(),
            min_free_mb: default_min_free_mb(),
        }
    }
}

/// Where tasks come from and who owns which partition, chosen by `type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// Every partition is owned by this process.
    #[default]
    Local,
    /// A Kafka topic; partitions are shared among the nodes of one consumer group.
    Kafka(KafkaSection),
}

/// `brokers = "a:9092,b:9092"` or `brokers = ["a:9092", "b:9092"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Brokers {
    One(String),
    Many(Vec<String>),
}

impl Brokers {
    /// The `bootstrap.servers` string.
    pub fn joined(&self) -> String {
        match self {
            Brokers::One(s) => s.clone(),
            Brokers::Many(v) => v.join(","),
        }
    }
}

impl Default for Brokers {
    fn default() -> Self {
        Brokers::One("127.0.0.1:9092".into())
    }
}

/// `[queue] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    #[serde(default)]
    pub brokers: Brokers,
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Consumer group: every node of one cluster uses the same.
    #[serde(default = "default_group")]
    pub group: String,
    /// Replication factor used when Kairos creates the topic (3 in production, with the
    /// broker's `min.insync.replicas = 2`).
    #[serde(default = "default_kafka_rf")]
    pub replication_factor: i32,
    /// Create the topic with `partitions` partitions when it is missing.
    #[serde(default = "default_true")]
    pub create_topic: bool,
    /// How soon a dead node's partitions move to the others, milliseconds.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long the API waits for the brokers' acknowledgement, milliseconds.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// Extra librdkafka properties for both producer and consumer (security, tuning).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: Brokers::default(),
            topic: default_topic(),
            group: default_group(),
            replication_factor: default_kafka_rf(),
            create_topic: true,
            session_timeout_ms: default_session_timeout_ms(),
            produce_timeout_ms: default_produce_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }
}

// The Kafka backend owns its defaults; the config only exposes them.
fn default_topic() -> String {
    kairos_kafka::DEFAULT_TOPIC.into()
}
fn default_group() -> String {
    kairos_kafka::DEFAULT_GROUP.into()
}
fn default_kafka_rf() -> i32 {
    kairos_kafka::DEFAULT_REPLICATION_FACTOR
}
fn default_session_timeout_ms() -> u64 {
    kairos_kafka::DEFAULT_SESSION_TIMEOUT.as_millis() as u64
}
fn default_produce_timeout_ms() -> u64 {
    kairos_kafka::DEFAULT_PRODUCE_TIMEOUT.as_millis() as u64
}

/// `[runtime]`: node-wide settings of the Wasm runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// The `memory_mb` of all running attempts adds up to at most this many MiB; an attempt
    /// waits for room (within its `timeout_ms`), a plugin needing more than all of it is
    /// rejected at load.
    pub memory_budget_mb: u64,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            memory_budget_mb: kairos_runtime::DEFAULT_MEMORY_BUDGET_MB,
        }
    }
}

/// Default claim slots per run slot on Cassandra: a node's starts that fall due together go
/// as one Paxos round per partition, so more claims in flight make fewer, larger rounds (×1.2
/// and ×2.5 end to end against one per run slot in paired runs; BENCHMARKS.md, issue 10,
/// seventh session). On a revoke the claimed attempts still waiting for a run slot do not run
/// (their starts are given back, and the next owner runs them), so the drain is not longer
/// for it.
pub const CASSANDRA_CLAIMS_PER_RUN_SLOT: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// Attempts running at once on this node (its run slots).
    pub concurrency: usize,
    /// Run slots no single plugin takes by default (its cap is `concurrency` less these, unless
    /// `[plugin.NAME] max_concurrency` says otherwise), so another plugin's task starts at once
    /// while one plugin is busy. Once free slots are down to these, only plugins below their
    /// weighted share (`[plugin.NAME] weight`) take them. Default: an eighth of `concurrency`.
    pub reserved_slots: Option<usize>,
    /// Attempts that may be recording their start at once (claim slots). Default: 32 ×
    /// `concurrency` on the embedded store, where starts share group commits and more of them
    /// make each commit carry more; 8 × `concurrency` on Cassandra, where the starts of one
    /// partition due together share a Paxos round (one per batch), so more of them make fewer,
    /// larger rounds.
    pub claim_slots: Option<usize>,
    /// Most tasks held in memory per partition.
    pub window_capacity: usize,
    /// How far ahead the window is loaded, milliseconds.
    pub horizon_ms: i64,
    /// On SIGTERM, how long running attempts may take to finish.
    pub shutdown_grace_ms: u64,
    /// Cluster mode: a task found `running` when this node takes its partition over (the
    /// previous owner died or was cut off mid-attempt) runs again only this long after that
    /// attempt started, so it never runs on two nodes at once. Default: the longest plugin
    /// `timeout_ms` in this config plus 2 s ([`Config::takeover_wait_ms`]).
    pub takeover_wait_ms: Option<u64>,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            concurrency: 64,
            reserved_slots: None,
            claim_slots: None,
            window_capacity: 2_000,
            horizon_ms: 60_000,
            shutdown_grace_ms: 30_000,
            takeover_wait_ms: None,
        }
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
    /// Longest ordering key and uniqueness key, bytes.
    pub max_key_bytes: usize,
    /// Most generations of follow-ups: a task from the API is generation 0, a task a plugin
    /// schedules is one more than the task that scheduled it; beyond this, scheduling fails.
    pub max_follow_up_depth: u32,
    /// How long finished tasks (succeeded, cancelled, dead without parking their key) are
    /// kept, with their attempts and uniqueness keys: `30s`, `15m`, `24h`, `7d`; `"forever"`
    /// keeps them.
    pub retention: String,
    /// How often retention sweeps, milliseconds.
    pub retention_sweep_ms: u64,
}

impl TaskDefaults {
    /// `None`: kept forever.
    pub fn retention(&self) -> anyhow::Result<Option<std::time::Duration>> {
        if self.retention.trim() == "forever" {
            return Ok(None);
        }
        let d = crate::retention::parse_duration(&self.retention)?;
        anyhow::ensure!(
            d >= std::time::Duration::from_secs(1),
            "{:?} is shorter than a second",
            self.retention
        );
        Ok(Some(d))
    }
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
            max_key_bytes: 1_024,
            max_follow_up_depth: 8,
            retention: "7d".into(),
            retention_sweep_ms: 60_000,
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

/// Grants the standard plugins get when the config has no `[plugin.NAME]` table of theirs:
/// `alerting` schedules `notify` for each target of an escalation level.
pub const STANDARD_GRANTS: &[(&str, &[&str])] = &[("alerting", &["notify"])];

fn is_redb_file(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "redb") || p.is_file()
}

impl Config {
    /// `scheduler.takeover_wait_ms`, or the longest plugin `timeout_ms` configured here plus
    /// 2 s. (This config is the ceiling: a plugin's own manifest can only lower its timeout.)
    /// Embedded (local queue) the default is 0: the previous holder of every partition was
    /// this process before it stopped, so no attempt of it can still run.
    pub fn takeover_wait_ms(&self) -> u64 {
        if matches!(self.queue, QueueConfig::Local) && self.scheduler.takeover_wait_ms.is_none() {
            return 0;
        }
        self.scheduler.takeover_wait_ms.unwrap_or_else(|| {
            let longest = self
                .plugin
                .values()
                .filter_map(|g| g.limits.timeout_ms)
                .fold(self.limits.timeout_ms, u64::max);
            longest.saturating_add(2_000)
        })
    }

    /// Claim slots: `scheduler.claim_slots`, else 32 per run slot on the embedded store and
    /// [`CASSANDRA_CLAIMS_PER_RUN_SLOT`] on Cassandra (see [`SchedulerSection::claim_slots`]).
    pub fn claim_slots(&self) -> usize {
        self.scheduler.claim_slots.unwrap_or_else(|| {
            let per_slot = match self.store {
                StoreConfig::Embedded { .. } => crate::scheduler::CLAIMS_PER_RUN_SLOT,
                StoreConfig::Cassandra(_) => CASSANDRA_CLAIMS_PER_RUN_SLOT,
            };
            self.scheduler.concurrency.saturating_mul(per_slot)
        })
    }

    /// The Wasm runtime's settings from this config: `[limits]` and the `[plugin.NAME]`
    /// grants (no compiled-artifact cache; the node sets one under `data_dir`).
    pub fn runtime_config(&self) -> kairos_runtime::RuntimeConfig {
        let mut grants = self.plugin.clone();
        // The standard plugins' grants, unless the file has its own `[plugin.NAME]` table.
        for (plugin, may_schedule) in STANDARD_GRANTS {
            grants
                .entry((*plugin).to_string())
                .or_insert_with(|| PluginGrant {
                    may_schedule: may_schedule.iter().map(|p| (*p).to_string()).collect(),
                    ..PluginGrant::default()
                });
        }
        kairos_runtime::RuntimeConfig {
            defaults: self.limits,
            grants,
            memory_budget_mb: self.runtime.memory_budget_mb,
            ..kairos_runtime::RuntimeConfig::default()
        }
    }

    /// How the scheduler shares its run slots between plugins.
    pub fn slot_shares(&self) -> kairos_scheduler::SlotShares {
        kairos_scheduler::SlotShares {
            reserve: self.scheduler.reserved_slots,
            plugins: self
                .plugin
                .iter()
                .map(|(name, g)| {
                    let share = kairos_scheduler::PluginShare {
                        weight: g.weight.unwrap_or(1),
                        max_concurrency: g.max_concurrency,
                    };
                    (name.clone(), share)
                })
                .collect(),
            memory_budget_mb: Some(self.runtime.memory_budget_mb),
        }
    }

    /// Reads a config file; every error names the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.partitions >= 1, "`partitions` must be at least 1");
        anyhow::ensure!(
            self.scheduler.concurrency >= 1,
            "`scheduler.concurrency` must be at least 1"
        );
        anyhow::ensure!(
            self.scheduler.claim_slots != Some(0),
            "`scheduler.claim_slots` must be at least 1"
        );
        self.tasks.retention().context("`tasks.retention`")?;
        anyhow::ensure!(
            self.tasks.retention_sweep_ms >= 100,
            "`tasks.retention_sweep_ms` must be at least 100"
        );
        if let Some(r) = self.scheduler.reserved_slots {
            anyhow::ensure!(
                r < self.scheduler.concurrency,
                "`scheduler.reserved_slots` ({r}) must be below `scheduler.concurrency` ({})",
                self.scheduler.concurrency
            );
        }
        for (name, g) in &self.plugin {
            if let Some(w) = g.weight {
                anyhow::ensure!(
                    (1..=1_000).contains(&w),
                    "`plugin.{name}.weight` must be between 1 and 1000, not {w}"
                );
            }
            if let Some(m) = g.max_concurrency {
                anyhow::ensure!(
                    m >= 1,
                    "`plugin.{name}.max_concurrency` must be at least 1 (remove the plugin's file to stop it)"
                );
            }
        }
        anyhow::ensure!(
            self.scheduler.horizon_ms >= 1_000,
            "`scheduler.horizon_ms` must be at least 1000"
        );
        anyhow::ensure!(
            self.tasks.max_attempts >= 1,
            "`tasks.max_attempts` must be at least 1"
        );
        if let Some(a) = &self.advertise_addr {
            check_host_port(a)
                .with_context(|| format!("`advertise_addr` {a:?} is not a `host:port`"))?;
        }
        if let StoreConfig::Cassandra(c) = &self.store {
            anyhow::ensure!(
                !c.nodes.is_empty(),
                "`store.nodes` must list at least one Cassandra node"
            );
            anyhow::ensure!(
                c.replication_factor >= 1 || !c.datacenters.is_empty(),
                "`store.replication_factor` must be at least 1"
            );
            anyhow::ensure!(
                c.bucket_ms >= 1_000,
                "`store.bucket_ms` must be at least 1000"
            );
        }
        if let QueueConfig::Kafka(k) = &self.queue {
            anyhow::ensure!(
                !k.brokers.joined().trim().is_empty(),
                "`queue.brokers` must not be empty"
            );
            anyhow::ensure!(
                !k.topic.is_empty() && !k.group.is_empty(),
                "`queue.topic` and `queue.group` must not be empty"
            );
        }
        match (&self.queue, &self.store) {
            (QueueConfig::Kafka(_), StoreConfig::Embedded { .. }) => anyhow::bail!(
                "`[queue] type = \"kafka\"` needs a shared store: set `[store] type = \"cassandra\"`"
            ),
            (QueueConfig::Local, StoreConfig::Cassandra(_)) => anyhow::bail!(
                "`[store] type = \"cassandra\"` is for cluster mode: set `[queue] type = \"kafka\"` too"
            ),
            _ => {}
        }
        self.api
            .validate(matches!(self.queue, QueueConfig::Kafka(_)))?;
        Ok(())
    }

    /// The embedded store's directory: `[store] path`, or `<data_dir>/store`. A `path` that
    /// names a store file of the earlier redb format (`*.redb`) gives `<that>.store`, and
    /// the file is migrated into it (see [`Config::legacy_store_file`]).
    pub fn store_path(&self) -> PathBuf {
        match &self.store {
            StoreConfig::Embedded { path: Some(p), .. } if is_redb_file(p) => {
                p.with_extension("store")
            }
            StoreConfig::Embedded { path: Some(p), .. } => p.clone(),
            StoreConfig::Embedded { path: None, .. } | StoreConfig::Cassandra(_) => {
                self.data_dir.join("store")
            }
        }
    }

    /// The store file of the earlier (redb) format that the embedded store is migrated from
    /// when its directory does not exist yet: `<data_dir>/kairos.redb`, or a `[store] path`
    /// ending in `.redb`.
    pub fn legacy_store_file(&self) -> Option<PathBuf> {
        match &self.store {
            StoreConfig::Embedded { path: Some(p), .. } if is_redb_file(p) => Some(p.clone()),
            StoreConfig::Embedded { path: Some(_), .. } | StoreConfig::Cassandra(_) => None,
            StoreConfig::Embedded { path: None, .. } => Some(self.data_dir.join("kairos.redb")),
        }
    }
}

/// `host:port`, `a.b.c.d:port` or `[v6]:port`, with no scheme or path.
fn check_host_port(a: &str) -> anyhow::Result<()> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("no `:port`"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| anyhow::anyhow!("port {port:?} is not 1-65535"))?;
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    anyhow::ensure!(ok, "host {host:?} is not a host name or IP address");
    Ok(())
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
        assert_eq!(c.runtime_config().memory_budget_mb, 2048);
        // The built-in plugins, and no directory: nothing of the build machine.
        assert!(c.builtin_plugins);
        assert_eq!(c.plugins_dir, None);
        let c = Config::parse("plugins_dir = \"p\"\nbuiltin_plugins = false\n").expect("valid");
        assert_eq!(c.plugins_dir.as_deref(), Some(Path::new("p")));
        assert!(!c.builtin_plugins);
    }

    #[test]
    fn runtime_section_reaches_the_runtime_config() {
        let c = Config::parse("[runtime]\nmemory_budget_mb = 512\n[limits]\nmemory_mb = 32\n")
            .expect("valid");
        let rc = c.runtime_config();
        assert_eq!(rc.memory_budget_mb, 512);
        assert_eq!(rc.defaults.memory_mb, 32);
        assert!(Config::parse("[runtime]\nmemory_budget = 1\n").is_err());
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
        assert!(matches!(
            c.store,
            StoreConfig::Embedded { cache_mb: 32, .. }
        ));
        assert_eq!(c.plugin["notify"].allowed_hosts, ["127.0.0.1:8080"]);
        assert_eq!(c.plugin["notify"].config["token"], "s3cret");
    }

    #[test]
    fn the_store_directory_and_the_old_store_file_it_is_migrated_from() {
        let c = Config::parse("data_dir = \"d\"\n").expect("valid");
        assert_eq!(c.store_path(), Path::new("d/store"));
        assert_eq!(
            c.legacy_store_file().as_deref(),
            Some(Path::new("d/kairos.redb"))
        );
        // A path naming an old redb file (as the example config used to suggest).
        let c = Config::parse("[store]\ntype = \"embedded\"\npath = \"x/kairos.redb\"\n")
            .expect("valid");
        assert_eq!(c.store_path(), Path::new("x/kairos.store"));
        assert_eq!(
            c.legacy_store_file().as_deref(),
            Some(Path::new("x/kairos.redb"))
        );
        let c = Config::parse("[store]\ntype = \"embedded\"\npath = \"x/db\"\n").expect("valid");
        assert_eq!(c.store_path(), Path::new("x/db"));
        assert_eq!(c.legacy_store_file(), None);
    }

    #[test]
    fn reuse_instances_is_a_per_plugin_grant_that_reaches_the_runtime() {
        let c = Config::parse("[plugin.py]\nreuse_instances = 50\n").expect("valid");
        assert_eq!(c.runtime_config().grants["py"].reuse_instances, 50);
        let c = Config::parse("[plugin.py]\nallowed_hosts = []\n").expect("valid");
        assert_eq!(c.runtime_config().grants["py"].reuse_instances, 0);
        assert!(Config::parse("[plugin.py]\nreuse_instances = -1\n").is_err());
    }

    #[test]
    fn the_shipped_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let c = Config::load(&dir.join("embedded.toml")).expect("config/embedded.toml is valid");
        assert_eq!(c.plugin["notify"].allowed_hosts, ["127.0.0.1:8080"]);
        assert_eq!(c.scheduler.window_capacity, 2_000);
        assert_eq!(c.runtime.memory_budget_mb, 2048);
        let c = Config::load(&dir.join("cluster.toml")).expect("config/cluster.toml is valid");
        assert_eq!(c.partitions, 16);
        let QueueConfig::Kafka(k) = &c.queue else {
            panic!("cluster.toml: queue is kafka")
        };
        assert_eq!(k.brokers.joined(), "127.0.0.1:9092");
        assert_eq!(
            (k.topic.as_str(), k.group.as_str(), k.session_timeout_ms),
            ("kairos.tasks", "kairos", 6_000)
        );
        let StoreConfig::Cassandra(s) = &c.store else {
            panic!("cluster.toml: store is cassandra")
        };
        assert_eq!(s.nodes, ["127.0.0.1:9042"]);
        assert_eq!(s.keyspace, "kairos");
        assert!(s.migrate_on_start);
    }

    #[test]
    fn cluster_backends_and_their_defaults() {
        let c = Config::parse(
            r#"
            partitions = 16
            [queue]
            type = "kafka"
            brokers = ["k1:9092", "k2:9092"]
            [store]
            type = "cassandra"
            datacenters = { dc1 = 3, dc2 = 3 }
            [api]
            cluster_secret = "0123456789abcdef"
            "#,
        )
        .expect("valid");
        let QueueConfig::Kafka(k) = &c.queue else {
            panic!("kafka")
        };
        assert_eq!(k.brokers.joined(), "k1:9092,k2:9092");
        assert_eq!(
            (k.topic.as_str(), k.group.as_str()),
            ("kairos.tasks", "kairos")
        );
        let StoreConfig::Cassandra(s) = &c.store else {
            panic!("cassandra")
        };
        assert_eq!(s.nodes, ["127.0.0.1:9042"]);
        assert_eq!(
            (
                s.keyspace.as_str(),
                s.consistency.as_str(),
                s.migrate_on_start
            ),
            ("kairos", "local_quorum", true)
        );
        assert_eq!(s.datacenters["dc2"], 3);
        // Eight claim slots per run slot on Cassandra, 32 on the embedded store.
        assert_eq!(c.claim_slots(), 512);
        assert_eq!(Config::default().claim_slots(), 2048);
        let c = Config::parse("[scheduler]\nconcurrency = 4\nclaim_slots = 10").expect("valid");
        assert_eq!(c.claim_slots(), 10);
        let e = Config::parse("[scheduler]\nclaim_slots = 0").expect_err("no claim slots");
        assert!(format!("{e:#}").contains("claim_slots"), "{e:#}");
        let e = Config::parse("[queue]\ntype = \"kafka\"").expect_err("kafka needs cassandra");
        assert!(format!("{e:#}").contains("cassandra"), "{e:#}");
        let e = Config::parse(
            "[queue]\ntype = \"kafka\"\nbrokr = \"x\"\n[store]\ntype = \"cassandra\"\n[api]\ncluster_secret = \"0123456789abcdef\"",
        )
        .expect_err("typo");
        assert!(format!("{e:#}").contains("brokr"), "{e:#}");
    }

    #[test]
    fn typos_and_unknown_backends_are_errors() {
        let e = Config::parse("partitons = 3").expect_err("typo");
        assert!(format!("{e:#}").contains("partitons"), "{e:#}");
        let e = Config::parse("[store]\ntype = \"postgres\"").expect_err("unknown backend");
        assert!(format!("{e:#}").contains("postgres"), "{e:#}");
        assert!(Config::parse("partitions = 0").is_err());
    }

    #[test]
    fn advertise_addr_is_a_host_and_port() {
        assert_eq!(Config::parse("").expect("valid").advertise_addr, None);
        for ok in ["10.0.0.7:7400", "kairos-1.internal:7400", "[::1]:7400"] {
            let c = Config::parse(&format!("advertise_addr = {ok:?}")).expect(ok);
            assert_eq!(c.advertise_addr.as_deref(), Some(ok));
        }
        for bad in [
            "10.0.0.7",
            "http://10.0.0.7:7400",
            "host:0",
            "host:99999",
            ":7400",
            "::1:7400",
            "a/b:1",
        ] {
            let e = Config::parse(&format!("advertise_addr = {bad:?}")).expect_err(bad);
            assert!(format!("{e:#}").contains("advertise_addr"), "{e:#}");
        }
    }
}
