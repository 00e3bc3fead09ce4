//! Changes of many tasks at once: the scheduler's starts and finishes, which the lease's
//! batcher ([`crate::fencing`]) gathers.
//!
//! Each change is the same compare-and-set as [`CassandraStore::cas`] (expected `rev` and
//! `seq`, the new state computed by the same rules), but the changes whose rows share a home
//! (see [`crate::schema`]) are sent as one conditional batch: one Paxos round for up to
//! [`MAX_ROWS`] tasks. The batches of one home go one after another (concurrent Paxos rounds
//! on one partition would contend); different homes go concurrently.
//!
//! A batch applies all of its changes or none. When it does not apply (some task changed
//! since its row was read), its tasks are read afresh and go again in the next round, so a
//! refusal is only ever judged on a task's own row as read then, exactly as without
//! batching. A task named twice in one call goes in a later round than its first change.

use std::collections::{BTreeMap, HashSet};

use futures::future::join_all;
use futures::{StreamExt, stream};
use kairos_core::model::{Attempt, Millis, Task, TaskState, Transition};
use kairos_core::ownership::Lease;
use kairos_core::store::{StoreError, StoreResult};
use scylla::statement::batch::{Batch, BatchType};

use crate::error::Exec;
use crate::rows::{AttemptCell, Stored, TaskCas, attempt_cell, outcome_str};
use crate::{CassandraStore, Lwt};

/// Most changes in one conditional batch.
pub const MAX_ROWS: usize = 128;
/// Most bytes of changed text (errors, outputs) in one conditional batch; a Cassandra
/// mutation must stay well under its `max_mutation_size` (half the commit log segment).
const MAX_BYTES: usize = 1 << 20;
/// Rounds before the changes still refused by concurrent writers give up.
const MAX_ROUNDS: u32 = 32;

/// One change the batcher gathered.
pub(crate) enum Change {
    /// Start attempt `attempt` (the lease is confirmed afterwards).
    Start { attempt: u32, at: Millis },
    /// Finish `attempt` with `transition`, recording the attempt in the same compare-and-set.
    Finish {
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    },
    /// Give back the start of `attempt`, which never ran: the task returns to `back_to`.
    Unclaim {
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    },
}

/// A change computed from an expected row, waiting for its compare-and-set.
struct Planned {
    i: usize,
    old: Stored,
    new: Task,
    epoch: u64,
    /// The `attempt_log` entry the change writes (a finish's attempt, without its logs).
    attempt: Option<(i64, AttemptCell)>,
}

/// Runs `f` on every item, at most `conc` at a time; the answers in order. (Chunks of
/// joined futures rather than a mapped stream: the compiler can prove these futures `Send`,
/// so they can run in the spawned batcher.)
pub(crate) async fn each_bounded<'a, T, F, Fut>(
    items: &'a [T],
    conc: usize,
    mut f: F,
) -> Vec<Fut::Output>
where
    F: FnMut(&'a T) -> Fut,
    Fut: std::future::Future,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(conc.max(1)) {
        out.extend(join_all(chunk.iter().map(&mut f)).await);
    }
    out
}

/// Splits `items` into batches of at most [`MAX_ROWS`] items and `max_bytes` by `size` (a
/// batch holds at least one item), in order.
pub(crate) fn bounded_batches<T>(
    items: impl IntoIterator<Item = T>,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batches: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        let full = batches
            .last()
            .is_none_or(|b| b.len() == MAX_ROWS || bytes + n > max_bytes);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(b) = batches.last_mut() {
            b.push(item);
        }
    }
    batches
}

fn text_bytes(p: &Planned) -> usize {
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let t = &p.new;
    256 + t.id.len()
        + len(&t.last_error)
        + len(&t.output)
        + p.attempt
            .as_ref()
            .map_or(0, |(_, cell)| 128 + len(&cell.3) + len(&cell.4))
}

