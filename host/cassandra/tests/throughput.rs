//! Throughput of enqueue → fenced start → fenced finish against the local Cassandra. Starts
//! go through `TaskStore::start_attempt` (so through the store's claim batchers, one per
//! partition), `START_CONCURRENCY` of them in flight.
//! Ignored by default (it measures, it does not check):
//! `cargo test -p kairos-cassandra --release --test throughput -- --ignored --nocapture`
//! (needs `scripts/services up cassandra`). `KAIROS_BENCH_TASKS` sets the task count.

mod common;

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, stream};
use kairos_conformance::{T0, new_task_in, succeeded};
use kairos_core::model::{Millis, OrderPos};
use kairos_core::store::TaskStore;

const PARTITIONS: u32 = 16;
/// Starts in flight at once (as a scheduler with many free workers would have).
const START_CONCURRENCY: usize = 1_024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn enqueue_start_finish_throughput() {
    let n: usize = std::env::var("KAIROS_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (s, _guard) = common::fresh_store().await;
    let s = Arc::new(s);
    let mut leases = Vec::new();
    for p in 0..PARTITIONS {
        leases.push(s.acquire_lease(p, "bench").await.expect("acquire"));
    }

    let t = Instant::now();
    let batches: Vec<Vec<_>> = (0..n)
        .map(|i| new_task_in(i as u32 % PARTITIONS, &format!("k{}", i % 2_000), T0))
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|c| c.to_vec())
        .collect();
    stream::iter(batches)
        .map(|b| {
            let s = s.clone();
            async move { s.enqueue(b).await.expect("enqueue") }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let enq = t.elapsed();

    let t = Instant::now();
    let mut windows = Vec::new();
    for p in 0..PARTITIONS {
        let w = s
            .load_window(p, OrderPos::MIN, Millis::MAX, n)
            .await
            .expect("load_window");
        windows.push((p, w));
    }
    let load = t.elapsed();
    assert_eq!(windows.iter().map(|(_, w)| w.len()).sum::<usize>(), n);

    let t = Instant::now();
    let starts: Vec<_> = windows
        .iter()
        .flat_map(|(p, w)| w.iter().map(move |t| (*p, t.id.clone())))
        .collect();
    stream::iter(starts)
        .map(|(p, id)| {
            let (s, lease) = (s.clone(), leases[p as usize]);
            async move { s.start_attempt(&lease, &id, 1, T0).await.expect("claimed") }
        })
        .buffer_unordered(START_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let start = t.elapsed();

    let t = Instant::now();
    let finishes: Vec<_> = windows
        .iter()
        .flat_map(|(p, w)| w.iter().map(move |t| (*p, t.id.clone())))
        .collect();
    let done = common::succeeded_attempt(1);
    stream::iter(finishes)
        .map(|(p, id)| {
            let (s, lease, a) = (s.clone(), leases[p as usize], done.clone());
            async move {
                s.finish_attempt(&lease, &id, a, succeeded(None), T0 + 1)
                    .await
                    .expect("finish")
            }
        })
        .buffer_unordered(START_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let finish = t.elapsed();

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    let lwts = s.task_lwts();
    let total = enq + load + start + finish;
    println!(
        "tasks={n} enqueue={:.0}/s load_window={:.0}/s start_fenced={:.0}/s finish_fenced={:.0}/s \
         whole_lifecycle={:.0} tasks/s ({:.1}s) task_lwts={lwts} ({:.3} per task)",
        rate(enq),
        rate(load),
        rate(start),
        rate(finish),
        rate(total),
        total.as_secs_f64(),
        lwts as f64 / n as f64
    );
}
