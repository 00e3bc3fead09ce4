//! Kairos task store on Apache Cassandra 5 (or ScyllaDB) through the `scylla` driver, for the
//! cluster deployment. Implements [`TaskStore`](kairos_core::store::TaskStore), leases
//! included (passes the shared conformance suite); see [`fencing`] for how a partition's lease
//! epoch guards every change of its tasks.
//!
//! Schema: see [`schema`]. Design choices, in short:
//! - The task row (`task_rows`, found from an id that names its home, through `task_homes`
//!   for any other id, or through an index row that names its home) is the truth. Index tables (`pending`, `tasks_by_key`) are written
//!   *before* a change that adds an entry and cleaned *after* a change that removes one, and
//!   every index hit is checked against the task row, so a crash between two writes leaves at
//!   worst a stale index row (skipped, and deleted once older than [`STALE_GRACE_US`]), never a
//!   pending task the window cannot find.
//! - Every state change of a task is a lightweight transaction `IF rev = ?` (compare-and-set
//!   on a revision column), so the trait's `Conflict` rules are exact even when an operator
//!   cancels a task the scheduler is starting. The scheduler's starts and finishes come in
//!   batches, and the changes of one batch whose rows share a home are one conditional batch:
//!   one Paxos round (see [`schema`] and [`transitions`]). A finish records its attempt in
//!   the row by that same round. Enqueue is not a transaction: the replay check (`IN` reads of
//!   the ids' homes, or of `task_homes` for ids that do not name theirs) and plain writes, all in requests shared by many tasks (`spread`); only
//!   tasks with a uniqueness key add one `INSERT … IF NOT EXISTS` on the uniqueness index.
//! - `seq` comes from blocks reserved with an LWT on the `counters` row (one LWT per
//!   [`CassandraOptions::seq_block`] tasks); a store's seqs are strictly increasing and seqs
//!   are unique across stores. Taking a lease ([`fencing`]) starts a fresh block, so the new
//!   owner's tasks sort after everything the previous owner enqueued.
//! - The pending window is bucketed by `(partition, floor(due_at / bucket_ms))`; the
//!   `pending_buckets` directory lists non-empty buckets, so a task overdue by years is found
//!   on the first load. Empty buckets leave the directory when a load scans them whole (with a
//!   `USING TIMESTAMP` delete that cannot erase a concurrent re-registration).
//!
//! Cost notes: `list` without a key scans the whole `task_rows` table (an operator query); with a
//! key it walks `tasks_by_key`. `state_counts` reads the `state` column of every task (paged):
//! its callers cache the answer. Nothing expires: finished tasks, their attempts and index
//! rows stay until an operator removes them (no TTL yet).

mod batch;
mod enqueue;
mod error;
pub mod fencing;
mod misc;
mod nodes;
mod retention;
mod rowcache;
mod rows;
pub mod schema;
mod spread;
mod stmts;
mod store_impl;
mod transitions;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kairos_core::ids::home_named;
use kairos_core::store::{StoreError, StoreResult};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use tokio::sync::Mutex;

use error::{Decode, Exec, session_err};
use rows::{Stored, TaskRow};
use stmts::Stmts;

/// Index rows whose task no longer matches them are deleted only once they are older than
/// this (microseconds): younger ones may belong to an operation still in flight. It also
/// bounds the clock skew between nodes that the bucket directory tolerates.
pub const STALE_GRACE_US: i64 = 60_000_000;

/// Keyspace replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// One datacenter (tests, single node: `rf = 1`).
    SimpleStrategy { rf: u32 },
    /// Replicas per datacenter, e.g. `{"dc1": 3, "dc2": 3}`; use with `local_quorum`.
    NetworkTopology(BTreeMap<String, u32>),
}

/// How to reach and lay out the store.
#[derive(Debug, Clone)]
pub struct CassandraOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication: Replication,
    /// `one`, `two`, `three`, `quorum`, `all`, `local_quorum`, `each_quorum`, `local_one`.
    /// LWTs use `local_serial` with the `local_*` levels, else `serial`.
    pub consistency: String,
    /// Create the keyspace and tables on connect (`CREATE … IF NOT EXISTS`).
    pub migrate_on_start: bool,
    /// Width of a pending-window bucket in ms. Keep tasks per partition per bucket under
    /// ~50,000 (tombstones of executed tasks are read when a window is loaded from the start).
    pub bucket_ms: i64,
    /// Sequence numbers reserved per LWT.
    pub seq_block: u64,
    /// Concurrent statements per `enqueue` call.
    pub concurrency: usize,
    pub request_timeout: Duration,
}

impl Default for CassandraOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "kairos".into(),
            replication: Replication::SimpleStrategy { rf: 1 },
            consistency: "local_quorum".into(),
            migrate_on_start: false,
            bucket_ms: 60_000,
            seq_block: 1_000,
            concurrency: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

