//! Prometheus metrics, kept in atomics and rendered in the text exposition format.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use kairos_core::model::Millis;

use crate::stats::{PluginRunsView, PluginTable, Recent, RecentView};
use std::collections::HashMap;

/// Upper bounds (milliseconds) of the lateness histogram buckets.
const LATENESS_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000, 300_000, 3_600_000,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENESS_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, ms: u64) {
        if let Some(i) = LATENESS_BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ms.fetch_add(ms, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENESS_BUCKETS_MS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1000.0
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_ms.load(Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric the node exports. One instance per node, passed by handle.
#[derive(Default)]
pub struct Metrics {
    pub enqueued: AtomicU64,
    pub deduplicated: AtomicU64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub running: AtomicI64,
    pub store_errors: AtomicU64,
    /// Finished tasks deleted by retention.
    pub purged: AtomicU64,
    pub lateness: Histogram,
    /// Time to record an attempt's start (cluster: the fenced claim).
    pub start_record: Histogram,
    /// Time the plugin ran.
    pub run_time: Histogram,
    /// Time to record an attempt's end (with retries of transient store errors).
    pub finish_record: Histogram,
    /// Tasks held in memory per partition (index = partition).
    window: Mutex<Vec<u64>>,
    /// Earliest armed timer per partition (index = partition), while owned.
    next_due: Mutex<Vec<Option<Millis>>>,
    /// The last five minutes of finished attempts (the status page's chart).
    recent: Mutex<Recent>,
    /// Attempts per plugin since the node started.
    plugin_runs: Mutex<PluginTable>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn new(partitions: u32) -> Self {
        Self {
            window: Mutex::new(vec![0; partitions as usize]),
            next_due: Mutex::new(vec![None; partitions as usize]),
            ..Default::default()
        }
    }

    pub fn set_window(&self, partition: u32, size: usize) {
        if let Ok(mut w) = self.window.lock()
            && let Some(slot) = w.get_mut(partition as usize)
        {
            *slot = size as u64;
        }
    }

    /// The partition's window size and earliest armed timer (`None` also once let go).
    pub fn set_partition(&self, partition: u32, size: usize, next_due: Option<Millis>) {
        self.set_window(partition, size);
        if let Some(slot) = locked(&self.next_due).get_mut(partition as usize) {
            *slot = next_due;
        }
    }

    /// `(window size, next due)` of the partition as last published.
    pub fn partition(&self, partition: u32) -> (u64, Option<Millis>) {
        let size = locked(&self.window)
            .get(partition as usize)
            .copied()
            .unwrap_or(0);
        let due = locked(&self.next_due)
            .get(partition as usize)
            .copied()
            .flatten();
        (size, due)
    }

    /// An attempt of `plugin` finished at `now`: it started `lateness_ms` after it was due and
    /// ran `run_ms`; `ok` when the task succeeded.
    pub fn attempt_finished(
        &self,
        plugin: &str,
        now: Millis,
        lateness_ms: u64,
        run_ms: u64,
        ok: bool,
    ) {
        locked(&self.recent).record(now, lateness_ms);
        locked(&self.plugin_runs).record(plugin, ok, run_ms);
    }

    /// The last five minutes as of `now`.
    pub fn recent(&self, now: Millis) -> RecentView {
        locked(&self.recent).view(now)
    }

    /// Attempts per plugin since the node started.
    pub fn plugin_runs(&self) -> HashMap<String, PluginRunsView> {
        locked(&self.plugin_runs).view()
    }

    pub fn window_total(&self) -> u64 {
        self.window.lock().map(|w| w.iter().sum()).unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "kairos_tasks_enqueued_total",
            "Tasks accepted (durable).",
            self.enqueued.load(Relaxed),
        );
        counter(
            &mut out,
            "kairos_tasks_deduplicated_total",
            "Enqueues answered with an existing task (same uniqueness key).",
            self.deduplicated.load(Relaxed),
        );
        counter(
            &mut out,
            "kairos_tasks_purged_total",
            "Finished tasks deleted by retention (tasks.retention).",
            self.purged.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP kairos_tasks_executed_total Attempts finished, by outcome.\n# TYPE kairos_tasks_executed_total counter"
        );
        for (outcome, v) in [
            ("succeeded", self.succeeded.load(Relaxed)),
            ("retry", self.retried.load(Relaxed)),
            ("dead", self.dead.load(Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "kairos_tasks_executed_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        counter(
            &mut out,
            "kairos_task_retries_total",
            "Attempts that ended in a retry.",
            self.retried.load(Relaxed),
        );
        counter(
            &mut out,
            "kairos_tasks_dead_total",
            "Tasks that ran out of attempts or failed permanently.",
            self.dead.load(Relaxed),
        );
        counter(
            &mut out,
            "kairos_store_errors_total",
            "Store calls that failed.",
            self.store_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP kairos_tasks_running Attempts running now.\n# TYPE kairos_tasks_running gauge\nkairos_tasks_running {}",
            self.running.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kairos_window_tasks Tasks held in memory, per owned partition.\n# TYPE kairos_window_tasks gauge"
        );
        if let Ok(w) = self.window.lock() {
            for (p, v) in w.iter().enumerate() {
                let _ = writeln!(out, "kairos_window_tasks{{partition=\"{p}\"}} {v}");
            }
        }
        self.lateness.render(
            &mut out,
            "kairos_task_lateness_seconds",
            "Start time minus the time the attempt became due.",
        );
        self.start_record.render(
            &mut out,
            "kairos_attempt_start_record_seconds",
            "Time to record an attempt's start in the store (cluster: the fenced claim).",
        );
        self.run_time.render(
            &mut out,
            "kairos_attempt_run_seconds",
            "Time the plugin ran, per attempt.",
        );
        self.finish_record.render(
            &mut out,
            "kairos_attempt_finish_record_seconds",
            "Time to record an attempt's end in the store, retries included.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_overflow() {
        let h = Histogram::default();
        h.observe_ms(0);
        h.observe_ms(7);
        h.observe_ms(10_000_000);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.01\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"3600\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }
}
