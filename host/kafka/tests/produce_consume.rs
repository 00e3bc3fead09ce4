//! Producing through `KafkaIntake`, consuming with `KafkaSource` into the embedded store.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use kairos_core::model::ListFilter;
use kairos_core::partition::partition_for;
use kairos_core::store::TaskStore;
use kairos_kafka::{KafkaError, KafkaIntake, KafkaSource};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_records_are_persisted_then_committed_then_delivered() {
    require_kafka();
    let topic = unique("flow");
    let parts = 4;
    let cfg = config(&topic, parts);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);

    let intake = KafkaIntake::connect(&cfg).await.expect("intake");
    let tasks: Vec<_> = (0..400)
        .map(|i| task(&format!("incident-{}", i % 25), i, parts))
        .collect();
    let t0 = Instant::now();
    let results = intake.submit(tasks.clone()).await.expect("submit");
    eprintln!(
        "produced {} records (acks=all) in {:?}",
        tasks.len(),
        t0.elapsed()
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Every record is on partition_for(key) already: the broker acknowledged them.
    let ends = end_offsets(&topic, parts);
    let mut per_part = vec![0i64; parts as usize];
    for t in &tasks {
        per_part[partition_for(&t.key, parts) as usize] += 1;
    }
    assert_eq!(
        ends, per_part,
        "records per partition follow partition_for(key)"
    );

    let rec = Recorder::new(store.clone());
    let t1 = Instant::now();
    let source = KafkaSource::start(cfg.clone(), store.clone(), rec.clone())
        .await
        .expect("source");
    wait_for("all tasks persisted", Duration::from_secs(60), || {
        rec.persisted_count() == tasks.len()
    })
    .await;
    eprintln!(
        "consumed and persisted {} tasks in {:?}",
        tasks.len(),
        t1.elapsed()
    );
    assert_eq!(rec.owned(), (0..parts).collect());
    assert_eq!(source.owned(), (0..parts).collect::<Vec<_>>());
    wait_for("offsets committed", Duration::from_secs(20), || {
        committed(&topic, &cfg.group, parts) == ends
    })
    .await;

    // Same ids as the API answered, same partitions, per-key order kept (seq follows submit order).
    let mut by_id = HashMap::new();
    for t in rec.persisted.lock().unwrap().iter() {
        by_id.insert(t.id.clone(), t.clone());
    }
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for t in &tasks {
        let got = by_id.get(&t.id).expect("task persisted under its id");
        assert_eq!(got.partition, t.partition);
        assert_eq!(
            (got.key.as_str(), got.due_at, got.payload.as_str()),
            (t.key.as_str(), t.due_at, t.payload.as_str())
        );
        if let Some(prev) = last_seq.insert(t.key.clone(), got.seq) {
            assert!(got.seq > prev, "per-key order kept for {}", t.key);
        }
    }
    let listed = store
        .list(&ListFilter {
            limit: 10_000,
            after: None,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), tasks.len());
    let stats = source.stats();
    assert_eq!(
        (stats.consumed, stats.created, stats.malformed, stats.stray),
        (400, 400, 0, 0),
        "{stats:?}"
    );
    assert!(rec.violations().is_empty(), "{:?}", rec.violations());

    source.shutdown().await;
    assert!(rec.owned().is_empty(), "shutdown revokes every partition");
    assert_eq!(
        rec.events()
            .iter()
            .filter(|e| matches!(e, Ev::Revoked(_)))
            .count(),
        parts as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_producer_json_is_accepted_and_malformed_records_are_skipped() {
    require_kafka();
    let topic = unique("plain");
    let parts = 3;
    let cfg = config(&topic, parts);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    // Creates the topic.
    let _intake = KafkaIntake::connect(&cfg).await.expect("intake");

    // A plain producer, as any service would use: Kafka's Java-default partitioner (murmur2),
    // no explicit partition.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let records: Vec<(&str, String)> = vec![
        ("alpha", r#"{"v":1,"plugin":"notify","key":"alpha","due_at_ms":1800000000000,"payload":{"to":"ops"}}"#.into()),
        ("alpha", "this is not json".into()),
        ("beta", r#"{"v":1,"id":"ext-1","plugin":"notify","key":"beta","run_at":"2027-01-01T00:00:00Z","payload":[1,2],"uniqueness_key":"u-beta","max_attempts":7,"park_on_dead":true}"#.into()),
        ("beta", r#"{"v":2,"plugin":"notify","key":"beta"}"#.into()),
        ("gamma", r#"{"v":1,"key":"gamma"}"#.into()),
        ("gamma", r#"{"v":1,"plugin":"chores","key":"gamma","payload":"text","pin_version":"abc"}"#.into()),
        // Same uniqueness key as "ext-1": deduplicated by the store.
        ("beta", r#"{"v":1,"plugin":"notify","key":"beta","uniqueness_key":"u-beta"}"#.into()),
    ];
    for (key, value) in &records {
        let partition = producer
            .send(
                FutureRecord::to(&topic).key(*key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered")
            .partition;
        assert_eq!(
            partition as u32,
            partition_for(key, parts),
            "Kafka's murmur2 partitioner agrees with partition_for for {key}"
        );
    }

    let rec = Recorder::new(store.clone());
    let source = KafkaSource::start(cfg.clone(), store.clone(), rec.clone())
        .await
        .expect("source");
    let ends = end_offsets(&topic, parts);
    wait_for(
        "all records handled and committed",
        Duration::from_secs(60),
        || {
            committed(&topic, &cfg.group, parts)
                .iter()
                .zip(&ends)
                .all(|(c, e)| *e == 0 || c == e)
        },
    )
    .await;
    let stats = source.stats();
    assert_eq!(
        (
            stats.consumed,
            stats.created,
            stats.malformed,
            stats.duplicates
        ),
        (7, 3, 3, 1),
        "{stats:?}"
    );
    assert_eq!(stats.misrouted, 0);
    let beta = store
        .get("ext-1")
        .await
        .expect("get")
        .expect("ext-1 stored under its id")
        .task;
    assert_eq!(beta.due_at, 1_798_761_600_000);
    assert_eq!(
        (beta.payload.as_str(), beta.max_attempts, beta.park_on_dead),
        ("[1,2]", 7, true)
    );
    let alpha = store
        .list(&ListFilter {
            key: Some("alpha".into()),
            limit: 10,
            after: None,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(alpha.len(), 1);
    assert_eq!(alpha[0].payload, r#"{"to":"ops"}"#);
    assert!(
        uuid::Uuid::parse_str(&alpha[0].id).is_ok(),
        "derived id is a UUID"
    );
    let gamma = store
        .list(&ListFilter {
            key: Some("gamma".into()),
            limit: 10,
            after: None,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        (gamma[0].plugin.as_str(), gamma[0].payload.as_str()),
        ("chores", r#""text""#)
    );
    assert!(rec.violations().is_empty(), "{:?}", rec.violations());
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_murmur2_partitioner_agrees_with_partition_for() {
    require_kafka();
    let topic = unique("murmur");
    let parts = 7;
    let _intake = KafkaIntake::connect(&config(&topic, parts))
        .await
        .expect("intake");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for i in 0..300 {
        let key = format!("order-{i}-{}", "x".repeat(i % 5));
        let partition = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered")
            .partition;
        assert_eq!(partition as u32, partition_for(&key, parts), "key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_topic_with_another_partition_count_is_a_clear_error() {
    require_kafka();
    let topic = unique("mismatch");
    let _intake = KafkaIntake::connect(&config(&topic, 3))
        .await
        .expect("create with 3");
    let err = KafkaIntake::connect(&config(&topic, 5))
        .await
        .err()
        .expect("mismatch refused");
    assert!(
        matches!(
            err,
            KafkaError::PartitionMismatch {
                expected: 5,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("has 3 partitions"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    let rec = Recorder::new(store.clone());
    let err = KafkaSource::start(config(&topic, 5), store, rec)
        .await
        .err()
        .expect("source refuses too");
    assert!(matches!(err, KafkaError::PartitionMismatch { .. }), "{err}");
    let mut no_create = config(&unique("absent"), 2);
    no_create.create_topic = false;
    let err = KafkaIntake::connect(&no_create)
        .await
        .err()
        .expect("absent topic");
    assert!(matches!(err, KafkaError::NoTopic(_)), "{err}");
}
