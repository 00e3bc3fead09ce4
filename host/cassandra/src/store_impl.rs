//! [`TaskStore`] for [`CassandraStore`]: each method delegates to the module that holds it.

use async_trait::async_trait;
use kairos_core::model::{
    Attempt, EnqueueOutcome, KvEntryMeta, ListFilter, Millis, NewTask, OrderPos, Schedule,
    StateCounts, Task, TaskRecord, TaskState, Transition,
};
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{Purged, StoreResult, TaskStore};

use crate::CassandraStore;

#[async_trait]
impl TaskStore for CassandraStore {
    async fn enqueue(&self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        self.enqueue_batch(batch).await
    }

    async fn load_window(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.load_window_impl(partition, after, up_to, limit).await
    }

    async fn acquire_lease(&self, partition: u32, node_id: &str) -> StoreResult<Lease> {
        self.acquire_lease_impl(partition, node_id).await
    }

    async fn lease_holder(&self, partition: u32) -> StoreResult<Option<Holder>> {
        self.lease_holder_impl(partition).await
    }

    async fn start_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.start_attempt_impl(lease, id, attempt, at).await
    }

    async fn finish_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        self.finish_attempt_impl(lease, id, attempt, transition, at)
            .await
    }

    async fn unclaim_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        self.unclaim_attempt_impl(lease, id, attempt, back_to, at)
            .await
    }

    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        self.get_impl(id).await
    }

    async fn find_by_uniqueness_key(&self, uniqueness_key: &str) -> StoreResult<Option<Task>> {
        self.find_by_ukey_impl(uniqueness_key).await
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        self.list_impl(filter).await
    }

    async fn cancel(&self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        self.cancel_impl(lease, id, at).await
    }

    async fn retry_dead(
        &self,
        lease: &Lease,
        id: &str,
        extra_attempts: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.retry_dead_impl(lease, id, extra_attempts, at).await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        self.reschedule_impl(lease, id, run_at, at).await
    }

    async fn unpark_key(&self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.unpark_key_impl(lease, key, at).await
    }

    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()> {
        self.set_key_paused_impl(key, paused).await
    }

    async fn paused_keys(&self) -> StoreResult<Vec<String>> {
        self.paused_keys_impl().await
    }

    async fn put_schedule(&self, schedule: Schedule) -> StoreResult<()> {
        self.put_schedule_impl(&schedule).await
    }

    async fn get_schedule(&self, name: &str) -> StoreResult<Option<Schedule>> {
        self.get_schedule_impl(name).await
    }

    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.list_schedules_impl().await
    }

    async fn delete_schedule(&self, name: &str) -> StoreResult<bool> {
        self.delete_schedule_impl(name).await
    }

    async fn mark_schedule_fired(&self, name: &str, occurrence: Millis) -> StoreResult<()> {
        self.mark_fired_impl(name, occurrence).await
    }

    async fn kv_get(&self, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.kv_get_impl(plugin, key).await
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>, at: Millis) -> StoreResult<()> {
        self.kv_set_impl(plugin, key, value, at).await
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> StoreResult<bool> {
        self.kv_delete_impl(plugin, key).await
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>> {
        self.kv_list_impl(plugin, prefix, limit).await
    }

    async fn kv_usage(&self, plugin: &str) -> StoreResult<u64> {
        self.kv_usage_impl(plugin).await
    }

    async fn state_counts(&self) -> StoreResult<StateCounts> {
        self.state_counts_impl().await
    }

    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        self.purge_finished_impl(before, after, scan).await
    }
}
