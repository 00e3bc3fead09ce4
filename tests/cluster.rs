//! Cluster mode against the real Apache Kafka (127.0.0.1:9092) and Apache Cassandra
//! (127.0.0.1:9042): several `kairos serve` child processes in one consumer group, the `notify`
//! plugin POSTing to a local receiver.
//!
//! Run with `scripts/test-cluster` (starts and stops both services). These tests FAIL, never
//! skip, when the services are unreachable. Each test uses its own topic, group and keyspace.
//!
//! (a) runs the issue's 20,000 tasks over 2,000 keys (KAIROS_CLUSTER_TASKS and
//! KAIROS_CLUSTER_KEYS change that); (b)-(d) put a steady load on the cluster while a node
//! dies, joins, or a service restarts; (e) and (f) check single behaviours.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Receiver, Server, free_port};

const PARTITIONS: u32 = 16;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Panics (loudly) unless Kafka and Cassandra answer.
fn require_services() {
    for (what, addr) in [("Kafka", "127.0.0.1:9092"), ("Cassandra", "127.0.0.1:9042")] {
        let ok = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(3))
            .is_ok();
        assert!(
            ok,
            "{what} is not reachable at {addr}: start the services with `scripts/services up` (or run `scripts/test-cluster`)"
        );
    }
}

fn services(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let st = Command::new(script)
        .args(args)
        .status()
        .expect("run scripts/services");
    assert!(st.success(), "scripts/services {args:?} failed: {st}");
}

/// A unique, CQL- and Kafka-safe name.
fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis()
        % 1_000_000_000;
    format!("{prefix}_{}_{t}", std::process::id())
}

struct Cluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    rx: Receiver,
    topic: String,
    /// `api.cluster_secret` of every node.
    secret: String,
    nodes: Vec<Option<Server>>,
    /// The nodes serve HTTPS with this certificate (DER), shared by all.
    tls: Option<Vec<u8>>,
}

/// The test's own keyspace, consumer group and topic (named in its config) are deleted when
/// it ends, unless KAIROS_CLUSTER_KEEP is set: the services' data directory outlives test runs.
impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes stop first (each `Server` kills its process when dropped).
        self.nodes.clear();
        if std::env::var_os("KAIROS_CLUSTER_KEEP").is_some() {
            return;
        }
        let config = self.config.clone();
        // A runtime of its own on a thread of its own: the test may be inside one.
        let cleanup = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("cleanup: no runtime: {e}"),
            };
            rt.block_on(delete_test_data(&config));
        });
        let _ = cleanup.join();
    }
}

/// Best effort (problems are printed): drops the keyspace, deletes the group and the topic.
async fn delete_test_data(config: &Path) {
    use kairos::config::{Config, QueueConfig, StoreConfig};
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return eprintln!("cleanup: {}: {e:#}", config.display()),
    };
    if let StoreConfig::Cassandra(c) = &cfg.store {
        let opts = kairos_cassandra::CassandraOptions {
            migrate_on_start: false,
            ..kairos::cluster::cassandra_options(c)
        };
        match kairos_cassandra::CassandraStore::connect(opts).await {
            Ok(store) => {
                if let Err(e) = store.drop_keyspace().await {
                    eprintln!("cleanup: dropping keyspace {}: {e}", c.keyspace);
                }
            }
            Err(e) => eprintln!("cleanup: dropping keyspace {}: {e}", c.keyspace),
        }
    }
    if let QueueConfig::Kafka(k) = &cfg.queue {
        let kc = kairos::cluster::kafka_config(&cfg, k);
        if let Err(e) = kairos_kafka::delete_topic_and_group(&kc).await {
            eprintln!(
                "cleanup: deleting topic {} / group {}: {e}",
                k.topic, k.group
            );
        }
    }
}

