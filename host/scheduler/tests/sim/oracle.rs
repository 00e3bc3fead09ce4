//! The invariants, checked as the simulation runs (at every attempt start), and the event
//! trace a failure prints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kairos_core::clock::Clock;
use kairos_core::mem::MemStore;
use kairos_core::model::{Millis, Task, TaskState};

use super::world::TAKEOVER_WAIT_MS;

/// An attempt running now.
struct Live {
    node: usize,
    /// Which start of the node (its scheduler instance) runs it.
    life: u64,
    plugin: String,
    id: String,
    key: String,
    attempt: u32,
    started: Millis,
}

#[derive(Default)]
struct State {
    next_token: u64,
    /// Per start of a node (scheduler instance): each plugin's concurrency cap.
    caps: BTreeMap<u64, BTreeMap<String, usize>>,
    /// Per start of a node: its memory budget, MiB, if accounted.
    budgets: BTreeMap<u64, u64>,
    next_life: u64,
    live: BTreeMap<u64, Live>,
    /// Cancels acknowledged (200), with their time.
    cancelled: BTreeMap<String, Millis>,
    /// Tasks an operator sent back (retry of a dead task) or moved (reschedule), with the
    /// time the store applied it.
    retried: BTreeMap<String, Millis>,
    /// Tasks acknowledged to clients.
    acked: BTreeMap<String, Millis>,
    /// Every attempt that ran (or runs), by task id and number.
    ran: BTreeSet<(String, u32)>,
    /// When each task's start was first issued.
    first_start: BTreeMap<String, Millis>,
    violations: Vec<String>,
    trace: Vec<(Millis, String, String)>,
}

