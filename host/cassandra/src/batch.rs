//! Changes of many tasks at once: the scheduler's starts and finishes, which the claim batcher
//! ([`crate::fencing`]) gathers per lease.
//!
//! Each change is the same compare-and-set as [`CassandraStore::cas`] (expected `rev` and
//! `seq`, the new state computed by the same rules), but the changes whose rows share a home
//! (see [`crate::schema`]) are sent as one conditional batch: one Paxos round for up to
//! [`MAX_ROWS`] tasks. A batch applies all of its changes or none; when it does not apply
//! (some task changed since its row was read), each of its tasks goes the one-task way
//! (read, check, compare-and-set), so a conflict is judged on that task's own row, exactly as
//! without batching.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use futures::{StreamExt, stream};
use kairos_core::model::{Attempt, Millis, Task, Transition};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, StoreResult};
use scylla::statement::batch::{Batch, BatchType};

use crate::error::Exec;
use crate::rows::{Stored, TaskCas};
use crate::{CassandraStore, Lwt};

/// Most changes in one conditional batch.
pub const MAX_ROWS: usize = 128;
/// Most bytes of changed text (errors, outputs) in one conditional batch; a Cassandra
/// mutation must stay well under its `max_mutation_size` (half the commit log segment).
const MAX_BYTES: usize = 1 << 20;

/// Where one change of a batch stands.
enum Slot {
    Done(StoreResult<(Stored, Task)>),
    /// Computed from `old`, waiting for its compare-and-set.
    Planned {
        old: Stored,
        new: Task,
        epoch: u64,
    },
    /// To be done the one-task way (its row came from the cache and is refused or stale).
    Alone,
}

/// One finish of a batch: the task, its attempt and what follows it.
pub(crate) struct Finish {
    pub id: String,
    pub attempt: Attempt,
    pub transition: Transition,
    pub at: Millis,
}

fn text_bytes(t: &Task) -> usize {
    256 + t.id.len()
        + t.last_error.as_ref().map_or(0, String::len)
        + t.output.as_ref().map_or(0, String::len)
}

