//! A store whose `enqueue` can be switched to fail transiently (a Cassandra outage).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use kairos_core::model::*;
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{Purged, StoreError, StoreResult, TaskStore};

pub struct FlakyStore {
    pub inner: Arc<dyn TaskStore>,
    pub down: AtomicBool,
    pub refused: AtomicU64,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn TaskStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl TaskStore for FlakyStore {
    async fn enqueue(&self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        if self.down.load(Relaxed) {
            self.refused.fetch_add(1, Relaxed);
            return Err(StoreError::Unavailable("test outage".into()));
        }
        self.inner.enqueue(batch).await
    }
    async fn load_window(
        &self,
        p: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.inner.load_window(p, after, up_to, limit).await
    }
    async fn acquire_lease(&self, p: u32, node: &str) -> StoreResult<Lease> {
        self.inner.acquire_lease(p, node).await
    }
    async fn lease_holder(&self, p: u32) -> StoreResult<Option<Holder>> {
        self.inner.lease_holder(p).await
    }
    async fn start_attempt(
        &self,
        l: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        self.inner.start_attempt(l, id, attempt, at).await
    }
    async fn finish_attempt(
        &self,
        l: &Lease,
        id: &str,
        a: Attempt,
        t: Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        self.inner.finish_attempt(l, id, a, t, at).await
    }
    async fn unclaim_attempt(
        &self,
        l: &Lease,
        id: &str,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> StoreResult<Task> {
        self.inner
            .unclaim_attempt(l, id, attempt, back_to, at)
            .await
    }
    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        self.inner.get(id).await
    }
    async fn find_by_uniqueness_key(&self, k: &str) -> StoreResult<Option<Task>> {
        self.inner.find_by_uniqueness_key(k).await
    }
    async fn list(&self, f: &ListFilter) -> StoreResult<Vec<Task>> {
        self.inner.list(f).await
    }
    async fn cancel(&self, l: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        self.inner.cancel(l, id, at).await
    }
    async fn retry_dead(&self, l: &Lease, id: &str, extra: u32, at: Millis) -> StoreResult<Task> {
        self.inner.retry_dead(l, id, extra, at).await
    }
    async fn reschedule(
        &self,
        l: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        self.inner.reschedule(l, id, run_at, at).await
    }
    async fn unpark_key(&self, l: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        self.inner.unpark_key(l, key, at).await
    }
    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()> {
        self.inner.set_key_paused(key, paused).await
    }
    async fn paused_keys(&self) -> StoreResult<Vec<String>> {
        self.inner.paused_keys().await
    }
    async fn put_schedule(&self, s: Schedule) -> StoreResult<()> {
        self.inner.put_schedule(s).await
    }
    async fn get_schedule(&self, name: &str) -> StoreResult<Option<Schedule>> {
        self.inner.get_schedule(name).await
    }
    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.inner.list_schedules().await
    }
    async fn delete_schedule(&self, name: &str) -> StoreResult<bool> {
        self.inner.delete_schedule(name).await
    }
    async fn mark_schedule_fired(&self, name: &str, occurrence: Millis) -> StoreResult<()> {
        self.inner.mark_schedule_fired(name, occurrence).await
    }
    async fn kv_get(&self, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.kv_get(plugin, key).await
    }
    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>, at: Millis) -> StoreResult<()> {
        self.inner.kv_set(plugin, key, value, at).await
    }
    async fn kv_delete(&self, plugin: &str, key: &str) -> StoreResult<bool> {
        self.inner.kv_delete(plugin, key).await
    }
    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>> {
        self.inner.kv_list(plugin, prefix, limit).await
    }
    async fn kv_usage(&self, p: &str) -> StoreResult<u64> {
        self.inner.kv_usage(p).await
    }
    async fn state_counts(&self) -> StoreResult<StateCounts> {
        self.inner.state_counts().await
    }
    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        self.inner.purge_finished(before, after, scan).await
    }
}
