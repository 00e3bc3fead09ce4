//! Shared helpers for the tests against the real broker at 127.0.0.1:9092.
#![allow(dead_code)]

pub mod flaky;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_core::model::{Backoff, NewTask, Task};
use kairos_core::partition::partition_for;
use kairos_core::store::TaskStore;
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};
use kairos_kafka::{KafkaConfig, PartitionListener};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const BROKERS: &str = "127.0.0.1:9092";

/// Fails loudly (never skips) when the broker is not there.
pub fn require_kafka() {
    let addr: SocketAddr = BROKERS.parse().expect("address");
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        panic!(
            "Kafka is not reachable at {BROKERS} ({e}). These tests need the real broker: \
             run `scripts/services up kafka` first."
        );
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,librdkafka=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A topic (and group) name no other test or run uses.
pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "kairos.test.{name}.{}.{nanos}.{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    )
}

pub fn config(topic: &str, partitions: u32) -> KafkaConfig {
    let mut c = KafkaConfig::new(BROKERS, partitions);
    c.topic = topic.to_string();
    c.group = format!("{topic}.group");
    c.session_timeout = Duration::from_secs(6);
    c
}

pub fn store(dir: &tempfile::TempDir) -> Arc<EmbeddedStore> {
    Arc::new(
        EmbeddedStore::open(&dir.path().join("store"), EmbeddedOptions::default())
            .expect("open store"),
    )
}

pub fn task(key: &str, n: usize, partitions: u32) -> NewTask {
    NewTask {
        id: uuid::Uuid::now_v7().to_string(),
        partition: partition_for(key, partitions),
        plugin: "notify".into(),
        pin_version: None,
        key: key.to_string(),
        due_at: 1_800_000_000_000 + n as i64,
        payload: format!(r#"{{"n":{n}}}"#),
        uniqueness_key: None,
        max_attempts: 3,
        backoff: Backoff::default(),
        park_on_dead: false,
        generation: 0,
        created_at: 1_700_000_000_000,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Assigned(u32),
    Revoked(u32),
}

/// Records what the source tells the host, and checks the contract as it goes.
pub struct Recorder {
    pub store: Arc<dyn TaskStore>,
    pub events: Mutex<Vec<Ev>>,
    pub owned: Mutex<BTreeSet<u32>>,
    pub persisted: Mutex<Vec<Task>>,
    /// Contract breaches seen (persisted for an unowned partition, task not in store, …).
    pub violations: Mutex<Vec<String>>,
    /// Slows `revoked` down, to show the rebalance waits for it.
    pub revoke_delay: Duration,
}

impl Recorder {
    pub fn new(store: Arc<dyn TaskStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            events: Mutex::default(),
            owned: Mutex::default(),
            persisted: Mutex::default(),
            violations: Mutex::default(),
            revoke_delay: Duration::ZERO,
        })
    }
    pub fn persisted_count(&self) -> usize {
        self.persisted.lock().unwrap().len()
    }
    pub fn persisted_ids(&self) -> Vec<String> {
        self.persisted
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }
    /// Distinct task ids handed over. After a lost assignment (no commit) the next owner
    /// re-reads uncommitted records and hands the still-pending duplicates over again, so
    /// `persisted_count` may exceed the number of tasks; this does not.
    pub fn persisted_distinct(&self) -> BTreeSet<String> {
        self.persisted_ids().into_iter().collect()
    }
    /// Waits until every id in `ids` has been handed over (at least once); on timeout panics
    /// with how many deliveries, distinct ids and missing ids there were.
    pub async fn wait_persisted(&self, what: &str, ids: &BTreeSet<String>, timeout: Duration) {
        let start = Instant::now();
        loop {
            let got = self.persisted_distinct();
            let missing = ids.difference(&got).count();
            if missing == 0 {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}: {missing} of {} ids missing \
                     ({} deliveries, {} distinct ids handed over)",
                    ids.len(),
                    self.persisted_count(),
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pub fn owned(&self) -> BTreeSet<u32> {
        self.owned.lock().unwrap().clone()
    }
    pub fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

#[async_trait]
impl PartitionListener for Recorder {
    async fn assigned(&self, lease: kairos_core::ownership::Lease) {
        let partition = lease.partition;
        self.events.lock().unwrap().push(Ev::Assigned(partition));
        if !self.owned.lock().unwrap().insert(partition) {
            self.violations
                .lock()
                .unwrap()
                .push(format!("assigned twice: {partition}"));
        }
    }
    async fn revoked(&self, partition: u32) {
        tokio::time::sleep(self.revoke_delay).await;
        self.events.lock().unwrap().push(Ev::Revoked(partition));
        if !self.owned.lock().unwrap().remove(&partition) {
            self.violations
                .lock()
                .unwrap()
                .push(format!("revoked while not owned: {partition}"));
        }
    }
    async fn persisted(&self, tasks: Vec<Task>) {
        for t in &tasks {
            if !self.owned.lock().unwrap().contains(&t.partition) {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("persisted for unowned partition {}", t.partition));
            }
            match self.store.get(&t.id).await {
                Ok(Some(_)) => {}
                other => self
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("task {} not in store: {other:?}", t.id)),
            }
        }
        self.persisted.lock().unwrap().extend(tasks);
    }
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's committed offsets per partition (-1 = nothing committed), read with a client
/// that does not join the group.
pub fn committed(topic: &str, group: &str, partitions: u32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p as i32);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match got.find_partition(topic, p as i32).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// Log-end offsets per partition.
pub fn end_offsets(topic: &str, partitions: u32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p as i32, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}
