//! Layout of the embedded store on fjall (an LSM tree with a write-ahead journal), the
//! encoding of its keys and values, error mapping, and lookups shared by the read path and
//! the writer.
//!
//! | keyspace       | key                                  | value                          |
//! |----------------|--------------------------------------|--------------------------------|
//! | `tasks`        | id                                   | task record (codec)            |
//! | `pending`      | (partition, due_at, seq)             | id — exactly the pending tasks |
//! | `ukeys`        | uniqueness key                       | id                             |
//! | `attempts`     | (id, attempt number)                 | attempt record (codec)         |
//! | `by_key`       | (ordering key, due_at, seq)          | id — every task                |
//! | `meta`         | name (`format`, `next_seq`)          | u64                            |
//! | `paused`       | ordering key                         | (empty)                        |
//! | `schedules`    | name                                 | schedule record (codec)        |
//! | `kv`           | (plugin, key)                        | (updated_at, value bytes)      |
//! | `kv_usage`     | plugin                               | bytes of its keys and values   |
//! | `owners`       | partition                            | (epoch, node id) — leases      |
//! | `state_counts` | task state (`scheduled`, …)          | tasks in that state            |
//!
//! Keys sort as their tuples do: integers are big-endian (an `i64` with its sign bit flipped),
//! and a string that is followed by more fields ends in `00 01`, with each `00` byte inside it
//! written `00 ff` — so no string's encoding is a prefix of another's and one key's range never
//! reaches into the next key's. A string that ends the key is written as it is.
//!
//! `state_counts` is kept exact by every write batch that changes a task (one write per
//! state whose count changed, at the end of the batch).

use fjall::{Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace, Slice};

use super::codec;
use kairos_core::model::{Attempt, StateCounts, Task, TaskState};
use kairos_core::store::{StoreError, StoreResult};

pub(super) const META_FORMAT: &[u8] = b"format";
pub(super) const META_NEXT_SEQ: &[u8] = b"next_seq";
/// Bumped when the layout changes incompatibly.
pub(super) const FORMAT: u64 = 1;

/// `Corrupt` unless a stored format marker is the one this build reads.
pub(super) fn check_format(found: u64) -> StoreResult<()> {
    if found == FORMAT {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "embedded store format {found}, this build reads format {FORMAT}"
        )))
    }
}

/// Memtable size per keyspace (fjall's default is 64 MiB). With the four busy keyspaces
/// (tasks, pending, by_key, attempts) this bounds the write buffers at about 64 MiB, so a
/// large backlog stays within the memory target (BENCHMARKS.md, issue 3).
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Journal kept before the memtables are flushed (fjall's default is 512 MiB; 64 MiB is its
/// minimum). It is what a restart replays.
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The open database and its keyspaces.
pub(crate) struct Db {
    pub(super) db: SingleWriterTxDatabase,
    pub(super) ks: Keyspaces,
}

pub(crate) struct Keyspaces {
    pub(super) tasks: SingleWriterTxKeyspace,
    pub(super) pending: SingleWriterTxKeyspace,
    pub(super) ukeys: SingleWriterTxKeyspace,
    pub(super) attempts: SingleWriterTxKeyspace,
    pub(super) by_key: SingleWriterTxKeyspace,
    pub(super) meta: SingleWriterTxKeyspace,
    pub(super) paused: SingleWriterTxKeyspace,
    pub(super) schedules: SingleWriterTxKeyspace,
    pub(super) kv: SingleWriterTxKeyspace,
    pub(super) kv_usage: SingleWriterTxKeyspace,
    pub(super) owners: SingleWriterTxKeyspace,
    pub(super) state_counts: SingleWriterTxKeyspace,
}

/// Names a keyspace of [`Keyspaces`] (the writer stages its writes per keyspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ks {
    Tasks,
    Pending,
    Ukeys,
    Attempts,
    ByKey,
    Meta,
    Paused,
    Schedules,
    Kv,
    KvUsage,
    Owners,
    StateCounts,
}

impl Ks {
    pub(crate) const COUNT: usize = 12;
    /// In the order of their discriminants.
    pub(crate) const ALL: [Ks; Ks::COUNT] = [
        Ks::Tasks,
        Ks::Pending,
        Ks::Ukeys,
        Ks::Attempts,
        Ks::ByKey,
        Ks::Meta,
        Ks::Paused,
        Ks::Schedules,
        Ks::Kv,
        Ks::KvUsage,
        Ks::Owners,
        Ks::StateCounts,
    ];
}

