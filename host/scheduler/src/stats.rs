//! What the status page and `GET /v1/stats` show beyond the Prometheus counters: a series of
//! the last five minutes (attempts finished and their lateness, per bucket) and per-plugin
//! counts and run times. Kept in memory, per node; bounded whatever the load.

use std::collections::{HashMap, VecDeque};

use kairos_core::model::Millis;
use serde::Serialize;

/// Width of one bucket of the recent series.
pub const BUCKET_MS: Millis = 5_000;
/// Buckets kept: five minutes.
pub const BUCKETS: usize = 60;

/// Upper bounds (ms) of the fine latency buckets the percentiles are read from; a value over
/// the last bound counts in an overflow bucket reported as the last bound.
const BOUNDS_MS: [u64; 34] = [
    0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000,
    3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000,
];

/// A latency distribution in fixed buckets: exact counts, percentiles to a bucket's bound.
#[derive(Debug, Clone)]
pub struct Spread {
    counts: [u64; BOUNDS_MS.len() + 1],
    total: u64,
}

impl Default for Spread {
    fn default() -> Self {
        Self {
            counts: [0; BOUNDS_MS.len() + 1],
            total: 0,
        }
    }
}

impl Spread {
    pub fn observe(&mut self, ms: u64) {
        let i = BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BOUNDS_MS.len());
        self.counts[i] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Spread) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The bound of the bucket holding the `q` quantile (0 < q ≤ 1); `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BOUNDS_MS[i.min(BOUNDS_MS.len() - 1)]);
            }
        }
        BOUNDS_MS.last().copied()
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    start: Millis,
    finished: u64,
    lateness: Spread,
}

/// Attempts finished and their lateness over the last [`BUCKETS`] × [`BUCKET_MS`].
#[derive(Debug, Default)]
pub struct Recent {
    buckets: VecDeque<Bucket>,
}

/// One point of the series, as `GET /v1/stats` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Start of the bucket, ms since the epoch.
    pub at_ms: Millis,
    /// Attempts that finished in it.
    pub finished: u64,
    /// Lateness (start − due) of those attempts.
    pub lateness_p50_ms: Option<u64>,
    pub lateness_p99_ms: Option<u64>,
}

/// The series and what it sums to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecentView {
    pub bucket_ms: Millis,
    pub points: Vec<Point>,
    /// Attempts finished per second over the last complete bucket.
    pub finished_per_s: f64,
    /// Over the whole series.
    pub lateness_p50_ms: Option<u64>,
    pub lateness_p99_ms: Option<u64>,
    pub finished: u64,
}

impl Recent {
    fn bucket_at(&mut self, now: Millis) -> &mut Bucket {
        let start = now - now.rem_euclid(BUCKET_MS);
        if self.buckets.back().is_none_or(|b| b.start < start) {
            self.buckets.push_back(Bucket {
                start,
                finished: 0,
                lateness: Spread::default(),
            });
            while self.buckets.len() > BUCKETS {
                self.buckets.pop_front();
            }
        }
        // A clock that stepped back files into the newest bucket.
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }

    /// An attempt finished at `now`, having started `lateness_ms` after it was due.
    pub fn record(&mut self, now: Millis, lateness_ms: u64) {
        let b = self.bucket_at(now);
        b.finished += 1;
        b.lateness.observe(lateness_ms);
    }

    /// The last five minutes as of `now`, one point per bucket (empty buckets included), oldest
    /// first.
    pub fn view(&self, now: Millis) -> RecentView {
        let current = now - now.rem_euclid(BUCKET_MS);
        let first = current - (BUCKETS as Millis - 1) * BUCKET_MS;
        let mut all = Spread::default();
        let mut finished = 0;
        let points: Vec<Point> = (0..BUCKETS as Millis)
            .map(|i| {
                let start = first + i * BUCKET_MS;
                match self.buckets.iter().find(|b| b.start == start) {
                    Some(b) => {
                        all.merge(&b.lateness);
                        finished += b.finished;
                        Point {
                            at_ms: start,
                            finished: b.finished,
                            lateness_p50_ms: b.lateness.quantile_ms(0.5),
                            lateness_p99_ms: b.lateness.quantile_ms(0.99),
                        }
                    }
                    None => Point {
                        at_ms: start,
                        finished: 0,
                        lateness_p50_ms: None,
                        lateness_p99_ms: None,
                    },
                }
            })
            .collect();
        let last_complete = points
            .len()
            .checked_sub(2)
            .map_or(0, |i| points[i].finished);
        RecentView {
            bucket_ms: BUCKET_MS,
            finished_per_s: last_complete as f64 * 1000.0 / BUCKET_MS as f64,
            lateness_p50_ms: all.quantile_ms(0.5),
            lateness_p99_ms: all.quantile_ms(0.99),
            finished,
            points,
        }
    }
}

/// Attempts of one plugin on this node since it started.
#[derive(Debug, Clone, Default)]
pub struct PluginRuns {
    pub succeeded: u64,
    /// Attempts that ended in a retry or a dead task.
    pub failed: u64,
    pub run_time: Spread,
}

/// As `GET /v1/plugins` shows it next to each plugin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginRunsView {
    pub succeeded: u64,
    pub failed: u64,
    pub run_p99_ms: Option<u64>,
}

/// Per-plugin [`PluginRuns`], at most [`MAX_PLUGINS`] names (the rest count under `"other"`).
#[derive(Debug, Default)]
pub struct PluginTable {
    map: HashMap<String, PluginRuns>,
}

pub const MAX_PLUGINS: usize = 1_000;

impl PluginTable {
    pub fn record(&mut self, plugin: &str, ok: bool, run_ms: u64) {
        let key = if self.map.len() >= MAX_PLUGINS && !self.map.contains_key(plugin) {
            "other"
        } else {
            plugin
        };
        let e = self.map.entry(key.to_string()).or_default();
        if ok {
            e.succeeded += 1;
        } else {
            e.failed += 1;
        }
        e.run_time.observe(run_ms);
    }

    pub fn view(&self) -> HashMap<String, PluginRunsView> {
        self.map
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    PluginRunsView {
                        succeeded: r.succeeded,
                        failed: r.failed,
                        run_p99_ms: r.run_time.quantile_ms(0.99),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_holding_the_rank() {
        let mut s = Spread::default();
        assert_eq!(s.quantile_ms(0.5), None);
        for _ in 0..98 {
            s.observe(4);
        }
        s.observe(900);
        s.observe(50_000);
        assert_eq!(s.quantile_ms(0.5), Some(5));
        assert_eq!(s.quantile_ms(0.99), Some(1_000));
        assert_eq!(s.quantile_ms(1.0), Some(60_000));
        s.observe(99_999_999);
        assert_eq!(s.quantile_ms(1.0), Some(3_600_000));
    }

    #[test]
    fn the_series_keeps_five_minutes_and_rates_the_last_complete_bucket() {
        let mut r = Recent::default();
        let t0 = 1_000_000_000;
        for _ in 0..50 {
            r.record(t0, 3);
        }
        r.record(t0 + BUCKET_MS, 700);
        let v = r.view(t0 + BUCKET_MS + 1);
        assert_eq!(v.points.len(), BUCKETS);
        assert_eq!(v.finished, 51);
        assert_eq!(v.finished_per_s, 50.0 * 1000.0 / BUCKET_MS as f64);
        assert_eq!(v.points[BUCKETS - 1].lateness_p50_ms, Some(700));
        assert_eq!(v.lateness_p99_ms, Some(700));
        assert_eq!(v.lateness_p50_ms, Some(3));
        // Five minutes later the old buckets are out of the view.
        let later = r.view(t0 + BUCKET_MS * (BUCKETS as Millis + 1));
        assert_eq!(later.finished, 0);
        for i in 0..(BUCKETS as Millis + 10) {
            r.record(t0 + i * BUCKET_MS, 1);
        }
        assert!(r.buckets.len() <= BUCKETS);
    }

    #[test]
    fn plugin_table_counts_and_bounds_its_names() {
        let mut t = PluginTable::default();
        t.record("a", true, 2);
        t.record("a", false, 40);
        let v = t.view();
        assert_eq!(v["a"].succeeded, 1);
        assert_eq!(v["a"].failed, 1);
        assert_eq!(v["a"].run_p99_ms, Some(50));
        for i in 0..(MAX_PLUGINS + 5) {
            t.record(&format!("p{i}"), true, 1);
        }
        assert!(t.view().len() <= MAX_PLUGINS + 1);
    }
}
