//! Durable key-value state, private to this plugin and shared by all its tasks.
//!
//! Values are bytes; [`get_json`] and [`set_json`] store serde types as JSON. Writes are
//! durable once the call returns, whatever happens to the attempt afterwards, so write
//! idempotently (keyed by the task id, or recording a state that a retry can re-check).

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::kairos::plugin::kv as wit;

/// An entry as listed by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// The full key.
    pub key: String,
    /// Last write, Unix epoch milliseconds.
    pub updated_at_ms: i64,
    /// Value size in bytes.
    pub size: u64,
}

/// A failed kv operation.
///
/// Converts into a retryable [`TaskError`](crate::TaskError) when the host refused or failed,
/// and a permanent one when a value could not be encoded or decoded as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError {
    message: String,
    data: bool,
}

impl KvError {
    fn host(op: &str, key: &str, message: String) -> Self {
        KvError {
            message: format!("kv {op} `{key}` failed: {message}"),
            data: false,
        }
    }

    fn data(message: String) -> Self {
        KvError {
            message,
            data: true,
        }
    }

    /// Whether the value itself was at fault (JSON encoding or decoding), not the host.
    pub fn is_data_error(&self) -> bool {
        self.data
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KvError {}

impl From<KvError> for crate::TaskError {
    fn from(error: KvError) -> Self {
        if error.data {
            crate::TaskError::permanent(error.message)
        } else {
            crate::TaskError::retryable(error.message)
        }
    }
}

/// The value at `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    wit::get(key).map_err(|e| KvError::host("get", key, e))
}

/// Stores `value` at `key`, replacing any previous value.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), KvError> {
    wit::set(key, value.as_ref()).map_err(|e| KvError::host("set", key, e))
}

/// Deletes `key`; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    wit::delete(key).map_err(|e| KvError::host("delete", key, e))
}

/// Entries whose key starts with `prefix`, in key order, at most `limit` of them.
pub fn list(prefix: &str, limit: u32) -> Result<Vec<EntryMeta>, KvError> {
    let entries = wit::list_entries(prefix, limit).map_err(|e| KvError::host("list", prefix, e))?;
    Ok(entries
        .into_iter()
        .map(|e| EntryMeta {
            key: e.key,
            updated_at_ms: e.updated_at_ms,
            size: e.size,
        })
        .collect())
}

/// The value at `key` decoded from JSON, if any.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvError> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            KvError::data(format!(
                "kv value at `{key}` is not valid JSON for {}: {e}",
                std::any::type_name::<T>()
            ))
        }),
    }
}

/// Stores `value` as JSON at `key`.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), KvError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| KvError::data(format!("cannot encode the kv value for `{key}`: {e}")))?;
    set(key, bytes)
}