impl CassandraStore {
    /// Applies `f(i, old)` (old → new task and the owner epoch to store) to task `ids[i]`,
    /// for every `i`, by compare-and-set; one answer per id, in order.
    pub(crate) async fn cas_many<F>(&self, ids: &[&str], f: F) -> Vec<StoreResult<(Stored, Task)>>
    where
        F: Fn(usize, &Stored) -> StoreResult<(Task, u64)> + Sync,
    {
        let conc = self.opts.concurrency.max(1);
        // The expected rows: remembered, else read.
        let cached: Vec<Option<Stored>> = ids.iter().map(|id| self.rows.take(id)).collect();
        let misses: Vec<usize> = (0..ids.len()).filter(|&i| cached[i].is_none()).collect();
        let mut loaded: HashMap<usize, StoreResult<Option<Stored>>> = HashMap::new();
        for chunk in misses.chunks(conc) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|&i| async move { (i, self.load(ids[i]).await) })
                .collect();
            loaded.extend(join_all(futs).await);
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(ids.len());
        for (i, row) in cached.into_iter().enumerate() {
            let slot = match row {
                Some(old) => match f(i, &old) {
                    Ok((new, epoch)) => Slot::Planned { old, new, epoch },
                    // A refusal is only ever judged on a row read now.
                    Err(_) => Slot::Alone,
                },
                None => match loaded.remove(&i) {
                    Some(Ok(Some(old))) => match f(i, &old) {
                        Ok((new, epoch)) => Slot::Planned { old, new, epoch },
                        Err(e) => Slot::Done(Err(e)),
                    },
                    Some(Ok(None)) => Slot::Done(Err(StoreError::NotFound(ids[i].to_owned()))),
                    Some(Err(e)) => Slot::Done(Err(e)),
                    None => Slot::Done(Err(StoreError::Other("batch lost a read".into()))),
                },
            };
            slots.push(slot);
        }
        // The index rows the new states need, before their compare-and-sets.
        let planned: Vec<usize> = (0..slots.len())
            .filter(|&i| matches!(slots[i], Slot::Planned { .. }))
            .collect();
        for chunk in planned.chunks(conc) {
            let futs: Vec<_> = chunk
                .iter()
                .filter_map(|&i| match &slots[i] {
                    Slot::Planned { old, new, .. } => {
                        Some(async move { (i, self.before_cas(old, new).await) })
                    }
                    _ => None,
                })
                .collect();
            for (i, r) in join_all(futs).await {
                if let Err(e) = r {
                    slots[i] = Slot::Done(Err(e));
                }
            }
        }
        // One conditional batch per home, at most MAX_ROWS and MAX_BYTES each.
        // A task named twice goes alone the second time (after the batch that has the first).
        let mut by_home: HashMap<(u32, i64), Vec<usize>> = HashMap::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for i in 0..slots.len() {
            let Slot::Planned { old, .. } = &slots[i] else {
                continue;
            };
            if !seen.insert(ids[i]) {
                slots[i] = Slot::Alone;
                continue;
            }
            by_home
                .entry((old.task.partition, old.home))
                .or_default()
                .push(i);
        }
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for (_, members) in by_home {
            let mut current: Vec<usize> = Vec::new();
            let mut bytes = 0;
            for i in members {
                let size = match &slots[i] {
                    Slot::Planned { new, .. } => text_bytes(new),
                    _ => 0,
                };
                if !current.is_empty() && (current.len() == MAX_ROWS || bytes + size > MAX_BYTES) {
                    batches.push(std::mem::take(&mut current));
                    bytes = 0;
                }
                bytes += size;
                current.push(i);
            }
            if !current.is_empty() {
                batches.push(current);
            }
        }
        let outcomes: Vec<(Vec<usize>, StoreResult<bool>)> = {
            let slots = &slots;
            stream::iter(batches)
                .map(|members| async move {
                    let changes: Vec<(&Stored, &Task, u64)> = members
                        .iter()
                        .filter_map(|&i| match &slots[i] {
                            Slot::Planned { old, new, epoch } => Some((old, new, *epoch)),
                            _ => None,
                        })
                        .collect();
                    let applied = self.cas_batch(&changes).await;
                    (members, applied)
                })
                .buffer_unordered(conc)
                .collect()
                .await
        };
        let mut done: Vec<usize> = Vec::new();
        for (members, applied) in outcomes {
            match applied {
                Ok(true) => done.extend(members),
                // Some task of the batch changed since it was read: each goes alone.
                Ok(false) => members.into_iter().for_each(|i| slots[i] = Slot::Alone),
                Err(e) => members
                    .into_iter()
                    .for_each(|i| slots[i] = Slot::Done(Err(e.clone()))),
            }
        }
        {
            let applied: Vec<(&Stored, &Task, u64)> = done
                .iter()
                .filter_map(|&i| match &slots[i] {
                    Slot::Planned { old, new, epoch } => Some((old, new, *epoch)),
                    _ => None,
                })
                .collect();
            self.after_cas_many(&applied).await;
        }
        for i in done {
            if let Slot::Planned { old, new, .. } = std::mem::replace(&mut slots[i], Slot::Alone) {
                slots[i] = Slot::Done(Ok((old, new)));
            }
        }
        // The rest, one task at a time (reading each row afresh).
        let alone: Vec<usize> = (0..slots.len())
            .filter(|&i| matches!(slots[i], Slot::Alone))
            .collect();
        for chunk in alone.chunks(conc) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let f = &f;
                    async move { (i, self.cas(ids[i], |old| f(i, old)).await) }
                })
                .collect();
            for (i, r) in join_all(futs).await {
                slots[i] = Slot::Done(r);
            }
        }
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(r) => r,
                _ => Err(StoreError::Other("batch left a change undone".into())),
            })
            .collect()
    }

    /// One compare-and-set of rows that share a home: a conditional batch (a plain LWT for
    /// one row). Whether it applied.
    async fn cas_batch(&self, changes: &[(&Stored, &Task, u64)]) -> StoreResult<bool> {
        let values = changes
            .iter()
            .map(|(old, new, epoch)| TaskCas::new(old, new, *epoch))
            .collect::<StoreResult<Vec<_>>>()?;
        self.count_task_lwt();
        let res = if values.len() == 1 {
            let one = values.into_iter().next();
            let Some(one) = one else {
                return Ok(true);
            };
            self.session
                .execute_unpaged(&self.st.task_cas, one)
                .await
                .exec()?
        } else {
            let mut batch = Batch::new(BatchType::Logged);
            for _ in 0..values.len() {
                batch.append_statement(self.st.task_cas.clone());
            }
            if let Some(c) = self.st.task_cas.get_consistency() {
                batch.set_consistency(c);
            }
            batch.set_serial_consistency(self.st.task_cas.get_serial_consistency());
            self.session.batch(&batch, values).await.exec()?
        };
        Ok(Lwt::parse(res)?.applied)
    }

    /// Starts `(id, attempt, at)` under `lease`; one answer per start, in order. The caller
    /// confirms the lease afterwards.
    pub(crate) async fn start_many(
        &self,
        lease: &Lease,
        starts: &[(String, u32, Millis)],
    ) -> Vec<StoreResult<Task>> {
        let ids: Vec<&str> = starts.iter().map(|(id, _, _)| id.as_str()).collect();
        self.cas_many(&ids, |i, old| {
            let (_, attempt, at) = &starts[i];
            self.start_change(lease, old, *attempt, *at)
        })
        .await
        .into_iter()
        .map(|r| r.map(|(_, new)| new))
        .collect()
    }

    /// Finishes under `lease`, then records their attempts; one answer per finish, in order.
    pub(crate) async fn finish_many(
        &self,
        lease: &Lease,
        finishes: &[Finish],
    ) -> Vec<StoreResult<Task>> {
        if let Err(e) = self.leases.check_not_superseded(lease) {
            return finishes.iter().map(|_| Err(e.clone())).collect();
        }
        let ids: Vec<&str> = finishes.iter().map(|f| f.id.as_str()).collect();
        let changed = self
            .cas_many(&ids, |i, old| {
                let f = &finishes[i];
                self.finish_change(lease, old, f.attempt.number, &f.transition, f.at)
            })
            .await;
        let mut out = Vec::with_capacity(finishes.len());
        let conc = self.opts.concurrency.max(1);
        let pairs: Vec<_> = changed.into_iter().zip(finishes).collect();
        let mut pairs = pairs.into_iter();
        loop {
            let chunk: Vec<_> = pairs.by_ref().take(conc).collect();
            if chunk.is_empty() {
                break;
            }
            let futs: Vec<_> = chunk
                .into_iter()
                .map(|(r, f)| async move {
                    let (_, new) = r?;
                    self.record_attempt(&f.id, &f.attempt).await?;
                    Ok(new)
                })
                .collect();
            out.extend(join_all(futs).await);
        }
        out
    }
}
