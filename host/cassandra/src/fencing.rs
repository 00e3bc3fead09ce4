//! Partition fencing on Cassandra: `partition_owners` rows changed only by LWT, and the fenced
//! attempt operations (see [`kairos_core::fencing`] for the protocol).
//!
//! Cost per task on the fenced path: the claim is the same compare-and-set LWT every state
//! change already uses (no extra write), plus one linearizable read of `partition_owners` per
//! *batch* of claims ([`CassandraStore::start_attempts_fenced`]); the finish is the usual
//! compare-and-set with one more condition checked on the row it read. So fencing adds
//! ~1/batch reads to the unfenced cost, and every start and finish is a Paxos round.

use std::time::Duration;

use futures::future::join_all;
use kairos_core::fencing::PartitionFencing;
use kairos_core::model::{Attempt, Task, Transition};
use kairos_core::store::{StoreError, StoreResult};
use rand::Rng;

use crate::error::{Decode, Exec};
use crate::transitions::FENCED;
use crate::{CassandraStore, Lwt};

const MAX_ACQUIRE_TRIES: u32 = 64;

/// Whether an error says the caller's epoch is stale (the partition or the task belongs to a
/// newer owner). The caller must stop working on that partition.
pub fn is_fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict(m) if m.starts_with(FENCED))
}

fn stale(partition: u32, mine: u64, current: Option<(u64, String)>) -> StoreError {
    let holder = current
        .map(|(e, n)| format!("epoch {e} ({n})"))
        .unwrap_or_else(|| "nobody".into());
    StoreError::Conflict(format!(
        "{FENCED} partition {partition} is held by {holder}, this node has epoch {mine}"
    ))
}

impl CassandraStore {
    /// Claims attempts of tasks of `partition` under `epoch` (concurrently), then checks once
    /// that `epoch` is still the partition's current one. Per input, in order: the running task,
    /// or the reason it must not run (`Conflict`: finished, or fenced — see [`is_fenced`]).
    /// The outer error is for the whole batch (store unavailable).
    pub async fn start_attempts_fenced(
        &self,
        partition: u32,
        epoch: u64,
        starts: &[(String, u32)],
        at: i64,
    ) -> StoreResult<Vec<StoreResult<Task>>> {
        // Concurrently, `concurrency` at a time. (A `Vec` of futures rather than a mapped
        // stream: the compiler can prove this future `Send`, so callers may `tokio::spawn` it.)
        let mut claimed: Vec<StoreResult<Task>> = Vec::with_capacity(starts.len());
        for chunk in starts.chunks(self.opts.concurrency.max(1)) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|(id, attempt)| self.start_impl(id, *attempt, at, Some(epoch)))
                .collect();
            claimed.extend(join_all(futs).await);
        }
        if claimed.iter().any(|r| r.is_ok()) {
            let current = self.current(partition).await?;
            if current.as_ref().map(|(e, _)| *e) != Some(epoch) {
                // Lost the partition meanwhile: the new owner's claim overrides ours.
                return Ok(claimed
                    .into_iter()
                    .map(|r| r.and_then(|_| Err(stale(partition, epoch, current.clone()))))
                    .collect());
            }
        }
        Ok(claimed)
    }

    /// [`start_attempts_fenced`](Self::start_attempts_fenced) for one task.
    pub async fn start_attempt_fenced(
        &self,
        id: &str,
        attempt: u32,
        at: i64,
        partition: u32,
        epoch: u64,
    ) -> StoreResult<Task> {
        let mut out = self
            .start_attempts_fenced(partition, epoch, &[(id.to_owned(), attempt)], at)
            .await?;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Other("no outcome".into())))
    }

    /// Finishes an attempt that this node started under `epoch`: fails with a fenced
    /// `Conflict` if another epoch claimed the task since, or `Conflict` if it is not running.
    pub async fn finish_attempt_fenced(
        &self,
        id: &str,
        attempt: Attempt,
        transition: Transition,
        at: i64,
        epoch: u64,
    ) -> StoreResult<Task> {
        self.finish_impl(id, &attempt, &transition, at, Some(epoch))
            .await
    }
}

#[async_trait::async_trait]
impl PartitionFencing for CassandraStore {
    async fn acquire(&self, partition: u32, node_id: &str) -> StoreResult<u64> {
        let p = i64::from(partition);
        for _ in 0..MAX_ACQUIRE_TRIES {
            let now = kairos_core::clock::system_now();
            let (res, epoch) = match self.current(partition).await? {
                None => (
                    self.session
                        .execute_unpaged(&self.st.owner_insert, (p, node_id, now))
                        .await
                        .exec()?,
                    1u64,
                ),
                Some((e, _)) => {
                    let next = e + 1;
                    let next_db = i64::try_from(next)
                        .map_err(|_| StoreError::Corrupt(format!("epoch {e} overflows")))?;
                    (
                        self.session
                            .execute_unpaged(
                                &self.st.owner_cas,
                                (next_db, node_id, now, p, next_db - 1),
                            )
                            .await
                            .exec()?,
                        next,
                    )
                }
            };
            if Lwt::parse(res)?.applied {
                // Tasks this node enqueues from now on sort after the previous owner's.
                self.reset_seq_block().await;
                return Ok(epoch);
            }
            let jitter = rand::thread_rng().gen_range(1..20);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(StoreError::Unavailable(format!(
            "partition {partition}: ownership contended, gave up"
        )))
    }

    async fn current(&self, partition: u32) -> StoreResult<Option<(u64, String)>> {
        let res = self
            .session
            .execute_unpaged(&self.st.owner_get, (i64::from(partition),))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(i64, String)>()
            .decode()?;
        match row {
            None => Ok(None),
            Some((e, node)) => {
                let e = u64::try_from(e).map_err(|_| {
                    StoreError::Corrupt(format!("partition {partition}: epoch {e}"))
                })?;
                Ok(Some((e, node)))
            }
        }
    }
}