fn parse_consistency(s: &str) -> StoreResult<(Consistency, SerialConsistency)> {
    let c = match s.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => {
            return Err(StoreError::Other(format!(
                "unknown consistency level {other:?}"
            )));
        }
    };
    let serial = if s.to_ascii_lowercase().starts_with("local_") {
        SerialConsistency::LocalSerial
    } else {
        SerialConsistency::Serial
    };
    Ok((c, serial))
}

/// The next block of sequence numbers this store hands out: `[next, end)`.
#[derive(Debug, Default)]
struct SeqBlock {
    next: u64,
    end: u64,
}

/// [`kairos_core::store::TaskStore`] on Cassandra.
///
/// Cloning is cheap: clones share the connection, the reserved sequence block and the lease
/// state (known epochs, claim batchers).
#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    st: Arc<Stmts>,
    opts: Arc<CassandraOptions>,
    seq: Arc<Mutex<SeqBlock>>,
    leases: Arc<fencing::Leases>,
    /// Rows read or written last, the expected rows of the next compare-and-set.
    rows: Arc<rowcache::RowCache>,
    /// Lightweight transactions (Paxos rounds) sent to change task rows: one per single
    /// compare-and-set, one per conditional batch.
    task_lwts: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore")
            .field("keyspace", &self.opts.keyspace)
            .field("nodes", &self.opts.nodes)
            .finish_non_exhaustive()
    }
}

impl CassandraStore {
    /// Connects, migrates if asked, and prepares every statement (which fails with a clear
    /// error if the tables are missing: run `kairos migrate`).
    pub async fn connect(opts: CassandraOptions) -> Result<Self, StoreError> {
        schema::check_identifier("keyspace", &opts.keyspace)?;
        if opts.bucket_ms <= 0 || opts.seq_block == 0 || opts.concurrency == 0 {
            return Err(StoreError::Other(
                "bucket_ms, seq_block and concurrency must be positive".into(),
            ));
        }
        let (consistency, serial) = parse_consistency(&opts.consistency)?;
        let session = SessionBuilder::new()
            .known_nodes(&opts.nodes)
            .connection_timeout(opts.request_timeout)
            .build()
            .await
            .map_err(session_err)?;
        if opts.migrate_on_start {
            schema::migrate(&session, &opts).await?;
        }
        if schema::old_tasks_uncopied(&session, &opts.keyspace).await? {
            return Err(StoreError::Other(format!(
                "keyspace {} holds tasks of an earlier release that are not copied to \
                 `task_rows` yet: stop the older nodes and run `kairos migrate` (or start one \
                 node with migrate_on_start)",
                opts.keyspace
            )));
        }
        let st = Stmts::prepare(&session, &opts.keyspace, consistency, serial)
            .await
            .map_err(|e| match e {
                StoreError::Other(m) => StoreError::Other(format!(
                    "{m} (are the tables there? run `kairos migrate` or set migrate_on_start)"
                )),
                e => e,
            })?;
        Ok(Self {
            session: Arc::new(session),
            st: Arc::new(st),
            opts: Arc::new(opts),
            seq: Arc::new(Mutex::new(SeqBlock::default())),
            leases: Arc::new(fencing::Leases::default()),
            rows: Arc::new(rowcache::RowCache::default()),
            task_lwts: Arc::default(),
        })
    }

    /// Creates the keyspace and tables if missing (idempotent).
    pub async fn migrate(&self) -> StoreResult<()> {
        schema::migrate(&self.session, &self.opts).await
    }

    /// Drops this store's keyspace with everything in it (tests).
    pub async fn drop_keyspace(&self) -> StoreResult<()> {
        self.session
            .query_unpaged(
                format!("DROP KEYSPACE IF EXISTS {}", self.opts.keyspace),
                (),
            )
            .await
            .exec()?;
        Ok(())
    }

