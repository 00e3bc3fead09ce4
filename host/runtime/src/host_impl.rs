//! The per-task store state and the host side of the plugin imports (log, kv,
//! scheduler, config), each call metered against `max_host_calls`, kv writes bounded by
//! the `kv_*` limits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::kairos::plugin::{config, kv, log, scheduler, types};
use crate::http::HttpGate;
use crate::limits::{Limits, MemoryLimiter};
use crate::logs::{LogBuffer, LogCaps, LogLevel, LogLine, LogSource, now_ms};
use crate::services::{FollowUp, HostServices, KvEntry, TaskInfo, When};

/// Accounting of one task attempt, shared by the store, the HTTP hooks and the runner
/// (which keeps it when a timeout drops the store).
pub(crate) struct Meter {
    pub(crate) plugin: String,
    pub(crate) task_id: String,
    max_host_calls: u32,
    max_http_requests: u32,
    host_calls: AtomicU32,
    http_requests: AtomicU32,
    limit_hit: Mutex<Option<String>>,
    logs: Mutex<LogBuffer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Meter {
    pub(crate) fn new(
        plugin: &str,
        task_id: &str,
        max_host_calls: u32,
        max_http_requests: u32,
        log_caps: LogCaps,
    ) -> Meter {
        Meter {
            plugin: plugin.to_string(),
            task_id: task_id.to_string(),
            max_host_calls,
            max_http_requests,
            host_calls: AtomicU32::new(0),
            http_requests: AtomicU32::new(0),
            limit_hit: Mutex::new(None),
            logs: Mutex::new(LogBuffer::new(log_caps)),
        }
    }

    fn hit(&self, msg: &str) {
        let mut hit = lock(&self.limit_hit);
        if hit.is_none() {
            *hit = Some(msg.to_string());
            drop(hit);
            self.host_log(LogLevel::Error, msg.to_string());
        }
    }

    /// Counts one host call; `Err` (with the failure message) past the limit.
    pub(crate) fn charge(&self, what: &str) -> Result<(), String> {
        let n = self
            .host_calls
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n > self.max_host_calls {
            let msg = format!(
                "plugin exceeded its limit of {} host calls (call #{n} was {what})",
                self.max_host_calls
            );
            self.hit(&msg);
            return Err(msg);
        }
        Ok(())
    }

    /// Counts one outbound HTTP request (also a host call).
    pub(crate) fn charge_http(&self) -> Result<(), String> {
        self.charge("an outbound HTTP request")?;
        let n = self
            .http_requests
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n > self.max_http_requests {
            let msg = format!(
                "plugin exceeded its limit of {} outbound HTTP requests",
                self.max_http_requests
            );
            self.hit(&msg);
            return Err(msg);
        }
        Ok(())
    }

    /// The message of the host-call limit that was hit, if any.
    pub(crate) fn limit_hit(&self) -> Option<String> {
        lock(&self.limit_hit).clone()
    }

    /// Adds a line to the attempt's log and, if it was kept (within the log caps, truncated
    /// to `max_log_line_bytes`), to the host's log through tracing. Dropped lines reach
    /// neither.
    pub(crate) fn log(&self, line: LogLine) {
        let mut logs = lock(&self.logs);
        let Some(l) = logs.push(line) else {
            return;
        };
        let (plugin, task_id, message, fields) =
            (&self.plugin, &self.task_id, &l.message, &l.fields);
        match (l.source, l.level) {
            (LogSource::Host, LogLevel::Error) => {
                tracing::error!(%plugin, %task_id, "{message}")
            }
            (LogSource::Host, LogLevel::Warn) => {
                tracing::warn!(%plugin, %task_id, "{message}")
            }
            (LogSource::Host, _) => tracing::debug!(%plugin, %task_id, "{message}"),
            (_, LogLevel::Trace) => {
                tracing::trace!(target: "kairos::plugin", %plugin, %task_id, ?fields, "{message}")
            }
            (_, LogLevel::Debug) => {
                tracing::debug!(target: "kairos::plugin", %plugin, %task_id, ?fields, "{message}")
            }
            (_, LogLevel::Info) => {
                tracing::info!(target: "kairos::plugin", %plugin, %task_id, ?fields, "{message}")
            }
            (_, LogLevel::Warn) => {
                tracing::warn!(target: "kairos::plugin", %plugin, %task_id, ?fields, "{message}")
            }
            (_, LogLevel::Error) => {
                tracing::error!(target: "kairos::plugin", %plugin, %task_id, ?fields, "{message}")
            }
        }
    }

    /// A host note in the task log (also sent to tracing).
    pub(crate) fn host_log(&self, level: LogLevel, message: String) {
        self.log(LogLine {
            at_ms: now_ms(),
            level,
            source: LogSource::Host,
            message,
            fields: Vec::new(),
        });
    }

    /// The attempt's log so far (the meter keeps an empty one with the same caps).
    pub(crate) fn take_logs(&self) -> LogBuffer {
        let mut logs = lock(&self.logs);
        let caps = logs.caps();
        std::mem::replace(&mut *logs, LogBuffer::new(caps))
    }

    /// The attempt's final log lines; says once in the host's log how many were dropped.
    pub(crate) fn finish_logs(&self, logs: LogBuffer) -> Vec<LogLine> {
        if logs.dropped() > 0 {
            let caps = logs.caps();
            tracing::warn!(
                plugin = %self.plugin, task_id = %self.task_id,
                "{} log line(s) of this attempt dropped (max_log_lines {}, max_log_bytes {})",
                logs.dropped(), caps.max_lines, caps.max_bytes
            );
        }
        logs.finish()
    }
}

/// The kv bounds of one attempt, and what it has written so far.
#[derive(Debug)]
/// What follow-ups one attempt may schedule: its own plugin and those granted by
/// `may_schedule`, at most `max` of them.
pub(crate) struct FollowUpQuota {
    pub(crate) may_schedule: Arc<[String]>,
    pub(crate) max: u32,
    pub(crate) scheduled: u32,
}

impl FollowUpQuota {
    pub(crate) fn admit(&mut self, from: &str, plugin: &str) -> Result<(), String> {
        if plugin != from && !self.may_schedule.iter().any(|p| p == plugin || p == "*") {
            return Err(format!(
                "plugin `{from}` may not schedule plugin `{plugin}`: the operator grants it with [plugin.{from}] may_schedule = [\"{plugin}\"]"
            ));
        }
        if self.scheduled >= self.max {
            return Err(format!(
                "follow-up refused: this attempt already scheduled {} (max_follow_ups)",
                self.max
            ));
        }
        self.scheduled += 1;
        Ok(())
    }
}

pub(crate) struct KvQuota {
    key_max: u64,
    value_max: u64,
    write_max: u64,
    total_max: u64,
    written: u64,
}

impl KvQuota {
    pub(crate) fn of(limits: &Limits) -> KvQuota {
        KvQuota {
            key_max: limits.kv_key_max_bytes,
            value_max: limits.kv_value_max_bytes,
            write_max: limits.kv_write_max_bytes,
            total_max: limits.kv_total_max_bytes,
            written: 0,
        }
    }

