//! Partition leases on Cassandra (see [`kairos_core::ownership`] for the contract):
//! `partition_owners` rows changed only by LWT, and how every change of a task is fenced.
//!
//! Each task row carries `owner_epoch`, the epoch of the lease that last changed it. Cassandra
//! cannot make one LWT depend on two rows, so a lease is checked in two ways:
//! - **on the task row**, inside the compare-and-set every state change already is: a change
//!   under a lease older than the task's stamp is refused ([`StoreError::Fenced`]), and the
//!   change stamps the task with the lease's epoch. A finish must come from the very epoch
//!   that started the attempt.
//! - **against `partition_owners`**, with a linearizable read: a start is confirmed after its
//!   claim (one read per *batch* of claims, see below); a claim a newer lease overrides is
//!   answered `Fenced` and the caller does not run it. `cancel`, `retry_dead`, `reschedule`
//!   and `unpark_key` read the epoch before they change anything.
//!
//! The store also remembers the highest epoch it has seen per partition (from acquiring and
//! from reading `partition_owners`; a fact that never goes stale), and refuses every call
//! under an older lease at once, without touching the database.
//!
//! Cost per task: a start is the claim LWT plus 1/batch of a linearizable read; a finish is the
//! usual compare-and-set. Starts of one lease are batched by a claim batcher, a task of its
//! own: one batch in flight per partition and epoch, up to [`START_BATCH`] claims run
//! concurrently, then one read confirms the epoch for the whole batch. One reader per
//! partition at a time also keeps the Paxos rounds on the partition's ownership row from
//! contending with each other. A batcher ends when its lease is seen superseded and its
//! callers are gone, or after [`BATCHER_IDLE`] without claims.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kairos_core::model::{Millis, Task};
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{StoreError, StoreResult};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::batch::Change;
use crate::error::{Decode, Exec};
use crate::{CassandraStore, Lwt};

const MAX_ACQUIRE_TRIES: u32 = 64;

/// Most claims in one batch (the store runs its `concurrency` of them at once).
pub const START_BATCH: usize = 256;
/// Claims waiting for the next batch, per lease; senders wait when it is full.
const START_QUEUE: usize = 4_096;
/// A claim batcher without claims for this long ends (the next claim starts a new one).
pub const BATCHER_IDLE: Duration = Duration::from_secs(10);
/// Times a start looks for a live batcher (one may end between lookup and send).
const MAX_QUEUE_TRIES: u32 = 4;

/// What the store knows about leases, shared by its clones.
#[derive(Default)]
pub(crate) struct Leases {
    /// The highest epoch seen per partition (acquired here, or read from `partition_owners`).
    known: StdMutex<HashMap<u32, u64>>,
    /// The running claim batchers, per `(partition, epoch)`.
    batchers: StdMutex<BTreeMap<(u32, u64), Batcher>>,
    next_batcher: AtomicU64,
}

/// A running claim batcher.
struct Batcher {
    id: u64,
    tx: mpsc::Sender<Req>,
}

/// A start or a finish waiting for its lease's next batch.
struct Req {
    id: String,
    change: Change,
    reply: oneshot::Sender<StoreResult<Task>>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Leases {
    /// The highest epoch of `partition` this store has seen.
    pub(crate) fn known(&self, partition: u32) -> Option<u64> {
        lock(&self.known).get(&partition).copied()
    }

    /// Records that `epoch` is (or was) a current epoch of `partition`; batchers of older
    /// epochs are let go (they end once their last claims are answered).
    pub(crate) fn note(&self, partition: u32, epoch: u64) {
        {
            let mut known = lock(&self.known);
            let k = known.entry(partition).or_insert(0);
            if *k >= epoch {
                return;
            }
            *k = epoch;
        }
        let mut batchers = lock(&self.batchers);
        let stale: Vec<(u32, u64)> = batchers
            .range((partition, 0)..(partition, epoch))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            batchers.remove(&k);
        }
    }

    /// `Fenced` if this store has seen a newer epoch of the lease's partition.
    pub(crate) fn check_not_superseded(&self, lease: &Lease) -> StoreResult<()> {
        match self.known(lease.partition) {
            Some(k) if k > lease.epoch => Err(StoreError::fenced(lease, Some(k))),
            _ => Ok(()),
        }
    }

    /// The `Fenced` error for a task stamped with the newer epoch `stamp`.
    pub(crate) fn fenced_by_stamp(&self, lease: &Lease, stamp: u64) -> StoreError {
        let current = self.known(lease.partition).unwrap_or(0).max(stamp);
        StoreError::fenced(lease, Some(current))
    }

