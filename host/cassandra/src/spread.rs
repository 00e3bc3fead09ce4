//! Rows of many Cassandra partitions in few requests: the per-task index rows of an enqueue
//! (`task_homes`, `tasks_by_key`) and its replay check, which would otherwise be one request
//! per task each.
//!
//! Rows are grouped by the replica that owns their partition (token-aware, as the driver
//! routes a batch by its first statement), so a request's coordinator holds every row of it.
//! A write request is an unlogged batch of at most [`SPREAD_PARTITIONS`] partitions (no
//! atomicity is wanted: each row is idempotent and written before anything depends on it;
//! Cassandra warns about unlogged batches across more partitions than that). A read request
//! is one `IN` of at most [`IN_KEYS`] partition keys.

use std::collections::{BTreeMap, HashMap, HashSet};

use kairos_core::store::StoreResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::CassandraStore;
use crate::batch::each_bounded;
use crate::error::{Decode, Exec};

/// Most partitions in one unlogged batch (Cassandra's default
/// `unlogged_batch_across_partitions_warn_threshold`).
pub(crate) const SPREAD_PARTITIONS: usize = 10;
/// Most partition keys in one `IN` read (ScyllaDB refuses more than 100 by default).
pub(crate) const IN_KEYS: usize = 64;

impl CassandraStore {
    /// `items` in groups that share their partition's first replica in `table` (text
    /// partition key `pk`), each group of at most `max_keys` distinct keys.
    fn replica_groups<T>(
        &self,
        table: &str,
        items: Vec<T>,
        pk: impl Fn(&T) -> &str,
        max_keys: usize,
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
            for item in items {
                if !keys.contains(pk(&item)) && keys.len() == max_keys {
                    groups.push(std::mem::take(&mut group));
                    keys.clear();
                }
                keys.insert(pk(&item).to_owned());
                group.push(item);
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        groups
    }

    /// Writes `rows` (`(partition key, values of st)`) of `table`: unlogged batches of at most
    /// [`SPREAD_PARTITIONS`] partitions that share a replica, `concurrency` at a time.
    pub(crate) async fn write_spread<V: SerializeRow + Sync>(
        &self,
        st: &PreparedStatement,
        table: &str,
        rows: Vec<(&str, V)>,
    ) -> StoreResult<()> {
        let groups = self.replica_groups(table, rows, |(pk, _)| pk, SPREAD_PARTITIONS);
        let written = each_bounded(&groups, self.opts.concurrency, |group| {
            self.write_batch(st, group.iter().map(|(_, v)| v).collect::<Vec<&V>>())
        })
        .await;
        written.into_iter().collect()
    }

    /// Where the rows of `ids` live, for those that have a home: `IN` reads of at most
    /// [`IN_KEYS`] ids that share a replica, `concurrency` at a time.
    pub(crate) async fn homes_of(&self, ids: &[&str]) -> StoreResult<HashMap<String, (i64, i64)>> {
        let groups = self.replica_groups("task_homes", ids.to_vec(), |id| id, IN_KEYS);
        let read = each_bounded(&groups, self.opts.concurrency, |group| {
            self.session.execute_unpaged(&self.st.homes_get, (group,))
        })
        .await;
        let mut homes = HashMap::new();
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
