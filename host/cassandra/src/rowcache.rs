//! Task rows this store read or wrote last, so that the next change of the task can skip
//! reading it again: the enqueue's insert (of a task due soon) or the window's read feeds the
//! start, the start's write feeds the finish.
//!
//! A cached row is only ever used as the *expected* old row of a compare-and-set
//! (`UPDATE task_rows … IF rev = <cached rev> AND seq = <cached seq>`): every change of a task row
//! bumps `rev`, and every insert of one gets a new `seq` (two inserts of one id both start at
//! `rev` 0). So if anything changed the task since, the LWT is not applied and the caller
//! reads the row and tries again, as it would have without the cache. A stale entry costs one
//! refused LWT, never a wrong write.
//!
//! Each entry is taken out when used. The cache is bounded by entries and by bytes: when it
//! is full it is emptied (entries of tasks this node no longer runs, e.g. of partitions it
//! lost, go that way).

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use crate::rows::Stored;

/// Rows kept at most (about a window's worth of running tasks per node).
pub(crate) const CAPACITY: usize = 65_536;
/// Bytes of rows kept at most: every string of a row, the id again as the map's key, and the
/// map's slots (twice an entry, for the hash table's spare capacity).
pub(crate) const CAPACITY_BYTES: usize = 64 << 20;
const SLOT_BYTES: usize = 2 * std::mem::size_of::<(String, Stored)>();

fn size_of(row: &Stored) -> usize {
    let t = &row.task;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    SLOT_BYTES
        + 2 * t.id.len()
        + t.plugin.len()
        + t.key.len()
        + t.payload.len()
        + opt(&t.pin_version)
        + opt(&t.uniqueness_key)
        + opt(&t.output)
        + opt(&t.last_error)
}

#[derive(Default)]
struct Rows {
    by_id: HashMap<String, Stored>,
    bytes: usize,
}

#[derive(Default)]
pub(crate) struct RowCache {
    rows: StdMutex<Rows>,
}

impl RowCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `row` as the task's current row.
    pub(crate) fn put(&self, row: Stored) {
        Self::insert(&mut self.lock(), row);
    }

    /// Remembers `row` unless a row of its task is remembered already.
    pub(crate) fn put_if_absent(&self, row: Stored) {
        let mut rows = self.lock();
        if !rows.by_id.contains_key(&row.task.id) {
            Self::insert(&mut rows, row);
        }
    }

    fn insert(rows: &mut Rows, row: Stored) {
        let size = size_of(&row);
        if let Some(old) = rows.by_id.remove(&row.task.id) {
            rows.bytes -= size_of(&old);
        }
        if rows.by_id.len() >= CAPACITY || rows.bytes + size > CAPACITY_BYTES {
            // A fresh map: `clear` would keep the full table's allocation.
            *rows = Rows::default();
        }
        if size <= CAPACITY_BYTES {
            rows.bytes += size;
            rows.by_id.insert(row.task.id.clone(), row);
        }
    }

    /// The remembered row of `id`, taken out.
    pub(crate) fn take(&self, id: &str) -> Option<Stored> {
        let mut rows = self.lock();
        let row = rows.by_id.remove(id)?;
        rows.bytes -= size_of(&row);
        Some(row)
    }

    /// Forgets `id` (its row changed in a way the cache did not see).
    pub(crate) fn forget(&self, id: &str) {
        self.take(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::model::Task;

    fn row(id: &str) -> Stored {
        let mut new = kairos_conformance::new_task("k", 0);
        new.id = id.into();
        Stored {
            task: Task::from_new(new, 1),
            home: 0,
            owner_epoch: 1,
            rev: 0,
        }
    }

    #[test]
    fn an_entry_is_used_once_and_the_cache_stays_bounded() {
        let c = RowCache::default();
        c.put(row("a"));
        assert_eq!(c.take("a").map(|s| s.task.id), Some("a".to_owned()));
        assert!(c.take("a").is_none(), "taken entries are gone");
        for i in 0..CAPACITY {
            c.put(row(&format!("t{i}")));
        }
        assert_eq!(c.len(), CAPACITY);
        // Replacing an entry does not empty a full cache; a new one does.
        c.put(row("t0"));
        assert_eq!(c.len(), CAPACITY);
        c.put(row("new"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), size_of(&row("new")));
        c.forget("new");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn large_payloads_are_bounded_by_bytes() {
        let c = RowCache::default();
        let big = |id: &str| {
            let mut r = row(id);
            r.task.payload = "x".repeat(1 << 20);
            r
        };
        for i in 0..64 {
            c.put(big(&format!("b{i}")));
        }
        assert!(c.bytes() <= CAPACITY_BYTES);
        assert!(c.len() < 64, "64 rows of 1 MiB do not all fit in 64 MiB");
        assert!(c.take("b63").is_some(), "the newest row is kept");
    }
}
