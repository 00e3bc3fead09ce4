//! Cluster mode: the pieces that connect the scheduler to Apache Kafka (`kairos-kafka`) and
//! Apache Cassandra (`kairos-cassandra`).
//!
//! - [`ClusterIntake`]: an enqueue is a record on the task topic, answered once the brokers
//!   acknowledged it (`acks=all`). The partition's owner persists it to Cassandra and runs it.
//! - [`Listener`]: the Kafka source's partition events drive the scheduler. On assignment the
//!   node first takes the partition's lease in Cassandra (a lightweight transaction), then
//!   starts the partition's scheduler under it; on revocation only that partition drains.
//!   Every start, finish and task operation then goes through the store under that lease, so
//!   a node that lost a partition can neither run nor complete its tasks again.
//! - [`CassandraOwners`]: who owns a partition (`partition_owners`) and where each node's API
//!   is (`nodes`, written by [`register_api`] at start), so the API forwards task operations
//!   to the owner of their partition.
//! - Start-up waits (with backoff and a clear log line) while Kafka or Cassandra are not
//!   reachable yet.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use kairos_cassandra::{CassandraOptions, CassandraStore, Replication};
use kairos_core::model::{EnqueueOutcome, NewTask, Task};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, TaskStore};
use kairos_kafka::{
    KafkaConfig, KafkaError, KafkaIntake, KafkaSource, PartitionListener, RecordDefaults,
};

use crate::api::Owners;
use crate::config::{CassandraSection, Config, KafkaSection};
use crate::enqueue::TaskIntake;
use crate::scheduler::Scheduler;

/// The store options for `[store] type = "cassandra"`.
pub fn cassandra_options(c: &CassandraSection) -> CassandraOptions {
    let replication = if c.datacenters.is_empty() {
        Replication::SimpleStrategy {
            rf: c.replication_factor,
        }
    } else {
        Replication::NetworkTopology(c.datacenters.clone())
    };
    CassandraOptions {
        nodes: c.nodes.clone(),
        keyspace: c.keyspace.clone(),
        replication,
        consistency: c.consistency.clone(),
        migrate_on_start: c.migrate_on_start,
        bucket_ms: c.bucket_ms,
        request_timeout: Duration::from_millis(c.request_timeout_ms.max(100)),
        ..CassandraOptions::default()
    }
}

/// The Kafka options for `[queue] type = "kafka"`.
pub fn kafka_config(cfg: &Config, k: &KafkaSection) -> KafkaConfig {
    let mut kc = KafkaConfig::new(k.brokers.joined(), cfg.partitions);
    kc.topic = k.topic.clone();
    kc.group = k.group.clone();
    kc.replication_factor = k.replication_factor;
    kc.create_topic = k.create_topic;
    kc.client_id = Some(cfg.node_id.clone());
    kc.session_timeout = Duration::from_millis(k.session_timeout_ms.max(1_000));
    kc.produce_timeout = Duration::from_millis(k.produce_timeout_ms.max(1));
    kc.record_defaults = RecordDefaults {
        max_attempts: cfg.tasks.max_attempts,
        backoff: kairos_core::model::Backoff {
            initial_ms: cfg.tasks.backoff_initial_ms,
            max_ms: cfg.tasks.backoff_max_ms,
        },
        max_payload_bytes: cfg.tasks.max_payload_bytes,
    };
    kc.extra = k.properties.clone();
    kc
}

/// Calls `f` until it succeeds. Errors `transient` accepts are retried forever, with backoff
/// (0.5 s doubling to 10 s) and a log line each time; others end the wait at once.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut f: F,
) -> anyhow::Result<T>
where
    E: Display + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    let mut tries = 0u32;
    loop {
        match f().await {
            Ok(v) => {
                if tries > 0 {
                    tracing::info!("{what}: connected after {} attempts", tries + 1);
                }
                return Ok(v);
            }
            Err(e) if transient(&e) => {
                tries += 1;
                tracing::warn!(
                    "{what}: not reachable yet ({e}); retrying in {:.1} s (attempt {tries})",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(anyhow::anyhow!("{what}: {e}")),
        }
    }
}

fn kafka_transient(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Unavailable(_) | KafkaError::Other(_))
}

