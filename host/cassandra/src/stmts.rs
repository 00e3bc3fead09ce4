//! Every statement the store runs, prepared once at connect with its consistency level.

use kairos_core::store::StoreResult;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::error::prepare_err;
use crate::rows::{ATTEMPT_COLS, PURGE_COLS, SCHEDULE_COLS, TASK_COLS, named_markers};

pub(crate) struct Stmts {
    pub task_get: PreparedStatement,
    pub home_get: PreparedStatement,
    pub home_insert: PreparedStatement,
    pub home_delete: PreparedStatement,
    pub homes_get: PreparedStatement,
    pub task_insert: PreparedStatement,
    pub task_cas: PreparedStatement,
    pub task_scan: PreparedStatement,
    pub task_states: PreparedStatement,
    pub rows_in_home: PreparedStatement,
    pub task_page_first: PreparedStatement,
    pub task_page_in_home: PreparedStatement,
    pub task_page_after: PreparedStatement,
    pub task_purge: PreparedStatement,
    pub attempts_delete: PreparedStatement,
    pub ukey_release: PreparedStatement,
    pub pending_insert: PreparedStatement,
    pub pending_delete: PreparedStatement,
    pub pending_delete_at: PreparedStatement,
    pub pending_range: PreparedStatement,
    pub bucket_touch: PreparedStatement,
    pub bucket_range: PreparedStatement,
    pub bucket_delete_at: PreparedStatement,
    pub bykey_insert: PreparedStatement,
    pub bykey_delete: PreparedStatement,
    pub bykey_delete_at: PreparedStatement,
    pub bykey_scan: PreparedStatement,
    pub attempt_log_get: PreparedStatement,
    pub attempt_insert: PreparedStatement,
    pub attempts_get: PreparedStatement,
    pub ukey_claim: PreparedStatement,
    pub ukey_get: PreparedStatement,
    pub paused_set: PreparedStatement,
    pub paused_delete: PreparedStatement,
    pub paused_list: PreparedStatement,
    pub sched_put: PreparedStatement,
    pub sched_get: PreparedStatement,
    pub sched_list: PreparedStatement,
    pub sched_delete: PreparedStatement,
    pub sched_fire: PreparedStatement,
    pub kv_get: PreparedStatement,
    pub kv_set: PreparedStatement,
    pub kv_delete: PreparedStatement,
    pub kv_range: PreparedStatement,
    pub kv_sizes: PreparedStatement,
    pub owner_get: PreparedStatement,
    pub owner_insert: PreparedStatement,
    pub owner_cas: PreparedStatement,
    pub counter_get: PreparedStatement,
    pub counter_cas: PreparedStatement,
    pub node_put: PreparedStatement,
    pub node_get: PreparedStatement,
}

/// How a statement is run.
#[derive(Clone, Copy)]
enum Kind {
    /// Plain read or write at the configured consistency.
    Plain,
    /// Lightweight transaction: paxos at the serial consistency, commit at the configured one.
    Lwt,
    /// Linearizable read (sees every committed LWT).
    SerialRead,
}

