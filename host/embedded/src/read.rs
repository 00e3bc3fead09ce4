//! Reads: each runs on its own snapshot of the database (consistent, never blocked by the
//! writer). Results are bounded by the caller's limit; nothing loads the whole backlog.

use std::ops::Bound;

use fjall::{Readable, Snapshot};

use super::codec;
use super::tables::{
    Db, DbResult, by_key_prefix, decode_kv_value, decode_owner, id_value, indexed_task, kv_key,
    kv_user_key, load_attempts, load_task, owner_key, pending_key,
};
use kairos_core::model::{
    KvEntryMeta, ListFilter, Millis, OrderPos, Schedule, StateCounts, Task, TaskRecord,
};
use kairos_core::ownership::Holder;
use kairos_core::store::{FirstByPos, StoreResult};

/// `limit` 0 in a [`ListFilter`] means this many.
const DEFAULT_LIST_LIMIT: usize = 100;

fn begin(db: &Db) -> Snapshot {
    db.db.read_tx()
}

pub(super) fn get(db: &Db, id: &str) -> StoreResult<Option<TaskRecord>> {
    let snap = begin(db);
    let Some(task) = load_task(&snap, &db.ks, id)? else {
        return Ok(None);
    };
    let attempts = load_attempts(&snap, &db.ks, id)?;
    Ok(Some(TaskRecord { task, attempts }))
}

pub(super) fn lease_holder(db: &Db, partition: u32) -> StoreResult<Option<Holder>> {
    let snap = begin(db);
    match snap.get(&db.ks.owners, owner_key(partition)).db()? {
        Some(v) => {
            let (epoch, node) = decode_owner(&v)?;
            Ok(Some(Holder {
                epoch,
                node_id: node.to_owned(),
            }))
        }
        None => Ok(None),
    }
}

pub(super) fn find_by_uniqueness_key(db: &Db, ukey: &str) -> StoreResult<Option<Task>> {
    let snap = begin(db);
    let Some(id) = snap.get(&db.ks.ukeys, ukey).db()? else {
        return Ok(None);
    };
    indexed_task(&snap, &db.ks, &id).map(Some)
}

pub(super) fn load_window(
    db: &Db,
    partition: u32,
    after: OrderPos,
    up_to: Millis,
    limit: usize,
) -> StoreResult<Vec<Task>> {
    let start = pending_key(partition, after.due_at, after.seq);
    let end = pending_key(partition, up_to, u64::MAX);
    if limit == 0 || start >= end {
        return Ok(Vec::new());
    }
    let snap = begin(db);
    let mut out = Vec::with_capacity(limit.min(1024));
    for entry in snap.range::<&[u8], _>(
        &db.ks.pending,
        (Bound::Excluded(&start[..]), Bound::Included(&end[..])),
    ) {
        let (_, id) = entry.into_inner().db()?;
        out.push(indexed_task(&snap, &db.ks, &id)?);
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

/// With a key: walks that key's index in order. Without one: scans every task once, keeping
/// only the first `limit` positions in a bounded heap (time linear in the number of stored
/// tasks, memory bounded by `limit`). It is an operator query, not a hot path.
pub(super) fn list(db: &Db, filter: &ListFilter) -> StoreResult<Vec<Task>> {
    let limit = if filter.limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        filter.limit
    };
    let wanted = |t: &Task| filter.admits(t);
    let snap = begin(db);
    match &filter.key {
        Some(key) => {
            let mut out = Vec::new();
            for entry in snap.prefix(&db.ks.by_key, by_key_prefix(key)) {
                let (_, id) = entry.into_inner().db()?;
                let t = indexed_task(&snap, &db.ks, &id)?;
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
            for entry in snap.iter(&db.ks.tasks) {
                let (_, bytes) = entry.into_inner().db()?;
                let t = codec::decode_task(&bytes)?;
                if wanted(&t) {
                    first.offer(t);
                }
            }
            Ok(first.into_sorted())
        }
    }
}

pub(super) fn paused_keys(db: &Db) -> StoreResult<Vec<String>> {
    let snap = begin(db);
    let mut out = Vec::new();
    for entry in snap.iter(&db.ks.paused) {
        let (k, _) = entry.into_inner().db()?;
        out.push(id_value(&k)?.to_owned());
    }
    Ok(out)
}

pub(super) fn get_schedule(db: &Db, name: &str) -> StoreResult<Option<Schedule>> {
    let snap = begin(db);
    match snap.get(&db.ks.schedules, name).db()? {
        Some(v) => codec::decode_schedule(&v).map(Some),
        None => Ok(None),
    }
}

pub(super) fn list_schedules(db: &Db) -> StoreResult<Vec<Schedule>> {
    let snap = begin(db);
    let mut out = Vec::new();
    for entry in snap.iter(&db.ks.schedules) {
        let (_, v) = entry.into_inner().db()?;
        out.push(codec::decode_schedule(&v)?);
    }
    Ok(out)
}

pub(super) fn kv_get(db: &Db, plugin: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
    let snap = begin(db);
    match snap.get(&db.ks.kv, kv_key(plugin, key)).db()? {
        Some(v) => Ok(Some(decode_kv_value(&v)?.1.to_vec())),
        None => Ok(None),
    }
}

pub(super) fn kv_usage(db: &Db, plugin: &str) -> StoreResult<u64> {
    super::tables::kv_usage(&begin(db), &db.ks, plugin)
}

pub(super) fn state_counts(db: &Db) -> StoreResult<StateCounts> {
    super::tables::state_counts(&begin(db), &db.ks)
}

pub(super) fn kv_list(
    db: &Db,
    plugin: &str,
    prefix: &str,
    limit: usize,
) -> StoreResult<Vec<KvEntryMeta>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let snap = begin(db);
    let plugin_len = kv_key(plugin, "").len();
    for entry in snap.prefix(&db.ks.kv, kv_key(plugin, prefix)) {
        let (k, v) = entry.into_inner().db()?;
        let key = kv_user_key(&k, plugin_len)?;
        let (updated_at, value) = decode_kv_value(&v)?;
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
