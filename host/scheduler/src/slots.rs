//! Run slots shared between plugins: per-plugin caps and a weighted fair share.
//!
//! A node has `total` slots. A plugin may hold at most its cap (`max_concurrency`, default
//! `total - reserve`), so one plugin busy with long or spinning tasks never takes the last
//! `reserve` slots and another plugin's task starts at once. When free slots are down to the
//! reserve, only a plugin below its weighted share of the slots — `total × weight / Σ weight`
//! over the plugins running or waiting — may take one, so contended slots drift to the plugins
//! under their share as attempts finish.
//!
//! Memory is shared the same way when the executor reserves it per attempt (the Wasm runtime's
//! memory budget): a slot is given only with its plugin's reservation free, so an attempt never
//! holds a slot while it queues for memory, one plugin holds at most the budget less its
//! reserve, and the reserve goes only to plugins below their share.
//!
//! Partition actors take slots without waiting ([`SlotPool::try_acquire`]); one that has due
//! tasks it could not start registers which plugins it wants ([`SlotPool::wait_for`]) and is
//! woken — one actor per freed slot, the one whose plugin is furthest below its share — when
//! a slot it could take is released.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// One plugin's share settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginShare {
    /// Relative weight (≥ 1) in the fair share of contended slots.
    pub weight: u32,
    /// Most attempts of the plugin at once on this node (`None`: `total - reserve`).
    pub max_concurrency: Option<usize>,
}

impl Default for PluginShare {
    fn default() -> Self {
        Self {
            weight: 1,
            max_concurrency: None,
        }
    }
}

/// How the run slots are shared.
#[derive(Debug, Clone, Default)]
pub struct SlotShares {
    /// Slots kept from any one plugin's default cap and handed out, once free slots are down
    /// to it, only to plugins below their share (`None`: an eighth of the slots, at least 1
    /// when there are 2 or more).
    pub reserve: Option<usize>,
    /// Per plugin; the rest get [`PluginShare::default`].
    pub plugins: HashMap<String, PluginShare>,
    /// The executor's memory budget, MiB, shared like the slots (each attempt costs what
    /// [`crate::Executor::reservation_mb`] says for its plugin); `None`: not accounted here.
    pub memory_budget_mb: Option<u64>,
}

/// What one attempt of a plugin reserves from the memory budget, MiB.
pub type CostFn = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

struct Waiter {
    notify: Weak<Notify>,
    plugins: Vec<String>,
}

#[derive(Default)]
struct State {
    free: usize,
    mem_free: u64,
    /// Per plugin: slots and memory held.
    running: HashMap<String, (usize, u64)>,
    /// The last known reservation of each plugin asking (for waking waiters).
    costs: HashMap<String, u64>,
    /// Caps set while running ([`SlotPool::set_limit`]), below the configured ones.
    limits: HashMap<String, usize>,
    /// The limit of a plugin none was set for yet ([`SlotPool::set_first_limit`]).
    first_limit: Option<usize>,
    waiters: VecDeque<Waiter>,
}

pub struct SlotPool {
    total: usize,
    reserve: usize,
    /// Budget and reserve, MiB (0 and 0 when memory is not accounted).
    mem_total: u64,
    mem_reserve: u64,
    cost: CostFn,
    shares: HashMap<String, PluginShare>,
    state: Mutex<State>,
}

/// A run slot held by one attempt; released on drop.
pub struct Slot {
    pool: Arc<SlotPool>,
    plugin: String,
    mem: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(&self.plugin, self.mem);
    }
}

impl SlotPool {
    /// `cost` is used only when `shares.memory_budget_mb` is set.
    pub fn new(total: usize, shares: SlotShares, cost: CostFn) -> Arc<Self> {
        let total = total.max(1);
        let reserve = shares
            .reserve
            .unwrap_or(if total >= 2 { (total / 8).max(1) } else { 0 })
            .min(total - 1);
        let mem_total = shares.memory_budget_mb.unwrap_or(0);
        // The same fraction of the memory as of the slots.
        let mem_reserve = (mem_total as u128 * reserve as u128 / total as u128) as u64;
        Arc::new(Self {
            total,
            reserve,
            mem_total,
            mem_reserve,
            cost,
            shares: shares.plugins,
            state: Mutex::new(State {
                free: total,
                mem_free: mem_total,
                ..State::default()
            }),
        })
    }

