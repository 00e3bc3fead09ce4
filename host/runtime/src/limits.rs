//! Per-task resource limits, their overrides (host grant) and narrowing (manifest), and
//! the memory limiter installed in every task's store.

use serde::{Deserialize, Serialize};

/// The resource limits one task attempt runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory of the plugin instance, in MiB.
    pub memory_mb: u64,
    /// CPU budget in milliseconds, measured with epoch ticks while guest code runs.
    pub cpu_ms: u64,
    /// Wall-clock limit of the whole attempt, host calls included.
    pub timeout_ms: u64,
    /// Maximum size of the `output` of a successful run.
    pub max_output_bytes: u64,
    /// Maximum number of host calls (log, kv, scheduler, config, http) per attempt.
    pub max_host_calls: u32,
    /// Maximum number of outbound HTTP requests per attempt.
    pub max_http_requests: u32,
    /// Timeout of one outbound HTTP request (connect, first byte, between bytes).
    pub http_timeout_ms: u64,
    /// Maximum bytes of log lines (plugin logs, stdout, stderr) kept per attempt; further
    /// lines are dropped (counted in one closing line) and never reach the host's log.
    pub max_log_bytes: u64,
    /// Maximum number of log lines kept per attempt; further lines are dropped likewise.
    pub max_log_lines: u32,
    /// Maximum size of one log line (message and fields); a longer one is truncated, with
    /// a marker saying so.
    pub max_log_line_bytes: u64,
    /// Maximum length of a kv key (set, get, delete; list prefix), bytes.
    pub kv_key_max_bytes: u64,
    /// Maximum size of the value of one `kv set`, bytes.
    pub kv_value_max_bytes: u64,
    /// Maximum bytes (keys plus values) written by `kv set` in one attempt.
    pub kv_write_max_bytes: u64,
    /// Maximum bytes (keys plus values) the plugin keeps in kv, all attempts together. A
    /// `kv set` is refused when the plugin's total plus the new entry would pass it (the new
    /// entry counts in full, also when it replaces one).
    pub kv_total_max_bytes: u64,
    /// Maximum follow-up tasks one attempt may schedule.
    pub max_follow_ups: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            cpu_ms: 1_000,
            timeout_ms: 10_000,
            max_output_bytes: 64 * 1024,
            max_host_calls: 1_000,
            max_http_requests: 16,
            http_timeout_ms: 5_000,
            max_log_bytes: 64 * 1024,
            max_log_lines: 1_000,
            max_log_line_bytes: 8 * 1024,
            kv_key_max_bytes: 512,
            kv_value_max_bytes: 64 * 1024,
            kv_write_max_bytes: 1024 * 1024,
            kv_total_max_bytes: 64 * 1024 * 1024,
            max_follow_ups: 32,
        }
    }
}

/// A partial [`Limits`]: the `[limits]` table of a plugin manifest or of a host grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsOverride {
    pub memory_mb: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_host_calls: Option<u32>,
    pub max_http_requests: Option<u32>,
    pub http_timeout_ms: Option<u64>,
    pub max_log_bytes: Option<u64>,
    pub max_log_lines: Option<u32>,
    pub max_log_line_bytes: Option<u64>,
    pub kv_key_max_bytes: Option<u64>,
    pub kv_value_max_bytes: Option<u64>,
    pub kv_write_max_bytes: Option<u64>,
    pub kv_total_max_bytes: Option<u64>,
    pub max_follow_ups: Option<u32>,
}

/// Calls the macro `$m` with every field of [`Limits`] (and of [`LimitsOverride`]), the one
/// list of them that the overlay and the narrowing share.
macro_rules! each_limit {
    ($m:ident) => {
        $m!(
            memory_mb,
            cpu_ms,
            timeout_ms,
            max_output_bytes,
            max_host_calls,
            max_http_requests,
            http_timeout_ms,
            max_log_bytes,
            max_log_lines,
            max_log_line_bytes,
            kv_key_max_bytes,
            kv_value_max_bytes,
            kv_write_max_bytes,
            kv_total_max_bytes,
            max_follow_ups
        )
    };
}

impl Limits {
    /// These limits with every field set in `o` replaced.
    pub fn with(mut self, o: &LimitsOverride) -> Limits {
        macro_rules! apply {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        each_limit!(apply);
        self
    }

    /// These limits (the ceiling) narrowed by `o`: a field set in `o` is taken when it is not
    /// above the ceiling, else the ceiling stays. Returns the narrowed limits and, for each
    /// field `o` asked to raise, `(field, asked, ceiling)`.
    pub fn narrowed_by(mut self, o: &LimitsOverride) -> (Limits, Vec<(&'static str, u64, u64)>) {
        let mut clamped = Vec::new();
        macro_rules! narrow {
            ($($f:ident),*) => { $(
                if let Some(v) = o.$f {
                    if v <= self.$f {
                        self.$f = v;
                    } else {
                        clamped.push((stringify!($f), u64::from(v), u64::from(self.$f)));
                    }
                }
            )* };
        }
        each_limit!(narrow);
        (self, clamped)
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

/// Store-level [`wasmtime::ResourceLimiter`] that refuses growth past the limit and
/// remembers that it did, so a guest that aborts on allocation failure is reported as
/// "out of memory" rather than as an anonymous trap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) memory_limit: usize,
    pub(crate) table_limit: usize,
    pub(crate) refused: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(memory_limit: usize) -> Self {
        MemoryLimiter {
            memory_limit,
            table_limit: 100_000,
            refused: None,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_limit && maximum.is_none_or(|m| desired <= m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_replaces_only_set_fields() {
        let o = LimitsOverride {
            memory_mb: Some(8),
            max_http_requests: Some(2),
            ..Default::default()
        };
        let l = Limits::default().with(&o);
        assert_eq!(l.memory_mb, 8);
        assert_eq!(l.max_http_requests, 2);
        assert_eq!(l.cpu_ms, Limits::default().cpu_ms);
    }

    #[test]
    fn narrowing_takes_the_lower_value_and_reports_raises() {
        let o = LimitsOverride {
            memory_mb: Some(4096),
            cpu_ms: Some(50),
            max_host_calls: Some(4_000_000_000),
            ..Default::default()
        };
        let (l, clamped) = Limits::default().narrowed_by(&o);
        assert_eq!(l.memory_mb, 64, "raise refused");
        assert_eq!(l.cpu_ms, 50, "narrowing taken");
        assert_eq!(l.max_host_calls, 1_000, "raise refused");
        assert_eq!(
            clamped,
            [
                ("memory_mb", 4096, 64),
                ("max_host_calls", 4_000_000_000, 1_000)
            ]
        );
    }

    #[test]
    fn unknown_limit_is_rejected() {
        let err = toml::from_str::<LimitsOverride>("memory = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }
}
