//! How far ahead of its run slots a plugin's attempts are claimed.
//!
//! A claim records the attempt's start before a run slot is free, so that many starts share
//! one durable write (a group commit, a Paxos round). For a plugin whose attempts take long,
//! claims made far ahead only wait: the claimed tasks show as `running` and cannot be
//! cancelled, each one whose wait outlasts the claim slack records its start a second time,
//! and a crash leaves every one of them to be taken over as an attempt in doubt, which uses up
//! one of its attempts. So the claims of each plugin (a claim is held until its attempt has a
//! run slot) are capped at what its run slots start within the claim slack, from the plugin's
//! average run time: `run cap × max(1, slack / average run time)`. A plugin whose attempts
//! take a millisecond or less keeps its whole share of the claim pool; one whose attempts take
//! the slack or longer has at most one claim waiting per run slot. A plugin whose pace is
//! not known yet (none of its attempts has run on this node) gets that too, until its first
//! attempt ends.

use std::collections::HashMap;
use std::sync::Mutex;

use kairos_core::model::Millis;

use crate::slots::SlotPool;

/// Weight of the newest run time in a plugin's average.
const WEIGHT: f64 = 0.125;

/// Per plugin, the average run time and the claim limit it gives.
#[derive(Default)]
pub(crate) struct ClaimPace {
    plugins: Mutex<HashMap<String, Pace>>,
}

struct Pace {
    avg_ms: f64,
    /// The limit last set in the claim pool (`None`: none yet, the pool's first limit holds).
    limit: Option<Option<usize>>,
}

/// Claims of a plugin that its `run_cap` run slots start within `slack_ms` of their claim
/// when its attempts take `avg_ms` (at least `run_cap`, so its free run slots can all be
/// claimed at once); `None` when that is no fewer than `claim_cap` (the plugin keeps its
/// configured share of the claim pool).
pub(crate) fn claim_limit(
    run_cap: usize,
    claim_cap: usize,
    avg_ms: f64,
    slack_ms: Millis,
) -> Option<usize> {
    let ahead = (slack_ms as f64 / avg_ms.max(1.0)).floor();
    if ahead >= claim_cap as f64 {
        return None;
    }
    let limit = run_cap.saturating_mul((ahead as usize).max(1));
    (limit < claim_cap).then_some(limit.max(1))
}

impl ClaimPace {
    /// Notes that an attempt of `plugin` ran for `run_ms`, and sets the plugin's limit in
    /// `claims` when its average moved it.
    pub(crate) fn ran(
        &self,
        plugin: &str,
        run_ms: u64,
        run_cap: usize,
        claims: &SlotPool,
        slack_ms: Millis,
    ) {
        let mut plugins = match self.plugins.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let run_ms = run_ms as f64;
        let pace = match plugins.get_mut(plugin) {
            Some(p) => {
                p.avg_ms += WEIGHT * (run_ms - p.avg_ms);
                p
            }
            None => plugins.entry(plugin.to_string()).or_insert(Pace {
                avg_ms: run_ms,
                limit: None,
            }),
        };
        let limit = claim_limit(run_cap, claims.cap_of(plugin), pace.avg_ms, slack_ms);
        if pace.limit != Some(limit) {
            pace.limit = Some(limit);
            // Under this lock, so limits reach the pool in the order they were worked out.
            claims.set_limit(plugin, limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_reach_as_far_ahead_as_the_run_slots_start_within_the_slack() {
        // 56 run slots, 1,792 claims, 1 s of slack.
        let limit = |avg| claim_limit(56, 1_792, avg, 1_000);
        assert_eq!(limit(0.2), None, "sub-millisecond attempts keep the pool");
        assert_eq!(limit(1.0), None);
        assert_eq!(limit(200.0), Some(56 * 5));
        assert_eq!(limit(1_000.0), Some(56));
        assert_eq!(limit(30_000.0), Some(56));
        // Never 0, even with no run slot to speak of.
        assert_eq!(claim_limit(0, 8, 5_000.0, 1_000), Some(1));
    }

    #[test]
    fn the_limit_follows_the_average_run_time_and_is_lifted_when_attempts_get_fast() {
        let claims = SlotPool::new(64, Default::default(), std::sync::Arc::new(|_| 0));
        claims.set_first_limit(Some(4));
        let pace = ClaimPace::default();
        // A first attempt that was fast lifts the first limit.
        pace.ran("fast", 0, 4, &claims, 1_000);
        let held: Vec<_> = std::iter::from_fn(|| claims.try_acquire("fast")).collect();
        assert_eq!(held.len(), claims.cap_of("fast"));
        drop(held);
        pace.ran("slow", 1_000, 4, &claims, 1_000);
        let held: Vec<_> = std::iter::from_fn(|| claims.try_acquire("slow")).collect();
        assert_eq!(held.len(), 4, "4 run slots × 1 s slack / 1 s per attempt");
        drop(held);
        // Fast runs pull the average down until the limit is lifted.
        for _ in 0..64 {
            pace.ran("slow", 0, 4, &claims, 1_000);
        }
        let held: Vec<_> = std::iter::from_fn(|| claims.try_acquire("slow")).collect();
        assert_eq!(held.len(), claims.cap_of("slow"));
        assert!(
            claims.try_acquire("other").is_some(),
            "other plugins unaffected"
        );
    }
}
