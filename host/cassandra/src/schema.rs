//! Keyspace and tables (`migrate`): idempotent, every statement is `IF NOT EXISTS`.
//!
//! ```text
//! tasks            (id) → the task record, one column per field, plus
//!                  owner_epoch (epoch of the lease that last changed it) and
//!                  rev (compare-and-set revision: every state change is an LWT `IF rev = ?`)
//! pending          ((partition, bucket), due_at, seq) → id: exactly the pending tasks
//!                  (Task::is_pending); bucket = floor(due_at / bucket_ms)
//! pending_buckets  (partition, bucket) → live: the directory of buckets that may hold
//!                  pending rows, so load_window finds overdue tasks however old they are
//! tasks_by_key     (key, due_at, seq) → id: every task of an ordering key (list, unpark)
//! attempts         (task_id, number) → one attempt (logs: the tail of its log, added later)
//! uniqueness       (ukey) → task_id, claimed with INSERT ... IF NOT EXISTS
//! paused_keys      (shard = 0, key): one small partition, listed in one read
//! schedules        (name) → schedule
//! plugin_kv        (plugin, key) → updated_at, size, value
//! partition_owners (partition) → epoch, node_id, acquired_at (leases, LWT only)
//! counters         (name) → next ('task_seq': the sequence block allocator, LWT only)
//! nodes            (node_id) → api_addr, updated_at: where each node's HTTP API is reached
//!                  (written at start; task operations are forwarded to a partition's owner)
//! ```
//!
//! The index tables (`pending`, `pending_buckets`, `tasks_by_key`) are hints checked against
//! the `tasks` row on every read; a stale or resurrected index row is skipped, so they run
//! with a short `gc_grace_seconds` (tombstones of executed tasks go away sooner).

use kairos_core::store::{StoreError, StoreResult};
use scylla::client::session::Session;

use crate::error::Exec;
use crate::{CassandraOptions, Replication};

/// Rejects names that cannot be used unquoted in CQL.
pub(crate) fn check_identifier(what: &str, name: &str) -> StoreResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "invalid {what} {name:?}: use 1-48 ASCII letters, digits or '_', starting with a letter"
        )))
    }
}

fn replication_map(r: &Replication) -> StoreResult<String> {
    Ok(match r {
        Replication::SimpleStrategy { rf } => {
            format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
        }
        Replication::NetworkTopology(dcs) => {
            let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_owned()];
            for (dc, rf) in dcs {
                if !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(StoreError::Other(format!("invalid datacenter name {dc:?}")));
                }
                parts.push(format!("'{dc}': {rf}"));
            }
            format!("{{{}}}", parts.join(", "))
        }
    })
}

/// Columns added to a table after its first definition: (table, column, type).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("tasks", "generation", "bigint"),
    ("attempts", "logs", "text"),
];

/// The table definitions, `{ks}` replaced by the keyspace.
const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.tasks (
        id text PRIMARY KEY, partition bigint, seq bigint, plugin text, pin_version text,
        key text, due_at bigint, next_at bigint, payload text, uniqueness_key text,
        max_attempts bigint, backoff_initial_ms bigint, backoff_max_ms bigint,
        park_on_dead boolean, state text, attempts bigint, created_at bigint,
        updated_at bigint, last_error text, output text, owner_epoch bigint, rev bigint,
        generation bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.pending (
        partition bigint, bucket bigint, due_at bigint, seq bigint, id text,
        PRIMARY KEY ((partition, bucket), due_at, seq)) WITH gc_grace_seconds = 3600",
    "CREATE TABLE IF NOT EXISTS {ks}.pending_buckets (
        partition bigint, bucket bigint, live boolean,
        PRIMARY KEY (partition, bucket)) WITH gc_grace_seconds = 3600",
    "CREATE TABLE IF NOT EXISTS {ks}.tasks_by_key (
        key text, due_at bigint, seq bigint, id text,
        PRIMARY KEY (key, due_at, seq)) WITH gc_grace_seconds = 3600",
    "CREATE TABLE IF NOT EXISTS {ks}.attempts (
        task_id text, number bigint, started_at bigint, ended_at bigint, outcome text,
        error text, plugin_digest text, logs text, PRIMARY KEY (task_id, number))",
    "CREATE TABLE IF NOT EXISTS {ks}.uniqueness (ukey text PRIMARY KEY, task_id text)",
    "CREATE TABLE IF NOT EXISTS {ks}.paused_keys (shard int, key text, PRIMARY KEY (shard, key))",
    "CREATE TABLE IF NOT EXISTS {ks}.schedules (
        name text PRIMARY KEY, cron text, plugin text, key text, payload text,
        timezone text, last_fired bigint, created_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.plugin_kv (
        plugin text, key text, updated_at bigint, size bigint, value blob,
        PRIMARY KEY (plugin, key))",
    "CREATE TABLE IF NOT EXISTS {ks}.partition_owners (
        partition bigint PRIMARY KEY, epoch bigint, node_id text, acquired_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.counters (name text PRIMARY KEY, next bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.nodes (node_id text PRIMARY KEY, api_addr text, updated_at bigint)",
];

/// Creates the keyspace and the tables if missing, and the sequence counter row.
pub(crate) async fn migrate(session: &Session, opts: &CassandraOptions) -> StoreResult<()> {
    check_identifier("keyspace", &opts.keyspace)?;
    let ks = &opts.keyspace;
    let replication = replication_map(&opts.replication)?;
    session
        .query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
            (),
        )
        .await
        .exec()?;
    for t in TABLES {
        session
            .query_unpaged(t.replace("{ks}", ks), ())
            .await
            .exec()?;
    }
    // Columns added since the first release, for keyspaces created before them.
    for (table, column, ty) in ADDED_COLUMNS {
        let added = session
            .query_unpaged(format!("ALTER TABLE {ks}.{table} ADD {column} {ty}"), ())
            .await;
        if let Err(e) = added {
            let message = e.to_string();
            let exists = message.contains("already exist") || message.contains("conflicts with");
            if !exists {
                tracing::error!(%table, %column, error = %message, "adding a column failed");
                return Err(crate::error::exec_err(e));
            }
        }
    }
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.counters (name, next) VALUES ('task_seq', 1) IF NOT EXISTS"),
            (),
        )
        .await
        .exec()?;
    Ok(())
}
