//! Cases: enqueue, uniqueness, and the pending window.

use super::*;
use kairos_core::model::TaskState;

pub async fn enqueue_assigns_increasing_seq<S: TaskStore>(s: S) {
    let first = vec![
        new_task("k1", T0),
        new_task("k2", T0 - 10),
        // A plugin's follow-up: its generation is kept.
        NewTask {
            generation: 2,
            ..new_task_in(3, "k1", T0 + 10)
        },
    ];
    let out = enqueue_all(&s, first.clone()).await;
    for (stored, asked) in out.iter().zip(&first) {
        // Everything but `seq` comes from the request; a new task is scheduled, never tried.
        assert_eq!(*stored, Task::from_new(asked.clone(), stored.seq));
        assert_eq!(stored.state, TaskState::Scheduled);
        assert_eq!(stored.next_at, stored.due_at);
        assert_eq!(stored.attempts, 0);
    }
    assert!(
        out.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq increases in input order"
    );

    let second = enqueue_all(&s, vec![new_task("k3", T0 - 1_000), new_task("k1", T0)]).await;
    assert!(second[0].seq > out[2].seq, "seq increases across calls");
    assert!(second[0].seq < second[1].seq);

    for t in out.iter().chain(&second) {
        let rec = s.get(&t.id).await.expect("get").expect("stored");
        assert_eq!(rec.task, *t);
        assert!(rec.attempts.is_empty());
    }
    assert!(
        s.enqueue(Vec::new())
            .await
            .expect("empty enqueue")
            .is_empty()
    );
    assert!(s.get("no-such-task").await.expect("get").is_none());
}

pub async fn uniqueness_dedups_across_batches<S: TaskStore>(s: S) {
    let original = enqueue_one(&s, with_ukey(new_task("k", T0), "u1")).await;
    let again = with_ukey(new_task("other-key", T0 + 5), "u1");
    let out = s.enqueue(vec![again.clone()]).await.expect("enqueue");
    assert_eq!(duplicate(&out[0]), original);
    assert!(
        s.get(&again.id).await.expect("get").is_none(),
        "a duplicate is not stored"
    );
    let found = s.find_by_uniqueness_key("u1").await.expect("find");
    assert_eq!(found, Some(original));
    assert_eq!(s.find_by_uniqueness_key("u2").await.expect("find"), None);

    // Tasks without a uniqueness key never collide.
    let plain = enqueue_all(&s, vec![new_task("k", T0), new_task("k", T0)]).await;
    assert_ne!(plain[0].id, plain[1].id);
}

pub async fn uniqueness_dedups_within_a_batch<S: TaskStore>(s: S) {
    let x = with_ukey(new_task("k", T0), "u2");
    let y = with_ukey(new_task("k", T0), "u3");
    let z = with_ukey(new_task("k", T0 - 50), "u2");
    let out = s
        .enqueue(vec![x.clone(), y.clone(), z.clone()])
        .await
        .expect("enqueue");
    assert_eq!(out.len(), 3);
    let tx = created(&out[0]);
    let ty = created(&out[1]);
    assert_eq!(tx.id, x.id, "the first task with a uniqueness key wins");
    assert_eq!(ty.id, y.id);
    assert!(tx.seq < ty.seq);
    assert_eq!(duplicate(&out[2]), tx);
    assert!(s.get(&z.id).await.expect("get").is_none());
    assert_eq!(
        ids(&window(&s, 0).await),
        vec![x.id.as_str(), y.id.as_str()]
    );
}

pub async fn uniqueness_holds_after_the_task_finished<S: TaskStore>(s: S) {
    let done = enqueue_one(&s, with_ukey(new_task("k", T0), "u-done")).await;
    run_attempt(&s, &done.id, succeeded(None)).await;
    let out = s
        .enqueue(vec![with_ukey(new_task("k", T0 + 1), "u-done")])
        .await
        .expect("enqueue");
    let dup = duplicate(&out[0]);
    assert_eq!(dup.id, done.id);
    assert_eq!(dup.state, TaskState::Succeeded);

    let cancelled = enqueue_one(&s, with_ukey(new_task("k", T0), "u-cancelled")).await;
    s.cancel(&lease_for(&s, &cancelled.id).await, &cancelled.id, T0)
        .await
        .expect("cancel");
    let out = s
        .enqueue(vec![with_ukey(new_task("k", T0 + 1), "u-cancelled")])
        .await
        .expect("enqueue");
    assert_eq!(duplicate(&out[0]).state, TaskState::Cancelled);
    assert!(
        window(&s, 0).await.is_empty(),
        "no duplicate became pending"
    );
}

/// A replayed enqueue (same id, e.g. a Kafka record delivered twice) never resets the task.
pub async fn reenqueueing_a_stored_id_is_a_duplicate<S: TaskStore>(s: S) {
    let asked = new_task("k", T0);
    let original = enqueue_one(&s, asked.clone()).await;
    s.start_attempt(&lease_for(&s, &original.id).await, &original.id, 1, T0)
        .await
        .expect("start");
    let out = s.enqueue(vec![asked]).await.expect("re-enqueue");
    let dup = duplicate(&out[0]);
    assert_eq!(dup.seq, original.seq);
    assert_eq!(dup.state, TaskState::Running, "the replay did not reset it");
    assert_eq!(task(&s, &original.id).await.attempts, 1);
}

