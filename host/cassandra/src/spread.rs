//! Rows of many Cassandra partitions in few requests: the per-task index rows of an enqueue
//! (`task_homes`, `tasks_by_key`) and its replay check, which would otherwise be one request
//! per task each.
//!
//! Rows are grouped by the first replica of their partition, and the driver routes a batch by
//! its first statement's token, so a write's coordinator is a replica of each of its rows.
//! A write request is an unlogged batch of at most [`SPREAD_PARTITIONS`] partitions and
//! [`SPREAD_BYTES`] (no atomicity is wanted: each row is idempotent and written before anything
//! depends on it; Cassandra warns about unlogged batches across more partitions, or larger,
//! than that, and refuses them from 50 KiB). A read request is one `IN` of at most [`IN_KEYS`]
//! partition keys; the driver cannot route an `IN` by token, so its coordinator is any node
//! (with one replica per key in a group, it reads from at most one other node).

use std::collections::{BTreeMap, HashMap, HashSet};

use kairos_core::ids::home_named;
use kairos_core::store::StoreResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::CassandraStore;
use crate::batch::each_bounded;
use crate::error::{Decode, Exec};

/// Most partitions in one unlogged batch (Cassandra's default
/// `unlogged_batch_across_partitions_warn_threshold`).
pub(crate) const SPREAD_PARTITIONS: usize = 10;
/// Most bytes of values in one unlogged batch (Cassandra's default
/// `batch_size_warn_threshold` is 5 KiB).
pub(crate) const SPREAD_BYTES: usize = 4 << 10;
/// Most partition keys in one `IN` read (ScyllaDB refuses more than 100 by default).
pub(crate) const IN_KEYS: usize = 64;

impl CassandraStore {
    /// `items` in groups that share their partition's first replica in `table` (text
    /// partition key `pk`), each group of at most `max_keys` distinct keys and `max_bytes` by
    /// `size` (a group holds at least one item).
    fn replica_groups<T>(
        &self,
        table: &str,
        items: Vec<T>,
        pk: impl Fn(&T) -> &str,
        max_keys: usize,
        (max_bytes, size): (usize, impl Fn(&T) -> usize),
    ) -> Vec<Vec<T>> {
        let cluster = self.session.get_cluster_state();
        let ks = &self.opts.keyspace;
        let mut by_replica: BTreeMap<Option<u128>, Vec<T>> = BTreeMap::new();
        for item in items {
            // Unknown (no schema metadata yet): any coordinator will do.
            let replica = cluster
                .compute_token(ks, table, &(pk(&item),))
                .ok()
                .and_then(|token| {
                    cluster
                        .get_token_endpoints(ks, table, token)
                        .first()
                        .map(|(node, _)| node.host_id.as_u128())
                });
            by_replica.entry(replica).or_default().push(item);
        }
        let mut groups = Vec::new();
        for items in by_replica.into_values() {
            let mut keys: HashSet<String> = HashSet::new();
            let mut group: Vec<T> = Vec::new();
            let mut bytes = 0;
            for item in items {
                let n = size(&item);
                let full =
                    (!keys.contains(pk(&item)) && keys.len() == max_keys) || bytes + n > max_bytes;
                if full && !group.is_empty() {
                    groups.push(std::mem::take(&mut group));
                    keys.clear();
                    bytes = 0;
                }
                keys.insert(pk(&item).to_owned());
                bytes += n;
                group.push(item);
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        groups
    }

    /// Writes `rows` (`(partition key, bytes of values, values of st)`) of `table`: unlogged
    /// batches of at most [`SPREAD_PARTITIONS`] partitions that share a replica and
    /// [`SPREAD_BYTES`], `concurrency` at a time.
    pub(crate) async fn write_spread<V: SerializeRow + Sync>(
        &self,
        st: &PreparedStatement,
        table: &str,
        rows: Vec<(&str, usize, V)>,
    ) -> StoreResult<()> {
        let groups = self.replica_groups(
            table,
            rows,
            |(pk, _, _)| pk,
            SPREAD_PARTITIONS,
            (SPREAD_BYTES, |(_, n, _): &(&str, usize, V)| *n),
        );
        let written = each_bounded(&groups, self.opts.concurrency, |group| {
            self.write_batch(st, group.iter().map(|(_, _, v)| v).collect::<Vec<&V>>())
        })
        .await;
        written.into_iter().collect()
    }

    /// Where the rows of `ids` live, for those that have a row. An id that names its home (see
    /// [`kairos_core::ids`]) is looked for in that home: `IN` reads of at most [`IN_KEYS`] ids
    /// of one home. Any other id is looked up in `task_homes`: `IN` reads of at most
    /// [`IN_KEYS`] ids that share a replica. `concurrency` reads at a time.
    pub(crate) async fn homes_of(&self, ids: &[&str]) -> StoreResult<HashMap<String, (i64, i64)>> {
        let mut named: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
        let mut plain = Vec::new();
        for &id in ids {
            match home_named(id) {
                Some((p, home)) => named.entry((i64::from(p), home)).or_default().push(id),
                None => plain.push(id),
            }
        }
        let in_homes: Vec<((i64, i64), &[&str])> = named
            .iter()
            .flat_map(|(home, ids)| ids.chunks(IN_KEYS).map(|c| (*home, c)))
            .collect();
        let groups = self.replica_groups(
            "task_homes",
            plain,
            |id| id,
            IN_KEYS,
            (usize::MAX, |_: &&str| 0),
        );
        let conc = self.opts.concurrency;
        let (found, read) = tokio::join!(
            each_bounded(&in_homes, conc, |((p, home), ids)| {
                self.session
                    .execute_unpaged(&self.st.rows_in_home, (*p, *home, *ids))
            }),
            each_bounded(&groups, conc, |group| {
                self.session.execute_unpaged(&self.st.homes_get, (group,))
            })
        );
        let mut homes = HashMap::new();
        for ((home, _), r) in in_homes.iter().zip(found) {
            let rows = r.exec()?.into_rows_result().decode()?;
            for row in rows.rows::<(String,)>().decode()? {
                let (id,) = row.decode()?;
                homes.insert(id, *home);
            }
        }
        for r in read {
            let rows = r.exec()?.into_rows_result().decode()?;
            for row in rows.rows::<(String, i64, i64)>().decode()? {
                let (id, partition, home) = row.decode()?;
                homes.insert(id, (partition, home));
            }
        }
        Ok(homes)
    }
}
