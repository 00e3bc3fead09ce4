//! [`EpochFence`]: every start and finish of an attempt goes through the store's fenced
//! operations under the ownership epoch this node holds for the task's partition, so a node
//! that lost a partition can neither run nor complete its tasks again.
//!
//! Starts are claimed in batches, one batch in flight per partition (group commit): the
//! claims of a batch run concurrently, then one linearizable read confirms the epoch for the
//! whole batch. One reader per partition at a time also keeps the Paxos rounds on the
//! partition's ownership row from contending with each other, which is what made one claim
//! per start slow under load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use kairos_cassandra::CassandraStore;
use kairos_cassandra::fencing::is_fenced;
use kairos_core::fencing::PartitionFencing;
use kairos_core::model::{Attempt, Millis, Task, Transition};
use kairos_core::store::StoreError;
use tokio::sync::{mpsc, oneshot};

use crate::scheduler::Fence;

/// Most claims in one batch (the store runs its `concurrency` of them at once).
const START_BATCH: usize = 256;
/// Claims waiting for the next batch, per partition; senders wait when it is full.
const START_QUEUE: usize = 4_096;

const NOT_OURS: &str = "not owned:";

/// A partition this node holds.
struct Held {
    epoch: u64,
    /// Cleared once the store said another node took the partition over.
    ours: Arc<AtomicBool>,
    starts: mpsc::Sender<StartReq>,
}

/// A start waiting for its partition's next batch.
struct StartReq {
    id: String,
    attempt: u32,
    at: Millis,
    reply: oneshot::Sender<Result<Task, StoreError>>,
}

/// The epochs this node holds, per partition, and the fenced start/finish under them.
pub struct EpochFence {
    store: Arc<CassandraStore>,
    held: RwLock<HashMap<u32, Held>>,
}

impl EpochFence {
    pub fn new(store: Arc<CassandraStore>) -> Self {
        Self {
            store,
            held: RwLock::new(HashMap::new()),
        }
    }

    /// Takes the partition's next ownership epoch (a lightweight transaction): from then on
    /// the previous owner can neither start nor finish the partition's tasks.
    pub async fn acquire(&self, partition: u32, node_id: &str) -> Result<u64, StoreError> {
        self.store.acquire(partition, node_id).await
    }

    /// Starts serving fenced claims of `partition` under `epoch`. Must run inside the runtime.
    pub fn hold(&self, partition: u32, epoch: u64) {
        let (tx, rx) = mpsc::channel(START_QUEUE);
        let ours = Arc::new(AtomicBool::new(true));
        tokio::spawn(claim_batches(
            self.store.clone(),
            partition,
            epoch,
            ours.clone(),
            rx,
        ));
        if let Ok(mut m) = self.held.write() {
            // Replacing an older hold drops its sender: that batcher ends after its queue.
            m.insert(
                partition,
                Held {
                    epoch,
                    ours,
                    starts: tx,
                },
            );
        }
    }

    /// Stops serving `partition` (after its revocation drained the scheduler).
    pub fn release(&self, partition: u32) {
        if let Ok(mut m) = self.held.write() {
            m.remove(&partition);
        }
    }

    fn lookup(&self, p: u32) -> Result<(u64, Arc<AtomicBool>, mpsc::Sender<StartReq>), StoreError> {
        let m = self
            .held
            .read()
            .map_err(|_| StoreError::Other("fence state poisoned".into()))?;
        let h = m.get(&p).ok_or_else(|| {
            StoreError::Conflict(format!(
                "{NOT_OURS} this node holds no epoch of partition {p}"
            ))
        })?;
        Ok((h.epoch, h.ours.clone(), h.starts.clone()))
    }
}

/// One partition's claims, a batch at a time, until the partition is released.
async fn claim_batches(
    store: Arc<CassandraStore>,
    partition: u32,
    epoch: u64,
    ours: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<StartReq>,
) {
    let mut batch: Vec<StartReq> = Vec::with_capacity(START_BATCH);
    while rx.recv_many(&mut batch, START_BATCH).await > 0 {
        let starts: Vec<(String, u32)> = batch.iter().map(|r| (r.id.clone(), r.attempt)).collect();
        let at = batch.iter().map(|r| r.at).max().unwrap_or_default();
        match store
            .start_attempts_fenced(partition, epoch, &starts, at)
            .await
        {
            Ok(results) => {
                for (req, res) in batch.drain(..).zip(results) {
                    if let Err(e) = &res
                        && is_fenced(e)
                    {
                        ours.store(false, Ordering::Relaxed);
                    }
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!(partition, epoch, "claims of the partition stopped");
}

#[async_trait]
impl Fence for EpochFence {
    async fn start(&self, task: &Task, attempt: u32, at: Millis) -> Result<(), StoreError> {
        let p = task.partition;
        let (epoch, ours, starts) = self.lookup(p)?;
        if !ours.load(Ordering::Relaxed) {
            return Err(StoreError::Conflict(format!(
                "{NOT_OURS} partition {p} was taken over (this node had epoch {epoch})"
            )));
        }
        let (reply, answer) = oneshot::channel();
        let req = StartReq {
            id: task.id.clone(),
            attempt,
            at,
            reply,
        };
        let released = || {
            StoreError::Conflict(format!(
                "{NOT_OURS} partition {p} was released while the start waited"
            ))
        };
        starts.send(req).await.map_err(|_| released())?;
        answer.await.map_err(|_| released())?.map(|_| ())
    }

    async fn finish(
        &self,
        task: &Task,
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    ) -> Result<Task, StoreError> {
        let p = task.partition;
        let (epoch, ours, _) = self.lookup(p)?;
        let r = self
            .store
            .finish_attempt_fenced(&task.id, attempt, transition, at, epoch)
            .await;
        if let Err(e) = &r
            && is_fenced(e)
        {
            ours.store(false, Ordering::Relaxed);
        }
        r
    }

    fn is_fenced(&self, e: &StoreError) -> bool {
        is_fenced(e) || matches!(e, StoreError::Conflict(m) if m.starts_with(NOT_OURS))
    }
}
