//! Glue between the scheduler and the Wasm runtime: the executor, the plugin catalog used to
//! validate enqueues, and the host services (kv, follow-up tasks) plugins call back into.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_core::model::{ATTEMPT_LOG_MAX_LINES, Task, log_tail};
use kairos_core::store::TaskStore;
use kairos_runtime::{
    FollowUp, HostServices, KvEntry, LogLine, LogSource, RunOutcome, RunRequest, Runtime, TaskInfo,
    When,
};

use crate::api::PluginLister;
use crate::enqueue::{Enqueuer, PluginCatalog, TaskSpec};
use crate::scheduler::{ExecOutcome, ExecResult, Executor};

/// Runs attempts in the Wasm runtime, a fresh instance each.
pub struct WasmExecutor {
    pub runtime: Arc<Runtime>,
}

#[async_trait]
impl Executor for WasmExecutor {
    async fn execute(&self, task: &Task, attempt: u32) -> ExecOutcome {
        let report = self
            .runtime
            .run(RunRequest {
                task: TaskInfo {
                    id: task.id.clone(),
                    key: task.key.clone(),
                    plugin: task.plugin.clone(),
                    attempt,
                    due_at_ms: task.due_at,
                    payload: task.payload.clone(),
                    generation: task.generation,
                },
                pin_version: task.pin_version.clone(),
            })
            .await;
        for line in &report.logs {
            tracing::debug!(task = %task.id, plugin = %task.plugin, "plugin log: {line:?}");
        }
        let result = match report.outcome {
            RunOutcome::Success { output } => ExecResult::Success { output },
            RunOutcome::Retryable {
                message,
                retry_after_ms,
            } => ExecResult::Retry {
                error: message,
                retry_after_ms,
            },
            RunOutcome::Permanent { message } => ExecResult::Permanent { error: message },
            // Traps, limits and a missing plugin are failed attempts: retried with backoff
            // (a fixed plugin version may be hot-loaded meanwhile), until attempts run out.
            RunOutcome::Failed { kind, message } => ExecResult::Retry {
                error: format!("{kind}: {message}"),
                retry_after_ms: None,
            },
        };
        ExecOutcome {
            result,
            digest: report.digest,
            // Every formatted line is at least one line: the last ones are all the tail needs.
            logs: log_tail(
                report.logs[report.logs.len().saturating_sub(ATTEMPT_LOG_MAX_LINES)..]
                    .iter()
                    .map(attempt_log_line),
            ),
        }
    }

    fn reservation_mb(&self, plugin: &str) -> u64 {
        self.runtime.reservation_mb(plugin)
    }
}

/// A log line as the attempt's history keeps it: `LEVEL message k=v …`, with the source in
/// brackets for lines the plugin did not log itself (`ERROR [stderr] …`, `WARN [host] …`).
fn attempt_log_line(l: &LogLine) -> String {
    use std::fmt::Write;
    let mut s = l.level.to_string().to_uppercase();
    // Writing to a String cannot fail.
    if l.source != LogSource::Plugin {
        let _ = write!(s, " [{}]", l.source);
    }
    let _ = write!(s, " {}", l.message);
    for (k, v) in &l.fields {
        let _ = write!(s, " {k}={v}");
    }
    s
}

/// The runtime's registry as the enqueue path sees it.
pub struct RuntimeCatalog(pub Arc<Runtime>);

