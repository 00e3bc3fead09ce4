//! Table layout of the embedded store, redb error mapping, and lookups shared by the read
//! path and the writer.
//!
//! | table          | key                                  | value                          |
//! |----------------|--------------------------------------|--------------------------------|
//! | `tasks`        | id                                   | task record (codec)            |
//! | `pending`      | (partition, due_at, seq)             | id — exactly the pending tasks |
//! | `ukeys`        | uniqueness key                       | id                             |
//! | `attempts`     | (id, attempt number)                 | attempt record (codec)         |
//! | `by_key`       | (ordering key, due_at, seq)          | id — every task                |
//! | `meta`         | name (`format`, `next_seq`)          | u64                            |
//! | `paused`       | ordering key                         | ()                             |
//! | `schedules`    | name                                 | schedule record (codec)        |
//! | `kv`           | (plugin, key)                        | (updated_at, value bytes)      |
//! | `kv_usage`     | plugin                               | bytes of its keys and values   |
//! | `owners`       | partition                            | (epoch, node id) — leases      |
//! | `state_counts` | task state (`scheduled`, …)          | tasks in that state            |
//!
//! `state_counts` is kept exact by every write transaction that changes a task (one write per
//! state whose count changed, at the end of the transaction). A file written before it existed
//! gets it at open, counted from `tasks` in one scan.

use std::ops::RangeInclusive;

use redb::{ReadableTable, TableDefinition};

use super::codec;
use kairos_core::model::{Attempt, StateCounts, Task, TaskState};
use kairos_core::store::{StoreError, StoreResult};

pub(super) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
pub(super) const PENDING: TableDefinition<(u32, i64, u64), &str> = TableDefinition::new("pending");
pub(super) const UKEYS: TableDefinition<&str, &str> = TableDefinition::new("ukeys");
pub(super) const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
pub(super) const BY_KEY: TableDefinition<(&str, i64, u64), &str> = TableDefinition::new("by_key");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused");
pub(super) const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
pub(super) const KV: TableDefinition<(&str, &str), (i64, &[u8])> = TableDefinition::new("kv");
/// Missing for a plugin whose entries were written before the table existed: then summed.
pub(super) const KV_USAGE: TableDefinition<&str, u64> = TableDefinition::new("kv_usage");
pub(super) const OWNERS: TableDefinition<u32, (u64, &str)> = TableDefinition::new("owners");
pub(super) const STATE_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("state_counts");

pub(super) const META_FORMAT: &str = "format";
pub(super) const META_NEXT_SEQ: &str = "next_seq";
/// Bumped when the table layout changes incompatibly.
pub(super) const FORMAT: u64 = 1;

/// Maps any redb error to the store's error kinds.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(io) => StoreError::Unavailable(format!("embedded store I/O: {io}")),
        redb::Error::PreviousIo => StoreError::Unavailable(
            "embedded store: an earlier write failed (I/O); reopening the file".into(),
        ),
        redb::Error::Corrupted(msg) => StoreError::Corrupt(msg),
        redb::Error::UpgradeRequired(v) => {
            StoreError::Corrupt(format!("database file format {v} needs an upgrade"))
        }
        e @ (redb::Error::TableTypeMismatch { .. } | redb::Error::TypeDefinitionChanged { .. }) => {
            StoreError::Corrupt(e.to_string())
        }
        e => StoreError::Other(format!("embedded store: {e}")),
    }
}

/// `.db()?` turns a redb result into a store result.
pub(super) trait DbResult<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self) -> StoreResult<T> {
        self.map_err(db_err)
    }
}

pub(super) fn load_task(
    tasks: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> StoreResult<Option<Task>> {
    match tasks.get(id).db()? {
        Some(v) => codec::decode_task(v.value()).map(Some),
        None => Ok(None),
    }
}

/// The task an index entry points at; a dangling entry is corruption.
pub(super) fn indexed_task(
    tasks: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> StoreResult<Task> {
    load_task(tasks, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("index points at missing task {id}")))
}

pub(super) fn load_attempts(
    attempts: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    id: &str,
) -> StoreResult<Vec<Attempt>> {
    let mut out = Vec::new();
    for entry in attempts.range((id, 0u32)..=(id, u32::MAX)).db()? {
        let (_, v) = entry.db()?;
        out.push(codec::decode_attempt(v.value())?);
    }
    Ok(out)
}

/// Position of a task in the `by_key` index.
pub(super) type KeyPos<'a> = (&'a str, i64, u64);

/// The range of `by_key` holding every task of `key`, in `(due_at, seq)` order.
pub(super) fn key_range_bounds(key: &str) -> RangeInclusive<KeyPos<'_>> {
    (key, i64::MIN, 0)..=(key, i64::MAX, u64::MAX)
}

/// The bytes (keys plus values) `plugin` keeps in kv: its `kv_usage` row, or the sum over its
/// entries when there is none yet (entries written before the table existed).
pub(super) fn kv_usage(
    usage: &impl ReadableTable<&'static str, u64>,
    kv: &impl ReadableTable<(&'static str, &'static str), (i64, &'static [u8])>,
    plugin: &str,
) -> StoreResult<u64> {
    if let Some(n) = usage.get(plugin).db()? {
        return Ok(n.value());
    }
    let mut total = 0u64;
    for entry in kv.range((plugin, "")..).db()? {
        let (k, v) = entry.db()?;
        let (p, key) = k.value();
        if p != plugin {
            break;
        }
        total += (key.len() + v.value().1.len()) as u64;
    }
    Ok(total)
}

/// The counts in the `state_counts` table (a missing row is 0).
pub(super) fn state_counts(
    table: &impl ReadableTable<&'static str, u64>,
) -> StoreResult<StateCounts> {
    let mut counts = StateCounts::default();
    for state in TaskState::ALL {
        if let Some(n) = table.get(state.as_str()).db()? {
            counts.set(state, n.value());
        }
    }
    Ok(counts)
}

/// Counts the tasks in `tasks` by state, in one scan (for a file written before
/// `state_counts` existed). A record that does not decode is left out (and reported by `get`).
pub(super) fn count_states(
    tasks: &impl ReadableTable<&'static str, &'static [u8]>,
) -> StoreResult<StateCounts> {
    let mut counts = StateCounts::default();
    let mut undecodable = 0u64;
    for entry in tasks.iter().db()? {
        let (_, bytes) = entry.db()?;
        match codec::decode_task(bytes.value()) {
            Ok(t) => counts.add(t.state, 1),
            Err(_) => undecodable += 1,
        }
    }
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "embedded store: task records that do not decode are not in the state counts"
        );
    }
    Ok(counts)
}
