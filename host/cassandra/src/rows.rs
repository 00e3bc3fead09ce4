//! Rows of the `task_rows`, `attempts` and `schedules` tables and their conversion to the model.
//! A task's attempt records live in its row (`attempt_log`, written by the finish's own
//! compare-and-set), without their logs: an attempt with log lines is also written whole to
//! the `attempts` table (one partition per task), which holds the records of earlier
//! releases too. So the row partitions of tasks due together do not fill with logs.
//! Nothing read from the database is trusted: out-of-range numbers and unknown states are
//! [`StoreError::Corrupt`].

use std::collections::BTreeMap;

use kairos_core::model::{Attempt, AttemptOutcome, Backoff, Schedule, Task, TaskState};
use kairos_core::store::{StoreError, StoreResult};
use scylla::value::MaybeUnset;
use scylla::{DeserializeRow, SerializeRow};

/// The CQL type of `task_rows.attempt_log`: attempt number → (started_at, ended_at, outcome,
/// error, plugin_digest, logs).
pub(crate) const ATTEMPT_LOG_TYPE: &str =
    "map<bigint, frozen<tuple<bigint, bigint, text, text, text, text>>>";

/// One entry of `attempt_log` (see [`ATTEMPT_LOG_TYPE`]).
pub(crate) type AttemptCell = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// An attempt as an `attempt_log` entry: without its logs.
pub(crate) fn attempt_cell(a: &Attempt) -> (i64, AttemptCell) {
    (
        i64::from(a.number),
        (
            a.started_at,
            a.ended_at,
            outcome_str(a.outcome).to_owned(),
            a.error.clone(),
            a.plugin_digest.clone(),
            None,
        ),
    )
}

/// The attempts of task `id` from its `attempt_log`.
pub(crate) fn attempts_of_log(
    id: &str,
    log: BTreeMap<i64, AttemptCell>,
) -> StoreResult<Vec<Attempt>> {
    log.into_iter()
        .map(
            |(number, (started_at, ended_at, outcome, error, plugin_digest, logs))| {
                AttemptRow {
                    number,
                    started_at,
                    ended_at,
                    outcome,
                    error,
                    plugin_digest,
                    logs,
                }
                .into_attempt(id)
            },
        )
        .collect()
}

/// The columns of `task_rows`, in the order of [`TaskRow`].
pub(crate) const TASK_COLS: &str = "id, partition, home, seq, plugin, pin_version, key, due_at, \
    next_at, payload, uniqueness_key, max_attempts, backoff_initial_ms, backoff_max_ms, \
    park_on_dead, state, attempts, created_at, updated_at, last_error, output, owner_epoch, rev, \
    generation";

/// What retention reads of a task row ([`PURGE_COLS`]): enough to tell whether it expired and
/// to delete it with its index rows, without its payload and output (a page holds up to
/// thousands of rows). Every column but the key may be null here: a row retention cannot
/// judge is left alone, and the scan goes on past it.
#[derive(Debug, Clone, DeserializeRow)]
pub(crate) struct PurgeRow {
    pub id: String,
    pub partition: i64,
    pub home: i64,
    pub seq: Option<i64>,
    pub key: Option<String>,
    pub due_at: Option<i64>,
    pub uniqueness_key: Option<String>,
    pub park_on_dead: Option<bool>,
    pub state: Option<String>,
    pub updated_at: Option<i64>,
    pub rev: Option<i64>,
}

/// The columns of [`PurgeRow`].
pub(crate) const PURGE_COLS: &str =
    "id, partition, home, seq, key, due_at, uniqueness_key, park_on_dead, state, updated_at, rev";

