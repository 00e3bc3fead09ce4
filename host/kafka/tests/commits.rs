//! Persist before commit; restarts re-read only what was not committed; replays dedup.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::flaky::FlakyStore;
use common::*;
use kairos_kafka::{KafkaIntake, KafkaSource};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_after_the_store_persisted() {
    require_kafka();
    let topic = unique("persist-first");
    let parts = 3;
    let cfg = config(&topic, parts);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FlakyStore::new(store(&dir));
    store.down.store(true, Relaxed);

    let intake = KafkaIntake::connect(&cfg).await.expect("intake");
    let tasks: Vec<_> = (0..30).map(|i| task(&format!("k{i}"), i, parts)).collect();
    assert!(
        intake
            .submit(tasks)
            .await
            .expect("submit")
            .iter()
            .all(Result::is_ok)
    );
    let ends = end_offsets(&topic, parts);

    let rec = Recorder::new(store.clone());
    let source = KafkaSource::start(cfg.clone(), store.clone(), rec.clone())
        .await
        .expect("source");
    wait_for(
        "the store refused a few times",
        Duration::from_secs(30),
        || store.refused.load(Relaxed) >= 3 * parts as u64,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rec.persisted_count(), 0);
    assert_eq!(
        committed(&topic, &cfg.group, parts),
        vec![-1; parts as usize],
        "nothing committed while the store is down"
    );
    assert!(source.stats().store_retries > 0);

    store.down.store(false, Relaxed);
    wait_for(
        "all persisted once the store is back",
        Duration::from_secs(30),
        || rec.persisted_count() == 30,
    )
    .await;
    wait_for("committed", Duration::from_secs(20), || {
        committed(&topic, &cfg.group, parts) == ends
    })
    .await;
    assert!(rec.violations().is_empty(), "{:?}", rec.violations());
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rereads_only_uncommitted_records_and_replays_are_harmless() {
    require_kafka();
    let topic = unique("restart");
    let parts = 4;
    let cfg = config(&topic, parts);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    let intake = KafkaIntake::connect(&cfg).await.expect("intake");
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");

    // 100 through the intake, 10 plain records without an id (their id derives from the offset).
    let first: Vec<_> = (0..100)
        .map(|i| task(&format!("key-{}", i % 13), i, parts))
        .collect();
    assert!(
        intake
            .submit(first)
            .await
            .expect("submit")
            .iter()
            .all(Result::is_ok)
    );
    for i in 0..10 {
        let key = format!("plain-{i}");
        let value = format!(r#"{{"v":1,"plugin":"notify","key":"{key}","payload":{{"i":{i}}}}}"#);
        plain
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
    let rec1 = Recorder::new(store.clone());
    let s1 = KafkaSource::start(cfg.clone(), store.clone(), rec1.clone())
        .await
        .expect("source 1");
    wait_for("first 110 persisted", Duration::from_secs(60), || {
        rec1.persisted_count() == 110
    })
    .await;
    s1.shutdown().await;
    assert_eq!(
        committed(&topic, &cfg.group, parts),
        end_offsets(&topic, parts),
        "shutdown committed everything"
    );

    // Restart after 50 more: exactly the 50 new records are read.
    let more: Vec<_> = (100..150)
        .map(|i| task(&format!("key-{}", i % 13), i, parts))
        .collect();
    assert!(
        intake
            .submit(more)
            .await
            .expect("submit")
            .iter()
            .all(Result::is_ok)
    );
    let rec2 = Recorder::new(store.clone());
    let s2 = KafkaSource::start(cfg.clone(), store.clone(), rec2.clone())
        .await
        .expect("source 2");
    wait_for("50 new persisted", Duration::from_secs(60), || {
        rec2.persisted_count() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = s2.stats();
    assert_eq!(
        (st.consumed, st.created, st.duplicates),
        (50, 50, 0),
        "no re-delivery of committed records: {st:?}"
    );
    s2.shutdown().await;

    // Rewind the group to the start: every record is read again and deduplicated by id.
    let rewind: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", &cfg.group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(&topic, p as i32, Offset::Offset(0))
            .expect("tpl");
    }
    // The broker takes a moment to process the last member's LeaveGroup; until then it refuses
    // a commit from outside the group (UnknownMemberId).
    let t0 = std::time::Instant::now();
    while let Err(e) = rewind.commit(&tpl, CommitMode::Sync) {
        assert!(t0.elapsed() < Duration::from_secs(20), "rewind: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "group empty and rewound {:?} after the shutdown",
        t0.elapsed()
    );
    let rec3 = Recorder::new(store.clone());
    let s3 = KafkaSource::start(cfg.clone(), store.clone(), rec3.clone())
        .await
        .expect("source 3");
    // `consumed` counts a record when it is read, before the store answers and the pending
    // ones are handed over: wait for the handover too.
    wait_for(
        "replay consumed and handed over",
        Duration::from_secs(60),
        || {
            let st = s3.stats();
            st.consumed >= 160 && st.duplicates + st.created >= 160 && rec3.persisted_count() >= 160
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = s3.stats();
    assert_eq!(
        (st.created, st.duplicates),
        (0, 160),
        "replays create nothing: {st:?}"
    );
    // Duplicates still pending are handed over again: one of them may be the task of an
    // earlier, unanswered try (the scheduler's window ignores tasks it holds already).
    assert_eq!(
        rec3.persisted_count(),
        160,
        "pending duplicates are handed over"
    );
    s3.shutdown().await;
    for r in [&rec1, &rec2, &rec3] {
        assert!(r.violations().is_empty(), "{:?}", r.violations());
    }
}
