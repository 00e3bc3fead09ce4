//! The embedded store's record encoding: one format-version byte, then postcard.
//!
//! The stored structs mirror the model types field by field, with explicit numeric codes for the
//! enums. Conversions destructure the model types exhaustively, so a field added to the model
//! fails to compile here instead of silently changing the file format; a new format then gets a
//! new version byte (and a decoder for the old one).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use kairos_core::model::{Attempt, AttemptOutcome, Backoff, Schedule, Task, TaskState};
use kairos_core::store::{StoreError, StoreResult};

/// Version byte in front of every encoded record.
const V1: u8 = 1;
/// Tasks: [`TaskV1`] followed by the follow-up generation (a `u32`). Attempts: [`AttemptV1`]
/// followed by the log tail (an `Option<String>`).
const V2: u8 = 2;

fn encode<T: Serialize>(what: &str, value: &T, size_hint: usize) -> StoreResult<Vec<u8>> {
    encode_as(V1, what, value, size_hint)
}

fn encode_as<T: Serialize>(
    version: u8,
    what: &str,
    value: &T,
    size_hint: usize,
) -> StoreResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(size_hint + 1);
    buf.push(version);
    postcard::to_extend(value, buf).map_err(|e| StoreError::Other(format!("encoding {what}: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&V1, body)) => whole(what, body),
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "{what}: unknown record format version {v}"
        ))),
        None => Err(StoreError::Corrupt(format!("{what}: empty record"))),
    }
}

/// `body` holds exactly one `T`.
fn whole<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> StoreResult<T> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(StoreError::Corrupt(format!(
            "{what}: {} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(StoreError::Corrupt(format!("{what}: {e}"))),
    }
}

fn state_code(s: TaskState) -> u8 {
    match s {
        TaskState::Scheduled => 0,
        TaskState::Running => 1,
        TaskState::Retrying => 2,
        TaskState::Succeeded => 3,
        TaskState::Dead => 4,
        TaskState::Cancelled => 5,
    }
}

fn state_from(code: u8) -> StoreResult<TaskState> {
    Ok(match code {
        0 => TaskState::Scheduled,
        1 => TaskState::Running,
        2 => TaskState::Retrying,
        3 => TaskState::Succeeded,
        4 => TaskState::Dead,
        5 => TaskState::Cancelled,
        _ => return Err(StoreError::Corrupt(format!("task: unknown state {code}"))),
    })
}

fn outcome_code(o: AttemptOutcome) -> u8 {
    match o {
        AttemptOutcome::Succeeded => 0,
        AttemptOutcome::Retryable => 1,
        AttemptOutcome::Permanent => 2,
    }
}

fn outcome_from(code: u8) -> StoreResult<AttemptOutcome> {
    Ok(match code {
        0 => AttemptOutcome::Succeeded,
        1 => AttemptOutcome::Retryable,
        2 => AttemptOutcome::Permanent,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "attempt: unknown outcome {code}"
            )));
        }
    })
}

/// Borrows the task's strings when encoding; owns them when decoding.
#[derive(Serialize, Deserialize)]
struct TaskV1<'a> {
    id: Cow<'a, str>,
    partition: u32,
    seq: u64,
    plugin: Cow<'a, str>,
    pin_version: Option<Cow<'a, str>>,
    key: Cow<'a, str>,
    due_at: i64,
    next_at: i64,
    payload: Cow<'a, str>,
    uniqueness_key: Option<Cow<'a, str>>,
    max_attempts: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    park_on_dead: bool,
    state: u8,
    attempts: u32,
    created_at: i64,
    updated_at: i64,
    last_error: Option<Cow<'a, str>>,
    output: Option<Cow<'a, str>>,
}

fn own(c: Cow<'_, str>) -> String {
    c.into_owned()
}

pub(super) fn encode_task(t: &Task) -> StoreResult<Vec<u8>> {
    let (v1, generation) = split_task(t);
    let hint = 64 + t.id.len() + t.plugin.len() + t.key.len() + t.payload.len();
    encode_as(V2, "task", &(v1, generation), hint)
}

