//! Group commit: one OS thread owns the write side of the database. Callers send operations
//! over a bounded channel; the thread drains whatever is queued (up to `max_batch` operations),
//! applies them to one staged view of the database ([`super::staged`]), commits their writes
//! as ONE write batch (one fsync), and only then answers every operation of the batch.
//! Throughput therefore does not pay one fsync per operation, and no caller hears `Ok` before
//! its change is durable.
//!
//! Operations are all-or-nothing: each one checks its preconditions before it mutates, and
//! when one fails after it has already staged writes (a decode error midway, a storage error,
//! a panic) those writes are undone, that operation is answered with its error, and the rest
//! of the batch goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::cell::DbCell;
use super::ops::WriteTables;
use super::staged::Staged;
use super::tables::DbResult;
use kairos_core::store::{StoreError, StoreResult};

/// One queued write: applied to a batch (more than once if a failed commit is retried on a
/// reopened database), answered once after the commit.
trait WriteOp: Send {
    /// Runs the operation and keeps its result. Returns `false` if it failed.
    fn apply(&mut self, w: &mut WriteTables<'_>) -> bool;
    /// Delivers the kept result if the batch committed, else the commit error.
    fn reply(self: Box<Self>, commit: &StoreResult<()>);
}

struct Op<T, F> {
    f: F,
    result: Option<StoreResult<T>>,
    tx: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnMut(&mut WriteTables<'_>) -> StoreResult<T> + Send,
{
    fn apply(&mut self, w: &mut WriteTables<'_>) -> bool {
        let result = match catch_unwind(AssertUnwindSafe(|| (self.f)(w))) {
            Ok(r) => r,
            Err(_) => {
                // Whatever it staged is undone by the caller.
                Err(StoreError::Other(
                    "embedded store operation panicked".into(),
                ))
            }
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reply(self: Box<Self>, commit: &StoreResult<()>) {
        let result = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Other("operation was not applied".into()))),
            Err(e) => Err(copy_err(e)),
        };
        // The caller may have gone away; its change is durable regardless.
        let _ = self.tx.send(result);
    }
}

fn copy_err(e: &StoreError) -> StoreError {
    e.clone()
}

/// Counters of the writer thread (for benchmarks and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches committed.
    pub commits: u64,
    /// Operations answered from committed batches.
    pub ops: u64,
    /// Time the writer spent applying the operations of committed batches, µs.
    pub apply_micros: u64,
    /// Time the writer spent committing them (page writes and fsync), µs.
    pub commit_micros: u64,
    /// Commits that took [`SLOW_COMMIT`] or longer (applying and committing): mostly a sync
    /// the disk stalled, which every operation of the commit waited for.
    pub slow_commits: u64,
    /// The longest commit so far, µs.
    pub max_commit_micros: u64,
}

/// A commit this long or longer is counted in [`CommitStats::slow_commits`].
pub const SLOW_COMMIT: Duration = Duration::from_millis(50);
/// A commit this long or longer is also logged (a disk this slow delays every task).
const LOGGED_COMMIT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Stats {
    commits: AtomicU64,
    ops: AtomicU64,
    apply_micros: AtomicU64,
    commit_micros: AtomicU64,
    slow_commits: AtomicU64,
    max_commit_micros: AtomicU64,
}

impl Stats {
    pub(super) fn snapshot(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            apply_micros: self.apply_micros.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            slow_commits: self.slow_commits.load(Ordering::Relaxed),
            max_commit_micros: self.max_commit_micros.load(Ordering::Relaxed),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The callers' side of the writer thread.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Box<dyn WriteOp>>>,
    thread: Option<JoinHandle<()>>,
    pub(super) stats: Arc<Stats>,
}

impl Writer {
    pub(super) fn spawn(cell: Arc<DbCell>, next_seq: u64, max_batch: usize) -> StoreResult<Self> {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch);
        let stats = Arc::new(Stats::default());
        let mut state = WriterThread {
            cell,
            rx,
            max_batch,
            next_seq,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kairos-store-writer".into())
            .spawn(move || state.run())
            .map_err(|e| StoreError::Other(format!("starting the store writer thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues `f` for the next group commit and waits until that commit is durable.
    pub(super) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut WriteTables<'_>) -> StoreResult<T> + Send + 'static,
    {
        let stopped = || StoreError::Unavailable("embedded store writer has stopped".into());
        let sender = self.tx.as_ref().ok_or_else(stopped)?;
        let (tx, rx) = oneshot::channel();
        let op = Op {
            f,
            result: None,
            tx,
        };
        sender.send(Box::new(op)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and exit; joining it
        // releases its handle on the database so the file can be reopened at once.
        self.tx.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("embedded store writer thread panicked");
        }
        let s = self.stats.snapshot();
        tracing::info!(
            commits = s.commits,
            ops = s.ops,
            apply_micros = s.apply_micros,
            commit_micros = s.commit_micros,
            "embedded store writer stopped"
        );
    }
}

struct WriterThread {
    cell: Arc<DbCell>,
    rx: mpsc::Receiver<Box<dyn WriteOp>>,
    max_batch: usize,
    /// The next sequence number as of the last commit.
    next_seq: u64,
    stats: Arc<Stats>,
}

impl WriterThread {
    fn run(&mut self) {
        let mut batch: Vec<Box<dyn WriteOp>> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    /// Applies and commits `batch`, answering (and draining) every operation in it.
    fn commit_batch(&mut self, batch: &mut Vec<Box<dyn WriteOp>>) {
        // After an I/O failure fjall refuses every write until the database is opened again:
        // the batch is retried once on a reopened database.
        let mut reopened = false;
        loop {
            if self.cell.broken().is_some() {
                if let Err(e) = self.recover() {
                    let err = Err(e);
                    for op in batch.drain(..) {
                        op.reply(&err);
                    }
                    return;
                }
                reopened = true;
            }
            match self.run_batch(batch) {
                Ok(next_seq) => {
                    self.cell.mark_healthy();
                    self.next_seq = next_seq;
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .ops
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for op in batch.drain(..) {
                        op.reply(&Ok(()));
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, ops = batch.len(), "embedded store commit failed");
                    if e.is_transient() {
                        self.cell.mark_broken(&e);
                        if !reopened {
                            continue;
                        }
                    }
                    let err = Err(e);
                    for op in batch.drain(..) {
                        op.reply(&err);
                    }
                    return;
                }
            }
        }
    }

    /// Reopens the database after a failed write, and reads the sequence back from it.
    fn recover(&mut self) -> StoreResult<()> {
        let db = self.cell.reopen()?;
        self.next_seq = super::init(&db)?;
        Ok(())
    }

    /// Applies and commits `batch`; the next sequence number after it.
    fn run_batch(&self, batch: &mut [Box<dyn WriteOp>]) -> StoreResult<u64> {
        let db = self.cell.get()?;
        let staged = Staged::new(db.db.read_tx(), &db.ks);
        let mut w = WriteTables::new(staged, &db.ks, self.next_seq);
        let applying = Instant::now();
        for op in batch.iter_mut() {
            let mark = w.mark();
            // A failed operation's answer is its error; it must leave nothing behind.
            if op.apply(&mut w) {
                w.keep();
            } else {
                w.undo_to(mark);
            }
        }
        let (staged, next_seq) = w.finish()?;
        let committing = Instant::now();
        staged.into_batch(db.db.inner()).commit().db()?;
        let s = &self.stats;
        s.apply_micros
            .fetch_add(micros(committing - applying), Ordering::Relaxed);
        s.commit_micros
            .fetch_add(micros(committing.elapsed()), Ordering::Relaxed);
        let took = applying.elapsed();
        s.max_commit_micros
            .fetch_max(micros(took), Ordering::Relaxed);
        if took >= SLOW_COMMIT {
            s.slow_commits.fetch_add(1, Ordering::Relaxed);
            if took >= LOGGED_COMMIT {
                tracing::warn!(
                    ms = micros(took) / 1000,
                    ops = batch.len(),
                    "embedded store: a commit took over a second (the disk's sync stalled?); every task in it waited"
                );
            }
        }
        Ok(next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation that fails or panics after staging writes leaves none of them behind,
    /// and the others (queued together, so mostly in the same batch) keep theirs.
    #[tokio::test]
    async fn a_failed_operation_is_undone_and_its_batch_neighbours_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cell = Arc::new(DbCell::open(&dir.path().join("db"), 1 << 20).expect("open"));
        let writer = Writer::spawn(cell.clone(), 1, 64).expect("writer");
        let (a, b, c, d) = tokio::join!(
            writer.write(|w| w.set_key_paused("a", true)),
            writer.write(|w| {
                w.set_key_paused("b", true)?;
                Err::<(), _>(StoreError::Other("failed midway".into()))
            }),
            writer.write(|w| -> StoreResult<()> {
                w.set_key_paused("c", true)?;
                w.set_key_paused("a", false)?;
                panic!("op panics after staging writes")
            }),
            writer.write(|w| w.set_key_paused("d", true)),
        );
        assert!(a.is_ok() && d.is_ok(), "{a:?} {d:?}");
        assert!(
            matches!(b, Err(StoreError::Other(ref m)) if m == "failed midway"),
            "{b:?}"
        );
        assert!(
            matches!(c, Err(StoreError::Other(ref m)) if m.contains("panicked")),
            "{c:?}"
        );
        drop(writer);
        let db = cell.get().expect("db");
        assert_eq!(
            super::super::read::paused_keys(&db).expect("read"),
            ["a", "d"]
        );
    }
}
