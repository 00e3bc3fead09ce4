//! The partition source conformance cases against the local (embedded) source.

use std::sync::Arc;

use kairos_conformance::source::{self, SourceFactory};
use kairos_core::mem::MemStore;
use kairos_core::ownership::{LocalSource, PartitionListener, PartitionSource};
use kairos_core::store::TaskStore;

const PARTITIONS: u32 = 8;

fn factory(store: Arc<dyn TaskStore>) -> SourceFactory {
    Arc::new(move |node: String, listener: Arc<dyn PartitionListener>| {
        let store = store.clone();
        Box::pin(async move {
            let s = LocalSource::start(store, PARTITIONS, &node, listener)
                .await
                .expect("local source");
            Box::new(s) as Box<dyn PartitionSource>
        })
    })
}

#[tokio::test]
async fn local_source_assigns_every_partition_under_a_current_lease() {
    let store: Arc<dyn TaskStore> = Arc::new(MemStore::new());
    source::source_assigns_every_partition_under_a_current_lease(
        factory(store.clone()),
        store,
        PARTITIONS,
    )
    .await;
}

#[tokio::test]
async fn local_source_restart_revokes_then_assigns_newer_leases() {
    let store: Arc<dyn TaskStore> = Arc::new(MemStore::new());
    source::source_restart_revokes_then_assigns_newer_leases(
        factory(store.clone()),
        store,
        PARTITIONS,
    )
    .await;
}
