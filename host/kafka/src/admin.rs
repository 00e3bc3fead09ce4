//! Client configuration, reachability and topic creation.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError};

/// The properties both clients share: brokers, client id, then the user's extras.
pub(crate) fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    if let Some(id) = &cfg.client_id {
        c.set("client.id", id);
    }
    c.set("log_level", "4");
    apply_extra(&mut c, cfg);
    c
}

pub(crate) fn apply_extra(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.extra {
        c.set(k, v);
    }
}

/// Partition count of `topic`, `None` when the broker does not know it.
fn partition_count(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<u32>, KafkaError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| KafkaError::from_rd("fetching topic metadata", e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(t.partitions().len() as u32)),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(None)
        }
        Some(e) => Err(KafkaError::Other(format!(
            "topic `{topic}` metadata: {}",
            RDKafkaErrorCode::from(e)
        ))),
    }
}

fn metadata_client(brokers: &str) -> Result<BaseConsumer, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .set("log_level", "3");
    c.create()
        .map_err(|e| KafkaError::from_rd("creating metadata client", e))
}

pub(crate) async fn ping(brokers: &str, timeout: Duration) -> Result<(), KafkaError> {
    let brokers = brokers.to_string();
    blocking(move || {
        let client = metadata_client(&brokers)?;
        let md = client
            .fetch_metadata(None, timeout)
            .map_err(|e| KafkaError::Unavailable(format!("brokers {brokers}: {e}")))?;
        if md.brokers().is_empty() {
            return Err(KafkaError::Unavailable(format!(
                "brokers {brokers}: no broker listed"
            )));
        }
        Ok(())
    })
    .await
}

/// Deletes `cfg.group` and `cfg.topic` (benchmarks and tests clean up after themselves). A
/// group whose members left but whose sessions have not expired yet cannot be deleted; Kafka
/// expires it by itself, so that is not an error.
pub(crate) async fn delete_topic_and_group(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| KafkaError::from_rd("creating admin client", e))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let groups = admin
        .delete_groups(&[cfg.group.as_str()], &opts)
        .await
        .map_err(|e| KafkaError::from_rd("deleting the group", e))?;
    for r in groups {
        if let Err((g, code)) = r {
            tracing::debug!(group = %g, %code, "group not deleted");
        }
    }
    let topics = admin
        .delete_topics(&[cfg.topic.as_str()], &opts)
        .await
        .map_err(|e| KafkaError::from_rd("deleting the topic", e))?;
    for r in topics {
        if let Err((t, code)) = r {
            return Err(KafkaError::Other(format!("deleting topic `{t}`: {code}")));
        }
    }
    Ok(())
}

/// Makes sure the topic exists with exactly `cfg.partitions` partitions, creating it when
/// allowed. Waits until the metadata shows every partition.
pub(crate) async fn ensure_topic(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    cfg.validate()?;
    let timeout = Duration::from_secs(10);
    let brokers = cfg.brokers.clone();
    let topic = cfg.topic.clone();
    let expected = cfg.partitions;
    let existing = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        blocking(move || partition_count(&metadata_client(&brokers)?, &topic, timeout)).await?
    };
    match existing {
        Some(n) if n == expected => return Ok(()),
        Some(actual) => {
            return Err(KafkaError::PartitionMismatch {
                topic,
                expected,
                actual,
            });
        }
        None if !cfg.create_topic => return Err(KafkaError::NoTopic(topic)),
        None => {}
    }
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| KafkaError::from_rd("creating admin client", e))?;
    let new = NewTopic::new(
        &topic,
        expected as i32,
        TopicReplication::Fixed(cfg.replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| KafkaError::from_rd("creating topic", e))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic = %topic, partitions = expected, "created Kafka topic"),
            // Another node created it meanwhile; its partition count is checked below.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Other(format!(
                    "creating topic `{name}`: {code}"
                )));
            }
        }
    }
    blocking(move || {
        let client = metadata_client(&brokers)?;
        let deadline = Instant::now() + timeout;
        loop {
            match partition_count(&client, &topic, timeout)? {
                Some(n) if n == expected => return Ok(()),
                Some(actual) if actual > expected => {
                    return Err(KafkaError::PartitionMismatch { topic, expected, actual });
                }
                _ if Instant::now() > deadline => {
                    return Err(KafkaError::Unavailable(format!(
                        "topic `{topic}` was created but its metadata did not appear within {timeout:?}"
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
}

/// Runs a blocking librdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaError::Other(format!("blocking Kafka call failed: {e}")))?
}