impl CassandraStore {
    /// Applies `f(i, old)` (old → new task and the owner epoch to store) to task `ids[i]`,
    /// for every `i`, by compare-and-set, recording `attempts[i]` (if any) in the same
    /// compare-and-set; one answer per id, in order.
    pub(crate) async fn cas_many<F>(
        &self,
        ids: &[&str],
        attempts: &[Option<&Attempt>],
        f: F,
    ) -> Vec<StoreResult<(Stored, Task)>>
    where
        F: Fn(usize, &Stored) -> StoreResult<(Task, u64)> + Sync,
    {
        let n = ids.len();
        let conc = self.opts.concurrency.max(1);
        let mut answers: Vec<Option<StoreResult<(Stored, Task)>>> = (0..n).map(|_| None).collect();
        // The expected row of each change, and whether it was remembered (not read now).
        let mut rows: Vec<Option<(Stored, bool)>> = ids
            .iter()
            .map(|id| self.rows.take(id).map(|r| (r, true)))
            .collect();
        for _ in 0..MAX_ROUNDS {
            let mut named = HashSet::new();
            let round: Vec<usize> = (0..n)
                .filter(|&i| answers[i].is_none() && named.insert(ids[i]))
                .collect();
            if round.is_empty() {
                break;
            }
            // Rows not in hand are read now.
            let unread: Vec<usize> = round
                .iter()
                .copied()
                .filter(|&i| rows[i].is_none())
                .collect();
            let read = each_bounded(&unread, conc, |&i| self.load(ids[i])).await;
            for (&i, r) in unread.iter().zip(read) {
                match r {
                    Ok(Some(row)) => rows[i] = Some((row, false)),
                    Ok(None) => answers[i] = Some(Err(StoreError::NotFound(ids[i].to_owned()))),
                    Err(e) => answers[i] = Some(Err(e)),
                }
            }
            let mut planned: Vec<Planned> = Vec::new();
            for &i in &round {
                let Some((old, remembered)) = rows[i].take() else {
                    continue;
                };
                match f(i, &old) {
                    Ok((new, epoch)) => planned.push(Planned {
                        i,
                        old,
                        new,
                        epoch,
                        attempt: attempts.get(i).copied().flatten().map(attempt_cell),
                    }),
                    // A refusal is only ever judged on a row read now: read it next round.
                    Err(_) if remembered => {}
                    Err(e) => answers[i] = Some(Err(e)),
                }
            }
            // The index rows the new states need, before their compare-and-sets.
            let indexed = each_bounded(&planned, conc, |p| self.before_cas(&p.old, &p.new)).await;
            let mut homes: BTreeMap<(u32, i64), Vec<Planned>> = BTreeMap::new();
            for (p, r) in planned.into_iter().zip(indexed) {
                match r {
                    Ok(()) => homes
                        .entry((p.old.task.partition, p.old.home))
                        .or_default()
                        .push(p),
                    Err(e) => answers[p.i] = Some(Err(e)),
                }
            }
            // Per home, batches of at most MAX_ROWS and MAX_BYTES, one after another.
            let outcomes: Vec<Vec<(Vec<Planned>, StoreResult<bool>)>> = stream::iter(
                homes
                    .into_values()
                    .map(|home| bounded_batches(home, MAX_BYTES, text_bytes)),
            )
            .map(|batches| async move {
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    let applied = self.cas_batch(&b).await;
                    out.push((b, applied));
                }
                out
            })
            .buffer_unordered(conc)
            .collect()
            .await;
            let mut applied: Vec<Planned> = Vec::new();
            for (batch, outcome) in outcomes.into_iter().flatten() {
                match outcome {
                    Ok(true) => applied.extend(batch),
                    // Some task of the batch changed since it was read: all are read again.
                    Ok(false) => {}
                    Err(e) => {
                        // The batch may have applied (a timeout): all or none of it.
                        let e = match e {
                            StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                                "{m} (a batch of {} task changes; whether it applied is unknown)",
                                batch.len()
                            )),
                            e => e,
                        };
                        for p in batch {
                            answers[p.i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
            let changes: Vec<(&Stored, &Task, u64)> =
                applied.iter().map(|p| (&p.old, &p.new, p.epoch)).collect();
            self.after_cas_many(&changes).await;
            for p in applied {
                answers[p.i] = Some(Ok((p.old, p.new)));
            }
        }
        answers
            .into_iter()
            .zip(ids)
            .map(|(a, id)| {
                a.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(format!(
                        "task {id}: too many concurrent changes"
                    )))
                })
            })
            .collect()
    }

    /// One compare-and-set of rows that share a home: a conditional batch (a plain LWT for
    /// one row). Whether it applied.
    async fn cas_batch(&self, changes: &[Planned]) -> StoreResult<bool> {
        let values = changes
            .iter()
            .map(|p| TaskCas::new(&p.old, &p.new, p.epoch, p.attempt.clone()))
            .collect::<StoreResult<Vec<_>>>()?;
        self.count_task_lwt();
        let res = if let [one] = values.as_slice() {
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

    /// Writes a finished attempt, logs included, to the `attempts` table.
    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.st.attempt_insert,
                (
                    id,
                    i64::from(attempt.number),
                    attempt.started_at,
                    attempt.ended_at,
                    outcome_str(attempt.outcome),
                    &attempt.error,
                    &attempt.plugin_digest,
                    &attempt.logs,
                ),
            )
            .await
            .exec()?;
        Ok(())
    }

    /// Applies the starts, finishes and given-back starts of one batch under `lease`; one
    /// answer per change, in order. Starts are confirmed against the partition's owner
    /// afterwards (a start a newer lease overrides is answered `Fenced`); finishes record
    /// their attempts in their rows; give-backs are made only after the lease is confirmed.
    pub(crate) async fn change_many(
        &self,
        lease: &Lease,
        ids: &[&str],
        changes: &[Change],
    ) -> Vec<StoreResult<Task>> {
        if let Err(e) = self.leases.check_not_superseded(lease) {
            return changes.iter().map(|_| Err(e.clone())).collect();
        }
        // A give-back is only made while the lease is current (read linearizably first): a
        // next owner that took the partition already may have loaded the task as running.
        // (One read per batch; give-backs come only from a partition being released.)
        let unclaims_fenced = if changes.iter().any(|c| matches!(c, Change::Unclaim { .. })) {
            self.confirm_lease(lease).await.err()
        } else {
            None
        };
        // A finish records its attempt in the row, by the same compare-and-set.
        let attempts: Vec<Option<&Attempt>> = changes
            .iter()
            .map(|c| match c {
                Change::Finish { attempt, .. } => Some(attempt),
                Change::Start { .. } | Change::Unclaim { .. } => None,
            })
            .collect();
        let changed = self
            .cas_many(ids, &attempts, |i, old| match &changes[i] {
                Change::Start { attempt, at } => self.start_change(lease, old, *attempt, *at),
                Change::Finish {
                    attempt,
                    transition,
                    at,
                } => self.finish_change(lease, old, attempt.number, transition, *at),
                Change::Unclaim {
                    attempt,
                    back_to,
                    at,
                } => match &unclaims_fenced {
                    Some(e) => Err(e.clone()),
                    None => self.unclaim_change(lease, old, *attempt, *back_to, *at),
                },
            })
            .await;
        let mut out: Vec<StoreResult<Task>> =
            changed.into_iter().map(|r| r.map(|(_, new)| new)).collect();
        // The logs of the finished attempts that have some, in the `attempts` table. The
        // finish stands if this fails: its record is in the row, only the lines are lost.
        let logged: Vec<(usize, &Attempt)> = out
            .iter()
            .zip(&attempts)
            .enumerate()
            .filter_map(|(i, (r, a))| match (r, a) {
                (Ok(_), Some(a)) if a.logs.as_ref().is_some_and(|l| !l.is_empty()) => Some((i, *a)),
                _ => None,
            })
            .collect();
        let written = each_bounded(&logged, self.opts.concurrency, |&(i, a)| {
            self.record_attempt(ids[i], a)
        })
        .await;
        for (&(i, a), r) in logged.iter().zip(written) {
            if let Err(e) = r {
                tracing::warn!(task = %ids[i], attempt = a.number, error = %e, "the log lines of a finished attempt were not recorded");
            }
        }
        let started = out
            .iter()
            .zip(changes)
            .any(|(r, c)| r.is_ok() && matches!(c, Change::Start { .. }));
        if started {
            let fenced = match self.read_owner(lease.partition).await {
                Ok(holder) => {
                    let current = holder.map(|h| h.epoch);
                    // Lost the partition meanwhile: the new holder's claim overrides ours.
                    (current != Some(lease.epoch)).then(|| StoreError::fenced(lease, current))
                }
                Err(e) => Some(e),
            };
            if let Some(e) = fenced {
                for (r, c) in out.iter_mut().zip(changes) {
                    if r.is_ok() && matches!(c, Change::Start { .. }) {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        out
    }
}
