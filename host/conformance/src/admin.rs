//! Cases: paused keys, schedules, plugin key-value state, listing, concurrency.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use kairos_core::model::{KvEntryMeta, ListFilter, Schedule, TaskState};

pub async fn paused_keys_set_clear_list<S: TaskStore>(s: S) {
    assert!(s.paused_keys().await.expect("list").is_empty());
    s.set_key_paused("b", true).await.expect("pause b");
    s.set_key_paused("a", true).await.expect("pause a");
    s.set_key_paused("a", true).await.expect("pause a again");
    let mut keys = s.paused_keys().await.expect("list");
    keys.sort();
    assert_eq!(keys, vec!["a", "b"]);
    s.set_key_paused("a", false).await.expect("resume a");
    s.set_key_paused("never-paused", false)
        .await
        .expect("resume unknown");
    assert_eq!(s.paused_keys().await.expect("list"), vec!["b"]);
}

fn schedule(name: &str, cron: &str) -> Schedule {
    Schedule {
        name: name.into(),
        cron: cron.into(),
        plugin: "chores".into(),
        key: format!("schedule-{name}"),
        payload: r#"{"x":1}"#.into(),
        timezone: Some("Europe/Berlin".into()),
        last_fired: None,
        created_at: T0,
    }
}

async fn sorted_schedules<S: TaskStore>(s: &S) -> Vec<Schedule> {
    let mut all = s.list_schedules().await.expect("list_schedules");
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

pub async fn schedules_put_get_list_delete<S: TaskStore>(s: S) {
    assert!(s.list_schedules().await.expect("list").is_empty());
    let s1 = schedule("nightly", "0 3 * * *");
    let mut s2 = schedule("hourly", "0 * * * *");
    s2.timezone = None;
    s.put_schedule(s1.clone()).await.expect("put");
    s.put_schedule(s2.clone()).await.expect("put");
    assert_eq!(
        s.get_schedule("nightly").await.expect("get"),
        Some(s1.clone())
    );
    assert_eq!(s.get_schedule("missing").await.expect("get"), None);
    assert_eq!(sorted_schedules(&s).await, vec![s2.clone(), s1.clone()]);

    s.mark_schedule_fired("nightly", T0).await.expect("fired");
    let replacement = schedule("nightly", "30 4 * * 1");
    s.put_schedule(replacement.clone()).await.expect("replace");
    assert_eq!(
        s.get_schedule("nightly").await.expect("get"),
        Some(replacement),
        "put replaces the whole schedule, last_fired included"
    );

    assert!(s.delete_schedule("nightly").await.expect("delete"));
    assert!(!s.delete_schedule("nightly").await.expect("delete again"));
    assert_eq!(s.get_schedule("nightly").await.expect("get"), None);
    assert_eq!(sorted_schedules(&s).await, vec![s2]);
}

async fn last_fired<S: TaskStore>(s: &S) -> Option<Millis> {
    s.get_schedule("every-minute")
        .await
        .expect("get")
        .expect("exists")
        .last_fired
}

pub async fn schedule_fired_only_moves_forward<S: TaskStore>(s: S) {
    s.put_schedule(schedule("every-minute", "* * * * *"))
        .await
        .expect("put");
    assert_eq!(last_fired(&s).await, None);
    s.mark_schedule_fired("every-minute", T0 + 60_000)
        .await
        .expect("mark");
    assert_eq!(last_fired(&s).await, Some(T0 + 60_000));
    s.mark_schedule_fired("every-minute", T0)
        .await
        .expect("mark older");
    assert_eq!(last_fired(&s).await, Some(T0 + 60_000), "never moves back");
    s.mark_schedule_fired("every-minute", T0 + 120_000)
        .await
        .expect("mark newer");
    assert_eq!(last_fired(&s).await, Some(T0 + 120_000));
    expect_not_found(
        s.mark_schedule_fired("gone", T0).await,
        "mark an unknown schedule",
    );
}

pub async fn kv_get_set_delete_scoped_per_plugin<S: TaskStore>(s: S) {
    assert_eq!(s.kv_get("p1", "a").await.expect("get"), None);
    s.kv_set("p1", "a", b"one".to_vec(), T0).await.expect("set");
    assert_eq!(
        s.kv_get("p1", "a").await.expect("get"),
        Some(b"one".to_vec())
    );
    assert_eq!(
        s.kv_get("p2", "a").await.expect("get"),
        None,
        "scoped per plugin"
    );
    s.kv_set("p2", "a", b"two".to_vec(), T0).await.expect("set");
    s.kv_set("p1", "a", b"uno".to_vec(), T0 + 1)
        .await
        .expect("overwrite");
    assert_eq!(
        s.kv_get("p1", "a").await.expect("get"),
        Some(b"uno".to_vec())
    );
    assert_eq!(
        s.kv_get("p2", "a").await.expect("get"),
        Some(b"two".to_vec())
    );
    s.kv_set("p1", "empty", Vec::new(), T0)
        .await
        .expect("set empty");
    assert_eq!(
        s.kv_get("p1", "empty").await.expect("get"),
        Some(Vec::new())
    );
    let binary: Vec<u8> = (0..=255).collect();
    s.kv_set("p1", "bin", binary.clone(), T0)
        .await
        .expect("set binary");
    assert_eq!(s.kv_get("p1", "bin").await.expect("get"), Some(binary));

    // Usage: keys plus values, per plugin; an overwrite counts once.
    let usage = |p: &'static str| {
        let s = &s;
        async move { s.kv_usage(p).await.expect("kv_usage") }
    };
    assert_eq!(usage("p1").await, (1 + 3) + 5 + (3 + 256));
    assert_eq!(usage("p2").await, 1 + 3);
    assert_eq!(usage("nobody").await, 0);

    assert!(s.kv_delete("p1", "a").await.expect("delete"));
    assert!(!s.kv_delete("p1", "a").await.expect("delete again"));
    assert_eq!(s.kv_get("p1", "a").await.expect("get"), None);
    assert_eq!(
        s.kv_get("p2", "a").await.expect("get"),
        Some(b"two".to_vec())
    );
    assert_eq!(usage("p1").await, 5 + (3 + 256));
    s.kv_set("p1", "bin", b"x".to_vec(), T0 + 2)
        .await
        .expect("shrink");
    assert_eq!(usage("p1").await, 5 + (3 + 1));
}

