//! The embedded store's write pattern on three storage engines, to choose the next one by
//! measurement (issue 10): redb (what the store uses), fjall (an LSM tree with a journal) and
//! SQLite in WAL mode. Each engine gets the same tables and the same operations as the store's
//! writer thread, one durable (fsynced) commit per batch:
//! - enqueue, in commits of 1,000 tasks: the task record (checking the id is new), its
//!   `pending` entry `(partition, due, seq)` and its `by_key` entry `(key, due, seq)`;
//! - then the run, in commits of `--batch` operations, half of them starts (read the task,
//!   rewrite it) and half finishes (read the task, insert the attempt record, rewrite the task,
//!   remove the `pending` entry); a task's start and finish are in consecutive commits, tasks
//!   in enqueue order (the order a burst due at one moment runs in).
//!
//! It leaves out what is the same on every engine (the channel, the lease check, postcard),
//! so its figures are the engine's cost alone. Built only with the `engines` feature:
//!
//! ```text
//! cargo run --release -p kairos-embedded --features engines --bin engine-bench -- \
//!     [--tasks 100000] [--batch 200] [--runs 3] [--engines redb,fjall,sqlite] [--dir DIR]
//!     [--keep-pending]
//! ```
//! `--keep-pending`: finishes leave the `pending` entry in place (what removing it costs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[path = "common/proc_io.rs"]
mod proc_io;
use proc_io::written_bytes;

const ENQUEUE_BATCH: usize = 1_000;
const PARTITIONS: u64 = 64;
const KEYS: u64 = 1_000;
/// About the size of a stored no-op task (postcard), and of an attempt record.
const TASK_BYTES: usize = 160;
const ATTEMPT_BYTES: usize = 60;

#[derive(Clone, Copy)]
enum Table {
    Tasks = 0,
    Pending = 1,
    ByKey = 2,
    Attempts = 3,
}
const TABLES: [&str; 4] = ["tasks", "pending", "by_key", "attempts"];

/// The operations of one write transaction.
trait Txn {
    fn get(&mut self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, t: Table, k: &[u8], v: &[u8]) -> Result<()>;
    fn del(&mut self, t: Table, k: &[u8]) -> Result<()>;
}

trait Engine {
    /// Runs `f` in one write transaction and commits it durably (fsynced).
    fn commit(&mut self, f: &mut dyn FnMut(&mut dyn Txn) -> Result<()>) -> Result<()>;
}

// ---- redb ----

const REDB_TABLES: [redb::TableDefinition<&[u8], &[u8]>; 4] = [
    redb::TableDefinition::new("tasks"),
    redb::TableDefinition::new("pending"),
    redb::TableDefinition::new("by_key"),
    redb::TableDefinition::new("attempts"),
];

struct Redb(redb::Database);

struct RedbTxn<'t>(Vec<redb::Table<'t, &'static [u8], &'static [u8]>>);

impl Txn for RedbTxn<'_> {
    fn get(&mut self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
        use redb::ReadableTable;
        Ok(self.0[t as usize].get(k)?.map(|v| v.value().to_vec()))
    }
    fn put(&mut self, t: Table, k: &[u8], v: &[u8]) -> Result<()> {
        self.0[t as usize].insert(k, v)?;
        Ok(())
    }
    fn del(&mut self, t: Table, k: &[u8]) -> Result<()> {
        self.0[t as usize].remove(k)?;
        Ok(())
    }
}

impl Engine for Redb {
    fn commit(&mut self, f: &mut dyn FnMut(&mut dyn Txn) -> Result<()>) -> Result<()> {
        let mut txn = self.0.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        {
            let tables = REDB_TABLES
                .iter()
                .map(|d| txn.open_table(*d))
                .collect::<Result<Vec<_>, _>>()?;
            f(&mut RedbTxn(tables))?;
        }
        txn.commit()?;
        Ok(())
    }
}

// ---- fjall ----

struct Fjall {
    db: fjall::SingleWriterTxDatabase,
    keyspaces: Vec<fjall::SingleWriterTxKeyspace>,
}

struct FjallTxn<'a, 't> {
    tx: &'a mut fjall::SingleWriterWriteTx<'t>,
    keyspaces: &'a [fjall::SingleWriterTxKeyspace],
}

impl Txn for FjallTxn<'_, '_> {
    fn get(&mut self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
        use fjall::Readable;
        Ok(self
            .tx
            .get(&self.keyspaces[t as usize], k)?
            .map(|v| v.to_vec()))
    }
    fn put(&mut self, t: Table, k: &[u8], v: &[u8]) -> Result<()> {
        self.tx.insert(&self.keyspaces[t as usize], k, v);
        Ok(())
    }
    fn del(&mut self, t: Table, k: &[u8]) -> Result<()> {
        self.tx.remove(&self.keyspaces[t as usize], k);
        Ok(())
    }
}

