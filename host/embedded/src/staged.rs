//! The writer's view of one batch: the database as it was when the batch began (a snapshot),
//! with the batch's own writes staged on top in plain ordered maps, one per keyspace.
//!
//! At the end of the batch the staged writes go to fjall as ONE `WriteBatch` (journal write,
//! one fsync, then memtables), so the batch is all-or-nothing and readers see none of it before
//! it is durable (fjall publishes a batch's sequence number only after its journal persisted).
//!
//! Every staged write is also logged with what it replaced, so the writes of one failed
//! operation are undone without disturbing the operations before it ([`Staged::undo_to`]).
//! This replaces a fjall write transaction, whose per-transaction skiplists and the batch built
//! from them at commit were about a third of the writer's CPU (BENCHMARKS.md, tenth session).

use std::collections::BTreeMap;
use std::ops::Bound;

use fjall::{OwnedWriteBatch, PersistMode, Readable, Slice, Snapshot};

use super::tables::{DbResult, Keyspaces, Ks, Lookup};
use kairos_core::store::StoreResult;

/// A staged write: `Some(value)` or a removal.
type Staging = BTreeMap<Slice, Option<Slice>>;

pub(crate) struct Staged<'a> {
    snap: Snapshot,
    ks: &'a Keyspaces,
    writes: [Staging; Ks::COUNT],
    /// (keyspace, key, what the staging held for the key before): newest last.
    undo: Vec<(Ks, Slice, Option<Option<Slice>>)>,
}

/// How far the undo log reached at some point ([`Staged::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark(usize);

impl<'a> Staged<'a> {
    pub(crate) fn new(snap: Snapshot, ks: &'a Keyspaces) -> Self {
        Self {
            snap,
            ks,
            writes: Default::default(),
            undo: Vec::new(),
        }
    }

    /// The value of `key` in keyspace `k`, the batch's writes included.
    pub(crate) fn get(&self, k: Ks, key: &[u8]) -> StoreResult<Option<Slice>> {
        match self.writes[k as usize].get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.snap.get(self.ks.of(k), key).db(),
        }
    }

    pub(crate) fn insert(&mut self, k: Ks, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.stage(
            k,
            Slice::from(key.as_ref()),
            Some(Slice::from(value.as_ref())),
        );
    }

    pub(crate) fn remove(&mut self, k: Ks, key: impl AsRef<[u8]>) {
        self.stage(k, Slice::from(key.as_ref()), None);
    }

    fn stage(&mut self, k: Ks, key: Slice, value: Option<Slice>) {
        let before = self.writes[k as usize].insert(key.clone(), value);
        self.undo.push((k, key, before));
    }

    /// The point to undo back to.
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.undo.len())
    }

    /// The writes staged so far stay (their operation succeeded): forgets how to undo them,
    /// so the undo log holds one operation's writes at a time, not the whole batch's.
    pub(crate) fn keep(&mut self) {
        self.undo.clear();
    }

    /// Takes back every write staged since `mark`, newest first.
    pub(crate) fn undo_to(&mut self, mark: Mark) {
        // A mark from before a `keep` would silently undo nothing.
        debug_assert!(
            mark.0 <= self.undo.len(),
            "undo to a mark from before a keep"
        );
        while self.undo.len() > mark.0 {
            let Some((k, key, before)) = self.undo.pop() else {
                break;
            };
            let staging = &mut self.writes[k as usize];
            match before {
                Some(value) => {
                    staging.insert(key, value);
                }
                None => {
                    staging.remove(&key);
                }
            }
        }
    }

    /// Visits up to `limit` entries of keyspace `k` in key order, the batch's writes
    /// included: those after `from` (`None`: from the start) that begin with `prefix`.
    /// Returns how many it visited.
    pub(crate) fn scan(
        &self,
        k: Ks,
        from: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
        mut visit: impl FnMut(&Slice, &Slice) -> StoreResult<()>,
    ) -> StoreResult<usize> {
        let lower = match from {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let end = prefix_end(prefix);
        if let (Some(after), Some(end)) = (from, &end)
            && after >= end.as_slice()
        {
            // Past every key with the prefix (and an empty range, which `BTreeMap::range`
            // refuses).
            return Ok(0);
        }
        let upper = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        let mut stored = self.snap.range::<&[u8], _>(self.ks.of(k), (lower, upper));
        let mut staged = self.writes[k as usize].range::<[u8], _>((lower, upper));
        let mut next_stored = || -> StoreResult<Option<(Slice, Slice)>> {
            stored.next().map(|g| g.into_inner().db()).transpose()
        };
        let mut s = next_stored()?;
        let mut w = staged.next();
        let mut seen = 0;
        while seen < limit {
            let take_staged = match (&s, w) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((sk, _)), Some((wk, _))) => wk <= sk,
            };
            if take_staged {
                let Some((wk, wv)) = w else { break };
                if s.as_ref().is_some_and(|(sk, _)| sk == wk) {
                    s = next_stored()?;
                }
                if let Some(v) = wv {
                    visit(wk, v)?;
                    seen += 1;
                }
                w = staged.next();
            } else if let Some((sk, sv)) = s.take() {
                visit(&sk, &sv)?;
                seen += 1;
                s = next_stored()?;
            }
        }
        Ok(seen)
    }

    /// The staged writes as one durable write batch of `db`.
    pub(crate) fn into_batch(self, db: &fjall::Database) -> OwnedWriteBatch {
        let len = self.writes.iter().map(BTreeMap::len).sum();
        let mut batch =
            OwnedWriteBatch::with_capacity(db.clone(), len).durability(Some(PersistMode::SyncData));
        for (k, staging) in Ks::ALL.into_iter().zip(self.writes) {
            let ks = self.ks.of(k).inner();
            for (key, value) in staging {
                match value {
                    Some(v) => batch.insert(ks, key, v),
                    None => batch.remove(ks, key),
                }
            }
        }
        batch
    }
}

