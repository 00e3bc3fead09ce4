//! Retention: finished tasks past their time are deleted with their attempts, key-index row and
//! uniqueness key. The scan walks `task_homes` in token order a page at a time; the task row goes
//! first, by compare-and-set on its `rev`, so a task changed since it was read (a dead task an
//! operator sent back) stays. A node that dies between the task row and its uniqueness row
//! leaves that key held by a missing task (enqueues with it answer "retry later").

use kairos_core::model::Millis;
use kairos_core::store::{Purged, StoreResult};

use crate::CassandraStore;
use crate::Lwt;
use crate::error::{Decode, Exec};
use crate::rows::Stored;
use futures::{StreamExt, stream};

impl CassandraStore {
    pub(crate) async fn purge_finished_impl(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        let scan = scan.clamp(1, 10_000);
        let limit = scan as i32;
        let res = match after {
            Some(a) => {
                self.session
                    .execute_unpaged(&self.st.task_page_after, (a, limit))
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(&self.st.task_page_first, (limit,))
                    .await
            }
        }
        .exec()?;
        let homes: Vec<(String, i64, i64)> = res
            .into_rows_result()
            .decode()?
            .rows::<(String, i64, i64)>()
            .decode()?
            .collect::<Result<_, _>>()
            .decode()?;
        let seen = homes.len();
        let last = homes.last().map(|(id, _, _)| id.clone());
        let rows: Vec<StoreResult<Option<Stored>>> = stream::iter(homes)
            .map(|(id, p, home)| async move { self.load_at(p, home, &id).await })
            .buffered(self.opts.concurrency)
            .collect()
            .await;
        let mut deleted = 0;
        for row in rows {
            // A row that does not decode is left alone (and reported by `get`); a home without
            // a row is an enqueue that did not finish (its retry writes the row).
            let Ok(Some(stored)) = row else {
                continue;
            };
            let t = &stored.task;
            if !t.expired(before) {
                continue;
            }
            let p = i64::from(t.partition);
            let res = self
                .session
                .execute_unpaged(&self.st.task_purge, (p, stored.home, &t.id, stored.rev))
                .await
                .exec()?;
            if !Lwt::parse(res)?.applied {
                continue;
            }
            self.rows.forget(&t.id);
            deleted += 1;
            if let Some(u) = &t.uniqueness_key {
                self.session
                    .execute_unpaged(&self.st.ukey_release, (u, &t.id))
                    .await
                    .exec()?;
            }
            self.session
                .execute_unpaged(&self.st.attempts_delete, (&t.id,))
                .await
                .exec()?;
            self.bykey_remove(t).await?;
            // The home last (a home without a row is skipped by later scans).
            self.session
                .execute_unpaged(&self.st.home_delete, (&t.id,))
                .await
                .exec()?;
        }
        Ok(Purged {
            deleted,
            next: if seen == scan { last } else { None },
        })
    }
}
