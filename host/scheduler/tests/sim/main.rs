//! Deterministic simulation of the whole scheduler: several nodes sharing one store, on
//! simulated time, in one thread. Partitions are assigned and revoked at random (sometimes
//! without the old owner hearing of it), the store fails, delays or loses the answer of any
//! call, attempts succeed, fail, hang or outlive their deadline, nodes crash at any await
//! point and restart, and enqueue, cancel, reschedule, pause, resume and retry arrive
//! throughout. The invariants are checked as it runs (see `oracle.rs`); then the faults stop
//! and every acknowledged task must reach a final state.
//!
//! `KAIROS_SIM_SEEDS=N` runs N seeds (default 500) from `KAIROS_SIM_FIRST_SEED` (default 1),
//! `KAIROS_SIM_SEED=S` one seed, with its trace. A failure prints the seed and the event trace of the offending key.

mod oracle;
mod world;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use kairos_core::clock::Clock;
use kairos_core::mem::MemStore;
use kairos_core::model::{Backoff, Millis, NewTask, TaskState};
use kairos_core::partition::partition_for;
use kairos_core::store::TaskStore;
use kairos_scheduler::metrics::Metrics;
use kairos_scheduler::{PluginShare, Scheduler, SchedulerConfig, SlotShares};
use oracle::Oracle;
use rand::SeedableRng;
use rand::rngs::StdRng;
use world::*;

const NODES: usize = 3;
const PARTITIONS: u32 = 4;
const KEYS: u64 = 10;
/// Plugins of the simulated tasks; each node shares its run slots between them.
const PLUGINS: &[&str] = &["sim-a", "sim-b", "sim-c"];

/// What an attempt of each plugin reserves from a node's memory budget, MiB.
pub fn reservation_mb(plugin: &str) -> u64 {
    match plugin {
        "sim-a" => 10,
        "sim-b" => 30,
        _ => 60,
    }
}
const FAULT_PHASE_MS: u64 = 30_000;
const HEAL_LIMIT_MS: u64 = 180_000;

struct Node {
    scheduler: Option<Arc<Scheduler>>,
    down_until: Option<Millis>,
}