impl Keyspaces {
    pub(crate) fn of(&self, k: Ks) -> &SingleWriterTxKeyspace {
        match k {
            Ks::Tasks => &self.tasks,
            Ks::Pending => &self.pending,
            Ks::Ukeys => &self.ukeys,
            Ks::Attempts => &self.attempts,
            Ks::ByKey => &self.by_key,
            Ks::Meta => &self.meta,
            Ks::Paused => &self.paused,
            Ks::Schedules => &self.schedules,
            Ks::Kv => &self.kv,
            Ks::KvUsage => &self.kv_usage,
            Ks::Owners => &self.owners,
            Ks::StateCounts => &self.state_counts,
        }
    }
}

/// Point reads shared by the read path (a fjall snapshot) and the writer (its staged batch).
pub(crate) trait Lookup {
    fn lookup(&self, ks: &Keyspaces, k: Ks, key: &[u8]) -> StoreResult<Option<Slice>>;
}

impl<R: Readable> Lookup for R {
    fn lookup(&self, ks: &Keyspaces, k: Ks, key: &[u8]) -> StoreResult<Option<Slice>> {
        self.get(ks.of(k), key).db()
    }
}

impl Db {
    /// Opens (or creates) the database directory at `path`, with a block cache of
    /// `cache_bytes`. Runs fjall's journal recovery.
    pub(crate) fn open(path: &std::path::Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = SingleWriterTxDatabase::builder(path)
            .cache_size(cache_bytes)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .db()?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
        };
        let ks = Keyspaces {
            tasks: ks("tasks").db()?,
            pending: ks("pending").db()?,
            ukeys: ks("ukeys").db()?,
            attempts: ks("attempts").db()?,
            by_key: ks("by_key").db()?,
            meta: ks("meta").db()?,
            paused: ks("paused").db()?,
            schedules: ks("schedules").db()?,
            kv: ks("kv").db()?,
            kv_usage: ks("kv_usage").db()?,
            owners: ks("owners").db()?,
            state_counts: ks("state_counts").db()?,
        };
        Ok(Self { db, ks })
    }
}

/// Maps any fjall error to the store's error kinds.
pub(super) fn db_err(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(io) => StoreError::Unavailable(format!("embedded store I/O: {io}")),
        fjall::Error::Poisoned => StoreError::Unavailable(
            "embedded store: an earlier write failed (I/O); reopening the database".into(),
        ),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => {
            StoreError::Unavailable(format!("embedded store I/O: {io}"))
        }
        e @ (fjall::Error::JournalRecovery(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)) => StoreError::Corrupt(format!("embedded store: {e}")),
        e => StoreError::Other(format!("embedded store: {e}")),
    }
}

/// `.db()?` turns a fjall result into a store result.
pub(super) trait DbResult<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T> DbResult<T> for Result<T, fjall::Error> {
    fn db(self) -> StoreResult<T> {
        self.map_err(db_err)
    }
}

// ---- keys ----

fn push_str(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

/// `pending`: (partition, due_at, seq).
pub(super) fn pending_key(partition: u32, due_at: i64, seq: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&((due_at as u64) ^ (1 << 63)).to_be_bytes());
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `by_key`: (key, due_at, seq).
pub(super) fn by_key_key(key: &str, due_at: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 18);
    push_str(&mut k, key);
    push_i64(&mut k, due_at);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Every `by_key` entry of `key` starts with this.
pub(super) fn by_key_prefix(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2);
    push_str(&mut k, key);
    k
}

/// `attempts`: (task id, attempt number).
pub(super) fn attempt_key(id: &str, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 6);
    push_str(&mut k, id);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Every attempt of task `id` starts with this.
pub(super) fn attempts_prefix(id: &str) -> Vec<u8> {
    by_key_prefix(id)
}

/// `kv`: (plugin, key); the plugin's entries with keys starting `key` share this prefix.
pub(super) fn kv_key(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(plugin.len() + key.len() + 2);
    push_str(&mut k, plugin);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The plugin's key of a `kv` key (after the plugin's prefix of `prefix_len` bytes).
pub(super) fn kv_user_key(k: &[u8], prefix_len: usize) -> StoreResult<&str> {
    k.get(prefix_len..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| StoreError::Corrupt("kv key is not UTF-8".into()))
}

pub(super) fn owner_key(partition: u32) -> [u8; 4] {
    partition.to_be_bytes()
}

// ---- values ----

pub(super) fn u64_value(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(super) fn decode_u64(b: &[u8]) -> StoreResult<u64> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a counter of {} bytes, not 8", b.len())))?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn id_value(b: &[u8]) -> StoreResult<&str> {
    std::str::from_utf8(b).map_err(|_| StoreError::Corrupt("an index entry is not UTF-8".into()))
}

/// `kv` value: (updated_at, value).
pub(super) fn kv_value(at: i64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&at.to_be_bytes());
    v.extend_from_slice(value);
    v
}

