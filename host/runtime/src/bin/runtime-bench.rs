//! Benchmark of the Kairos plugin runtime; prints a markdown table.
//!
//! ```text
//! cargo run --release -p kairos-runtime --bin runtime-bench [-- --tasks N --runs R --swaps S]
//! ```
//!
//! - compile: `load_dir` of one standard plugin with no artifact cache (read, sha256,
//!   Cranelift compile, link check);
//! - cached load: the same from a warm on-disk artifact cache (deserialize);
//! - per task: the no-op guest, a fresh store and instance per task, tasks run one after the
//!   other on a current-thread tokio runtime (one core), median of R runs of N tasks;
//! - swap: a new version renamed into a watched directory until `resolve` returns its digest
//!   (debounce + read + hash + compile + swap), median of S swaps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_runtime::{
    BUILTIN_PLUGINS, HostServices, MemoryServices, RunOutcome, RunRequest, Runtime, RuntimeConfig,
    TaskInfo,
};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

const TEST_GUESTS_DIR: &str = env!("KAIROS_TEST_GUESTS_DIR");

struct Args {
    tasks: usize,
    runs: usize,
    swaps: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        tasks: 20_000,
        runs: 5,
        swaps: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            let v = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            Ok(v.parse()?)
        };
        match flag.as_str() {
            "--tasks" => a.tasks = value()?.max(1),
            "--runs" => a.runs = value()?.max(1),
            "--swaps" => a.swaps = value()?.max(1),
            other => anyhow::bail!("unknown argument {other} (expected --tasks, --runs, --swaps)"),
        }
    }
    Ok(a)
}

fn runtime(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
    let cfg = RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    };
    Runtime::new(
        cfg,
        Arc::new(MemoryServices::new()) as Arc<dyn HostServices>,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kairos-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory holding only `src` as `name.wasm`.
fn single(src: &Path, name: &str) -> anyhow::Result<TempDir> {
    single_bytes(&std::fs::read(src)?, name)
}

fn single_bytes(wasm: &[u8], name: &str) -> anyhow::Result<TempDir> {
    let dir = TempDir::new()?;
    std::fs::write(dir.path().join(format!("{name}.wasm")), wasm)?;
    Ok(dir)
}

fn timed_load(rt: &Runtime, dir: &Path, name: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let summary = rt.load_dir(dir);
    let took = start.elapsed();
    anyhow::ensure!(
        summary.loaded == [name],
        "loading {name} failed: {:?}",
        summary.errors
    );
    Ok(took)
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The bytes of `src` with a custom section appended: same guest, new digest.
fn variant(src: &[u8], tag: &str) -> Vec<u8> {
    let name = b"kairos-bench-variant";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    let mut bytes = src.to_vec();
    bytes.push(0);
    let mut len = content.len() as u32;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(b);
            break;
        }
        bytes.push(b | 0x80);
    }
    bytes.extend(content);
    bytes
}