impl Cluster {
    fn new(name: &str, extra: &str) -> Cluster {
        require_services();
        // KAIROS_CLUSTER_KEEP=1 keeps the directory (node logs, data) for a post-mortem.
        let dir = tempfile::Builder::new()
            .prefix(&format!("kairos-cluster-{name}-"))
            .disable_cleanup(std::env::var_os("KAIROS_CLUSTER_KEEP").is_some())
            .tempdir()
            .expect("tmp");
        let rx = Receiver::start();
        let id = unique(name);
        let topic = format!("kairos.test.{id}");
        let config = dir.path().join("cluster.toml");
        let secret = format!("cluster-test-secret-{id}");
        let text = format!(
            r#"partitions = {PARTITIONS}
[api]
cluster_secret = "{secret}"
[queue]
type = "kafka"
brokers = "127.0.0.1:9092"
topic = "{topic}"
group = "g_{id}"
session_timeout_ms = 6000
[store]
type = "cassandra"
nodes = ["127.0.0.1:9042"]
keyspace = "k_{id}"
[scheduler]
shutdown_grace_ms = 10000
[plugin.notify]
allowed_hosts = ["{rx}"]
{extra}
"#,
            rx = rx.addr
        );
        std::fs::write(&config, text).expect("write config");
        Cluster {
            dir,
            config,
            rx,
            topic,
            secret,
            nodes: Vec::new(),
            tls: None,
        }
    }

