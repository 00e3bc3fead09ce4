//! The task topic's record format, version 1 (documented for producers in `RECORDS.md`).
//!
//! - message key: the task's ordering key (UTF-8);
//! - partition: Kafka's default partitioner, `murmur2(key) & 0x7fffffff % partitions`
//!   ([`kairos_core::partition::partition_for`]); a record is owned by the partition it was
//!   written to, whatever its key hashes to (see [`Decoded::misrouted`]);
//! - value: a JSON object, [`WireTask`].

use chrono::DateTime;
use kairos_core::model::{Backoff, Millis, NewTask};
use kairos_core::partition::partition_for;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::RecordDefaults;

/// The record version this crate writes and reads.
pub const VERSION: u32 = 1;

/// Longest accepted task id.
pub const MAX_ID_LEN: usize = 200;

/// The JSON value of a task record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireTask {
    /// Must be [`VERSION`].
    pub v: u32,
    /// Task id. When absent, a stable id is derived from the record's position
    /// ([`derived_id`]) so that a re-delivered record dedups to the same task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub plugin: String,
    /// The ordering key; must equal the message key when the record has one.
    pub key: String,
    /// Due time, Unix epoch milliseconds. At most one of `due_at_ms` and `run_at`; neither
    /// means "now" (the record's timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at_ms: Option<Millis>,
    /// Due time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Any JSON value; absent or `null` means `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniqueness_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// A plugin version digest (sha256 hex) to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub park_on_dead: Option<bool>,
    /// Follow-up generation (absent: 0, a task from a client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_initial_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<u64>,
    /// When the task was accepted (Unix ms); defaults to the record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<Millis>,
}

/// Encodes a task as a record value (what [`crate::KafkaIntake`] writes). `Err` if the
/// payload is not JSON.
pub fn encode(task: &NewTask) -> Result<Vec<u8>, String> {
    let payload = RawValue::from_string(task.payload.clone())
        .map_err(|e| format!("task {}: payload is not JSON: {e}", task.id))?;
    let wire = WireTask {
        v: VERSION,
        id: Some(task.id.clone()),
        plugin: task.plugin.clone(),
        key: task.key.clone(),
        due_at_ms: Some(task.due_at),
        run_at: None,
        payload: Some(payload),
        uniqueness_key: task.uniqueness_key.clone(),
        max_attempts: Some(task.max_attempts),
        pin_version: task.pin_version.clone(),
        park_on_dead: task.park_on_dead.then_some(true),
        generation: (task.generation > 0).then_some(task.generation),
        backoff_initial_ms: Some(task.backoff.initial_ms),
        backoff_max_ms: Some(task.backoff.max_ms),
        created_at_ms: Some(task.created_at),
    };
    serde_json::to_vec(&wire).map_err(|e| format!("task {}: {e}", task.id))
}

/// Where a record was read from.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), Unix ms.
    pub timestamp_ms: Option<Millis>,
    pub message_key: Option<&'a [u8]>,
}

/// Why a record was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// `task.partition` is the partition the record was read from: that partition's owner
    /// runs it.
    pub task: NewTask,
    /// The key hashes to another partition: the producer did not use Kafka's default
    /// (murmur2) partitioner, so per-key order is only kept among records of that producer.
    pub misrouted: bool,
}

/// The id given to a record without one: a UUID (v5, URL namespace) of
/// `kafka://{topic}/{partition}/{offset}`, the same every time the record is read.
pub fn derived_id(topic: &str, partition: u32, offset: i64) -> String {
    let name = format!("kafka://{topic}/{partition}/{offset}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// Decodes and validates a record value. `now` is used only when the record carries no
/// timestamp.
pub fn decode(
    value: Option<&[u8]>,
    meta: &RecordMeta<'_>,
    partitions: u32,
    defaults: &RecordDefaults,
    now: Millis,
) -> Result<Decoded, Malformed> {
    let bad = |m: String| Err(Malformed(m));
    let Some(value) = value else {
        return bad("record has no value".into());
    };
    let wire: WireTask = serde_json::from_slice(value)
        .map_err(|e| Malformed(format!("value is not a v{VERSION} task record: {e}")))?;
    if wire.v != VERSION {
        return bad(format!(
            "unsupported record version v={} (this node reads v={VERSION})",
            wire.v
        ));
    }
    if wire.plugin.is_empty() {
        return bad("`plugin` must not be empty".into());
    }
    if wire.key.is_empty() {
        return bad("`key` must not be empty".into());
    }
    if let Some(k) = meta.message_key
        && k != wire.key.as_bytes()
    {
        return bad(format!(
            "message key {:?} differs from the record's `key` {:?}",
            String::from_utf8_lossy(k),
            wire.key
        ));
    }
    let id = match wire.id {
        Some(id) if id.is_empty() || id.len() > MAX_ID_LEN => {
            return bad(format!("`id` must have 1 to {MAX_ID_LEN} characters"));
        }
        Some(id) => id,
        None => derived_id(meta.topic, meta.partition, meta.offset),
    };
    let stamp = meta.timestamp_ms.unwrap_or(now);
    let due_at = match (wire.due_at_ms, &wire.run_at) {
        (Some(_), Some(_)) => return bad("give `due_at_ms` or `run_at`, not both".into()),
        (Some(ms), None) => ms,
        (None, Some(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| Malformed(format!("`run_at` {s:?} is not an RFC 3339 time: {e}")))?
            .timestamp_millis(),
        (None, None) => stamp,
    };
    let payload = match &wire.payload {
        Some(p) if p.get() != "null" => p.get().to_string(),
        _ => "{}".to_string(),
    };
    if defaults.max_payload_bytes > 0 && payload.len() > defaults.max_payload_bytes {
        return bad(format!(
            "payload is {} bytes, over the limit of {}",
            payload.len(),
            defaults.max_payload_bytes
        ));
    }
    let max_attempts = wire.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        return bad("`max_attempts` must be at least 1".into());
    }
    let misrouted = partition_for(&wire.key, partitions) != meta.partition;
    Ok(Decoded {
        task: NewTask {
            id,
            partition: meta.partition,
            plugin: wire.plugin,
            pin_version: wire.pin_version,
            key: wire.key,
            due_at,
            payload,
            uniqueness_key: wire.uniqueness_key,
            max_attempts,
            backoff: Backoff {
                initial_ms: wire
                    .backoff_initial_ms
                    .unwrap_or(defaults.backoff.initial_ms),
                max_ms: wire.backoff_max_ms.unwrap_or(defaults.backoff.max_ms),
            },
            park_on_dead: wire.park_on_dead.unwrap_or(false),
            generation: wire.generation.unwrap_or(0),
            created_at: wire.created_at_ms.unwrap_or(stamp),
        },
        misrouted,
    })
}

#[cfg(test)]
mod tests;