/// Connects to Cassandra (creating the schema when configured), waiting while it is down.
pub async fn connect_cassandra(c: &CassandraSection) -> anyhow::Result<Arc<CassandraStore>> {
    let opts = cassandra_options(c);
    let what = format!("Cassandra at {}", c.nodes.join(","));
    let store = wait_for(&what, StoreError::is_transient, || {
        CassandraStore::connect(opts.clone())
    })
    .await?;
    tracing::info!(nodes = ?c.nodes, keyspace = %c.keyspace, consistency = %c.consistency, "Cassandra store ready");
    Ok(Arc::new(store))
}

/// Connects the producer (creating the topic when configured), waiting while Kafka is down.
pub async fn connect_intake(kc: &KafkaConfig) -> anyhow::Result<KafkaIntake> {
    let what = format!("Kafka at {}", kc.brokers);
    let intake = wait_for(&what, kafka_transient, || KafkaIntake::connect(kc)).await?;
    tracing::info!(brokers = %kc.brokers, topic = %kc.topic, partitions = kc.partitions, "Kafka producer ready");
    Ok(intake)
}

/// Joins the consumer group, waiting while Kafka is down.
pub async fn start_source(
    kc: &KafkaConfig,
    store: Arc<dyn TaskStore>,
    listener: Arc<Listener>,
) -> anyhow::Result<KafkaSource> {
    let what = format!("Kafka consumer group {} at {}", kc.group, kc.brokers);
    let source = wait_for(&what, kafka_transient, || {
        let listener: Arc<dyn PartitionListener> = listener.clone();
        KafkaSource::start(kc.clone(), store.clone(), listener)
    })
    .await?;
    tracing::info!(group = %kc.group, topic = %kc.topic, "joined the consumer group; waiting for partitions");
    Ok(source)
}

/// `kairos migrate`: the keyspace and tables (and the topic, for a Kafka queue).
pub async fn migrate(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    match &cfg.store {
        crate::config::StoreConfig::Cassandra(c) => {
            let mut c = c.clone();
            c.migrate_on_start = true;
            let store = connect_cassandra(&c).await?;
            store
                .migrate()
                .await
                .context("creating the keyspace and tables")?;
            done.push(format!(
                "Cassandra keyspace `{}` and its tables are in place ({})",
                c.keyspace,
                c.nodes.join(",")
            ));
        }
        crate::config::StoreConfig::Embedded { .. } => {
            done.push(
                "the embedded store creates its tables itself when it opens; nothing to do".into(),
            );
        }
    }
    if let crate::config::QueueConfig::Kafka(k) = &cfg.queue {
        let kc = kafka_config(cfg, k);
        let intake = connect_intake(&kc).await?;
        done.push(format!(
            "Kafka topic `{}` has {} partitions ({})",
            intake.topic(),
            intake.partitions(),
            kc.brokers
        ));
    }
    Ok(done)
}

/// Records where this node's API is reached (`advertise_addr`, else the bound address), so
/// the other nodes can forward task operations to it. Waits while Cassandra is down.
pub async fn register_api(
    store: &CassandraStore,
    cfg: &Config,
    bound: std::net::SocketAddr,
) -> anyhow::Result<String> {
    let addr = match &cfg.advertise_addr {
        Some(a) => a.clone(),
        None => {
            if bound.ip().is_unspecified() {
                tracing::warn!(%bound, "the API listens on a wildcard address and `advertise_addr` is not set: other nodes cannot forward task operations to this one; set `advertise_addr` (or --advertise-addr) to an address they reach");
            }
            bound.to_string()
        }
    };
    wait_for(
        "registering the API address",
        StoreError::is_transient,
        || store.register_node(&cfg.node_id, &addr, kairos_core::clock::system_now()),
    )
    .await?;
    tracing::info!(node = %cfg.node_id, api = %addr, "API address registered for forwarded task operations");
    Ok(addr)
}

/// Partition owners and node addresses in Cassandra, for the API's forwarding.
pub struct CassandraOwners(pub Arc<CassandraStore>);

#[async_trait]
impl Owners for CassandraOwners {
    async fn owner(&self, partition: u32) -> Result<Option<String>, StoreError> {
        Ok(self.0.lease_holder(partition).await?.map(|h| h.node_id))
    }