pub(super) fn decode_kv_value(b: &[u8]) -> StoreResult<(i64, &[u8])> {
    if b.len() < 8 {
        return Err(StoreError::Corrupt(
            "kv value shorter than its header".into(),
        ));
    }
    let (at, value) = b.split_at(8);
    let at: [u8; 8] = at.try_into().unwrap_or([0; 8]);
    Ok((i64::from_be_bytes(at), value))
}

/// `owners` value: (epoch, node id).
pub(super) fn owner_value(epoch: u64, node: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + node.len());
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(node.as_bytes());
    v
}

pub(super) fn decode_owner(b: &[u8]) -> StoreResult<(u64, &str)> {
    if b.len() < 8 {
        return Err(StoreError::Corrupt(
            "lease record shorter than its header".into(),
        ));
    }
    let (epoch, node) = b.split_at(8);
    Ok((decode_u64(epoch)?, id_value(node)?))
}

// ---- lookups ----

pub(super) fn load_task(r: &impl Lookup, ks: &Keyspaces, id: &str) -> StoreResult<Option<Task>> {
    match r.lookup(ks, Ks::Tasks, id.as_bytes())? {
        Some(v) => codec::decode_task(&v).map(Some),
        None => Ok(None),
    }
}

/// The task an index entry points at; a dangling entry is corruption.
pub(super) fn indexed_task(r: &impl Lookup, ks: &Keyspaces, id: &[u8]) -> StoreResult<Task> {
    let id = id_value(id)?;
    load_task(r, ks, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("index points at missing task {id}")))
}

pub(super) fn load_attempts(
    r: &impl Readable,
    ks: &Keyspaces,
    id: &str,
) -> StoreResult<Vec<Attempt>> {
    let mut out = Vec::new();
    for entry in r.prefix(&ks.attempts, attempts_prefix(id)) {
        let (_, v) = entry.into_inner().db()?;
        out.push(codec::decode_attempt(&v)?);
    }
    Ok(out)
}

/// The bytes (keys plus values) `plugin` keeps in kv.
pub(super) fn kv_usage(r: &impl Lookup, ks: &Keyspaces, plugin: &str) -> StoreResult<u64> {
    match r.lookup(ks, Ks::KvUsage, plugin.as_bytes())? {
        Some(n) => decode_u64(&n),
        None => Ok(0),
    }
}

/// The counts in the `state_counts` keyspace (a missing row is 0).
pub(super) fn state_counts(r: &impl Readable, ks: &Keyspaces) -> StoreResult<StateCounts> {
    let mut counts = StateCounts::default();
    for state in TaskState::ALL {
        if let Some(n) = r.get(&ks.state_counts, state.as_str()).db()? {
            counts.set(state, decode_u64(&n)?);
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_tuples_and_one_key_never_reaches_into_another() {
        let mut tuples = vec![
            ("a", -5i64, 3u64),
            ("a", -5, 4),
            ("a", 0, 0),
            ("a", i64::MAX, u64::MAX),
            ("a\0", i64::MIN, 0),
            ("a\0b", 7, 1),
            ("ab", i64::MIN, 0),
            ("", 1, 1),
        ];
        let mut encoded: Vec<_> = tuples
            .iter()
            .map(|&(k, d, s)| (by_key_key(k, d, s), (k, d, s)))
            .collect();
        encoded.sort();
        tuples.sort_by(|x, y| {
            // The string order the encoding gives: byte-wise, with a string ending before its
            // extension.
            x.0.as_bytes()
                .cmp(y.0.as_bytes())
                .then(x.1.cmp(&y.1))
                .then(x.2.cmp(&y.2))
        });
        let order: Vec<_> = encoded.iter().map(|(_, t)| *t).collect();
        assert_eq!(order, tuples);
        for (k, (key, _, _)) in &encoded {
            for other in ["a", "a\0", "a\0b", "ab", ""] {
                assert_eq!(
                    k.starts_with(&by_key_prefix(other)),
                    *key == other,
                    "{key:?} vs prefix of {other:?}"
                );
            }
        }
        assert!(pending_key(1, -1, 9) < pending_key(1, 0, 0));
        assert!(pending_key(1, i64::MAX, u64::MAX) < pending_key(2, i64::MIN, 0));
    }

    #[test]
    fn values_round_trip_and_short_ones_are_corrupt() {
        assert_eq!(decode_u64(&u64_value(42)).ok(), Some(42));
        assert!(matches!(decode_u64(&[1, 2]), Err(StoreError::Corrupt(_))));
        let v = kv_value(-7, b"xyz");
        assert_eq!(decode_kv_value(&v).ok(), Some((-7, &b"xyz"[..])));
        assert!(decode_kv_value(&[0; 3]).is_err());
        let o = owner_value(9, "node-1");
        assert_eq!(decode_owner(&o).ok(), Some((9, "node-1")));
        let k = kv_key("p", "key/1");
        assert_eq!(kv_user_key(&k, kv_key("p", "").len()).ok(), Some("key/1"));
    }
}
