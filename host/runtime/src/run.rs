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

use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use crate::bindings::{Outcome, Task, TaskError, TaskPlugin};
use crate::engine::TICK;
use crate::host_impl::{FollowUpQuota, KvQuota, Meter, StoreState};
use crate::http::HttpGate;
use crate::limits::{Limits, MemoryLimiter};
use crate::logs::{CapturePipe, LogCaps, LogLevel, LogSource};
use crate::outcome::{FailureKind, RunOutcome, RunReport, RunRequest};
use crate::registry::PluginVersion;
use crate::runtime::Runtime;
use crate::warm::Warm;

/// Why no share of the memory budget was had.
enum Budget {
    Closed,
    Elapsed,
}

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
    /// The live instance, for a plugin that reuses instances.
    instance: Option<(Store<StoreState>, TaskPlugin)>,
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
        let reuse = version.reuses_instances();
        let warm = if reuse {
            self.warm.take(&version, &req.task.key)
        } else {
            self.warm.prune();
            None
        };
        let key = req.task.key.clone();
        let (stdout, stderr) = match &warm {
            Some(w) => {
                w.stdout.reset();
                w.stderr.reset();
                (w.stdout.clone(), w.stderr.clone())
            }
            None => {
                let log_cap = usize::try_from(limits.max_log_bytes).unwrap_or(usize::MAX);
                (CapturePipe::new(log_cap), CapturePipe::new(log_cap))
            }
        };
        let meter = Arc::new(Meter::new(
            &version.name,
            &req.task.id,
            limits.max_host_calls,
            limits.max_http_requests,
            LogCaps::of(&limits),
        ));

        // The whole attempt, the wait for room in the memory budget included, is bounded by
        // timeout_ms (the cluster's takeover wait relies on it). A reused instance holds its
        // share already.
        let timeout = Duration::from_millis(limits.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let (permit, instance, served) = match warm {
            Some(Warm {
                store,
                plugin,
                served,
                permit,
                ..
            }) => (permit, Some((store, plugin)), served),
            None => match self.memory_permit(limits.memory_mb, deadline).await {
                Ok(permit) => (permit, None, 0),
                Err(Budget::Closed) => {
                    return self.not_started(
                        &version,
                        &meter,
                        started,
                        FailureKind::Instantiate,
                        "the node's memory budget is closed (the runtime is shutting down)".into(),
                    );
                }
                Err(Budget::Elapsed) => {
                    let message = format!(
                        "not started: waited {} ms (its timeout_ms) for {} MiB of the node's memory \
                         budget (memory_budget_mb = {}), all in use by other attempts",
                        limits.timeout_ms, limits.memory_mb, self.cfg.memory_budget_mb
                    );
                    return self.not_started(
                        &version,
                        &meter,
                        started,
                        FailureKind::Timeout,
                        message,
                    );
                }
            },
        };
        let exec = self.execute(
            &version,
            req.task,
            meter.clone(),
            (&stdout, &stderr),
            instance,
        );
        let guarded = AssertUnwindSafe(tokio::time::timeout_at(deadline, exec)).catch_unwind();
        let mut keep = None;
        let outcome = match guarded.await {
            Ok(Ok(mut ended)) => {
                keep = ended.instance.take();
                classify(ended, &limits, &meter, &stderr)
            }
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
        // Only an instance that just succeeded serves its key again (after any failure its
        // state is suspect), and only while the budget has room for another attempt besides
        // the memory it keeps.
        if let Some((store, plugin)) = keep
            && reuse
            && served + 1 < version.reuse_instances
            && matches!(outcome, RunOutcome::Success { .. })
            && self.memory_budget.available_permits() as u64 >= limits.memory_mb
        {
            let warm = Warm {
                store,
                plugin,
                stdout,
                stderr,
                served: served + 1,
                permit,
            };
            self.warm.put(version.clone(), key, warm);
        } else {
            drop(permit);
        }
        RunReport {
            outcome,
            digest: Some(version.digest.clone()),
            logs: meter.finish_logs(logs),
            elapsed: started.elapsed(),
        }
    }

    /// `mb` of the node's memory budget, waiting until `deadline`. When the budget is short,
    /// idle reused instances give theirs back first.
    async fn memory_permit(
        &self,
        mb: u64,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, Budget> {
        let n = u32::try_from(mb).unwrap_or(u32::MAX);
        loop {
            match self.memory_budget.clone().try_acquire_many_owned(n) {
                Ok(permit) => return Ok(permit),
                Err(TryAcquireError::Closed) => return Err(Budget::Closed),
                Err(TryAcquireError::NoPermits) if self.warm.evict_one() => {}
                Err(TryAcquireError::NoPermits) => break,
            }
        }
        match tokio::time::timeout_at(deadline, self.memory_budget.clone().acquire_many_owned(n))
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Budget::Closed),
            Err(_elapsed) => Err(Budget::Elapsed),
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
        (stdout, stderr): (&CapturePipe, &CapturePipe),
        instance: Option<(Store<StoreState>, TaskPlugin)>,
    ) -> Ended {
        let limits = &version.limits;
        let reuse = version.reuses_instances();
        let wit_task = Task {
            id: task.id.clone(),
            key: task.key.clone(),
            plugin: task.plugin.clone(),
            attempt: task.attempt,
            due_at_ms: task.due_at_ms,
            payload: task.payload.clone(),
        };
        let tick_ms = TICK.as_millis().max(1) as u64;
        let max_ticks = limits.cpu_ms.div_ceil(tick_ms).max(1);
        let kv_quota = KvQuota::of(limits);
        let follow_ups = FollowUpQuota {
            may_schedule: version.may_schedule.clone(),
            max: limits.max_follow_ups,
            scheduled: 0,
        };
        let (mut store, plugin) = match instance {
            Some((mut store, plugin)) => {
                // The same instance, this task's accounting.
                let s = store.data_mut();
                s.gate.meter = meter.clone();
                s.meter = meter;
                s.task = task;
                s.kv_quota = kv_quota;
                s.follow_ups = follow_ups;
                s.ticks = 0;
                s.max_ticks = max_ticks;
                s.cpu_exhausted = false;
                s.limiter.refused = None;
                (store, Some(plugin))
            }
            None => {
                let wasi = WasiCtx::builder()
                    .stdout(stdout.clone())
                    .stderr(stderr.clone())
                    .allow_tcp(false)
                    .allow_udp(false)
                    .allow_ip_name_lookup(false)
                    .socket_addr_check(|_, _| Box::pin(async { false }))
                    .build();
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
                    kv_quota,
                    follow_ups,
                    ticks: 0,
                    max_ticks,
                    cpu_exhausted: false,
                };
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limiter);
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
                (store, None)
            }
        };
        store.set_epoch_deadline(1);

        let plugin = match plugin {
            Some(p) => Ok(p),
            None => version
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (Stage::Instantiate, e)),
        };
        let (result, plugin) = match plugin {
            Err(e) => (Err(e), None),
            Ok(plugin) => (
                plugin
                    .call_run(&mut store, &wit_task)
                    .await
                    .map_err(|e| (Stage::Call, e)),
                Some(plugin),
            ),
        };
        let data = store.data();
        let (oom_refused, cpu_exhausted) = (data.limiter.refused, data.cpu_exhausted);
        Ended {
            result,
            oom_refused,
            cpu_exhausted,
            instance: plugin.filter(|_| reuse).map(|p| (store, p)),
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