struct Sim {
    seed: u64,
    rng: Rand,
    mem: Arc<MemStore>,
    store: Arc<FaultyStore>,
    faults: Arc<Faults>,
    clock: Arc<dyn Clock>,
    oracle: Arc<Oracle>,
    nodes: Vec<Node>,
    /// Which node this world last gave each partition to.
    owner: Vec<Option<usize>>,
    next_id: u64,
    /// Where the retention scan continues.
    purge_after: Option<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let rng: Rand = Arc::new(std::sync::Mutex::new(StdRng::seed_from_u64(seed)));
        let mem = Arc::new(MemStore::new());
        let faults = Arc::new(Faults::default());
        faults.on.store(true, Relaxed);
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let store = Arc::new(FaultyStore {
            inner: mem.clone(),
            rng: rng.clone(),
            faults: faults.clone(),
            oracle: std::sync::OnceLock::new(),
        });
        let oracle = Arc::new(Oracle::new(mem.clone(), clock.clone()));
        let _ = store.oracle.set(oracle.clone());
        Self {
            seed,
            rng,
            mem,
            store,
            faults,
            clock,
            oracle,
            nodes: (0..NODES)
                .map(|_| Node {
                    scheduler: None,
                    down_until: None,
                })
                .collect(),
            owner: vec![None; PARTITIONS as usize],
            next_id: 0,
            purge_after: None,
        }
    }

    async fn start_node(&mut self, n: usize) {
        let concurrency = 1 + below(&self.rng, 8) as usize;
        // Run slots shared between the plugins with random weights and caps.
        let mut shares = SlotShares {
            reserve: match below(&self.rng, 3) {
                0 => None,
                r => Some(r as usize - 1),
            },
            plugins: Default::default(),
            memory_budget_mb: match below(&self.rng, 2) {
                0 => None,
                _ => Some(60 + below(&self.rng, 200)),
            },
        };
        let mut caps = std::collections::BTreeMap::new();
        for p in PLUGINS {
            let max = match below(&self.rng, 3) {
                0 => None,
                _ => Some(1 + below(&self.rng, concurrency as u64) as usize),
            };
            shares.plugins.insert(
                (*p).to_string(),
                PluginShare {
                    weight: 1 + below(&self.rng, 4) as u32,
                    max_concurrency: max,
                },
            );
            if let Some(m) = max {
                caps.insert((*p).to_string(), m);
            }
        }
        let life = self.oracle.node_started(caps, shares.memory_budget_mb);
        let exec = Arc::new(SimExecutor {
            node: n,
            life,
            oracle: self.oracle.clone(),
            rng: self.rng.clone(),
            faults: self.faults.clone(),
        });
        let cfg = SchedulerConfig {
            window_capacity: 8 + below(&self.rng, 40) as usize,
            horizon_ms: 2_000 + below(&self.rng, 20_000) as Millis,
            concurrency,
            shares,
            takeover_wait_ms: TAKEOVER_WAIT_MS,
            rng_seed: Some(self.seed.wrapping_mul(31).wrapping_add(n as u64)),
            // One claim slot per run slot (the cluster default) up to 32 (the embedded one).
            claim_slots: Some(concurrency * (1 + below(&self.rng, 32) as usize)),
        };
        // Loading the paused keys may fail under faults: the node retries, as a real one would.
        loop {
            match Scheduler::new(
                self.store.clone(),
                exec.clone(),
                self.clock.clone(),
                Arc::new(Metrics::new(PARTITIONS)),
                cfg.clone(),
            )
            .await
            {
                Ok(s) => {
                    self.nodes[n].scheduler = Some(s);
                    self.nodes[n].down_until = None;
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn alive(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|n| self.nodes[*n].scheduler.is_some())
            .collect()
    }

    fn pick<T: Copy>(&self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[below(&self.rng, v.len() as u64) as usize])
    }

    /// Gives `p` to node `to`: the old owner is revoked first, or (sometimes) never told,
    /// as when it is cut off; the new owner takes a new lease either way.
    async fn move_partition(&mut self, p: u32, to: usize) {
        let graceful = roll(&self.rng, 0.8);
        if let Some(from) = self.owner[p as usize]
            && graceful
            && let Some(s) = self.nodes[from].scheduler.clone()
        {
            let grace = Duration::from_millis(below(&self.rng, 4_000));
            s.revoke(p, grace).await;
        }
        let Some(s) = self.nodes[to].scheduler.clone() else {
            return;
        };
        let node = format!("node-{to}");
        let lease = loop {
            match self.store.acquire_lease(p, &node).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.oracle
            .event("*", format!("partition {p} -> node {to} ({lease})"));
        s.assign(lease).await;
        self.owner[p as usize] = Some(to);
    }

    fn crash(&mut self, n: usize) {
        if let Some(s) = self.nodes[n].scheduler.take() {
            s.crash();
            self.oracle.crashed(n);
            self.oracle.event("*", format!("node {n} crashed"));
            self.nodes[n].down_until =
                Some(self.clock.now() + 500 + below(&self.rng, 5_000) as Millis);
            for o in self.owner.iter_mut() {
                if *o == Some(n) {
                    *o = None;
                }
            }
        }
    }

    fn scheduler_of(&self, p: u32) -> Option<Arc<Scheduler>> {
        self.owner[p as usize].and_then(|n| self.nodes[n].scheduler.clone())
    }

    async fn enqueue(&mut self) {
        let now = self.clock.now();
        let mut batch = Vec::new();
        for _ in 0..1 + below(&self.rng, 4) {
            self.next_id += 1;
            let key = format!("k{}", below(&self.rng, KEYS));
            batch.push(NewTask {
                id: format!("t{:05}", self.next_id),
                partition: partition_for(&key, PARTITIONS),
                plugin: PLUGINS[below(&self.rng, PLUGINS.len() as u64) as usize].into(),
                pin_version: None,
                key,
                due_at: now + below(&self.rng, 5_000) as Millis,
                payload: "{}".into(),
                uniqueness_key: None,
                max_attempts: 1 + below(&self.rng, 5) as u32,
                backoff: Backoff {
                    initial_ms: 100,
                    max_ms: 2_000,
                },
                park_on_dead: roll(&self.rng, 0.1),
                generation: 0,
                created_at: now,
            });
        }
        // The client (an API node, a Kafka partition worker) retries the same records until
        // the store answers; then hands every pending outcome to the partition's owner.
        let out = loop {
            match self.store.enqueue(batch.clone()).await {
                Ok(out) => break out,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let tasks: Vec<_> = out.iter().map(|o| o.task().clone()).collect();
        for t in &tasks {
            self.oracle.acked(t);
        }
        for p in 0..PARTITIONS {
            let mine: Vec<_> = tasks.iter().filter(|t| t.partition == p).cloned().collect();
            if !mine.is_empty()
                && let Some(s) = self.scheduler_of(p)
            {
                s.deliver(mine).await;
            }
        }
    }

    /// A random task of the store (for operations).
    fn some_task(&self, state: Option<TaskState>) -> Option<kairos_core::model::Task> {
        let all: Vec<_> = self
            .mem
            .all_tasks()
            .into_iter()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .collect();
        self.pick(&(0..all.len()).collect::<Vec<_>>())
            .map(|i| all[i].clone())
    }

    async fn operate(&mut self) {
        let now = self.clock.now();
        match below(&self.rng, 6) {
            0 => {
                if let Some(t) = self.some_task(None)
                    && let Some(s) = self.scheduler_of(t.partition)
                    && let Ok(c) = s.cancel(&t.id).await
                {
                    self.oracle.cancelled(&c);
                }
            }
            1 => {
                if let Some(t) = self.some_task(None)
                    && let Some(s) = self.scheduler_of(t.partition)
                {
                    // Strictly after now: a moved task never overtakes one already claimed.
                    let to = now + 1 + below(&self.rng, 3_000) as Millis;
                    if s.reschedule(&t.id, to).await.is_ok() {
                        self.oracle
                            .event(&t.key, format!("{} rescheduled to {to}", t.id));
                    }
                }
            }
            2 => {
                if let Some(t) = self.some_task(Some(TaskState::Dead))
                    && let Some(s) = self.scheduler_of(t.partition)
                {
                    // The store tells the oracle when it applies it.
                    let _ = s.retry_dead(&t.id, 2).await;
                }
            }
            5 => {
                // Retention, under faults like everything else: it may delete only what
                // the scheduler is done with (the oracle checks every start against the store).
                let before = now - below(&self.rng, 5_000) as Millis;
                let scan = 1 + below(&self.rng, 20) as usize;
                match self
                    .store
                    .purge_finished(before, self.purge_after.as_deref(), scan)
                    .await
                {
                    Ok(p) => {
                        if p.deleted > 0 {
                            self.oracle
                                .event("*", format!("retention deleted {} tasks", p.deleted));
                        }
                        self.purge_after = p.next;
                    }
                    Err(e) => self.oracle.event("*", format!("retention failed: {e}")),
                }
            }
            k => {
                let key = format!("k{}", below(&self.rng, KEYS));
                let p = partition_for(&key, PARTITIONS);
                if let Some(s) = self.scheduler_of(p) {
                    let r = if k == 3 {
                        s.pause_key(&key, p).await.map(|_| 0)
                    } else {
                        s.resume_key(&key, p).await
                    };
                    self.oracle
                        .event(&key, format!("pause={} -> {:?}", k == 3, r.is_ok()));
                }
            }
        }
    }

    async fn fault_phase(&mut self) {
        for n in 0..NODES {
            self.start_node(n).await;
        }
        for p in 0..PARTITIONS {
            self.move_partition(p, p as usize % NODES).await;
        }
        let end = self.clock.now() + FAULT_PHASE_MS as Millis;
        while self.clock.now() < end {
            tokio::time::sleep(Duration::from_millis(10 + below(&self.rng, 150))).await;
            let now = self.clock.now();
            for n in 0..NODES {
                if self.nodes[n].down_until.is_some_and(|t| now >= t) {
                    self.start_node(n).await;
                    self.oracle.event("*", format!("node {n} restarted"));
                }
            }
            match below(&self.rng, 100) {
                0..=49 => self.enqueue().await,
                50..=79 => self.operate().await,
                80..=93 => {
                    let p = below(&self.rng, PARTITIONS as u64) as u32;
                    if let Some(to) = self.pick(&self.alive()) {
                        self.move_partition(p, to).await;
                    }
                }
                94..=96 => {
                    if self.alive().len() > 1
                        && let Some(n) = self.pick(&self.alive())
                    {
                        self.crash(n);
                    }
                }
                _ => {
                    // An orphaned partition (its node crashed) goes to a live node.
                    let orphans: Vec<u32> = (0..PARTITIONS)
                        .filter(|p| self.owner[*p as usize].is_none())
                        .collect();
                    if let (Some(p), Some(to)) = (self.pick(&orphans), self.pick(&self.alive())) {
                        self.move_partition(p, to).await;
                    }
                }
            }
        }
    }

    /// Faults stop: every node is back, every partition owned, every key resumed. Then every
    /// acknowledged task must finish.
    async fn heal(&mut self) -> Vec<kairos_core::model::Task> {
        self.faults.on.store(false, Relaxed);
        self.oracle.event("*", "faults stop".into());
        for n in 0..NODES {
            if self.nodes[n].scheduler.is_none() {
                self.start_node(n).await;
            }
        }
        for p in 0..PARTITIONS {
            // A fresh lease everywhere (a partition whose owner was fenced stopped itself).
            self.move_partition(p, p as usize % NODES).await;
        }
        let limit = self.clock.now() + HEAL_LIMIT_MS as Millis;
        let mut rounds = 0u32;
        loop {
            // An operator resumes every key now and then: a task that dies parking its key
            // (also one whose interrupted last attempt is found on takeover) waits for that.
            if rounds.is_multiple_of(10) {
                for k in 0..KEYS {
                    let key = format!("k{k}");
                    let p = partition_for(&key, PARTITIONS);
                    if let Some(s) = self.scheduler_of(p) {
                        let _ = s.resume_key(&key, p).await;
                    }
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let left = self.oracle.unfinished();
            if left.is_empty() || self.clock.now() >= limit {
                return left;
            }
        }
    }
}

struct Outcome {
    violations: Vec<String>,
    digest: String,
    report: String,
}

fn run_seed(seed: u64) -> Outcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("building the simulation runtime: {e}"),
    };
    rt.block_on(async {
        let mut sim = Sim::new(seed);
        sim.fault_phase().await;
        let left = sim.heal().await;
        sim.oracle.report_unfinished(&left);
        for n in sim.nodes.iter_mut() {
            if let Some(s) = n.scheduler.take() {
                s.crash();
            }
        }
        let violations = sim.oracle.violations();
        let mut report = String::new();
        if let Some(first) = violations.first() {
            let key = first
                .strip_prefix("key ")
                .and_then(|r| r.split(':').next())
                .unwrap_or("*");
            report = format!(
                "seed {seed}: {} violation(s); first: {first}\ntrace of key {key} (replay: KAIROS_SIM_SEED={seed}):\n{}\nownership events:\n{}",
                violations.len(),
                sim.oracle.trace_of(key),
                sim.oracle.trace_of("*"),
            );
        }
        Outcome {
            violations,
            digest: sim.oracle.trace_digest(),
            report,
        }
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn seeds_keep_order_exclusion_and_liveness() {
    let seeds: Vec<u64> = match env_u64("KAIROS_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("KAIROS_SIM_FIRST_SEED").unwrap_or(1);
            let n = env_u64("KAIROS_SIM_SEEDS").unwrap_or(500);
            (first..first + n).collect()
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|i| seeds.iter().copied().skip(i).step_by(threads).collect())
        .collect();
    let started = std::time::Instant::now();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(run_seed)
                        .filter(|o| !o.violations.is_empty())
                        .map(|o| o.report)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a simulation thread panicked".into()])
            })
            .collect()
    });
    eprintln!(
        "simulation: {} seed(s) in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(42);
    let b = run_seed(42);
    assert_eq!(a.digest, b.digest, "two runs of seed 42 diverged");
}
