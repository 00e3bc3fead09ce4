//! One-time migration of a store file written by Kairos before the fjall store (one redb
//! file) into the fjall layout of `tables.rs`.
//!
//! The copy is built beside the target (`<target>.migrating`), made durable, and only then
//! renamed into place, so a crash midway leaves the old file untouched and the next start
//! copies again. The old file is then renamed `<file>.migrated` and kept: delete it once the
//! new store has been checked.

use std::path::{Path, PathBuf};

use fjall::{PersistMode, SingleWriterTxKeyspace, SingleWriterWriteTx};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::codec;
use super::tables::{
    self, Db, DbResult, attempt_key, by_key_key, kv_key, kv_value, owner_key, owner_value,
    pending_key, u64_value,
};
use kairos_core::model::{StateCounts, TaskState};
use kairos_core::store::{StoreError, StoreResult};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const PENDING: TableDefinition<(u32, i64, u64), &str> = TableDefinition::new("pending");
const UKEYS: TableDefinition<&str, &str> = TableDefinition::new("ukeys");
const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
const BY_KEY: TableDefinition<(&str, i64, u64), &str> = TableDefinition::new("by_key");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
const KV: TableDefinition<(&str, &str), (i64, &[u8])> = TableDefinition::new("kv");
const OWNERS: TableDefinition<u32, (u64, &str)> = TableDefinition::new("owners");

/// Entries per (unsynced) write transaction of the copy; one sync at the end.
const CHUNK: usize = 10_000;

fn legacy_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("reading the old redb store file: {e}"))
}

/// `path` with `suffix` appended to its last component.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The name the old file gets once copied.
pub(crate) fn migrated_name(file: &Path) -> PathBuf {
    suffixed(file, ".migrated")
}

/// Writes the copy in chunks of unsynced transactions.
struct Sink<'a> {
    db: &'a Db,
    tx: Option<SingleWriterWriteTx<'a>>,
    n: usize,
}

impl<'a> Sink<'a> {
    fn put(
        &mut self,
        ks: &SingleWriterTxKeyspace,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> StoreResult<()> {
        let db = self.db;
        let tx = self
            .tx
            .get_or_insert_with(|| db.db.write_tx().durability(None));
        tx.insert(ks, key.as_ref(), value.as_ref());
        self.n += 1;
        if self.n.is_multiple_of(CHUNK) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> StoreResult<()> {
        if let Some(tx) = self.tx.take() {
            tx.commit().db()?;
        }
        Ok(())
    }
}

/// Iterates a redb table that may not exist (a file from before it was added).
macro_rules! each_row {
    ($rtx:expr, $def:expr, |$k:ident, $v:ident| $body:block) => {
        match $rtx.open_table($def) {
            Ok(table) => {
                for entry in table.iter().map_err(legacy_err)? {
                    let (k, v) = entry.map_err(legacy_err)?;
                    let $k = k.value();
                    let $v = v.value();
                    $body
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(legacy_err(e)),
        }
    };
}

/// Copies the redb store file `from` into a new fjall database at `to` (which must not exist),
/// then renames `from` to `<from>.migrated`. Returns the number of tasks copied.
pub(crate) fn migrate(from: &Path, to: &Path, cache_bytes: u64) -> StoreResult<u64> {
    let tmp = suffixed(to, ".migrating");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| {
            StoreError::Unavailable(format!(
                "removing an unfinished migration {}: {e}",
                tmp.display()
            ))
        })?;
    }
    let old = redb::Database::open(from).map_err(legacy_err)?;
    let rtx = old.begin_read().map_err(legacy_err)?;
    let mut format = None;
    let mut next_seq = None;
    each_row!(rtx, META, |k, v| {
        match k {
            "format" => format = Some(v),
            "next_seq" => next_seq = Some(v),
            _ => {}
        }
    });
    if let Some(f) = format {
        tables::check_format(f)?;
    }
    let tasks_in_file = match rtx.open_table(TASKS) {
        Ok(t) => t.len().map_err(legacy_err)?,
        Err(_) => 0,
    };
    tracing::info!(from = %from.display(), to = %to.display(), tasks = tasks_in_file, "migrating the redb store file to the fjall store");

    let db = Db::open(&tmp, cache_bytes)?;
    let ks = &db.ks;
    let mut sink = Sink {
        db: &db,
        tx: None,
        n: 0,
    };
    let mut counts = StateCounts::default();
    let mut copied = 0u64;
    each_row!(rtx, TASKS, |id, bytes| {
        // A record that does not decode is copied as it is (and reported by `get`), and is
        // left out of the counts, as the redb store did.
        if let Ok(t) = codec::decode_task(bytes) {
            counts.add(t.state, 1);
        }
        copied += 1;
        sink.put(&ks.tasks, id, bytes)?;
    });
    each_row!(rtx, PENDING, |k, id| {
        sink.put(&ks.pending, pending_key(k.0, k.1, k.2), id)?;
    });
    each_row!(rtx, UKEYS, |k, id| {
        sink.put(&ks.ukeys, k, id)?;
    });
    each_row!(rtx, ATTEMPTS, |k, bytes| {
        sink.put(&ks.attempts, attempt_key(k.0, k.1), bytes)?;
    });
    each_row!(rtx, BY_KEY, |k, id| {
        sink.put(&ks.by_key, by_key_key(k.0, k.1, k.2), id)?;
    });
    each_row!(rtx, PAUSED, |k, _unit| {
        sink.put(&ks.paused, k, b"")?;
    });
    each_row!(rtx, SCHEDULES, |k, bytes| {
        sink.put(&ks.schedules, k, bytes)?;
    });
    // Usage is summed from the entries (a file may predate the `kv_usage` table).
    let mut usage: std::collections::BTreeMap<String, u64> = Default::default();
    each_row!(rtx, KV, |k, v| {
        *usage.entry(k.0.to_owned()).or_default() += (k.1.len() + v.1.len()) as u64;
        sink.put(&ks.kv, kv_key(k.0, k.1), kv_value(v.0, v.1))?;
    });
    for (plugin, bytes) in &usage {
        sink.put(&ks.kv_usage, plugin, u64_value(*bytes))?;
    }
    each_row!(rtx, OWNERS, |p, v| {
        sink.put(&ks.owners, owner_key(p), owner_value(v.0, v.1))?;
    });
    for state in TaskState::ALL {
        sink.put(
            &ks.state_counts,
            state.as_str(),
            u64_value(counts.get(state)),
        )?;
    }
    sink.put(&ks.meta, tables::META_FORMAT, u64_value(tables::FORMAT))?;
    sink.put(
        &ks.meta,
        tables::META_NEXT_SEQ,
        u64_value(next_seq.unwrap_or(1)),
    )?;
    sink.flush()?;
    drop(sink);
    db.db.persist(PersistMode::SyncAll).db()?;
    drop(db);
    drop(rtx);
    drop(old);

    let io = |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what}: {e}"));
    std::fs::rename(&tmp, to).map_err(|e| io("putting the migrated store in place", e))?;
    sync_parent(to).map_err(|e| io("syncing the data directory", e))?;
    retire(from)?;
    tracing::info!(tasks = copied, kept = %migrated_name(from).display(), "store migrated; the old file is kept and may be deleted");
    Ok(copied)
}

/// Renames a copied redb file out of the way (kept as `<file>.migrated`).
pub(crate) fn retire(from: &Path) -> StoreResult<()> {
    let kept = migrated_name(from);
    std::fs::rename(from, &kept).map_err(|e| {
        StoreError::Unavailable(format!(
            "renaming the migrated store file {} to {}: {e}",
            from.display(),
            kept.display()
        ))
    })?;
    sync_parent(from)
        .map_err(|e| StoreError::Unavailable(format!("syncing the data directory: {e}")))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedOptions, EmbeddedStore};
    use kairos_conformance::{T0, enqueue_one, new_task, parking, with_ukey};
    use kairos_core::model::{
        Attempt, AttemptOutcome, ListFilter, OrderPos, Schedule, Task, TaskState,
    };
    use kairos_core::store::TaskStore;

