//! The consumer side: one consumer group over the task topic, one task per owned partition.
//!
//! # Threads and the rebalance bridge
//! librdkafka runs rebalance callbacks on whichever thread polls the consumer's main queue.
//! Here that is a dedicated OS thread (`kairos-kafka-poll`) that does nothing else: it polls
//! the main queue (rebalances, commit results, errors) and may block without stalling the
//! async runtime.
//!
//! - **Assign** (before librdkafka's `incremental_assign`): for each newly assigned partition
//!   the poll thread splits the partition's messages into their own queue
//!   (`rd_kafka_queue_get_partition` + forward to none; librdkafka keeps that app-set
//!   forwarding across the fetch start, so no message of the partition ever reaches the main
//!   queue) and spawns the partition's worker on the runtime. The worker first awaits
//!   [`PartitionListener::assigned`], then consumes. Partitions already owned are untouched.
//! - **Revoke** (before `incremental_unassign`): the poll thread tells the revoked partitions'
//!   workers to stop, blocks (it is not a runtime thread) until each has finished its
//!   in-flight batch and returned from [`PartitionListener::revoked`], commits their persisted
//!   positions synchronously (unless the assignment was lost), and only then returns, letting
//!   the rebalance proceed. Other partitions keep running throughout.
//! - **Shutdown**: the poll thread closes the consumer, which revokes everything through the
//!   same path (drain, commit) and leaves the group, and then ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_core::store::TaskStore;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use crate::admin::{apply_extra, base_config, ensure_topic};
use crate::worker::{Worker, WorkerExit};
use crate::{KafkaConfig, KafkaError};

/// What the host (its scheduler) is told about partitions: the shared contract of every
/// partition source ([`kairos_core::ownership::PartitionListener`]). Called from async tasks,
/// never from librdkafka's threads; `assigned` comes with the partition's lease, taken from the
/// store before any of its records is consumed.
pub use kairos_core::ownership::PartitionListener;

/// Counters since the source started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Records read from Kafka.
    pub consumed: u64,
    /// Tasks newly stored.
    pub created: u64,
    /// Records whose task existed already (same id or uniqueness key): replays, duplicates.
    pub duplicates: u64,
    /// Records skipped because they could not be decoded (logged with topic/partition/offset).
    pub malformed: u64,
    /// Records whose key hashes to another partition than the one they were written to.
    pub misrouted: u64,
    /// Records the store refused permanently (logged, skipped).
    pub rejected: u64,
    /// Store calls retried after a transient error.
    pub store_retries: u64,
    /// Offset commits sent (asynchronous, at most every 500 ms while records are persisted and
    /// when a partition goes idle; synchronous on revoke).
    pub commits: u64,
    /// Commits that failed (seen on revoke/shutdown) or could not be sent; the records are
    /// read again by the partition's next owner and deduplicated by the store.
    pub commit_failures: u64,
    pub assigned: u64,
    pub revoked: u64,
    /// Messages that reached the main queue instead of their partition's (should stay 0).
    pub stray: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub consumed: AtomicU64,
    pub created: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    pub misrouted: AtomicU64,
    pub rejected: AtomicU64,
    pub store_retries: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub assigned: AtomicU64,
    pub revoked: AtomicU64,
    pub stray: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SourceStats {
        let g = |a: &AtomicU64| a.load(Relaxed);
        SourceStats {
            consumed: g(&self.consumed),
            created: g(&self.created),
            duplicates: g(&self.duplicates),
            malformed: g(&self.malformed),
            misrouted: g(&self.misrouted),
            rejected: g(&self.rejected),
            store_retries: g(&self.store_retries),
            commits: g(&self.commits),
            commit_failures: g(&self.commit_failures),
            assigned: g(&self.assigned),
            revoked: g(&self.revoked),
            stray: g(&self.stray),
        }
    }
}

/// What the poll thread, the context and the workers share.
pub(crate) struct Shared {
    pub cfg: KafkaConfig,
    pub store: Arc<dyn TaskStore>,
    pub listener: Arc<dyn PartitionListener>,
    pub counters: Counters,
    pub rt: tokio::runtime::Handle,
}

pub(crate) type Rd = BaseConsumer<Ctx>;

