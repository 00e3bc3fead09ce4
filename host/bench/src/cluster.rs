//! `kairos-bench --scenario cluster | cluster-throughput | cluster-steady`: end-to-end figures
//! of cluster mode on this machine, against the Kafka and Cassandra of a cluster config.
//!
//! Each scenario starts its own cluster: `--nodes` child processes of the `kairos` binary next to this one
//! (`kairos serve`), all on a generated copy of the config with a fresh keyspace, topic and
//! consumer group (so runs never see each other's data), the no-op plugin (`noop.wasm`, a fresh
//! Wasm instance per task: what is measured is the scheduler, Kafka and Cassandra). Once the
//! nodes own every partition, the bench produces the tasks straight to the task topic with the
//! same producer the API uses (`KafkaIntake`: idempotent, `acks=all`), so the HTTP layer is
//! not part of the figure and cannot become its bottleneck.
//!
//! - throughput: `--tasks` tasks over `--keys` keys, all due now; the time from the first
//!   enqueue until the nodes' `kairos_tasks_executed_total{outcome="succeeded"}` add up to all.
//! - steady: `--rate` tasks/s for `--seconds` s (a batch every 10 ms), each due 50 ms after its
//!   enqueue; lateness (first attempt's start − due) read back from Cassandra for an even
//!   sample of `--sample` tasks.
//!
//! Afterwards the nodes get SIGTERM (SIGKILL after 30 s), and the keyspace, topic and group
//! are deleted. Node logs stay in `--data`/cluster-SCENARIO/node-N/node.log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kairos_cassandra::CassandraStore;
use kairos_core::clock::system_now;
use kairos_core::ids::TaskIds;
use kairos_core::model::{Millis, NewTask, TaskRecord, TaskState};
use kairos_core::store::TaskStore;
use kairos_kafka::KafkaIntake;

use crate::bench::{BenchArgs, guests_dir, percentile, report_lateness, task};
use kairos::cluster::{connect_cassandra, connect_intake, kafka_config};
use kairos::config::{CassandraSection, Config, KafkaSection, QueueConfig, StoreConfig};
use kairos::progress::Progress;

/// Flags of the cluster scenarios (`--tasks`, `--rate`, `--seconds` are shared with the
/// embedded ones, with cluster defaults).
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Cluster scenarios: the config the nodes start from (its keyspace, topic and group are
    /// replaced by fresh ones per run).
    #[arg(long, default_value = "config/cluster.toml")]
    pub config: PathBuf,
    /// Cluster scenarios: `kairos serve` processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Distinct ordering keys the tasks are spread over [default: embedded throughput
    /// 10000; due 1000; cluster 2000].
    #[arg(long)]
    pub keys: Option<usize>,
    /// Cluster scenarios: tasks read back from Cassandra for the lateness figures (an even
    /// sample of all; 0 = all).
    #[arg(long, default_value_t = 5_000)]
    pub sample: usize,
    /// Cluster scenarios: at most this many throughput runs first, their figures discarded,
    /// until one is within 5 % of the one before. Cassandra's JIT and caches warm up over
    /// the first runs after it starts (successive runs of one build measured 342, 695, 842,
    /// 1,053, 1,447, 1,500 tasks/s, BENCHMARKS.md).
    #[arg(long, default_value_t = 8)]
    pub warmup: usize,
    /// Cluster scenarios: plain UUID ids, as an external producer's records may have,
    /// instead of the ids the API makes, which name their row's home (a plain id costs a
    /// `task_homes` read and write per task).
    #[arg(long)]
    pub plain_ids: bool,
}

