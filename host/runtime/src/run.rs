//! Running one task attempt: a fresh store and instance per task, sandbox limits, and
//! the classification of how it ended.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtx};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::{Outcome, Task, TaskError};
use crate::engine::TICK;
use crate::host_impl::{FollowUpQuota, KvQuota, Meter, StoreState};
use crate::http::HttpGate;
use crate::limits::{Limits, MemoryLimiter};
use crate::logs::{CapturePipe, LogCaps, LogLevel, LogSource};
use crate::outcome::{FailureKind, RunOutcome, RunReport, RunRequest};
use crate::registry::PluginVersion;
use crate::runtime::Runtime;

/// How far a run got, when it did not return normally.
enum Stage {
    Instantiate,
    Call,
}

/// What the store knew when the attempt ended.
struct Ended {
    result: Result<Result<Outcome, TaskError>, (Stage, wasmtime::Error)>,
    oom_refused: Option<usize>,
    cpu_exhausted: bool,
}

impl Runtime {
    /// Runs one attempt of a task in a fresh instance. Never panics, and returns within
    /// the plugin's `timeout_ms` (plus scheduling slack) whatever the guest does. Must be
    /// called within a tokio runtime (the timers and wasi:http need one).
    pub async fn run(&self, req: RunRequest) -> RunReport {
        let started = Instant::now();
        let version = match self
            .registry
            .lookup(&req.task.plugin, req.pin_version.as_deref())
        {
            Ok(v) => v,
            Err(f) => {
                return RunReport {
                    outcome: f.into(),
                    digest: None,
                    logs: Vec::new(),
                    elapsed: started.elapsed(),
                };
            }
        };
        let limits = version.limits;
        let log_cap = usize::try_from(limits.max_log_bytes).unwrap_or(usize::MAX);
        let stdout = CapturePipe::new(log_cap);
        let stderr = CapturePipe::new(log_cap);
        let meter = Arc::new(Meter::new(
            &version.name,
            &req.task.id,
            limits.max_host_calls,
            limits.max_http_requests,
            LogCaps::of(&limits),
        ));

        // The whole attempt, the wait for room in the memory budget included, is bounded by
        // timeout_ms (the cluster's takeover wait relies on it).
        let timeout = Duration::from_millis(limits.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mb = u32::try_from(limits.memory_mb).unwrap_or(u32::MAX);
        let _permit = match tokio::time::timeout_at(deadline, self.memory_budget.acquire_many(mb))
            .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                return self.not_started(
                    &version,
                    &meter,
                    started,
                    FailureKind::Instantiate,
                    "the node's memory budget is closed (the runtime is shutting down)".into(),
                );
            }
            Err(_elapsed) => {
                let message = format!(
                    "not started: waited {} ms (its timeout_ms) for {} MiB of the node's memory \
                     budget (memory_budget_mb = {}), all in use by other attempts",
                    limits.timeout_ms, limits.memory_mb, self.cfg.memory_budget_mb
                );
                return self.not_started(&version, &meter, started, FailureKind::Timeout, message);
            }
        };
        let exec = self.execute(&version, req.task, meter.clone(), &stdout, &stderr);
        let guarded = AssertUnwindSafe(tokio::time::timeout_at(deadline, exec)).catch_unwind();
        let outcome = match guarded.await {
            Ok(Ok(ended)) => classify(ended, &limits, &meter, &stderr),
            Ok(Err(_elapsed)) => {
                let message = format!(
                    "plugin exceeded its wall-clock timeout of {} ms",
                    limits.timeout_ms
                );
                meter.host_log(LogLevel::Error, message.clone());
                RunOutcome::Failed {
                    kind: FailureKind::Timeout,
                    message,
                }
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                tracing::error!(plugin = %version.name, "host panicked while running plugin: {what}");
                RunOutcome::Failed {
                    kind: FailureKind::Trap,
                    message: format!("host error while running the plugin: {what}"),
                }
            }
        };

