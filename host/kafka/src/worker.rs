//! One owned partition: read a batch from its queue, decode, persist in the store, tell the
//! listener, *then* commit the batch's offsets: at most every [`COMMIT_EVERY`] (the position
//! when the partition is revoked is committed then). A commit is a write to Kafka's offsets
//! log: one per small batch cost the broker more CPU than the records did at a steady rate.
//! Records persisted but not yet committed are read again by the partition's next owner after
//! a crash or a lost assignment, and deduplicated by the store.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kairos_core::model::{EnqueueOutcome, NewTask, Task};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};

use crate::record::{self, RecordMeta};
use crate::source::{Ctx, Rd, Shared};

/// Most time between offset commits while records are persisted.
pub(crate) const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// What a worker leaves behind.
pub(crate) struct WorkerExit {
    /// The offset after the last record persisted (what to commit), if any was.
    pub persisted_next: Option<i64>,
}

/// A partition's offsets while its worker runs.
struct Offsets {
    /// The offset after the last record persisted, if any was.
    persisted_next: Option<i64>,
    /// The last offset whose commit librdkafka took.
    committed: Option<i64>,
    /// When a commit was last tried (or the worker started).
    tried_at: Instant,
}

impl Offsets {
    fn new() -> Self {
        Self {
            persisted_next: None,
            committed: None,
            tried_at: Instant::now(),
        }
    }
}

struct Raw {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
}

/// The partition's worker was told to stop while a batch could not be persisted yet.
struct Stopped;

