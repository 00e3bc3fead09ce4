//! One partition's actor: owns its window, pages tasks in from the store, starts due tasks
//! (one per key, in order), takes their results and serialises every operation on its tasks.
//!
//! Timer-driven: it sleeps until the earliest armed task (or the next page of the horizon),
//! so a task due now starts as soon as it is delivered, with no polling tick.

use std::sync::Arc;

use kairos_core::model::{Millis, OrderPos, Task, TaskState};
use kairos_core::ownership::Lease;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::run::{Done, run_attempt};
use super::window::Window;
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
    /// A key was paused or resumed: re-read its state; with `unpark`, also release it from
    /// dead tasks that park it (answers how many).
    KeyChanged {
        key: String,
        unpark: bool,
        reply: Reply<u32>,
    },
}

pub(crate) struct PartitionActor {
    partition: u32,
    lease: Lease,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    stop: CancellationToken,
    /// Cancelled when the partition goes to another node (see `run_attempt`).
    release: CancellationToken,
    window: Window,
    /// Every pending task at or before this position is in the window.
    cursor: OrderPos,
    /// The window is loaded up to this due time (when not capacity-bound).
    horizon: Millis,
    /// Woken by the slot pool once a slot for one of the plugins this actor waits for is free.
    slot_notify: Arc<tokio::sync::Notify>,
    /// Registered with the claim pool as waiting (see [`crate::slots::SlotPool::withdraw`]).
    slot_registered: bool,
    /// The attempts running (aborted if the actor is dropped: a crash).
    attempts: JoinSet<Done>,
    /// Which task each running attempt is for (to recover from a panicking attempt).
    attempt_ids: std::collections::HashMap<tokio::task::Id, String>,
    /// When paging failed: do not retry before this time.
    retry_load_at: Option<Millis>,
    /// The store said this lease is stale: the partition is another node's now.
    fenced: bool,
    /// When this actor started under its lease (the lease was taken just before).
    leased_at: Millis,
}

impl Drop for PartitionActor {
    /// Stopped or dropped while waiting for a claim slot: a wake it was given goes on.
    fn drop(&mut self) {
        if self.slot_registered {
            self.shared.claims.withdraw(&self.slot_notify);
        }
    }
}

impl PartitionActor {
    pub fn new(
        lease: Lease,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Msg>,
        stop: CancellationToken,
        release: CancellationToken,
    ) -> Self {
        // Read before `shared` moves into the actor.
        let leased_at = shared.clock.now();
        Self {
            partition: lease.partition,
            lease,
            shared,
            rx,
            stop,
            release,
            window: Window::default(),
            cursor: OrderPos::MIN,
            horizon: Millis::MIN,
            slot_notify: Arc::new(tokio::sync::Notify::new()),
            slot_registered: false,
            attempts: JoinSet::new(),
            attempt_ids: std::collections::HashMap::new(),
            retry_load_at: None,
            fenced: false,
            leased_at,
        }
    }