    async fn api_addr(&self, node_id: &str) -> Result<Option<String>, StoreError> {
        self.0.node_addr(node_id).await
    }
}

/// Longest a node waits, before it takes a partition back, for the attempts of its previous
/// run of it to record their ends (they wait for the store; see `Scheduler::wait_released`).
const RELEASE_WAIT: Duration = Duration::from_secs(300);

/// A partition source's events (the local source's or Kafka's), driving the scheduler.
pub struct Listener {
    pub scheduler: Arc<Scheduler>,
    /// How long a revocation waits for the partition's running attempts.
    pub revoke_grace: Duration,
    pub node_id: String,
}

#[async_trait]
impl PartitionListener for Listener {
    async fn assigned(&self, lease: Lease) {
        self.scheduler.assign(lease).await;
        tracing::info!(partition = lease.partition, epoch = lease.epoch, node = %self.node_id, "partition owned: scheduler started");
    }

    async fn acquiring(&self, partition: u32) {
        if !self.scheduler.wait_released(partition, RELEASE_WAIT).await {
            tracing::warn!(
                partition,
                wait_s = RELEASE_WAIT.as_secs(),
                "attempts of the partition's previous run here still unrecorded; taking it anyway (they may run again)"
            );
        }
    }

    async fn revoked(&self, partition: u32) {
        if !self.scheduler.revoke(partition, self.revoke_grace).await {
            tracing::warn!(
                partition,
                grace_ms = self.revoke_grace.as_millis() as u64,
                "attempts of the released partition still running after the grace period; the next owner runs them again if their end is not recorded in time"
            );
        }
        tracing::info!(partition, node = %self.node_id, "partition released: drained and stopped");
    }

    async fn persisted(&self, tasks: Vec<Task>) {
        self.scheduler.deliver(tasks).await;
    }
}

/// Enqueue through Kafka: a task is accepted once the brokers acknowledged its record.
pub struct ClusterIntake {
    pub kafka: KafkaIntake,
    pub store: Arc<dyn TaskStore>,
}

#[async_trait]
impl TaskIntake for ClusterIntake {
    async fn submit(&self, batch: Vec<NewTask>) -> Result<Vec<EnqueueOutcome>, StoreError> {
        let mut outcomes: Vec<Option<EnqueueOutcome>> = (0..batch.len()).map(|_| None).collect();
        let mut seen: HashMap<String, Task> = HashMap::new();
        let mut send: Vec<(usize, NewTask)> = Vec::with_capacity(batch.len());
        for (i, t) in batch.into_iter().enumerate() {
            if let Some(uk) = &t.uniqueness_key {
                // Best effort, so the client learns the existing id: the owner's enqueue
                // deduplicates exactly whatever happens here.
                if let Some(prev) = seen.get(uk) {
                    outcomes[i] = Some(EnqueueOutcome::Duplicate(prev.clone()));
                    continue;
                }
                match self.store.find_by_uniqueness_key(uk).await {
                    Ok(Some(existing)) => {
                        outcomes[i] = Some(EnqueueOutcome::Duplicate(existing));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "uniqueness lookup failed; the owner deduplicates")
                    }
                }
                seen.insert(uk.clone(), Task::from_new(t.clone(), 0));
            }
            send.push((i, t));
        }
        if !send.is_empty() {
            let tasks: Vec<NewTask> = send.iter().map(|(_, t)| t.clone()).collect();
            let results = self.kafka.submit(tasks).await.map_err(|e| match e {
                KafkaError::Unavailable(m) => {
                    StoreError::Unavailable(format!("Kafka unavailable: {m}"))
                }
                other => StoreError::Unavailable(other.to_string()),
            })?;
            for ((i, t), r) in send.into_iter().zip(results) {
                match r {
                    Ok(()) => outcomes[i] = Some(EnqueueOutcome::Created(Task::from_new(t, 0))),
                    // Records of the batch that were acknowledged stay (and run); the client
                    // sees the failure and may resend (new ids; use uniqueness keys to dedup).
                    Err(m) => return Err(StoreError::Unavailable(format!("task {}: {m}", t.id))),
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Other("no outcome".into())))
            .collect()
    }
}
