//! The in-memory window of one partition: the soon-due pending tasks, grouped per ordering key.
//!
//! Invariant kept by the partition actor: every pending task of the partition whose position
//! `(due_at, seq)` is at or before the actor's cursor is in the window; nothing after it is
//! (except active tasks, which never leave while they hold their key).
//!
//! Per key, at most one task is *active*: running, waiting out a retry backoff, or dead and
//! parking the key. While a key has an active task nothing else of that key starts. Each key
//! has at most one armed timer entry: the task that may start next and when.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kairos_core::model::{Millis, OrderPos, Task, TaskState};

#[derive(Default)]
struct KeyState {
    active: Option<String>,
    running: bool,
    waiting: BTreeMap<OrderPos, String>,
    /// The armed entry and the plugin whose timer set holds it.
    armed: Option<(String, TimerEntry)>,
}

type TimerEntry = (Millis, OrderPos, String);

#[derive(Default)]
pub struct Window {
    tasks: HashMap<String, Task>,
    by_pos: BTreeMap<OrderPos, String>,
    keys: HashMap<String, KeyState>,
    /// Armed entries per plugin, so due tasks of a plugin without a free run slot are passed
    /// over without scanning them.
    timers: BTreeMap<String, BTreeSet<TimerEntry>>,
}

fn unarm(timers: &mut BTreeMap<String, BTreeSet<TimerEntry>>, armed: (String, TimerEntry)) {
    let (plugin, entry) = armed;
    if let Some(set) = timers.get_mut(&plugin) {
        set.remove(&entry);
        if set.is_empty() {
            timers.remove(&plugin);
        }
    }
}

/// Whether a task loaded from the store had already started (it holds its key).
fn holds_key(t: &Task) -> bool {
    match t.state {
        TaskState::Running | TaskState::Retrying => true,
        TaskState::Dead => t.park_on_dead,
        _ => false,
    }
}

