//! Scheduler behaviour on a manual clock, with the embedded store and a scripted executor.
//! Time only moves when a test advances it, so every timing assertion is deterministic.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kairos::config::TaskDefaults;
use kairos::cron::CronService;
use kairos::enqueue::{EnqueueRequest, Enqueuer, LocalIntake, PluginCatalog};
use kairos::metrics::Metrics;
use kairos::scheduler::{
    ExecOutcome, ExecResult, Executor, OpError, PluginShare, Scheduler, SchedulerConfig, SlotShares,
};
use kairos_core::clock::{Clock, ManualClock};
use kairos_core::model::{Millis, Schedule, Task, TaskState};
use kairos_core::store::TaskStore;
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const PARTITIONS: u32 = 4;

/// Executes by script: payload `{"fail": n}` fails the first n attempts (retryable),
/// `{"permanent": true}` fails permanently, `{"block": true}` waits for `release`.
struct Scripted {
    clock: ManualClock,
    ran: Mutex<Vec<(String, u32, Millis)>>,
    gate: Semaphore,
    /// Attempts waiting at the gate now.
    blocked: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Executor for Scripted {
    async fn execute(&self, task: &Task, attempt: u32) -> ExecOutcome {
        let p: serde_json::Value = serde_json::from_str(&task.payload).unwrap_or_default();
        if p["block"] == true {
            use std::sync::atomic::Ordering::SeqCst;
            self.blocked.fetch_add(1, SeqCst);
            let _ = self.gate.acquire().await.map(|g| g.forget());
            self.blocked.fetch_sub(1, SeqCst);
        }
        if let Ok(mut ran) = self.ran.lock() {
            ran.push((
                p["name"].as_str().unwrap_or(&task.id).to_string(),
                attempt,
                self.clock.now(),
            ));
        }
        let result = if p["permanent"] == true {
            ExecResult::Permanent {
                error: "scripted permanent failure".into(),
            }
        } else if u64::from(attempt) <= p["fail"].as_u64().unwrap_or(0) {
            ExecResult::Retry {
                error: format!("scripted failure {attempt}"),
                retry_after_ms: None,
            }
        } else {
            ExecResult::Success {
                output: Some(format!("done {attempt}")),
            }
        };
        // Failed attempts leave a log line; successful ones none.
        let logs = match &result {
            ExecResult::Success { .. } => None,
            _ => Some(format!("INFO scripted attempt {attempt} failed")),
        };
        ExecOutcome {
            result,
            digest: None,
            logs,
        }
    }
}

struct AnyPlugin;
impl PluginCatalog for AnyPlugin {
    fn check(&self, plugin: &str, _: Option<&str>) -> Result<(), String> {
        if ["p", "busy", "other"].contains(&plugin) {
            Ok(())
        } else {
            Err(format!("unknown plugin `{plugin}`"))
        }
    }
}

struct Harness {
    clock: ManualClock,
    exec: Arc<Scripted>,
    store: Arc<dyn TaskStore>,
    scheduler: Arc<Scheduler>,
    enqueuer: Arc<Enqueuer>,
}

async fn harness(dir: &Path, clock: ManualClock, cfg: SchedulerConfig) -> Harness {
    harness_with(dir, clock, cfg).await
}

async fn harness_with(dir: &Path, clock: ManualClock, cfg: SchedulerConfig) -> Harness {
    let store: Arc<dyn TaskStore> = Arc::new(
        EmbeddedStore::open(&dir.join("store"), EmbeddedOptions::default()).expect("open store"),
    );
    let exec = Arc::new(Scripted {
        clock: clock.clone(),
        ran: Mutex::new(Vec::new()),
        gate: Semaphore::new(0),
        blocked: Default::default(),
    });
    let metrics = Arc::new(Metrics::new(PARTITIONS));
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let scheduler = Scheduler::new(
        store.clone(),
        exec.clone(),
        clock_dyn.clone(),
        metrics.clone(),
        cfg,
    )
    .await
    .expect("scheduler");
    for p in 0..PARTITIONS {
        let lease = store.acquire_lease(p, "test").await.expect("lease");
        scheduler.assign(lease).await;
    }
    let defaults = TaskDefaults {
        backoff_initial_ms: 1_000,
        backoff_max_ms: 8_000,
        ..TaskDefaults::default()
    };
    let enqueuer = Arc::new(Enqueuer {
        intake: Arc::new(LocalIntake {
            store: store.clone(),
            scheduler: scheduler.clone(),
        }),
        catalog: Arc::new(AnyPlugin),
        clock: clock_dyn,
        defaults,
        partitions: PARTITIONS,
        ids: kairos_core::ids::TaskIds::Plain,
        metrics,
    });
    Harness {
        clock,
        exec,
        store,
        scheduler,
        enqueuer,
    }
}

impl Harness {
    async fn add(&self, key: &str, at: Millis, payload: serde_json::Value) -> String {
        self.add_with(json!({ "plugin": "p", "key": key, "delay_ms": at - self.clock.now(), "payload": payload }))
            .await
    }

