//! `enqueue`: dedup within the batch, one seq block reservation, then the tasks in three
//! steps, each for all of them at once (at most `concurrency` statements in flight):
//!
//! 1. the homes of all by id, in a few `IN` reads (a replayed enqueue is a duplicate): an id
//!    that names its home (the ids Kairos makes, see [`kairos_core::ids`]) is looked for in
//!    that home's row partition, any other in `task_homes`; then per task its uniqueness LWT
//!    if it has a key (a task whose key another task holds is answered with that task, looked
//!    up after the writes below);
//! 2. the homes (`task_homes`, only for ids that do not name theirs) and index rows
//!    (`pending` as one unlogged batch per pending partition, `tasks_by_key`; homes and
//!    by-key rows in unlogged batches of a few partitions that share a replica, see
//!    [`crate::spread`]), then the bucket directory, once per bucket;
//! 3. the task rows, one unlogged batch per home.
//!
//! Index rows go first so a pending task is never missing from the window; a crash in
//! between leaves an index row without a task, which readers skip.

use std::collections::HashMap;
use std::time::Duration;

use crate::batch::{bounded_batches, each_bounded};
use futures::{StreamExt, stream};
use kairos_core::ids::home_named;
use kairos_core::model::{EnqueueOutcome, NewTask, Task};
use kairos_core::store::{StoreError, StoreResult};
use scylla::value::CqlValue;

use crate::error::Exec;
use crate::rows::{Stored, TaskRow};
use crate::{CassandraStore, Lwt};

/// Where a task row lives: `(partition, home)`.
type Home = (i64, i64);

/// What is left to write for one task of an enqueue.
enum Prepared {
    /// Nothing: a duplicate.
    Done(EnqueueOutcome),
    /// Nothing: its uniqueness key is held by that task (answered once it is found).
    HeldBy(String),
    /// A replay of a pending task: its index rows again, then it is a duplicate.
    Reassert { task: Task, home: i64 },
    /// A new task: its home (`write_home`: unless an interrupted attempt wrote it), index
    /// rows and row.
    New {
        task: Task,
        home: i64,
        write_home: bool,
    },
}

/// New tasks due within this long of their enqueue are remembered (see `remember_new`).
const REMEMBER_DUE_WITHIN_MS: i64 = 60_000;

/// Most bytes of task rows (payloads mostly) in one unlogged batch.
const ROW_BATCH_BYTES: usize = 1 << 20;

/// How long a duplicate waits for the task that holds its uniqueness key to appear (the
/// winner writes the uniqueness row before the task row).
const OWNER_WAIT: Duration = Duration::from_millis(100);
const OWNER_WAIT_TRIES: u32 = 30;