/// `:a, :b, …` for the columns `a, b, …`.
pub(crate) fn named_markers(cols: &str) -> String {
    cols.split(", ")
        .map(|c| format!(":{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, DeserializeRow, SerializeRow)]
pub(crate) struct TaskRow {
    pub id: String,
    pub partition: i64,
    /// The row's home bucket (see [`crate::schema`]): fixed when the task is first written.
    pub home: i64,
    pub seq: i64,
    pub plugin: String,
    pub pin_version: Option<String>,
    pub key: String,
    pub due_at: i64,
    pub next_at: i64,
    pub payload: String,
    pub uniqueness_key: Option<String>,
    pub max_attempts: i64,
    pub backoff_initial_ms: i64,
    pub backoff_max_ms: i64,
    pub park_on_dead: bool,
    pub state: String,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
    pub output: Option<String>,
    pub owner_epoch: i64,
    pub rev: i64,
    /// Added after the first release: null in rows written before (generation 0).
    pub generation: Option<i64>,
}

/// Values of the compare-and-set update (`UPDATE task_rows SET … WHERE partition = :partition
/// AND home = :home AND id = :id IF rev = :expected_rev AND seq = :expected_seq`). `rev` is bumped by every change; `seq` tells apart
/// two inserts of the same id (an enqueue replayed by two nodes at once, or an id enqueued
/// again after its task was purged), which both start at `rev` 0.
#[derive(Debug, Clone, SerializeRow)]
pub(crate) struct TaskCas {
    pub due_at: i64,
    pub next_at: i64,
    pub max_attempts: i64,
    pub park_on_dead: bool,
    pub state: String,
    pub attempts: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
    pub output: Option<String>,
    pub owner_epoch: i64,
    pub rev: i64,
    pub partition: i64,
    pub home: i64,
    pub id: String,
    pub expected_rev: i64,
    pub expected_seq: i64,
    /// The attempt a finish records (`attempt_log + {number: record}`); unset otherwise.
    pub attempt_log: MaybeUnset<BTreeMap<i64, AttemptCell>>,
}

fn corrupt(id: &str, what: &str, v: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("task {id}: {what} {v} is out of range"))
}

fn to_db(what: &str, v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Other(format!("{what} {v} does not fit a bigint")))
}

/// A task as stored, with the columns the model does not have.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub task: Task,
    /// Where the row lives: `task_rows` partition `(task.partition, home)`.
    pub home: i64,
    pub owner_epoch: u64,
    pub rev: i64,
}

impl TaskRow {
    pub(crate) fn from_task(t: &Task, home: i64, owner_epoch: u64, rev: i64) -> StoreResult<Self> {
        Ok(Self {
            id: t.id.clone(),
            partition: i64::from(t.partition),
            home,
            seq: to_db("seq", t.seq)?,
            plugin: t.plugin.clone(),
            pin_version: t.pin_version.clone(),
            key: t.key.clone(),
            due_at: t.due_at,
            next_at: t.next_at,
            payload: t.payload.clone(),
            uniqueness_key: t.uniqueness_key.clone(),
            max_attempts: i64::from(t.max_attempts),
            backoff_initial_ms: to_db("backoff.initial_ms", t.backoff.initial_ms)?,
            backoff_max_ms: to_db("backoff.max_ms", t.backoff.max_ms)?,
            park_on_dead: t.park_on_dead,
            state: t.state.as_str().to_owned(),
            attempts: i64::from(t.attempts),
            created_at: t.created_at,
            updated_at: t.updated_at,
            last_error: t.last_error.clone(),
            output: t.output.clone(),
            owner_epoch: to_db("owner_epoch", owner_epoch)?,
            rev,
            generation: Some(i64::from(t.generation)),
        })
    }

    pub(crate) fn into_stored(self) -> StoreResult<Stored> {
        let id = self.id;
        let u32_of = |what: &str, v: i64| u32::try_from(v).map_err(|_| corrupt(&id, what, v));
        let u64_of = |what: &str, v: i64| u64::try_from(v).map_err(|_| corrupt(&id, what, v));
        let state = TaskState::parse(&self.state).ok_or_else(|| {
            StoreError::Corrupt(format!("task {id}: unknown state {:?}", self.state))
        })?;
        let task = Task {
            partition: u32_of("partition", self.partition)?,
            seq: u64_of("seq", self.seq)?,
            plugin: self.plugin,
            pin_version: self.pin_version,
            key: self.key,
            due_at: self.due_at,
            next_at: self.next_at,
            payload: self.payload,
            uniqueness_key: self.uniqueness_key,
            max_attempts: u32_of("max_attempts", self.max_attempts)?,
            backoff: Backoff {
                initial_ms: u64_of("backoff_initial_ms", self.backoff_initial_ms)?,
                max_ms: u64_of("backoff_max_ms", self.backoff_max_ms)?,
            },
            park_on_dead: self.park_on_dead,
            generation: u32_of("generation", self.generation.unwrap_or(0))?,
            state,
            attempts: u32_of("attempts", self.attempts)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_error: self.last_error,
            output: self.output,
            id: String::new(),
        };
        let owner_epoch = u64_of("owner_epoch", self.owner_epoch)?;
        Ok(Stored {
            task: Task { id, ..task },
            home: self.home,
            owner_epoch,
            rev: self.rev,
        })
    }
}