    fn check_key(&self, what: &str, key: &str) -> Result<(), String> {
        let n = key.len() as u64;
        if n > self.key_max {
            return Err(format!(
                "{what} refused: key of {n} bytes exceeds kv_key_max_bytes ({})",
                self.key_max
            ));
        }
        Ok(())
    }

    /// Admits one `kv set` of `key` with a value of `value_len` bytes, or says why not.
    fn charge_set(&mut self, key: &str, value_len: usize) -> Result<(), String> {
        self.check_key("kv set", key)?;
        let value = value_len as u64;
        if value > self.value_max {
            return Err(format!(
                "kv set refused: value of {value} bytes exceeds kv_value_max_bytes ({})",
                self.value_max
            ));
        }
        let size = key.len() as u64 + value;
        let after = self.written.saturating_add(size);
        if after > self.write_max {
            return Err(format!(
                "kv set refused: this attempt has written {} bytes to kv; {size} more would \
                 exceed kv_write_max_bytes ({})",
                self.written, self.write_max
            ));
        }
        self.written = after;
        Ok(())
    }
}

/// The `T` of every task's `Store<T>`.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) gate: HttpGate,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) meter: Arc<Meter>,
    pub(crate) services: Arc<dyn HostServices>,
    pub(crate) task: TaskInfo,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) kv_quota: KvQuota,
    pub(crate) follow_ups: FollowUpQuota,
    /// Epoch ticks observed while guest code ran, and the CPU budget in ticks.
    pub(crate) ticks: u64,
    pub(crate) max_ticks: u64,
    pub(crate) cpu_exhausted: bool,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

impl StoreState {
    fn charge(&self, what: &str) -> wasmtime::Result<()> {
        self.meter.charge(what).map_err(wasmtime::Error::msg)
    }

    /// A refused kv call: noted in the task log, and the error the guest gets.
    fn kv_refused<T>(&self, why: String) -> Result<T, String> {
        self.meter.host_log(LogLevel::Warn, why.clone());
        Err(why)
    }
}

impl types::Host for StoreState {}