struct WorkerHandle {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<WorkerExit>,
}

pub(crate) struct Ctx {
    shared: Arc<Shared>,
    consumer: OnceLock<Weak<Rd>>,
    workers: Mutex<HashMap<u32, WorkerHandle>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac}: {msg}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Broker outages land here; librdkafka reconnects by itself.
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &Rd, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(tpl),
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(e) => tracing::warn!("Kafka rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // Only commits librdkafka reports back (not the workers' fire-and-forget ones).
        if let Err(e) = result {
            self.shared.counters.commit_failures.fetch_add(1, Relaxed);
            tracing::warn!(offsets = ?offsets.to_topic_map(), "Kafka offset commit failed (records will be re-read and deduplicated): {e}");
        }
    }

    fn main_queue_min_poll_interval(&self) -> rdkafka::util::Timeout {
        rdkafka::util::Timeout::After(Duration::from_millis(100))
    }
}

impl Ctx {
    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("Kafka assignment before the consumer was ready; ignored");
            return;
        };
        let topic = &self.shared.cfg.topic;
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for el in tpl.elements() {
            let Ok(partition) = u32::try_from(el.partition()) else {
                continue;
            };
            if el.topic() != topic || workers.contains_key(&partition) {
                continue;
            }
            let Some(queue) = consumer.split_partition_queue(topic, el.partition()) else {
                tracing::error!(partition, "cannot split the queue of partition {partition}");
                continue;
            };
            let (stop, stop_rx) = watch::channel(false);
            let worker = Worker::new(
                self.shared.clone(),
                consumer.clone(),
                queue,
                partition,
                stop_rx,
            );
            let join = self.shared.rt.spawn(worker.run());
            workers.insert(partition, WorkerHandle { stop, join });
            self.shared.counters.assigned.fetch_add(1, Relaxed);
            tracing::info!(topic = %topic, partition, "partition assigned");
        }
    }

    /// Runs on the poll thread: stops the partitions' workers, waits for them (persisting and
    /// `revoked` included), commits what they persisted, then lets the rebalance go on.
    fn revoke(&self, consumer: &Rd, tpl: &TopicPartitionList) {
        let topic = &self.shared.cfg.topic;
        let handles: Vec<(u32, WorkerHandle)> = {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            tpl.elements()
                .iter()
                .filter(|el| el.topic() == topic)
                .filter_map(|el| u32::try_from(el.partition()).ok())
                .filter_map(|p| workers.remove(&p).map(|h| (p, h)))
                .collect()
        };
        for (_, h) in &handles {
            let _ = h.stop.send(true);
        }
        let mut commit = TopicPartitionList::new();
        for (partition, h) in handles {
            match self.shared.rt.block_on(h.join) {
                Ok(exit) => {
                    if let Some(next) = exit.persisted_next {
                        let _ = commit.add_partition_offset(
                            topic,
                            partition as i32,
                            Offset::Offset(next),
                        );
                    }
                }
                Err(e) => tracing::error!(partition, "partition worker failed: {e}"),
            }
            self.shared.counters.revoked.fetch_add(1, Relaxed);
            tracing::info!(topic = %topic, partition, "partition revoked");
        }
        if commit.count() == 0 {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(
                "Kafka assignment lost (session expired): not committing; the new owner re-reads and deduplicates"
            );
            return;
        }
        self.shared.counters.commits.fetch_add(1, Relaxed);
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            self.shared.counters.commit_failures.fetch_add(1, Relaxed);
            tracing::warn!(
                "commit on revoke failed (records will be re-read and deduplicated): {e}"
            );
        }
    }

    fn has_workers(&self) -> bool {
        !self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn stop_all(&self) {
        let handles: Vec<(u32, WorkerHandle)> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, h) in &handles {
            let _ = h.stop.send(true);
        }
        for (_, h) in handles {
            let _ = self.shared.rt.block_on(h.join);
        }
    }
}

/// Consumes the task topic as a member of the consumer group. See the module docs.
pub struct KafkaSource {
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
    done: Option<oneshot::Receiver<()>>,
}