    /// Starts `n` more nodes and waits until each answers.
    fn start_nodes(&mut self, n: usize) {
        let mut started = Vec::new();
        for _ in 0..n {
            let i = self.nodes.len() + started.len() + 1;
            let data = self.dir.path().join(format!("node-{i}"));
            let s = Server::spawn_node(&self.config, &format!("node-{i}"), free_port(), &data);
            started.push(match &self.tls {
                Some(ca) => s.over_tls(ca),
                None => s,
            });
        }
        for mut s in started {
            s.wait_ready(Duration::from_secs(120));
            self.nodes.push(Some(s));
        }
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn live(&self) -> Vec<&Server> {
        self.nodes.iter().flatten().collect()
    }

    /// Waits until the live nodes together own every partition, each node at least one.
    fn wait_balanced(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let owned: Vec<u64> = self
                .live()
                .iter()
                .map(|s| {
                    s.health()
                        .and_then(|h| h["partitions_owned"].as_u64())
                        .unwrap_or(0)
                })
                .collect();
            if owned.iter().sum::<u64>() == u64::from(PARTITIONS) && owned.iter().all(|&o| o > 0) {
                eprintln!(
                    "partitions per node: {owned:?} after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "partitions not spread over the nodes within {timeout:?}: {owned:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(|s| format!("--- {} ---\n{}", s.base, s.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn notify(key: &str, url: &str, seq: usize, delay_ms: u64) -> Value {
    json!({ "plugin": "notify", "key": key, "delay_ms": delay_ms,
            "payload": { "url": url, "message": format!("m{seq}"), "seq": seq } })
}

/// Enqueues `batch` through `node`; returns the acknowledged ids.
fn enqueue(node: &Server, batch: Vec<Value>) -> Vec<String> {
    let (code, resp) = node.call(
        "POST",
        "/v1/tasks/batch",
        Some(&Value::Array(batch).to_string()),
    );
    assert_eq!(code, 201, "batch enqueue through {}: {resp}", node.base);
    resp.as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// Enqueues `n` notify tasks over `keys` keys through the running nodes in turn, one batch per
/// round of keys: a key's tasks are enqueued strictly one after another, so per key the
/// enqueue order is the run order. Task `i` is due `start_ms + i * spread_ms / n` from now.
/// Returns the acknowledged ids.
fn enqueue_spread(
    c: &Cluster,
    n: usize,
    keys: usize,
    start_ms: u64,
    spread_ms: u64,
) -> HashSet<String> {
    let url = c.rx.url();
    let mut want = HashSet::new();
    for (b, chunk) in (0..n).collect::<Vec<_>>().chunks(keys).enumerate() {
        let batch = chunk
            .iter()
            .map(|&i| {
                let delay = start_ms + i as u64 * spread_ms / n as u64;
                notify(&format!("key-{}", i % keys), &url, i, delay)
            })
            .collect();
        want.extend(enqueue(c.node(b % c.nodes.len()), batch));
    }
    want
}

/// Waits until every id in `want` was received; returns all bodies.
fn wait_all(c: &Cluster, want: &HashSet<String>, timeout: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let got = c.rx.received();
        let ids: HashSet<&str> = got.iter().filter_map(|v| v["task_id"].as_str()).collect();
        let missing = want.iter().filter(|id| !ids.contains(id.as_str())).count();
        if missing == 0 {
            return got;
        }
        if start.elapsed() > timeout {
            panic!(
                "{missing} of {} tasks never ran within {timeout:?}\n{}",
                want.len(),
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (task executions, distinct tasks, duplicate executions)
fn count(got: &[Value]) -> (usize, usize, usize) {
    let ids: HashSet<&str> = got.iter().filter_map(|v| v["task_id"].as_str()).collect();
    (got.len(), ids.len(), got.len() - ids.len())
}

/// The task ids that ran more than once.
fn duplicated(got: &[Value]) -> Vec<&str> {
    let mut seen = HashMap::new();
    for id in got.iter().filter_map(|v| v["task_id"].as_str()) {
        *seen.entry(id).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// Per key, tasks ran in strictly increasing enqueue order. The only exception: a task in
/// `may_repeat` (in flight on a node that died) may run again right where it ran, before its
/// key moves on.
fn assert_key_order(got: &[Value], may_repeat: &HashSet<&str>) {
    let mut per_key: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for b in got {
        per_key
            .entry(b["key"].as_str().unwrap_or(""))
            .or_default()
            .push((
                b["seq"].as_u64().unwrap_or(0),
                b["task_id"].as_str().unwrap_or(""),
            ));
    }
    for (key, runs) in per_key {
        for w in runs.windows(2) {
            let repeat = w[0] == w[1] && may_repeat.contains(w[0].1);
            assert!(
                w[0].0 < w[1].0 || repeat,
                "key {key} ran out of order (seq {} then {}): {:?}",
                w[0].0,
                w[1].0,
                runs.iter().map(|r| r.0).collect::<Vec<_>>()
            );
        }
    }
}

/// (a) Three nodes, tasks over many keys enqueued through all of them: every task exactly
/// once, per-key order intact. 20,000 tasks over 2,000 keys by default.
#[test]
fn a_three_nodes_every_task_exactly_once_in_key_order() {
    let n = env_usize("KAIROS_CLUSTER_TASKS", 20_000);
    let keys = env_usize("KAIROS_CLUSTER_KEYS", 2_000);
    let mut c = Cluster::new("a", "");
    c.start_nodes(3);
    c.wait_balanced(Duration::from_secs(60));
    let start = Instant::now();
    // One batch = the next task of every key, through the nodes in turn.
    let want = enqueue_spread(&c, n, keys, 0, 0);
    let enqueued = start.elapsed();
    let got = wait_all(&c, &want, Duration::from_secs(300));
    let all_done = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let got_after = c.rx.received();
    let (runs, distinct, dups) = count(&got_after);
    eprintln!(
        "(a) {n} tasks / {keys} keys on 3 nodes: enqueued in {:.1} s, all run after {:.1} s ({:.0} tasks/s end to end); {runs} runs, {distinct} distinct, {dups} duplicates",
        enqueued.as_secs_f64(),
        all_done.as_secs_f64(),
        n as f64 / all_done.as_secs_f64()
    );
    assert_eq!(distinct, n, "every task ran");
    assert_eq!(dups, 0, "no task ran twice");
    assert!(
        got.iter().all(|b| b["attempt"] == 1),
        "every task succeeded on its first attempt"
    );
    assert_key_order(&got_after, &HashSet::new());
    // Every node did part of the work.
    for s in c.live() {
        let (_, m) = s.call("GET", "/metrics", None);
        let text = m.as_str().unwrap_or_default().to_string();
        let done: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kairos_tasks_executed_total{outcome=\"succeeded\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(done > 0, "{} ran no task", s.base);
    }
    for s in c.nodes.iter_mut().map(|s| s.take().expect("node")) {
        assert_eq!(
            s.terminate(),
            Some(0),
            "SIGTERM stops a cluster node cleanly"
        );
    }
}

/// (e) A task due days ago, written straight to the topic (the documented JSON record) while
/// no node owned its partition, runs as soon as a node is assigned the partition.
#[test]
fn e_overdue_record_written_while_unowned_runs_on_assignment() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let c = Cluster::new("e", "");
    let mut c = c;
    // The topic exists before any node does (as an operator or another producer would have it).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut kc = kairos_kafka::KafkaConfig::new("127.0.0.1:9092", PARTITIONS);
    kc.topic = c.topic.clone();
    rt.block_on(kairos_kafka::KafkaIntake::connect(&kc))
        .expect("create the topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let days_ago = chrono::Utc::now() - chrono::Duration::days(3);
    let records = [
        (
            "overdue-1",
            json!({ "v": 1, "id": "overdue-task-1", "plugin": "notify", "key": "overdue-1",
            "due_at_ms": days_ago.timestamp_millis(),
            "payload": { "url": c.rx.url(), "message": "three days late", "seq": 1 } }),
        ),
        // No id (derived from topic/partition/offset), due time as RFC 3339.
        (
            "overdue-2",
            json!({ "v": 1, "plugin": "notify", "key": "overdue-2",
            "run_at": (days_ago - chrono::Duration::days(2)).to_rfc3339(),
            "payload": { "url": c.rx.url(), "message": "five days late", "seq": 2 } }),
        ),
    ];
    for (key, value) in &records {
        let partition = kairos_core::partition::partition_for(key, PARTITIONS) as i32;
        let value = value.to_string();
        let rec = FutureRecord::to(&c.topic)
            .key(*key)
            .payload(&value)
            .partition(partition);
        rt.block_on(producer.send(rec, Duration::from_secs(30)))
            .map_err(|(e, _)| e)
            .expect("record acknowledged");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.rx.received().is_empty());
    let t0 = Instant::now();
    c.start_nodes(1);
    let got =
        c.rx.wait_for("the overdue tasks", Duration::from_secs(90), |b| {
            b.len() >= 2
        });
    eprintln!(
        "(e) overdue tasks ran {:.1} s after the node started",
        t0.elapsed().as_secs_f64()
    );
    let seqs: HashSet<u64> = got.iter().filter_map(|b| b["seq"].as_u64()).collect();
    assert_eq!(seqs, HashSet::from([1, 2]), "{got:?}");
    // The POST arrives before the attempt's end is recorded: poll the state.
    let start = Instant::now();
    loop {
        let (code, t) = c.node(0).call("GET", "/v1/tasks/overdue-task-1", None);
        assert_eq!(code, 200, "{t}");
        if t["state"] == "succeeded" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "task never recorded as succeeded: {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.rx.received().len(), 2, "each ran once");
}

/// Per partition: the first arrival at or after `since`, for tasks of keys in `keys`.
fn first_after(timed: &[(Instant, Value)], since: Instant) -> BTreeMap<u32, Duration> {
    let mut out = BTreeMap::new();
    for (at, b) in timed {
        if *at < since {
            continue;
        }
        let p = kairos_core::partition::partition_for(b["key"].as_str().unwrap_or(""), PARTITIONS);
        out.entry(p).or_insert(*at - since);
    }
    out
}

/// (b) kill -9 one of three nodes mid-run: its partitions move to the others and fire again,
/// nothing is lost. Scaled: 1,500 tasks over 150 keys, due over ~25 s.
#[test]
fn b_kill_9_one_node_partitions_move_nothing_lost() {
    let n = env_usize("KAIROS_CLUSTER_KILL_TASKS", 1_500);
    let keys = 150;
    let mut c = Cluster::new("b", "");
    c.start_nodes(3);
    c.wait_balanced(Duration::from_secs(60));
    let spread_ms = 25_000u64;
    let want = enqueue_spread(&c, n, keys, 3_000, spread_ms);
    // Kill node 2 once about a third of the work is done.
    c.rx.wait_for("a third of the tasks", Duration::from_secs(120), |b| {
        b.len() >= n / 3
    });
    let victim = c.nodes[1].take().expect("node 2");
    let victim_partitions = owned_partitions(&victim);
    let owned = victim_partitions.len();
    let killed_at = Instant::now();
    victim.kill9();
    let before = c.rx.received().len();
    eprintln!("(b) killed node-2 (owned {owned} partitions) with {before} of {n} tasks done");
    let got = wait_all(&c, &want, Duration::from_secs(180));
    let timed = c.rx.received_timed();
    let resumed = first_after(&timed, killed_at);
    let worst = resumed.values().max().copied().unwrap_or_default();
    let (runs, distinct, dups) = count(&got);
    eprintln!(
        "(b) every partition fired again within {:.1} s of the kill (per partition: {:?}); {runs} runs, {distinct} distinct, {dups} duplicate executions",
        worst.as_secs_f64(),
        resumed
            .iter()
            .map(|(p, d)| (*p, d.as_millis()))
            .collect::<Vec<_>>()
    );
    assert_eq!(distinct, n, "nothing lost");
    assert_eq!(
        resumed.len() as u32,
        PARTITIONS,
        "every partition fired again after the kill"
    );
    // At-least-once across a crash: an attempt whose plugin had already delivered when the
    // node died, but whose end was never recorded, runs again on the new owner (with the same
    // task id, the receiver's idempotency key). Only those can repeat: a task delivered twice
    // must be of a partition the victim owned, first delivered by the time of the kill (plus
    // a little for a request in flight at the kill to land; the new owner takes over only
    // after the 6 s session timeout), and no more than the victim's concurrency (64).
    let mut first_seen: HashMap<&str, Instant> = HashMap::new();
    let mut twice: HashSet<&str> = HashSet::new();
    for (at, b) in &timed {
        let id = b["task_id"].as_str().unwrap_or("");
        if first_seen.contains_key(id) {
            twice.insert(id);
        } else {
            first_seen.insert(id, *at);
        }
    }
    let in_flight_slack = Duration::from_secs(1);
    for (at, b) in &timed {
        let id = b["task_id"].as_str().unwrap_or("");
        if !twice.contains(id) || first_seen[id] != *at {
            continue;
        }
        let p = kairos_core::partition::partition_for(b["key"].as_str().unwrap_or(""), PARTITIONS);
        assert!(
            victim_partitions.contains(&u64::from(p)),
            "task {id} ran twice but its partition {p} was not the killed node's ({victim_partitions:?})"
        );
        assert!(
            *at <= killed_at + in_flight_slack,
            "task {id} ran twice although its first run came {:?} after the kill",
            *at - killed_at
        );
    }
    assert!(dups <= 64, "{dups} duplicate executions");
    eprintln!(
        "(b) {} task(s) ran twice, each first delivered before the kill (in flight on node-2)",
        twice.len()
    );
    assert_key_order(&got, &twice);
}

/// (c) A fourth node joins under load: partitions rebalance (cooperative: only the moved
/// ones pause), nothing is lost or run twice, the new node takes work.
#[test]
fn c_fourth_node_joins_under_load() {
    let n = env_usize("KAIROS_CLUSTER_JOIN_TASKS", 1_500);
    let keys = 150;
    let mut c = Cluster::new("c", "");
    c.start_nodes(3);
    c.wait_balanced(Duration::from_secs(60));
    let spread_ms = 25_000u64;
    let want = enqueue_spread(&c, n, keys, 3_000, spread_ms);
    c.rx.wait_for("a fifth of the tasks", Duration::from_secs(120), |b| {
        b.len() >= n / 5
    });
    let joined_at = Instant::now();
    c.start_nodes(1);
    c.wait_balanced(Duration::from_secs(60));
    let balanced = joined_at.elapsed();
    let got = wait_all(&c, &want, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let got = {
        let _ = got;
        c.rx.received()
    };
    let (runs, distinct, dups) = count(&got);
    // Gaps per partition while the fourth node joined: unaffected partitions keep firing.
    let timed = c.rx.received_timed();
    let window_end = joined_at + balanced + Duration::from_secs(3);
    let mut last: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut max_gap: BTreeMap<u32, Duration> = BTreeMap::new();
    for (at, b) in &timed {
        let p = kairos_core::partition::partition_for(b["key"].as_str().unwrap_or(""), PARTITIONS);
        if let Some(prev) = last.insert(p, *at)
            && *at >= joined_at
            && prev <= window_end
        {
            let g = max_gap.entry(p).or_default();
            *g = (*g).max(*at - prev);
        }
    }
    let fast = max_gap
        .values()
        .filter(|g| **g < Duration::from_secs(2))
        .count();
    eprintln!(
        "(c) node-4 joined, balanced after {:.1} s; max gap per partition during the join (ms): {:?}; {runs} runs, {distinct} distinct, {dups} duplicates",
        balanced.as_secs_f64(),
        max_gap
            .iter()
            .map(|(p, g)| (*p, g.as_millis()))
            .collect::<Vec<_>>()
    );
    assert_eq!(distinct, n, "nothing lost");
    assert_eq!(dups, 0, "a graceful rebalance runs nothing twice");
    assert_key_order(&got, &HashSet::new());
    assert!(
        fast >= 8,
        "most partitions kept firing during the rebalance: {max_gap:?}"
    );
    let (_, m) = c.node(3).call("GET", "/metrics", None);
    let text = m.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("kairos_tasks_executed_total{outcome=\"succeeded\"}"),
        "{text}"
    );
}

/// (d) Kafka, then Cassandra, stopped and restarted under load: work waits and resumes,
/// nothing is lost. Scaled: 600 tasks due over ~60 s; each outage ~10 s.
#[test]
fn d_kafka_then_cassandra_restart_under_load() {
    let n = env_usize("KAIROS_CLUSTER_OUTAGE_TASKS", 600);
    let keys = 60;
    let mut c = Cluster::new("d", "");
    c.start_nodes(2);
    c.wait_balanced(Duration::from_secs(60));
    let spread_ms = 60_000u64;
    let want = enqueue_spread(&c, n, keys, 2_000, spread_ms);
    c.rx.wait_for("some tasks", Duration::from_secs(60), |b| b.len() >= n / 10);
    services(&["down", "kafka"]);
    std::thread::sleep(Duration::from_secs(10));
    eprintln!(
        "(d) during the Kafka outage {} of {n} ran",
        c.rx.received().len()
    );
    services(&["up", "kafka"]);
    c.rx.wait_for(
        "progress after Kafka is back",
        Duration::from_secs(120),
        |b| b.len() >= n / 3,
    );
    services(&["down", "cassandra"]);
    let during = c.rx.received().len();
    std::thread::sleep(Duration::from_secs(10));
    let after_wait = c.rx.received().len();
    eprintln!("(d) Cassandra down: {during} -> {after_wait} ran during the outage");
    services(&["up", "cassandra"]);
    let got = wait_all(&c, &want, Duration::from_secs(300));
    let (runs, distinct, dups) = count(&got);
    eprintln!(
        "(d) after both outages: {runs} runs, {distinct} distinct, {dups} duplicate executions"
    );
    assert_eq!(distinct, n, "nothing lost");
    // No node died: an attempt whose end could not be recorded while Cassandra was down keeps
    // its key and has its end retried, so nothing runs twice and order is strict.
    assert_eq!(
        dups,
        0,
        "{dups} duplicate executions without a node dying: {:?} (node logs in {})",
        duplicated(&got),
        c.dir.path().display()
    );
    assert_key_order(&got, &HashSet::new());
}

/// A key whose partition is in `owned` (a partition list from `/healthz`).
fn key_in(prefix: &str, owned: &[u64]) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| {
            owned.contains(&u64::from(kairos_core::partition::partition_for(
                k, PARTITIONS,
            )))
        })
        .expect("a key in one of the node's partitions")
}

fn owned_partitions(s: &Server) -> Vec<u64> {
    s.health()
        .and_then(|h| {
            h["partitions"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
        })
        .expect("/healthz lists the owned partitions")
}

/// Polls `GET /v1/tasks/{id}` on `node` until the owner persisted the task.
fn wait_stored(node: &Server, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, t) = node.call("GET", &format!("/v1/tasks/{id}"), None);
        if code == 200 {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "task {id} not stored: {code} {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (f) Task operations through a node that does not own the task's partition are forwarded
/// to the owner: cancel, reschedule, retry (the owner's 409 passed through), pause and resume
/// of a key; operations through the owner still work; a forwarded request is never
/// forwarded again.
#[test]
fn f_task_operations_through_any_node_reach_the_owner() {
    let mut c = Cluster::new("f", "");
    c.start_nodes(2);
    c.wait_balanced(Duration::from_secs(60));
    let (a, b) = (c.node(0), c.node(1));
    let (on_a, on_b) = (owned_partitions(a), owned_partitions(b));
    let url = c.rx.url();
    let key_b = key_in("fwd-b", &on_b);
    let key_b2 = key_in("fwd-b2", &on_b);
    let key_a = key_in("fwd-a", &on_a);
    let hour = 3_600_000;
    let ids = enqueue(
        a,
        vec![
            notify(&key_b, &url, 1, hour),
            notify(&key_b2, &url, 2, hour),
            notify(&key_a, &url, 3, hour),
        ],
    );
    let (t_b, t_b2, t_a) = (&ids[0], &ids[1], &ids[2]);
    for id in &ids {
        wait_stored(a, id);
    }

    // The status page's partition view, from either node, is cluster-wide: each partition
    // with its owner (node-2's asked over the API), none moving once balanced.
    for n in [a, b] {
        let (code, v) = n.call("GET", "/v1/partitions", None);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["cluster"], true, "{v}");
        assert_eq!(v["moving"], 0, "{v}");
        let entries = v["partitions"].as_array().expect("partitions");
        for e in entries {
            let p = e["partition"].as_u64().expect("partition");
            let want = if on_a.contains(&p) {
                "node-1"
            } else {
                "node-2"
            };
            assert_eq!(e["owner"], want, "partition {p}: {v}");
            assert!(e["window"].is_u64(), "the owner reported its window: {e}");
        }
        assert_eq!(entries.len(), on_a.len() + on_b.len(), "{v}");
        let nodes = v["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 2, "{v}");
        assert!(nodes.iter().all(|n| n["reachable"] == true), "{v}");
        // Counts come from the store: the three tasks just stored are scheduled.
        let (code, st) = n.call("GET", "/v1/stats", None);
        assert_eq!(code, 200, "{st}");
        assert!(st["counts"]["scheduled"].as_u64() >= Some(3), "{st}");
    }

    // Cancel through the non-owner.
    let (code, t) = a.call("DELETE", &format!("/v1/tasks/{t_b}"), None);
    assert_eq!(code, 200, "cancel through node-1 of a task of node-2: {t}");
    assert_eq!(t["state"], "cancelled", "{t}");
    for n in [a, b] {
        let (code, t) = n.call("GET", &format!("/v1/tasks/{t_b}"), None);
        assert_eq!((code, &t["state"]), (200, &json!("cancelled")), "{t}");
    }
    // The owner's answer passes through as is: cancelling again is its 409.
    match ureq::delete(&format!("{}/v1/tasks/{t_b}", a.base)).call() {
        Err(ureq::Error::Status(code, r)) => {
            let served_by = r.header("x-kairos-served-by").map(str::to_string);
            let text = r.into_string().unwrap_or_default();
            assert_eq!(code, 409, "{text}");
            assert_eq!(served_by.as_deref(), Some("node-2"), "{text}");
        }
        other => panic!("expected the owner's 409, got {other:?}"),
    }

    // Reschedule through the non-owner, then through the owner.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!({ "run_at": later }).to_string();
    let (code, t) = a.call("PATCH", &format!("/v1/tasks/{t_b2}"), Some(&body));
    assert_eq!(code, 200, "reschedule through node-1: {t}");
    assert_eq!(t["run_at"], json!(later), "{t}");
    let (_, t) = b.call("GET", &format!("/v1/tasks/{t_b2}"), None);
    assert_eq!(t["run_at"], json!(later), "read through the owner: {t}");
    let latest = (chrono::Utc::now() + chrono::Duration::hours(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!({ "run_at": latest }).to_string();
    let (code, t) = b.call("PATCH", &format!("/v1/tasks/{t_b2}"), Some(&body));
    assert_eq!(
        (code, &t["run_at"]),
        (200, &json!(latest)),
        "through the owner: {t}"
    );
    // Retry of a task that is not dead: the owner's 409, through the non-owner.
    let (code, t) = a.call("POST", &format!("/v1/tasks/{t_b2}/retry"), Some("{}"));
    assert_eq!(code, 409, "{t}");

    // The other direction, and an operation on the owner itself.
    let (code, t) = b.call("DELETE", &format!("/v1/tasks/{t_a}"), None);
    assert_eq!((code, &t["state"]), (200, &json!("cancelled")), "{t}");
    let (code, t) = b.call("DELETE", &format!("/v1/tasks/{t_b2}"), None);
    assert_eq!((code, &t["state"]), (200, &json!("cancelled")), "{t}");

    // A forwarded request must be signed with the cluster secret; one that is, reaching a
    // non-owner, is not forwarded again.
    let path = format!("/v1/tasks/{t_b2}");
    let forged = ureq::delete(&format!("{}{path}", a.base))
        .set("x-kairos-forwarded", "node-x")
        .call();
    match forged {
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            assert_eq!(code, 401, "an unsigned forwarded request: {text}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let now = kairos_core::clock::system_now();
    let signature = kairos::auth::sign_forwarded(&c.secret, "DELETE", &path, "node-x", now, b"");
    let res = ureq::delete(&format!("{}{path}", a.base))
        .set("x-kairos-forwarded", "node-x")
        .set("x-kairos-signature", &signature)
        .call();
    match res {
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            assert_eq!(code, 503, "{text}");
            assert!(text.contains("moving between nodes"), "{text}");
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // Pause a key of node-2 through node-1: its new task waits; resume releases it.
    let (code, r) = a.call("POST", &format!("/v1/keys/{key_b}/pause"), Some(""));
    assert_eq!((code, &r["paused"]), (200, &json!(true)), "{r}");
    let held = enqueue(a, vec![notify(&key_b, &url, 4, 0)]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.rx.received().is_empty(), "a task of a paused key ran");
    let (code, r) = a.call("POST", &format!("/v1/keys/{key_b}/resume"), Some(""));
    assert_eq!((code, &r["paused"]), (200, &json!(false)), "{r}");
    let got =
        c.rx.wait_for("the resumed key's task", Duration::from_secs(20), |b| {
            !b.is_empty()
        });
    assert_eq!(got[0]["task_id"], json!(held[0]), "{got:?}");

    // The owner gone (kill -9; the group has not noticed yet): a clear 503, nothing hangs.
    c.nodes[1].take().expect("node-2").kill9();
    let (code, t) = c.node(0).call("DELETE", &format!("/v1/tasks/{t_b}"), None);
    assert_eq!(code, 503, "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not reachable"),
        "{t}"
    );
}

/// (g) With `[api.tls]` the nodes serve HTTPS and forward to each other over it, trusting the
/// shared certificate: an operation through a non-owner reaches the owner.
#[test]
fn g_forwarding_between_nodes_over_https() {
    let certs = tempfile::tempdir().expect("tmp");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("cert");
    let (cert_pem, key_pem) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).expect("write key");
    let tls = format!(
        "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_pem.display(),
        key_pem.display()
    );
    let mut c = Cluster::new("g", &tls);
    c.tls = Some(cert.cert.der().to_vec());
    c.start_nodes(2);
    c.wait_balanced(Duration::from_secs(60));
    let (a, b) = (c.node(0), c.node(1));
    assert!(a.base.starts_with("https://"), "{}", a.base);
    let key_b = key_in("tls-b", &owned_partitions(b));
    let ids = enqueue(a, vec![notify(&key_b, &c.rx.url(), 1, 3_600_000)]);
    wait_stored(a, &ids[0]);
    let (code, t) = a.call("DELETE", &format!("/v1/tasks/{}", ids[0]), None);
    assert_eq!(
        code, 200,
        "cancel through node-1 of a task of node-2, over HTTPS: {t}"
    );
    assert_eq!(t["state"], "cancelled", "{t}");
    let (code, t) = b.call("GET", &format!("/v1/tasks/{}", ids[0]), None);
    assert_eq!((code, &t["state"]), (200, &json!("cancelled")), "{t}");
    // Plain HTTP is not served.
    let plain = ureq::get(&format!(
        "{}/healthz",
        a.base.replacen("https://", "http://", 1)
    ))
    .timeout(Duration::from_secs(5))
    .call();
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}