    /// Forgets batcher `id` of `lease` (if it is still the registered one).
    fn retire(&self, lease: &Lease, id: u64) {
        let mut batchers = lock(&self.batchers);
        let key = (lease.partition, lease.epoch);
        if batchers.get(&key).is_some_and(|b| b.id == id) {
            batchers.remove(&key);
        }
    }
}

impl CassandraStore {
    /// [`TaskStore::acquire_lease`](kairos_core::store::TaskStore::acquire_lease): the
    /// partition's next epoch, by LWT on `partition_owners`.
    pub(crate) async fn acquire_lease_impl(
        &self,
        partition: u32,
        node_id: &str,
    ) -> StoreResult<Lease> {
        let p = i64::from(partition);
        for _ in 0..MAX_ACQUIRE_TRIES {
            let now = kairos_core::clock::system_now();
            let (res, epoch) = match self.read_owner(partition).await? {
                None => (
                    self.session
                        .execute_unpaged(&self.st.owner_insert, (p, node_id, now))
                        .await
                        .exec()?,
                    1u64,
                ),
                Some(h) => {
                    let next = h.epoch + 1;
                    let next_db = i64::try_from(next)
                        .map_err(|_| StoreError::Corrupt(format!("epoch {} overflows", h.epoch)))?;
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
                self.leases.note(partition, epoch);
                // Tasks this node enqueues from now on sort after the previous holder's.
                self.reset_seq_block().await;
                return Ok(Lease { partition, epoch });
            }
            let jitter = rand::thread_rng().gen_range(1..20);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(StoreError::Unavailable(format!(
            "partition {partition}: ownership contended, gave up"
        )))
    }

    /// [`TaskStore::lease_holder`](kairos_core::store::TaskStore::lease_holder).
    pub(crate) async fn lease_holder_impl(&self, partition: u32) -> StoreResult<Option<Holder>> {
        self.read_owner(partition).await
    }

    /// How many claim batchers are registered (one per lease whose starts went through this
    /// store lately). For diagnostics and tests.
    pub fn claim_batchers(&self) -> usize {
        lock(&self.leases.batchers).len()
    }

    /// The partition's current holder, read linearizably (and remembered).
    pub(crate) async fn read_owner(&self, partition: u32) -> StoreResult<Option<Holder>> {
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
            Some((e, node_id)) => {
                let epoch = u64::try_from(e).map_err(|_| {
                    StoreError::Corrupt(format!("partition {partition}: epoch {e}"))
                })?;
                self.leases.note(partition, epoch);
                Ok(Some(Holder { epoch, node_id }))
            }
        }
    }

    /// `Fenced` unless `lease` is its partition's current lease (a linearizable read, unless
    /// the lease is already known to be superseded).
    pub(crate) async fn confirm_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.leases.check_not_superseded(lease)?;
        let current = self.read_owner(lease.partition).await?.map(|h| h.epoch);
        if current == Some(lease.epoch) {
            Ok(())
        } else {
            Err(StoreError::fenced(lease, current))
        }
    }

    /// [`TaskStore::start_attempt`](kairos_core::store::TaskStore::start_attempt): queued for
    /// the lease's claim batcher (started here if none runs).
    pub(crate) async fn start_attempt_impl(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.queue(lease, id, Change::Start { attempt, at }).await
    }

    /// [`TaskStore::finish_attempt`](kairos_core::store::TaskStore::finish_attempt): queued
    /// for the lease's batcher, like a start.
    pub(crate) async fn finish_attempt_impl(
        &self,
        lease: &Lease,
        id: &str,
        attempt: kairos_core::model::Attempt,
        transition: kairos_core::model::Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        let change = Change::Finish {
            attempt,
            transition,
            at,
        };
        self.queue(lease, id, change).await
    }

    /// [`TaskStore::unclaim_attempt`](kairos_core::store::TaskStore::unclaim_attempt):
    /// queued for the lease's batcher, like a finish.
    pub(crate) async fn unclaim_attempt_impl(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: kairos_core::model::TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        let change = Change::Unclaim {
            attempt,
            back_to,
            at,
        };
        self.queue(lease, id, change).await
    }

