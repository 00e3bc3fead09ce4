//! The ownership contract: who may change a partition's tasks.
//!
//! A node works on a partition only under a [`Lease`] `{partition, epoch}` handed out by the
//! store ([`crate::store::TaskStore::acquire_lease`]). Each acquisition gets an epoch strictly
//! greater than every epoch handed out for that partition before, and makes it the current
//! one. Every store call that changes a task takes the caller's lease; a lease that is no
//! longer current fails with the typed [`StoreError::Fenced`](crate::store::StoreError::Fenced)
//! and changes nothing. So a node that lost a partition (paused, cut off, slow, or replaced
//! after a crash) can neither start nor finish nor otherwise change that partition's tasks.
//!
//! The protocol every scheduler follows on top of this:
//! - **start**: the attempt's start is recorded (state `running`, `attempts = n`) under the
//!   lease *before* the attempt runs. A start whose outcome is unknown (the store timed out)
//!   is not run; it is claimed again with the same attempt number (the claim is idempotent).
//! - **finish**: the end is recorded under the same lease; until it is durable the task keeps
//!   holding its key, so the key's next task cannot start before its predecessor's end is
//!   known. A `Fenced` finish means the partition moved: the result is discarded.
//! - **give back**: an attempt whose start is recorded but that never ran (it still waited
//!   for a run slot when its partition was released) has its start given back under the
//!   same lease: the task is as it was before the start, and the next owner runs it at once
//!   as the same attempt ([`crate::store::TaskStore::unclaim_attempt`]). A start that could
//!   not be given back (the store unreachable, the lease no longer current), and the start of
//!   a task that was already in doubt, are left to the takeover below.
//! - **takeover**: a task found `running` when a partition is acquired was in flight under an
//!   older lease. It keeps its key and runs again (as its next attempt) only once the previous
//!   attempt has certainly hit its deadline and its holder, if alive, could record its end:
//!   `takeover_wait_ms` after its start was recorded *and* after the new lease was taken (an
//!   attempt that ran while the store was down records its end once the store is back, which
//!   is also when the new lease can be taken). A node taking back a partition it was still
//!   draining first lets those attempts record their ends
//!   ([`PartitionListener::acquiring`]). A takeover is the one place where an attempt can run
//!   twice (at-least-once): when its holder died, or could not reach the store for that long.
//!
//! The embedded deployment uses the same contract: its partition source is local and
//! acquires every partition at start, so a restarted process fences out nothing but itself.

use serde::{Deserialize, Serialize};

/// The right to change one partition's tasks, valid while `epoch` is the partition's current
/// epoch in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lease {
    pub partition: u32,
    pub epoch: u64,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} epoch {}", self.partition, self.epoch)
    }
}

/// The current holder of a partition, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub epoch: u64,
    pub node_id: String,
}

/// What a partition source tells the node: a partition is now its under a lease, is no longer
/// its, or has newly persisted tasks. Calls for one partition come in order: `assigned`, any
/// number of `persisted`, `revoked`.
#[async_trait::async_trait]
pub trait PartitionListener: Send + Sync + 'static {
    /// The source is about to take `partition`'s lease for this node. A node whose previous
    /// run of the partition is still recording attempt ends (revoked while the store was
    /// down) waits for them here, so the new lease does not fence them out. Default: at once.
    async fn acquiring(&self, _partition: u32) {}
    /// This node holds `lease` (current in the store when handed out): start the partition's
    /// scheduler (it loads every incomplete task of the partition).
    async fn assigned(&self, lease: Lease);
    /// This node loses `partition`: stop starting its tasks and return once its running
    /// attempts finished and were recorded (or a grace period passed). No `persisted` call
    /// for it follows.
    async fn revoked(&self, partition: u32);
    /// Tasks of an owned partition, durable in the store: the created ones and pending
    /// duplicates (which may be an earlier, unanswered try of the same records).
    async fn persisted(&self, tasks: Vec<crate::model::Task>);
}

/// Hands partitions to a node under leases: the local source (embedded: every partition, at
/// start) or a Kafka consumer group (cluster). Both pass the conformance cases in
/// `kairos_conformance::source`.
#[async_trait::async_trait]
pub trait PartitionSource: Send + Sync {
    /// Stops: every partition it assigned is revoked (the listener hears `revoked` and has
    /// drained), then it returns.
    async fn shutdown(self: Box<Self>);
}

/// The embedded partition source: this process holds every partition, each under a new lease
/// taken at start (which fences out nothing but this process's own past).
pub struct LocalSource {
    listener: std::sync::Arc<dyn PartitionListener>,
    partitions: Vec<u32>,
}

impl LocalSource {
    /// Takes the lease of every partition `0..partitions` for `node_id` and hands each to the
    /// listener. Waits (with backoff) while the store is unavailable; other errors end it.
    pub async fn start(
        store: std::sync::Arc<dyn crate::store::TaskStore>,
        partitions: u32,
        node_id: &str,
        listener: std::sync::Arc<dyn PartitionListener>,
    ) -> crate::store::StoreResult<Self> {
        let mut held = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let mut delay = std::time::Duration::from_millis(100);
            let lease = loop {
                match store.acquire_lease(p, node_id).await {
                    Ok(l) => break l,
                    Err(e) if e.is_transient() => {
                        tracing::warn!(partition = p, error = %e, "cannot take the partition's lease yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            listener.assigned(lease).await;
            held.push(p);
        }
        Ok(Self {
            listener,
            partitions: held,
        })
    }
}

#[async_trait::async_trait]
impl PartitionSource for LocalSource {
    async fn shutdown(self: Box<Self>) {
        // All partitions drain at once (each revoke waits for its running attempts).
        let mut drains = tokio::task::JoinSet::new();
        for p in self.partitions.iter().copied() {
            let listener = self.listener.clone();
            drains.spawn(async move { listener.revoked(p).await });
        }
        while drains.join_next().await.is_some() {}
    }
}