impl TaskCas {
    /// The update that turns the stored `old` into `new`, claimed by `owner_epoch`, recording
    /// `attempt` (a finish's) in the row.
    pub(crate) fn new(
        old: &Stored,
        new: &Task,
        owner_epoch: u64,
        attempt: Option<(i64, AttemptCell)>,
    ) -> StoreResult<Self> {
        Ok(Self {
            due_at: new.due_at,
            next_at: new.next_at,
            max_attempts: i64::from(new.max_attempts),
            park_on_dead: new.park_on_dead,
            state: new.state.as_str().to_owned(),
            attempts: i64::from(new.attempts),
            updated_at: new.updated_at,
            last_error: new.last_error.clone(),
            output: new.output.clone(),
            owner_epoch: to_db("owner_epoch", owner_epoch)?,
            rev: old.rev.wrapping_add(1),
            partition: i64::from(old.task.partition),
            home: old.home,
            id: new.id.clone(),
            expected_rev: old.rev,
            expected_seq: to_db("seq", old.task.seq)?,
            attempt_log: match attempt {
                Some(cell) => MaybeUnset::Set(BTreeMap::from([cell])),
                None => MaybeUnset::Unset,
            },
        })
    }
}

pub(crate) const ATTEMPT_COLS: &str =
    "number, started_at, ended_at, outcome, error, plugin_digest, logs";

#[derive(Debug, Clone, DeserializeRow)]
pub(crate) struct AttemptRow {
    pub number: i64,
    pub started_at: i64,
    pub ended_at: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub plugin_digest: Option<String>,
    /// Added after the first release: null in rows written before.
    pub logs: Option<String>,
}

pub(crate) fn outcome_str(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Retryable => "retryable",
        AttemptOutcome::Permanent => "permanent",
    }
}

impl AttemptRow {
    pub(crate) fn into_attempt(self, id: &str) -> StoreResult<Attempt> {
        let outcome = match self.outcome.as_str() {
            "succeeded" => AttemptOutcome::Succeeded,
            "retryable" => AttemptOutcome::Retryable,
            "permanent" => AttemptOutcome::Permanent,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "attempt of task {id}: unknown outcome {other:?}"
                )));
            }
        };
        Ok(Attempt {
            number: u32::try_from(self.number).map_err(|_| corrupt(id, "attempt", self.number))?,
            started_at: self.started_at,
            ended_at: self.ended_at,
            outcome,
            error: self.error,
            plugin_digest: self.plugin_digest,
            logs: self.logs,
        })
    }
}

pub(crate) const SCHEDULE_COLS: &str =
    "name, cron, plugin, key, payload, timezone, last_fired, created_at";

#[derive(Debug, Clone, DeserializeRow, SerializeRow)]
pub(crate) struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub plugin: String,
    pub key: String,
    pub payload: String,
    pub timezone: Option<String>,
    pub last_fired: Option<i64>,
    pub created_at: i64,
}

impl From<ScheduleRow> for Schedule {
    fn from(r: ScheduleRow) -> Self {
        Schedule {
            name: r.name,
            cron: r.cron,
            plugin: r.plugin,
            key: r.key,
            payload: r.payload,
            timezone: r.timezone,
            last_fired: r.last_fired,
            created_at: r.created_at,
        }
    }
}

impl From<&Schedule> for ScheduleRow {
    fn from(s: &Schedule) -> Self {
        ScheduleRow {
            name: s.name.clone(),
            cron: s.cron.clone(),
            plugin: s.plugin.clone(),
            key: s.key.clone(),
            payload: s.payload.clone(),
            timezone: s.timezone.clone(),
            last_fired: s.last_fired,
            created_at: s.created_at,
        }
    }
}
