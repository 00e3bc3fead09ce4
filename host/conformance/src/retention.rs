//! Cases: retention (`purge_finished`).

use super::*;
use kairos_core::model::ListFilter;

pub async fn retention_purges_only_finished_tasks_past_the_cutoff<S: TaskStore>(s: S) {
    let t = enqueue_all(
        &s,
        vec![
            with_ukey(new_task("k1", T0), "u-succ"),
            new_task("k2", T0),
            parking(new_task("k3", T0)),
            new_task("k4", T0),
            new_task("k5", T0),
            new_task("k6", T0),
            new_task("k7", T0),
        ],
    )
    .await;
    let [succ, canc, parked, dead_one, sched, running, retrying] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| t[i].id.clone());
    run_attempt(&s, &succ, succeeded(None)).await; // updated at T0 + 1010
    s.cancel(&lease_for(&s, &canc).await, &canc, T0 + 7)
        .await
        .expect("cancel");
    run_attempt(&s, &parked, dead("x")).await;
    run_attempt(&s, &dead_one, dead("x")).await;
    s.start_attempt(&lease_for(&s, &running).await, &running, 1, T0)
        .await
        .expect("start");
    run_attempt(&s, &retrying, retry(T0 + 60_000, "x")).await;
    let window_before = window(&s, 0).await;

    // Only what finished before the cutoff goes.
    let p = s
        .purge_finished(T0 + 1_010, None, 1_000)
        .await
        .expect("purge");
    assert_eq!((p.deleted, p.next), (1, None), "only the cancel is older");
    assert!(s.get(&canc).await.expect("get").is_none());
    assert!(s.get(&succ).await.expect("get").is_some());

    let p = s
        .purge_finished(T0 + 5_000, None, 1_000)
        .await
        .expect("purge");
    assert_eq!(p.deleted, 2, "the success and the unparked dead task");
    for gone in [&succ, &dead_one] {
        assert!(s.get(gone).await.expect("get").is_none(), "{gone} kept");
    }
    for kept in [&parked, &sched, &running, &retrying] {
        assert!(s.get(kept).await.expect("get").is_some(), "{kept} purged");
    }
    assert_eq!(
        ids(&window(&s, 0).await),
        ids(&window_before),
        "pending tasks untouched"
    );
    // The key index and the uniqueness key went with the task.
    let listed = s
        .list(&ListFilter {
            key: Some("k1".into()),
            state: None,
            limit: 10,
            after: None,
        })
        .await
        .expect("list");
    assert!(listed.is_empty(), "{listed:?}");
    assert!(
        s.find_by_uniqueness_key("u-succ")
            .await
            .expect("find")
            .is_none()
    );
    let again = enqueue_one(&s, with_ukey(new_task("k1", T0), "u-succ")).await;
    assert_ne!(again.id, succ, "the uniqueness key can be claimed again");

    // A scan in small steps visits everything once.
    let more = enqueue_all(&s, (0..5).map(|i| new_task(&format!("m{i}"), T0)).collect()).await;
    for m in &more {
        run_attempt(&s, &m.id, succeeded(None)).await;
    }
    assert_eq!(purge_in_steps(&s, T0 + 5_000).await, 5);
}

/// A whole retention scan, two tasks per call: how many it deleted.
pub async fn purge_in_steps<S: TaskStore + ?Sized>(s: &S, before: Millis) -> usize {
    let (mut deleted, mut after, mut calls) = (0, None::<String>, 0);
    loop {
        let p = s
            .purge_finished(before, after.as_deref(), 2)
            .await
            .expect("purge");
        deleted += p.deleted;
        calls += 1;
        assert!(calls < 50, "the scan does not end");
        match p.next {
            Some(n) => after = Some(n),
            None => return deleted,
        }
    }
}