    fn cost_of(&self, plugin: &str) -> u64 {
        if self.mem_total == 0 {
            0
        } else {
            (self.cost)(plugin)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn share_of(&self, plugin: &str) -> PluginShare {
        self.shares.get(plugin).copied().unwrap_or_default()
    }

    /// The configured cap of `plugin`: its `max_concurrency`, or all but the reserve.
    pub fn cap_of(&self, plugin: &str) -> usize {
        self.share_of(plugin)
            .max_concurrency
            .unwrap_or(self.total - self.reserve)
            .clamp(1, self.total)
    }

    /// The cap of a plugin without `max_concurrency`: all slots but the reserve.
    pub fn default_cap(&self) -> usize {
        (self.total - self.reserve).max(1)
    }

    /// The cap in force: the configured one, or the plugin's limit if lower.
    fn cap(&self, s: &State, plugin: &str) -> usize {
        let cap = self.cap_of(plugin);
        match s.limits.get(plugin).copied().or(s.first_limit) {
            Some(l) => l.clamp(1, cap),
            None => cap,
        }
    }

    /// Caps `plugin` at `limit` slots (at least 1; never above its configured cap), or lifts
    /// such a cap (`None`: the configured cap). Slots it holds beyond a lowered cap stay held;
    /// a raised cap wakes a waiter that may now take a slot.
    pub fn set_limit(&self, plugin: &str, limit: Option<usize>) {
        let mut s = self.lock();
        let before = self.cap(&s, plugin);
        s.limits
            .insert(plugin.to_string(), limit.unwrap_or(usize::MAX));
        if self.cap(&s, plugin) > before {
            self.wake_one(&mut s);
        }
    }

    /// The limit of every plugin [`Self::set_limit`] was not called for yet (`None`: their
    /// configured caps).
    pub fn set_first_limit(&self, limit: Option<usize>) {
        self.lock().first_limit = limit;
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.lock().free
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Attempts of `plugin` holding a slot now.
    pub fn running(&self, plugin: &str) -> usize {
        self.lock().running.get(plugin).map_or(0, |r| r.0)
    }

    /// Whether `plugin`, whose attempt reserves `cost` MiB, may take a slot in state `s`.
    fn admits(&self, s: &State, plugin: &str, cost: u64) -> bool {
        let (running, held) = s.running.get(plugin).copied().unwrap_or((0, 0));
        if s.free == 0 || running >= self.cap(s, plugin) || cost > s.mem_free {
            return false;
        }
        // Like its slots, one plugin's memory stops short of the reserve.
        if self.mem_total > 0 && held + cost > self.mem_total - self.mem_reserve && running > 0 {
            return false;
        }
        if s.free > self.reserve && s.mem_free - cost >= self.mem_reserve {
            return true;
        }
        // Down to the reserve: only a plugin below its weighted share.
        let mut weights: u64 = 0;
        let mut seen: Vec<&str> = Vec::new();
        let asking = std::iter::once(plugin)
            .chain(
                s.running
                    .iter()
                    .filter(|(_, (n, _))| *n > 0)
                    .map(|(p, _)| p.as_str()),
            )
            .chain(
                s.waiters
                    .iter()
                    .flat_map(|w| w.plugins.iter().map(String::as_str)),
            );
        for p in asking {
            if !seen.contains(&p) {
                seen.push(p);
                weights += u64::from(self.share_of(p).weight.max(1));
            }
        }
        let own = u64::from(self.share_of(plugin).weight.max(1));
        // running < total × own / weights, without rounding.
        (running as u64).saturating_mul(weights) < (self.total as u64).saturating_mul(own)
    }

    /// A slot for an attempt of `plugin`, if its cap and share allow one now.
    pub fn try_acquire(self: &Arc<Self>, plugin: &str) -> Option<Slot> {
        let cost = self.cost_of(plugin);
        let mut s = self.lock();
        if s.costs.get(plugin) != Some(&cost) {
            s.costs.insert(plugin.to_string(), cost);
        }
        if !self.admits(&s, plugin, cost) {
            return None;
        }
        s.free -= 1;
        s.mem_free -= cost;
        let r = s.running.entry(plugin.to_string()).or_default();
        r.0 += 1;
        r.1 += cost;
        Some(Slot {
            pool: self.clone(),
            plugin: plugin.to_string(),
            mem: cost,
        })
    }

    /// A slot for an attempt of `plugin`, waiting (in the fair order of [`Self::wait_for`])
    /// until its cap, share and memory allow one. Cancel-safe: dropped while it waits, it
    /// withdraws, and a wake it had been given goes to the next waiter.
    pub async fn acquire(self: &Arc<Self>, plugin: &str) -> Slot {
        let mut waiting = Waiting {
            pool: self,
            notify: Arc::new(Notify::new()),
            served: false,
        };
        let mut woken = false;
        loop {
            if let Some(slot) = self.try_acquire(plugin) {
                waiting.served = true;
                return slot;
            }
            self.register(&waiting.notify, vec![plugin.to_string()], woken);
            waiting.notify.notified().await;
            woken = true;
        }
    }

    /// The owner of `notify` no longer waits (it has no due tasks left, or it stops): its
    /// registration goes, and a wake it may have been given and not used goes to the next
    /// waiter that may take a free slot. Without this a freed slot could stay unused while
    /// others wait for it.
    pub fn withdraw(&self, notify: &Arc<Notify>) {
        let mut s = self.lock();
        // Still registered: not woken since it registered, so it has no wake to pass on.
        if !Self::unregister(&mut s, notify) {
            self.wake_one(&mut s);
        }
    }

    /// Drops the registration of `notify` (and of owners gone); whether it had one.
    fn unregister(s: &mut State, notify: &Arc<Notify>) -> bool {
        let own = Arc::as_ptr(notify);
        let mut had = false;
        s.waiters.retain(|w| {
            if std::ptr::eq(w.notify.as_ptr(), own) {
                had = true;
                false
            } else {
                w.notify.strong_count() > 0
            }
        });
        had
    }

    fn last_cost(s: &State, plugin: &str) -> u64 {
        s.costs.get(plugin).copied().unwrap_or(0)
    }

    /// Registers that the owner of `notify` has due tasks of `plugins` it could not start; it
    /// is notified once a slot one of them may take is freed. Replaces its earlier
    /// registration. If one may be taken already, notifies at once.
    pub fn wait_for(&self, notify: &Arc<Notify>, plugins: Vec<String>) {
        self.register(notify, plugins, true);
    }

    /// [`Self::wait_for`]; `maybe_woken` is false for a first registration, which has no
    /// wake to pass on (thousands of attempts may register at once, and looking for a waiter
    /// to wake walks the whole queue).
    fn register(&self, notify: &Arc<Notify>, plugins: Vec<String>, maybe_woken: bool) {
        let mut s = self.lock();
        let had = Self::unregister(&mut s, notify);
        if plugins
            .iter()
            .any(|p| self.admits(&s, p, Self::last_cost(&s, p)))
        {
            notify.notify_one();
            return;
        }
        s.waiters.push_back(Waiter {
            notify: Arc::downgrade(notify),
            plugins,
        });
        if !had && maybe_woken {
            // It may have been woken for a slot it now cannot use (what it wanted is no
            // longer due, or another took the slot first): the wake goes to a waiter that
            // may take a free slot, if any.
            self.wake_one(&mut s);
        }
    }

    fn release(&self, plugin: &str, mem: u64) {
        let mut s = self.lock();
        s.free += 1;
        s.mem_free += mem;
        if let Some(r) = s.running.get_mut(plugin) {
            r.0 = r.0.saturating_sub(1);
            r.1 = r.1.saturating_sub(mem);
            if r.0 == 0 {
                s.running.remove(plugin);
            }
        }
        self.wake_one(&mut s);
    }

    /// Wakes the live waiter that may take a free slot with the plugin furthest below its
    /// share (lowest running / weight); on a tie, the one waiting longest. Whether a plugin
    /// may take the slot does not depend on who asks, so it is worked out once per plugin,
    /// not once per waiter: an attempt waiting for a run slot is a waiter of its own, and
    /// thousands of them may wait for one plugin. A waiter whose owner went away meanwhile
    /// is passed over for the next.
    fn wake_one(&self, s: &mut State) {
        if s.free == 0 {
            return;
        }
        loop {
            s.waiters.retain(|w| w.notify.strong_count() > 0);
            let Some(i) = self.chosen_waiter(s) else {
                return;
            };
            if let Some(w) = s.waiters.remove(i)
                && let Some(n) = w.notify.upgrade()
            {
                n.notify_one();
                return;
            }
        }
    }

    /// The index of the waiter [`Self::wake_one`] wakes, if any may take a slot now.
    fn chosen_waiter(&self, s: &State) -> Option<usize> {
        // Per plugin asked for: its (running, weight) if it may take the slot, else None.
        let mut asked: Vec<(&str, Option<(u64, u64)>)> = Vec::new();
        let mut best: Option<(u64, u64)> = None;
        for w in &s.waiters {
            for p in &w.plugins {
                if asked.iter().any(|(q, _)| *q == p.as_str()) {
                    continue;
                }
                let fit = self.admits(s, p, Self::last_cost(s, p)).then(|| {
                    let running = s.running.get(p.as_str()).map_or(0, |r| r.0) as u64;
                    (running, u64::from(self.share_of(p).weight.max(1)))
                });
                if let Some((running, weight)) = fit {
                    // running/weight < best_running/best_weight
                    if best.is_none_or(|(br, bw)| running * bw < br * weight) {
                        best = Some((running, weight));
                    }
                }
                asked.push((p.as_str(), fit));
            }
        }
        let (br, bw) = best?;
        let is_best = |p: &String| {
            asked
                .iter()
                .any(|(q, fit)| *q == p.as_str() && fit.is_some_and(|(r, w)| r * bw == br * w))
        };
        s.waiters.iter().position(|w| w.plugins.iter().any(is_best))
    }
}

/// An [`SlotPool::acquire`] in progress; withdraws on drop unless it got its slot.
struct Waiting<'a> {
    pool: &'a SlotPool,
    notify: Arc<Notify>,
    /// Got its slot: it is not registered (a wake removes the waiter it wakes) and has no
    /// wake left to pass on.
    served: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.served {
            self.pool.withdraw(&self.notify);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(total: usize, plugins: &[(&str, PluginShare)]) -> Arc<SlotPool> {
        SlotPool::new(
            total,
            SlotShares {
                reserve: None,
                plugins: plugins
                    .iter()
                    .map(|(n, s)| ((*n).to_string(), *s))
                    .collect(),
                memory_budget_mb: None,
            },
            Arc::new(|_| 0),
        )
    }

    #[test]
    fn memory_is_shared_like_the_slots() {
        // 64 slots but memory for 32 attempts of 64 MiB: one plugin stops at 7/8 of the
        // memory (28) and another still starts.
        let p = SlotPool::new(
            64,
            SlotShares {
                memory_budget_mb: Some(2_048),
                ..SlotShares::default()
            },
            Arc::new(|p| if p == "small" { 8 } else { 64 }),
        );
        let held: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("big")).collect();
        assert_eq!(held.len(), 28);
        let small: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("small")).collect();
        assert_eq!(small.len(), 32, "256 MiB left, 8 each");
        drop(held);
        drop(small);
        assert_eq!(p.available(), 64);
        assert_eq!(p.lock().mem_free, 2_048);
    }

    #[test]
    fn one_plugin_never_takes_the_reserve() {
        let p = pool(16, &[]);
        let held: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("spin")).collect();
        assert_eq!(held.len(), 14, "16 slots, reserve 2");
        assert!(
            p.try_acquire("other").is_some(),
            "another plugin starts at once"
        );
    }