impl Engine for Fjall {
    fn commit(&mut self, f: &mut dyn FnMut(&mut dyn Txn) -> Result<()>) -> Result<()> {
        let mut tx = self
            .db
            .write_tx()
            .durability(Some(fjall::PersistMode::SyncData));
        f(&mut FjallTxn {
            tx: &mut tx,
            keyspaces: &self.keyspaces,
        })?;
        tx.commit()?;
        Ok(())
    }
}

// ---- SQLite (WAL, synchronous = FULL: every commit fsyncs the WAL) ----

struct Sqlite(rusqlite::Connection);

struct SqliteTxn<'a>(&'a rusqlite::Connection);

impl Txn for SqliteTxn<'_> {
    fn get(&mut self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension;
        let mut st = self.0.prepare_cached(&format!(
            "SELECT v FROM {} WHERE k = ?1",
            TABLES[t as usize]
        ))?;
        Ok(st.query_row([k], |r| r.get::<_, Vec<u8>>(0)).optional()?)
    }
    fn put(&mut self, t: Table, k: &[u8], v: &[u8]) -> Result<()> {
        let mut st = self.0.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {} (k, v) VALUES (?1, ?2)",
            TABLES[t as usize]
        ))?;
        st.execute(rusqlite::params![k, v])?;
        Ok(())
    }
    fn del(&mut self, t: Table, k: &[u8]) -> Result<()> {
        let mut st = self
            .0
            .prepare_cached(&format!("DELETE FROM {} WHERE k = ?1", TABLES[t as usize]))?;
        st.execute([k])?;
        Ok(())
    }
}

impl Engine for Sqlite {
    fn commit(&mut self, f: &mut dyn FnMut(&mut dyn Txn) -> Result<()>) -> Result<()> {
        let tx = self.0.transaction()?;
        f(&mut SqliteTxn(&tx))?;
        tx.commit()?;
        Ok(())
    }
}

fn open(engine: &str, dir: &Path) -> Result<Box<dyn Engine>> {
    Ok(match engine {
        "redb" => {
            let db = redb::Database::builder()
                .set_cache_size(64 * 1024 * 1024)
                .create(dir.join("bench.redb"))?;
            Box::new(Redb(db))
        }
        "fjall" => {
            let db = fjall::SingleWriterTxDatabase::builder(dir.join("fjall")).open()?;
            let keyspaces = TABLES
                .iter()
                .map(|n| db.keyspace(n, fjall::KeyspaceCreateOptions::default))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(Fjall { db, keyspaces })
        }
        "sqlite" => {
            let conn = rusqlite::Connection::open(dir.join("bench.sqlite"))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "cache_size", -65_536)?;
            for t in TABLES {
                conn.execute(
                    &format!(
                        "CREATE TABLE {t} (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
                    ),
                    [],
                )?;
            }
            Box::new(Sqlite(conn))
        }
        other => bail!("unknown engine {other} (redb, fjall, sqlite)"),
    })
}

struct Task {
    id: Vec<u8>,
    pending: Vec<u8>,
}

fn task_keys(i: u64, due: i64) -> (Task, Vec<u8>) {
    let id = uuid::Uuid::now_v7().to_string().into_bytes();
    let mut pending = Vec::with_capacity(20);
    pending.extend_from_slice(&((i % PARTITIONS) as u32).to_be_bytes());
    pending.extend_from_slice(&due.to_be_bytes());
    pending.extend_from_slice(&i.to_be_bytes());
    let mut by_key = format!("k{}", i % KEYS).into_bytes();
    by_key.push(0);
    by_key.extend_from_slice(&due.to_be_bytes());
    by_key.extend_from_slice(&i.to_be_bytes());
    (Task { id, pending }, by_key)
}

/// Reads a task, checks it is what was written, writes it back with `state` changed.
fn rewrite(tx: &mut dyn Txn, id: &[u8], state: u8) -> Result<()> {
    let mut rec = tx
        .get(Table::Tasks, id)?
        .context("a task vanished from its table")?;
    if rec.len() != TASK_BYTES {
        bail!("a task record came back with {} bytes", rec.len());
    }
    rec[0] = state;
    tx.put(Table::Tasks, id, &rec)
}

struct Figures {
    enqueue: Duration,
    run: Duration,
    written: Option<u64>,
}

