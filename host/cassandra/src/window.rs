//! Index upkeep and the reads that walk an index: `load_window` (the `pending` table through
//! the bucket directory) and `list`.
//!
//! Every index row is checked against its task row before it is returned. A row that does not
//! match (its task moved, finished, or was never written) is skipped; once it is older than
//! [`STALE_GRACE_US`] it is deleted with `USING TIMESTAMP <its write time>`, which removes
//! exactly that write and never a later re-insert of the same position.

use std::collections::BTreeMap;

use crate::batch::{bounded_batches, each_bounded};
use futures::{StreamExt, TryStreamExt, stream};
use kairos_core::model::{ListFilter, Millis, OrderPos, Task};
use kairos_core::store::{FirstByPos, StoreResult};

use crate::error::{Decode, Exec, pager_err, row_err};
use crate::rows::{Stored, TaskRow};
use crate::{CassandraStore, STALE_GRACE_US, now_us};

/// A `pending` row: due_at, seq, id, the task's home (null in rows written before homes
/// existed) and the row's write time.
type IndexRow = (i64, i64, String, Option<i64>, Option<i64>);

/// `limit` 0 in a [`ListFilter`] means this many.
const DEFAULT_LIST_LIMIT: usize = 100;

fn seq_db(seq: u64) -> i64 {
    // Stored seqs are below i64::MAX; larger cursor values (OrderPos::end_of) clamp to it.
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl CassandraStore {
    /// Writes index rows of `t`: (when `pending`) its `pending` row and bucket registration,
    /// and (when `by_key`) its `tasks_by_key` row, both naming the row's `home`. The bucket
    /// is registered after the pending row is written, so a directory entry younger than a
    /// pending row always exists.
    pub(crate) async fn index_add(
        &self,
        t: &Task,
        home: i64,
        pending: bool,
        by_key: bool,
    ) -> StoreResult<()> {
        let (p, b, seq) = (
            i64::from(t.partition),
            self.bucket_of(t.due_at),
            seq_db(t.seq),
        );
        let add_pending = pending;
        let pending = async {
            if add_pending {
                self.session
                    .execute_unpaged(&self.st.pending_insert, (p, b, t.due_at, seq, &t.id, home))
                    .await
                    .exec()?;
            }
            StoreResult::Ok(())
        };
        let keyed = async {
            if by_key {
                self.session
                    .execute_unpaged(&self.st.bykey_insert, (&t.key, t.due_at, seq, &t.id))
                    .await
                    .exec()?;
            }
            StoreResult::Ok(())
        };
        let (a, k) = tokio::join!(pending, keyed);
        a?;
        k?;
        if add_pending {
            self.session
                .execute_unpaged(&self.st.bucket_touch, (p, b))
                .await
                .exec()?;
        }
        Ok(())
    }

    /// [`index_add`](Self::index_add) of many new tasks `(task, home)`, all pending: their
    /// `pending` rows as one unlogged batch per pending partition, their `tasks_by_key` rows
    /// in unlogged batches of a few partitions per replica, then each bucket registered once.
    pub(crate) async fn index_add_many(&self, items: &[(&Task, i64)]) -> StoreResult<()> {
        let conc = self.opts.concurrency;
        let mut by_bucket: BTreeMap<(i64, i64), Vec<(&Task, i64)>> = BTreeMap::new();
        for &(t, home) in items {
            by_bucket
                .entry((i64::from(t.partition), self.bucket_of(t.due_at)))
                .or_default()
                .push((t, home));
        }
        let groups: Vec<Vec<(&Task, i64)>> = by_bucket
            .values()
            .flat_map(|rows| bounded_batches(rows.iter().copied(), usize::MAX, |_| 0))
            .collect();
        let pending = async {
            let written = each_bounded(&groups, conc, |g| self.pending_insert_many(g)).await;
            written.into_iter().collect::<StoreResult<()>>()
        };
        let keyed = self.write_spread(
            &self.st.bykey_insert,
            "tasks_by_key",
            items
                .iter()
                .map(|(t, _)| {
                    let row = (&t.key, t.due_at, seq_db(t.seq), &t.id);
                    (t.key.as_str(), 32 + t.key.len() + t.id.len(), row)
                })
                .collect(),
        );
        let (a, k) = tokio::join!(pending, keyed);
        a?;
        k?;
        let buckets: Vec<(i64, i64)> = by_bucket.into_keys().collect();
        let touched = each_bounded(&buckets, conc, |pb| {
            self.session.execute_unpaged(&self.st.bucket_touch, *pb)
        })
        .await;
        for r in touched {
            r.exec()?;
        }
        Ok(())
    }

    /// Inserts the `pending` rows of `(task, home)`, which share one pending partition: one
    /// unlogged batch.
    async fn pending_insert_many(&self, rows: &[(&Task, i64)]) -> StoreResult<()> {
        let values: Vec<(i64, i64, i64, i64, &str, i64)> = rows
            .iter()
            .map(|(t, home)| {
                (
                    i64::from(t.partition),
                    self.bucket_of(t.due_at),
                    t.due_at,
                    seq_db(t.seq),
                    t.id.as_str(),
                    *home,
                )
            })
            .collect();
        self.write_batch(&self.st.pending_insert, values).await
    }

    /// The task row an index row of partition `p` points at: at its home if the index row
    /// names it, else found by id.
    async fn load_indexed(
        &self,
        p: i64,
        home: Option<i64>,
        id: &str,
    ) -> StoreResult<Option<Stored>> {
        match home {
            Some(home) => self.load_at(p, home, id).await,
            None => self.load(id).await,
        }
    }

    /// Deletes the `pending` rows of `tasks`, which share one `pending` partition: one
    /// unlogged batch (a single mutation).
    pub(crate) async fn pending_remove_many(&self, tasks: &[&Task]) -> StoreResult<()> {
        let values: Vec<(i64, i64, i64, i64)> = tasks
            .iter()
            .map(|t| {
                (
                    i64::from(t.partition),
                    self.bucket_of(t.due_at),
                    t.due_at,
                    seq_db(t.seq),
                )
            })
            .collect();
        self.write_batch(&self.st.pending_delete, values).await
    }

    pub(crate) async fn bykey_remove(&self, t: &Task) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.st.bykey_delete, (&t.key, t.due_at, seq_db(t.seq)))
            .await
            .exec()?;
        Ok(())
    }

    pub(crate) async fn load_window_impl(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let limit = limit.min(100_000);
        let lo = (after.due_at, seq_db(after.seq));
        let hi = (up_to, i64::MAX);
        if limit == 0 || lo >= hi {
            return Ok(Vec::new());
        }
        let p = i64::from(partition);
        let buckets: Vec<(i64, Option<i64>)> = self
            .session
            .execute_iter(
                self.st.bucket_range.clone(),
                (p, self.bucket_of(after.due_at), self.bucket_of(up_to)),
            )
            .await
            .map_err(pager_err)?
            .rows_stream::<(i64, Option<i64>)>()
            .decode()?
            .map_err(row_err)
            .try_collect()
            .await?;
        let width = self.opts.bucket_ms;
        let mut out = Vec::with_capacity(limit.min(1024));
        for (b, written) in buckets {
            let start = b.saturating_mul(width);
            let whole = lo.0 < start && up_to >= start.saturating_add(width - 1);
            let mut cursor = lo;
            let mut raw = 0usize;
            loop {
                let want = limit - out.len();
                let res = self
                    .session
                    .execute_unpaged(
                        &self.st.pending_range,
                        (p, b, cursor.0, cursor.1, hi.0, hi.1, want as i32),
                    )
                    .await
                    .exec()?;
                let rows: Vec<IndexRow> = res
                    .into_rows_result()
                    .decode()?
                    .rows::<IndexRow>()
                    .decode()?
                    .collect::<Result<_, _>>()
                    .decode()?;
                raw += rows.len();
                let exhausted = rows.len() < want;
                if let Some(last) = rows.last() {
                    cursor = (last.0, last.1);
                }
                let checked: Vec<Option<Task>> = stream::iter(rows)
                    .map(|row| self.check_pending(p, b, row))
                    .buffered(self.opts.concurrency)
                    .try_collect()
                    .await?;
                out.extend(checked.into_iter().flatten());
                if out.len() >= limit {
                    return Ok(out);
                }
                if exhausted {
                    break;
                }
            }
            if raw == 0 && whole {
                self.prune_bucket(p, b, written).await?;
            }
        }
        Ok(out)
    }

    /// The task a `pending` row points at, if the row is current.
    async fn check_pending(&self, p: i64, b: i64, row: IndexRow) -> StoreResult<Option<Task>> {
        let (due_at, seq, id, home, written) = row;
        let stored = self.load_indexed(p, home, &id).await?;
        if let Some(s) = stored
            && i64::from(s.task.partition) == p
            && s.task.due_at == due_at
            && seq_db(s.task.seq) == seq
            && s.task.is_pending()
        {
            let task = s.task.clone();
            // The start of this task begins from the row just read.
            self.rows.put(s);
            return Ok(Some(task));
        }
        if let Some(wt) = written
            && wt < now_us() - STALE_GRACE_US
        {
            self.session
                .execute_unpaged(&self.st.pending_delete_at, (wt, p, b, due_at, seq))
                .await
                .exec()?;
        }
        Ok(None)
    }

    /// Removes an empty bucket from the directory. The delete carries the registration's own
    /// write time, so a registration made after it (a task enqueued into this bucket since)
    /// survives; it is only attempted for registrations older than the clock-skew margin.
    async fn prune_bucket(&self, p: i64, b: i64, written: Option<i64>) -> StoreResult<()> {
        if let Some(wt) = written
            && wt < now_us() - STALE_GRACE_US
        {
            self.session
                .execute_unpaged(&self.st.bucket_delete_at, (wt, p, b))
                .await
                .exec()?;
        }
        Ok(())
    }

    pub(crate) async fn list_impl(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        let limit = if filter.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            filter.limit
        };
        let wanted = |t: &Task| filter.admits(t);
        match &filter.key {
            Some(key) => {
                let rows = self
                    .session
                    .execute_iter(self.st.bykey_scan.clone(), (key,))
                    .await
                    .map_err(pager_err)?
                    .rows_stream::<(i64, i64, String, Option<i64>)>()
                    .decode()?;
                let mut checked = rows
                    .map_err(row_err)
                    .map_ok(|(due_at, seq, id, wt)| self.check_keyed(key, due_at, seq, id, wt))
                    .try_buffered(self.opts.concurrency);
                let mut out = Vec::new();
                while let Some(t) = checked.try_next().await? {
                    if let Some(t) = t.filter(|t| wanted(t)) {
                        out.push(t);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                Ok(out)
            }
            None => {
                let mut rows = self
                    .session
                    .execute_iter(self.st.task_scan.clone(), ())
                    .await
                    .map_err(pager_err)?
                    .rows_stream::<TaskRow>()
                    .decode()?;
                let mut first = FirstByPos::new(limit);
                while let Some(row) = rows.next().await {
                    let t = row.map_err(row_err)?.into_stored()?.task;
                    if wanted(&t) {
                        first.offer(t);
                    }
                }
                Ok(first.into_sorted())
            }
        }
    }

    async fn check_keyed(
        &self,
        key: &str,
        due_at: i64,
        seq: i64,
        id: String,
        written: Option<i64>,
    ) -> StoreResult<Option<Task>> {
        let stored = self.load(&id).await?;
        if let Some(s) = stored
            && s.task.key == key
            && s.task.due_at == due_at
            && seq_db(s.task.seq) == seq
        {
            return Ok(Some(s.task));
        }
        if let Some(wt) = written
            && wt < now_us() - STALE_GRACE_US
        {
            self.session
                .execute_unpaged(&self.st.bykey_delete_at, (wt, key, due_at, seq))
                .await
                .exec()?;
        }
        Ok(None)
    }
}
