//! `kairos-bench --scenario disk`: how long the data directory's device takes to make a small
//! append durable, with nothing else running. Every start and end of a task waits for one
//! such `fdatasync` (one per group commit), so this latency is a floor under the lateness
//! figures: a task due while a sync is stalled starts after the stall, whatever the
//! scheduler does.
//!
//! The probe appends 4 KiB and calls `fdatasync`, then sleeps 2 ms, for `--seconds`, in a
//! file under `--data`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{BenchArgs, percentile};

/// Bytes appended before each sync (about one small group commit).
const APPEND: usize = 4096;
/// Pause between syncs (the embedded writer commits about this often at 10,000 tasks/s).
const PAUSE: Duration = Duration::from_millis(2);

/// Sync latencies of one probe run, sorted, in µs.
fn probe(path: &std::path::Path, seconds: u64) -> anyhow::Result<Vec<i64>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0x5au8; APPEND];
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut out = Vec::new();
    while Instant::now() < end {
        file.write_all(&block)
            .with_context(|| format!("writing {}", path.display()))?;
        let t = Instant::now();
        file.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
        out.push(i64::try_from(t.elapsed().as_micros()).unwrap_or(i64::MAX));
        std::thread::sleep(PAUSE);
    }
    out.sort_unstable();
    Ok(out)
}

/// The `p` percentile of sorted µs, in ms.
fn pct(sorted: &[i64], p: f64) -> f64 {
    percentile(sorted, p) as f64 / 1000.0
}

pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = args.data.join("disk");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("probe");
    let seconds = args.seconds;
    let probe_path = path.clone();
    let lat = tokio::task::spawn_blocking(move || probe(&probe_path, seconds))
        .await
        .context("the disk probe panicked")??;
    // Best effort: the file is scratch.
    let _ = std::fs::remove_file(&path);
    let over = |ms: i64| lat.iter().filter(|&&us| us >= ms * 1000).count();
    let stalled_ms: i64 = lat.iter().filter(|&&us| us >= 20_000).sum::<i64>() / 1000;
    println!(
        "\n| disk: 4 KiB append + fdatasync every 2 ms for {seconds} s in {} | syncs | p50 | p99 | p99.9 | max | ≥ 20 / 50 / 100 ms | time in syncs ≥ 20 ms |\n|---|---|---|---|---|---|---|---|",
        dir.display()
    );
    println!(
        "| | {} | {:.2} ms | {:.2} ms | {:.1} ms | {:.1} ms | {} / {} / {} | {} ms |",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
        over(20),
        over(50),
        over(100),
        stalled_ms
    );
    Ok(())
}
