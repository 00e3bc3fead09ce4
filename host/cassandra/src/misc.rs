//! Reads of one task, the uniqueness index, paused keys, schedules, plugin key-value state and
//! the task counts by state.

use std::collections::BTreeMap;

use kairos_core::model::{
    Attempt, KvEntryMeta, Schedule, StateCounts, Task, TaskRecord, TaskState,
};
use kairos_core::store::{StoreError, StoreResult};

use crate::error::{Decode, Exec};
use crate::rows::{AttemptCell, AttemptRow, ScheduleRow, attempts_of_log};
use crate::{CassandraStore, Lwt};
use futures::StreamExt;

const MAX_CAS_TRIES: u32 = 32;

impl CassandraStore {
    pub(crate) async fn get_impl(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        let Some(stored) = self.load(id).await? else {
            return Ok(None);
        };
        // The attempts recorded in the row, and those in the `attempts` table: the logs of
        // this release's attempts, and whole records of an earlier release's (the row's record
        // wins: the same attempt number is the same attempt).
        let t = &stored.task;
        let (logged, older) = tokio::join!(
            self.session.execute_unpaged(
                &self.st.attempt_log_get,
                (i64::from(t.partition), stored.home, id)
            ),
            self.session.execute_unpaged(&self.st.attempts_get, (id,))
        );
        let logged = logged
            .exec()?
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(Option<BTreeMap<i64, AttemptCell>>,)>()
            .decode()?
            .and_then(|(log,)| log)
            .unwrap_or_default();
        let mut attempts: BTreeMap<u32, Attempt> = attempts_of_log(id, logged)?
            .into_iter()
            .map(|a| (a.number, a))
            .collect();
        let older = older
            .exec()?
            .into_rows_result()
            .decode()?
            .rows::<AttemptRow>()
            .decode()?
            .map(|r| r.decode().and_then(|r| r.into_attempt(id)))
            .collect::<StoreResult<Vec<_>>>()?;
        for a in older {
            match attempts.get_mut(&a.number) {
                Some(recorded) => {
                    if recorded.logs.is_none() {
                        recorded.logs = a.logs;
                    }
                }
                None => {
                    attempts.insert(a.number, a);
                }
            }
        }
        let attempts = attempts.into_values().collect();
        Ok(Some(TaskRecord {
            task: stored.task,
            attempts,
        }))
    }

    pub(crate) async fn find_by_ukey_impl(&self, ukey: &str) -> StoreResult<Option<Task>> {
        let res = self
            .session
            .execute_unpaged(&self.st.ukey_get, (ukey,))
            .await
            .exec()?;
        let owner = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(String,)>()
            .decode()?;
        match owner {
            // A claim whose task is not written (yet) is not a task.
            Some((id,)) => Ok(self.load(&id).await?.map(|s| s.task)),
            None => Ok(None),
        }
    }

    pub(crate) async fn set_key_paused_impl(&self, key: &str, paused: bool) -> StoreResult<()> {
        let st = if paused {
            &self.st.paused_set
        } else {
            &self.st.paused_delete
        };
        self.session.execute_unpaged(st, (key,)).await.exec()?;
        Ok(())
    }

    pub(crate) async fn paused_keys_impl(&self) -> StoreResult<Vec<String>> {
        let res = self
            .session
            .execute_unpaged(&self.st.paused_list, ())
            .await
            .exec()?;
        res.into_rows_result()
            .decode()?
            .rows::<(String,)>()
            .decode()?
            .map(|r| r.decode().map(|(k,)| k))
            .collect()
    }

