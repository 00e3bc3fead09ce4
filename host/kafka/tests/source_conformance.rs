//! The partition source conformance cases (shared with the local source) against the Kafka
//! consumer-group source and a real broker.

mod common;

use std::sync::Arc;

use common::*;
use kairos_conformance::source::{self, SourceFactory};
use kairos_core::ownership::{PartitionListener, PartitionSource};
use kairos_core::store::TaskStore;
use kairos_kafka::KafkaSource;

const PARTITIONS: u32 = 4;

fn factory(name: &str, store: Arc<dyn TaskStore>) -> SourceFactory {
    let mut cfg = config(&unique(name), PARTITIONS);
    cfg.client_id = Some("node-a".into());
    Arc::new(move |node: String, listener: Arc<dyn PartitionListener>| {
        let (store, mut cfg) = (store.clone(), cfg.clone());
        cfg.client_id = Some(node);
        Box::pin(async move {
            let s = KafkaSource::start(cfg, store, listener)
                .await
                .expect("kafka source");
            Box::new(s) as Box<dyn PartitionSource>
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_assigns_every_partition_under_a_current_lease() {
    require_kafka();
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn TaskStore> = store(&dir);
    source::source_assigns_every_partition_under_a_current_lease(
        factory("source-lease", store.clone()),
        store,
        PARTITIONS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_restart_revokes_then_assigns_newer_leases() {
    require_kafka();
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn TaskStore> = store(&dir);
    source::source_restart_revokes_then_assigns_newer_leases(
        factory("source-restart", store.clone()),
        store,
        PARTITIONS,
    )
    .await;
}
