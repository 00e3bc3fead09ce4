//! `kairos-bench`: end-to-end figures on the embedded default with the no-op plugin (a fresh
//! Wasm instance per task). Each scenario runs a real node in this process on a fresh data
//! directory; lateness is read back from the stored attempt history (start − due).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use kairos_core::model::{Backoff, Millis, NewTask};
use kairos_core::partition::partition_for;
use kairos_embedded::CommitStats;

use kairos::config::Config;
use kairos::enqueue::new_task_id;
use kairos::node::Node;
use kairos::progress::Progress;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which scenarios: throughput, due (the throughput issue's workload: all tasks due at one
    /// moment after they are enqueued), steady, burst, pending (RSS + restart), fair (another
    /// plugin's lateness while 150 tasks of one plugin spin), or all (embedded); disk (the
    /// data directory's fdatasync latency, the floor under the lateness figures);
    /// cluster-throughput, cluster-steady, or cluster (both; needs Kafka and Cassandra).
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Tasks in the throughput run [default: 200000; cluster: 20000].
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Repetitions of the embedded throughput run (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Steady rate for the lateness run, tasks/s [default: 5000; cluster: 2000], and its
    /// duration (also the disk probe's).
    #[arg(long)]
    pub rate: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Tasks due in the same second for the burst run.
    #[arg(long, default_value_t = 100_000)]
    pub burst: usize,
    /// Pending tasks for the memory and restart run.
    #[arg(long, default_value_t = 1_000_000)]
    pub pending: usize,
    /// Directory with `noop.wasm` (default: the test guests of the build that made this binary).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Embedded scenarios: the config the node starts from (its data directory, plugins
    /// directory and listen address are replaced) [default: the built-in defaults].
    #[arg(long)]
    pub embedded_config: Option<PathBuf>,
    /// Where the scratch data directories go.
    #[arg(long, default_value = "target/bench-data")]
    pub data: PathBuf,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

pub(crate) fn guests_dir(args: &BenchArgs) -> PathBuf {
    args.plugins
        .clone()
        .unwrap_or_else(|| PathBuf::from(kairos_runtime::TEST_GUESTS_DIR))
}

fn config(args: &BenchArgs, name: &str) -> anyhow::Result<Config> {
    let data = args.data.join(name);
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    let base = match &args.embedded_config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let mut cfg = Config {
        data_dir: data,
        plugins_dir: Some(guests_dir(args)),
        // The bench runs the test guests only.
        builtin_plugins: false,
        ..base
    };
    cfg.listen = "127.0.0.1:0".parse()?;
    // The bench enqueues far more than an API client would in one go.
    cfg.tasks.max_batch = 100_000;
    Ok(cfg)
}

pub(crate) fn task(key: String, due_at: Millis, now: Millis, partitions: u32) -> NewTask {
    NewTask {
        id: new_task_id(),
        partition: partition_for(&key, partitions),
        plugin: "noop".into(),
        pin_version: None,
        key,
        due_at,
        payload: "{}".into(),
        uniqueness_key: None,
        max_attempts: 3,
        backoff: Backoff::default(),
        park_on_dead: false,
        generation: 0,
        created_at: now,
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// This process's CPU time (user + system) and the bytes it caused to be written to storage,
/// from `/proc/self` (Linux; `None` elsewhere).
fn cpu_and_written() -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let written = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()?;
    // Clock ticks are 10 ms on Linux.
    Some((Duration::from_millis(ticks * 10), written))
}

/// Waits until `target` tasks succeeded on the node, showing that progress on stderr as
/// `label` (none without a label).
async fn wait_succeeded(
    node: &Node,
    target: u64,
    timeout: Duration,
    label: Option<&str>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut progress = label.map(|l| Progress::new(l, Some(target), "tasks"));
    loop {
        let done = node.metrics.succeeded.load(Relaxed);
        if let Some(p) = &mut progress {
            p.set(done.min(target));
        }
        if done >= target {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "only {done} of {target} tasks succeeded within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if let Some(p) = &mut progress {
        p.finish();
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The counters of the node's embedded store writer so far (`None` off the embedded store).
fn commit_stats(node: &Node) -> Option<CommitStats> {
    node.embedded.as_ref().map(|e| e.commit_stats())
}

/// `"; writer: N commits of M operations, apply A µs and commit C µs per task"` since `before`
/// (empty off the embedded store): the store writer thread's own share of each task, a figure
/// far less noisy than the whole process's CPU.
fn writer_since(node: &Node, before: Option<CommitStats>, tasks: usize) -> String {
    match (before, commit_stats(node)) {
        (Some(b), Some(a)) => {
            let commits = a.commits.saturating_sub(b.commits);
            let ops = a.ops.saturating_sub(b.ops);
            let per_task =
                |after: u64, before: u64| after.saturating_sub(before) as f64 / tasks.max(1) as f64;
            format!(
                "; writer: {commits} commits of {:.0} operations, apply {:.1} µs and commit {:.1} µs per task",
                ops as f64 / commits.max(1) as f64,
                per_task(a.apply_micros, b.apply_micros),
                per_task(a.commit_micros, b.commit_micros)
            )
        }
        _ => String::new(),
    }
}

/// `"N commits ≥ 50 ms (longest so far X ms)"` for the commits since `before` (empty off the
/// embedded store): a run with a slow commit waited for the disk (see `--scenario disk`).
fn stalls_since(node: &Node, before: Option<CommitStats>) -> String {
    match (before, commit_stats(node)) {
        (Some(b), Some(a)) => format!(
            "{} commits ≥ {} ms (longest so far {} ms)",
            a.slow_commits.saturating_sub(b.slow_commits),
            kairos_embedded::SLOW_COMMIT.as_millis(),
            a.max_commit_micros / 1000
        ),
        _ => String::new(),
    }
}

/// Start − due of every attempt-1 in the store, sorted.
async fn lateness(node: &Node, ids: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let rec = node.store.get(id).await?.context("task vanished")?;
        if let Some(a) = rec.attempts.first() {
            out.push(a.started_at - rec.task.due_at);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) fn report_lateness(name: &str, l: &[i64]) {
    println!(
        "| {name} | {} | {} ms | {} ms | {} ms |",
        l.len(),
        percentile(l, 0.5),
        percentile(l, 0.99),
        l.last().copied().unwrap_or(0)
    );
}

async fn throughput(args: &BenchArgs) -> anyhow::Result<()> {
    let tasks = args.tasks.unwrap_or(200_000);
    let mut rates = Vec::new();
    for run in 0..args.runs {
        let cfg = config(args, "throughput")?;
        let partitions = cfg.partitions;
        let node = Node::start(cfg).await?;
        let now = node.enqueuer.clock.now();
        let started = Instant::now();
        let keys = args.cluster.keys.unwrap_or(10_000).max(1);
        let label = format!("throughput run {}", run + 1);
        let mut enqueued = Progress::new(format!("{label}: enqueued"), Some(tasks as u64), "tasks");
        for chunk in (0..tasks).collect::<Vec<_>>().chunks(1_000) {
            let batch = chunk
                .iter()
                .map(|i| task(format!("k{}", i % keys), now, now, partitions))
                .collect();
            node.enqueuer.submit(batch).await?;
            enqueued.batch((chunk[0] + chunk.len()) as u64);
        }
        enqueued.finish();
        wait_succeeded(
            &node,
            tasks as u64,
            Duration::from_secs(600),
            Some(&format!("{label}: succeeded")),
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let rate = tasks as f64 / secs;
        println!(
            "throughput run {}: {tasks} tasks in {secs:.2} s = {rate:.0} tasks/s",
            run + 1,
        );
        rates.push(rate);
        node.shutdown().await;
    }
    print_median("end-to-end throughput", rates);
    Ok(())
}

/// Prints the median of `rates` (at least one) as a table row.
fn print_median(what: &str, mut rates: Vec<f64>) {
    rates.sort_by(f64::total_cmp);
    println!(
        "| {what} (median of {}) | {:.0} tasks/s |",
        rates.len(),
        rates[rates.len() / 2]
    );
}

/// Enqueues `count` tasks, `make(i, now)` for `i` in `0..count`, in batches of `batch`,
/// showing progress as `label`; returns their ids. Fails with `too_slow` unless the last
/// batch was accepted before `deadline` (the moment the tasks are due).
async fn enqueue_before(
    node: &Node,
    label: &str,
    (count, batch): (usize, usize),
    deadline: Millis,
    too_slow: &str,
    make: impl Fn(usize, Millis) -> NewTask,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    let mut enqueued = Progress::new(label, Some(count as u64), "tasks");
    for chunk in (0..count).collect::<Vec<_>>().chunks(batch) {
        let now = node.enqueuer.clock.now();
        let tasks: Vec<NewTask> = chunk.iter().map(|&i| make(i, now)).collect();
        ids.extend(tasks.iter().map(|t| t.id.clone()));
        node.enqueuer.submit(tasks).await?;
        enqueued.batch(ids.len() as u64);
    }
    enqueued.finish();
    anyhow::ensure!(node.enqueuer.clock.now() < deadline, "{too_slow}");
    Ok(ids)
}

/// The throughput issue's workload: `--tasks` (default 20,000) no-op tasks over `--keys`
/// (default 1,000), all due at one moment 3 s after the first is enqueued; the figure is
/// completed tasks per second from that moment until the last one succeeded, with the
/// lateness of their starts. Enqueueing is outside the measured time (it must end before the
/// due moment).
async fn due(args: &BenchArgs) -> anyhow::Result<()> {
    const LEAD_MS: Millis = 3_000;
    let tasks = args.tasks.unwrap_or(20_000).max(1);
    let keys = args.cluster.keys.unwrap_or(1_000).max(1);
    let mut rates = Vec::new();
    for run in 0..args.runs {
        let cfg = config(args, "due")?;
        let partitions = cfg.partitions;
        let node = Node::start(cfg).await?;
        let due_at = node.enqueuer.clock.now() + LEAD_MS;
        let label = format!("due run {}", run + 1);
        let ids = enqueue_before(
            &node,
            &format!("{label}: enqueued"),
            (tasks, 1_000),
            due_at,
            &format!("enqueueing {tasks} tasks took longer than {LEAD_MS} ms; run fewer"),
            |i, now| task(format!("k{}", i % keys), due_at, now, partitions),
        )
        .await?;
        let wait = (due_at - node.enqueuer.clock.now()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = cpu_and_written();
        let writer_before = commit_stats(&node);
        wait_succeeded(
            &node,
            tasks as u64,
            Duration::from_secs(600),
            Some(&format!("{label}: succeeded")),
        )
        .await?;
        let secs = (node.enqueuer.clock.now() - due_at).max(1) as f64 / 1000.0;
        let rate = tasks as f64 / secs;
        let costs = match (before, cpu_and_written()) {
            (Some((c0, w0)), Some((c1, w1))) => format!(
                "; CPU {:.1} µs and {:.1} KiB written per task",
                c1.saturating_sub(c0).as_secs_f64() * 1e6 / tasks as f64,
                w1.saturating_sub(w0) as f64 / 1024.0 / tasks as f64
            ),
            _ => String::new(),
        };
        let stalls = stalls_since(&node, writer_before);
        let writer = writer_since(&node, writer_before, tasks);
        let l = lateness(&node, &ids).await?;
        println!(
            "due run {}: {tasks} tasks over {keys} keys done {secs:.2} s after their due moment = {rate:.0} tasks/s; lateness p50 {} ms, p99 {} ms, max {} ms{costs}; {stalls}{writer}",
            run + 1,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0)
        );
        rates.push(rate);
        node.shutdown().await;
    }
    print_median(
        &format!("{tasks} tasks over {keys} keys due at one moment: completed/s"),
        rates,
    );
    Ok(())
}

async fn steady(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = config(args, "steady")?;
    let partitions = cfg.partitions;
    let node = Node::start(cfg).await?;
    let rate = args.rate.unwrap_or(5_000);
    let per_tick = (rate / 100).max(1);
    let ticks = args.seconds * 100;
    let mut ids = Vec::new();
    let mut enqueued = Progress::new("steady: enqueued", Some(ticks * per_tick as u64), "tasks");
    let stalls_before = commit_stats(&node);
    let mut next = Instant::now();
    for i in 0..ticks {
        let now = node.enqueuer.clock.now();
        let batch: Vec<NewTask> = (0..per_tick)
            .map(|j| {
                task(
                    format!("s{}", (i as usize * per_tick + j) % 5_000),
                    now + 50,
                    now,
                    partitions,
                )
            })
            .collect();
        ids.extend(batch.iter().map(|t| t.id.clone()));
        node.enqueuer.submit(batch).await?;
        // One batch every 10 ms: progress by time, not by batch.
        enqueued.set(ids.len() as u64);
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next.into()).await;
    }
    enqueued.finish();
    wait_succeeded(
        &node,
        ids.len() as u64,
        Duration::from_secs(120),
        Some("steady: succeeded"),
    )
    .await?;
    let stalls = stalls_since(&node, stalls_before);
    let l = lateness(&node, &ids).await?;
    report_lateness(
        &format!(
            "steady {rate} tasks/s for {} s, due 50 ms after enqueue; {stalls}",
            args.seconds
        ),
        &l,
    );
    node.shutdown().await;
    Ok(())
}

async fn burst(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = config(args, "burst")?;
    let partitions = cfg.partitions;
    let node = Node::start(cfg).await?;
    let now = node.enqueuer.clock.now();
    let second = (now / 1000 + 8) * 1000;
    let ids = enqueue_before(
        &node,
        "burst: enqueued",
        (args.burst, 5_000),
        second,
        "enqueueing the burst took longer than 8 s",
        |i, _| {
            task(
                format!("b{}", i % 20_000),
                second + (i as i64 % 1000),
                now,
                partitions,
            )
        },
    )
    .await?;
    let stalls_before = commit_stats(&node);
    wait_succeeded(
        &node,
        ids.len() as u64,
        Duration::from_secs(300),
        Some("burst: succeeded"),
    )
    .await?;
    let stalls = stalls_since(&node, stalls_before);
    let l = lateness(&node, &ids).await?;
    report_lateness(
        &format!("{} tasks due within the same second; {stalls}", args.burst),
        &l,
    );
    node.shutdown().await;
    Ok(())
}

async fn pending(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = config(args, "pending")?;
    let partitions = cfg.partitions;
    let rss_before = rss_mib();
    let node = Node::start(cfg.clone()).await?;
    let now = node.enqueuer.clock.now();
    let started = Instant::now();
    // Due in an hour and later: they stay pending for the whole run.
    let mut enqueued = Progress::new("pending: enqueued", Some(args.pending as u64), "tasks");
    for chunk in (0..args.pending).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| {
                task(
                    format!("p{}", i % 100_000),
                    now + 3_600_000 + *i as i64,
                    now,
                    partitions,
                )
            })
            .collect();
        node.enqueuer.submit(batch).await?;
        enqueued.batch((chunk[0] + chunk.len()) as u64);
    }
    enqueued.finish();
    let enqueue_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "| RSS with {} tasks pending | {:.0} MiB (process start: {rss_before:.0} MiB; window holds {} tasks; enqueue took {enqueue_secs:.1} s = {:.0} tasks/s) |",
        args.pending,
        rss_mib(),
        node.metrics.window_total(),
        args.pending as f64 / enqueue_secs
    );
    node.shutdown().await;

    // Restart: a fresh store filled directly with `pending` overdue tasks (as if the node had
    // been down for an hour), then the time from starting a node to its first execution.
    let cfg = config(args, "restart")?;
    {
        use kairos_core::store::TaskStore;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let store = kairos_embedded::EmbeddedStore::open(&cfg.store_path(), Default::default())?;
        let now = kairos_core::clock::system_now();
        let mut stored = Progress::new(
            "restart: stored (overdue)",
            Some(args.pending as u64),
            "tasks",
        );
        for chunk in (0..args.pending).collect::<Vec<_>>().chunks(10_000) {
            let batch = chunk
                .iter()
                .map(|i| {
                    task(
                        format!("r{}", i % 100_000),
                        now - 3_600_000 + *i as i64 / 1_000,
                        now,
                        partitions,
                    )
                })
                .collect();
            store.enqueue(batch).await?;
            stored.batch((chunk[0] + chunk.len()) as u64);
        }
        stored.finish();
    }
    let t0 = Instant::now();
    let node = Node::start(cfg).await?;
    let ready = t0.elapsed();
    wait_succeeded(&node, 1, Duration::from_secs(120), None).await?;
    let first = t0.elapsed();
    println!(
        "| restart to first execution with {} tasks pending (all overdue) | {:.0} ms (node ready after {:.0} ms) |",
        args.pending,
        first.as_secs_f64() * 1000.0,
        ready.as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "| RSS 3 s into working off {} overdue tasks | {:.0} MiB |",
        args.pending,
        rss_mib()
    );
    node.shutdown().await;
    Ok(())
}

/// 150 tasks of the hostile plugin spin (each until its 10 s deadline); meanwhile the noop
/// plugin gets 25 tasks/s, each due 50 ms after it is enqueued, for `--seconds` (at most 8).
async fn fair(args: &BenchArgs) -> anyhow::Result<()> {
    let mut cfg = config(args, "fair")?;
    cfg.plugin
        .entry("hostile".into())
        .or_default()
        .limits
        .timeout_ms = Some(10_000);
    let partitions = cfg.partitions;
    let slots = cfg.scheduler.concurrency;
    let node = Node::start(cfg).await?;
    let now = node.enqueuer.clock.now();
    let spinners: Vec<NewTask> = (0..150)
        .map(|i| NewTask {
            plugin: "hostile".into(),
            payload: r#"{"mode":"loop"}"#.into(),
            max_attempts: 1,
            ..task(format!("spin{i}"), now, now, partitions)
        })
        .collect();
    node.enqueuer.submit(spinners).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spinning = node.metrics.running.load(Relaxed);
    let mut ids = Vec::new();
    let ticks = args.seconds.min(8) * 25;
    let mut enqueued = Progress::new("fair: enqueued (noop)", Some(ticks), "tasks");
    let mut next = Instant::now();
    for i in 0..ticks {
        let now = node.enqueuer.clock.now();
        let t = task(format!("other{i}"), now + 50, now, partitions);
        ids.push(t.id.clone());
        node.enqueuer.submit(vec![t]).await?;
        enqueued.set(ids.len() as u64);
        next += Duration::from_millis(40);
        tokio::time::sleep_until(next.into()).await;
    }
    enqueued.finish();
    // The 150 spinners never succeed: the target counts only the noop tasks.
    wait_succeeded(
        &node,
        ids.len() as u64,
        Duration::from_secs(30),
        Some("fair: succeeded (noop)"),
    )
    .await?;
    let l = lateness(&node, &ids).await?;
    report_lateness(
        &format!(
            "noop at 25/s, due 50 ms after enqueue, while 150 hostile tasks spin ({spinning} of {slots} slots)"
        ),
        &l,
    );
    node.shutdown().await;
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.scenario.starts_with("cluster") {
        return crate::cluster::run(&args).await;
    }
    if args.scenario == "disk" {
        return crate::disk::run(&args).await;
    }
    let all = args.scenario == "all";
    println!("| scenario | figure |\n|---|---|");
    if all || args.scenario == "throughput" {
        throughput(&args).await?;
    }
    if all || args.scenario == "due" {
        due(&args).await?;
    }
    if all || ["steady", "burst", "fair"].contains(&args.scenario.as_str()) {
        println!("\n| lateness scenario | tasks | p50 | p99 | max |\n|---|---|---|---|---|");
    }
    if all || args.scenario == "steady" {
        steady(&args).await?;
    }
    if all || args.scenario == "burst" {
        burst(&args).await?;
    }
    if all || args.scenario == "fair" {
        fair(&args).await?;
    }
    if all || args.scenario == "pending" {
        pending(&args).await?;
    }
    Ok(())
}