pub async fn load_window_orders_by_due_then_seq<S: TaskStore>(s: S) {
    let first = enqueue_all(
        &s,
        vec![
            new_task("a", T0 + 30),
            new_task("b", T0 + 10),
            new_task("c", T0 + 10),
            new_task("d", T0 + 20),
            new_task("e", T0),
        ],
    )
    .await;
    let late = enqueue_one(&s, new_task("f", T0 + 10)).await;
    let got = window(&s, 0).await;
    let want = [&first[4], &first[1], &first[2], &late, &first[3], &first[0]];
    assert_eq!(
        ids(&got),
        want.iter().map(|t| t.id.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(got[0], first[4], "window returns the full stored task");
}

pub async fn load_window_honours_cursor_up_to_and_limit<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task("k", T0),
            new_task("k", T0 + 10),
            new_task("k", T0 + 10),
            new_task("k", T0 + 20),
            new_task("k", T0 + 30),
        ],
    )
    .await;
    let all_ids = ids(&t);
    let load = |after: OrderPos, up_to: Millis, limit: usize| {
        let s = &s;
        async move {
            let got = s
                .load_window(0, after, up_to, limit)
                .await
                .expect("load_window");
            got.into_iter().map(|t| t.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        load(OrderPos::MIN, T0 + 10, 100).await,
        all_ids[..3],
        "up_to is inclusive"
    );
    assert_eq!(load(OrderPos::MIN, T0 - 1, 100).await, Vec::<String>::new());
    assert_eq!(load(OrderPos::MIN, Millis::MAX, 2).await, all_ids[..2]);
    assert_eq!(
        load(t[1].order(), Millis::MAX, 100).await,
        all_ids[2..],
        "after is exclusive and breaks due_at ties by seq"
    );
    assert_eq!(load(t[1].order(), T0 + 20, 1).await, all_ids[2..3]);
    assert_eq!(
        load(OrderPos::end_of(T0 + 10), Millis::MAX, 100).await,
        all_ids[3..]
    );
    assert_eq!(
        load(t[4].order(), Millis::MAX, 100).await,
        Vec::<String>::new()
    );
    assert_eq!(load(t[3].order(), T0, 100).await, Vec::<String>::new());

    // Paging with a cursor visits every task exactly once.
    let mut after = OrderPos::MIN;
    let mut paged = Vec::new();
    loop {
        let page = s
            .load_window(0, after, Millis::MAX, 2)
            .await
            .expect("load_window");
        let Some(last) = page.last() else { break };
        after = last.order();
        paged.extend(page.into_iter().map(|t| t.id));
    }
    assert_eq!(paged, all_ids);
}

pub async fn load_window_isolates_partitions<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task_in(0, "a", T0 + 2),
            new_task_in(1, "b", T0 + 1),
            new_task_in(2, "c", T0),
            new_task_in(1, "d", T0 + 3),
            new_task_in(7, "e", T0 - 5),
            new_task_in(0, "f", T0 - 1),
        ],
    )
    .await;
    assert_eq!(ids(&window(&s, 0).await), vec![&t[5].id, &t[0].id]);
    assert_eq!(ids(&window(&s, 1).await), vec![&t[1].id, &t[3].id]);
    assert_eq!(ids(&window(&s, 2).await), vec![&t[2].id]);
    assert_eq!(ids(&window(&s, 7).await), vec![&t[4].id]);
    assert!(window(&s, 3).await.is_empty());
    // A cursor from one partition does not leak tasks of the next one.
    let after_last = s
        .load_window(1, t[3].order(), Millis::MAX, 100)
        .await
        .expect("load_window");
    assert!(after_last.is_empty());
}

pub async fn load_window_includes_tasks_overdue_by_years<S: TaskStore>(s: S) {
    const YEAR: Millis = 365 * 24 * 3_600_000;
    let t = enqueue_all(
        &s,
        vec![
            new_task("k", T0 - 3 * YEAR),
            new_task("k", 0),
            new_task("k", T0 - 3 * 3_600_000),
            new_task("k", -1_000),
        ],
    )
    .await;
    let got = s
        .load_window(0, OrderPos::MIN, T0, 100)
        .await
        .expect("load_window");
    assert_eq!(ids(&got), vec![&t[3].id, &t[1].id, &t[0].id, &t[2].id]);
}

pub async fn load_window_holds_exactly_the_pending_tasks<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            new_task("succeeded", T0),
            new_task("cancelled", T0 + 1),
            new_task("dead", T0 + 2),
            parking(new_task("dead-parked", T0 + 3)),
            new_task("retrying", T0 + 4),
            new_task("running", T0 + 5),
            new_task("scheduled", T0 + 6),
        ],
    )
    .await;
    run_attempt(&s, &t[0].id, succeeded(None)).await;
    s.cancel(&lease_for(&s, &t[1].id).await, &t[1].id, T0)
        .await
        .expect("cancel");
    run_attempt(&s, &t[2].id, dead("gone")).await;
    run_attempt(&s, &t[3].id, dead("gone")).await;
    run_attempt(&s, &t[4].id, retry(T0 + 60_000, "later")).await;
    s.start_attempt(&lease_for(&s, &t[5].id).await, &t[5].id, 1, T0)
        .await
        .expect("start");

    let got = window(&s, 0).await;
    assert_eq!(ids(&got), ids(&t[3..]));
    let states: Vec<_> = got.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        vec![
            TaskState::Dead,
            TaskState::Retrying,
            TaskState::Running,
            TaskState::Scheduled
        ]
    );
}