impl PluginCatalog for RuntimeCatalog {
    fn check(&self, plugin: &str, version: Option<&str>) -> Result<(), String> {
        self.0
            .resolve(plugin, version)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl PluginLister for RuntimeCatalog {
    fn list(&self) -> serde_json::Value {
        serde_json::to_value(self.0.plugins()).unwrap_or_default()
    }

    fn rejected(&self) -> serde_json::Value {
        serde_json::to_value(self.0.rejected_plugins()).unwrap_or_default()
    }
}

/// kv and follow-up scheduling for plugins, backed by the node's store and enqueue path.
pub struct StoreServices {
    pub store: Arc<dyn TaskStore>,
    /// Set once the runtime (which the enqueuer validates against) exists. Weak: the enqueuer
    /// holds the runtime, which holds these services; a strong handle would be a cycle that
    /// keeps the store (and its writer thread) open after the node stops.
    pub enqueuer: OnceLock<Weak<Enqueuer>>,
    /// Each plugin's kv bytes as last read, and when: the store is asked again after
    /// [`KV_USAGE_TTL`] (on Cassandra it sums the plugin's partition). Writes since are added.
    pub kv_usage: Mutex<HashMap<String, (u64, Instant)>>,
}

impl StoreServices {
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        Self {
            store,
            enqueuer: OnceLock::new(),
            kv_usage: Mutex::new(HashMap::new()),
        }
    }

    fn usage_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.kv_usage.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const KV_USAGE_TTL: Duration = Duration::from_secs(1);

const KV_LIST_MAX: u32 = 1_000;

/// A follow-up's explicit time may lie this far in the past (clock steps between the plugin's
/// reading of the time and the host's); older is refused.
const FOLLOW_UP_PAST_SLACK_MS: i64 = 1_000;

/// The stored uniqueness key of a follow-up: `plugin:NAME:KEY`, the scheduling plugin's
/// namespace.
pub fn follow_up_uniqueness_key(plugin: &str, key: &str) -> String {
    format!("plugin:{plugin}:{key}")
}

#[async_trait]
impl HostServices for StoreServices {
    async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .kv_get(plugin, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        let now = kairos_core::clock::system_now();
        let size = (key.len() + value.len()) as u64;
        self.store
            .kv_set(plugin, key, value, now)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(u) = self.usage_cache().get_mut(plugin) {
            u.0 = u.0.saturating_add(size);
        }
        Ok(())
    }

    async fn kv_usage(&self, plugin: &str) -> Result<u64, String> {
        if let Some((n, at)) = self.usage_cache().get(plugin)
            && at.elapsed() < KV_USAGE_TTL
        {
            return Ok(*n);
        }
        let n = self
            .store
            .kv_usage(plugin)
            .await
            .map_err(|e| e.to_string())?;
        self.usage_cache()
            .insert(plugin.to_string(), (n, Instant::now()));
        Ok(n)
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, String> {
        self.store
            .kv_delete(plugin, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<KvEntry>, String> {
        let entries = self
            .store
            .kv_list(plugin, prefix, limit.clamp(1, KV_LIST_MAX) as usize)
            .await
            .map_err(|e| e.to_string())?;
        Ok(entries
            .into_iter()
            .map(|e| KvEntry {
                key: e.key,
                updated_at_ms: e.updated_at,
                size: e.size,
            })
            .collect())
    }

    async fn schedule(&self, origin: &TaskInfo, req: FollowUp) -> Result<String, String> {
        let enq = self
            .enqueuer
            .get()
            .ok_or("the node is still starting")?
            .upgrade()
            .ok_or("the node is stopping")?;
        let generation = origin.generation.saturating_add(1);
        if generation > enq.defaults.max_follow_up_depth {
            return Err(format!(
                "follow-up depth limit: task {} is itself generation {} of follow-ups, and \
                 tasks.max_follow_up_depth = {}",
                origin.id, origin.generation, enq.defaults.max_follow_up_depth
            ));
        }
        let now = enq.clock.now();
        let due_at = match req.when {
            When::DelayMs(d) => now.saturating_add(d.min(i64::MAX as u64) as i64),
            When::AtMs(t) if t < now.saturating_sub(FOLLOW_UP_PAST_SLACK_MS) => {
                return Err(format!(
                    "follow-up at-ms {t} is {} ms in the past; use a delay (0 runs it now)",
                    now - t
                ));
            }
            When::AtMs(t) => t,
        };
        // A plugin's uniqueness keys live in its own namespace: no plugin (nor a client that
        // guesses a key) can claim another's follow-up and silence it. The API may set any.
        let uniqueness_key = req
            .uniqueness_key
            .map(|u| follow_up_uniqueness_key(&origin.plugin, &u));
        serde_json::from_str::<serde::de::IgnoredAny>(&req.payload)
            .map_err(|e| format!("follow-up payload is not JSON: {e}"))?;
        let task = enq
            .task(TaskSpec {
                plugin: req.plugin,
                key: req.key,
                due_at,
                payload: req.payload,
                uniqueness_key,
                max_attempts: None,
                pin_version: None,
                park_on_dead: false,
                generation,
                backoff: enq.default_backoff(),
                now,
            })
            .map_err(|e| e.message)?;
        let outcomes = enq.submit(vec![task]).await.map_err(|e| e.to_string())?;
        let id = outcomes
            .first()
            .map(|o| o.task().id.clone())
            .ok_or("store returned no outcome")?;
        tracing::debug!(from = %origin.id, follow_up = %id, "plugin scheduled a follow-up task");
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_runtime::LogLevel;

    fn line(level: LogLevel, source: LogSource, message: &str, fields: &[(&str, &str)]) -> LogLine {
        LogLine {
            at_ms: 0,
            level,
            source,
            message: message.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn attempt_log_lines_read_level_message_fields() {
        let logs = [
            line(
                LogLevel::Info,
                LogSource::Plugin,
                "sent",
                &[("to", "oncall"), ("status", "200")],
            ),
            line(LogLevel::Warn, LogSource::Host, "request refused", &[]),
            line(LogLevel::Error, LogSource::Stderr, "panicked at x", &[]),
        ];
        assert_eq!(
            log_tail(logs.iter().map(attempt_log_line)).as_deref(),
            Some(
                "INFO sent to=oncall status=200\nWARN [host] request refused\nERROR [stderr] panicked at x"
            )
        );
    }
}