    pub(crate) async fn put_schedule_impl(&self, s: &Schedule) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.st.sched_put, ScheduleRow::from(s))
            .await
            .exec()?;
        Ok(())
    }

    pub(crate) async fn get_schedule_impl(&self, name: &str) -> StoreResult<Option<Schedule>> {
        let res = self
            .session
            .execute_unpaged(&self.st.sched_get, (name,))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<ScheduleRow>()
            .decode()?;
        Ok(row.map(Schedule::from))
    }

    pub(crate) async fn list_schedules_impl(&self) -> StoreResult<Vec<Schedule>> {
        let res = self
            .session
            .execute_unpaged(&self.st.sched_list, ())
            .await
            .exec()?;
        res.into_rows_result()
            .decode()?
            .rows::<ScheduleRow>()
            .decode()?
            .map(|r| r.decode().map(Schedule::from))
            .collect()
    }

    pub(crate) async fn delete_schedule_impl(&self, name: &str) -> StoreResult<bool> {
        let res = self
            .session
            .execute_unpaged(&self.st.sched_delete, (name,))
            .await
            .exec()?;
        Ok(Lwt::parse(res)?.applied)
    }

    pub(crate) async fn mark_fired_impl(&self, name: &str, occurrence: i64) -> StoreResult<()> {
        for _ in 0..MAX_CAS_TRIES {
            let Some(s) = self.get_schedule_impl(name).await? else {
                return Err(StoreError::NotFound(format!("schedule {name}")));
            };
            if s.last_fired.is_some_and(|last| last >= occurrence) {
                return Ok(());
            }
            let res = self
                .session
                .execute_unpaged(&self.st.sched_fire, (occurrence, name, s.last_fired))
                .await
                .exec()?;
            if Lwt::parse(res)?.applied {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "schedule {name}: too many concurrent changes"
        )))
    }

    pub(crate) async fn kv_get_impl(
        &self,
        plugin: &str,
        key: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let res = self
            .session
            .execute_unpaged(&self.st.kv_get, (plugin, key))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .decode()?;
        // An empty blob may come back as null.
        Ok(row.map(|(v,)| v.unwrap_or_default()))
    }

    pub(crate) async fn kv_set_impl(
        &self,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        at: i64,
    ) -> StoreResult<()> {
        let size = value.len() as i64;
        self.session
            .execute_unpaged(&self.st.kv_set, (plugin, key, at, size, value))
            .await
            .exec()?;
        Ok(())
    }

    pub(crate) async fn kv_delete_impl(&self, plugin: &str, key: &str) -> StoreResult<bool> {
        let res = self
            .session
            .execute_unpaged(&self.st.kv_delete, (plugin, key))
            .await
            .exec()?;
        Ok(Lwt::parse(res)?.applied)
    }

    pub(crate) async fn kv_list_impl(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let res = self
            .session
            .execute_unpaged(&self.st.kv_range, (plugin, prefix, limit))
            .await
            .exec()?;
        let mut out = Vec::new();
        for row in res
            .into_rows_result()
            .decode()?
            .rows::<(String, i64, i64)>()
            .decode()?
        {
            let (key, updated_at, size) = row.decode()?;
            // Keys sort by bytes, so the ones with the prefix come first and together.
            if !key.starts_with(prefix) {
                break;
            }
            let size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupt(format!("kv {plugin}/{key}: size {size}")))?;
            out.push(KvEntryMeta {
                key,
                updated_at,
                size,
            });
        }
        Ok(out)
    }

    /// Sums the plugin's partition (keys and the stored `size` of each value), paged.
    pub(crate) async fn kv_usage_impl(&self, plugin: &str) -> StoreResult<u64> {
        let mut rows = self
            .session
            .execute_iter(self.st.kv_sizes.clone(), (plugin,))
            .await
            .map_err(crate::error::pager_err)?
            .rows_stream::<(String, i64)>()
            .decode()?;
        let mut total = 0u64;
        while let Some(row) = rows.next().await {
            let (key, size) = row.map_err(crate::error::row_err)?;
            total += key.len() as u64 + u64::try_from(size).unwrap_or(0);
        }
        Ok(total)
    }

    /// Counts the tasks by state: reads the `state` column of every row of `task_rows`, paged.
    /// O(tasks) (no counters: Cassandra's are not idempotent under retries), so it is meant to
    /// be called rarely and its answer cached by the caller.
    pub(crate) async fn state_counts_impl(&self) -> StoreResult<StateCounts> {
        let mut rows = self
            .session
            .execute_iter(self.st.task_states.clone(), ())
            .await
            .map_err(crate::error::pager_err)?
            .rows_stream::<(Option<String>,)>()
            .decode()?;
        let mut counts = StateCounts::default();
        while let Some(row) = rows.next().await {
            // A row without a state is not a task (nothing writes one); it is not counted.
            let (Some(state),) = row.map_err(crate::error::row_err)? else {
                continue;
            };
            let state = TaskState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("task with unknown state {state:?}")))?;
            counts.add(state, 1);
        }
        Ok(counts)
    }
}