    /// How many lightweight transactions (Paxos rounds) this store and its clones sent to
    /// change task rows so far: one per single compare-and-set, one per conditional batch.
    pub fn task_lwts(&self) -> u64 {
        self.task_lwts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_task_lwt(&self) {
        self.task_lwts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn options(&self) -> &CassandraOptions {
        &self.opts
    }

    pub(crate) fn bucket_of(&self, due_at: i64) -> i64 {
        due_at.div_euclid(self.opts.bucket_ms)
    }

    /// The stored task with its fencing epoch and revision: its home (named by its id, or
    /// read from `task_homes`), then its row.
    pub(crate) async fn load(&self, id: &str) -> StoreResult<Option<Stored>> {
        match self.home_of(id).await? {
            Some((partition, home)) => self.load_at(partition, home, id).await,
            None => Ok(None),
        }
    }

    /// Where the task's row lives, `(partition, home)`, if it was ever written; for an id
    /// that names its home (see [`kairos_core::ids`]), that home, whether or not a row is
    /// there (without a read).
    pub(crate) async fn home_of(&self, id: &str) -> StoreResult<Option<(i64, i64)>> {
        if let Some((partition, home)) = home_named(id) {
            return Ok(Some((i64::from(partition), home)));
        }
        let res = self
            .session
            .execute_unpaged(&self.st.home_get, (id,))
            .await
            .exec()?;
        res.into_rows_result()
            .decode()?
            .maybe_first_row::<(i64, i64)>()
            .decode()
    }

    /// The task row at `(partition, home)`, when the caller knows where it lives.
    pub(crate) async fn load_at(
        &self,
        partition: i64,
        home: i64,
        id: &str,
    ) -> StoreResult<Option<Stored>> {
        let res = self
            .session
            .execute_unpaged(&self.st.task_get, (partition, home, id))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<TaskRow>()
            .decode()?;
        row.map(TaskRow::into_stored).transpose()
    }

    /// Runs `st` once per value as one unlogged batch (the plain statement for one value). The
    /// callers keep a batch to one Cassandra partition (a single mutation), or to a few that
    /// share a replica ([`crate::spread`]).
    pub(crate) async fn write_batch<V: scylla::serialize::row::SerializeRow>(
        &self,
        st: &scylla::statement::prepared::PreparedStatement,
        values: Vec<V>,
    ) -> StoreResult<()> {
        match values.as_slice() {
            [] => {}
            [one] => {
                self.session.execute_unpaged(st, one).await.exec()?;
            }
            _ => {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in 0..values.len() {
                    batch.append_statement(st.clone());
                }
                if let Some(c) = st.get_consistency() {
                    batch.set_consistency(c);
                }
                self.session.batch(&batch, values).await.exec()?;
            }
        }
        Ok(())
    }

    /// Reserves `n` consecutive sequence numbers, above every number any store reserved
    /// before this call began.
    pub(crate) async fn alloc_seqs(&self, n: u64) -> StoreResult<u64> {
        let mut block = self.seq.lock().await;
        if block.end - block.next < n {
            let size = self.opts.seq_block.max(n);
            let mut current = self.counter_value().await?;
            let mut tries = 0;
            loop {
                let next = current
                    .checked_add(size)
                    .filter(|v| *v < i64::MAX as u64)
                    .ok_or_else(|| StoreError::Other("sequence numbers exhausted".into()))?;
                let res = self
                    .session
                    .execute_unpaged(
                        &self.st.counter_cas,
                        (next as i64, "task_seq", current as i64),
                    )
                    .await
                    .exec()?;
                let lwt = Lwt::parse(res)?;
                if lwt.applied {
                    *block = SeqBlock {
                        next: current,
                        end: next,
                    };
                    break;
                }
                tries += 1;
                if tries > 100 {
                    return Err(StoreError::Unavailable(
                        "sequence allocation contended".into(),
                    ));
                }
                current = match lwt.get("next") {
                    Some(CqlValue::BigInt(v)) if *v >= 0 => *v as u64,
                    _ => self.counter_value().await?,
                };
            }
        }
        let first = block.next;
        block.next += n;
        Ok(first)
    }

    async fn counter_value(&self) -> StoreResult<u64> {
        let res = self
            .session
            .execute_unpaged(&self.st.counter_get, ("task_seq",))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(i64,)>()
            .decode()?;
        match row {
            Some((v,)) if v >= 0 => Ok(v as u64),
            Some((v,)) => Err(StoreError::Corrupt(format!("sequence counter is {v}"))),
            None => Err(StoreError::Corrupt(
                "sequence counter row missing (run `kairos migrate`)".into(),
            )),
        }
    }

    /// Forgets the reserved block, so the next task takes a fresh one (after a partition
    /// changed hands: the new owner's tasks then sort after the old owner's).
    pub(crate) async fn reset_seq_block(&self) {
        *self.seq.lock().await = SeqBlock::default();
    }
}

/// Microseconds since the Unix epoch (the unit of Cassandra write timestamps).
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The answer of a lightweight transaction: `[applied]` and, when not applied, the current
/// values of the columns it tested.
pub(crate) struct Lwt {
    pub applied: bool,
    cols: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    pub(crate) fn parse(res: QueryResult) -> StoreResult<Self> {
        let rows = res.into_rows_result().decode()?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .decode()?
            .ok_or_else(|| StoreError::Corrupt("LWT answered without a row".into()))?;
        let cols: Vec<(String, Option<CqlValue>)> = names.into_iter().zip(row.columns).collect();
        let applied = match cols.first() {
            Some((name, Some(CqlValue::Boolean(b)))) if name == "[applied]" => *b,
            _ => return Err(StoreError::Corrupt("LWT answer lacks [applied]".into())),
        };
        Ok(Self { applied, cols })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&CqlValue> {
        self.cols
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }
}
