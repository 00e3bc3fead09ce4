//! The partition source contract, for every source (local, Kafka). Each case takes a factory
//! that starts a source for a node id and a listener, the store the source takes its leases
//! from, and the number of partitions.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_core::model::Task;
use kairos_core::ownership::{Lease, PartitionListener, PartitionSource};
use kairos_core::store::TaskStore;

/// Starts a source for `node_id` reporting to `listener`.
pub type SourceFactory = Arc<
    dyn Fn(
            String,
            Arc<dyn PartitionListener>,
        ) -> Pin<Box<dyn Future<Output = Box<dyn PartitionSource>> + Send>>
        + Send
        + Sync,
>;

/// What a listener heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Assigned(Lease),
    Revoked(u32),
}

/// A listener that records what it hears and checks the call order per partition.
#[derive(Default)]
pub struct RecordingListener {
    heard: Mutex<Vec<Heard>>,
    owned: Mutex<BTreeMap<u32, Lease>>,
    violations: Mutex<Vec<String>>,
}

impl RecordingListener {
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().map(|h| h.clone()).unwrap_or_default()
    }
    pub fn owned(&self) -> BTreeMap<u32, Lease> {
        self.owned.lock().map(|o| o.clone()).unwrap_or_default()
    }
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
    fn violation(&self, v: String) {
        if let Ok(mut vs) = self.violations.lock() {
            vs.push(v);
        }
    }
}

#[async_trait::async_trait]
impl PartitionListener for RecordingListener {
    async fn assigned(&self, lease: Lease) {
        if let Ok(mut h) = self.heard.lock() {
            h.push(Heard::Assigned(lease));
        }
        let prev = self
            .owned
            .lock()
            .ok()
            .and_then(|mut o| o.insert(lease.partition, lease));
        if let Some(prev) = prev {
            self.violation(format!("{lease} assigned while {prev} was held"));
        }
    }
    async fn revoked(&self, partition: u32) {
        if let Ok(mut h) = self.heard.lock() {
            h.push(Heard::Revoked(partition));
        }
        let had = self
            .owned
            .lock()
            .ok()
            .and_then(|mut o| o.remove(&partition));
        if had.is_none() {
            self.violation(format!("partition {partition} revoked while not held"));
        }
    }
    async fn persisted(&self, tasks: Vec<Task>) {
        for t in tasks {
            if !self.owned().contains_key(&t.partition) {
                self.violation(format!("task {} of unheld partition {}", t.id, t.partition));
            }
        }
    }
}

async fn until_all_owned(l: &RecordingListener, partitions: u32, within: Duration) {
    let start = std::time::Instant::now();
    while (l.owned().len() as u32) < partitions {
        assert!(
            start.elapsed() < within,
            "only {} of {partitions} partitions assigned within {within:?}: {:?}",
            l.owned().len(),
            l.heard()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every partition is handed out, each under a lease that is the partition's current one in
/// the store, held by this node.
pub async fn source_assigns_every_partition_under_a_current_lease(
    factory: SourceFactory,
    store: Arc<dyn TaskStore>,
    partitions: u32,
) {
    let l = Arc::new(RecordingListener::default());
    let source = factory("node-a".into(), l.clone()).await;
    until_all_owned(&l, partitions, Duration::from_secs(90)).await;
    for (p, lease) in l.owned() {
        let holder = store
            .lease_holder(p)
            .await
            .expect("lease_holder")
            .unwrap_or_else(|| panic!("partition {p} has no holder"));
        assert_eq!(
            (holder.epoch, holder.node_id.as_str()),
            (lease.epoch, "node-a"),
            "partition {p} handed out under {lease}, but the store holds another"
        );
    }
    source.shutdown().await;
    assert!(l.violations().is_empty(), "{:?}", l.violations());
}

/// Stopping revokes every partition it assigned; a restarted source hands each out again under
/// a newer lease (so the old one is fenced).
pub async fn source_restart_revokes_then_assigns_newer_leases(
    factory: SourceFactory,
    store: Arc<dyn TaskStore>,
    partitions: u32,
) {
    let first = Arc::new(RecordingListener::default());
    let source = factory("node-a".into(), first.clone()).await;
    until_all_owned(&first, partitions, Duration::from_secs(90)).await;
    let before = first.owned();
    source.shutdown().await;
    assert!(
        first.owned().is_empty(),
        "still held after shutdown: {:?}",
        first.owned()
    );
    let second = Arc::new(RecordingListener::default());
    let source = factory("node-a".into(), second.clone()).await;
    until_all_owned(&second, partitions, Duration::from_secs(90)).await;
    for (p, lease) in second.owned() {
        assert!(
            lease.epoch > before[&p].epoch,
            "partition {p}: {lease} after {}",
            before[&p]
        );
        let current = store
            .lease_holder(p)
            .await
            .expect("holder")
            .map(|h| h.epoch);
        assert_eq!(current, Some(lease.epoch));
    }
    source.shutdown().await;
    for l in [&first, &second] {
        assert!(l.violations().is_empty(), "{:?}", l.violations());
    }
}
