//! Turning requests into durable tasks: validation shared by the HTTP API, plugin follow-ups
//! and recurring schedules, and the intake that makes them durable and hands them to the
//! scheduler.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use chrono::DateTime;
use kairos_core::clock::Clock;
use kairos_core::ids::TaskIds;
use kairos_core::model::{Backoff, EnqueueOutcome, Millis, NewTask};
use kairos_core::partition::partition_for;
use kairos_core::store::{StoreError, TaskStore};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::TaskDefaults;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;

/// Makes tasks durable and routes them to their partition's owner.
#[async_trait]
pub trait TaskIntake: Send + Sync + 'static {
    /// Returns once every task is durable, one outcome per input, in order.
    async fn submit(&self, batch: Vec<NewTask>) -> Result<Vec<EnqueueOutcome>, StoreError>;
}

/// The embedded intake: persist in the local store (group commit), then hand the new tasks to
/// the local scheduler, which owns every partition.
pub struct LocalIntake {
    pub store: Arc<dyn TaskStore>,
    pub scheduler: Arc<Scheduler>,
}

#[async_trait]
impl TaskIntake for LocalIntake {
    async fn submit(&self, batch: Vec<NewTask>) -> Result<Vec<EnqueueOutcome>, StoreError> {
        let outcomes = self.store.enqueue(batch).await?;
        // Duplicates too: a pending one may come from an earlier try whose answer was lost,
        // never handed to the scheduler. (The window ignores tasks it holds already.)
        let pending = outcomes
            .iter()
            .map(EnqueueOutcome::task)
            .filter(|t| t.is_pending())
            .cloned()
            .collect();
        self.scheduler.deliver(pending).await;
        Ok(outcomes)
    }
}

/// Which plugins exist (the runtime's registry; a fixed list in tests).
pub trait PluginCatalog: Send + Sync + 'static {
    /// `Err` with a clear message when the plugin (or the pinned version) is unknown.
    fn check(&self, plugin: &str, version: Option<&str>) -> Result<(), String>;
}

/// A task as a client describes it (`POST /v1/tasks`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    pub plugin: String,
    pub key: String,
    /// RFC 3339; `delay_ms` instead, or neither for now.
    #[serde(default)]
    pub run_at: Option<String>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    #[serde(default)]
    pub uniqueness_key: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub pin_version: Option<String>,
    /// Keep the key parked when this task dies, until an operator resumes it.
    #[serde(default)]
    pub park_on_dead: bool,
    #[serde(default)]
    pub backoff_initial_ms: Option<u64>,
    #[serde(default)]
    pub backoff_max_ms: Option<u64>,
}

/// A request that cannot be accepted, with the HTTP status that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