impl log::Host for StoreState {
    async fn log(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.charge("log")?;
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.meter.log(LogLine {
            at_ms: now_ms(),
            level,
            source: LogSource::Plugin,
            message,
            fields,
        });
        Ok(())
    }
}

impl kv::Host for StoreState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        self.charge("kv.get")?;
        if let Err(why) = self.kv_quota.check_key("kv get", &key) {
            return Ok(self.kv_refused(why));
        }
        Ok(self.services.kv_get(&self.task.plugin, &key).await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        self.charge("kv.set")?;
        if let Err(why) = self.kv_quota.charge_set(&key, value.len()) {
            return Ok(self.kv_refused(why));
        }
        let size = (key.len() + value.len()) as u64;
        let stored = match self.services.kv_usage(&self.task.plugin).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if stored.saturating_add(size) > self.kv_quota.total_max {
            let why = format!(
                "kv set refused: plugin `{}` keeps {stored} bytes in kv; {size} more would exceed \
                 kv_total_max_bytes ({})",
                self.task.plugin, self.kv_quota.total_max
            );
            return Ok(self.kv_refused(why));
        }
        Ok(self.services.kv_set(&self.task.plugin, &key, value).await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, String>> {
        self.charge("kv.delete")?;
        if let Err(why) = self.kv_quota.check_key("kv delete", &key) {
            return Ok(self.kv_refused(why));
        }
        Ok(self.services.kv_delete(&self.task.plugin, &key).await)
    }

    async fn list_entries(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<kv::EntryMeta>, String>> {
        self.charge("kv.list")?;
        if let Err(why) = self.kv_quota.check_key("kv list", &prefix) {
            return Ok(self.kv_refused(why));
        }
        let listed = self
            .services
            .kv_list(&self.task.plugin, &prefix, limit)
            .await;
        Ok(listed.map(|entries| {
            entries
                .into_iter()
                .take(limit as usize)
                .map(
                    |KvEntry {
                         key,
                         updated_at_ms,
                         size,
                     }| kv::EntryMeta {
                        key,
                        updated_at_ms,
                        size,
                    },
                )
                .collect()
        }))
    }
}

impl scheduler::Host for StoreState {
    async fn schedule(
        &mut self,
        task: scheduler::FollowUp,
    ) -> wasmtime::Result<Result<String, String>> {
        self.charge("scheduler.schedule")?;
        if let Err(why) = self.follow_ups.admit(&self.task.plugin, &task.plugin) {
            return Ok(Err(why));
        }
        let req = FollowUp {
            plugin: task.plugin,
            key: task.key,
            when: match task.when {
                scheduler::When::DelayMs(d) => When::DelayMs(d),
                scheduler::When::AtMs(t) => When::AtMs(t),
            },
            payload: task.payload,
            uniqueness_key: task.uniqueness_key,
        };
        Ok(self.services.schedule(&self.task, req).await)
    }
}

impl config::Host for StoreState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        self.charge("config.get")?;
        Ok(self.config.get(&name).cloned())
    }

    async fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.charge("config.all")?;
        Ok(self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(key: u64, value: u64, write: u64) -> KvQuota {
        KvQuota::of(&Limits {
            kv_key_max_bytes: key,
            kv_value_max_bytes: value,
            kv_write_max_bytes: write,
            ..Limits::default()
        })
    }

    #[test]
    fn kv_quota_bounds_keys_values_and_volume() {
        let mut q = quota(4, 10, 25);
        assert_eq!(
            q.charge_set("toolong", 1),
            Err("kv set refused: key of 7 bytes exceeds kv_key_max_bytes (4)".to_string())
        );
        assert_eq!(
            q.charge_set("k", 11),
            Err("kv set refused: value of 11 bytes exceeds kv_value_max_bytes (10)".to_string())
        );
        assert_eq!(q.charge_set("k", 10), Ok(()));
        assert_eq!(q.charge_set("k", 10), Ok(()));
        assert_eq!(
            q.charge_set("k", 3),
            Err(
                "kv set refused: this attempt has written 22 bytes to kv; 4 more would exceed \
                 kv_write_max_bytes (25)"
                    .to_string()
            )
        );
        assert_eq!(q.charge_set("k", 2), Ok(()), "refusals write nothing");
        assert!(q.check_key("kv get", "abcd").is_ok());
        assert!(q.check_key("kv get", "abcde").is_err());
    }

    #[test]
    fn kv_defaults() {
        let l = Limits::default();
        assert_eq!(
            (
                l.kv_key_max_bytes,
                l.kv_value_max_bytes,
                l.kv_write_max_bytes
            ),
            (512, 65_536, 1_048_576)
        );
    }
}