    #[test]
    fn max_concurrency_caps_a_plugin() {
        let p = pool(
            16,
            &[(
                "slow",
                PluginShare {
                    weight: 1,
                    max_concurrency: Some(3),
                },
            )],
        );
        let held: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("slow")).collect();
        assert_eq!(held.len(), 3);
        drop(held);
        assert_eq!(p.available(), 16);
        assert_eq!(p.running("slow"), 0);
    }

    #[tokio::test]
    async fn a_limit_set_while_running_caps_a_plugin_and_raising_it_wakes_a_waiter() {
        let p = pool(16, &[]);
        p.set_limit("slow", Some(3));
        let mut held: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("slow")).collect();
        assert_eq!(held.len(), 3);
        assert!(p.try_acquire("other").is_some(), "others keep their cap");
        // Lowered below what it holds: the slots stay held, no new one is given.
        p.set_limit("slow", Some(1));
        assert!(p.try_acquire("slow").is_none());
        held.pop();
        assert!(p.try_acquire("slow").is_none(), "2 held, limit 1");
        let n = Arc::new(Notify::new());
        p.wait_for(&n, vec!["slow".into()]);
        p.set_limit("slow", Some(5));
        tokio::time::timeout(std::time::Duration::from_secs(1), n.notified())
            .await
            .expect("woken once its limit was raised");
        held.extend(std::iter::from_fn(|| p.try_acquire("slow")));
        assert_eq!(held.len(), 5);
        // Never above the configured cap (16 less the reserve of 2), nor below 1.
        p.set_limit("slow", Some(100));
        held.extend(std::iter::from_fn(|| p.try_acquire("slow")));
        assert_eq!(held.len(), 14);
        drop(held);
        p.set_limit("slow", Some(0));
        assert!(p.try_acquire("slow").is_some());
        p.set_limit("slow", None);
        assert_eq!(p.cap(&p.lock(), "slow"), 14);
        // A first limit holds for the plugins no limit was set for yet.
        p.set_first_limit(Some(2));
        assert_eq!(p.cap(&p.lock(), "new"), 2);
        assert_eq!(p.cap(&p.lock(), "slow"), 14);
        p.set_limit("new", None);
        assert_eq!(p.cap(&p.lock(), "new"), 14);
    }

    #[test]
    fn contended_slots_go_to_the_plugin_below_its_weighted_share() {
        let heavy = PluginShare {
            weight: 3,
            max_concurrency: None,
        };
        let p = pool(8, &[("b", heavy)]);
        // a fills its cap (7), b takes the last slot.
        let mut a: Vec<Slot> = std::iter::from_fn(|| p.try_acquire("a")).collect();
        assert_eq!(a.len(), 7);
        let mut b = vec![p.try_acquire("b").expect("reserve slot")];
        // Both keep wanting slots; each freed slot goes to b until b holds 3/4 of 8.
        let nb = Arc::new(Notify::new());
        p.wait_for(&nb, vec!["b".into()]);
        let na = Arc::new(Notify::new());
        p.wait_for(&na, vec!["a".into()]);
        while let Some(s) = a.pop() {
            drop(s);
            if let Some(s) = p.try_acquire("b") {
                b.push(s);
                p.wait_for(&nb, vec!["b".into()]);
            } else if let Some(s) = p.try_acquire("a") {
                a.insert(0, s);
                break;
            }
        }
        assert_eq!(b.len(), 6, "b's share of 8 at weight 3 of 4");
        assert_eq!(a.len(), 2);
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_a_waiter_that_may_take_it() {
        let p = pool(2, &[]);
        let s1 = p.try_acquire("a").expect("slot");
        assert!(p.try_acquire("a").is_none(), "cap is total - reserve = 1");
        let s2 = p.try_acquire("b").expect("the reserve slot");
        let n = Arc::new(Notify::new());
        p.wait_for(&n, vec!["a".into()]);
        drop(s2);
        // b's slot freed, but a is at its cap: not woken.
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), n.notified()).await;
        assert!(woken.is_err(), "woken for a slot it may not take");
        p.wait_for(&n, vec!["a".into()]);
        drop(s1);
        tokio::time::timeout(std::time::Duration::from_secs(1), n.notified())
            .await
            .expect("woken once a's own slot is freed");
        assert!(p.try_acquire("a").is_some());
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_the_longest_waiter_of_the_plugin_furthest_below_its_share() {
        let woken = |waiters: &[Arc<Notify>]| {
            let waiters = waiters.to_vec();
            async move {
                let mut out = Vec::new();
                for (i, n) in waiters.iter().enumerate() {
                    let wait = std::time::Duration::from_millis(20);
                    if tokio::time::timeout(wait, n.notified()).await.is_ok() {
                        out.push(i);
                    }
                }
                out
            }
        };
        // No reserve, so any plugin below its cap may take a freed slot and the share decides.
        let p = SlotPool::new(
            4,
            SlotShares {
                reserve: Some(0),
                ..SlotShares::default()
            },
            Arc::new(|_| 0),
        );
        // All 4 slots held: a 3, b 1.
        let mut a: Vec<Slot> = (0..3).filter_map(|_| p.try_acquire("a")).collect();
        let mut b: Vec<Slot> = (0..1).filter_map(|_| p.try_acquire("b")).collect();
        assert_eq!((a.len(), b.len(), p.available()), (3, 1, 0));
        let n: Vec<Arc<Notify>> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        p.wait_for(&n[0], vec!["a".into()]);
        p.wait_for(&n[1], vec!["a".into()]);
        p.wait_for(&n[2], vec!["b".into()]);
        // One of a's freed: a (2) and b (1) may both take it; b is further below its share, so
        // b's waiter is woken although it came last.
        drop(a.pop());
        assert_eq!(woken(&n).await, vec![2]);
        b.push(p.try_acquire("b").expect("b's slot"));
        // Another of a's: only a waits now, and its longest waiter is woken.
        drop(a.pop());
        assert_eq!(woken(&n).await, vec![0]);
        a.push(p.try_acquire("a").expect("a's slot"));
        // One of b's: a's other waiter.
        drop(b.pop());
        assert_eq!(woken(&n).await, vec![1]);
        drop((a, b));
    }

    #[tokio::test]
    async fn acquire_waits_until_a_slot_it_may_take_is_freed() {
        let p = pool(2, &[]);
        let a1 = p.try_acquire("a").expect("slot");
        let b1 = p.try_acquire("b").expect("the reserve slot");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("a").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no slot free yet");
        drop(b1);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a is at its cap: b's slot is not for it"
        );
        drop(a1);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken once a's own slot is freed")
            .expect("joined");
        assert_eq!(p.running("a"), 1);
        drop(got);
        assert_eq!(p.running("a"), 0);
    }
    /// Polls `f` once with a waker that does nothing.
    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn an_acquire_dropped_after_its_wake_passes_the_wake_on() {
        let p = pool(2, &[]);
        let held = p.try_acquire("a").expect("slot");
        let _other = p.try_acquire("b").expect("the reserve slot");
        let mut first = Box::pin(p.acquire("a"));
        let mut second = Box::pin(p.acquire("a"));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        // The freed slot's wake goes to the longest waiter, which is then cancelled (its
        // partition revoked) before it runs again.
        drop(held);
        drop(first);
        let std::task::Poll::Ready(slot) = poll_once(second.as_mut()) else {
            panic!("the second waiter was not woken: the freed slot's wake was lost");
        };
        assert_eq!(p.running("a"), 1);
        drop(slot);
    }

    #[test]
    fn a_waiter_that_withdraws_passes_its_wake_on_and_is_not_woken_again() {
        let p = pool(2, &[]);
        let held = p.try_acquire("a").expect("slot");
        let _other = p.try_acquire("b").expect("the reserve slot");
        let n: Vec<Arc<Notify>> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        for w in &n {
            p.wait_for(w, vec!["a".into()]);
        }
        let mut woken: Vec<_> = n.iter().map(|w| Box::pin(w.notified())).collect();
        let mut ready = |i: usize| poll_once(woken[i].as_mut()).is_ready();
        // The first stops waiting before any slot is freed: the freed slot's wake goes to the
        // second, not to it.
        p.withdraw(&n[0]);
        drop(held);
        assert!(!ready(0), "a withdrawn waiter was woken");
        assert!(ready(1), "the next waiter was not woken");
        assert!(!ready(2), "one freed slot woke two waiters");
        // The second was woken but no longer needs the slot: withdrawing hands the wake to
        // the third.
        p.withdraw(&n[1]);
        assert!(ready(2), "the wake the second did not use was lost");
    }

    #[test]
    fn a_waiter_woken_for_a_plugin_it_no_longer_wants_passes_the_wake_on() {
        // 2 slots, reserve 1: each plugin may hold one.
        let p = pool(2, &[]);
        let _a = p.try_acquire("a").expect("a's slot");
        let b = p.try_acquire("b").expect("the reserve slot");
        let (x, y) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        p.wait_for(&x, vec!["b".into()]);
        p.wait_for(&y, vec!["b".into()]);
        let mut woken_x = Box::pin(x.notified());
        let mut woken_y = Box::pin(y.notified());
        drop(b);
        assert!(poll_once(woken_x.as_mut()).is_ready(), "the longest waiter");
        assert!(poll_once(woken_y.as_mut()).is_pending());
        // x's task of b was cancelled meanwhile; it waits for a, which is at its cap, so it
        // cannot use the slot: y must get the wake.
        p.wait_for(&x, vec!["a".into()]);
        assert!(
            poll_once(woken_y.as_mut()).is_ready(),
            "the wake x could not use was lost"
        );
        assert!(p.try_acquire("b").is_some());
    }

    #[test]
    fn a_waiter_not_yet_woken_that_withdraws_wakes_nobody() {
        let p = pool(2, &[]);
        let _a = p.try_acquire("a").expect("a's slot");
        let b = p.try_acquire("b").expect("the reserve slot");
        let n: Vec<Arc<Notify>> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        for w in &n {
            p.wait_for(w, vec!["b".into()]);
        }
        let mut woken: Vec<_> = n.iter().map(|w| Box::pin(w.notified())).collect();
        drop(b);
        // The freed slot's wake went to the first; the second gives up before it was woken
        // (its partition revoked): the third keeps its place without being woken for a slot
        // the first is about to take.
        p.withdraw(&n[1]);
        let ready: Vec<bool> = woken
            .iter_mut()
            .map(|w| poll_once(w.as_mut()).is_ready())
            .collect();
        assert_eq!(ready, [true, false, false]);
    }
}