pub async fn kv_list_by_prefix_with_limit<S: TaskStore>(s: S) {
    for (plugin, key, value, at) in [
        ("p", "user:2", &b"22222"[..], T0 + 2),
        ("p", "user:1", b"111", T0 + 1),
        ("p", "user:10", b"1010", T0 + 3),
        ("p", "team:1", b"t", T0 + 4),
        ("p", "1x", b"x", T0 + 5),
        ("p1", "x", b"y", T0 + 6),
        ("q", "user:3", b"333", T0 + 7),
    ] {
        s.kv_set(plugin, key, value.to_vec(), at)
            .await
            .expect("set");
    }
    let meta = |key: &str, updated_at: Millis, size: u64| KvEntryMeta {
        key: key.into(),
        updated_at,
        size,
    };
    let users = s.kv_list("p", "user:", 10).await.expect("list");
    assert_eq!(
        users,
        vec![
            meta("user:1", T0 + 1, 3),
            meta("user:10", T0 + 3, 4),
            meta("user:2", T0 + 2, 5)
        ]
    );
    assert_eq!(s.kv_list("p", "user:", 2).await.expect("list"), users[..2]);
    let keys = |v: Vec<KvEntryMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.kv_list("p", "", 100).await.expect("list all")),
        vec!["1x", "team:1", "user:1", "user:10", "user:2"]
    );
    assert_eq!(
        keys(s.kv_list("p", "1", 100).await.expect("list")),
        vec!["1x"],
        "plugin `p1` does not leak into plugin `p`"
    );
    assert!(s.kv_list("p", "zzz", 10).await.expect("list").is_empty());
    assert_eq!(
        keys(s.kv_list("q", "", 10).await.expect("list")),
        vec!["user:3"]
    );

    s.kv_set("p", "user:1", b"1".to_vec(), T0 + 50)
        .await
        .expect("set");
    assert_eq!(
        s.kv_list("p", "user:1", 1).await.expect("list"),
        vec![meta("user:1", T0 + 50, 1)],
        "an overwrite updates size and updated_at"
    );
}

