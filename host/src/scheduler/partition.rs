//! One partition's actor: owns its window, pages tasks in from the store, starts due tasks
//! (one per key, in order), takes their results and serialises every operation on its tasks.
//!
//! Timer-driven: it sleeps until the earliest armed task (or the next page of the horizon),
//! so a task due now starts as soon as it is delivered, with no polling tick.

use std::collections::VecDeque;
use std::sync::Arc;

use kairos_core::model::{Millis, OrderPos, Task, TaskState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::run::{Done, run_attempt};
use super::window::{Window, pred};
use super::{OpError, Shared};

type Reply<T> = oneshot::Sender<Result<T, OpError>>;

pub(crate) enum Msg {
    /// Newly persisted tasks of this partition.
    Deliver(Vec<Task>),
    Cancel {
        id: String,
        reply: Reply<Task>,
    },
    Reschedule {
        id: String,
        run_at: Millis,
        reply: Reply<Task>,
    },
    RetryDead {
        id: String,
        extra_attempts: u32,
        reply: Reply<Task>,
    },
    /// A key was paused, resumed or unparked: re-read its state.
    KeyChanged {
        key: String,
        reply: Reply<()>,
    },
}

pub(crate) struct PartitionActor {
    partition: u32,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    stop: CancellationToken,
    window: Window,
    /// Every pending task at or before this position is in the window.
    cursor: OrderPos,
    /// The window is loaded up to this due time (when not capacity-bound).
    horizon: Millis,
    /// Tasks taken from the window, waiting for a concurrency permit.
    ready: VecDeque<Task>,
    in_flight: usize,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// When paging failed: do not retry before this time.
    retry_load_at: Option<Millis>,
}

impl PartitionActor {
    pub fn new(
        partition: u32,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Msg>,
        stop: CancellationToken,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::channel(shared.cfg.concurrency.max(16));
        Self {
            partition,
            shared,
            rx,
            stop,
            window: Window::default(),
            cursor: OrderPos::MIN,
            horizon: Millis::MIN,
            ready: VecDeque::new(),
            in_flight: 0,
            done_tx,
            done_rx,
            retry_load_at: None,
        }
    }

    fn capacity(&self) -> usize {
        self.shared.cfg.window_capacity.max(1)
    }

    /// Whether the store may hold pending tasks that belong in the window now.
    fn wants_page(&self, now: Millis) -> bool {
        if self.retry_load_at.is_some_and(|t| now < t) {
            return false;
        }
        let room = self.window.len() < self.capacity() / 2 + 1;
        let capacity_bound = self.cursor < OrderPos::end_of(self.horizon);
        // Reload when capacity-bound and there is room, or when the horizon is half used up.
        (capacity_bound && room) || now + self.shared.cfg.horizon_ms / 2 >= self.horizon
    }

    /// Pages the next tasks after the cursor, up to `now + horizon`.
    async fn page(&mut self, now: Millis) {
        let up_to = now.saturating_add(self.shared.cfg.horizon_ms);
        let limit = self.capacity().saturating_sub(self.window.len()).max(1);
        match self
            .shared
            .store
            .load_window(self.partition, self.cursor, up_to, limit)
            .await
        {
            Ok(tasks) => {
                self.retry_load_at = None;
                let complete = tasks.len() < limit;
                let last = tasks.last().map(Task::order);
                let paused = self.shared.paused_snapshot();
                let wait = self.shared.cfg.takeover_wait_ms;
                for mut t in tasks {
                    if self.shared.fence.is_some() && t.state == TaskState::Running {
                        // In doubt: its attempt may still run where it started. Not before that
                        // attempt's timeout has passed (the key waits with it).
                        t.next_at = t.next_at.max(t.updated_at.saturating_add(wait));
                    }
                    self.window.insert(t, &paused);
                }
                self.cursor = match (complete, last) {
                    (false, Some(pos)) => pos,
                    _ => OrderPos::end_of(up_to),
                };
                self.horizon = up_to;
                self.publish_window();
            }
            Err(e) => {
                self.shared
                    .metrics
                    .store_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(partition = self.partition, error = %e, "loading the window failed; retrying in 1 s");
                self.retry_load_at = Some(now + 1_000);
            }
        }
    }

    fn publish_window(&self) {
        self.shared
            .metrics
            .set_window(self.partition, self.window.len());
    }

    /// Adds delivered tasks that fall inside the window; the rest wait in the store.
    fn deliver(&mut self, tasks: Vec<Task>) {
        let paused = self.shared.paused_snapshot();
        for t in tasks {
            if t.order() <= self.cursor {
                self.window.insert(t, &paused);
            }
        }
        if self.window.len() > self.capacity()
            && let Some(c) = self.window.evict_to(self.capacity(), &paused)
        {
            self.cursor = self.cursor.min(c);
        }
        self.publish_window();
    }

    /// Puts a task whose state changed (by an operation) back where it belongs.
    fn place(&mut self, task: Task) {
        let paused = self.shared.paused_snapshot();
        self.window.remove(&task.id, &paused);
        if task.order() <= self.cursor {
            self.window.insert(task, &paused);
        }
        self.publish_window();
    }

    fn on_done(&mut self, done: Done) {
        self.in_flight -= 1;
        let paused = self.shared.paused_snapshot();
        match done.result {
            Ok(task) => self.window.finished(task, &paused),
            Err(e) if done.dropped => {
                // Fenced (the partition is another node's now; its revoke follows) or finished
                // elsewhere: forget the task without paging it in again.
                tracing::debug!(partition = self.partition, task = %done.id, error = %e, "task dropped from the window");
                self.window.remove(&done.id, &paused);
            }
            Err(e) => {
                // The attempt's end could not be stored: drop the task from memory; it is still
                // pending in the store and is picked up again by a later page or a restart.
                tracing::error!(partition = self.partition, task = %done.id, error = %e, "could not record attempt end");
                if let Some(t) = self.window.remove(&done.id, &paused) {
                    self.cursor = self.cursor.min(pred(t.order()));
                }
                self.retry_load_at = Some(self.shared.clock.now() + 1_000);
            }
        }
        self.publish_window();
    }

    async fn on_msg(&mut self, msg: Msg) {
        let store = self.shared.store.clone();
        let now = self.shared.clock.now();
        match msg {
            Msg::Deliver(tasks) => self.deliver(tasks),
            Msg::Cancel { id, reply } => {
                let r = if self.window.is_running(&id) {
                    Err(OpError::Conflict(format!(
                        "task {id} is running; it can no longer be cancelled"
                    )))
                } else {
                    match store.get(&id).await {
                        Ok(Some(rec))
                            if rec.task.state == TaskState::Dead && !rec.task.park_on_dead =>
                        {
                            Err(OpError::Conflict(format!(
                                "task {id} is dead (finished); use retry to run it again"
                            )))
                        }
                        Ok(_) => store.cancel(&id, now).await.map_err(OpError::from),
                        Err(e) => Err(e.into()),
                    }
                };
                if r.is_ok() {
                    let paused = self.shared.paused_snapshot();
                    self.window.remove(&id, &paused);
                    self.publish_window();
                }
                let _ = reply.send(r);
            }
            Msg::Reschedule { id, run_at, reply } => {
                let r = if self.window.is_running(&id) {
                    Err(OpError::Conflict(format!(
                        "task {id} is running; it can no longer be rescheduled"
                    )))
                } else {
                    store
                        .reschedule(&id, run_at, now)
                        .await
                        .map_err(OpError::from)
                };
                if let Ok(t) = &r {
                    self.place(t.clone());
                }
                let _ = reply.send(r);
            }
            Msg::RetryDead {
                id,
                extra_attempts,
                reply,
            } => {
                let r = store
                    .retry_dead(&id, extra_attempts, now)
                    .await
                    .map_err(OpError::from);
                if let Ok(t) = &r {
                    self.place(t.clone());
                }
                let _ = reply.send(r);
            }
            Msg::KeyChanged { key, reply } => {
                let paused = self.shared.paused_snapshot();
                if paused.contains(&key) {
                    self.window.disarm(&key);
                } else {
                    // Parked dead tasks that were released leave the window.
                    for id in self.window.ids_of_key(&key) {
                        if let Some(t) = self.window.get(&id)
                            && t.state == TaskState::Dead
                            && !self.window.is_running(&id)
                        {
                            self.window.remove(&id, &paused);
                        }
                    }
                    self.window.rearm(&key, &paused);
                }
                self.publish_window();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Starts ready tasks while permits are free.
    fn start_ready(&mut self) {
        while !self.ready.is_empty() {
            let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(task) = self.ready.pop_front() else {
                break;
            };
            self.in_flight += 1;
            tokio::spawn(run_attempt(
                self.shared.clone(),
                task,
                permit,
                self.done_tx.clone(),
            ));
        }
    }

    pub async fn run(mut self) {
        let mut stopping = false;
        loop {
            let now = self.shared.clock.now();
            if !stopping && self.wants_page(now) {
                self.page(now).await;
                continue;
            }
            if !stopping {
                let due = self.window.take_due(now, 4_096);
                self.ready.extend(due);
                self.start_ready();
            }
            if stopping && self.in_flight == 0 {
                break;
            }
            let wake = match (self.window.next_timer(), stopping) {
                (_, true) => None,
                (t, false) => {
                    let page_at = self
                        .retry_load_at
                        .unwrap_or(self.horizon - self.shared.cfg.horizon_ms / 2);
                    Some(t.map_or(page_at, |t| t.min(page_at)))
                }
            };
            let sleep = self.shared.clock.sleep_until(wake.unwrap_or(Millis::MAX));
            let need_permit = !stopping && !self.ready.is_empty();
            let permits = self.shared.permits.clone();
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    // Tasks that were about to start stay pending in the store.
                    let paused = self.shared.paused_snapshot();
                    for t in self.ready.drain(..) {
                        self.window.unstart(&t.id, &paused);
                    }
                }
                Some(done) = self.done_rx.recv() => self.on_done(done),
                msg = self.rx.recv(), if !stopping => match msg {
                    Some(m) => self.on_msg(m).await,
                    None => stopping = true,
                },
                permit = permits.acquire_owned(), if need_permit => {
                    if let (Ok(permit), Some(task)) = (permit, self.ready.pop_front()) {
                        self.in_flight += 1;
                        tokio::spawn(run_attempt(self.shared.clone(), task, permit, self.done_tx.clone()));
                    }
                }
                _ = sleep, if wake.is_some() => {}
            }
        }
        tracing::debug!(partition = self.partition, "partition drained and stopped");
    }
}