        let mut logs = meter.take_logs();
        stdout.append_lines_to(LogSource::Stdout, LogLevel::Info, &mut logs);
        stderr.append_lines_to(LogSource::Stderr, LogLevel::Warn, &mut logs);
        RunReport {
            outcome,
            digest: Some(version.digest.clone()),
            logs: meter.finish_logs(logs),
            elapsed: started.elapsed(),
        }
    }

    /// The report of an attempt that never got an instance.
    fn not_started(
        &self,
        version: &PluginVersion,
        meter: &Meter,
        started: Instant,
        kind: FailureKind,
        message: String,
    ) -> RunReport {
        meter.host_log(LogLevel::Error, message.clone());
        RunReport {
            outcome: RunOutcome::Failed { kind, message },
            digest: Some(version.digest.clone()),
            logs: meter.finish_logs(meter.take_logs()),
            elapsed: started.elapsed(),
        }
    }

    async fn execute(
        &self,
        version: &PluginVersion,
        task: crate::services::TaskInfo,
        meter: Arc<Meter>,
        stdout: &CapturePipe,
        stderr: &CapturePipe,
    ) -> Ended {
        let limits = &version.limits;
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let wit_task = Task {
            id: task.id.clone(),
            key: task.key.clone(),
            plugin: task.plugin.clone(),
            attempt: task.attempt,
            due_at_ms: task.due_at_ms,
            payload: task.payload.clone(),
        };
        let tick_ms = TICK.as_millis().max(1) as u64;
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            gate: HttpGate {
                meter: meter.clone(),
                allowed: version.allowed_hosts.clone(),
                allow_private: version.allow_private,
                timeout: Duration::from_millis(limits.http_timeout_ms),
            },
            limiter: MemoryLimiter::new(limits.memory_bytes()),
            meter,
            services: self.services.clone(),
            task,
            config: version.config.clone(),
            kv_quota: KvQuota::of(limits),
            follow_ups: FollowUpQuota {
                may_schedule: version.may_schedule.clone(),
                max: limits.max_follow_ups,
                scheduled: 0,
            },
            ticks: 0,
            max_ticks: limits.cpu_ms.div_ceil(tick_ms).max(1),
            cpu_exhausted: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.max_ticks {
                s.cpu_exhausted = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield on every tick so wall-clock timeouts and other tasks get to run
            // even while this guest never calls the host.
            Ok(UpdateDeadline::Yield(1))
        });

        let result = match version.pre.instantiate_async(&mut store).await {
            Err(e) => Err((Stage::Instantiate, e)),
            Ok(plugin) => plugin
                .call_run(&mut store, &wit_task)
                .await
                .map_err(|e| (Stage::Call, e)),
        };
        let data = store.data();
        Ended {
            result,
            oom_refused: data.limiter.refused,
            cpu_exhausted: data.cpu_exhausted,
        }
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Keeps at most `max` bytes of `s`, on a char boundary.
fn truncate(mut s: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("… (truncated)");
    }
    s
}

/// The end of the guest's stderr, one line, for trap messages (panic text lives there).
fn stderr_tail(stderr: &CapturePipe) -> Option<String> {
    let (text, _) = stderr.contents();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !crate::logs::is_backtrace_note(l))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let joined = lines.join(" ");
    let max = 1024;
    if joined.len() <= max {
        return Some(joined);
    }
    let mut start = joined.len() - max;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    Some(format!("…{}", &joined[start..]))
}

fn classify(ended: Ended, limits: &Limits, meter: &Meter, stderr: &CapturePipe) -> RunOutcome {
    let failed = |kind: FailureKind, message: String| RunOutcome::Failed { kind, message };
    // A host-call limit is a failure even if the guest shrugged the refusal off.
    if let Some(msg) = meter.limit_hit() {
        return failed(FailureKind::HostCallLimit, msg);
    }
    let (stage, err) = match ended.result {
        Ok(Ok(Outcome { output })) => {
            let size = output.as_ref().map_or(0, |o| o.len() as u64);
            if size > limits.max_output_bytes {
                let msg = format!(
                    "plugin output of {size} bytes exceeds max_output_bytes ({} bytes)",
                    limits.max_output_bytes
                );
                meter.host_log(LogLevel::Error, msg.clone());
                return failed(FailureKind::OutputTooLarge, msg);
            }
            return RunOutcome::Success { output };
        }
        Ok(Err(TaskError::Retryable(r))) => {
            return RunOutcome::Retryable {
                message: truncate(r.message, limits.max_output_bytes),
                retry_after_ms: r.retry_after_ms,
            };
        }
        Ok(Err(TaskError::Permanent(m))) => {
            return RunOutcome::Permanent {
                message: truncate(m, limits.max_output_bytes),
            };
        }
        Err(e) => e,
    };
    let outcome = if ended.cpu_exhausted {
        failed(
            FailureKind::CpuLimit,
            format!(
                "plugin used its CPU budget of {} ms (epoch interrupt)",
                limits.cpu_ms
            ),
        )
    } else if let Some(wanted) = ended.oom_refused {
        failed(
            FailureKind::OutOfMemory,
            format!(
                "plugin exceeded its memory limit of {} MiB (growth to {} refused)",
                limits.memory_mb,
                mib(wanted)
            ),
        )
    } else if let Some(exit) = err.downcast_ref::<I32Exit>() {
        failed(
            FailureKind::Trap,
            format!("plugin called exit({}) instead of returning", exit.0),
        )
    } else if let Stage::Instantiate = stage {
        failed(
            FailureKind::Instantiate,
            format!("failed to instantiate plugin: {err:#}"),
        )
    } else {
        let what = match err.downcast_ref::<Trap>() {
            Some(trap) => {
                let t = trap.to_string();
                format!(
                    "plugin trapped: {}",
                    t.strip_prefix("wasm trap: ").unwrap_or(&t)
                )
            }
            None => format!("plugin trapped: {}", first_line(&format!("{err:#}"))),
        };
        let message = match stderr_tail(stderr) {
            Some(tail) => format!("{what}; stderr: {tail}"),
            None => what,
        };
        failed(FailureKind::Trap, message)
    };
    if let RunOutcome::Failed { message, .. } = &outcome {
        meter.host_log(LogLevel::Error, message.clone());
    }
    outcome
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
