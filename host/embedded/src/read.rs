//! Reads: each runs in its own redb read transaction (a consistent snapshot, never blocked by
//! the writer). Results are bounded by the caller's limit; nothing loads the whole backlog.

use std::ops::Bound;

use redb::{Database, ReadTransaction, ReadableTable};

use super::codec;
use super::tables::{
    ATTEMPTS, BY_KEY, DbResult, KV, KV_USAGE, OWNERS, PAUSED, PENDING, SCHEDULES, STATE_COUNTS,
    TASKS, UKEYS, indexed_task, key_range_bounds, load_attempts, load_task,
};
use kairos_core::model::{
    KvEntryMeta, ListFilter, Millis, OrderPos, Schedule, StateCounts, Task, TaskRecord,
};
use kairos_core::ownership::Holder;
use kairos_core::store::{FirstByPos, StoreResult};

/// `limit` 0 in a [`ListFilter`] means this many.
const DEFAULT_LIST_LIMIT: usize = 100;

fn begin(db: &Database) -> StoreResult<ReadTransaction> {
    db.begin_read().db()
}

pub(super) fn get(db: &Database, id: &str) -> StoreResult<Option<TaskRecord>> {
    let txn = begin(db)?;
    let tasks = txn.open_table(TASKS).db()?;
    let Some(task) = load_task(&tasks, id)? else {
        return Ok(None);
    };
    let attempts = load_attempts(&txn.open_table(ATTEMPTS).db()?, id)?;
    Ok(Some(TaskRecord { task, attempts }))
}

pub(super) fn lease_holder(db: &Database, partition: u32) -> StoreResult<Option<Holder>> {
    let txn = begin(db)?;
    let owners = txn.open_table(OWNERS).db()?;
    Ok(owners.get(partition).db()?.map(|v| {
        let (epoch, node) = v.value();
        Holder {
            epoch,
            node_id: node.to_owned(),
        }
    }))
}

pub(super) fn find_by_uniqueness_key(db: &Database, ukey: &str) -> StoreResult<Option<Task>> {
    let txn = begin(db)?;
    let ukeys = txn.open_table(UKEYS).db()?;
    let Some(id) = ukeys.get(ukey).db()? else {
        return Ok(None);
    };
    let tasks = txn.open_table(TASKS).db()?;
    indexed_task(&tasks, id.value()).map(Some)
}

pub(super) fn load_window(
    db: &Database,
    partition: u32,
    after: OrderPos,
    up_to: Millis,
    limit: usize,
) -> StoreResult<Vec<Task>> {
    let start = (partition, after.due_at, after.seq);
    let end = (partition, up_to, u64::MAX);
    if limit == 0 || start >= end {
        return Ok(Vec::new());
    }
    let txn = begin(db)?;
    let pending = txn.open_table(PENDING).db()?;
    let tasks = txn.open_table(TASKS).db()?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for entry in pending
        .range::<(u32, i64, u64)>((Bound::Excluded(start), Bound::Included(end)))
        .db()?
    {
        let (_, id) = entry.db()?;
        out.push(indexed_task(&tasks, id.value())?);
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

/// With a key: walks that key's index in order. Without one: scans every task once, keeping
/// only the first `limit` positions in a bounded heap (time linear in the number of stored
/// tasks, memory bounded by `limit`). It is an operator query, not a hot path.
pub(super) fn list(db: &Database, filter: &ListFilter) -> StoreResult<Vec<Task>> {
    let limit = if filter.limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        filter.limit
    };
    let wanted = |t: &Task| filter.admits(t);
    let txn = begin(db)?;
    let tasks = txn.open_table(TASKS).db()?;
    match &filter.key {
        Some(key) => {
            let by_key = txn.open_table(BY_KEY).db()?;
            let mut out = Vec::new();
            for entry in by_key.range(key_range_bounds(key)).db()? {
                let (_, id) = entry.db()?;
                let t = indexed_task(&tasks, id.value())?;
                if wanted(&t) {
                    out.push(t);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        }
        None => {
            let mut first = FirstByPos::new(limit);
            for entry in tasks.iter().db()? {
                let (_, bytes) = entry.db()?;
                let t = codec::decode_task(bytes.value())?;
                if wanted(&t) {
                    first.offer(t);
                }
            }
            Ok(first.into_sorted())
        }
    }
}

pub(super) fn paused_keys(db: &Database) -> StoreResult<Vec<String>> {
    let txn = begin(db)?;
    let paused = txn.open_table(PAUSED).db()?;
    let mut out = Vec::new();
    for entry in paused.iter().db()? {
        let (k, _) = entry.db()?;
        out.push(k.value().to_owned());
    }
    Ok(out)
}

pub(super) fn get_schedule(db: &Database, name: &str) -> StoreResult<Option<Schedule>> {
    let txn = begin(db)?;
    let schedules = txn.open_table(SCHEDULES).db()?;
    match schedules.get(name).db()? {
        Some(v) => codec::decode_schedule(v.value()).map(Some),
        None => Ok(None),
    }
}

pub(super) fn list_schedules(db: &Database) -> StoreResult<Vec<Schedule>> {
    let txn = begin(db)?;
    let schedules = txn.open_table(SCHEDULES).db()?;
    let mut out = Vec::new();
    for entry in schedules.iter().db()? {
        let (_, v) = entry.db()?;
        out.push(codec::decode_schedule(v.value())?);
    }
    Ok(out)
}

pub(super) fn kv_get(db: &Database, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
    let txn = begin(db)?;
    let kv = txn.open_table(KV).db()?;
    Ok(kv.get((plugin, key)).db()?.map(|v| v.value().1.to_vec()))
}

pub(super) fn kv_usage(db: &Database, plugin: &str) -> StoreResult<u64> {
    let txn = begin(db)?;
    let usage = txn.open_table(KV_USAGE).db()?;
    let kv = txn.open_table(KV).db()?;
    super::tables::kv_usage(&usage, &kv, plugin)
}

pub(super) fn state_counts(db: &Database) -> StoreResult<StateCounts> {
    let txn = begin(db)?;
    super::tables::state_counts(&txn.open_table(STATE_COUNTS).db()?)
}

pub(super) fn kv_list(
    db: &Database,
    plugin: &str,
    prefix: &str,
    limit: usize,
) -> StoreResult<Vec<KvEntryMeta>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let txn = begin(db)?;
    let kv = txn.open_table(KV).db()?;
    for entry in kv.range((plugin, prefix)..).db()? {
        let (k, v) = entry.db()?;
        let (p, key) = k.value();
        if p != plugin || !key.starts_with(prefix) {
            break;
        }
        let (updated_at, value) = v.value();
        out.push(KvEntryMeta {
            key: key.to_owned(),
            updated_at,
            size: value.len() as u64,
        });
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}