fn noop_request(n: usize) -> RunRequest {
    RunRequest {
        task: TaskInfo {
            id: format!("bench-{n}"),
            key: "bench".into(),
            plugin: "noop".into(),
            attempt: 1,
            due_at_ms: 0,
            payload: "{}".into(),
            generation: 0,
        },
        pin_version: None,
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let guests = Path::new(TEST_GUESTS_DIR);
    let mut rows: Vec<(String, String)> = Vec::new();

    // Compile and cached load, per standard plugin (the copy built into the binary, written
    // to a directory).
    let cache = TempDir::new()?;
    for plugin in BUILTIN_PLUGINS {
        let name = plugin.name;
        let size = plugin.wasm.len();
        let dir = single_bytes(plugin.wasm, name)?;
        let compile: Vec<f64> = (0..3)
            .map(|_| timed_load(&*runtime(None)?, dir.path(), name).map(ms))
            .collect::<anyhow::Result<_>>()?;
        // Warm the cache, then measure loads that deserialize from it.
        timed_load(&*runtime(Some(cache.path().into()))?, dir.path(), name)?;
        let cached: Vec<f64> = (0..5)
            .map(|_| timed_load(&*runtime(Some(cache.path().into()))?, dir.path(), name).map(ms))
            .collect::<anyhow::Result<_>>()?;
        rows.push((
            format!("compile `{name}` ({} KiB), no cache", size / 1024),
            format!("{:.1} ms", median(compile)),
        ));
        rows.push((
            format!("load `{name}` from the on-disk cache"),
            format!("{:.2} ms", median(cached)),
        ));
    }

    // Per-task cost, one core.
    let rt = runtime(Some(cache.path().into()))?;
    let dir = single(&guests.join("noop.wasm"), "noop")?;
    timed_load(&rt, dir.path(), "noop")?;
    let one_core = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut per_task_us = Vec::new();
    one_core.block_on(async {
        for _ in 0..200 {
            rt.run(noop_request(0)).await;
        }
        for _ in 0..args.runs {
            let start = Instant::now();
            for n in 0..args.tasks {
                let report = rt.run(noop_request(n)).await;
                anyhow::ensure!(
                    matches!(report.outcome, RunOutcome::Success { .. }),
                    "noop task failed: {}",
                    report.outcome
                );
            }
            per_task_us.push(start.elapsed().as_secs_f64() * 1e6 / args.tasks as f64);
        }
        Ok(())
    })?;
    let runs = per_task_us
        .iter()
        .map(|u| format!("{u:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    let us = median(per_task_us);
    rows.push((
        format!(
            "no-op task, fresh instance per task, one core (median of {} × {} tasks; runs: {runs} µs)",
            args.runs, args.tasks
        ),
        format!("{us:.1} µs/task = {:.0} tasks/s", 1e6 / us),
    ));
    if let Some(rss) = rss_mib() {
        rows.push((
            "resident memory after the task runs".into(),
            format!("{rss:.0} MiB"),
        ));
    }

    // Hot swap latency.
    let swap_ms = {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let rt = runtime(Some(cache.path().into()))?;
        let original = std::fs::read(guests.join("hostile.wasm"))?;
        let dir = TempDir::new()?;
        let path = dir.path().join("swap.wasm");
        std::fs::write(&path, &original)?;
        timed_load(&rt, dir.path(), "swap")?;
        let run_id = std::process::id();
        multi.block_on(async {
            let cancel = CancellationToken::new();
            rt.spawn_watcher(dir.path().to_path_buf(), cancel.clone())?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut times = Vec::new();
            for i in 0..args.swaps {
                let bytes = variant(&original, &format!("{run_id}-{i}"));
                let digest = hex::encode(sha2::Sha256::digest(&bytes));
                let tmp = dir.path().join("swap.wasm.tmp");
                std::fs::write(&tmp, &bytes)?;
                let landed = Instant::now();
                std::fs::rename(&tmp, &path)?;
                loop {
                    if rt.resolve("swap", None).ok().as_deref() == Some(digest.as_str()) {
                        break;
                    }
                    anyhow::ensure!(
                        landed.elapsed() < Duration::from_secs(10),
                        "swap {i} not picked up"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                times.push(ms(landed.elapsed()));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            cancel.cancel();
            Ok::<_, anyhow::Error>(times)
        })?
    };
    let (min, max) = swap_ms
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    rows.push((
        format!(
            "file lands in the watched dir → new version serving (`hostile`, {} KiB, not cached; \
             median of {} swaps, min {min:.0} / max {max:.0} ms; includes the 100 ms debounce)",
            std::fs::metadata(guests.join("hostile.wasm"))?.len() / 1024,
            swap_ms.len()
        ),
        format!("{:.0} ms", median(swap_ms)),
    ));

    println!("| measurement | result |");
    println!("|---|---|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
    Ok(())
}
