//! `enqueue`: dedup within the batch, one seq block reservation, then every task written
//! concurrently (at most `concurrency` in flight).
//!
//! Per new task: [uniqueness LWT if it has a key] → read of its home by id (a replayed
//! enqueue is a duplicate) → its home (`task_homes`) and index rows (`pending`,
//! `tasks_by_key`), then the bucket directory, then the task row. Index rows go first so a pending task is never missing from the window; a crash in
//! between leaves an index row without a task, which readers skip.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use futures::{StreamExt, stream};
use kairos_core::model::{EnqueueOutcome, NewTask, Task};
use kairos_core::store::{StoreError, StoreResult};
use scylla::value::CqlValue;

use crate::error::Exec;
use crate::rows::TaskRow;
use crate::{CassandraStore, Lwt};

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
        // Within a batch the first task with a uniqueness key wins.
        let mut dup_of: Vec<Option<usize>> = vec![None; n];
        {
            let mut first: HashMap<&str, usize> = HashMap::new();
            for (i, t) in batch.iter().enumerate() {
                if let Some(u) = &t.uniqueness_key {
                    match first.entry(u.as_str()) {
                        Entry::Occupied(e) => dup_of[i] = Some(*e.get()),
                        Entry::Vacant(v) => {
                            v.insert(i);
                        }
                    }
                }
            }
        }
        let leaders = dup_of.iter().filter(|d| d.is_none()).count() as u64;
        let mut seq = self.alloc_seqs(leaders).await?;
        let mut jobs = Vec::with_capacity(n);
        for (i, t) in batch.into_iter().enumerate() {
            if dup_of[i].is_none() {
                jobs.push((i, t, seq));
                seq += 1;
            }
        }
        let results: Vec<(usize, StoreResult<EnqueueOutcome>)> = stream::iter(jobs)
            .map(|(i, t, seq)| async move { (i, self.insert_one(t, seq).await) })
            .buffer_unordered(self.opts.concurrency)
            .collect()
            .await;
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

    async fn insert_one(&self, new: NewTask, seq: u64) -> StoreResult<EnqueueOutcome> {
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
                    return Ok(EnqueueOutcome::Duplicate(self.await_task(&owner).await?));
                }
                // Our own claim from an earlier, interrupted attempt: carry on.
            }
        }
        // A replayed enqueue finds the home its first attempt recorded (in whichever
        // partition that was).
        let partition = i64::from(new.partition);
        let known = self.home_of(&new.id).await?;
        if let Some((p, home)) = known
            && let Some(existing) = self.load_at(p, home, &new.id).await?
        {
            // A replay. Re-assert the index rows of a pending task (cheap, idempotent) in case
            // the first attempt died between the task row and its index rows.
            if existing.task.is_pending() {
                self.index_add(&existing.task, home, true, true).await?;
            }
            return Ok(EnqueueOutcome::Duplicate(existing.task));
        }
        // A home without a row: the first attempt died before the row. It is reused if it is in
        // this partition, else replaced.
        let known = known.filter(|(p, _)| *p == partition);
        let home = known.map_or_else(|| self.bucket_of(new.due_at), |(_, home)| home);
        let task = Task::from_new(new, seq);
        // The home and the index rows first, then the row: once the row is there, it is found
        // by id and by the window.
        let located = async {
            if known.is_none() {
                self.session
                    .execute_unpaged(&self.st.home_insert, (&task.id, partition, home))
                    .await
                    .exec()?;
            }
            StoreResult::Ok(())
        };
        let (located, indexed) = tokio::join!(located, self.index_add(&task, home, true, true));
        located?;
        indexed?;
        let row = TaskRow::from_task(&task, home, 0, 0)?;
        self.session
            .execute_unpaged(&self.st.task_insert, row)
            .await
            .exec()?;
        Ok(EnqueueOutcome::Created(task))
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
