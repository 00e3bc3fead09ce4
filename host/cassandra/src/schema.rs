//! Keyspace and tables (`migrate`): idempotent, every statement is `IF NOT EXISTS`.
//!
//! ```text
//! task_rows        ((partition, home), id) → the task record, one column per field, plus
//!                  owner_epoch (epoch of the lease that last changed it) and
//!                  rev (compare-and-set revision: every state change is an LWT `IF rev = ?`),
//!                  attempt_log (number → the attempt's record without its logs, written by
//!                  the finish's own compare-and-set; added later)
//! task_homes       (id) → partition, home: where a task's row lives, for ids that do not
//!                  name their home (an external producer's; see below)
//! pending          ((partition, bucket), due_at, seq) → id, home: exactly the pending tasks
//!                  (Task::is_pending); bucket = floor(due_at / bucket_ms)
//! pending_buckets  (partition, bucket) → live: the directory of buckets that may hold
//!                  pending rows, so load_window finds overdue tasks however old they are
//! tasks_by_key     (key, due_at, seq) → id: every task of an ordering key (list, unpark)
//! attempts         (task_id, number) → one attempt whole: the records of earlier releases,
//!                  and of attempts with log lines (logs: the tail of its log, added later)
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
//! A task's **home** is the bucket of the due time it was enqueued with,
//! `floor(due_at / bucket_ms)`, and never changes (a reschedule or a retry moves the task in
//! the `pending` index, not its row). So the tasks of one Kairos partition that fall due
//! together share one Cassandra partition of `task_rows`, and the starts (or finishes) of a
//! batch of them are one conditional batch: one Paxos round for the batch, where each task
//! would take one (see [`crate::transitions`]). The `pending` rows carry the home, so the window
//! reads a task's row without a lookup. The ids Kairos makes name their home,
//! `{uuid}.p{partition}.h{home}` ([`kairos_core::ids`]), so a read by id alone (`get`, the
//! operator's changes, `list` by key, the replay check of an enqueue) goes straight to the
//! row. For any other id (an external producer's record may bring one) `task_homes` says
//! where the row is. Retention walks `task_rows` itself.
//!
//! The index tables (`pending`, `pending_buckets`, `tasks_by_key`, `task_homes`) are hints
//! checked against the task row on every read; a stale or resurrected index row is skipped,
//! so the first three run with a short `gc_grace_seconds` (tombstones of executed tasks go
//! away sooner).
//!
//! **Earlier keyspaces** kept the task record in `tasks (id)`. [`migrate`] copies those rows
//! into `task_rows` and `task_homes` once (each with `INSERT … IF NOT EXISTS`, so a copy that
//! runs late never overwrites a row a node already changed) and records that in `counters`
//! (`task_rows_copied`). Until that mark is there, a store refuses to start on the keyspace
//! unless it migrates it itself. Stop every node of the older release first (or run
//! `kairos migrate` while they are stopped): an older node would go on writing `tasks`, which
//! this release no longer reads. The old table is left in place; drop it once the copy is
//! done.

use futures::StreamExt;
use kairos_core::store::{StoreError, StoreResult};
use scylla::client::session::Session;
use scylla::value::CqlValue;

use crate::error::{Decode, Exec};
use crate::rows::{ATTEMPT_LOG_TYPE, TASK_COLS, TaskRow};
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
    ("attempts", "logs", "text"),
    ("pending", "home", "bigint"),
    ("task_rows", "attempt_log", ATTEMPT_LOG_TYPE),
];

/// The `counters` row that records that the rows of the old `tasks` table were copied.
const COPIED_MARK: &str = "task_rows_copied";

