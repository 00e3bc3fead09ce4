//! Recurring tasks. A schedule (cron expression, optional time zone) materialises one task per
//! occurrence, a little ahead of its time, with the uniqueness key
//! `schedule:{name}:{occurrence millis}`. The last materialised occurrence is stored, so after a
//! restart every missed occurrence is enqueued exactly once (the uniqueness key absorbs the
//! case where the node died between enqueueing and recording).

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use kairos_core::clock::Clock;
use kairos_core::model::{Millis, Schedule};
use kairos_core::store::TaskStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::enqueue::{Enqueuer, Rejection, TaskSpec};

/// Occurrences are enqueued this long before they are due, so their timers fire on time.
pub const LOOKAHEAD_MS: Millis = 10_000;
/// At most this many missed occurrences are caught up per schedule in one pass.
const MAX_CATCH_UP: usize = 1_000;

/// A parsed schedule expression.
pub struct CronSpec {
    cron: Cron,
    tz: Option<Tz>,
}

impl CronSpec {
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, String> {
        let cron = Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        let tz = timezone
            .map(|z| {
                Tz::from_str(z).map_err(|_| {
                    format!("unknown time zone {z:?} (use an IANA name such as Europe/Paris)")
                })
            })
            .transpose()?;
        Ok(Self { cron, tz })
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let utc = Utc.timestamp_millis_opt(after).single()?;
        match self.tz {
            Some(tz) => next(&self.cron, &utc.with_timezone(&tz)),
            None => next(&self.cron, &utc),
        }
    }
}

fn next<Z: TimeZone>(cron: &Cron, at: &DateTime<Z>) -> Option<Millis> {
    cron.find_next_occurrence(at, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Validates a schedule definition (cron, zone, plugin, payload) before it is stored.
pub fn validate(s: &Schedule, enqueuer: &Enqueuer) -> Result<(), Rejection> {
    if s.name.is_empty() || s.name.contains('/') {
        return Err(Rejection::bad(
            "schedule `name` must be non-empty and contain no '/'",
        ));
    }
    CronSpec::parse(&s.cron, s.timezone.as_deref()).map_err(Rejection::bad)?;
    enqueuer.task(spec_for(s, 0, enqueuer)).map(|_| ())
}

fn spec_for(s: &Schedule, occurrence: Millis, enqueuer: &Enqueuer) -> TaskSpec {
    TaskSpec {
        plugin: s.plugin.clone(),
        key: s.key.clone(),
        due_at: occurrence,
        payload: s.payload.clone(),
        uniqueness_key: Some(format!("schedule:{}:{occurrence}", s.name)),
        max_attempts: None,
        pin_version: None,
        park_on_dead: false,
        generation: 0,
        backoff: enqueuer.default_backoff(),
        now: enqueuer.clock.now(),
    }
}

pub struct CronService {
    pub store: Arc<dyn TaskStore>,
    pub enqueuer: Arc<Enqueuer>,
    pub clock: Arc<dyn Clock>,
    /// Poked when schedules change.
    pub changed: Arc<Notify>,
}

impl CronService {
    /// Materialises every occurrence due up to `now + LOOKAHEAD_MS`; returns when the next one
    /// needs materialising.
    pub async fn tick(&self) -> Millis {
        let now = self.clock.now();
        let mut wake = now + 60_000;
        let schedules = match self.store.list_schedules().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list schedules; retrying in 1 s");
                return now + 1_000;
            }
        };
        for s in schedules {
            let spec = match CronSpec::parse(&s.cron, s.timezone.as_deref()) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(schedule = %s.name, error = %e, "skipping schedule");
                    continue;
                }
            };
            let mut after = s.last_fired.unwrap_or(s.created_at);
            for _ in 0..MAX_CATCH_UP {
                let Some(occ) = spec.next_after(after) else {
                    break;
                };
                if occ > now + LOOKAHEAD_MS {
                    wake = wake.min(occ - LOOKAHEAD_MS);
                    break;
                }
                if let Err(e) = self.fire(&s, occ).await {
                    tracing::warn!(schedule = %s.name, occurrence = occ, error = %e, "could not enqueue occurrence; retrying in 1 s");
                    wake = now + 1_000;
                    break;
                }
                after = occ;
            }
        }
        wake.max(now + 1)
    }

    async fn fire(&self, s: &Schedule, occ: Millis) -> anyhow::Result<()> {
        let task = self.enqueuer.task(spec_for(s, occ, &self.enqueuer))?;
        self.enqueuer.submit(vec![task]).await?;
        self.store.mark_schedule_fired(&s.name, occ).await?;
        Ok(())
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let wake = self.tick().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = self.clock.sleep_until(wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_next_occurrences_in_utc_and_zones() {
        let every_minute = CronSpec::parse("* * * * *", None).expect("valid");
        // 2026-01-01T00:00:30Z → 00:01:00Z
        let t = 1_767_225_630_000;
        assert_eq!(every_minute.next_after(t), Some(1_767_225_660_000));
        let nine_paris = CronSpec::parse("0 9 * * *", Some("Europe/Paris")).expect("valid");
        // 09:00 in Paris in January is 08:00Z.
        assert_eq!(
            nine_paris.next_after(t),
            Some(1_767_225_600_000 + 8 * 3_600_000)
        );
        assert!(CronSpec::parse("61 * * * *", None).is_err());
        assert!(CronSpec::parse("* * * * *", Some("Mars/Olympus")).is_err());
    }
}