    fn attempt(number: u32, outcome: AttemptOutcome) -> Attempt {
        Attempt {
            number,
            started_at: T0,
            ended_at: T0 + 5,
            outcome,
            error: None,
            plugin_digest: None,
            logs: Some("a log line".into()),
        }
    }

    /// A store file as the redb store wrote it (before `kv_usage` and `state_counts` existed,
    /// as the oldest files are): a pending task with a uniqueness key, a parked dead task, a
    /// succeeded one, a paused key, a schedule, two kv entries and a lease.
    fn write_legacy(path: &Path) -> (Task, Task, Task) {
        let pending = Task::from_new(with_ukey(new_task("k", T0 + 50), "u1"), 7);
        let mut dead = Task::from_new(parking(new_task("k", T0)), 5);
        dead.state = TaskState::Dead;
        dead.attempts = 1;
        let mut done = Task::from_new(new_task("other", T0), 6);
        done.state = TaskState::Succeeded;
        done.attempts = 1;
        let db = redb::Database::create(path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut tasks = txn.open_table(TASKS).expect("tasks");
            let mut by_key = txn.open_table(BY_KEY).expect("by_key");
            for t in [&pending, &dead, &done] {
                let bytes = codec::encode_task(t).expect("encode");
                tasks
                    .insert(t.id.as_str(), bytes.as_slice())
                    .expect("insert");
                by_key
                    .insert((t.key.as_str(), t.due_at, t.seq), t.id.as_str())
                    .expect("insert");
            }
            txn.open_table(PENDING)
                .expect("pending")
                .insert((0, pending.due_at, pending.seq), pending.id.as_str())
                .expect("insert");
            txn.open_table(UKEYS)
                .expect("ukeys")
                .insert("u1", pending.id.as_str())
                .expect("insert");
            let mut attempts = txn.open_table(ATTEMPTS).expect("attempts");
            for (t, outcome) in [
                (&dead, AttemptOutcome::Permanent),
                (&done, AttemptOutcome::Succeeded),
            ] {
                let a = codec::encode_attempt(&attempt(1, outcome)).expect("encode");
                attempts
                    .insert((t.id.as_str(), 1), a.as_slice())
                    .expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert("format", tables::FORMAT).expect("insert");
            meta.insert("next_seq", 8).expect("insert");
            txn.open_table(PAUSED)
                .expect("paused")
                .insert("kp", ())
                .expect("insert");
            let s = Schedule {
                name: "nightly".into(),
                cron: "0 0 * * *".into(),
                plugin: "noop".into(),
                key: "n".into(),
                payload: "{}".into(),
                timezone: None,
                last_fired: Some(T0),
                created_at: T0,
            };
            txn.open_table(SCHEDULES)
                .expect("schedules")
                .insert(
                    "nightly",
                    codec::encode_schedule(&s).expect("encode").as_slice(),
                )
                .expect("insert");
            let mut kv = txn.open_table(KV).expect("kv");
            kv.insert(("p", "a"), (5, &b"xyz"[..])).expect("insert");
            kv.insert(("p", "b"), (6, &b"12345"[..])).expect("insert");
            kv.insert(("q", "a"), (7, &b"1"[..])).expect("insert");
            txn.open_table(OWNERS)
                .expect("owners")
                .insert(0, (3, "node-a"))
                .expect("insert");
        }
        txn.commit().expect("commit");
        (pending, dead, done)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_store_file_is_migrated_once_with_everything_in_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let legacy = dir.path().join("kairos.redb");
        let path = dir.path().join("store");
        let (pending, dead, done) = write_legacy(&legacy);
        // A copy a crash interrupted is thrown away and made again.
        std::fs::create_dir_all(dir.path().join("store.migrating")).expect("mkdir");
        std::fs::write(dir.path().join("store.migrating/junk"), b"x").expect("junk");

        let opts = EmbeddedOptions::default();
        let store = EmbeddedStore::open_migrating(&path, &legacy, opts).expect("migrate");
        assert!(!legacy.exists(), "the old file is renamed");
        assert!(migrated_name(&legacy).is_file(), "and kept");
        assert!(!dir.path().join("store.migrating").exists());

        for t in [&pending, &dead, &done] {
            let got = store.get(&t.id).await.expect("get").expect("copied");
            assert_eq!(&got.task, t);
        }
        let rec = store.get(&dead.id).await.expect("get").expect("copied");
        assert_eq!(rec.attempts, vec![attempt(1, AttemptOutcome::Permanent)]);
        assert_eq!(
            store.find_by_uniqueness_key("u1").await.expect("ukey"),
            Some(pending.clone())
        );
        let window = store
            .load_window(0, OrderPos::MIN, i64::MAX, 10)
            .await
            .expect("window");
        assert_eq!(window, vec![pending.clone()]);
        let by_key = store
            .list(&ListFilter {
                key: Some("k".into()),
                ..ListFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(by_key, vec![dead.clone(), pending.clone()], "in order");
        assert_eq!(store.paused_keys().await.expect("paused"), vec!["kp"]);
        let s = store
            .get_schedule("nightly")
            .await
            .expect("get")
            .expect("copied");
        assert_eq!(s.last_fired, Some(T0));
        assert_eq!(
            store.kv_get("p", "b").await.expect("kv"),
            Some(b"12345".to_vec())
        );
        let listed = store.kv_list("p", "", 10).await.expect("kv list");
        assert_eq!(
            listed
                .iter()
                .map(|e| (e.key.as_str(), e.updated_at))
                .collect::<Vec<_>>(),
            vec![("a", 5), ("b", 6)]
        );
        assert_eq!(store.kv_usage("p").await.expect("usage"), 1 + 3 + 1 + 5);
        assert_eq!(store.kv_usage("q").await.expect("usage"), 2);
        let holder = store.lease_holder(0).await.expect("holder").expect("held");
        assert_eq!((holder.epoch, holder.node_id.as_str()), (3, "node-a"));
        let counts = store.state_counts().await.expect("counts");
        assert_eq!(
            (
                counts.scheduled,
                counts.dead,
                counts.succeeded,
                counts.total()
            ),
            (1, 1, 1, 3),
            "counted while copying: {counts:?}"
        );
        // The sequence goes on from the old file's.
        let fresh = enqueue_one(&store, new_task("k", T0)).await;
        assert_eq!(fresh.seq, 8);
        drop(store);

        // Opening again does not migrate again (nothing to migrate), and keeps what was added.
        let store = EmbeddedStore::open_migrating(&path, &legacy, opts).expect("reopen");
        assert!(store.get(&fresh.id).await.expect("get").is_some());
        assert!(migrated_name(&legacy).is_file());
        drop(store);

        // A crash after the copy was put in place but before the old file was renamed: the
        // store is used as it is and the old file is renamed then.
        std::fs::rename(migrated_name(&legacy), &legacy).expect("put back");
        let store = EmbeddedStore::open_migrating(&path, &legacy, opts).expect("reopen");
        assert!(
            store.get(&fresh.id).await.expect("get").is_some(),
            "not copied over"
        );
        assert!(!legacy.exists() && migrated_name(&legacy).is_file());
    }
}
