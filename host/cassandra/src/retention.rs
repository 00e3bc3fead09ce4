//! Retention: finished tasks past their time are deleted with their attempts, key-index row and
//! uniqueness key. The scan walks `task_rows` in token order a page at a time (every task has a
//! row; only tasks whose id does not name its home have a `task_homes` row); the task row goes
//! first, by compare-and-set on its `rev`, so a task changed since it was read (a dead task an
//! operator sent back) stays. A node that dies between the task row and its uniqueness row
//! leaves that key held by a missing task (enqueues with it answer "retry later").

use kairos_core::ids::home_named;
use kairos_core::model::{Millis, TaskState};
use kairos_core::store::{Purged, StoreError, StoreResult};

use crate::CassandraStore;
use crate::Lwt;
use crate::error::{Decode, Exec};
use crate::rows::PurgeRow;

/// Where a scan continues: after task `id` in the row partition `(partition, home)`.
fn cursor(row: &PurgeRow) -> String {
    format!("{}/{}/{}", row.partition, row.home, row.id)
}

fn parse_cursor(after: &str) -> StoreResult<(i64, i64, &str)> {
    let mut parts = after.splitn(3, '/');
    let mut number = || parts.next().and_then(|n| n.parse::<i64>().ok());
    match (number(), number(), parts.next()) {
        (Some(p), Some(h), Some(id)) => Ok((p, h, id)),
        _ => Err(StoreError::Other(format!(
            "retention cursor {after:?} is not one this store made"
        ))),
    }
}

impl CassandraStore {
    /// Up to `limit` task rows after `after` in the scan order: the rest of the cursor's row
    /// partition, then the partitions after it in token order.
    async fn rows_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<PurgeRow>> {
        let page =
            |res: scylla::response::query_result::QueryResult| -> StoreResult<Vec<PurgeRow>> {
                res.into_rows_result()
                    .decode()?
                    .rows::<PurgeRow>()
                    .decode()?
                    .map(|r| r.decode())
                    .collect()
            };
        let Some(after) = after else {
            let res = self
                .session
                .execute_unpaged(&self.st.task_page_first, (limit as i32,))
                .await
                .exec()?;
            return page(res);
        };
        let (p, home, id) = parse_cursor(after)?;
        let res = self
            .session
            .execute_unpaged(&self.st.task_page_in_home, (p, home, id, limit as i32))
            .await
            .exec()?;
        let mut rows = page(res)?;
        if rows.len() < limit {
            let rest = (limit - rows.len()) as i32;
            let res = self
                .session
                .execute_unpaged(&self.st.task_page_after, (p, home, rest))
                .await
                .exec()?;
            rows.extend(page(res)?);
        }
        Ok(rows)
    }

    pub(crate) async fn purge_finished_impl(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        let scan = scan.clamp(1, 10_000);
        let rows = self.rows_page(after, scan).await?;
        let seen = rows.len();
        let last = rows.last().map(cursor);
        let mut deleted = 0;
        for row in rows {
            // A row that does not tell what it is, is left alone (and reported by `get`).
            let Some(p) = Expired::of(&row, before) else {
                continue;
            };
            let res = self
                .session
                .execute_unpaged(
                    &self.st.task_purge,
                    (row.partition, row.home, &row.id, p.rev),
                )
                .await
                .exec()?;
            if !Lwt::parse(res)?.applied {
                continue;
            }
            self.rows.forget(&row.id);
            deleted += 1;
            if let Some(u) = &row.uniqueness_key {
                self.session
                    .execute_unpaged(&self.st.ukey_release, (u, &row.id))
                    .await
                    .exec()?;
            }
            self.session
                .execute_unpaged(&self.st.attempts_delete, (&row.id,))
                .await
                .exec()?;
            self.session
                .execute_unpaged(&self.st.bykey_delete, (p.key, p.due_at, p.seq))
                .await
                .exec()?;
            // Its `task_homes` row, unless its id names its home (it has none).
            if home_named(&row.id).is_none() {
                self.session
                    .execute_unpaged(&self.st.home_delete, (&row.id,))
                    .await
                    .exec()?;
            }
        }
        Ok(Purged {
            deleted,
            next: if seen == scan { last } else { None },
        })
    }
}

/// A row retention may delete: finished (not pending) and last changed before the cutoff; with
/// what its deletion needs.
struct Expired<'a> {
    rev: i64,
    key: &'a str,
    due_at: i64,
    seq: i64,
}

impl<'a> Expired<'a> {
    fn of(row: &'a PurgeRow, before: Millis) -> Option<Self> {
        let state = TaskState::parse(row.state.as_deref()?)?;
        let pending =
            !state.is_terminal() || (state == TaskState::Dead && row.park_on_dead.unwrap_or(false));
        if pending || row.updated_at? >= before {
            return None;
        }
        Some(Self {
            rev: row.rev?,
            key: row.key.as_deref()?,
            due_at: row.due_at?,
            seq: row.seq?,
        })
    }
}