    /// A task as stored, ready for the window. One found `running` is in doubt: its attempt
    /// may still run where it started (a previous holder of the partition, or this node
    /// before a lost answer). It keeps its key and runs again only once that attempt has
    /// certainly hit its deadline *and* its previous holder, if alive, has had the time to
    /// record its end: `takeover_wait_ms` after the start was recorded and after this lease
    /// was taken. (While the store was down, an attempt that ran cannot record its end; the
    /// store coming back is what let this lease be taken, and the previous holder's retries
    /// land within seconds of it. Counting only from the start would run such attempts again.)
    fn adopt(&self, mut t: Task) -> Task {
        if t.state == TaskState::Running {
            let wait = self.shared.cfg.takeover_wait_ms;
            let from = t.updated_at.max(self.leased_at);
            t.next_at = t.next_at.max(from.saturating_add(wait));
        }
        t
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
                // A task an operator moved or revived (its record changed since it was
                // created, yet it never started or waits again) may come before the task
                // holding its key, which may lie beyond this page: fetch that holder too.
                let mut check: Vec<String> = Vec::new();
                for t in tasks {
                    if !complete
                        && t.state == TaskState::Scheduled
                        && t.updated_at != t.created_at
                        && !self.window.key_is_held(&t.key)
                        && !check.contains(&t.key)
                    {
                        check.push(t.key.clone());
                    }
                    let t = self.adopt(t);
                    self.window.insert(t, &paused);
                }
                for key in check {
                    self.load_key_holder(&key).await;
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
        self.shared.metrics.set_partition(
            self.partition,
            self.window.len(),
            self.window.next_timer(),
        );
    }

    /// Adds delivered tasks that fall inside the window; the rest wait in the store.
    fn deliver(&mut self, tasks: Vec<Task>) {
        let paused = self.shared.paused_snapshot();
        for t in tasks {
            if t.order() <= self.cursor {
                let t = self.adopt(t);
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
    /// A task moved or revived by an operator may now come before the task holding its key
    /// (running, in doubt, retrying or parked), which can lie beyond the window's cursor. That
    /// holder is brought into the window first, so the key stays held. Retried until the
    /// store answers (operations are rare).
    async fn load_key_holder(&mut self, key: &str) {
        // By state: a key's finished tasks are kept, so its holder may not be among the
        // first rows of the key in position order.
        let mut tasks = Vec::new();
        for state in [TaskState::Running, TaskState::Retrying, TaskState::Dead] {
            let filter = kairos_core::model::ListFilter {
                key: Some(key.to_owned()),
                state: Some(state),
                limit: 1_000,
                after: None,
            };
            let mut delay: Millis = 50;
            loop {
                match self.shared.store.list(&filter).await {
                    Ok(t) => {
                        tasks.extend(t);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(partition = self.partition, %key, error = %e, "cannot read the key's tasks yet; retrying");
                        let now = self.shared.clock.now();
                        self.shared.clock.sleep_until(now + delay).await;
                        delay = (delay * 2).min(5_000);
                    }
                }
            }
        }
        let paused = self.shared.paused_snapshot();
        for t in tasks {
            let holds = match t.state {
                TaskState::Running | TaskState::Retrying => true,
                TaskState::Dead => t.park_on_dead,
                _ => false,
            };
            if holds && t.partition == self.partition {
                let t = self.adopt(t);
                self.window.insert(t, &paused);
            }
        }
    }

    fn place(&mut self, task: Task) {
        let paused = self.shared.paused_snapshot();
        self.window.remove(&task.id, &paused);
        if task.order() <= self.cursor {
            self.window.insert(task, &paused);
        }
        self.publish_window();
    }

    fn on_done(&mut self, done: Done) {
        let paused = self.shared.paused_snapshot();
        match done {
            // The attempt's end is durable (or the task was found changed in the store):
            // the key moves on only now.
            Done::Stored(task) => {
                let task = self.adopt(*task);
                self.window.finished(task, &paused);
            }
            Done::StartFailed { id, retry_at } => {
                // Whether the start was recorded is unknown: the task keeps its key and is
                // claimed again (same attempt number) later; it has not run.
                self.window.unstart_until(&id, retry_at, &paused);
            }
            Done::Gone { id } => {
                tracing::debug!(partition = self.partition, task = %id, "task finished elsewhere: dropped from the window");
                self.window.remove(&id, &paused);
            }
            Done::Fenced { id } => {
                tracing::warn!(partition = self.partition, task = %id, lease = %self.lease, "the partition belongs to another node now: stopping its scheduler");
                self.fenced = true;
            }
        }
        self.publish_window();
    }

    /// Brings the window in line with an operation's outcome. When the store's answer was
    /// lost (the change may or may not have happened), the task is read back, retrying until
    /// the store answers: a task moved or revived without the window knowing would run at
    /// its old time, or sit behind the cursor while its key's later tasks ran.
    async fn after_op(&mut self, id: &str, r: &Result<Task, OpError>) {
        match r {
            Ok(t) => {
                self.load_key_holder(&t.key).await;
                self.place(t.clone());
            }
            Err(OpError::NotOwned(_)) => self.fenced = true,
            Err(OpError::Store(e)) if !e.is_fenced() => {
                let mut delay: Millis = 50;
                loop {
                    match self.shared.store.get(id).await {
                        Ok(Some(rec)) => {
                            let t = self.adopt(rec.task);
                            if self.window.is_running(id) {
                                // Its attempt reports the task as stored when it ends.
                            } else if t.is_pending() {
                                self.load_key_holder(&t.key).await;
                                self.place(t);
                            } else {
                                let paused = self.shared.paused_snapshot();
                                self.window.remove(id, &paused);
                            }
                            return;
                        }
                        Ok(None) => return,
                        Err(e) if e.is_fenced() => {
                            self.fenced = true;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(partition = self.partition, task = %id, error = %e, "outcome of an operation unknown; reading the task back");
                            let now = self.shared.clock.now();
                            self.shared.clock.sleep_until(now + delay).await;
                            delay = (delay * 2).min(5_000);
                        }
                    }
                }
            }
            Err(_) => {}
        }
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
                        Ok(_) => store
                            .cancel(&self.lease, &id, now)
                            .await
                            .map_err(OpError::from),
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
                        .reschedule(&self.lease, &id, run_at, now)
                        .await
                        .map_err(OpError::from)
                };
                self.after_op(&id, &r).await;
                let _ = reply.send(r);
            }
            Msg::RetryDead {
                id,
                extra_attempts,
                reply,
            } => {
                let r = if self.window.is_running(&id) {
                    // Its attempt's end is still being recorded.
                    Err(OpError::Conflict(format!("task {id} is running")))
                } else {
                    store
                        .retry_dead(&self.lease, &id, extra_attempts, now)
                        .await
                        .map_err(OpError::from)
                };
                self.after_op(&id, &r).await;
                let _ = reply.send(r);
            }
            Msg::KeyChanged { key, unpark, reply } => {
                let unparked = if unpark {
                    match store.unpark_key(&self.lease, &key, now).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                            return;
                        }
                    }
                } else {
                    0
                };
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
                let _ = reply.send(Ok(unparked));
            }
        }
    }

    /// Starts the due tasks whose plugins get a claim slot (the attempt then records its
    /// start and waits for a run slot).
    fn start_due(&mut self, now: Millis) {
        let claims = self.shared.claims.clone();
        let limit = claims.total();
        for (task, claim) in self.window.take_due(now, limit, |p| claims.try_acquire(p)) {
            self.spawn_attempt(task, claim);
        }
    }

    fn spawn_attempt(&mut self, task: Task, claim: crate::slots::Slot) {
        let id = task.id.clone();
        let h = self.attempts.spawn(run_attempt(
            self.shared.clone(),
            self.lease,
            task,
            claim,
            self.release.clone(),
        ));
        self.attempt_ids.insert(h.id(), id);
        self.shared.track(h);
    }

    pub async fn run(mut self) {
        let mut stopping = false;
        loop {
            if self.fenced && !stopping {
                stopping = true;
            }
            let now = self.shared.clock.now();
            if !stopping && self.wants_page(now) {
                self.page(now).await;
                continue;
            }
            if !stopping {
                // Messages that queued up while this actor awaited the store (a page, an
                // operation) come first: a task delivered meanwhile may come before one due.
                while let Ok(m) = self.rx.try_recv() {
                    self.on_msg(m).await;
                }
            }
            let now = self.shared.clock.now();
            if !stopping {
                self.start_due(now);
            }
            if stopping && self.attempts.is_empty() {
                break;
            }
            // Due tasks whose plugins got no claim slot: wait for the pool to free one they may
            // take, not for timers that have passed (waking at a past time would spin).
            let due_plugins = if stopping {
                Vec::new()
            } else {
                self.window.due_plugins(now)
            };
            let slot_wait = !due_plugins.is_empty();
            if slot_wait {
                self.shared.claims.wait_for(&self.slot_notify, due_plugins);
            } else if self.slot_registered {
                // Nothing due waits for a claim any more: a wake this actor was given (or is
                // about to be, as a stale waiter) goes to another that may use the slot.
                self.shared.claims.withdraw(&self.slot_notify);
            }
            self.slot_registered = slot_wait;
            let wake = match stopping {
                true => None,
                false => {
                    // A failed page is retried at `retry_load_at`; once that has passed it no
                    // longer sets a wake-up (waking at a past time would spin the loop while
                    // the window is too full to page).
                    let page_at = match self.retry_load_at {
                        Some(t) if t > now => t,
                        _ => self
                            .horizon
                            .saturating_sub(self.shared.cfg.horizon_ms / 2)
                            .max(now),
                    };
                    // Timers already past belong to plugins waiting for a slot (above).
                    match self.window.next_timer_after(now) {
                        Some(t) => Some(t.min(page_at)),
                        None => Some(page_at),
                    }
                }
            };
            let sleep = self.shared.clock.sleep_until(wake.unwrap_or(Millis::MAX));
            let slot_notify = self.slot_notify.clone();
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                }
                Some(joined) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => match joined {
                    Ok((tid, done)) => {
                        self.attempt_ids.remove(&tid);
                        self.on_done(done);
                    }
                    Err(e) => {
                        // A panicking attempt: whether its start or end was recorded is
                        // unknown. The task keeps its key and is taken up again as one found
                        // running (after `takeover_wait_ms`).
                        tracing::error!(partition = self.partition, error = %e, "attempt task failed");
                        if let Some(id) = self.attempt_ids.remove(&e.id()) {
                            let now = self.shared.clock.now();
                            let paused = self.shared.paused_snapshot();
                            let retry_at = now.saturating_add(self.shared.cfg.takeover_wait_ms);
                            self.window.in_doubt_until(&id, retry_at, &paused);
                        }
                    }
                },
                msg = self.rx.recv(), if !stopping => match msg {
                    Some(m) => self.on_msg(m).await,
                    None => stopping = true,
                },
                _ = slot_notify.notified(), if slot_wait => {}
                _ = sleep, if wake.is_some() => {}
            }
        }
        tracing::debug!(partition = self.partition, "partition drained and stopped");
    }
}