impl KafkaSource {
    /// Checks (or creates) the topic, joins the group and starts consuming. Must be called
    /// inside a Tokio runtime, whose handle runs the partition workers.
    pub async fn start(
        cfg: KafkaConfig,
        store: Arc<dyn TaskStore>,
        listener: Arc<dyn PartitionListener>,
    ) -> Result<Self, KafkaError> {
        cfg.validate()?;
        ensure_topic(&cfg).await?;
        let mut c: ClientConfig = base_config(&cfg);
        let session = cfg.session_timeout.as_millis().clamp(1_000, 3_600_000);
        c.set("group.id", &cfg.group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("enable.partition.eof", "false");
        apply_extra(&mut c, &cfg);
        let topic = cfg.topic.clone();
        let shared = Arc::new(Shared {
            cfg,
            store,
            listener,
            counters: Counters::default(),
            rt: tokio::runtime::Handle::current(),
        });
        let ctx = Ctx {
            shared,
            consumer: OnceLock::new(),
            workers: Mutex::new(HashMap::new()),
        };
        let consumer: Arc<Rd> = Arc::new(
            c.create_with_context(ctx)
                .map_err(|e| KafkaError::from_rd("creating consumer", e))?,
        );
        let ctx = consumer.context().clone();
        let _ = ctx.consumer.set(Arc::downgrade(&consumer));
        consumer
            .subscribe(&[&topic])
            .map_err(|e| KafkaError::from_rd("subscribing", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = oneshot::channel();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("kairos-kafka-poll".into())
            .spawn(move || poll_loop(consumer, thread_stop, done_tx))
            .map_err(|e| KafkaError::Other(format!("cannot start the Kafka poll thread: {e}")))?;
        Ok(Self {
            ctx,
            stop,
            done: Some(done),
        })
    }

    /// Partitions this node currently owns, sorted.
    pub fn owned(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .ctx
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    pub fn stats(&self) -> SourceStats {
        self.ctx.shared.counters.snapshot()
    }

    /// Stops consuming, drains and revokes every partition (listener `revoked` included),
    /// commits what was persisted, and leaves the group.
    /// Gives up (with an error log) after the session timeout plus a minute.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Relaxed);
        let limit = self.ctx.shared.cfg.session_timeout + Duration::from_secs(60);
        if let Some(done) = self.done.take()
            && tokio::time::timeout(limit, done).await.is_err()
        {
            tracing::error!("the Kafka source did not shut down within {limit:?}");
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Without `shutdown`, the poll thread still closes the consumer, in the background.
        self.stop.store(true, Relaxed);
    }
}

fn poll_loop(consumer: Arc<Rd>, stop: Arc<AtomicBool>, done: oneshot::Sender<()>) {
    let ctx = consumer.context().clone();
    while !stop.load(Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                ctx.shared.counters.stray.fetch_add(1, Relaxed);
                tracing::error!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "a message reached the consumer's main queue instead of its partition queue; it is not processed here and will be re-read after a rebalance if uncommitted"
                );
            }
            Some(Err(e)) => tracing::warn!("Kafka consumer: {e}"),
        }
    }
    // Close: librdkafka revokes the whole assignment through the rebalance callback (which
    // drains and commits each partition), then leaves the group.
    let deadline = Instant::now() + ctx.shared.cfg.session_timeout + Duration::from_secs(30);
    match consumer.close_queue() {
        Ok(()) => {
            while !consumer.closed() && Instant::now() < deadline {
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                    tracing::warn!("Kafka consumer: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("closing the Kafka consumer: {e}"),
    }
    if ctx.has_workers() {
        tracing::warn!(
            "partitions still owned when leaving the group; stopping them without a commit"
        );
        ctx.stop_all();
    }
    if consumer.closed() {
        // rdkafka's `Drop` closes the consumer once more and logs (through `log`, which the
        // host forwards to `tracing`) an error because it is closed already; silence that.
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            drop(consumer)
        });
    } else {
        // Dropping would wait for the close forever; leak the client instead.
        tracing::error!("the Kafka consumer did not close in time; abandoning it");
        std::mem::forget(consumer);
    }
    let _ = done.send(());
}

#[async_trait]
impl kairos_core::ownership::PartitionSource for KafkaSource {
    async fn shutdown(self: Box<Self>) {
        KafkaSource::shutdown(*self).await;
    }
}
