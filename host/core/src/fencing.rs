//! Partition ownership epochs (fencing tokens).
//!
//! A node that is assigned a partition calls [`PartitionFencing::acquire`], which makes it the
//! partition's owner under a new epoch, strictly greater than every epoch handed out before
//! (cluster: a Cassandra lightweight transaction on `partition_owners`). It then starts and
//! finishes that partition's attempts *under that epoch*, through the store's fenced
//! operations, so a node that lost the partition (paused, cut off, slow) can neither run nor
//! complete its tasks again:
//!
//! - **start** (claim): a conditional write on the task row that fails if a newer epoch has
//!   claimed the task, and stamps the task with the caller's epoch. After claiming (a batch
//!   of) tasks the node re-reads the partition's epoch with a linearizable read; if it is no
//!   longer current the node does not run them (the new owner's claim overrides the stale
//!   stamp). One linearizable read per batch of claims, not per task.
//! - **finish**: a conditional write that succeeds only if the task is still `running` and
//!   stamped with the caller's epoch. A newer owner that claimed the task meanwhile makes the
//!   old owner's finish fail, and the old owner's result is discarded.
//!
//! A task left `running` under an older epoch was in flight at the hand-over. The new owner
//! should leave it alone until the attempt's wall-clock deadline (plus a margin) has passed
//! since the task's `updated_at`, letting the old owner record its outcome; then it claims it
//! as the next attempt. That is the one place where a task can run twice (at-least-once): the
//! old owner died or stalled mid-attempt.
//!
//! The embedded deployment owns every partition in one process: [`LocalFencing`] answers
//! epoch 1 and the embedded store needs no fencing.

use async_trait::async_trait;

use crate::store::StoreResult;

#[async_trait]
pub trait PartitionFencing: Send + Sync {
    /// Takes ownership of `partition` for `node_id`: returns the new epoch (previous + 1, or 1
    /// for a partition never owned). Retries internally when another node acquires at the
    /// same moment; every caller gets a distinct epoch, and the last one to return owns it.
    async fn acquire(&self, partition: u32, node_id: &str) -> StoreResult<u64>;

    /// The current `(epoch, node_id)` of `partition`, read linearizably; `None` if it was
    /// never owned.
    async fn current(&self, partition: u32) -> StoreResult<Option<(u64, String)>>;
}

/// Single-process fencing: every partition is always owned by this process under epoch 1.
#[derive(Debug, Default, Clone)]
pub struct LocalFencing {
    node_id: String,
}

impl LocalFencing {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
        }
    }
}

#[async_trait]
impl PartitionFencing for LocalFencing {
    async fn acquire(&self, _partition: u32, _node_id: &str) -> StoreResult<u64> {
        Ok(1)
    }

    async fn current(&self, _partition: u32) -> StoreResult<Option<(u64, String)>> {
        Ok(Some((1, self.node_id.clone())))
    }
}