/// The task as its V1 record (borrowing its strings) and its generation, the one field V2
/// adds.
fn split_task(t: &Task) -> (TaskV1<'_>, u32) {
    let Task {
        id,
        partition,
        seq,
        plugin,
        pin_version,
        key,
        due_at,
        next_at,
        payload,
        uniqueness_key,
        max_attempts,
        backoff: Backoff { initial_ms, max_ms },
        park_on_dead,
        generation,
        state,
        attempts,
        created_at,
        updated_at,
        last_error,
        output,
    } = t;
    let v1 = TaskV1 {
        id: Cow::Borrowed(id),
        partition: *partition,
        seq: *seq,
        plugin: Cow::Borrowed(plugin),
        pin_version: pin_version.as_deref().map(Cow::Borrowed),
        key: Cow::Borrowed(key),
        due_at: *due_at,
        next_at: *next_at,
        payload: Cow::Borrowed(payload),
        uniqueness_key: uniqueness_key.as_deref().map(Cow::Borrowed),
        max_attempts: *max_attempts,
        backoff_initial_ms: *initial_ms,
        backoff_max_ms: *max_ms,
        park_on_dead: *park_on_dead,
        state: state_code(*state),
        attempts: *attempts,
        created_at: *created_at,
        updated_at: *updated_at,
        last_error: last_error.as_deref().map(Cow::Borrowed),
        output: output.as_deref().map(Cow::Borrowed),
    };
    (v1, *generation)
}

pub(super) fn decode_task(bytes: &[u8]) -> StoreResult<Task> {
    // V1 (before follow-up generations): generation 0.
    let (s, generation): (TaskV1<'_>, u32) = match bytes.split_first() {
        Some((&V2, body)) => whole("task", body)?,
        _ => (decode("task", bytes)?, 0),
    };
    Ok(Task {
        id: own(s.id),
        partition: s.partition,
        seq: s.seq,
        plugin: own(s.plugin),
        pin_version: s.pin_version.map(own),
        key: own(s.key),
        due_at: s.due_at,
        next_at: s.next_at,
        payload: own(s.payload),
        uniqueness_key: s.uniqueness_key.map(own),
        max_attempts: s.max_attempts,
        backoff: Backoff {
            initial_ms: s.backoff_initial_ms,
            max_ms: s.backoff_max_ms,
        },
        park_on_dead: s.park_on_dead,
        generation,
        state: state_from(s.state)?,
        attempts: s.attempts,
        created_at: s.created_at,
        updated_at: s.updated_at,
        last_error: s.last_error.map(own),
        output: s.output.map(own),
    })
}

/// Borrows the attempt's strings when encoding; owns them when decoding.
#[derive(Serialize, Deserialize)]
struct AttemptV1<'a> {
    number: u32,
    started_at: i64,
    ended_at: i64,
    outcome: u8,
    error: Option<Cow<'a, str>>,
    plugin_digest: Option<Cow<'a, str>>,
}

pub(super) fn encode_attempt(a: &Attempt) -> StoreResult<Vec<u8>> {
    let (v1, logs) = split_attempt(a);
    let hint = 96 + logs.map_or(0, str::len);
    encode_as(V2, "attempt", &(v1, logs), hint)
}

/// The attempt as its V1 record (borrowing its strings) and its log tail, the one field V2
/// adds.
fn split_attempt(a: &Attempt) -> (AttemptV1<'_>, Option<&str>) {
    let Attempt {
        number,
        started_at,
        ended_at,
        outcome,
        error,
        plugin_digest,
        logs,
    } = a;
    let v1 = AttemptV1 {
        number: *number,
        started_at: *started_at,
        ended_at: *ended_at,
        outcome: outcome_code(*outcome),
        error: error.as_deref().map(Cow::Borrowed),
        plugin_digest: plugin_digest.as_deref().map(Cow::Borrowed),
    };
    (v1, logs.as_deref())
}

pub(super) fn decode_attempt(bytes: &[u8]) -> StoreResult<Attempt> {
    // V1 (before log tails): no logs.
    let (s, logs): (AttemptV1<'_>, Option<String>) = match bytes.split_first() {
        Some((&V2, body)) => whole("attempt", body)?,
        _ => (decode("attempt", bytes)?, None),
    };
    Ok(Attempt {
        number: s.number,
        started_at: s.started_at,
        ended_at: s.ended_at,
        outcome: outcome_from(s.outcome)?,
        error: s.error.map(own),
        plugin_digest: s.plugin_digest.map(own),
        logs,
    })
}

#[derive(Serialize, Deserialize)]
struct ScheduleV1 {
    name: String,
    cron: String,
    plugin: String,
    key: String,
    payload: String,
    timezone: Option<String>,
    last_fired: Option<i64>,
    created_at: i64,
}

pub(super) fn encode_schedule(s: &Schedule) -> StoreResult<Vec<u8>> {
    let Schedule {
        name,
        cron,
        plugin,
        key,
        payload,
        timezone,
        last_fired,
        created_at,
    } = s.clone();
    let stored = ScheduleV1 {
        name,
        cron,
        plugin,
        key,
        payload,
        timezone,
        last_fired,
        created_at,
    };
    encode("schedule", &stored, 128)
}

