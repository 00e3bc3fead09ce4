//! The embedded store: one crash-safe fjall database (an LSM tree with a write-ahead journal)
//! in one directory, for the single-process deployment.
//!
//! Writes go through one writer thread that group-commits (see `writer.rs`); every commit
//! syncs the journal (`PersistMode::SyncData`) before any caller hears `Ok`. Reads run on
//! their own snapshots; the ones that can return many rows run on tokio's blocking pool.
//!
//! Layout: see `tables.rs`. Records are postcard behind a one-byte format version (see
//! `codec.rs`); a record that does not decode is reported as [`StoreError::Corrupt`]. A store
//! file of the earlier redb layout is migrated once, at open (see `legacy.rs`).
//!
//! Cost notes: `list` without a key scans every stored task (bounded memory, linear time); with
//! a key it walks that key's index. `unpark_key` walks the key's index. After a failed journal
//! write (an I/O error) fjall refuses further writes until the database is reopened, which the
//! writer does by itself on the next write.
//! Beyond the trait's contract, re-enqueueing an id that is already stored returns
//! [`EnqueueOutcome::Duplicate`] with the stored task (a replayed enqueue never resets a task).

mod cell;
mod codec;
mod legacy;
mod ops;
mod read;
mod staged;
mod tables;
mod writer;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use fjall::{PersistMode, Readable};

use kairos_core::model::{
    Attempt, EnqueueOutcome, KvEntryMeta, ListFilter, Millis, NewTask, OrderPos, Schedule,
    StateCounts, Task, TaskRecord, TaskState, Transition,
};
use kairos_core::ownership::{Holder, Lease};
use kairos_core::store::{Purged, StoreError, StoreResult, TaskStore};
use tables::{Db, DbResult};
pub use writer::{CommitStats, SLOW_COMMIT};

/// Tuning of the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Block cache, in MiB.
    pub cache_mb: usize,
    /// Most write operations carried by one commit (one `enqueue` call is one operation,
    /// whatever its batch size). Also the capacity of the writer's queue.
    pub max_batch: usize,
    /// Below this much free disk space new tasks are refused (503) and the store reports
    /// itself unhealthy, so that the tasks already accepted can still record their starts
    /// and ends. 0: no check.
    pub min_free_bytes: u64,
}

impl EmbeddedOptions {
    fn cache_bytes(&self) -> u64 {
        (self.cache_mb as u64).saturating_mul(1024 * 1024)
    }
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            cache_mb: 64,
            max_batch: 4096,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// [`TaskStore`] on a fjall database directory.
pub struct EmbeddedStore {
    // Field order matters on drop: the writer thread is joined first, then the last handle on
    // the database goes, which releases the file lock.
    writer: writer::Writer,
    cell: Arc<cell::DbCell>,
    min_free_bytes: u64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("stats", &self.commit_stats())
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database directory at `path`. A database written by an
    /// incompatible version is refused with [`StoreError::Corrupt`]; one opened by another
    /// process with [`StoreError::Other`]. Blocking (it may replay fjall's journal).
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        if path.is_file() {
            return Err(StoreError::Other(format!(
                "{} is a file; the embedded store is a directory now (a store file of the \
                 earlier redb format is migrated by EmbeddedStore::open_migrating)",
                path.display()
            )));
        }
        let cell = Arc::new(cell::DbCell::open(path, opts.cache_bytes())?);
        let next_seq = init(&*cell.get()?)?;
        let writer = writer::Writer::spawn(cell.clone(), next_seq, opts.max_batch)?;
        Ok(Self {
            writer,
            cell,
            min_free_bytes: opts.min_free_bytes,
        })
    }

    /// [`EmbeddedStore::open`], after copying the store file of the earlier redb format at
    /// `legacy` into `path` if `path` does not exist yet. The old file is kept, renamed
    /// `<legacy>.migrated`; a crash during the copy leaves it untouched and the next open
    /// copies again.
    pub fn open_migrating(
        path: &Path,
        legacy: &Path,
        opts: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        if legacy.is_file() {
            if path.exists() {
                // The copy was put in place and the process stopped before the old file was
                // renamed.
                tracing::warn!(store = %path.display(), old = %legacy.display(), "the old store file was already migrated; renaming it");
                legacy::retire(legacy)?;
            } else {
                legacy::migrate(legacy, path, opts.cache_bytes())?;
            }
        }
        Self::open(path, opts)
    }

    /// `Unavailable` when the disk holding the file has less than `min_free_bytes` free.
    fn check_space(&self) -> StoreResult<()> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        match cell::free_bytes(self.cell.path()) {
            Some(free) if free < self.min_free_bytes => Err(StoreError::Unavailable(format!(
                "embedded store cannot write: the disk is nearly full ({} MiB free, {} MiB kept for the tasks already accepted)",
                free / (1024 * 1024),
                self.min_free_bytes / (1024 * 1024)
            ))),
            _ => Ok(()),
        }
    }

    /// Commits and operations so far (operations per commit shows the group-commit factor).
    pub fn commit_stats(&self) -> CommitStats {
        self.writer.stats.snapshot()
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut ops::WriteTables<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(f).await
    }

    /// Runs a read that may return many rows off the async worker threads.
    async fn read_blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> StoreResult<T> + Send + 'static,
    {
        let db = self.cell.get()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Other(format!("embedded store read failed: {e}")))?
    }
}

