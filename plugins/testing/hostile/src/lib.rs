//! Test guest (not shipped): misbehaves on request, for the host's containment tests.
//!
//! Payload `{"mode": MODE, ...}`:
//!
//! | mode | behaviour |
//! |---|---|
//! | `ok` | output `ok` |
//! | `loop` | spins forever, no host calls |
//! | `memory` | allocates (and touches) 1 MiB blocks until the host refuses to grow memory; the allocator then aborts (a trap), after `memory allocation of N bytes failed` on stderr |
//! | `trap` | executes wasm `unreachable` |
//! | `panic` | panics with `hostile guest panicked on purpose` |
//! | `big_output` | output of `size` bytes (default 10 MiB) of `x` |
//! | `http` | POSTs `body` (default `{"from":"hostile"}`) to `url`; output `{"status":S,"body":TEXT}` for any status, or the SDK's error (denied → permanent, connection/timeout → retryable) |
//! | `kv_flood` | `kv set` of `flood/{n}` keys (values of `value_size` bytes, default 1024) in an unbounded loop; when a set is refused, a retryable error `kv_flood: set #N refused: ...` |
//! | `kv_set` | one `kv set` of `key` (default `k`) with a value of `value_size` bytes (default 1024); output `stored`, or a retryable error `kv_set refused: ...` |
//! | `log_flood` | logs `lines` (default 100) info lines of `line_size` bytes (default 1 MiB) of `x`, with a field `n`; output `logged N` |
//! | `echo` | output: the task as JSON `{"id","key","plugin","attempt","due_at_ms","payload"}` (`payload` the raw payload string) |
//! | `config` | output: every config value as a JSON object `{name: value}` |
//! | `fork` | schedules `fanout` (default 2) follow-ups of itself, keys `{key}.{i}`, due now, with the same payload; output `forked N`, or a permanent error `fork refused: ...` when a schedule is refused |
//! | `fail` | retryable error `hostile guest failing on purpose (attempt N)`, with `retry_after_ms` when given |
//! | `permanent` | permanent error `hostile guest failing permanently on purpose` |
//! | `count` | counts its calls in a global of the instance and remembers each call's ordering key; output `{"count":N,"keys":[KEY,...]}` (what this instance has served: `count` 1 in a fresh instance) |
//!
//! Any other mode is a permanent error.

mod modes;

use kairos_plugin_sdk::serde_json::Value;
use kairos_plugin_sdk::{Outcome, Plugin, Task, TaskError};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    mode: String,
    size: Option<usize>,
    url: Option<String>,
    body: Option<Value>,
    value_size: Option<usize>,
    retry_after_ms: Option<u64>,
    lines: Option<u64>,
    key: Option<String>,
    line_size: Option<usize>,
    fanout: Option<u32>,
}

struct Hostile;

impl Plugin for Hostile {
    fn run(task: Task) -> Result<Outcome, TaskError> {
        let p: Payload = task.payload_json()?;
        match p.mode.as_str() {
            "ok" => Ok(Outcome::with_output("ok")),
            "loop" => modes::spin(),
            "memory" => modes::exhaust_memory(),
            "trap" => modes::trap(),
            "panic" => panic!("hostile guest panicked on purpose"),
            "big_output" => Ok(Outcome::with_output(modes::big_output(
                p.size.unwrap_or(10 * 1024 * 1024),
            ))),
            "http" => modes::http(p.url, p.body),
            "kv_flood" => modes::kv_flood(p.value_size.unwrap_or(1024)),
            "kv_set" => modes::kv_set(
                p.key.as_deref().unwrap_or("k"),
                p.value_size.unwrap_or(1024),
            ),
            "log_flood" => {
                modes::log_flood(p.lines.unwrap_or(100), p.line_size.unwrap_or(1024 * 1024))
            }
            "echo" => modes::echo(&task),
            "count" => modes::count(&task),
            "fork" => modes::fork(&task, p.fanout.unwrap_or(2)),
            "config" => modes::config(),
            "fail" => {
                let message = format!(
                    "hostile guest failing on purpose (attempt {})",
                    task.attempt
                );
                Err(match p.retry_after_ms {
                    Some(ms) => TaskError::retry_after(message, ms),
                    None => TaskError::retryable(message),
                })
            }
            "permanent" => Err(TaskError::permanent(
                "hostile guest failing permanently on purpose",
            )),
            other => Err(TaskError::permanent(format!(
                "unknown mode `{other}`: expected ok, loop, memory, trap, panic, big_output, \
                 http, kv_flood, kv_set, log_flood, echo, config, fail or permanent"
            ))),
        }
    }
}

kairos_plugin_sdk::export_plugin!(Hostile);
