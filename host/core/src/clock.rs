//! Time as the scheduler sees it. Production uses [`SystemClock`]; tests drive a
//! [`ManualClock`] so timing behaviour is deterministic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::model::Millis;

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub trait Clock: Send + Sync + 'static {
    /// Current wall-clock time in Unix epoch milliseconds.
    fn now(&self) -> Millis;
    /// Completes once `now() >= at`.
    fn sleep_until(&self, at: Millis) -> Sleep;
}

/// The operating system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

pub fn system_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        system_now()
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        Box::pin(async move {
            // Re-check after waking: the wall clock may have been adjusted meanwhile.
            loop {
                let now = system_now();
                if now >= at {
                    return;
                }
                tokio::time::sleep(Duration::from_millis((at - now) as u64)).await;
            }
        })
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock {
    tx: Arc<watch::Sender<Millis>>,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(start)),
        }
    }

    pub fn advance(&self, by: Millis) {
        self.tx.send_modify(|t| *t += by);
    }

    pub fn set(&self, to: Millis) {
        self.tx.send_modify(|t| *t = (*t).max(to));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        *self.tx.borrow()
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            // `wait_for` returns an error only when the sender is gone; then time stops forever.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