pub async fn list_filters_by_key_state_and_limit<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task("a", T0 + 20),
            new_task("a", T0),
            new_task("a", T0 + 10),
            new_task("b", T0 + 5),
            new_task("b", T0 + 15),
        ],
    )
    .await;
    run_attempt(&s, &t[2].id, succeeded(None)).await;
    let list = |key: Option<&str>, state: Option<TaskState>, limit: usize| {
        let filter = ListFilter {
            key: key.map(Into::into),
            state,
            limit,
            after: None,
        };
        let s = &s;
        async move {
            let got = s.list(&filter).await.expect("list");
            got.into_iter().map(|t| t.id).collect::<Vec<_>>()
        }
    };
    let id = |i: usize| t[i].id.clone();
    assert_eq!(
        list(None, None, 0).await,
        vec![id(1), id(3), id(2), id(4), id(0)]
    );
    assert_eq!(list(Some("a"), None, 0).await, vec![id(1), id(2), id(0)]);
    assert_eq!(
        list(None, Some(TaskState::Scheduled), 0).await,
        vec![id(1), id(3), id(4), id(0)]
    );
    assert_eq!(
        list(Some("a"), Some(TaskState::Succeeded), 0).await,
        vec![id(2)]
    );
    assert!(
        list(Some("b"), Some(TaskState::Succeeded), 0)
            .await
            .is_empty()
    );
    assert!(list(Some("zzz"), None, 0).await.is_empty());
    assert_eq!(list(None, None, 2).await, vec![id(1), id(3)]);
    assert_eq!(list(Some("b"), None, 1).await, vec![id(3)]);

    let many: Vec<_> = (0..120).map(|i| new_task("c", T0 + 1_000 + i)).collect();
    enqueue_all(&s, many).await;
    assert_eq!(
        list(Some("c"), None, 0).await.len(),
        100,
        "limit 0 means 100"
    );
    assert_eq!(list(None, None, 0).await.len(), 100);
    assert_eq!(list(None, None, 500).await.len(), 125);

    // Pages: each starts strictly after the last of the one before, keyed or not.
    for key in [None, Some("c")] {
        let whole = s
            .list(&ListFilter {
                key: key.map(Into::into),
                limit: 500,
                ..ListFilter::default()
            })
            .await
            .expect("list");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list(&ListFilter {
                    key: key.map(Into::into),
                    limit: 7,
                    after,
                    ..ListFilter::default()
                })
                .await
                .expect("list");
            let Some(last) = page.last() else { break };
            after = Some(last.order());
            paged.extend(page);
        }
        assert_eq!(ids(&paged), ids(&whole), "pages of {key:?}");
    }
    let scheduled_after = s
        .list(&ListFilter {
            state: Some(TaskState::Scheduled),
            after: Some(t[3].order()),
            limit: 2,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(&scheduled_after), [id(4).as_str(), id(0).as_str()]);
}

pub async fn concurrent_enqueues_get_distinct_increasing_seqs<S: TaskStore>(s: S) {
    const WRITERS: usize = 16;
    const CALLS: usize = 20;
    const BATCH: usize = 5;
    let s = Arc::new(s);
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for c in 0..CALLS {
                let batch = (0..BATCH)
                    .map(|i| {
                        new_task_in(
                            (w % 4) as u32,
                            &format!("w{w}"),
                            T0 + (c * BATCH + i) as i64,
                        )
                    })
                    .collect();
                seqs.extend(enqueue_all(&*s, batch).await.into_iter().map(|t| t.seq));
            }
            seqs
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        let seqs = h.await.expect("writer task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one caller's successive seqs increase"
        );
        all.extend(seqs);
    }
    assert_eq!(all.len(), WRITERS * CALLS * BATCH, "every seq is distinct");
    let mut stored = 0;
    for p in 0..4 {
        let w = window(&*s, p).await;
        assert!(w.windows(2).all(|x| x[0].order() < x[1].order()));
        stored += w.len();
    }
    assert_eq!(stored, WRITERS * CALLS * BATCH, "every task landed");
}