impl CassandraStore {
    pub(crate) async fn enqueue_batch(
        &self,
        batch: Vec<NewTask>,
    ) -> StoreResult<Vec<EnqueueOutcome>> {
        let n = batch.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Within a batch the first task with an id, or with a uniqueness key, wins; a later
        // one is its duplicate.
        let mut dup_of: Vec<Option<usize>> = vec![None; n];
        {
            let mut by_id: HashMap<&str, usize> = HashMap::new();
            let mut by_ukey: HashMap<&str, usize> = HashMap::new();
            for (i, t) in batch.iter().enumerate() {
                let leader = match by_id.get(t.id.as_str()) {
                    Some(&j) => Some(j),
                    None => t
                        .uniqueness_key
                        .as_deref()
                        .and_then(|u| by_ukey.get(u).copied()),
                };
                dup_of[i] = leader;
                let me = leader.unwrap_or(i);
                by_id.entry(t.id.as_str()).or_insert(me);
                if let Some(u) = &t.uniqueness_key {
                    by_ukey.entry(u.as_str()).or_insert(me);
                }
            }
        }
        // An id that names its home must name one in the task's own partition (ids Kairos makes
        // do); any other is refused, so every task whose id names a home has its row there.
        let mut results: Vec<(usize, StoreResult<EnqueueOutcome>)> = Vec::with_capacity(n);
        let mut refused = vec![false; n];
        for (i, t) in batch.iter().enumerate() {
            if let Some((p, _)) = home_named(&t.id)
                && p != t.partition
                && dup_of[i].is_none()
            {
                refused[i] = true;
                results.push((
                    i,
                    Err(StoreError::Conflict(format!(
                        "task id {} names partition {p}, but key {:?} is in partition {}: ids of this form are made by Kairos; give another id",
                        t.id, t.key, t.partition
                    ))),
                ));
            }
        }
        let leaders = (0..n)
            .filter(|&i| dup_of[i].is_none() && !refused[i])
            .count() as u64;
        let mut seq = self.alloc_seqs(leaders).await?;
        let mut jobs = Vec::with_capacity(n);
        for (i, t) in batch.into_iter().enumerate() {
            if dup_of[i].is_none() && !refused[i] {
                jobs.push((i, t, seq));
                seq += 1;
            }
        }
        // Where earlier attempts of these tasks put them (a replay), for all at once.
        let ids: Vec<&str> = jobs.iter().map(|(_, t, _)| t.id.as_str()).collect();
        let mut homes = self.homes_of(&ids).await?;
        let jobs: Vec<(usize, NewTask, u64, Option<Home>)> = jobs
            .into_iter()
            .map(|(i, t, seq)| {
                let known = homes.remove(&t.id);
                (i, t, seq, known)
            })
            .collect();
        // Per task: its uniqueness claim and replay check.
        let prepared: Vec<(usize, StoreResult<Prepared>)> = stream::iter(jobs)
            .map(|(i, t, seq, known)| async move { (i, self.prepare_one(t, seq, known).await) })
            .buffer_unordered(self.opts.concurrency)
            .collect()
            .await;
        let mut to_index: Vec<(usize, Task, i64, Option<bool>)> = Vec::new();
        let mut owned_elsewhere: Vec<(usize, String)> = Vec::new();
        for (i, r) in prepared {
            match r {
                Ok(Prepared::Done(o)) => results.push((i, Ok(o))),
                Ok(Prepared::HeldBy(owner)) => owned_elsewhere.push((i, owner)),
                Ok(Prepared::Reassert { task, home }) => to_index.push((i, task, home, None)),
                Ok(Prepared::New {
                    task,
                    home,
                    write_home,
                }) => to_index.push((i, task, home, Some(write_home))),
                Err(e) => results.push((i, Err(e))),
            }
        }
        // Then, for all that prepared (whatever happened to the others, so that no claimed
        // uniqueness key is left without its task): homes and index rows, then task rows.
        self.write_new(&to_index).await?;
        for (i, task, _, new) in to_index {
            results.push((
                i,
                Ok(match new {
                    Some(_) => EnqueueOutcome::Created(task),
                    None => EnqueueOutcome::Duplicate(task),
                }),
            ));
        }
        // Last, the tasks whose uniqueness key another task holds: that one may be on its way
        // in (possibly from another batch waiting for ours).
        let waited: Vec<(usize, StoreResult<EnqueueOutcome>)> = stream::iter(owned_elsewhere)
            .map(|(i, owner)| async move {
                let r = self.await_task(&owner).await;
                (i, r.map(EnqueueOutcome::Duplicate))
            })
            .buffer_unordered(self.opts.concurrency)
            .collect()
            .await;
        results.extend(waited);
        // The first error (in input order) fails the call; tasks written stay (a retry of the
        // batch sees them as duplicates of themselves).
        results.sort_by_key(|(i, _)| *i);
        let mut out: Vec<Option<EnqueueOutcome>> = vec![None; n];
        for (i, r) in results {
            // The first error fails the call; tasks already written stay (a retry of the
            // batch sees them as duplicates of themselves).
            out[i] = Some(r?);
        }
        for i in 0..n {
            if let Some(j) = dup_of[i] {
                let winner = out[j]
                    .as_ref()
                    .map(|o| o.task().clone())
                    .ok_or_else(|| StoreError::Other("enqueue lost an outcome".into()))?;
                out[i] = Some(EnqueueOutcome::Duplicate(winner));
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Other("enqueue lost an outcome".into())))
            .collect()
    }