/// The table definitions, `{ks}` replaced by the keyspace.
const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.task_rows (
        partition bigint, home bigint, id text, seq bigint, plugin text, pin_version text,
        key text, due_at bigint, next_at bigint, payload text, uniqueness_key text,
        max_attempts bigint, backoff_initial_ms bigint, backoff_max_ms bigint,
        park_on_dead boolean, state text, attempts bigint, created_at bigint,
        updated_at bigint, last_error text, output text, owner_epoch bigint, rev bigint,
        generation bigint, attempt_log map<bigint, frozen<tuple<bigint, bigint, text, text, text, text>>>,
        PRIMARY KEY ((partition, home), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.task_homes (id text PRIMARY KEY, partition bigint, home bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.pending (
        partition bigint, bucket bigint, due_at bigint, seq bigint, id text, home bigint,
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
        add_column(session, ks, table, column, ty).await?;
    }
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.counters (name, next) VALUES ('task_seq', 1) IF NOT EXISTS"),
            (),
        )
        .await
        .exec()?;
    copy_old_tasks(session, opts).await
}

/// `ALTER TABLE … ADD`, unless the column is there already.
async fn add_column(
    session: &Session,
    ks: &str,
    table: &str,
    column: &str,
    ty: &str,
) -> StoreResult<()> {
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
    Ok(())
}

/// Whether the keyspace holds an earlier release's `tasks` table whose rows are not copied
/// yet. A store refuses to start on such a keyspace unless it migrates it (the window would
/// not find those tasks, and would drop their pending rows as stale).
pub(crate) async fn old_tasks_uncopied(session: &Session, ks: &str) -> StoreResult<bool> {
    let res = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'tasks'",
            (ks,),
        )
        .await
        .exec()?;
    let old_table = res
        .into_rows_result()
        .decode()?
        .maybe_first_row::<(String,)>()
        .decode()?
        .is_some();
    if !old_table {
        return Ok(false);
    }
    let res = session
        .query_unpaged(
            format!("SELECT next FROM {ks}.counters WHERE name = '{COPIED_MARK}'"),
            (),
        )
        .await
        .exec()?;
    let copied = res
        .into_rows_result()
        .decode()?
        .maybe_first_row::<(Option<i64>,)>()
        .decode()?
        .is_some();
    Ok(!copied)
}

/// Copies the rows of an earlier release's `tasks` table into `task_rows` and `task_homes`,
/// once per keyspace (see the module doc). Not resumable: a copy that fails starts over
/// (rows already copied are skipped by their `IF NOT EXISTS`).
async fn copy_old_tasks(session: &Session, opts: &CassandraOptions) -> StoreResult<()> {
    let ks = &opts.keyspace;
    if !old_tasks_uncopied(session, ks).await? {
        return Ok(());
    }
    // Rows of the first release lack `generation`.
    add_column(session, ks, "tasks", "generation", "bigint").await?;
    // The old table has no `home`: read `partition` in its place and set it below.
    let cols = TASK_COLS.replace("home,", "partition AS home,");
    let select = session
        .prepare(format!("SELECT {cols} FROM {ks}.tasks"))
        .await
        .map_err(crate::error::prepare_err)?;
    let home_insert = session
        .prepare(format!(
            "INSERT INTO {ks}.task_homes (id, partition, home) VALUES (?, ?, ?) IF NOT EXISTS"
        ))
        .await
        .map_err(crate::error::prepare_err)?;
    let row_insert = session
        .prepare(format!(
            "INSERT INTO {ks}.task_rows ({TASK_COLS}) VALUES ({}) IF NOT EXISTS",
            crate::rows::named_markers(TASK_COLS)
        ))
        .await
        .map_err(crate::error::prepare_err)?;
    let mut rows = session
        .execute_iter(select, ())
        .await
        .map_err(crate::error::pager_err)?
        .rows_stream::<TaskRow>()
        .decode()?;
    let mut n = 0u64;
    while let Some(row) = rows.next().await {
        let mut row = row.map_err(crate::error::row_err)?;
        row.home = row.due_at.div_euclid(opts.bucket_ms);
        let res = session
            .execute_unpaged(&home_insert, (&row.id, row.partition, row.home))
            .await
            .exec()?;
        // A home already there (an earlier copy's) is where the row goes.
        let lwt = crate::Lwt::parse(res)?;
        if !lwt.applied {
            match (lwt.get("partition"), lwt.get("home")) {
                (Some(CqlValue::BigInt(p)), Some(CqlValue::BigInt(h))) => {
                    row.partition = *p;
                    row.home = *h;
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "task {}: its home row has no partition or home",
                        row.id
                    )));
                }
            }
        }
        session.execute_unpaged(&row_insert, row).await.exec()?;
        n += 1;
    }
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.counters (name, next) VALUES ('{COPIED_MARK}', {n})"),
            (),
        )
        .await
        .exec()?;
    tracing::info!(keyspace = %ks, tasks = n, "copied the tasks of the old `tasks` table into `task_rows`");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_keyspace_gets_the_attempt_log_column_an_old_one_is_given() {
        let table = TABLES
            .iter()
            .find(|t| t.contains("{ks}.task_rows "))
            .expect("task_rows");
        assert!(table.contains(&format!("attempt_log {ATTEMPT_LOG_TYPE}")));
        assert!(ADDED_COLUMNS.contains(&("task_rows", "attempt_log", ATTEMPT_LOG_TYPE)));
    }
}