/// Cluster defaults of the shared flags.
const DEFAULT_TASKS: usize = 20_000;
const DEFAULT_RATE: usize = 2_000;
/// Tasks per `KafkaIntake::submit` in the throughput run.
const ENQUEUE_BATCH: usize = 5_000;
/// A wait gives up when no task finishes for this long.
const STALL: Duration = Duration::from_secs(120);
/// When the succeeded counters stand still this long, the store is checked.
const VERIFY: Duration = Duration::from_secs(10);
const NODE_STOP: Duration = Duration::from_secs(30);
/// Warm-up ends when a run's rate is within this fraction of the run before.
const WARM_WITHIN: f64 = 0.05;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (throughput_run, steady_run) = match args.scenario.as_str() {
        "cluster" => (true, true),
        "cluster-throughput" => (true, false),
        "cluster-steady" => (false, true),
        other => bail!(
            "unknown cluster scenario `{other}` (cluster, cluster-throughput, cluster-steady)"
        ),
    };
    let c = &args.cluster;
    anyhow::ensure!(c.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(c.keys != Some(0), "--keys must be at least 1");
    let base_text = std::fs::read_to_string(&c.config)
        .with_context(|| format!("reading cluster config {}", c.config.display()))?;
    let base = Config::parse(&base_text)
        .with_context(|| format!("invalid config {}", c.config.display()))?;
    let (QueueConfig::Kafka(k), StoreConfig::Cassandra(s)) = (&base.queue, &base.store) else {
        bail!(
            "{} is not a cluster config: the cluster bench needs `[queue] type = \"kafka\"` and `[store] type = \"cassandra\"`",
            c.config.display()
        );
    };
    anyhow::ensure!(
        c.nodes <= base.partitions as usize,
        "--nodes {} exceeds the config's {} partitions: some nodes would own none",
        c.nodes,
        base.partitions
    );
    require_reachable("Kafka", &k.brokers.joined())?;
    require_reachable("Cassandra", &s.nodes.join(","))?;
    let plugins = std::path::absolute(guests_dir(args)).context("plugins directory")?;
    anyhow::ensure!(
        plugins.join("noop.wasm").is_file(),
        "{} not found: it is built with the host (`cargo build --release -p kairos`), or pass --plugins DIR",
        plugins.join("noop.wasm").display()
    );
    println!(
        "cluster bench: {} nodes on {} ({} partitions, scheduler concurrency {} per node), Kafka {}, Cassandra {} (consistency {}), plugin noop from {}, {} cores",
        c.nodes,
        c.config.display(),
        base.partitions,
        base.scheduler.concurrency,
        k.brokers.joined(),
        s.nodes.join(","),
        s.consistency,
        plugins.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    // A scenario that ends incomplete (tasks that never finished) still prints its figures;
    // the next scenario runs anyway, and the error is returned at the end.
    let mut failed = Vec::new();
    let mut previous: Option<f64> = None;
    for i in 1..=c.warmup {
        println!(
            "\n=== warm-up run {i} (at most {}; figures discarded; --warmup 0 skips) ===",
            c.warmup
        );
        let mut run = BenchCluster::start(args, &base_text, &plugins, "warmup").await?;
        let r = throughput(&mut run, args).await;
        run.teardown().await;
        let rate = r.context("cluster warm-up run")?;
        if previous.is_some_and(|p| (rate - p).abs() <= WARM_WITHIN * p) {
            println!("warm: {rate:.0} tasks/s is within 5 % of the run before");
            break;
        }
        previous = Some(rate);
    }
    if c.warmup > 0 {
        println!("\n=== measured runs ===");
    }
    if throughput_run {
        let mut run = BenchCluster::start(args, &base_text, &plugins, "throughput").await?;
        let r = throughput(&mut run, args).await;
        run.teardown().await;
        if let Err(e) = r {
            failed.push(format!("cluster throughput: {e:#}"));
        }
    }
    if steady_run {
        let mut run = BenchCluster::start(args, &base_text, &plugins, "steady").await?;
        let r = steady(&mut run, args).await;
        run.teardown().await;
        if let Err(e) = r {
            failed.push(format!("cluster steady: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// Fails clearly (instead of the nodes' endless wait) when no address of `list` answers.
fn require_reachable(what: &str, list: &str) -> anyhow::Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    for hp in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let hp = hp.rsplit_once("://").map_or(hp, |(_, rest)| rest);
        let Ok(addrs) = hp.to_socket_addrs() else {
            continue;
        };
        for a in addrs {
            if TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok() {
                return Ok(());
            }
        }
    }
    bail!(
        "{what} is not reachable at {list}: start it (`scripts/services up`) or run `scripts/bench-cluster`"
    )
}

/// A unique, CQL- and Kafka-safe name part.
fn unique() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000_000);
    format!("{}_{ms}", std::process::id())
}

/// The config text of one run: `base` with a fresh keyspace, topic and group, the schema
/// created at start, and no declared schedules (they would add tasks of their own).
fn run_config(base: &str, id: &str) -> anyhow::Result<String> {
    let mut t: toml::Table = base.parse().context("parsing the cluster config")?;
    t.remove("schedule");
    let section = |t: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match t.remove(name) {
            Some(toml::Value::Table(s)) => Ok(s),
            Some(_) => bail!("`{name}` is not a table"),
            None => Ok(toml::Table::new()),
        }
    };
    let mut queue = section(&mut t, "queue")?;
    queue.insert("topic".into(), format!("kairos.bench.{id}").into());
    queue.insert("group".into(), format!("kairos-bench-{id}").into());
    queue.insert("create_topic".into(), true.into());
    t.insert("queue".into(), queue.into());
    let mut store = section(&mut t, "store")?;
    store.insert("keyspace".into(), format!("kbench_{id}").into());
    store.insert("migrate_on_start".into(), true.into());
    t.insert("store".into(), store.into());
    let text = toml::to_string(&t).context("writing the run's config")?;
    Config::parse(&text).context("the generated config is invalid")?;
    Ok(text)
}

/// One running cluster: its config, store, producer and nodes.
struct BenchCluster {
    cfg: Config,
    kafka: KafkaSection,
    store: Option<Arc<CassandraStore>>,
    intake: Option<Arc<KafkaIntake>>,
    nodes: Nodes,
    /// Local Kafka and Cassandra processes, for the CPU split.
    services: Vec<(&'static str, u32)>,
}

impl BenchCluster {
    /// The ids the tasks get: the API's (naming their home), unless `--plain-ids`.
    fn ids(&self, args: &BenchArgs) -> TaskIds {
        match &self.cfg.store {
            StoreConfig::Cassandra(c) if !args.cluster.plain_ids => TaskIds::Homed {
                bucket_ms: c.bucket_ms,
            },
            _ => TaskIds::Plain,
        }
    }

    async fn start(
        args: &BenchArgs,
        base: &str,
        plugins: &Path,
        scenario: &str,
    ) -> anyhow::Result<BenchCluster> {
        let dir = std::path::absolute(args.data.join(format!("cluster-{scenario}")))
            .context("data directory")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = unique();
        let text = run_config(base, &id)?;
        let file = dir.join("cluster.toml");
        std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        let mut cfg = Config::parse(&text)?;
        cfg.node_id = format!("bench-producer-{id}");
        let (QueueConfig::Kafka(kafka), StoreConfig::Cassandra(cass)) =
            (cfg.queue.clone(), cfg.store.clone())
        else {
            bail!("not a cluster config");
        };
        let mut run = BenchCluster {
            cfg,
            kafka,
            store: None,
            intake: None,
            nodes: Nodes::default(),
            services: service_pids(),
        };
        match run
            .bring_up(args.cluster.nodes, &cass, &file, &dir, plugins)
            .await
        {
            Ok(()) => Ok(run),
            Err(e) => {
                if !run.nodes.procs.is_empty() {
                    eprintln!("node logs:\n{}", run.nodes.log_tails(20));
                }
                run.teardown().await;
                Err(e.context(format!("starting the {scenario} cluster")))
            }
        }
    }

    async fn bring_up(
        &mut self,
        nodes: usize,
        cass: &CassandraSection,
        file: &Path,
        dir: &Path,
        plugins: &Path,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        // Keyspace and topic first, so the nodes do not race to create them.
        self.store = Some(connect_cassandra(cass).await?);
        let kc = kafka_config(&self.cfg, &self.kafka);
        self.intake = Some(Arc::new(connect_intake(&kc).await?));
        println!(
            "\n[{}] keyspace {}, topic {}, group {}; starting {} nodes (logs: {}/node-N/node.log)",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cluster"),
            cass.keyspace,
            self.kafka.topic,
            self.kafka.group,
            nodes,
            dir.display()
        );
        // The nodes are the product binary, `kairos`, next to this one.
        let exe = std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("kairos");
        anyhow::ensure!(
            exe.is_file(),
            "{} not found: build it with `cargo build --release -p kairos`",
            exe.display()
        );
        self.nodes.wanted = nodes;
        for i in 1..=nodes {
            let data = dir.join(format!("node-{i}"));
            self.nodes
                .spawn(&exe, file, &format!("bench-{i}"), &data, plugins)?;
        }
        self.wait_ready(Duration::from_secs(120)).await?;
        self.wait_balanced(Duration::from_secs(120)).await?;
        println!(
            "cluster up after {:.1} s: partitions per node {:?}",
            t0.elapsed().as_secs_f64(),
            self.owned().await?
        );
        Ok(())
    }

    fn store(&self) -> anyhow::Result<Arc<CassandraStore>> {
        self.store.clone().context("no store connection")
    }

    fn intake(&self) -> anyhow::Result<Arc<KafkaIntake>> {
        self.intake.clone().context("no Kafka producer")
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.nodes.check_alive()?;
            let up = get_all(self.nodes.bases(), "/healthz").await;
            if up.iter().all(Result::is_ok) {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "the nodes did not answer /healthz within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Partitions owned per node (`/healthz` → `partitions_owned`).
    async fn owned(&self) -> anyhow::Result<Vec<u64>> {
        get_all(self.nodes.bases(), "/healthz")
            .await
            .into_iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_str(&r?).context("/healthz is not JSON")?;
                Ok(v["partitions_owned"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    async fn wait_balanced(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let partitions = u64::from(self.cfg.partitions);
        loop {
            self.nodes.check_alive()?;
            let owned = self.owned().await.unwrap_or_default();
            if owned.len() == self.nodes.wanted
                && owned.iter().sum::<u64>() == partitions
                && owned.iter().all(|&o| o > 0)
            {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "the nodes did not share the {partitions} partitions within {timeout:?}: {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The nodes' task counters, summed.
    async fn counts(&self) -> anyhow::Result<(Counts, Vec<u64>)> {
        let mut sum = Counts::default();
        let mut per_node = Vec::new();
        for r in get_all(self.nodes.bases(), "/metrics").await {
            let c = Counts::parse(&r?);
            per_node.push(c.succeeded);
            sum.succeeded += c.succeeded;
            sum.retried += c.retried;
            sum.dead += c.dead;
        }
        Ok((sum, per_node))
    }

    /// Waits until the tasks `ids` (enqueued from `started` / `started_ms` on) are done. The
    /// nodes' succeeded counters are the signal; when they stop moving for [`VERIFY`], the
    /// tasks are read back from the store: a finish recorded by a lightweight transaction that
    /// timed out (and was applied anyway) is in the store but not in the metrics, and a task
    /// that never finishes is reported instead of being waited for forever. Gives up after
    /// [`STALL`] without progress in either. Prints progress every 10 s (and shows it on
    /// stderr as `label`).
    async fn wait_done(
        &mut self,
        ids: &[String],
        before: Counts,
        started: Instant,
        started_ms: Millis,
        label: &str,
    ) -> anyhow::Result<Done> {
        let target = before.succeeded + ids.len() as u64;
        let mut bar = Progress::new(label, Some(ids.len() as u64), "tasks");
        let mut progress = (0u64, 0usize, Instant::now());
        let mut checked: Option<Instant> = None;
        let mut shown = Instant::now();
        // Store checks: the tasks not seen finished yet (only those are read again), and the
        // latest attempt end among those that were.
        let mut pending: Vec<String> = ids.to_vec();
        let mut end_ms = started_ms;
        loop {
            self.nodes.check_alive()?;
            let (c, _) = self.counts().await?;
            bar.set((c.succeeded - before.succeeded).min(ids.len() as u64));
            if c.succeeded >= target {
                bar.finish();
                return Ok(Done {
                    secs: started.elapsed().as_secs_f64(),
                    counts: c.since(before),
                    uncounted: 0,
                    unfinished: Vec::new(),
                });
            }
            if c.succeeded > progress.0 {
                progress = (c.succeeded, progress.1, Instant::now());
            }
            if progress.2.elapsed() >= VERIFY && checked.is_none_or(|t| t.elapsed() >= VERIFY) {
                checked = Some(Instant::now());
                // What follows prints on stdout: off the terminal's bar line first.
                bar.clear();
                let recs = read_back(self.store()?, pending.clone()).await?;
                let mut unfinished = Vec::new();
                for (id, rec) in pending.iter().zip(&recs) {
                    match rec {
                        Some(r) if r.task.state.is_terminal() => {
                            let ended = r.attempts.iter().map(|a| a.ended_at).max();
                            end_ms = end_ms.max(ended.unwrap_or(r.task.updated_at));
                        }
                        Some(r) => unfinished.push((id.clone(), r.task.state.as_str())),
                        None => unfinished.push((id.clone(), "not in the store")),
                    }
                }
                pending = unfinished.iter().map(|(id, _)| id.clone()).collect();
                let finished = ids.len() - unfinished.len();
                let counted = (c.succeeded - before.succeeded) as usize;
                if unfinished.is_empty() {
                    bar.set(ids.len() as u64);
                    bar.finish();
                    println!(
                        "  store check: all {} finished; {} of them not counted in the nodes' metrics",
                        ids.len(),
                        finished.saturating_sub(counted)
                    );
                    return Ok(Done {
                        secs: (end_ms - started_ms) as f64 / 1000.0,
                        counts: c.since(before),
                        uncounted: finished.saturating_sub(counted),
                        unfinished: Vec::new(),
                    });
                }
                if finished > progress.1 {
                    progress = (progress.0, finished, Instant::now());
                }
                let mut states: Vec<(&str, usize)> = Vec::new();
                for (_, st) in &unfinished {
                    match states.iter_mut().find(|(s, _)| s == st) {
                        Some(e) => e.1 += 1,
                        None => states.push((st, 1)),
                    }
                }
                println!(
                    "  store check: {finished} of {} finished ({counted} counted in the metrics); not finished: {states:?}",
                    ids.len()
                );
                if progress.2.elapsed() >= STALL {
                    println!(
                        "  giving up: no progress for {STALL:?}; node logs:\n{}",
                        self.nodes.log_tails(10)
                    );
                    return Ok(Done {
                        secs: started.elapsed().as_secs_f64(),
                        counts: c.since(before),
                        uncounted: finished.saturating_sub(counted),
                        unfinished: unfinished
                            .into_iter()
                            .map(|(id, st)| (id, st.to_string()))
                            .collect(),
                    });
                }
            }
            if shown.elapsed() >= Duration::from_secs(10) {
                shown = Instant::now();
                bar.clear();
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "  {:>6.1} s: {} of {} succeeded ({} retries, {} dead)",
                    secs,
                    c.succeeded - before.succeeded,
                    ids.len(),
                    c.retried - before.retried,
                    c.dead - before.dead
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the nodes (SIGTERM, then SIGKILL after 30 s), then deletes the keyspace, the
    /// topic and the group. Best effort: problems are printed, not returned.
    async fn teardown(mut self) {
        let mut nodes = std::mem::take(&mut self.nodes);
        match tokio::task::spawn_blocking(move || nodes.stop()).await {
            Ok(exits) => {
                let bad: Vec<_> = exits.iter().filter(|(_, c)| *c != Some(0)).collect();
                if !bad.is_empty() {
                    println!("warning: nodes that did not exit cleanly on SIGTERM: {bad:?}");
                }
            }
            Err(e) => println!("warning: stopping the nodes: {e}"),
        }
        if let Some(store) = self.store.take()
            && let Err(e) = store.drop_keyspace().await
        {
            println!(
                "warning: dropping keyspace {}: {e}",
                store.options().keyspace
            );
        }
        self.intake.take();
        let kc = kafka_config(&self.cfg, &self.kafka);
        if let Err(e) = kairos_kafka::delete_topic_and_group(&kc).await {
            println!(
                "warning: deleting topic {} / group {}: {e}",
                self.kafka.topic, self.kafka.group
            );
        }
    }
}

/// `kairos_tasks_executed_total` by outcome.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    succeeded: u64,
    retried: u64,
    dead: u64,
}

/// How a wait for a run's tasks ended.
struct Done {
    /// From the first enqueue to the last finish.
    secs: f64,
    /// The nodes' counters over the run.
    counts: Counts,
    /// Finished in the store but not counted by the nodes' metrics.
    uncounted: usize,
    /// Never finished (id, state): empty unless the wait gave up.
    unfinished: Vec<(String, String)>,
}

impl Done {
    /// Fails when tasks never finished (after the figures were printed).
    fn check(&self) -> anyhow::Result<()> {
        if let Some((id, st)) = self.unfinished.first() {
            bail!(
                "{} tasks never finished (e.g. {id}: {st}); the figures above are incomplete",
                self.unfinished.len()
            );
        }
        Ok(())
    }

    fn notes(&self) -> String {
        let mut n = format!("{} retries, {} dead", self.counts.retried, self.counts.dead);
        if self.uncounted > 0 {
            n += &format!(
                "; {} finished in the store without being counted in the nodes' metrics (end time taken from the store)",
                self.uncounted
            );
        }
        if !self.unfinished.is_empty() {
            n += &format!("; INCOMPLETE: {} never finished", self.unfinished.len());
        }
        n
    }
}

impl Counts {
    fn since(self, before: Counts) -> Counts {
        Counts {
            succeeded: self.succeeded.saturating_sub(before.succeeded),
            retried: self.retried.saturating_sub(before.retried),
            dead: self.dead.saturating_sub(before.dead),
        }
    }

    fn parse(text: &str) -> Counts {
        let get = |outcome: &str| {
            let prefix = format!("kairos_tasks_executed_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        Counts {
            succeeded: get("succeeded"),
            retried: get("retry"),
            dead: get("dead"),
        }
    }
}

/// GET `path` from every base URL (blocking HTTP, off the async threads).
async fn get_all(bases: Vec<String>, path: &str) -> Vec<anyhow::Result<String>> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        bases
            .iter()
            .map(|b| {
                let url = format!("{b}{path}");
                agent
                    .get(&url)
                    .call()
                    .with_context(|| format!("GET {url}"))?
                    .into_string()
                    .with_context(|| format!("reading GET {url}"))
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| vec![Err(anyhow::anyhow!("HTTP thread failed: {e}"))])
}

struct NodeProc {
    name: String,
    child: Child,
    base: String,
    log: PathBuf,
}

/// The node processes; dropping it stops them (SIGTERM, then SIGKILL), so no error path
/// leaves a node behind.
#[derive(Default)]
struct Nodes {
    wanted: usize,
    procs: Vec<NodeProc>,
}

impl Nodes {
    fn spawn(
        &mut self,
        exe: &Path,
        config: &Path,
        name: &str,
        data: &Path,
        plugins: &Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let log_path = data.join("node.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let filter = std::env::var("KAIROS_BENCH_NODE_LOG")
            .unwrap_or_else(|_| "info,librdkafka=warn,wasmtime=warn,cranelift=warn".into());
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--node-id", name, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(data)
            .arg("--plugins")
            .arg(plugins)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        self.procs.push(NodeProc {
            name: name.to_string(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log_path,
        });
        Ok(())
    }

    fn bases(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.base.clone()).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!(
                    "node {} exited ({st}); its log:\n{}",
                    p.name,
                    tail(&p.log, 40)
                );
            }
        }
        Ok(())
    }

    fn log_tails(&self, n: usize) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({}) ---\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to every node, then waits; SIGKILL for those still running after 30 s.
    /// Returns each node's exit code (`None`: killed by a signal).
    fn stop(&mut self) -> Vec<(String, Option<i32>)> {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let sent = Command::new("kill")
                    .args(["-TERM", &p.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !sent.is_ok_and(|s| s.success()) {
                    let _ = p.child.kill();
                }
            }
        }
        let deadline = Instant::now() + NODE_STOP;
        let mut out = Vec::new();
        for mut p in self.procs.drain(..) {
            let code = loop {
                match p.child.try_wait() {
                    Ok(Some(st)) => break st.code(),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = p.child.kill();
                        break p.child.wait().ok().and_then(|s| s.code());
                    }
                }
            };
            out.push((p.name, code));
        }
        out
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if !self.procs.is_empty() {
            self.stop();
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// CPU time (clock ticks, USER_HZ) of the machine and of every process, to show where the
/// time of a run went.
struct Cpu {
    busy: u64,
    total: u64,
    /// pid -> (command name, utime + stime)
    procs: HashMap<u32, (String, u64)>,
    nodes: Vec<u32>,
    services: Vec<(&'static str, u32)>,
    me: u32,
}

/// The local Kafka and Cassandra JVMs, found by their main class (none when they run
/// elsewhere): their CPU time is reported on its own.
fn service_pids() -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        for arg in cmd.split(|b| *b == 0) {
            match arg {
                b"org.apache.cassandra.service.CassandraDaemon" => out.push(("Cassandra", pid)),
                b"kafka.Kafka" => out.push(("Kafka", pid)),
                _ => continue,
            }
            break;
        }
    }
    out.sort();
    out
}

/// (command name, utime + stime) of `/proc/PID/stat` (fields 2, 14 and 15).
fn proc_stat(pid: &str) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        name,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

impl Cpu {
    fn sample(nodes: &[u32], services: &[(&'static str, u32)]) -> Cpu {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("cpu "))?.to_string();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((total - idle.min(total), total))
            })
            .unwrap_or((0, 0));
        let procs = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| {
                        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                        Some((pid, proc_stat(&pid.to_string())?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Cpu {
            busy,
            total,
            procs,
            nodes: nodes.to_vec(),
            services: services.to_vec(),
            me: std::process::id(),
        }
    }

    /// CPU seconds of `pid` between `self` and `later`.
    fn secs(&self, later: &Cpu, pid: u32) -> f64 {
        let t = |c: &Cpu| c.procs.get(&pid).map_or(0, |p| p.1);
        t(later).saturating_sub(t(self)) as f64 / 100.0
    }

    /// Seconds of CPU per process (group) between `self` and `later`.
    fn report(&self, later: &Cpu) -> String {
        let nodes: Vec<f64> = self.nodes.iter().map(|p| self.secs(later, *p)).collect();
        let nodes_sum: f64 = nodes.iter().sum();
        let services: Vec<(&str, f64)> = self
            .services
            .iter()
            .map(|(name, p)| (*name, self.secs(later, *p)))
            .collect();
        let services_sum: f64 = services.iter().map(|(_, s)| s).sum();
        let me = self.secs(later, self.me);
        let busy = later.busy.saturating_sub(self.busy) as f64 / 100.0;
        let total = later.total.saturating_sub(self.total) as f64 / 100.0;
        // The biggest other consumers alive at both samples.
        let known: Vec<u32> = self
            .nodes
            .iter()
            .chain(self.services.iter().map(|(_, p)| p))
            .chain([&self.me])
            .copied()
            .collect();
        let mut others: Vec<(f64, String)> = later
            .procs
            .iter()
            .filter(|(pid, _)| !known.contains(pid))
            .map(|(pid, (name, _))| (self.secs(later, *pid), format!("{name} ({pid})")))
            .filter(|(s, _)| *s >= 0.5)
            .collect();
        others.sort_by(|a, b| b.0.total_cmp(&a.0));
        let others = others
            .iter()
            .take(4)
            .map(|(s, n)| format!("{n} {s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ");
        let parts = nodes
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(" + ");
        let services = services
            .iter()
            .map(|(name, s)| format!("{name} {s:.1} s, "))
            .collect::<String>();
        format!(
            "CPU: nodes {parts} = {nodes_sum:.1} s, {services}bench (producer, polling) {me:.1} s, other processes {:.1} s{}; machine busy {busy:.1} of {total:.1} core-s ({:.0}%)",
            (busy - nodes_sum - services_sum - me).max(0.0),
            if others.is_empty() {
                String::new()
            } else {
                format!(" ({others})")
            },
            if total > 0.0 {
                busy / total * 100.0
            } else {
                0.0
            }
        )
    }
}

/// What was read back from the store for a sample of tasks.
struct Lateness {
    /// start − due of each first attempt, sorted.
    ms: Vec<i64>,
    sampled: usize,
    missing: usize,
    not_succeeded: usize,
    reattempted: usize,
    read_secs: f64,
}

/// An even sample of `ids` (every k-th), at most `max` (0 = all).
fn sample(ids: &[String], max: usize) -> Vec<String> {
    if max == 0 || ids.len() <= max {
        return ids.to_vec();
    }
    let step = ids.len().div_ceil(max);
    ids.iter().step_by(step).cloned().collect()
}

/// Every task of `ids` from the store (64 reads at a time), in order.
async fn read_back(
    store: Arc<CassandraStore>,
    ids: Vec<String>,
) -> anyhow::Result<Vec<Option<TaskRecord>>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(64) {
        let mut reads = tokio::task::JoinSet::new();
        for (i, id) in chunk.iter().enumerate() {
            let (store, id) = (store.clone(), id.clone());
            reads.spawn(async move { (i, store.get(&id).await) });
        }
        let mut got: Vec<Option<TaskRecord>> = vec![None; chunk.len()];
        while let Some(r) = reads.join_next().await {
            let (i, rec) = r.context("store read task")?;
            got[i] = rec.context("reading a task back from Cassandra")?;
        }
        out.extend(got);
    }
    Ok(out)
}

async fn lateness(store: Arc<CassandraStore>, ids: Vec<String>) -> anyhow::Result<Lateness> {
    let t0 = Instant::now();
    let recs = read_back(store, ids).await?;
    let mut out = Lateness {
        ms: Vec::with_capacity(recs.len()),
        sampled: recs.len(),
        missing: 0,
        not_succeeded: 0,
        reattempted: 0,
        read_secs: 0.0,
    };
    for rec in recs {
        let Some(rec) = rec else {
            out.missing += 1;
            continue;
        };
        if rec.task.state != TaskState::Succeeded {
            out.not_succeeded += 1;
        }
        if rec.attempts.len() > 1 {
            out.reattempted += 1;
        }
        match rec.attempts.iter().min_by_key(|a| a.number) {
            Some(a) => out.ms.push(a.started_at - rec.task.due_at),
            None => out.missing += 1,
        }
    }
    out.ms.sort_unstable();
    out.read_secs = t0.elapsed().as_secs_f64();
    Ok(out)
}

fn print_lateness(name: &str, total: usize, l: &Lateness) {
    println!("\n| lateness scenario | tasks | p50 | p99 | max |\n|---|---|---|---|---|");
    report_lateness(name, &l.ms);
    println!(
        "(read back from Cassandra in {:.1} s: {} of {total} tasks, an even sample; {} without a stored attempt, {} not succeeded, {} with more than one attempt; p90 {} ms)",
        l.read_secs,
        l.sampled,
        l.missing,
        l.not_succeeded,
        l.reattempted,
        percentile(&l.ms, 0.9)
    );
}

fn new_tasks(
    range: std::ops::Range<usize>,
    prefix: &str,
    keys: usize,
    (due, now): (i64, i64),
    partitions: u32,
    ids: TaskIds,
) -> Vec<NewTask> {
    range
        .map(|i| {
            let t = task(format!("{prefix}{}", i % keys), due, now, partitions);
            NewTask {
                id: ids.new_id(t.partition, t.due_at),
                ..t
            }
        })
        .collect()
}

/// Counts the records the brokers did not acknowledge; fails on any.
fn check_acks(results: Vec<Result<(), String>>) -> anyhow::Result<()> {
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} records not acknowledged by Kafka, first: {first}",
            failed.len()
        );
    }
    Ok(())
}

/// Returns the end-to-end rate, tasks/s.
async fn throughput(run: &mut BenchCluster, args: &BenchArgs) -> anyhow::Result<f64> {
    let tasks = args.tasks.unwrap_or(DEFAULT_TASKS);
    let keys = args.cluster.keys.unwrap_or(2_000);
    let partitions = run.cfg.partitions;
    let intake = run.intake()?;
    let (before, _) = run.counts().await?;
    let cpu0 = Cpu::sample(&run.nodes.pids(), &run.services);
    let now = system_now();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    let mut next = 0;
    let mut enqueued = Progress::new("cluster throughput: enqueued", Some(tasks as u64), "tasks");
    while next < tasks {
        let end = (next + ENQUEUE_BATCH).min(tasks);
        let batch = new_tasks(next..end, "k", keys, (now, now), partitions, run.ids(args));
        ids.extend(batch.iter().map(|t| t.id.clone()));
        check_acks(intake.submit(batch).await.context("producing to Kafka")?)?;
        next = end;
        enqueued.batch(next as u64);
    }
    enqueued.finish();
    let enqueued = started.elapsed();
    println!(
        "enqueued {tasks} tasks over {keys} keys in {:.2} s ({:.0} tasks/s, acknowledged by Kafka)",
        enqueued.as_secs_f64(),
        tasks as f64 / enqueued.as_secs_f64()
    );
    let done = run
        .wait_done(&ids, before, started, now, "cluster throughput: succeeded")
        .await?;
    let cpu1 = Cpu::sample(&run.nodes.pids(), &run.services);
    let (_, per_node) = run.counts().await?;
    let finished = tasks - done.unfinished.len();
    let rate = finished as f64 / done.secs;
    println!(
        "{finished} of {tasks} finished after {:.2} s; succeeded per node {per_node:?}; {}",
        done.secs,
        done.notes()
    );
    println!("{}", cpu0.report(&cpu1));
    println!("\n| cluster scenario | figure |\n|---|---|");
    println!(
        "| end-to-end throughput, {} nodes, {tasks} tasks over {keys} keys, noop plugin (first enqueue to last success){} | {rate:.0} tasks/s ({:.1} s) |",
        run.nodes.wanted,
        if done.unfinished.is_empty() {
            String::new()
        } else {
            format!(", INCOMPLETE: {} never finished", done.unfinished.len())
        },
        done.secs
    );
    let l = lateness(run.store()?, sample(&ids, args.cluster.sample)).await?;
    print_lateness(
        &format!("throughput run: {tasks} tasks all due at the first enqueue (queueing delay)"),
        tasks,
        &l,
    );
    done.check()?;
    Ok(rate)
}

async fn steady(run: &mut BenchCluster, args: &BenchArgs) -> anyhow::Result<()> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let keys = args.cluster.keys.unwrap_or(2_000);
    let partitions = run.cfg.partitions;
    let intake = run.intake()?;
    let (before, _) = run.counts().await?;
    let per_tick = (rate / 100).max(1);
    let ticks = args.seconds * 100;
    let cpu0 = Cpu::sample(&run.nodes.pids(), &run.services);
    let started_ms = system_now();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(per_tick * ticks as usize);
    // Every batch is produced by its own task, so a slow acknowledgement does not hold back
    // the next batch: the rate stays the offered rate.
    let mut sends = tokio::task::JoinSet::new();
    let mut enqueued = Progress::new(
        "cluster steady: enqueued",
        Some(ticks * per_tick as u64),
        "tasks",
    );
    let mut next = Instant::now();
    for i in 0..ticks as usize {
        let now = system_now();
        let batch = new_tasks(
            i * per_tick..(i + 1) * per_tick,
            "s",
            keys,
            (now + 50, now),
            partitions,
            run.ids(args),
        );
        ids.extend(batch.iter().map(|t| t.id.clone()));
        let intake = intake.clone();
        sends.spawn(async move { intake.submit(batch).await });
        while let Some(done) = sends.try_join_next() {
            check_acks(
                done.context("producer task")?
                    .context("producing to Kafka")?,
            )?;
        }
        // One batch every 10 ms: progress by time, not by batch.
        enqueued.set(ids.len() as u64);
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next.into()).await;
    }
    while let Some(done) = sends.join_next().await {
        check_acks(
            done.context("producer task")?
                .context("producing to Kafka")?,
        )?;
    }
    enqueued.finish();
    let offered = started.elapsed().as_secs_f64();
    println!(
        "enqueued {} tasks over {keys} keys in {offered:.2} s ({:.0} tasks/s offered, each due 50 ms after its enqueue)",
        ids.len(),
        ids.len() as f64 / offered
    );
    let done = run
        .wait_done(
            &ids,
            before,
            started,
            started_ms,
            "cluster steady: succeeded",
        )
        .await?;
    let cpu1 = Cpu::sample(&run.nodes.pids(), &run.services);
    let (_, per_node) = run.counts().await?;
    println!(
        "{} of {} finished {:.2} s after the first enqueue ({:.2} s after the last); succeeded per node {per_node:?}; {}",
        ids.len() - done.unfinished.len(),
        ids.len(),
        done.secs,
        done.secs - offered,
        done.notes()
    );
    println!("{}", cpu0.report(&cpu1));
    let l = lateness(run.store()?, sample(&ids, args.cluster.sample)).await?;
    print_lateness(
        &format!(
            "cluster steady {rate} tasks/s for {} s on {} nodes, due 50 ms after enqueue{}",
            args.seconds,
            run.nodes.wanted,
            if done.unfinished.is_empty() {
                String::new()
            } else {
                format!(" (INCOMPLETE: {} never finished)", done.unfinished.len())
            }
        ),
        ids.len(),
        &l,
    );
    done.check()
}
