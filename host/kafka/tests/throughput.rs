//! Producer and consumer throughput on this machine (prints figures; no thresholds).
//! `cargo test --release -p kairos-kafka --test throughput -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use kairos_core::model::Task;
use kairos_kafka::{KafkaIntake, KafkaSource, PartitionListener};

struct Count(AtomicUsize);

#[async_trait]
impl PartitionListener for Count {
    async fn assigned(&self, _: kairos_core::ownership::Lease) {}
    async fn revoked(&self, _: u32) {}
    async fn persisted(&self, tasks: Vec<Task>) {
        self.0.fetch_add(tasks.len(), Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn throughput() {
    require_kafka();
    let total: usize = std::env::var("KAIROS_KAFKA_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let parts = 16;
    let topic = unique("throughput");
    let cfg = config(&topic, parts);
    let intake = Arc::new(KafkaIntake::connect(&cfg).await.expect("intake"));

    // The API's shape: many concurrent requests of a few tasks each.
    for (batch, concurrency) in [(1usize, 1usize), (1, 64), (1, 256), (100, 8)] {
        let n = if concurrency == 1 { 500 } else { total / 2 };
        let t0 = Instant::now();
        let mut joins = Vec::new();
        for c in 0..concurrency {
            let intake = intake.clone();
            joins.push(tokio::spawn(async move {
                let mut i = c * batch;
                while i < n {
                    let tasks: Vec<_> = (i..(i + batch).min(n))
                        .map(|j| task(&format!("key-{}", j % 2000), j, parts))
                        .collect();
                    let r = intake.submit(tasks).await.expect("submit");
                    assert!(r.iter().all(Result::is_ok));
                    i += batch * concurrency;
                }
            }));
        }
        for j in joins {
            j.await.expect("producer");
        }
        let dt = t0.elapsed();
        eprintln!(
            "produce: {n} tasks, submit() of {batch} task(s) x {concurrency} concurrent: {dt:?} = {:.0} tasks/s",
            n as f64 / dt.as_secs_f64()
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let t0 = Instant::now();
    let source = KafkaSource::start(cfg.clone(), store, count.clone())
        .await
        .expect("source");
    let expected = 500 + (total / 2) * 3;
    wait_for("all consumed", Duration::from_secs(600), || {
        count.0.load(Relaxed) >= expected
    })
    .await;
    let dt = t0.elapsed();
    eprintln!(
        "consume+persist (embedded store, fsync per group commit) +commit: {expected} tasks in {dt:?} = {:.0} tasks/s; {:?}",
        expected as f64 / dt.as_secs_f64(),
        source.stats()
    );
    source.shutdown().await;
}