    /// Hands `change` (of task `id`) to the lease's batcher and waits for its answer.
    async fn queue(&self, lease: &Lease, id: &str, change: Change) -> StoreResult<Task> {
        self.leases.check_not_superseded(lease)?;
        let mut change = Some(change);
        for _ in 0..MAX_QUEUE_TRIES {
            let Some(this) = change.take() else { break };
            let tx = self.batcher(lease);
            let (reply, answer) = oneshot::channel();
            let req = Req {
                id: id.to_owned(),
                change: this,
                reply,
            };
            if let Err(mpsc::error::SendError(req)) = tx.send(req).await {
                // That batcher went idle between the lookup and the send: take a new one.
                change = Some(req.change);
                continue;
            }
            return answer.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "change of task {id} was dropped ({lease}); its outcome is unknown"
                )))
            });
        }
        Err(StoreError::Unavailable(format!(
            "changes of {lease} could not be queued"
        )))
    }

    /// The sender of the lease's running claim batcher; starts one if there is none.
    fn batcher(&self, lease: &Lease) -> mpsc::Sender<Req> {
        let key = (lease.partition, lease.epoch);
        let mut batchers = lock(&self.leases.batchers);
        if let Some(b) = batchers.get(&key)
            && !b.tx.is_closed()
        {
            return b.tx.clone();
        }
        let (tx, rx) = mpsc::channel(START_QUEUE);
        let id = self.leases.next_batcher.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run_batcher(self.clone(), *lease, id, rx));
        batchers.insert(key, Batcher { id, tx: tx.clone() });
        tx
    }

    /// Claims attempts of tasks of `partition` under lease `epoch` (as one batch), then checks
    /// once that `epoch` is still the partition's current one. Per input, in order: the
    /// running task, or why it must not run (`Fenced`, `Conflict`, `NotFound`, or the error
    /// that kept the claim from being confirmed). Bypasses the claim batcher.
    pub async fn start_attempts_fenced(
        &self,
        partition: u32,
        epoch: u64,
        starts: &[(String, u32)],
        at: Millis,
    ) -> StoreResult<Vec<StoreResult<Task>>> {
        let ids: Vec<&str> = starts.iter().map(|(id, _)| id.as_str()).collect();
        let changes: Vec<Change> = starts
            .iter()
            .map(|(_, attempt)| Change::Start {
                attempt: *attempt,
                at,
            })
            .collect();
        Ok(self
            .change_many(&Lease { partition, epoch }, &ids, &changes)
            .await)
    }

    /// Finishes `(id, attempt, transition)` of tasks of `partition` under lease `epoch`,
    /// as one batch (what the batcher does with the finishes it gathered). Per input, in
    /// order: the task after the finish, or why it was refused. Bypasses the batcher.
    pub async fn finish_attempts_fenced(
        &self,
        partition: u32,
        epoch: u64,
        finishes: Vec<(
            String,
            kairos_core::model::Attempt,
            kairos_core::model::Transition,
        )>,
        at: Millis,
    ) -> Vec<StoreResult<Task>> {
        let mut ids = Vec::with_capacity(finishes.len());
        let mut changes = Vec::with_capacity(finishes.len());
        for (id, attempt, transition) in finishes {
            ids.push(id);
            changes.push(Change::Finish {
                attempt,
                transition,
                at,
            });
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.change_many(&Lease { partition, epoch }, &ids, &changes)
            .await
    }

    /// Applies one batch and answers its callers.
    async fn serve(&self, lease: &Lease, batch: &mut Vec<Req>) {
        let mut ids = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for req in batch.drain(..) {
            ids.push(req.id);
            changes.push(req.change);
            replies.push(req.reply);
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let results = self.change_many(lease, &ids, &changes).await;
        // (Should the answers run short, the rest are dropped: "outcome unknown".)
        for (reply, res) in replies.into_iter().zip(results) {
            let _ = reply.send(res);
        }
    }
}

/// One lease's claims, a batch at a time, until the lease is let go and its callers are gone,
/// or it idles.
async fn run_batcher(store: CassandraStore, lease: Lease, id: u64, mut rx: mpsc::Receiver<Req>) {
    let mut batch: Vec<Req> = Vec::with_capacity(START_BATCH);
    loop {
        match tokio::time::timeout(BATCHER_IDLE, rx.recv_many(&mut batch, START_BATCH)).await {
            Ok(0) => break,
            Ok(_) => store.serve(&lease, &mut batch).await,
            Err(_) => {
                // Idle: unregister, refuse new sends (their senders look for a new batcher),
                // and answer whatever was queued meanwhile.
                store.leases.retire(&lease, id);
                rx.close();
                while rx.recv_many(&mut batch, START_BATCH).await > 0 {
                    store.serve(&lease, &mut batch).await;
                }
                break;
            }
        }
    }
    tracing::debug!(%lease, "claim batcher stopped");
}
