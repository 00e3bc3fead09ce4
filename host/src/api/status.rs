//! What the status page shows, from the same API a script would use: `GET /v1/stats` (counts
//! by state, throughput, lateness over the last five minutes, run slots) and
//! `GET /v1/partitions` (which node owns which partition, each partition's window and next due
//! time, partitions moving). In cluster mode `/v1/partitions` asks every owner for its own
//! partitions (`?local=true`, signed like a forwarded request) and merges the answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderMap, header};
use futures::{StreamExt, TryStreamExt};
use kairos_core::model::StateCounts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::view::rfc3339;
use super::{ApiError, State};

type ApiResult<T> = Result<T, ApiError>;

/// How long counts by state are reused (on Cassandra they are a scan of the task table).
const COUNTS_TTL: Duration = Duration::from_secs(1);
/// Lease reads in flight at once for `GET /v1/partitions`.
const LEASE_READS: usize = 16;

/// Counts by state as last read from the store, and when.
#[derive(Default)]
pub struct CountsCache(tokio::sync::Mutex<Option<(Instant, StateCounts)>>);

impl CountsCache {
    async fn get(&self, st: &State) -> ApiResult<StateCounts> {
        let mut cached = self.0.lock().await;
        if let Some((at, c)) = *cached
            && at.elapsed() < COUNTS_TTL
        {
            return Ok(c);
        }
        let c = st.store.state_counts().await?;
        *cached = Some((Instant::now(), c));
        Ok(c)
    }
}

