//! The producer side: tasks accepted by a node's API become records on the task topic.

use std::time::{Duration, Instant};

use kairos_core::model::NewTask;
use kairos_core::partition::partition_for;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::admin::{apply_extra, base_config, blocking, ensure_topic};
use crate::{KafkaConfig, KafkaError, record};

/// Writes tasks to the task topic: idempotent producer, `acks=all`, message key = ordering
/// key, explicit partition = `partition_for(key, partitions)`.
pub struct KafkaIntake {
    producer: FutureProducer,
    topic: String,
    partitions: u32,
    timeout: Duration,
}

impl KafkaIntake {
    /// Connects and makes sure the topic exists with the configured partition count
    /// (creating it when `create_topic` is set). Fails clearly on a partition-count mismatch.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        cfg.validate()?;
        ensure_topic(cfg).await?;
        let mut c: ClientConfig = base_config(cfg);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                cfg.produce_timeout.as_millis().max(1).to_string(),
            );
        apply_extra(&mut c, cfg);
        let producer: FutureProducer = c
            .create()
            .map_err(|e| KafkaError::from_rd("creating producer", e))?;
        Ok(Self {
            producer,
            topic: cfg.topic.clone(),
            partitions: cfg.partitions,
            timeout: cfg.produce_timeout,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Produces every task (all sends in flight at once) and returns once the broker
    /// acknowledged each of them (`acks=all`): one result per input, in order. `Ok(())` means
    /// the record is durable in Kafka; the owning node persists it to the store later.
    ///
    /// The outer `Err` means no record could be written because the brokers are unavailable
    /// (every record failed with a timeout or transport error); per-record failures (payload
    /// not JSON, message too large, …) are in the inner results.
    pub async fn submit(&self, tasks: Vec<NewTask>) -> Result<Vec<Result<(), String>>, KafkaError> {
        let n = tasks.len();
        let mut pending: Vec<Result<DeliveryFuture, String>> = Vec::with_capacity(n);
        let deadline = Instant::now() + self.timeout;
        for task in &tasks {
            pending.push(self.enqueue(task, deadline).await);
        }
        let mut out = Vec::with_capacity(n);
        let mut unavailable = 0usize;
        for p in pending {
            out.push(match p {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => {
                        if is_unavailable(&e) {
                            unavailable += 1;
                        }
                        Err(format!("not acknowledged by Kafka: {e}"))
                    }
                    Err(_) => Err("the Kafka producer was closed".to_string()),
                },
            });
        }
        if n > 0 && unavailable == n {
            let first = out
                .iter()
                .find_map(|r| r.as_ref().err())
                .cloned()
                .unwrap_or_default();
            return Err(KafkaError::Unavailable(first));
        }
        Ok(out)
    }

    /// Hands one record to librdkafka, waiting (until `deadline`) while its queue is full.
    async fn enqueue(&self, task: &NewTask, deadline: Instant) -> Result<DeliveryFuture, String> {
        let value = record::encode(task)?;
        let partition = partition_for(&task.key, self.partitions);
        if partition != task.partition {
            tracing::debug!(id = %task.id, task.partition, partition, "task partition recomputed for the topic");
        }
        loop {
            let rec = FutureRecord::to(&self.topic)
                .key(task.key.as_bytes())
                .payload(&value)
                .partition(partition as i32);
            match self.producer.send_result(rec) {
                Ok(delivery) => return Ok(delivery),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(format!("task {} not produced: {e}", task.id)),
            }
        }
    }

    /// Waits until every record handed to the producer was acknowledged or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        blocking(move || {
            producer
                .flush(timeout)
                .map_err(|e| KafkaError::from_rd("flushing producer", e))
        })
        .await
    }
}

fn is_unavailable(e: &RdError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
        )
    )
}