    /// The uniqueness claim and replay check of one new task, whose home an earlier attempt
    /// recorded as `known` (if any): what is left to write for it.
    async fn prepare_one(
        &self,
        new: NewTask,
        seq: u64,
        mut known: Option<Home>,
    ) -> StoreResult<Prepared> {
        if let Some(ukey) = &new.uniqueness_key {
            let res = self
                .session
                .execute_unpaged(&self.st.ukey_claim, (ukey, &new.id))
                .await
                .exec()?;
            let lwt = Lwt::parse(res)?;
            if !lwt.applied {
                let owner = match lwt.get("task_id") {
                    Some(CqlValue::Text(s)) => s.clone(),
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "uniqueness key {ukey:?} has no task id"
                        )));
                    }
                };
                if owner != new.id {
                    return Ok(Prepared::HeldBy(owner));
                }
                // Our own claim: from an earlier, interrupted attempt, or from a replay of
                // this task on another node that may have written it since `known` was read.
                if known.is_none() {
                    known = self.home_of(&new.id).await?;
                }
            }
        }
        // A replayed enqueue finds the home its first attempt recorded (in whichever
        // partition that was).
        let partition = i64::from(new.partition);
        if let Some((p, home)) = known
            && let Some(existing) = self.load_at(p, home, &new.id).await?
        {
            // A replay. Re-assert the index rows of a pending task (cheap, idempotent) in case
            // the first attempt died between the task row and its index rows.
            return Ok(if existing.task.is_pending() {
                Prepared::Reassert {
                    task: existing.task,
                    home,
                }
            } else {
                Prepared::Done(EnqueueOutcome::Duplicate(existing.task))
            });
        }
        // A home without a row: the first attempt died before the row. It is reused if it is in
        // this partition, else replaced. An id that names its home (in this partition: others
        // were refused) has its row there, and no `task_homes` row.
        let known = known.filter(|(p, _)| *p == partition);
        let named = home_named(&new.id).map(|(_, home)| home);
        Ok(Prepared::New {
            home: named
                .or(known.map(|(_, home)| home))
                .unwrap_or_else(|| self.bucket_of(new.due_at)),
            write_home: named.is_none() && known.is_none(),
            task: Task::from_new(new, seq),
        })
    }

    /// Writes what `prepare_one` left: `(_, task, home, new)`, where `new` is `None` for a
    /// replay whose index rows are re-asserted, else whether the home is to be written. The
    /// homes and index rows go first, then the rows: once a row is there, it is found by id
    /// and by the window. Rows that share a home go as one unlogged batch (one mutation).
    async fn write_new(&self, items: &[(usize, Task, i64, Option<bool>)]) -> StoreResult<()> {
        let conc = self.opts.concurrency;
        let homes: Vec<&(usize, Task, i64, Option<bool>)> =
            items.iter().filter(|it| it.3 == Some(true)).collect();
        let located = self.write_spread(
            &self.st.home_insert,
            "task_homes",
            homes
                .iter()
                .map(|(_, t, home, _)| {
                    let row = (&t.id, i64::from(t.partition), *home);
                    (t.id.as_str(), 32 + t.id.len(), row)
                })
                .collect(),
        );
        let indexed: Vec<(&Task, i64)> = items.iter().map(|(_, t, home, _)| (t, *home)).collect();
        let (located, indexed) = tokio::join!(located, self.index_add_many(&indexed));
        located?;
        indexed?;
        let mut by_home: HashMap<(u32, i64), Vec<&Task>> = HashMap::new();
        for (_, t, home, new) in items {
            if new.is_some() {
                by_home.entry((t.partition, *home)).or_default().push(t);
            }
        }
        let mut batches: Vec<(i64, Vec<&Task>)> = Vec::new();
        for ((_, home), tasks) in by_home {
            let size = |t: &&Task| 512 + t.payload.len() + t.key.len() + t.id.len();
            batches.extend(
                bounded_batches(tasks, ROW_BATCH_BYTES, size)
                    .into_iter()
                    .map(|b| (home, b)),
            );
        }
        let written = each_bounded(&batches, conc, |(home, tasks)| {
            self.insert_rows(*home, tasks)
        })
        .await;
        for ((home, tasks), r) in batches.iter().zip(&written) {
            if r.is_ok() {
                self.remember_new(*home, tasks);
            }
        }
        written.into_iter().collect()
    }

    /// Remembers the rows just inserted of tasks due soon, so that their starts (on this
    /// node: the partition's owner enqueues them) need not read them back. A remembered row is
    /// only ever an expected row of a compare-and-set (see [`crate::rowcache`]): wrong, it
    /// costs one refused round.
    fn remember_new(&self, home: i64, tasks: &[&Task]) {
        for t in tasks {
            if t.due_at <= t.created_at.saturating_add(REMEMBER_DUE_WITHIN_MS) {
                // Not over a newer row (the window may have read it and a start changed it).
                self.rows.put_if_absent(Stored {
                    task: (*t).clone(),
                    home,
                    owner_epoch: 0,
                    rev: 0,
                });
            }
        }
    }

    /// Inserts new task rows that share `home` (and a partition): one unlogged batch.
    async fn insert_rows(&self, home: i64, tasks: &[&Task]) -> StoreResult<()> {
        let rows = tasks
            .iter()
            .map(|t| TaskRow::from_task(t, home, 0, 0))
            .collect::<StoreResult<Vec<_>>>()?;
        self.write_batch(&self.st.task_insert, rows).await
    }

    /// The task that holds a uniqueness key; it may still be on its way in.
    async fn await_task(&self, id: &str) -> StoreResult<Task> {
        for _ in 0..OWNER_WAIT_TRIES {
            if let Some(s) = self.load(id).await? {
                return Ok(s.task);
            }
            tokio::time::sleep(OWNER_WAIT).await;
        }
        Err(StoreError::Unavailable(format!(
            "uniqueness key is held by task {id}, which is not stored (yet); retry later"
        )))
    }
}
