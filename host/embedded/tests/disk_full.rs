//! A real full disk (a small tmpfs; needs root to mount it), with the free-space watermark
//! off so that the writes themselves fail: a failed write is a transient `Unavailable`, and
//! once there is room again the store reopens the database by itself (fjall refuses every
//! write after an I/O error until then), with every acknowledged task intact.

use std::io::Write;
use std::sync::Arc;

use kairos_conformance::tmpfs::{Tmpfs, is_root};
use kairos_conformance::{T0, enqueue_one, new_task};
use kairos_core::store::TaskStore;
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_transient_and_the_store_reopens_itself() {
    if !is_root() {
        eprintln!(
            "NOT RUN: a_full_disk_is_transient_and_the_store_reopens_itself needs root to mount a tmpfs"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "24m").expect("mounting a tmpfs failed (running as root)");
    // No free-space watermark: the writes themselves must hit the full disk.
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        ..EmbeddedOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open(&mnt.join("store"), opts).expect("open"));
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(enqueue_one(&*store, new_task(&format!("k{i}"), T0)).await);
    }
    {
        let mut f = std::fs::File::create(mnt.join("filler")).expect("filler");
        let chunk = vec![0u8; 256 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    // Writers, 16 at a time, until one fails: their writes are batched together, so a failed
    // commit answers a whole batch (and nothing of it may count twice, checked at the end).
    let mut failed = None;
    let mut tried = Vec::new();
    let mut filled = Vec::new();
    for round in 0..200 {
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..16 {
            let mut t = new_task(&format!("full{round}-{i}"), T0);
            t.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
            tried.push(t.id.clone());
            let store = store.clone();
            writers.spawn(async move {
                let id = t.id.clone();
                (id, store.enqueue(vec![t]).await)
            });
        }
        while let Some(joined) = writers.join_next().await {
            let (id, result) = joined.expect("writer task");
            match result {
                Ok(_) => filled.push(id),
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_some() {
            break;
        }
    }
    let e = failed.expect("a write fails on a full disk");
    assert!(e.is_transient(), "a full disk is transient, not {e:?}");
    // A failed batch of many leaves room for a smaller one: fill the rest one by one.
    let mut full = None;
    for i in 0..2_000 {
        let mut t = new_task(&format!("rest{i}"), T0);
        t.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
        tried.push(t.id.clone());
        match store.enqueue(vec![t]).await {
            Ok(out) => filled.extend(out.into_iter().map(|o| o.task().id.clone())),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("a write fails on a full disk");
    assert!(e.is_transient(), "a full disk is transient, not {e:?}");
    // While the disk stays full, writes that need room keep failing with the same transient
    // error (and the reads keep working).
    let mut big = new_task("while-full", T0);
    // A write answered with an error may still be stored: its bytes can reach the journal
    // when the old handle is closed at the reopen, once there is room. Such an answer means
    // "unknown", which an enqueue retried with the same id resolves (it is idempotent).
    tried.push(big.id.clone());
    big.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    let e = store
        .enqueue(vec![big])
        .await
        .map(|_| "stored")
        .expect_err("no room yet");
    assert!(e.is_transient(), "{e:?}");
    for t in &acked {
        assert!(store.get(&t.id).await.expect("read").is_some());
    }

    // Room again: the next write reopens the database, without a restart.
    std::fs::remove_file(mnt.join("filler")).expect("free the space");
    let after = enqueue_one(&*store, new_task("after", T0)).await;
    store.health().await.expect("healthy: writes work again");
    for t in acked.iter().chain(std::iter::once(&after)) {
        let got = store
            .get(&t.id)
            .await
            .expect("read")
            .expect("acknowledged task kept");
        assert_eq!(got.task.key, t.key);
    }
    // And it all survives a restart, with the state counts matching the tasks stored (a
    // failed batch, or an operation undone in one, counts nothing).
    drop(store);
    let store = EmbeddedStore::open(&mnt.join("store"), opts).expect("reopen");
    let ids = acked.iter().chain(std::iter::once(&after)).map(|t| &t.id);
    for id in ids.chain(&filled) {
        assert!(store.get(id).await.expect("read").is_some(), "{id}");
    }
    // The first 20 and `after`, and those of the fill that were stored (acknowledged or not).
    let mut stored = acked.len() + 1;
    for id in &tried {
        if store.get(id).await.expect("read").is_some() {
            stored += 1;
        }
    }
    let counts = store.state_counts().await.expect("counts");
    assert_eq!(counts.scheduled, stored as u64, "{counts:?}");
}
