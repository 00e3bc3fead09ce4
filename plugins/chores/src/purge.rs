//! Deleting stale kv entries.
//!
//! `kv::list` has no cursor: it returns the first `limit` keys under the prefix. So the purge
//! lists a page, deletes the stale entries in it and lists again, until a page is short (the
//! end) or holds nothing stale (every remaining key in that page is fresh and would come back
//! first every time: the output then says the purge is incomplete).

use kairos_plugin_sdk::{Outcome, TaskError, kv, log, now_ms};
use serde::{Deserialize, Serialize};

const PAGE: u32 = 500;
/// Bounds one run (pages × PAGE deletions); a larger backlog needs another run.
const MAX_PAGES: u32 = 200;

#[derive(Debug, Deserialize)]
pub struct Purge {
    prefix: String,
    older_than_ms: i64,
}

#[derive(Serialize)]
struct Report {
    deleted: u64,
    complete: bool,
}

pub fn run(purge: &Purge) -> Result<Outcome, TaskError> {
    if purge.older_than_ms < 0 {
        return Err(TaskError::permanent(format!(
            "invalid payload: older_than_ms must not be negative, got {}",
            purge.older_than_ms
        )));
    }
    let cutoff = now_ms().saturating_sub(purge.older_than_ms);
    let mut deleted = 0u64;
    let mut complete = false;
    for _ in 0..MAX_PAGES {
        let page = kv::list(&purge.prefix, PAGE)?;
        let mut deleted_here = 0u64;
        for entry in &page {
            if entry.updated_at_ms < cutoff && kv::delete(&entry.key)? {
                deleted_here += 1;
            }
        }
        deleted += deleted_here;
        if page.len() < PAGE as usize {
            complete = true;
            break;
        }
        if deleted_here == 0 {
            break;
        }
    }
    log::info(
        "kv purged",
        &[
            ("prefix", &purge.prefix),
            ("older_than_ms", &purge.older_than_ms),
            ("deleted", &deleted),
            ("complete", &complete),
        ],
    );
    Outcome::json(&Report { deleted, complete })
}
