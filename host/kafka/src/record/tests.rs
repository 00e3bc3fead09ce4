use super::*;

fn meta(partition: u32, key: Option<&[u8]>) -> RecordMeta<'_> {
    RecordMeta {
        topic: "t",
        partition,
        offset: 7,
        timestamp_ms: Some(1_000),
        message_key: key,
    }
}

fn task(key: &str, partitions: u32) -> NewTask {
    NewTask {
        id: "0190-abc".into(),
        partition: partition_for(key, partitions),
        plugin: "notify".into(),
        pin_version: Some("ab".repeat(32)),
        key: key.into(),
        due_at: 1_700_000_000_123,
        payload: r#"{"incident":42,"tags":["a"]}"#.into(),
        uniqueness_key: Some("u-1".into()),
        max_attempts: 5,
        backoff: Backoff {
            initial_ms: 10,
            max_ms: 20,
        },
        park_on_dead: true,
        generation: 0,
        created_at: 1_699_999_999_000,
    }
}

#[test]
fn encode_then_decode_is_identity() {
    let t = task("incident-42", 12);
    let bytes = encode(&t).expect("encode");
    let m = meta(t.partition, Some(t.key.as_bytes()));
    let d = decode(Some(&bytes), &m, 12, &RecordDefaults::default(), 0).expect("decode");
    assert_eq!(d.task, t);
    assert!(!d.misrouted);
}

#[test]
fn minimal_record_takes_defaults_and_the_record_timestamp() {
    let v = br#"{"v":1,"plugin":"notify","key":"k1","payload":{"a":1}}"#;
    let p = partition_for("k1", 4);
    let defaults = RecordDefaults::default();
    let d = decode(Some(v), &meta(p, Some(b"k1")), 4, &defaults, 99).expect("decode");
    assert_eq!(d.task.due_at, 1_000);
    assert_eq!(d.task.created_at, 1_000);
    assert_eq!(d.task.max_attempts, defaults.max_attempts);
    assert_eq!(d.task.backoff, defaults.backoff);
    assert_eq!(d.task.payload, r#"{"a":1}"#);
    assert_eq!(d.task.id, derived_id("t", p, 7));
    assert_eq!(d.task.id, derived_id("t", p, 7), "stable across reads");
    assert_ne!(d.task.id, derived_id("t", p, 8));
    assert!(uuid::Uuid::parse_str(&d.task.id).is_ok());
}

#[test]
fn run_at_is_rfc3339_and_payload_defaults_to_an_empty_object() {
    let v = br#"{"v":1,"plugin":"p","key":"k","run_at":"2026-01-02T03:04:05.5+01:00"}"#;
    let p = partition_for("k", 8);
    let d = decode(Some(v), &meta(p, None), 8, &RecordDefaults::default(), 0).expect("decode");
    assert_eq!(d.task.due_at, 1_767_319_445_500);
    assert_eq!(d.task.payload, "{}");
}

#[test]
fn misrouted_records_stay_on_the_partition_they_were_read_from() {
    let v = br#"{"v":1,"plugin":"p","key":"k","due_at_ms":5}"#;
    let right = partition_for("k", 8);
    let wrong = (right + 1) % 8;
    let d = decode(
        Some(v),
        &meta(wrong, None),
        8,
        &RecordDefaults::default(),
        0,
    )
    .expect("decode");
    assert!(d.misrouted);
    assert_eq!(d.task.partition, wrong);
}

#[test]
fn malformed_records_are_rejected_with_a_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"not json", "not a v1 task record"),
        (
            br#"{"v":2,"plugin":"p","key":"k"}"#,
            "unsupported record version",
        ),
        (br#"{"plugin":"p","key":"k"}"#, "missing field `v`"),
        (br#"{"v":1,"key":"k"}"#, "missing field `plugin`"),
        (
            br#"{"v":1,"plugin":"","key":"k"}"#,
            "`plugin` must not be empty",
        ),
        (
            br#"{"v":1,"plugin":"p","key":""}"#,
            "`key` must not be empty",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"k","due_at":5}"#,
            "unknown field `due_at`",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"k","due_at_ms":5,"run_at":"2026-01-01T00:00:00Z"}"#,
            "not both",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"k","run_at":"tomorrow"}"#,
            "RFC 3339",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"k","max_attempts":0}"#,
            "at least 1",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"k","id":""}"#,
            "`id` must have",
        ),
        (
            br#"{"v":1,"plugin":"p","key":"other"}"#,
            "differs from the record's `key`",
        ),
        (br#"[1,2]"#, "not a v1 task record"),
    ];
    for (value, why) in cases {
        let err = decode(
            Some(value),
            &meta(0, Some(b"k")),
            1,
            &RecordDefaults::default(),
            0,
        )
        .expect_err(&String::from_utf8_lossy(value));
        assert!(
            err.0.contains(why),
            "{:?}: {err}",
            String::from_utf8_lossy(value)
        );
    }
    let err =
        decode(None, &meta(0, None), 1, &RecordDefaults::default(), 0).expect_err("tombstone");
    assert!(err.0.contains("no value"));
    let limits = RecordDefaults {
        max_payload_bytes: 4,
        ..RecordDefaults::default()
    };
    let v = br#"{"v":1,"plugin":"p","key":"k","payload":"long text"}"#;
    assert!(decode(Some(v), &meta(0, None), 1, &limits, 0).is_err());
}

#[test]
fn encode_rejects_a_payload_that_is_not_json() {
    let mut t = task("k", 1);
    t.payload = "{oops".into();
    assert!(encode(&t).is_err());
}
