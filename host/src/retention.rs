//! Retention: every minute, finished tasks (succeeded, cancelled, dead without parking their
//! key) last updated more than `tasks.retention` ago are deleted with their attempts, key-index
//! entries and uniqueness keys, a page at a time, so the store's space is reused. In cluster
//! mode the node holding partition 0 does it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use kairos_core::clock::Clock;
use kairos_core::model::Millis;
use kairos_core::store::TaskStore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::scheduler::Scheduler;

/// Tasks looked at per store call.
const PAGE: usize = 1_000;
/// Store calls per sweep at most (the rest waits for the next sweep).
const PAGES_PER_SWEEP: usize = 100;

pub struct RetentionService {
    pub store: Arc<dyn TaskStore>,
    pub scheduler: Arc<Scheduler>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// How long finished tasks are kept.
    pub keep: Duration,
    /// Between sweeps.
    pub every: Duration,
}

impl RetentionService {
    pub async fn run(self, stop: CancellationToken) {
        let mut after: Option<String> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            if self.scheduler.lease_of(0).await.is_none() {
                continue;
            }
            let keep = Millis::try_from(self.keep.as_millis()).unwrap_or(Millis::MAX);
            let before = self.clock.now().saturating_sub(keep);
            for _ in 0..PAGES_PER_SWEEP {
                if stop.is_cancelled() {
                    return;
                }
                match self
                    .store
                    .purge_finished(before, after.as_deref(), PAGE)
                    .await
                {
                    Ok(p) => {
                        self.metrics.purged.fetch_add(p.deleted as u64, Relaxed);
                        if p.deleted > 0 {
                            tracing::debug!(
                                deleted = p.deleted,
                                "retention deleted finished tasks"
                            );
                        }
                        after = p.next;
                        if after.is_none() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "retention sweep failed; retrying at the next");
                        break;
                    }
                }
            }
        }
    }
}

/// Parses `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| anyhow::anyhow!("{s:?} has no unit: use s, m, h or d (e.g. \"7d\")"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} does not start with a number (e.g. \"7d\")"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => anyhow::bail!("unknown unit {other:?} in {s:?}: use s, m, h or d"),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("7d").ok(),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(parse_duration(" 90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m").ok(), Some(Duration::from_secs(900)));
        for bad in ["", "7", "d", "7w", "-1d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