impl Window {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.tasks
            .get(id)
            .and_then(|t| self.keys.get(&t.key))
            .is_some_and(|k| k.running && k.active.as_deref() == Some(id))
    }

    /// Adds a pending task. Ignores ids already present (a page and a push can overlap).
    pub fn insert(&mut self, task: Task, paused: &HashSet<String>) {
        if self.tasks.contains_key(&task.id) || !task.is_pending() {
            return;
        }
        let key = task.key.clone();
        let ks = self.keys.entry(key.clone()).or_default();
        if holds_key(&task) && ks.active.is_none() {
            ks.active = Some(task.id.clone());
        } else {
            ks.waiting.insert(task.order(), task.id.clone());
        }
        self.by_pos.insert(task.order(), task.id.clone());
        self.tasks.insert(task.id.clone(), task);
        self.rearm(&key, paused);
    }

    /// Recomputes the key's armed timer entry.
    pub fn rearm(&mut self, key: &str, paused: &HashSet<String>) {
        let Some(ks) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(old) = ks.armed.take() {
            unarm(&mut self.timers, old);
        }
        if ks.running || paused.contains(key) {
            return;
        }
        let candidate = match &ks.active {
            Some(id) => self.tasks.get(id).filter(|t| t.state != TaskState::Dead),
            None => ks.waiting.values().next().and_then(|id| self.tasks.get(id)),
        };
        if let Some(t) = candidate {
            let entry = (t.next_at, t.order(), t.id.clone());
            self.timers
                .entry(t.plugin.clone())
                .or_default()
                .insert(entry.clone());
            ks.armed = Some((t.plugin.clone(), entry));
        }
    }

    /// Drops a key's armed timer (the key was paused).
    pub fn disarm(&mut self, key: &str) {
        if let Some(ks) = self.keys.get_mut(key)
            && let Some(old) = ks.armed.take()
        {
            unarm(&mut self.timers, old);
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    pub fn next_timer(&self) -> Option<Millis> {
        self.timers
            .values()
            .filter_map(|set| set.first())
            .map(|e| e.0)
            .min()
    }

    /// The earliest armed time after `now`.
    pub fn next_timer_after(&self, now: Millis) -> Option<Millis> {
        self.timers
            .values()
            .filter_map(|set| set.first())
            .map(|e| e.0)
            .filter(|t| *t > now)
            .min()
    }

    /// Plugins with a task due at `now` that has not started.
    pub fn due_plugins(&self, now: Millis) -> Vec<String> {
        self.timers
            .iter()
            .filter(|(_, set)| set.first().is_some_and(|e| e.0 <= now))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Takes tasks whose time has come, earliest first, each with what `admit` gives for its
    /// plugin (a run slot); a plugin refused once is passed over for the rest of the call.
    /// Marks each taken task running (its key is now held).
    pub fn take_due<S>(
        &mut self,
        now: Millis,
        max: usize,
        mut admit: impl FnMut(&str) -> Option<S>,
    ) -> Vec<(Task, S)> {
        let mut out = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        while out.len() < max {
            // The earliest due entry among plugins not refused.
            let next = self
                .timers
                .iter()
                .filter(|(p, _)| !refused.contains(p))
                .filter_map(|(p, set)| set.first().filter(|e| e.0 <= now).map(|e| (e, p)))
                .min_by(|a, b| a.0.cmp(b.0))
                .map(|(e, p)| (e.clone(), p.clone()));
            let Some((entry, plugin)) = next else {
                break;
            };
            let Some(slot) = admit(&plugin) else {
                refused.push(plugin);
                continue;
            };
            unarm(&mut self.timers, (plugin, entry.clone()));
            let (_, pos, id) = entry;
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let Some(ks) = self.keys.get_mut(&task.key) else {
                continue;
            };
            ks.armed = None;
            if ks.active.is_none() {
                ks.waiting.remove(&pos);
                ks.active = Some(id.clone());
            }
            ks.running = true;
            out.push((task.clone(), slot));
        }
        out
    }

    /// A started task did not actually start (no permit before shutdown): give the key back.
    pub fn unstart(&mut self, id: &str, paused: &HashSet<String>) {
        let Some(key) = self.tasks.get(id).map(|t| t.key.clone()) else {
            return;
        };
        if let Some(ks) = self.keys.get_mut(&key) {
            ks.running = false;
        }
        self.rearm(&key, paused);
    }

    /// A task's start could not be recorded (or its outcome is unknown): it keeps its key and
    /// is armed again at `retry_at` at the earliest.
    pub fn unstart_until(&mut self, id: &str, retry_at: Millis, paused: &HashSet<String>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.next_at = t.next_at.max(retry_at);
        }
        self.unstart(id, paused);
    }

    /// An attempt whose task panicked: whether its start was recorded, and whether its guest
    /// ran, is unknown. It keeps its key, is armed again at `retry_at` at the earliest, and is
    /// marked `running` (in doubt) so its start is never given back: its next claim runs it
    /// again under the same attempt number, as before.
    pub fn in_doubt_until(&mut self, id: &str, retry_at: Millis, paused: &HashSet<String>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.state = TaskState::Running;
        }
        self.unstart_until(id, retry_at, paused);
    }

    /// An attempt finished and the store holds `updated`. Succeeded, cancelled and dead
    /// (unparked) tasks leave; a retrying or parked task keeps holding its key.
    pub fn finished(&mut self, updated: Task, paused: &HashSet<String>) {
        let key = updated.key.clone();
        if let Some(ks) = self.keys.get_mut(&key) {
            ks.running = false;
        }
        if updated.is_pending() {
            if let Some(t) = self.tasks.get_mut(&updated.id) {
                *t = updated;
            }
            self.rearm(&key, paused);
        } else {
            self.remove(&updated.id, paused);
        }
    }

    /// Removes a task (cancelled, rescheduled, unparked, evicted), releasing its key if it held it.
    pub fn remove(&mut self, id: &str, paused: &HashSet<String>) -> Option<Task> {
        let task = self.tasks.remove(id)?;
        self.by_pos.remove(&task.order());
        let key = task.key.clone();
        if let Some(ks) = self.keys.get_mut(&key) {
            if ks.active.as_deref() == Some(id) {
                ks.active = None;
                ks.running = false;
            } else {
                ks.waiting.remove(&task.order());
            }
            if ks.active.is_none() && ks.waiting.is_empty() {
                if let Some(old) = ks.armed.take() {
                    unarm(&mut self.timers, old);
                }
                self.keys.remove(&key);
            } else {
                self.rearm(&key, paused);
            }
        }
        Some(task)
    }

    /// Evicts the latest-positioned tasks that do not hold their key until at most `capacity`
    /// remain. Returns the position just before the earliest evicted one (the new cursor).
    pub fn evict_to(&mut self, capacity: usize, paused: &HashSet<String>) -> Option<OrderPos> {
        let mut earliest = None;
        while self.tasks.len() > capacity {
            let victim = self.by_pos.iter().rev().find_map(|(pos, id)| {
                let t = self.tasks.get(id)?;
                let active = self.keys.get(&t.key).and_then(|k| k.active.as_deref()) == Some(id);
                (!active).then(|| (*pos, id.clone()))
            });
            let Some((pos, id)) = victim else { break };
            self.remove(&id, paused);
            earliest = Some(pos);
        }
        earliest.map(pred)
    }

    /// Whether a task of `key` holds it (running, retrying, in doubt or parked).
    pub fn key_is_held(&self, key: &str) -> bool {
        self.keys.get(key).is_some_and(|k| k.active.is_some())
    }

    /// Tasks of `key` in the window (for unpark).
    pub fn ids_of_key(&self, key: &str) -> Vec<String> {
        self.keys
            .get(key)
            .map(|ks| {
                ks.active
                    .iter()
                    .chain(ks.waiting.values())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The position immediately before `pos`.
pub fn pred(pos: OrderPos) -> OrderPos {
    if pos.seq > 0 {
        OrderPos {
            due_at: pos.due_at,
            seq: pos.seq - 1,
        }
    } else {
        OrderPos {
            due_at: pos.due_at - 1,
            seq: u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::model::Backoff;

    fn task(id: &str, key: &str, due: Millis, seq: u64) -> Task {
        Task {
            id: id.into(),
            partition: 0,
            seq,
            plugin: "p".into(),
            pin_version: None,
            key: key.into(),
            due_at: due,
            next_at: due,
            payload: "{}".into(),
            uniqueness_key: None,
            max_attempts: 3,
            backoff: Backoff::default(),
            park_on_dead: false,
            generation: 0,
            state: TaskState::Scheduled,
            attempts: 0,
            created_at: 0,
            updated_at: 0,
            last_error: None,
            output: None,
        }
    }

    fn ids(ts: &[Task]) -> Vec<&str> {
        ts.iter().map(|t| t.id.as_str()).collect()
    }

    fn take(w: &mut Window, now: Millis, max: usize) -> Vec<Task> {
        w.take_due(now, max, |_| Some(()))
            .into_iter()
            .map(|(t, ())| t)
            .collect()
    }

    #[test]
    fn a_plugin_without_a_slot_is_passed_over_and_keeps_its_tasks_due() {
        let mut w = Window::default();
        let none = HashSet::new();
        let mut spin = task("s1", "k1", 10, 1);
        spin.plugin = "spin".into();
        let mut spin2 = task("s2", "k2", 11, 2);
        spin2.plugin = "spin".into();
        w.insert(spin, &none);
        w.insert(spin2, &none);
        w.insert(task("p1", "k3", 20, 3), &none);
        let taken = w.take_due(30, 10, |p| (p != "spin").then_some(()));
        assert_eq!(
            ids(&taken.into_iter().map(|(t, ())| t).collect::<Vec<_>>()),
            ["p1"]
        );
        assert_eq!(w.due_plugins(30), ["spin"]);
        assert_eq!(w.next_timer_after(5), Some(10), "still armed");
        assert_eq!(ids(&take(&mut w, 30, 10)), ["s1", "s2"]);
        assert!(w.due_plugins(30).is_empty());
    }

    #[test]
    fn one_task_per_key_in_order_other_keys_independent() {
        let none = HashSet::new();
        let mut w = Window::default();
        w.insert(task("a2", "a", 20, 2), &none);
        w.insert(task("a1", "a", 10, 1), &none);
        w.insert(task("b1", "b", 15, 3), &none);
        assert!(take(&mut w, 5, 10).is_empty());
        assert_eq!(ids(&take(&mut w, 30, 10)), ["a1", "b1"]);
        // a2 is due but a1 still holds key a.
        assert!(take(&mut w, 40, 10).is_empty());
        let mut done = task("a1", "a", 10, 1);
        done.state = TaskState::Succeeded;
        w.finished(done, &none);
        assert_eq!(ids(&take(&mut w, 40, 10)), ["a2"]);
    }

    /// An attempt whose task panicked is in doubt: marked running (so its start is never
    /// given back), holding its key, due again only at the retry time.
    #[test]
    fn a_panicked_attempt_is_in_doubt_and_keeps_its_key() {
        let none = HashSet::new();
        let mut w = Window::default();
        w.insert(task("a1", "a", 10, 1), &none);
        w.insert(task("a2", "a", 11, 2), &none);
        assert_eq!(ids(&take(&mut w, 10, 10)), ["a1"]);
        w.in_doubt_until("a1", 500, &none);
        assert_eq!(w.get("a1").map(|t| t.state), Some(TaskState::Running));
        assert!(take(&mut w, 100, 10).is_empty(), "a2 waits behind a1");
        let again = take(&mut w, 500, 10);
        assert_eq!(ids(&again), ["a1"]);
        assert_eq!(again[0].state, TaskState::Running, "claimed as in doubt");
    }

    #[test]
    fn retrying_task_holds_its_key_until_next_at() {
        let none = HashSet::new();
        let mut w = Window::default();
        w.insert(task("a1", "a", 10, 1), &none);
        w.insert(task("a2", "a", 11, 2), &none);
        assert_eq!(ids(&take(&mut w, 10, 10)), ["a1"]);
        let mut retry = task("a1", "a", 10, 1);
        retry.state = TaskState::Retrying;
        retry.next_at = 100;
        w.finished(retry, &none);
        assert!(
            take(&mut w, 50, 10).is_empty(),
            "a2 must wait behind the retrying a1"
        );
        assert_eq!(ids(&take(&mut w, 100, 10)), ["a1"]);
    }

    #[test]
    fn paused_keys_do_not_start_and_eviction_spares_active() {
        let paused: HashSet<String> = ["a".to_string()].into();
        let mut w = Window::default();
        w.insert(task("a1", "a", 1, 1), &paused);
        w.insert(task("b1", "b", 2, 2), &paused);
        w.insert(task("b2", "b", 3, 3), &paused);
        assert_eq!(ids(&take(&mut w, 10, 10)), ["b1"]);
        let cursor = w.evict_to(1, &paused);
        assert_eq!(cursor, Some(OrderPos { due_at: 1, seq: 0 }));
        assert!(w.get("b1").is_some(), "the running task stays");
        assert!(w.get("a1").is_none() && w.get("b2").is_none());
    }
}