impl Rejection {
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

pub struct Enqueuer {
    pub intake: Arc<dyn TaskIntake>,
    pub catalog: Arc<dyn PluginCatalog>,
    pub clock: Arc<dyn Clock>,
    pub defaults: TaskDefaults,
    pub partitions: u32,
    /// How new tasks' ids are made (ids that name their home on Cassandra).
    pub ids: TaskIds,
    pub metrics: Arc<Metrics>,
}

pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Enqueuer {
    /// Validates a client request into a task.
    pub fn build(&self, req: EnqueueRequest, now: Millis) -> Result<NewTask, Rejection> {
        if req.key.is_empty() {
            return Err(Rejection::bad("`key` must not be empty"));
        }
        let due_at = match (&req.run_at, req.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(Rejection::bad("give `run_at` or `delay_ms`, not both"));
            }
            (Some(s), None) => {
                let t = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        Rejection::bad(format!("`run_at` {s:?} is not an RFC 3339 time: {e}"))
                    })?
                    .timestamp_millis();
                let past = now - t;
                if past > self.defaults.max_past_ms {
                    return Err(Rejection::bad(format!(
                        "`run_at` {s} is {}s in the past (at most {}s is accepted, and runs at once); omit `run_at` to run now",
                        past / 1000,
                        self.defaults.max_past_ms / 1000
                    )));
                }
                t
            }
            (None, Some(d)) => now.saturating_add(d.min(i64::MAX as u64) as i64),
            (None, None) => now,
        };
        let payload = req.payload.as_ref().map(|p| p.get()).unwrap_or("{}");
        let backoff = Backoff {
            initial_ms: req
                .backoff_initial_ms
                .unwrap_or(self.defaults.backoff_initial_ms),
            max_ms: req.backoff_max_ms.unwrap_or(self.defaults.backoff_max_ms),
        };
        if req.max_attempts == Some(0) {
            return Err(Rejection::bad("`max_attempts` must be at least 1"));
        }
        self.task(TaskSpec {
            plugin: req.plugin,
            key: req.key,
            due_at,
            payload: payload.to_string(),
            uniqueness_key: req.uniqueness_key,
            max_attempts: req.max_attempts,
            pin_version: req.pin_version,
            park_on_dead: req.park_on_dead,
            generation: 0,
            backoff,
            now,
        })
    }

    /// The checks every task passes, whatever its origin.
    pub fn task(&self, s: TaskSpec) -> Result<NewTask, Rejection> {
        let max_key = self.defaults.max_key_bytes;
        for (what, v) in [
            ("key", Some(&s.key)),
            ("uniqueness_key", s.uniqueness_key.as_ref()),
        ] {
            if let Some(v) = v
                && v.len() > max_key
            {
                return Err(Rejection {
                    status: 413,
                    message: format!(
                        "`{what}` is {} bytes, over the limit of {max_key} bytes",
                        v.len()
                    ),
                });
            }
        }
        if s.payload.len() > self.defaults.max_payload_bytes {
            return Err(Rejection {
                status: 413,
                message: format!(
                    "payload is {} bytes, over the limit of {} bytes",
                    s.payload.len(),
                    self.defaults.max_payload_bytes
                ),
            });
        }
        self.catalog
            .check(&s.plugin, s.pin_version.as_deref())
            .map_err(|message| Rejection {
                status: 422,
                message,
            })?;
        let partition = partition_for(&s.key, self.partitions);
        Ok(NewTask {
            id: self.ids.new_id(partition, s.due_at),
            partition,
            plugin: s.plugin,
            pin_version: s.pin_version,
            key: s.key,
            due_at: s.due_at,
            payload: s.payload,
            uniqueness_key: s.uniqueness_key,
            max_attempts: s.max_attempts.unwrap_or(self.defaults.max_attempts),
            backoff: s.backoff,
            park_on_dead: s.park_on_dead,
            generation: s.generation,
            created_at: s.now,
        })
    }

    pub fn default_backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.defaults.backoff_initial_ms,
            max_ms: self.defaults.backoff_max_ms,
        }
    }

    /// Makes tasks durable; counts what was new and what was a duplicate.
    pub async fn submit(&self, tasks: Vec<NewTask>) -> Result<Vec<EnqueueOutcome>, StoreError> {
        let outcomes = self.intake.submit(tasks).await?;
        let dups = outcomes
            .iter()
            .filter(|o| matches!(o, EnqueueOutcome::Duplicate(_)))
            .count() as u64;
        self.metrics
            .enqueued
            .fetch_add(outcomes.len() as u64 - dups, Relaxed);
        self.metrics.deduplicated.fetch_add(dups, Relaxed);
        Ok(outcomes)
    }
}

/// A validated-to-be task from any origin.
pub struct TaskSpec {
    pub plugin: String,
    pub key: String,
    pub due_at: Millis,
    pub payload: String,
    pub uniqueness_key: Option<String>,
    pub max_attempts: Option<u32>,
    pub pin_version: Option<String>,
    pub park_on_dead: bool,
    /// Follow-up generation (0 unless a plugin schedules it).
    pub generation: u32,
    pub backoff: Backoff,
    pub now: Millis,
}