fn run_once(
    engine: &str,
    dir: &Path,
    tasks: usize,
    batch: usize,
    keep_pending: bool,
) -> Result<Figures> {
    std::fs::create_dir_all(dir)?;
    let written_before = written_bytes();
    let mut db = open(engine, dir)?;
    let record = vec![1u8; TASK_BYTES];
    let attempt = vec![2u8; ATTEMPT_BYTES];
    let due = 1_800_000_000_000i64;

    let started = Instant::now();
    let mut all = Vec::with_capacity(tasks);
    for chunk in (0..tasks as u64).collect::<Vec<_>>().chunks(ENQUEUE_BATCH) {
        let keys: Vec<_> = chunk.iter().map(|&i| task_keys(i, due)).collect();
        db.commit(&mut |tx| {
            for (t, by_key) in &keys {
                if tx.get(Table::Tasks, &t.id)?.is_some() {
                    bail!("duplicate id");
                }
                tx.put(Table::Tasks, &t.id, &record)?;
                tx.put(Table::Pending, &t.pending, &t.id)?;
                tx.put(Table::ByKey, by_key, &t.id)?;
            }
            Ok(())
        })?;
        all.extend(keys.into_iter().map(|(t, _)| t));
    }
    let enqueue = started.elapsed();

    let half = (batch / 2).max(1);
    let started = Instant::now();
    let mut c = 0;
    while c * half < tasks + half {
        let starts = &all[(c * half).min(tasks)..((c + 1) * half).min(tasks)];
        let finishes = &all[(c * half).saturating_sub(half).min(tasks)..(c * half).min(tasks)];
        db.commit(&mut |tx| {
            for (s, f) in starts
                .iter()
                .zip(finishes.iter().map(Some).chain(std::iter::repeat(None)))
            {
                rewrite(tx, &s.id, 3)?;
                if let Some(f) = f {
                    finish(tx, f, &attempt, keep_pending)?;
                }
            }
            for f in finishes.iter().skip(starts.len()) {
                finish(tx, f, &attempt, keep_pending)?;
            }
            Ok(())
        })?;
        c += 1;
    }
    let run = started.elapsed();
    drop(db);
    let written = written_bytes()
        .zip(written_before)
        .map(|(a, b)| a.saturating_sub(b));
    std::fs::remove_dir_all(dir)?;
    Ok(Figures {
        enqueue,
        run,
        written,
    })
}

fn finish(tx: &mut dyn Txn, t: &Task, attempt: &[u8], keep_pending: bool) -> Result<()> {
    let mut key = t.id.clone();
    key.extend_from_slice(&1u32.to_be_bytes());
    tx.put(Table::Attempts, &key, attempt)?;
    rewrite(tx, &t.id, 4)?;
    if keep_pending {
        return Ok(());
    }
    tx.del(Table::Pending, &t.pending)
}

fn main() -> Result<()> {
    let mut tasks = 100_000usize;
    let mut batch = 200usize;
    let mut runs = 3usize;
    let mut engines = "redb,fjall,sqlite".to_string();
    let mut dir = std::env::temp_dir();
    let mut keep_pending = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep-pending" {
            keep_pending = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--tasks" => tasks = num()?.max(ENQUEUE_BATCH),
            "--batch" => batch = num()?.max(2),
            "--runs" => runs = num()?.max(1),
            "--engines" => engines = value.clone(),
            "--dir" => dir = PathBuf::from(&value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    println!(
        "engine-bench: {tasks} tasks, enqueue in commits of {ENQUEUE_BATCH}, run in commits of {batch} operations{}, {runs} runs, dir {}",
        if keep_pending {
            " (pending entries kept)"
        } else {
            ""
        },
        dir.display()
    );
    println!("| engine | enqueue, tasks/s | run (start + finish), tasks/s | written per task |");
    println!("|---|---|---|---|");
    for engine in engines.split(',').map(str::trim) {
        let mut enq = Vec::new();
        let mut run = Vec::new();
        let mut written = Vec::new();
        for r in 0..runs {
            let scratch = dir.join(format!(
                "kairos-engine-bench-{}-{engine}-{r}",
                std::process::id()
            ));
            let f = run_once(engine, &scratch, tasks, batch, keep_pending)
                .with_context(|| format!("{engine}, run {}", r + 1))?;
            let rate = |d: Duration| tasks as f64 / d.as_secs_f64();
            eprintln!(
                "{engine} run {}: enqueue {:.0} tasks/s, run {:.0} tasks/s",
                r + 1,
                rate(f.enqueue),
                rate(f.run)
            );
            enq.push(rate(f.enqueue));
            run.push(rate(f.run));
            written.extend(f.written);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        written.sort_unstable();
        let w = written.get(written.len() / 2).map_or("?".to_string(), |w| {
            format!("{:.1} KiB", *w as f64 / 1024.0 / tasks as f64)
        });
        println!(
            "| {engine} | {:.0} | {:.0} | {w} |",
            median(&mut enq),
            median(&mut run)
        );
    }
    Ok(())
}
