//! Shared test setup: a store on a fresh keyspace of the local Cassandra, dropped afterwards.
//!
//! These tests need Cassandra on 127.0.0.1:9042: run `scripts/services up cassandra` first.
//! Without it they fail (they never skip).

#![allow(dead_code)]

use kairos_cassandra::{CassandraOptions, CassandraStore};
use kairos_conformance::T0;
use kairos_core::model::{Attempt, AttemptOutcome};

pub const NODE: &str = "127.0.0.1:9042";

pub fn options(keyspace: &str) -> CassandraOptions {
    CassandraOptions {
        nodes: vec![NODE.into()],
        keyspace: keyspace.into(),
        consistency: "local_quorum".into(),
        migrate_on_start: true,
        ..CassandraOptions::default()
    }
}

pub fn unique_keyspace() -> String {
    format!("kairos_test_{}", uuid::Uuid::new_v4().simple())
}

/// Connects to a fresh keyspace; panics loudly if Cassandra is not there.
pub async fn fresh_store() -> (CassandraStore, KeyspaceGuard) {
    let ks = unique_keyspace();
    let store = match CassandraStore::connect(options(&ks)).await {
        Ok(s) => s,
        Err(e) => panic!(
            "cannot use Cassandra on {NODE} ({e}). These tests need a running Cassandra: \
             run `scripts/services up cassandra` first."
        ),
    };
    (store, KeyspaceGuard { keyspace: ks })
}

/// Drops its keyspace when dropped (from a thread of its own, so it works inside or outside
/// a runtime).
pub struct KeyspaceGuard {
    pub keyspace: String,
}

impl Drop for KeyspaceGuard {
    fn drop(&mut self) {
        let ks = std::mem::take(&mut self.keyspace);
        let dropper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for dropping the keyspace");
            rt.block_on(async {
                let opts = CassandraOptions {
                    migrate_on_start: false,
                    ..options(&ks)
                };
                // Preparing needs the tables; they are there (the store was made with them).
                match CassandraStore::connect(opts).await {
                    Ok(s) => {
                        if let Err(e) = s.drop_keyspace().await {
                            eprintln!("could not drop keyspace {ks}: {e}");
                        }
                    }
                    Err(e) => eprintln!("could not drop keyspace {ks}: {e}"),
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A plain driver session on the local Cassandra, for looking at tables directly.
pub async fn session() -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_node(NODE)
        .build()
        .await
        .expect("session")
}

/// Attempt `number`, succeeded at `T0 + 1`, without error or logs.
pub fn succeeded_attempt(number: u32) -> Attempt {
    Attempt {
        number,
        started_at: T0,
        ended_at: T0 + 1,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        plugin_digest: None,
        logs: None,
    }
}