pub(super) fn decode_schedule(bytes: &[u8]) -> StoreResult<Schedule> {
    let s: ScheduleV1 = decode("schedule", bytes)?;
    Ok(Schedule {
        name: s.name,
        cron: s.cron,
        plugin: s.plugin,
        key: s.key,
        payload: s.payload,
        timezone: s.timezone,
        last_fired: s.last_fired,
        created_at: s.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            id: "t1".into(),
            partition: 3,
            seq: 42,
            plugin: "notify".into(),
            pin_version: Some("ab".repeat(32)),
            key: "incident-1".into(),
            due_at: -5,
            next_at: 1_700_000_000_000,
            payload: r#"{"a":1}"#.into(),
            uniqueness_key: None,
            max_attempts: 5,
            backoff: Backoff {
                initial_ms: 10,
                max_ms: 20,
            },
            park_on_dead: true,
            generation: 3,
            state: TaskState::Retrying,
            attempts: 2,
            created_at: 1,
            updated_at: 2,
            last_error: Some("boom".into()),
            output: None,
        }
    }

    #[test]
    fn task_round_trips() {
        let t = task();
        let bytes = encode_task(&t).expect("encode");
        assert_eq!(bytes[0], V2);
        assert_eq!(decode_task(&bytes).expect("decode"), t);
    }

    #[test]
    fn a_task_written_before_generations_reads_as_generation_0() {
        let t = task();
        // The record as the first format (V1, no generation) wrote it.
        let (v1, _) = split_task(&t);
        let bytes = encode("task", &v1, 64).expect("encode");
        assert_eq!(bytes[0], V1);
        let read = decode_task(&bytes).expect("decode");
        assert_eq!(read.generation, 0);
        assert_eq!(
            Task {
                generation: 3,
                ..read
            },
            t
        );
    }

    fn attempt() -> Attempt {
        Attempt {
            number: 3,
            started_at: 10,
            ended_at: 11,
            outcome: AttemptOutcome::Permanent,
            error: Some("no".into()),
            plugin_digest: Some("cd".repeat(32)),
            logs: Some("INFO sending\nERROR [stderr] panicked at src/lib.rs:3".into()),
        }
    }

    #[test]
    fn an_attempt_written_before_log_tails_reads_without_logs() {
        let a = attempt();
        // The record as the first format (V1, no logs) wrote it.
        let (v1, _) = split_attempt(&a);
        let bytes = encode("attempt", &v1, 96).expect("encode");
        assert_eq!(bytes[0], V1);
        let read = decode_attempt(&bytes).expect("decode");
        assert_eq!(read.logs, None);
        assert_eq!(
            Attempt {
                logs: a.logs.clone(),
                ..read
            },
            a
        );
        // A truncated V2 record is corrupt, not a V1 one.
        let v2 = encode_attempt(&a).expect("encode");
        assert!(matches!(
            decode_attempt(&v2[..v2.len() - 3]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn attempt_and_schedule_round_trip() {
        for a in [
            attempt(),
            Attempt {
                logs: None,
                error: None,
                ..attempt()
            },
        ] {
            let bytes = encode_attempt(&a).expect("encode");
            assert_eq!(bytes[0], V2);
            assert_eq!(decode_attempt(&bytes).expect("decode"), a);
        }
        let s = Schedule {
            name: "daily".into(),
            cron: "0 0 * * *".into(),
            plugin: "chores".into(),
            key: "k".into(),
            payload: "{}".into(),
            timezone: Some("Europe/Paris".into()),
            last_fired: Some(9),
            created_at: 1,
        };
        assert_eq!(
            decode_schedule(&encode_schedule(&s).expect("encode")).expect("decode"),
            s
        );
    }

    #[test]
    fn bad_records_are_corrupt_not_panics() {
        let good = encode_task(&task()).expect("encode");
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![3, 0, 0],
            vec![2, 0, 0],
            good[..good.len() / 2].to_vec(),
            [good.as_slice(), &[0]].concat(),
        ];
        for bytes in cases {
            assert!(
                matches!(decode_task(&bytes), Err(StoreError::Corrupt(_))),
                "{bytes:?}"
            );
        }
        let mut bad_state = good.clone();
        // The state byte sits after the variable-length fields; find it by re-encoding with a
        // different state and diffing.
        let mut other = task();
        other.state = TaskState::Dead;
        let other = encode_task(&other).expect("encode");
        let pos = good
            .iter()
            .zip(&other)
            .position(|(a, b)| a != b)
            .expect("states differ");
        bad_state[pos] = 99;
        assert!(matches!(
            decode_task(&bad_state),
            Err(StoreError::Corrupt(_))
        ));
    }
}