/// `GET /v1/stats`. Counts are the store's (every partition); rates, lateness and slots are
/// this node's.
pub async fn stats(st: State) -> ApiResult<Json<Value>> {
    let counts = st.counts.get(&st).await?;
    let now = st.enqueuer.clock.now();
    let m = &st.metrics;
    let (in_use, total) = st.scheduler.slots_in_use();
    let recent = m.recent(now);
    Ok(Json(json!({
        "node_id": st.node_id,
        "at": rfc3339(now),
        "counts": counts,
        "slots": { "in_use": in_use, "total": total },
        "running": m.running.load(Relaxed).max(0),
        "finished_per_s": recent.finished_per_s,
        "lateness_p50_ms": recent.lateness_p50_ms,
        "lateness_p99_ms": recent.lateness_p99_ms,
        "recent": recent,
        "totals": {
            "enqueued": m.enqueued.load(Relaxed),
            "deduplicated": m.deduplicated.load(Relaxed),
            "succeeded": m.succeeded.load(Relaxed),
            "retried": m.retried.load(Relaxed),
            "dead": m.dead.load(Relaxed),
            "purged": m.purged.load(Relaxed),
        },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsQuery {
    /// Only the partitions this node runs (what nodes ask each other).
    #[serde(default)]
    local: bool,
}

/// A partition this node runs.
#[derive(Serialize, Deserialize, Clone)]
struct Local {
    partition: u32,
    epoch: u64,
    window: u64,
    next_due: Option<String>,
}

async fn local(st: &State) -> Vec<Local> {
    let mut leases = st.scheduler.leases().await;
    leases.sort_by_key(|l| l.partition);
    leases
        .into_iter()
        .map(|l| {
            let (window, due) = st.metrics.partition(l.partition);
            Local {
                partition: l.partition,
                epoch: l.epoch,
                window,
                next_due: due.map(rfc3339),
            }
        })
        .collect()
}

/// One partition in the merged view.
#[derive(Serialize)]
struct Entry {
    partition: u32,
    /// The node holding the partition's lease in the store.
    owner: Option<String>,
    epoch: Option<u64>,
    /// Tasks in the owner's window, and its next due time, as the owner reports them.
    window: Option<u64>,
    next_due: Option<String>,
    /// No owner yet, or the owner does not run it under its lease yet (a hand-over).
    moving: bool,
}

/// `GET /v1/partitions[?local=true]`.
pub async fn partitions(
    st: State,
    Query(q): Query<PartitionsQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let mine = local(&st).await;
    if q.local {
        return Ok(Json(json!({ "node_id": st.node_id, "partitions": mine })));
    }
    // The leases, a few reads at a time (one per partition; in order).
    let n = st.enqueuer.partitions;
    let holders: Vec<_> = futures::stream::iter(0..n)
        .map(|p| st.store.lease_holder(p))
        .buffered(LEASE_READS)
        .try_collect()
        .await?;
    // What each owner runs: this node's from memory, the others' from their API.
    let mut reports: BTreeMap<String, Result<Vec<Local>, String>> = BTreeMap::new();
    reports.insert(st.node_id.clone(), Ok(mine));
    let others: BTreeSet<String> = holders
        .iter()
        .flatten()
        .map(|h| h.node_id.clone())
        .filter(|id| *id != st.node_id)
        .collect();
    if let Some(fwd) = &st.forwarder {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Every other owner at once.
        let me = st.node_id.as_str();
        let asks = others.into_iter().map(|node| {
            let auth = auth.clone();
            async move {
                let got = fwd
                    .get_json(me, &node, "/v1/partitions?local=true", auth)
                    .await
                    .and_then(|v| {
                        serde_json::from_value::<Vec<Local>>(v["partitions"].clone())
                            .map_err(|e| format!("unexpected answer: {e}"))
                    });
                (node, got)
            }
        });
        reports.extend(futures::future::join_all(asks).await);
    }
    let running: BTreeMap<(String, u32), Local> = reports
        .iter()
        .filter_map(|(node, r)| r.as_ref().ok().map(|v| (node, v)))
        .flat_map(|(node, v)| {
            v.iter()
                .map(move |l| ((node.clone(), l.partition), l.clone()))
        })
        .collect();
    let entries: Vec<Entry> = holders
        .iter()
        .enumerate()
        .map(|(p, h)| {
            let p = p as u32;
            let run = h.as_ref().and_then(|h| {
                running
                    .get(&(h.node_id.clone(), p))
                    .filter(|l| l.epoch == h.epoch)
            });
            Entry {
                partition: p,
                owner: h.as_ref().map(|h| h.node_id.clone()),
                epoch: h.as_ref().map(|h| h.epoch),
                window: run.map(|l| l.window),
                next_due: run.and_then(|l| l.next_due.clone()),
                moving: run.is_none(),
            }
        })
        .collect();
    let nodes: Vec<Value> = reports
        .iter()
        .map(|(node, r)| match r {
            Ok(v) => json!({
                "node_id": node,
                "reachable": true,
                "partitions": v.iter().map(|l| l.partition).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "node_id": node, "reachable": false, "error": e }),
        })
        .collect();
    Ok(Json(json!({
        "node_id": st.node_id,
        "cluster": st.forwarder.is_some(),
        "count": n,
        "moving": entries.iter().filter(|e| e.moving).count(),
        "nodes": nodes,
        "partitions": entries,
    })))
}

/// `GET /v1/plugins`: the loaded plugins with this node's attempt counts and p99 run time
/// (`runs`), then files rejected while no version of their plugin is loaded
/// (`loaded: false`, `last_error`).
pub async fn plugins(st: State) -> Json<Value> {
    let runs = st.metrics.plugin_runs();
    let mut out = Vec::new();
    if let Value::Array(list) = st.plugins.list() {
        for mut p in list {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            if let Value::Object(o) = &mut p {
                o.insert("loaded".into(), Value::Bool(true));
                let r = runs.get(&name).map_or_else(
                    || json!({ "succeeded": 0, "failed": 0, "run_p99_ms": null }),
                    |r| json!(r),
                );
                o.insert("runs".into(), r);
            }
            out.push(p);
        }
    }
    if let Value::Array(rejected) = st.plugins.rejected() {
        for r in rejected {
            out.push(json!({
                "name": r["name"],
                "loaded": false,
                "digest": null,
                "last_error": r["error"],
            }));
        }
    }
    Json(Value::Array(out))
}
