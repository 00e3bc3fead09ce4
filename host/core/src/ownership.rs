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
//! - **takeover**: a task found `running` when a partition is acquired was in flight under an
//!   older lease. It keeps its key and runs again (as its next attempt) only once the previous
//!   attempt has certainly hit its deadline: `takeover_wait_ms` after its start was recorded.
//!   That is the one place where an attempt can run twice (at-least-once).
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
