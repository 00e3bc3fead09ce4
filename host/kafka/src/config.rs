//! Configuration of the Kafka intake and source. Plain data: the host maps its TOML
//! (`[queue] type = "kafka"`, `brokers`, `topic`, `group`, top-level `partitions`) onto it.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::model::Backoff;

/// The default topic name.
pub const DEFAULT_TOPIC: &str = "kairos.tasks";
/// The default consumer group.
pub const DEFAULT_GROUP: &str = "kairos";
/// Default group session timeout: how soon a dead node's partitions move. The host's config
/// (`[queue] session_timeout_ms`) defaults to this.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Default wait for the brokers' acknowledgement of a produced record.
pub const DEFAULT_PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default replication factor of a topic Kairos creates (one broker).
pub const DEFAULT_REPLICATION_FACTOR: i32 = 1;

/// Values for fields a record may leave out (the host passes its `[tasks]` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordDefaults {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Records whose payload is longer are skipped as malformed. 0 = no limit.
    pub max_payload_bytes: usize,
}

impl Default for RecordDefaults {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            backoff: Backoff::default(),
            max_payload_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `"127.0.0.1:9092"` (comma-separated for several).
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// The topic's partition count, fixed for the life of the cluster (Kairos' `partitions`).
    pub partitions: u32,
    /// Replication factor used when the topic is created (1 for a single broker; 3 with
    /// `min.insync.replicas=2` in production).
    pub replication_factor: i32,
    /// Create the topic when it does not exist. An existing topic with another partition count
    /// is always an error.
    pub create_topic: bool,
    /// `client.id`, e.g. the node id, so brokers' logs and group descriptions name the node.
    pub client_id: Option<String>,
    /// Most records persisted in one store call per partition.
    pub max_batch: usize,
    /// How long the API waits for the broker's acknowledgement (`message.timeout.ms`).
    pub produce_timeout: Duration,
    /// Group session timeout: how soon a dead node's partitions move (`session.timeout.ms`).
    pub session_timeout: Duration,
    pub record_defaults: RecordDefaults,
    /// Extra librdkafka properties (security, tuning), applied last to both clients.
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, partitions: u32) -> Self {
        Self {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.to_string(),
            group: DEFAULT_GROUP.to_string(),
            partitions,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            create_topic: true,
            client_id: None,
            max_batch: 1_000,
            produce_timeout: DEFAULT_PRODUCE_TIMEOUT,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            record_defaults: RecordDefaults::default(),
            extra: BTreeMap::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::KafkaError> {
        let bad = |m: &str| Err(crate::KafkaError::Config(m.to_string()));
        if self.brokers.trim().is_empty() {
            return bad("`brokers` must not be empty");
        }
        if self.topic.is_empty() {
            return bad("`topic` must not be empty");
        }
        if self.group.is_empty() {
            return bad("`group` must not be empty");
        }
        if self.partitions == 0 || self.partitions > i32::MAX as u32 {
            return bad("`partitions` must be at least 1");
        }
        if self.replication_factor < 1 {
            return bad("`replication_factor` must be at least 1");
        }
        if self.max_batch == 0 {
            return bad("`max_batch` must be at least 1");
        }
        Ok(())
    }
}