impl Lookup for Staged<'_> {
    fn lookup(&self, _: &Keyspaces, k: Ks, key: &[u8]) -> StoreResult<Option<Slice>> {
        self.get(k, key)
    }
}

/// The first key after every key that starts with `prefix` (`None`: there is none, or the
/// prefix is empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Db;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("db"), 1 << 20).expect("open");
        (dir, db)
    }

    fn keys(entries: &[(Slice, Slice)]) -> Vec<String> {
        entries
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn scans_merge_the_staged_writes_into_the_stored_entries_in_key_order() {
        let (_dir, db) = open();
        let mut seed = Staged::new(db.db.read_tx(), &db.ks);
        for (k, v) in [("a1", "s"), ("a3", "s"), ("a5", "s"), ("b1", "s")] {
            seed.insert(Ks::Paused, k, v);
        }
        seed.into_batch(db.db.inner()).commit().expect("commit");

        let mut st = Staged::new(db.db.read_tx(), &db.ks);
        st.insert(Ks::Paused, "a0", "w");
        st.insert(Ks::Paused, "a3", "w");
        st.remove(Ks::Paused, "a5");
        st.insert(Ks::Paused, "a6", "w");
        st.remove(Ks::Paused, "a9");
        st.insert(Ks::Paused, "b0", "w");
        let all = |from, prefix: &str, limit| {
            let mut out = Vec::new();
            let seen = st
                .scan(Ks::Paused, from, prefix.as_bytes(), limit, |k, v| {
                    out.push((k.clone(), v.clone()));
                    Ok(())
                })
                .expect("scan");
            assert_eq!(seen, out.len());
            keys(&out)
        };
        assert_eq!(all(None, "a", 100), ["a0=w", "a1=s", "a3=w", "a6=w"]);
        assert_eq!(all(Some(b"a1"), "a", 100), ["a3=w", "a6=w"]);
        assert_eq!(all(Some(b"a1"), "", 3), ["a3=w", "a6=w", "b0=w"]);
        assert_eq!(all(None, "", 2), ["a0=w", "a1=s"]);
        assert_eq!(all(None, "c", 100), Vec::<String>::new());
        // `from` before the prefix starts at the prefix; at or past its end, nothing.
        assert_eq!(all(Some(b"0"), "b", 100), ["b0=w", "b1=s"]);
        assert_eq!(all(Some(b"b"), "a", 100), Vec::<String>::new());
        assert_eq!(all(Some(b"c"), "a", 100), Vec::<String>::new());
        assert_eq!(st.get(Ks::Paused, b"a5").expect("get"), None);
        assert_eq!(
            st.get(Ks::Paused, b"a1").expect("get").as_deref(),
            Some(&b"s"[..])
        );
    }

    #[test]
    fn undo_takes_back_only_the_writes_after_the_mark() {
        let (_dir, db) = open();
        let mut st = Staged::new(db.db.read_tx(), &db.ks);
        st.insert(Ks::Paused, "k", "1");
        let mark = st.mark();
        st.insert(Ks::Paused, "k", "2");
        st.remove(Ks::Paused, "k");
        st.insert(Ks::Paused, "new", "x");
        st.undo_to(mark);
        assert_eq!(
            st.get(Ks::Paused, b"k").expect("get").as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(st.get(Ks::Paused, b"new").expect("get"), None);
        st.into_batch(db.db.inner()).commit().expect("commit");
        let snap = db.db.read_tx();
        assert!(snap.get(&db.ks.paused, "new").expect("get").is_none());
        assert_eq!(
            snap.get(&db.ks.paused, "k").expect("get").as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn kept_writes_stay_and_a_later_undo_still_restores_them() {
        let (_dir, db) = open();
        let mut st = Staged::new(db.db.read_tx(), &db.ks);
        st.insert(Ks::Paused, "k", "1");
        st.insert(Ks::Paused, "gone", "1");
        st.remove(Ks::Paused, "gone");
        st.keep();
        assert!(st.undo.is_empty(), "the undo log still holds kept writes");
        let mark = st.mark();
        st.insert(Ks::Paused, "k", "2");
        st.insert(Ks::Paused, "gone", "2");
        st.undo_to(mark);
        assert_eq!(
            st.get(Ks::Paused, b"k").expect("get").as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(st.get(Ks::Paused, b"gone").expect("get"), None);
    }

    #[test]
    fn ks_all_lists_the_keyspaces_in_the_order_of_their_discriminants() {
        for (i, k) in Ks::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