pub struct Oracle {
    pub store: Arc<MemStore>,
    pub clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Oracle {
    pub fn new(store: Arc<MemStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Records an event of `key` (the trace a failure prints).
    pub fn event(&self, key: &str, what: String) {
        let now = self.clock.now();
        self.with(|s| s.trace.push((now, key.to_owned(), what)));
    }

    /// A start was issued (whatever came of it): from here on the task holds its key.
    /// `at` is when the scheduler issued the claim (the store may apply it later).
    pub fn claimed(&self, id: &str, at: Millis) {
        self.with(|s| {
            s.first_start.entry(id.to_owned()).or_insert(at);
        });
    }

    pub fn acked(&self, t: &Task) {
        self.event(
            &t.key,
            format!("enqueued {} due {} seq {}", t.id, t.due_at, t.seq),
        );
        let now = self.clock.now();
        self.with(|s| {
            s.acked.entry(t.id.clone()).or_insert(now);
        });
    }

    pub fn cancelled(&self, t: &Task) {
        let now = self.clock.now();
        self.event(&t.key, format!("cancel of {} acknowledged", t.id));
        self.with(|s| s.cancelled.insert(t.id.clone(), now));
    }

    /// The store sent a dead task back (an operator's retry: it keeps its old position) or
    /// moved a task (a reschedule), whether or not the operator heard so.
    pub fn retried(&self, id: &str) {
        let now = self.clock.now();
        self.with(|s| s.retried.insert(id.to_owned(), now));
    }

    fn violation(&self, key: &str, what: String) {
        self.event(key, format!("VIOLATION: {what}"));
        self.with(|s| s.violations.push(format!("key {key}: {what}")));
    }

    /// A node starts a scheduler whose run slots cap each plugin as in `caps`; returns the
    /// id its executor reports attempts under.
    pub fn node_started(&self, caps: BTreeMap<String, usize>, budget_mb: Option<u64>) -> u64 {
        self.with(|s| {
            s.next_life += 1;
            s.caps.insert(s.next_life, caps);
            if let Some(b) = budget_mb {
                s.budgets.insert(s.next_life, b);
            }
            s.next_life
        })
    }

    /// Checks the invariants at the start of an attempt; returns a token for its end.
    pub fn attempt_started(&self, node: usize, life: u64, task: &Task, attempt: u32) -> u64 {
        let now = self.clock.now();
        let id = task.id.as_str();
        // The run slots' per-plugin cap holds.
        let (running, cap, mem, budget) = self.with(|s| {
            let running = s
                .live
                .values()
                .filter(|l| l.life == life && l.plugin == task.plugin)
                .count();
            let mem: u64 = s
                .live
                .values()
                .filter(|l| l.life == life)
                .map(|l| super::reservation_mb(&l.plugin))
                .sum();
            let cap = s.caps.get(&life).and_then(|c| c.get(&task.plugin)).copied();
            (running, cap, mem, s.budgets.get(&life).copied())
        });
        // And the memory budget (a plugin bigger than the whole budget runs alone).
        let need = super::reservation_mb(&task.plugin);
        if let Some(b) = budget
            && mem > 0
            && mem + need > b
        {
            self.violation(
                &task.key,
                format!("{id} starts on node {node} with {mem} of {b} MiB reserved (needs {need})"),
            );
        }
        if let Some(cap) = cap
            && running >= cap
        {
            self.violation(
                &task.key,
                format!(
                    "{id} of plugin {} starts on node {node} while {running} of its attempts run (cap {cap})",
                    task.plugin
                ),
            );
        }
        self.event(
            &task.key,
            format!("node {node} runs {id} attempt {attempt}"),
        );
        // The start is durable before the attempt runs (so max_attempts holds across crashes).
        let stored = self.store.snapshot_task(id);
        match &stored {
            Some(t) if t.state == TaskState::Running && t.attempts == attempt => {}
            other => self.violation(
                &task.key,
                format!(
                    "{id} attempt {attempt} runs but the store holds {:?}",
                    other.as_ref().map(|t| (t.state, t.attempts))
                ),
            ),
        }
        let Some(stored) = stored else {
            return self.register(node, life, task, attempt, now);
        };
        if attempt > stored.max_attempts {
            self.violation(
                &task.key,
                format!("{id} attempt {attempt} of at most {}", stored.max_attempts),
            );
        }
        if now < stored.due_at || now < task.next_at {
            self.violation(
                &task.key,
                format!(
                    "{id} starts at {now}, before it is due ({} / next {})",
                    stored.due_at, task.next_at
                ),
            );
        }
        if let Some(at) = self.with(|s| s.cancelled.get(id).copied()) {
            self.violation(
                &task.key,
                format!("{id} starts although its cancel was acknowledged at {at}"),
            );
        }
        // Per key, in (due, seq) order: nothing of the key that comes first is still pending.
        // Measured from when the scheduler committed to this task (its first claim): it
        // holds the key through its retries.
        let first_start = self.with(|s| *s.first_start.entry(stored.id.clone()).or_insert(now));
        for u in self.store.tasks_of_key(&task.key) {
            if u.id == stored.id || !u.is_pending() || u.order() >= stored.order() {
                continue;
            }
            // A task sent back or moved by an operator, or acknowledged, only after this one
            // was claimed could not be known to it.
            let excused = self.with(|s| {
                s.retried.get(&u.id).is_some_and(|at| *at >= first_start)
                    || s.acked.get(&u.id).is_none_or(|at| *at > first_start)
            });
            if !excused {
                self.violation(
                    &task.key,
                    format!(
                        "{id} (due {}, seq {}) starts while {} (due {}, seq {}) is still {} (attempts {}, updated {})",
                        stored.due_at,
                        stored.seq,
                        u.id,
                        u.due_at,
                        u.seq,
                        u.state.as_str(),
                        u.attempts,
                        u.updated_at - super::world::T0,
                    ),
                );
            }
        }
        // One attempt per key at a time, anywhere; except an orphan that outlived its
        // deadline, once `takeover_wait_ms` has passed since it started.
        let overlapping: Vec<String> = self.with(|s| {
            s.live
                .values()
                .filter(|l| l.key == task.key && now - l.started < TAKEOVER_WAIT_MS)
                .map(|l| {
                    format!(
                        "{} attempt {} on node {} since {}",
                        l.id, l.attempt, l.node, l.started
                    )
                })
                .collect()
        });
        for o in overlapping {
            self.violation(
                &task.key,
                format!("{id} attempt {attempt} starts while {o} runs"),
            );
        }
        self.register(node, life, task, attempt, now)
    }

    fn register(&self, node: usize, life: u64, task: &Task, attempt: u32, now: Millis) -> u64 {
        self.with(|s| {
            s.ran.insert((task.id.clone(), attempt));
            s.next_token += 1;
            s.live.insert(
                s.next_token,
                Live {
                    node,
                    life,
                    plugin: task.plugin.clone(),
                    id: task.id.clone(),
                    key: task.key.clone(),
                    attempt,
                    started: now,
                },
            );
            s.next_token
        })
    }

    /// The store gave back the start of `attempt` of `t`: that attempt must never have run
    /// (the next owner runs the task under the same number).
    pub fn unclaimed(&self, t: &Task, attempt: u32) {
        if self.with(|s| s.ran.contains(&(t.id.clone(), attempt))) {
            self.violation(
                &t.key,
                format!(
                    "the start of {} attempt {attempt} was given back after it ran",
                    t.id
                ),
            );
        }
    }

    pub fn attempt_ended(&self, token: u64) {
        self.with(|s| s.live.remove(&token));
    }

    /// A node crashed: its attempts stopped with it.
    pub fn crashed(&self, node: usize) {
        self.with(|s| s.live.retain(|_, l| l.node != node));
    }

    /// Liveness: every acknowledged task is final (succeeded, cancelled, or dead and not
    /// parking its key). Returns the ones that are not.
    pub fn unfinished(&self) -> Vec<Task> {
        let acked = self.with(|s| s.acked.clone());
        acked
            .keys()
            .filter_map(|id| self.store.snapshot_task(id))
            .filter(|t| t.is_pending())
            .collect()
    }

    pub fn report_unfinished(&self, tasks: &[Task]) {
        for t in tasks {
            self.violation(
                &t.key,
                format!(
                    "{} never finished after the faults stopped: {} (attempts {}, next_at {})",
                    t.id,
                    t.state.as_str(),
                    t.attempts,
                    t.next_at
                ),
            );
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// The trace of one key, one event per line.
    pub fn trace_of(&self, key: &str) -> String {
        self.with(|s| {
            s.trace
                .iter()
                .filter(|(_, k, _)| k == key)
                .map(|(at, _, what)| format!("  {:>8} ms  {what}", at - super::world::T0))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// A digest of the whole trace (two runs of one seed must agree).
    pub fn trace_digest(&self) -> String {
        self.with(|s| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.trace.hash(&mut h);
            format!("{:016x}/{}", h.finish(), s.trace.len())
        })
    }
}