    async fn add_with(&self, req: serde_json::Value) -> String {
        let req: EnqueueRequest = serde_json::from_value(req).expect("request");
        let t = self.enqueuer.build(req, self.clock.now()).expect("valid");
        let out = self.enqueuer.submit(vec![t]).await.expect("durable");
        out[0].task().id.clone()
    }

    fn ran(&self) -> Vec<(String, u32, Millis)> {
        self.exec.ran.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn names(&self) -> Vec<String> {
        self.ran().into_iter().map(|r| r.0).collect()
    }

    /// The lease under which this harness's scheduler holds the task's partition.
    async fn lease_of(&self, id: &str) -> kairos_core::ownership::Lease {
        let p = self.state(id).await.partition;
        self.scheduler.lease_of(p).await.expect("partition held")
    }

    async fn state(&self, id: &str) -> Task {
        self.store.get(id).await.expect("get").expect("exists").task
    }

    /// Waits (real time) until `cond` holds, or fails with what was run.
    /// 30 s: generous for a loaded machine running a debug build; nothing waits it out when
    /// the test passes.
    async fn until(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        for _ in 0..3000 {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}; ran so far: {:?}", self.ran());
    }

    async fn until_state(&self, id: &str, state: TaskState) {
        for _ in 0..3000 {
            if self.state(id).await.state == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "task {id} never reached {state:?}: {:?}; ran {:?}",
            self.state(id).await,
            self.ran()
        );
    }

    /// Lets the actors settle so that "nothing more ran" assertions mean something.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn named(name: &str) -> serde_json::Value {
    json!({ "name": name })
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_each_key_in_due_then_enqueue_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    h.add("a", T0 + 30, named("a3")).await;
    h.add("a", T0 + 10, named("a1")).await;
    h.add("a", T0 + 20, named("a2-first")).await;
    h.add("a", T0 + 20, named("a2-second")).await;
    h.add("b", T0 + 10, named("b1")).await;
    h.settle().await;
    assert!(h.ran().is_empty(), "nothing is due yet");
    h.clock.advance(100);
    h.until("all five", |h| h.ran().len() == 5).await;
    let a: Vec<String> = h
        .names()
        .into_iter()
        .filter(|n| n.starts_with('a'))
        .collect();
    assert_eq!(a, ["a1", "a2-first", "a2-second", "a3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retrying_task_holds_only_its_own_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    let a1 = h.add("a", T0, json!({ "name": "a1", "fail": 2 })).await;
    h.add("a", T0 + 1, named("a2")).await;
    h.add("b", T0 + 1, named("b1")).await;
    h.clock.advance(1);
    h.until_state(&a1, TaskState::Retrying).await;
    h.until("b1 runs while a1 retries", |h| {
        h.names().contains(&"b1".to_string())
    })
    .await;
    h.settle().await;
    assert!(
        !h.names().contains(&"a2".to_string()),
        "a2 must wait behind a1: {:?}",
        h.ran()
    );
    // The first retry waits 0.5–1 s; then 1–2 s.
    h.clock.advance(1_000);
    h.until("a1 attempt 2", |h| {
        h.ran().iter().any(|r| r.0 == "a1" && r.1 == 2)
    })
    .await;
    // Advance only once attempt 2's end is stored: its retry time counts from that end.
    let mut t = h.state(&a1).await;
    for _ in 0..3000 {
        if t.attempts == 2 && t.state == TaskState::Retrying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        t = h.state(&a1).await;
    }
    assert_eq!(
        (t.attempts, t.state),
        (2, TaskState::Retrying),
        "attempt 2's end stored"
    );
    h.clock.advance(2_000);
    h.until("a2 after a1 succeeded", |h| {
        h.names().contains(&"a2".to_string())
    })
    .await;
    let t = h.state(&a1).await;
    assert_eq!((t.state, t.attempts), (TaskState::Succeeded, 3));
    let rec = h.store.get(&a1).await.expect("get").expect("exists");
    assert_eq!(
        rec.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Each attempt keeps what its run logged.
    assert_eq!(
        rec.attempts
            .iter()
            .map(|a| a.logs.as_deref())
            .collect::<Vec<_>>(),
        [
            Some("INFO scripted attempt 1 failed"),
            Some("INFO scripted attempt 2 failed"),
            None
        ]
    );
    let names = h.names();
    let pos = |n: &str| names.iter().rposition(|x| x == n);
    assert!(pos("a1") < pos("a2"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_after_max_attempts_then_the_key_moves_on_unless_parked() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    let a1 = h
        .add_with(json!({ "plugin": "p", "key": "a", "max_attempts": 2, "payload": { "name": "a1", "fail": 99 } }))
        .await;
    h.add("a", T0 + 1, named("a2")).await;
    let c1 = h
        .add_with(json!({ "plugin": "p", "key": "c", "park_on_dead": true, "payload": { "name": "c1", "permanent": true } }))
        .await;
    h.add("c", T0 + 1, named("c2")).await;
    h.clock.advance(1);
    h.until_state(&c1, TaskState::Dead).await;
    // a1's first failure must be stored before time moves: its retry counts from its end.
    h.until_state(&a1, TaskState::Retrying).await;
    h.clock.advance(1_000);
    h.until_state(&a1, TaskState::Dead).await;
    h.until("a2 after a1 died", |h| {
        h.names().contains(&"a2".to_string())
    })
    .await;
    let dead = h.state(&a1).await;
    assert_eq!(dead.attempts, 2);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 2"),
        "{dead:?}"
    );
    h.clock.advance(10_000);
    h.settle().await;
    assert!(
        !h.names().contains(&"c2".to_string()),
        "c is parked by its dead task"
    );
    let released = h
        .scheduler
        .resume_key("c", kairos_core::partition::partition_for("c", PARTITIONS))
        .await
        .expect("resume");
    assert_eq!(released, 1);
    h.until("c2 after the operator resumed c", |h| {
        h.names().contains(&"c2".to_string())
    })
    .await;
    // An operator retry runs the dead task again.
    h.scheduler.retry_dead(&a1, 1).await.expect("retry dead");
    h.until("a1 retried by operator", |h| {
        h.ran().iter().any(|r| r.0 == "a1" && r.1 == 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reschedule_dedup_and_pause() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    let cancelled = h.add("a", T0 + 100, named("cancelled")).await;
    let moved = h.add("b", T0 + 100, named("moved")).await;
    let first = h
        .add_with(
            json!({ "plugin": "p", "key": "d", "uniqueness_key": "u1", "payload": named("dedup") }),
        )
        .await;
    let again = h
        .add_with(
            json!({ "plugin": "p", "key": "d", "uniqueness_key": "u1", "payload": named("dup") }),
        )
        .await;
    assert_eq!(first, again, "same uniqueness key yields the same task");
    let pa = kairos_core::partition::partition_for("p", PARTITIONS);
    h.scheduler.pause_key("p", pa).await.expect("pause");
    h.add("p", T0, named("paused")).await;
    h.scheduler.cancel(&cancelled).await.expect("cancel");
    assert_eq!(h.state(&cancelled).await.state, TaskState::Cancelled);
    h.scheduler
        .reschedule(&moved, T0 + 5_000)
        .await
        .expect("reschedule");
    h.clock.advance(1_000);
    h.until("dedup ran", |h| h.names().contains(&"dedup".to_string()))
        .await;
    h.settle().await;
    let names = h.names();
    assert!(
        !names.contains(&"cancelled".to_string()) && !names.contains(&"moved".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"dup".to_string()) && !names.contains(&"paused".to_string()),
        "{names:?}"
    );
    h.clock.advance(5_000);
    h.until("moved runs at its new time", |h| {
        h.names().contains(&"moved".to_string())
    })
    .await;
    h.scheduler.resume_key("p", pa).await.expect("resume");
    h.until("paused key resumed", |h| {
        h.names().contains(&"paused".to_string())
    })
    .await;
    // Cancelling what already finished is a conflict.
    assert!(matches!(
        h.scheduler.cancel(&moved).await,
        Err(OpError::Conflict(_))
    ));
    assert!(matches!(
        h.scheduler.cancel("no-such-task").await,
        Err(OpError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_cannot_be_cancelled() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    let id = h
        .add("a", T0, json!({ "name": "slow", "block": true }))
        .await;
    h.until_state(&id, TaskState::Running).await;
    match h.scheduler.cancel(&id).await {
        Err(OpError::Conflict(m)) => assert!(m.contains("running"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    h.exec.gate.add_permits(1);
    h.until_state(&id, TaskState::Succeeded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_every_incomplete_task_runs_however_overdue() {
    let dir = tempfile::tempdir().expect("tmp");
    let (interrupted, overdue, later);
    {
        let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
        overdue = h.add("a", T0 + 10, named("overdue")).await;
        later = h.add("b", T0 + 30 * 86_400_000, named("later")).await;
        interrupted = h.add("c", T0 + 20, named("interrupted")).await;
        // Simulate a crash mid-attempt: the start is recorded, the end never is.
        h.store
            .start_attempt(&h.lease_of(&interrupted).await, &interrupted, 1, T0 + 20)
            .await
            .expect("start");
        assert!(h.scheduler.shutdown(Duration::from_secs(5)).await);
    }
    // Three days later.
    let h = harness(
        dir.path(),
        ManualClock::new(T0 + 3 * 86_400_000),
        SchedulerConfig::default(),
    )
    .await;
    h.until_state(&overdue, TaskState::Succeeded).await;
    // The interrupted one waits out the takeover wait from the restart (its previous holder
    // could be a live node that lost the store meanwhile; see the takeover tests below).
    h.clock.advance(SchedulerConfig::default().takeover_wait_ms);
    h.until_state(&interrupted, TaskState::Succeeded).await;
    assert_eq!(
        h.state(&interrupted).await.attempts,
        2,
        "the interrupted attempt counts"
    );
    h.settle().await;
    assert_eq!(h.state(&later).await.state, TaskState::Scheduled);
}

/// A task found `running` when a node takes its partition over was
/// started by an owner that died or was cut off mid-attempt. It runs again only once that
/// attempt's timeout has passed, so it never runs on two nodes at once; its key waits with
/// it, other keys do not.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_found_running_on_takeover_waits_out_the_attempt_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, next, other) = left_in_flight(dir.path()).await;
    let h = harness_with(dir.path(), ManualClock::new(T0 + 1_000), takeover_5s()).await;
    h.until_state(&other, TaskState::Succeeded).await;
    h.clock.advance(3_000);
    h.settle().await;
    assert_eq!(
        h.names(),
        vec!["other"],
        "the in-doubt task and its key wait"
    );
    // The wait counts from the later of the start (T0 + 10) and the takeover (T0 + 1_000).
    h.clock.set(T0 + 1_000 + 5_000);
    h.until_state(&next, TaskState::Succeeded).await;
    let ran = h.ran();
    let order: Vec<&str> = ran.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(order, vec!["other", "in-flight", "next-of-a"]);
    assert_eq!(ran[1].1, 2, "the in-doubt attempt counts");
    assert!(ran[1].2 >= T0 + 1_000 + 5_000, "ran at {}", ran[1].2);
}

/// A task found running whose start is long past (its node could not record the end while
/// the store was down, say) still waits `takeover_wait_ms` after the partition was taken:
/// that is the previous holder's time to record the end, now that the store answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_also_waits_from_when_the_partition_was_taken() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, next, other) = left_in_flight(dir.path()).await;
    // Taken a minute after that start: counted from the start alone, the wait is long over.
    let taken = T0 + 60_000;
    let h = harness_with(dir.path(), ManualClock::new(taken), takeover_5s()).await;
    h.until_state(&other, TaskState::Succeeded).await;
    h.clock.advance(4_000);
    h.settle().await;
    assert_eq!(h.names(), vec!["other"], "ran before the wait");
    h.clock.set(taken + 5_000);
    h.until_state(&next, TaskState::Succeeded).await;
    let ran = h.ran();
    assert_eq!(ran[1].0, "in-flight");
    assert!(ran[1].2 >= taken + 5_000, "ran at {}", ran[1].2);
}

/// Tasks `in-flight` (started at T0 + 10 by an owner never heard of again) and `next-of-a`
/// on key `a`, and `other` on key `b`, in a store whose scheduler has stopped.
async fn left_in_flight(dir: &Path) -> (String, String, String) {
    let h = harness(dir, ManualClock::new(T0), SchedulerConfig::default()).await;
    let in_flight = h.add("a", T0 + 10, named("in-flight")).await;
    let next = h.add("a", T0 + 20, named("next-of-a")).await;
    let other = h.add("b", T0 + 20, named("other")).await;
    h.store
        .start_attempt(&h.lease_of(&in_flight).await, &in_flight, 1, T0 + 10)
        .await
        .expect("start");
    assert!(h.scheduler.shutdown(Duration::from_secs(5)).await);
    (in_flight, next, other)
}

fn takeover_5s() -> SchedulerConfig {
    SchedulerConfig {
        takeover_wait_ms: 5_000,
        ..SchedulerConfig::default()
    }
}

/// A key paused through a partition's previous owner (written to the store while this node
/// did not own the partition) stays paused when the partition comes to this node.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_paused_elsewhere_stays_paused_when_its_partition_arrives() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = harness(dir.path(), ManualClock::new(T0), SchedulerConfig::default()).await;
    let p = kairos_core::partition::partition_for("moved", PARTITIONS);
    assert!(h.scheduler.revoke(p, Duration::from_secs(5)).await);
    h.store.set_key_paused("moved", true).await.expect("pause");
    let lease = h.store.acquire_lease(p, "test").await.expect("lease");
    h.scheduler.assign(lease).await;
    let held = h.add("moved", T0 + 10, named("held")).await;
    h.add("other", T0 + 10, named("other")).await;
    h.clock.advance(100);
    h.until("the other key", |h| h.names() == vec!["other"])
        .await;
    h.settle().await;
    assert_eq!(h.names(), vec!["other"], "the paused key's task waits");
    h.scheduler.resume_key("moved", p).await.expect("resume");
    h.until_state(&held, TaskState::Succeeded).await;
}

/// 20 attempts of one plugin that never end, enqueued first, then 5 of another plugin:
/// `expected_busy` of the first hold slots and the other plugin's all run.
async fn a_busy_plugin_leaves_slots_for_another(shares: SlotShares, expected_busy: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = SchedulerConfig {
        concurrency: 8,
        shares,
        ..SchedulerConfig::default()
    };
    let h = harness(dir.path(), ManualClock::new(T0), cfg).await;
    for i in 0..20 {
        h.add_with(
            json!({ "plugin": "busy", "key": format!("b{i}"), "payload": { "block": true } }),
        )
        .await;
    }
    h.until("the busy plugin to fill its slots", |h| {
        h.exec.blocked.load(std::sync::atomic::Ordering::SeqCst) >= expected_busy
    })
    .await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(
            h.add_with(json!({ "plugin": "other", "key": format!("o{i}"), "payload": named(&format!("o{i}")) }))
                .await,
        );
    }
    for id in &others {
        h.until_state(id, TaskState::Succeeded).await;
    }
    h.settle().await;
    assert_eq!(
        h.exec.blocked.load(std::sync::atomic::Ordering::SeqCst),
        expected_busy,
        "attempts of the busy plugin holding slots"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_never_finishes_leaves_the_reserved_slot_to_others() {
    // 8 slots, an eighth reserved: the busy plugin holds 7.
    a_busy_plugin_leaves_slots_for_another(SlotShares::default(), 7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_caps_a_plugin() {
    let mut shares = SlotShares::default();
    shares.plugins.insert(
        "busy".into(),
        PluginShare {
            weight: 1,
            max_concurrency: Some(3),
        },
    );
    a_busy_plugin_leaves_slots_for_another(shares, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_window_still_runs_everything_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = SchedulerConfig {
        window_capacity: 8,
        horizon_ms: 60_000,
        concurrency: 4,
        ..SchedulerConfig::default()
    };
    let h = harness(dir.path(), ManualClock::new(T0), cfg).await;
    let n = 300;
    for i in 0..n {
        h.add(
            &format!("k{}", i % 7),
            T0 + (i as i64 % 50),
            json!({ "name": format!("t{i:03}") }),
        )
        .await;
    }
    h.clock.advance(100);
    h.until("all tasks", |h| h.ran().len() == n).await;
    // Per key, execution order is (due, enqueue) order.
    for k in 0..7 {
        let got: Vec<String> = h
            .names()
            .into_iter()
            .filter(|t| t[1..].parse::<usize>().is_ok_and(|i| i % 7 == k))
            .collect();
        let mut want = got.clone();
        want.sort_by_key(|t| {
            let i: usize = t[1..].parse().unwrap_or(0);
            (i % 50, i)
        });
        assert_eq!(got, want, "key k{k}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_occurrences_are_neither_doubled_nor_skipped_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = ManualClock::new(T0 + 30_000);
    let h = harness(dir.path(), clock.clone(), SchedulerConfig::default()).await;
    h.store
        .put_schedule(Schedule {
            name: "every-minute".into(),
            cron: "* * * * *".into(),
            plugin: "p".into(),
            key: "cron".into(),
            payload: "{}".into(),
            timezone: None,
            last_fired: None,
            created_at: T0 + 30_000,
        })
        .await
        .expect("schedule");
    let cron = |h: &Harness| CronService {
        store: h.store.clone(),
        enqueuer: h.enqueuer.clone(),
        clock: Arc::new(h.clock.clone()),
        changed: Arc::new(Notify::new()),
    };
    // 00:00:30 → nothing within the lookahead; 00:00:55 → 00:01:00 materialises.
    cron(&h).tick().await;
    clock.set(T0 + 55_000);
    cron(&h).tick().await;
    cron(&h).tick().await;
    assert!(h.scheduler.shutdown(Duration::from_secs(5)).await);
    drop(h);
    // "Restart" 3 minutes later: 00:02, 00:03 and (lookahead) 00:04 come, once each.
    clock.set(T0 + 235_000);
    let h = harness(dir.path(), clock.clone(), SchedulerConfig::default()).await;
    cron(&h).tick().await;
    cron(&h).tick().await;
    let tasks = h
        .store
        .list(&kairos_core::model::ListFilter {
            key: Some("cron".into()),
            state: None,
            limit: 100,
            after: None,
        })
        .await
        .expect("list");
    let dues: Vec<Millis> = tasks.iter().map(|t| (t.due_at - T0) / 60_000).collect();
    assert_eq!(dues, [1, 2, 3, 4], "one task per occurrence");
}

/// Attempts whose start is recorded but that still wait for a run slot when their partition
/// is revoked do not run there: their starts are given back, so the next owner runs them at
/// once as the same attempts (no takeover wait, no attempt used). So the drain waits only for
/// the attempts running, however many claim slots there are (cluster nodes have eight per run
/// slot).
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_gives_back_the_starts_of_attempts_waiting_for_a_run_slot() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = SchedulerConfig {
        concurrency: 1,
        claim_slots: Some(8),
        ..SchedulerConfig::default()
    };
    let h = harness(dir.path(), ManualClock::new(T0), cfg).await;
    // Three keys of one partition.
    let p = kairos_core::partition::partition_for("k0", PARTITIONS);
    let keys: Vec<String> = (0..100)
        .map(|i| format!("k{i}"))
        .filter(|k| kairos_core::partition::partition_for(k, PARTITIONS) == p)
        .take(3)
        .collect();
    assert_eq!(keys.len(), 3);
    // One quick attempt first: the plugin's pace is known, so it may be claimed further ahead
    // than one claim per run slot.
    let quick = h.add(&keys[0], T0, named("quick")).await;
    h.until_state(&quick, TaskState::Succeeded).await;
    let slow = h
        .add(&keys[0], T0, json!({ "name": "slow", "block": true }))
        .await;
    // The slow attempt takes the one run slot before the others exist (enqueued together, any
    // of the three could win the slot once its start is recorded).
    h.until("the slow attempt runs", |h| {
        h.exec.blocked.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let waiting = [
        h.add(&keys[1], T0, named("waiting-1")).await,
        h.add(&keys[2], T0, named("waiting-2")).await,
    ];
    // The other two are claimed (their starts recorded) and wait for the one run slot.
    for id in &waiting {
        h.until_state(id, TaskState::Running).await;
    }
    let scheduler = h.scheduler.clone();
    let revoked = tokio::spawn(async move { scheduler.revoke(p, Duration::from_secs(5)).await });
    // The revoke has begun (the waiting attempts are told to give up) before the slot frees.
    for _ in 0..3000 {
        if !h.scheduler.owns(p).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!h.scheduler.owns(p).await, "the revoke began");
    h.settle().await;
    h.exec.gate.add_permits(1);
    assert!(revoked.await.expect("revoke"), "drained within the grace");
    h.until_state(&slow, TaskState::Succeeded).await;
    h.settle().await;
    assert_eq!(
        h.names(),
        vec!["quick", "slow"],
        "the waiting attempts did not run"
    );
    // Their starts were given back: scheduled again, no attempt used.
    for id in &waiting {
        let t = h.state(id).await;
        assert_eq!(
            (t.state, t.attempts),
            (TaskState::Scheduled, 0),
            "{id}: its start given back"
        );
    }
    // The next owner runs them at once (no takeover wait: the clock does not move), each as
    // its first attempt.
    let lease = h.store.acquire_lease(p, "next").await.expect("lease");
    h.scheduler.assign(lease).await;
    for id in &waiting {
        h.until_state(id, TaskState::Succeeded).await;
        let rec = h.store.get(id).await.expect("get").expect("stored");
        assert_eq!(rec.task.attempts, 1, "{id}: one attempt");
        let numbers: Vec<u32> = rec.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, vec![1], "{id}: its attempt records");
    }
    let mut names = h.names();
    names.sort();
    assert_eq!(names, vec!["quick", "slow", "waiting-1", "waiting-2"]);
}

/// A plugin's claims reach only as far ahead as its run slots start them within the claim
/// slack: once its attempts are known to take a second, 40 due tasks of it are not all claimed
/// (shown `running`, their starts recorded) while 7 run; 7 more are.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_plugin_is_claimed_only_as_far_ahead_as_its_run_slots_reach() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().expect("tmp");
    // 8 run slots (7 for one plugin), 64 claims (56 for one plugin).
    let cfg = SchedulerConfig {
        concurrency: 8,
        claim_slots: Some(64),
        ..SchedulerConfig::default()
    };
    let h = harness(dir.path(), ManualClock::new(T0), cfg).await;
    let running = |h: &Harness| {
        let store = h.store.clone();
        async move {
            let filter = kairos_core::model::ListFilter {
                key: None,
                state: Some(TaskState::Running),
                limit: 1_000,
                after: None,
            };
            store.list(&filter).await.expect("list").len()
        }
    };
    // Seven attempts that take a second each: the plugin's pace.
    let mut first = Vec::new();
    for i in 0..7 {
        first.push(h.add(&format!("s{i}"), T0, json!({ "block": true })).await);
    }
    h.until("seven attempts run", |h| h.exec.blocked.load(SeqCst) == 7)
        .await;
    h.clock.advance(1_000);
    h.exec.gate.add_permits(7);
    for id in &first {
        h.until_state(id, TaskState::Succeeded).await;
    }
    let due = h.clock.now();
    let mut next = Vec::new();
    for i in 0..40 {
        next.push(h.add(&format!("w{i}"), due, json!({ "block": true })).await);
    }
    h.until("seven attempts run again", |h| {
        h.exec.blocked.load(SeqCst) == 7
    })
    .await;
    h.settle().await;
    assert_eq!(
        running(&h).await,
        14,
        "7 running and 7 claimed: 7 run slots × 1 s slack / 1 s per attempt"
    );
    h.exec.gate.add_permits(40);
    for id in &next {
        h.until_state(id, TaskState::Succeeded).await;
    }
}
