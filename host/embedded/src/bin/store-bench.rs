//! Throughput of the embedded store on the scheduler's write path: per task one `enqueue`
//! (in batches of 1,000), one `start_attempt` and one `finish_attempt`, the latter two from many
//! concurrent tokio tasks, all durable (group-committed, fsynced).
//!
//! ```text
//! cargo run --release -p kairos-embedded --bin store-bench -- [--tasks 200000] [--workers 512]
//!     [--producers 4] [--runs 3] [--dir /path/on/the/disk/to/measure]
//! ```
//! Prints each run and the median of the runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_core::clock::system_now;
use kairos_core::model::{Attempt, AttemptOutcome, Backoff, NewTask, Transition};
use kairos_core::partition::partition_for;
use kairos_core::store::TaskStore;
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};
use tokio::sync::{Mutex, mpsc};

#[path = "common/proc_io.rs"]
mod proc_io;
use proc_io::written_bytes;

const BATCH: usize = 1_000;
const PARTITIONS: u32 = 16;
const KEYS: usize = 10_000;

struct Args {
    tasks: usize,
    workers: usize,
    producers: usize,
    runs: usize,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        tasks: 200_000,
        workers: 512,
        producers: 4,
        runs: 3,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--tasks" => a.tasks = num()?.max(BATCH),
            "--workers" => a.workers = num()?.max(1),
            "--producers" => a.producers = num()?.max(1),
            "--runs" => a.runs = num()?.max(1),
            "--dir" => a.dir = PathBuf::from(&value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn new_task(i: usize, now: i64) -> NewTask {
    let key = format!("incident-{}", i % KEYS);
    NewTask {
        id: uuid::Uuid::now_v7().to_string(),
        partition: partition_for(&key, PARTITIONS),
        plugin: "notify".into(),
        pin_version: None,
        key,
        due_at: now,
        payload: format!(r#"{{"incident":{i},"channel":"email","to":"oncall@example.com"}}"#),
        uniqueness_key: None,
        max_attempts: 5,
        backoff: Backoff::default(),
        park_on_dead: false,
        generation: 0,
        created_at: now,
    }
}

struct RunResult {
    elapsed: Duration,
    commits: u64,
    ops: u64,
    /// CPU time of the whole process and of the store's writer thread during the run.
    cpu: Option<(Duration, Duration)>,
    /// Bytes the process caused to be written to storage during the run.
    written: Option<u64>,
}

/// utime + stime of a `/proc/.../stat` file (Linux; clock ticks of 10 ms).
fn stat_cpu(path: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn writer_thread_cpu() -> Option<Duration> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "kairos-store-wr" {
            return stat_cpu(&entry.path().join("stat"));
        }
    }
    None
}

async fn run_once(args: &Args, run: usize) -> Result<RunResult, String> {
    let dir = args
        .dir
        .join(format!("kairos-store-bench-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let store = Arc::new(
        EmbeddedStore::open(&dir.join("bench-store"), EmbeddedOptions::default())
            .map_err(|e| e.to_string())?,
    );
    let mut leases = Vec::new();
    for p in 0..PARTITIONS {
        leases.push(
            store
                .acquire_lease(p, "store-bench")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let leases = Arc::new(leases);
    let (tx, rx) = mpsc::channel::<(String, u32)>(args.tasks);
    let rx = Arc::new(Mutex::new(rx));
    let batches = args.tasks / BATCH;
    let cpu_before = stat_cpu(std::path::Path::new("/proc/self/stat"));
    let written_before = written_bytes();
    let started = Instant::now();

    let mut producers = Vec::new();
    for p in 0..args.producers {
        let (store, tx) = (store.clone(), tx.clone());
        let stride = args.producers;
        producers.push(tokio::spawn(async move {
            for b in (p..batches).step_by(stride) {
                let now = system_now();
                let batch: Vec<_> = (0..BATCH).map(|i| new_task(b * BATCH + i, now)).collect();
                let ids: Vec<_> = batch.iter().map(|t| (t.id.clone(), t.partition)).collect();
                store.enqueue(batch).await.map_err(|e| e.to_string())?;
                for id in ids {
                    tx.send(id).await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    drop(tx);

    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let (store, rx, leases) = (store.clone(), rx.clone(), leases.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some((id, p)) = rx.lock().await.recv().await else {
                    return Ok::<_, String>(());
                };
                let lease = leases[p as usize];
                let at = system_now();
                store
                    .start_attempt(&lease, &id, 1, at)
                    .await
                    .map_err(|e| e.to_string())?;
                let attempt = Attempt {
                    number: 1,
                    started_at: at,
                    ended_at: system_now(),
                    outcome: AttemptOutcome::Succeeded,
                    error: None,
                    plugin_digest: None,
                    logs: None,
                };
                let done = Transition::Succeeded { output: None };
                store
                    .finish_attempt(&lease, &id, attempt, done, system_now())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    for h in producers.into_iter().chain(workers) {
        h.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    let cpu_after = stat_cpu(std::path::Path::new("/proc/self/stat"));
    let cpu = match (cpu_before, cpu_after, writer_thread_cpu()) {
        (Some(b), Some(a), Some(w)) => Some((a.saturating_sub(b), w)),
        _ => None,
    };
    let stats = store.commit_stats();
    drop(store);
    let written = written_bytes()
        .zip(written_before)
        .map(|(a, b)| a.saturating_sub(b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunResult {
        elapsed,
        commits: stats.commits,
        ops: stats.ops,
        cpu,
        written,
    })
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("store-bench: {e}");
            std::process::exit(2);
        }
    };
    let tasks = (args.tasks / BATCH) * BATCH;
    println!(
        "store-bench: {tasks} tasks (enqueue in batches of {BATCH} from {} producers, start + finish \
         from {} workers), {} runs, dir {}",
        args.producers,
        args.workers,
        args.runs,
        args.dir.display()
    );
    let mut rates = Vec::new();
    for run in 0..args.runs {
        match run_once(&args, run).await {
            Ok(r) => {
                let rate = tasks as f64 / r.elapsed.as_secs_f64();
                let per_task = |d: Duration| d.as_secs_f64() * 1e6 / tasks as f64;
                let cpu = r.cpu.map_or(String::new(), |(all, writer)| {
                    format!(
                        "  cpu/task {:.1}us (writer thread {:.1}us)",
                        per_task(all),
                        per_task(writer)
                    )
                });
                let io = r.written.map_or(String::new(), |w| {
                    format!("  written/task {:.1} KiB", w as f64 / 1024.0 / tasks as f64)
                });
                println!(
                    "run {}: {:.2}s  {:.0} tasks/s  {:.0} store writes/s  {} commits  {:.1} ops/commit{cpu}{io}  load {}",
                    run + 1,
                    r.elapsed.as_secs_f64(),
                    rate,
                    rate * 3.0,
                    r.commits,
                    r.ops as f64 / r.commits.max(1) as f64,
                    std::fs::read_to_string("/proc/loadavg")
                        .unwrap_or_default()
                        .split(' ')
                        .next()
                        .unwrap_or("?")
                );
                rates.push(rate);
            }
            Err(e) => {
                eprintln!("run {} failed: {e}", run + 1);
                std::process::exit(1);
            }
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "median: {median:.0} tasks/s ({:.0} durable store writes/s)",
        median * 3.0
    );
}
