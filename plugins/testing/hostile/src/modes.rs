//! The misbehaviours.

use std::collections::BTreeMap;
use std::hint::black_box;

use kairos_plugin_sdk::serde_json::{Value, json};
use kairos_plugin_sdk::{
    FollowUp, Outcome, Task, TaskError, When, config, http, kv, log, schedule,
};

/// Spins without host calls until the host interrupts it (epoch deadline or fuel).
pub fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grows the heap 1 MiB at a time, writing every block so its pages are really used, until
/// growth is refused: the infallible allocation then aborts.
pub fn exhaust_memory() -> ! {
    const BLOCK: usize = 1024 * 1024;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![0xA5; BLOCK]);
        black_box(&blocks);
    }
}

pub fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

pub fn big_output(size: usize) -> String {
    "x".repeat(size)
}

pub fn http(url: Option<String>, body: Option<Value>) -> Result<Outcome, TaskError> {
    let url = url.ok_or_else(|| TaskError::permanent("mode http needs a `url`"))?;
    let body = body.unwrap_or_else(|| json!({"from": "hostile"}));
    let response = http::post_json(&url, &body)?;
    Outcome::json(&json!({"status": response.status, "body": response.text()}))
}

pub fn kv_flood(value_size: usize) -> Result<Outcome, TaskError> {
    let value = vec![b'f'; value_size];
    let mut n: u64 = 0;
    loop {
        if let Err(e) = kv::set(&format!("flood/{n:012}"), &value) {
            return Err(TaskError::retryable(format!(
                "kv_flood: set #{n} refused: {e}"
            )));
        }
        n += 1;
    }
}

pub fn kv_set(key: &str, value_size: usize) -> Result<Outcome, TaskError> {
    kv::set(key, vec![b'v'; value_size])
        .map_err(|e| TaskError::retryable(format!("kv_set refused: {e}")))?;
    Ok(Outcome::with_output("stored"))
}

pub fn log_flood(lines: u64, line_size: usize) -> Result<Outcome, TaskError> {
    let line = "x".repeat(line_size);
    for n in 0..lines {
        log::info(&line, &[("n", &n)]);
    }
    Ok(Outcome::with_output(format!("logged {lines}")))
}

pub fn echo(task: &Task) -> Result<Outcome, TaskError> {
    Outcome::json(&json!({
        "id": task.id,
        "key": task.key,
        "plugin": task.plugin,
        "attempt": task.attempt,
        "due_at_ms": task.due_at_ms,
        "payload": task.payload,
    }))
}

/// Schedules `fanout` copies of this task (same plugin and payload) on keys `{key}.{i}`.
pub fn fork(task: &Task, fanout: u32) -> Result<Outcome, TaskError> {
    let payload: Value = task.payload_json()?;
    for i in 0..fanout {
        let follow_up = FollowUp::new(
            task.plugin.clone(),
            format!("{}.{i}", task.key),
            When::Delay(0),
            payload.clone(),
        );
        schedule(follow_up).map_err(|e| TaskError::permanent(format!("fork refused: {e}")))?;
    }
    Ok(Outcome::with_output(format!("forked {fanout}")))
}

pub fn config() -> Result<Outcome, TaskError> {
    let all: BTreeMap<String, String> = config::all().into_iter().collect();
    Outcome::json(&all)
}

/// Calls served by this instance, and their keys: state that lives as long as the instance.
static SERVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn count(task: &Task) -> Result<Outcome, TaskError> {
    let mut served = SERVED
        .lock()
        .map_err(|_| TaskError::permanent("count: state poisoned"))?;
    served.push(task.key.clone());
    Outcome::json(&json!({"count": served.len(), "keys": *served}))
}