impl Stmts {
    pub(crate) async fn prepare(
        session: &Session,
        ks: &str,
        consistency: Consistency,
        serial: SerialConsistency,
    ) -> StoreResult<Self> {
        let p = |kind: Kind, cql: String| async move {
            let cql = cql.replace("{ks}", ks);
            let mut st = session.prepare(cql).await.map_err(prepare_err)?;
            match kind {
                Kind::Plain => st.set_consistency(consistency),
                Kind::Lwt => {
                    st.set_consistency(consistency);
                    st.set_serial_consistency(Some(serial));
                }
                Kind::SerialRead => st.set_consistency(match serial {
                    SerialConsistency::LocalSerial => Consistency::LocalSerial,
                    SerialConsistency::Serial => Consistency::Serial,
                }),
            }
            StoreResult::Ok(st)
        };
        use Kind::*;
        let task_cas_cql = "UPDATE {ks}.task_rows SET due_at = :due_at, next_at = :next_at, \
            max_attempts = :max_attempts, park_on_dead = :park_on_dead, state = :state, \
            attempts = :attempts, updated_at = :updated_at, last_error = :last_error, \
            output = :output, owner_epoch = :owner_epoch, rev = :rev, \
            attempt_log = attempt_log + :attempt_log \
            WHERE partition = :partition AND home = :home AND id = :id \
            IF rev = :expected_rev AND seq = :expected_seq";
        let pending_key = "WHERE partition = ? AND bucket = ? AND due_at = ? AND seq = ?";
        Ok(Self {
            task_get: p(
                Plain,
                format!(
                    "SELECT {TASK_COLS} FROM {{ks}}.task_rows WHERE partition = ? AND home = ? AND id = ?"
                ),
            )
            .await?,
            home_get: p(Plain, "SELECT partition, home FROM {ks}.task_homes WHERE id = ?".into()).await?,
            home_insert: p(
                Plain,
                "INSERT INTO {ks}.task_homes (id, partition, home) VALUES (?, ?, ?)".into(),
            )
            .await?,
            homes_get: p(Plain, "SELECT id, partition, home FROM {ks}.task_homes WHERE id IN ?".into()).await?,
            home_delete: p(Plain, "DELETE FROM {ks}.task_homes WHERE id = ?".into()).await?,
            task_insert: p(
                Plain,
                format!(
                    "INSERT INTO {{ks}}.task_rows ({TASK_COLS}) VALUES ({})",
                    named_markers(TASK_COLS)
                ),
            )
            .await?,
            task_cas: p(Lwt, task_cas_cql.into()).await?,
            task_scan: p(Plain, format!("SELECT {TASK_COLS} FROM {{ks}}.task_rows")).await?,
            task_states: p(Plain, "SELECT state FROM {ks}.task_rows".into()).await?,
            rows_in_home: p(
                Plain,
                "SELECT id FROM {ks}.task_rows WHERE partition = ? AND home = ? AND id IN ?".into(),
            )
            .await?,
            task_page_first: p(Plain, format!("SELECT {PURGE_COLS} FROM {{ks}}.task_rows LIMIT ?")).await?,
            task_page_in_home: p(
                Plain,
                format!(
                    "SELECT {PURGE_COLS} FROM {{ks}}.task_rows WHERE partition = ? AND home = ? AND id > ? LIMIT ?"
                ),
            )
            .await?,
            task_page_after: p(
                Plain,
                format!(
                    "SELECT {PURGE_COLS} FROM {{ks}}.task_rows WHERE token(partition, home) > token(?, ?) LIMIT ?"
                ),
            )
            .await?,
            task_purge: p(
                Lwt,
                "DELETE FROM {ks}.task_rows WHERE partition = ? AND home = ? AND id = ? IF rev = ?".into(),
            )
            .await?,
            attempts_delete: p(Plain, "DELETE FROM {ks}.attempts WHERE task_id = ?".into()).await?,
            ukey_release: p(
                Lwt,
                "DELETE FROM {ks}.uniqueness WHERE ukey = ? IF task_id = ?".into(),
            )
            .await?,
            pending_insert: p(
                Plain,
                "INSERT INTO {ks}.pending (partition, bucket, due_at, seq, id, home) VALUES (?, ?, ?, ?, ?, ?)".into(),
            )
            .await?,
            pending_delete: p(Plain, format!("DELETE FROM {{ks}}.pending {pending_key}")).await?,
            pending_delete_at: p(
                Plain,
                format!("DELETE FROM {{ks}}.pending USING TIMESTAMP ? {pending_key}"),
            )
            .await?,
            pending_range: p(
                Plain,
                "SELECT due_at, seq, id, home, WRITETIME(id) FROM {ks}.pending \
                 WHERE partition = ? AND bucket = ? AND (due_at, seq) > (?, ?) \
                 AND (due_at, seq) <= (?, ?) LIMIT ?"
                    .into(),
            )
            .await?,
            bucket_touch: p(
                Plain,
                "UPDATE {ks}.pending_buckets SET live = true WHERE partition = ? AND bucket = ?".into(),
            )
            .await?,
            bucket_range: p(
                Plain,
                "SELECT bucket, WRITETIME(live) FROM {ks}.pending_buckets \
                 WHERE partition = ? AND bucket >= ? AND bucket <= ?"
                    .into(),
            )
            .await?,
            bucket_delete_at: p(
                Plain,
                "DELETE FROM {ks}.pending_buckets USING TIMESTAMP ? WHERE partition = ? AND bucket = ?".into(),
            )
            .await?,
            bykey_insert: p(
                Plain,
                "INSERT INTO {ks}.tasks_by_key (key, due_at, seq, id) VALUES (?, ?, ?, ?)".into(),
            )
            .await?,
            bykey_delete: p(
                Plain,
                "DELETE FROM {ks}.tasks_by_key WHERE key = ? AND due_at = ? AND seq = ?".into(),
            )
            .await?,
            bykey_delete_at: p(
                Plain,
                "DELETE FROM {ks}.tasks_by_key USING TIMESTAMP ? WHERE key = ? AND due_at = ? AND seq = ?".into(),
            )
            .await?,
            bykey_scan: p(
                Plain,
                "SELECT due_at, seq, id, WRITETIME(id) FROM {ks}.tasks_by_key WHERE key = ?".into(),
            )
            .await?,
            attempt_log_get: p(
                Plain,
                "SELECT attempt_log FROM {ks}.task_rows WHERE partition = ? AND home = ? AND id = ?".into(),
            )
            .await?,
            attempt_insert: p(
                Plain,
                format!("INSERT INTO {{ks}}.attempts (task_id, {ATTEMPT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            )
            .await?,
            attempts_get: p(
                Plain,
                format!("SELECT {ATTEMPT_COLS} FROM {{ks}}.attempts WHERE task_id = ?"),
            )
            .await?,
            ukey_claim: p(
                Lwt,
                "INSERT INTO {ks}.uniqueness (ukey, task_id) VALUES (?, ?) IF NOT EXISTS".into(),
            )
            .await?,
            ukey_get: p(SerialRead, "SELECT task_id FROM {ks}.uniqueness WHERE ukey = ?".into()).await?,
            paused_set: p(Plain, "INSERT INTO {ks}.paused_keys (shard, key) VALUES (0, ?)".into()).await?,
            paused_delete: p(Plain, "DELETE FROM {ks}.paused_keys WHERE shard = 0 AND key = ?".into()).await?,
            paused_list: p(Plain, "SELECT key FROM {ks}.paused_keys WHERE shard = 0".into()).await?,
            sched_put: p(
                Plain,
                format!("INSERT INTO {{ks}}.schedules ({SCHEDULE_COLS}) VALUES (:name, :cron, :plugin, :key, :payload, :timezone, :last_fired, :created_at)"),
            )
            .await?,
            sched_get: p(SerialRead, format!("SELECT {SCHEDULE_COLS} FROM {{ks}}.schedules WHERE name = ?")).await?,
            sched_list: p(Plain, format!("SELECT {SCHEDULE_COLS} FROM {{ks}}.schedules")).await?,
            sched_delete: p(Lwt, "DELETE FROM {ks}.schedules WHERE name = ? IF EXISTS".into()).await?,
            sched_fire: p(
                Lwt,
                "UPDATE {ks}.schedules SET last_fired = ? WHERE name = ? IF last_fired = ?".into(),
            )
            .await?,
            kv_get: p(Plain, "SELECT value FROM {ks}.plugin_kv WHERE plugin = ? AND key = ?".into()).await?,
            kv_set: p(
                Plain,
                "INSERT INTO {ks}.plugin_kv (plugin, key, updated_at, size, value) VALUES (?, ?, ?, ?, ?)".into(),
            )
            .await?,
            kv_delete: p(Lwt, "DELETE FROM {ks}.plugin_kv WHERE plugin = ? AND key = ? IF EXISTS".into()).await?,
            kv_range: p(
                Plain,
                "SELECT key, updated_at, size FROM {ks}.plugin_kv WHERE plugin = ? AND key >= ? LIMIT ?".into(),
            )
            .await?,
            kv_sizes: p(Plain, "SELECT key, size FROM {ks}.plugin_kv WHERE plugin = ?".into()).await?,
            owner_get: p(
                SerialRead,
                "SELECT epoch, node_id FROM {ks}.partition_owners WHERE partition = ?".into(),
            )
            .await?,
            owner_insert: p(
                Lwt,
                "INSERT INTO {ks}.partition_owners (partition, epoch, node_id, acquired_at) \
                 VALUES (?, 1, ?, ?) IF NOT EXISTS"
                    .into(),
            )
            .await?,
            owner_cas: p(
                Lwt,
                "UPDATE {ks}.partition_owners SET epoch = ?, node_id = ?, acquired_at = ? \
                 WHERE partition = ? IF epoch = ?"
                    .into(),
            )
            .await?,
            counter_get: p(SerialRead, "SELECT next FROM {ks}.counters WHERE name = ?".into()).await?,
            counter_cas: p(
                Lwt,
                "UPDATE {ks}.counters SET next = ? WHERE name = ? IF next = ?".into(),
            )
            .await?,
            node_put: p(
                Plain,
                "INSERT INTO {ks}.nodes (node_id, api_addr, updated_at) VALUES (?, ?, ?)".into(),
            )
            .await?,
            node_get: p(Plain, "SELECT api_addr FROM {ks}.nodes WHERE node_id = ?".into()).await?,
        })
    }
}
