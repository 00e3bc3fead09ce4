//! Kairos cluster mode on Apache Kafka.
//!
//! - [`record`]: the task topic's record format (see `RECORDS.md`), so that any Kafka producer
//!   can enqueue tasks without going through the Kairos API.
//! - [`KafkaIntake`]: the producer side. Idempotent, `acks=all`, message key = ordering key,
//!   explicit partition = [`kairos_core::partition::partition_for`]; `submit` returns once the
//!   broker acknowledged every record.
//! - [`KafkaSource`]: the consumer side. One consumer group with cooperative-sticky assignment;
//!   each owned partition is consumed by its own task, which persists every batch in the
//!   [`TaskStore`](kairos_core::store::TaskStore) *before* committing its offsets, and tells a
//!   [`PartitionListener`] (the host's scheduler) about assignments, revocations and newly
//!   persisted tasks.
//!
//! No `rdkafka` type appears in this crate's public API.

mod admin;
mod config;
mod error;
mod producer;
pub mod record;
mod source;
mod worker;

pub use config::{
    DEFAULT_GROUP, DEFAULT_PRODUCE_TIMEOUT, DEFAULT_REPLICATION_FACTOR, DEFAULT_SESSION_TIMEOUT,
    DEFAULT_TOPIC, KafkaConfig, RecordDefaults,
};
pub use error::KafkaError;
pub use producer::KafkaIntake;
pub use source::{KafkaSource, PartitionListener, SourceStats};

/// Checks that the brokers answer a metadata request within `timeout`; `Err` says which
/// brokers could not be reached. Useful for readiness checks and test preconditions.
pub async fn ping(brokers: &str, timeout: std::time::Duration) -> Result<(), KafkaError> {
    admin::ping(brokers, timeout).await
}

/// Deletes the consumer group and the topic of `cfg` (see the admin module).
pub async fn delete_topic_and_group(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    admin::delete_topic_and_group(cfg).await
}