pub(crate) struct Worker {
    shared: Arc<Shared>,
    consumer: Arc<Rd>,
    queue: PartitionQueue<Ctx>,
    partition: u32,
    stop: watch::Receiver<bool>,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        consumer: Arc<Rd>,
        mut queue: PartitionQueue<Ctx>,
        partition: u32,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        queue.set_nonempty_callback(move || w.notify_one());
        Self {
            shared,
            consumer,
            queue,
            partition,
            stop,
            wake,
        }
    }

    pub async fn run(mut self) -> WorkerExit {
        // The partition's lease first: from here on its previous holder can change none of
        // its tasks. Waits (with backoff) while the store is down, unless told to stop.
        let node = self
            .shared
            .cfg
            .client_id
            .clone()
            .unwrap_or_else(|| self.shared.cfg.group.clone());
        tokio::select! {
            _ = self.shared.listener.acquiring(self.partition) => {}
            _ = self.stop.changed() => {}
        }
        if *self.stop.borrow() {
            return WorkerExit {
                persisted_next: None,
            };
        }
        let mut delay = Duration::from_millis(200);
        let lease = loop {
            match self.shared.store.acquire_lease(self.partition, &node).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "cannot take the partition's lease yet; retrying in {:.1} s", delay.as_secs_f64());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                    if *self.stop.borrow() {
                        return WorkerExit {
                            persisted_next: None,
                        };
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.shared.listener.assigned(lease).await;
        let mut offsets = Offsets::new();
        while !*self.stop.borrow() {
            let batch = self.drain();
            let Some(last) = batch.last().map(|r| r.offset) else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.stop.changed() => {}
                    // In case a wake-up was missed; the queue is cheap to poll.
                    _ = tokio::time::sleep(COMMIT_EVERY) => {}
                }
                // Idle: what was persisted since the last commit is committed once it is due
                // (by the sleep above at the latest).
                if !*self.stop.borrow() {
                    self.commit_if_due(&mut offsets);
                }
                continue;
            };
            let tasks = self.decode(batch);
            if !tasks.is_empty() {
                let Ok(created) = self.persist(tasks).await else {
                    break;
                };
                if !created.is_empty() {
                    self.shared.listener.persisted(created).await;
                }
            }
            offsets.persisted_next = Some(last + 1);
            self.commit_if_due(&mut offsets);
        }
        self.shared.listener.revoked(self.partition).await;
        WorkerExit {
            persisted_next: offsets.persisted_next,
        }
    }

    /// Takes what the partition's queue holds, up to `max_batch` records, without waiting.
    fn drain(&self) -> Vec<Raw> {
        let mut out = Vec::new();
        while out.len() < self.shared.cfg.max_batch {
            match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => out.push(Raw {
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis(),
                }),
                Some(Err(e)) => {
                    tracing::warn!(partition = self.partition, "Kafka partition queue: {e}");
                    break;
                }
            }
        }
        out
    }

    fn decode(&self, batch: Vec<Raw>) -> Vec<NewTask> {
        let c = &self.shared.counters;
        let cfg = &self.shared.cfg;
        c.consumed.fetch_add(batch.len() as u64, Relaxed);
        let now = now_ms();
        let mut tasks = Vec::with_capacity(batch.len());
        for r in batch {
            let meta = RecordMeta {
                topic: &cfg.topic,
                partition: self.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                message_key: r.key.as_deref(),
            };
            match record::decode(
                r.value.as_deref(),
                &meta,
                cfg.partitions,
                &cfg.record_defaults,
                now,
            ) {
                Ok(d) => {
                    if d.misrouted {
                        c.misrouted.fetch_add(1, Relaxed);
                        tracing::warn!(
                            topic = %cfg.topic, partition = self.partition, offset = r.offset, key = %d.task.key,
                            "record's key hashes to another partition (producer not using Kafka's murmur2 partitioner); it runs on the partition it was written to"
                        );
                    }
                    tasks.push(d.task);
                }
                Err(e) => {
                    c.malformed.fetch_add(1, Relaxed);
                    tracing::warn!(topic = %cfg.topic, partition = self.partition, offset = r.offset, "skipping malformed task record: {e}");
                }
            }
        }
        tasks
    }

    /// Persists the batch, retrying transient store errors until it succeeds or the worker is
    /// stopped. A batch the store refuses outright is retried record by record, and records
    /// refused again are skipped (logged, counted), so one bad record never blocks the
    /// partition.
    async fn persist(&mut self, tasks: Vec<NewTask>) -> Result<Vec<Task>, Stopped> {
        match self.enqueue_retrying(tasks.clone()).await? {
            Ok(outcomes) => return Ok(self.count(outcomes)),
            Err(e) if tasks.len() == 1 => {
                self.reject(&tasks[0], &e);
                return Ok(Vec::new());
            }
            Err(e) => tracing::warn!(
                partition = self.partition,
                "store refused a batch, retrying one by one: {e}"
            ),
        }
        let mut created = Vec::new();
        for t in tasks {
            match self.enqueue_retrying(vec![t.clone()]).await? {
                Ok(outcomes) => created.extend(self.count(outcomes)),
                Err(e) => self.reject(&t, &e),
            }
        }
        Ok(created)
    }

    /// `Ok(Err(_))`: a permanent store error.
    async fn enqueue_retrying(
        &mut self,
        batch: Vec<NewTask>,
    ) -> Result<Result<Vec<EnqueueOutcome>, String>, Stopped> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.shared.store.enqueue(batch.clone()).await {
                Ok(o) => return Ok(Ok(o)),
                Err(e) if e.is_transient() => {
                    self.shared.counters.store_retries.fetch_add(1, Relaxed);
                    tracing::warn!(
                        partition = self.partition,
                        "store unavailable, retrying in {delay:?}: {e}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                    if *self.stop.borrow() {
                        // Not committed: the partition's next owner reads these records again.
                        return Err(Stopped);
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
    }

    /// Counts the outcomes; returns the tasks to hand to the scheduler: the created ones and
    /// duplicates that are still pending. A duplicate may be the task of an earlier try of
    /// this very batch whose answer was lost (a store timeout): it was never handed over, and
    /// left out it would sit behind the window's cursor while its key's later tasks ran.
    fn count(&self, outcomes: Vec<EnqueueOutcome>) -> Vec<Task> {
        let c = &self.shared.counters;
        let mut deliver = Vec::with_capacity(outcomes.len());
        let mut created = 0u64;
        for o in outcomes {
            match o {
                EnqueueOutcome::Created(t) => {
                    created += 1;
                    deliver.push(t);
                }
                EnqueueOutcome::Duplicate(t) => {
                    c.duplicates.fetch_add(1, Relaxed);
                    if t.is_pending() {
                        deliver.push(t);
                    }
                }
            }
        }
        c.created.fetch_add(created, Relaxed);
        deliver
    }

    fn reject(&self, t: &NewTask, e: &str) {
        self.shared.counters.rejected.fetch_add(1, Relaxed);
        tracing::error!(partition = self.partition, id = %t.id, key = %t.key, "store refused task record, skipping it: {e}");
    }

    /// Commits the persisted position if it is ahead of the committed one and the last try
    /// was at least [`COMMIT_EVERY`] ago. A commit librdkafka would not take is tried again a
    /// period later.
    fn commit_if_due(&self, o: &mut Offsets) {
        let Some(next) = o.persisted_next else {
            return;
        };
        if o.committed == Some(next) || o.tried_at.elapsed() < COMMIT_EVERY {
            return;
        }
        if self.commit(next) {
            o.committed = Some(next);
        }
        o.tried_at = Instant::now();
    }

    /// Asynchronous commit (librdkafka reports no result for it; a failed one only means the
    /// records are read again and deduplicated). A revoke commits the final position
    /// synchronously. False when librdkafka did not take it (the caller tries again later,
    /// so an idle partition's position is not left behind).
    fn commit(&self, next: i64) -> bool {
        let mut tpl = TopicPartitionList::new();
        let topic = &self.shared.cfg.topic;
        if let Err(e) = tpl.add_partition_offset(topic, self.partition as i32, Offset::Offset(next))
        {
            tracing::warn!(partition = self.partition, "offset commit not built: {e}");
            return false;
        }
        self.shared.counters.commits.fetch_add(1, Relaxed);
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => true,
            Err(e) => {
                self.shared.counters.commit_failures.fetch_add(1, Relaxed);
                tracing::warn!(partition = self.partition, "offset commit not sent: {e}");
                false
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