/// Checks the format (stamping a new database with it) and returns the next sequence number.
pub(crate) fn init(db: &Db) -> StoreResult<u64> {
    let ks = &db.ks;
    let mut tx = db.db.write_tx().durability(Some(PersistMode::SyncData));
    let format = tx.get(&ks.meta, tables::META_FORMAT).db()?;
    match format.as_deref().map(tables::decode_u64).transpose()? {
        None => {
            tx.insert(
                &ks.meta,
                tables::META_FORMAT,
                tables::u64_value(tables::FORMAT),
            );
        }
        Some(found) => tables::check_format(found)?,
    }
    let next = match tx.get(&ks.meta, tables::META_NEXT_SEQ).db()? {
        Some(v) => tables::decode_u64(&v)?,
        None => 1,
    };
    tx.commit().db()?;
    Ok(next)
}

#[async_trait]
impl TaskStore for EmbeddedStore {
    async fn enqueue(&self, batch: Vec<NewTask>) -> StoreResult<Vec<EnqueueOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_space()?;
        self.write(move |w| w.enqueue(&batch)).await
    }

    async fn load_window(
        &self,
        partition: u32,
        after: OrderPos,
        up_to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.read_blocking(move |db| read::load_window(db, partition, after, up_to, limit))
            .await
    }

    async fn acquire_lease(&self, partition: u32, node_id: &str) -> StoreResult<Lease> {
        let node_id = node_id.to_owned();
        self.write(move |w| w.acquire_lease(partition, &node_id))
            .await
    }

    async fn lease_holder(&self, partition: u32) -> StoreResult<Option<Holder>> {
        read::lease_holder(&*self.cell.get()?, partition)
    }

    async fn start_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.start_attempt(&lease, &id, attempt, at))
            .await
    }

    async fn finish_attempt(
        &self,
        lease: &Lease,
        id: &str,
        attempt: Attempt,
        transition: Transition,
        at: Millis,
    ) -> StoreResult<Task> {
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.finish_attempt(&lease, &id, &attempt, &transition, at))
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
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.unclaim_attempt(&lease, &id, attempt, back_to, at))
            .await
    }

    async fn get(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        read::get(&*self.cell.get()?, id)
    }

    async fn find_by_uniqueness_key(&self, uniqueness_key: &str) -> StoreResult<Option<Task>> {
        read::find_by_uniqueness_key(&*self.cell.get()?, uniqueness_key)
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<Task>> {
        let filter = filter.clone();
        self.read_blocking(move |db| read::list(db, &filter)).await
    }

    async fn cancel(&self, lease: &Lease, id: &str, at: Millis) -> StoreResult<Task> {
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.cancel(&lease, &id, at)).await
    }

    async fn retry_dead(
        &self,
        lease: &Lease,
        id: &str,
        extra_attempts: u32,
        at: Millis,
    ) -> StoreResult<Task> {
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.retry_dead(&lease, &id, extra_attempts, at))
            .await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        id: &str,
        run_at: Millis,
        at: Millis,
    ) -> StoreResult<Task> {
        let (lease, id) = (*lease, id.to_owned());
        self.write(move |w| w.reschedule(&lease, &id, run_at, at))
            .await
    }

    async fn unpark_key(&self, lease: &Lease, key: &str, at: Millis) -> StoreResult<u32> {
        let (lease, key) = (*lease, key.to_owned());
        self.write(move |w| w.unpark_key(&lease, &key, at)).await
    }

    async fn set_key_paused(&self, key: &str, paused: bool) -> StoreResult<()> {
        let key = key.to_owned();
        self.write(move |w| w.set_key_paused(&key, paused)).await
    }

    async fn paused_keys(&self) -> StoreResult<Vec<String>> {
        self.read_blocking(read::paused_keys).await
    }

    async fn put_schedule(&self, schedule: Schedule) -> StoreResult<()> {
        self.write(move |w| w.put_schedule(&schedule)).await
    }

    async fn get_schedule(&self, name: &str) -> StoreResult<Option<Schedule>> {
        read::get_schedule(&*self.cell.get()?, name)
    }

    async fn list_schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.read_blocking(read::list_schedules).await
    }

    async fn delete_schedule(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        self.write(move |w| w.delete_schedule(&name)).await
    }

    async fn mark_schedule_fired(&self, name: &str, occurrence: Millis) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |w| w.mark_schedule_fired(&name, occurrence))
            .await
    }

    async fn kv_get(&self, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        read::kv_get(&*self.cell.get()?, plugin, key)
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>, at: Millis) -> StoreResult<()> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.write(move |w| w.kv_set(&plugin, &key, &value, at))
            .await
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> StoreResult<bool> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.write(move |w| w.kv_delete(&plugin, &key)).await
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<KvEntryMeta>> {
        let (plugin, prefix) = (plugin.to_owned(), prefix.to_owned());
        self.read_blocking(move |db| read::kv_list(db, &plugin, &prefix, limit))
            .await
    }

    async fn kv_usage(&self, plugin: &str) -> StoreResult<u64> {
        let plugin = plugin.to_owned();
        self.read_blocking(move |db| read::kv_usage(db, &plugin))
            .await
    }

    async fn state_counts(&self) -> StoreResult<StateCounts> {
        read::state_counts(&*self.cell.get()?)
    }

    async fn purge_finished(
        &self,
        before: Millis,
        after: Option<&str>,
        scan: usize,
    ) -> StoreResult<Purged> {
        let after = after.map(str::to_owned);
        self.write(move |w| w.purge_finished(before, after.as_deref(), scan))
            .await
    }

    async fn health(&self) -> StoreResult<()> {
        self.check_space()?;
        if self.cell.broken().is_none() {
            return Ok(());
        }
        // A write reopens the file first; it succeeds only once writes work again.
        self.write(|w| w.probe()).await
    }
}
