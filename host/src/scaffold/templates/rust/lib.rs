//! The {name} plugin: one `#[task]` function, called once per attempt in a fresh sandbox.
//!
//! Build it with `kairos plugin build .` and copy `{name}.wasm` into the plugins directory of a
//! running `kairos serve` (it is hot-loaded). Try it locally with
//! `kairos plugin run {name} --plugins . --payload '{{"name": "Ada"}}'`.

use kairos_plugin_sdk::serde_json::json;
use kairos_plugin_sdk::{Outcome, Task, config, kv, log, permanent};
use serde::Deserialize;

/// The payload, e.g. `{{"name": "Ada"}}`. A payload that is not JSON of this shape fails the
/// task permanently before `run` is called.
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    name: String,
}

/// One attempt. `Ok` is success (its output is stored with the task); any error (`?` works on
/// any error type) retries with backoff, unless wrapped in `permanent(...)`.
#[kairos_plugin_sdk::task]
fn run(task: Task<Payload>) -> anyhow::Result<Outcome> {
    let name = task.payload.name.trim();
    if name.is_empty() {
        // Retrying would not help: the task is dead at once.
        return Err(permanent(anyhow::anyhow!("the payload needs a name")));
    }
    let greeting = config::get("greeting").unwrap_or_else(|| "Hello".into());
    let runs = kv::get_json::<u64>("runs")?.unwrap_or(0) + 1; // a host failure is retryable
    kv::set_json("runs", &runs)?;
    log::info!(name = name, attempt = task.attempt, runs = runs; "greeted");
    let output = json!({{"message": message(&greeting, name), "runs": runs}});
    Ok(Outcome::with_output(output.to_string()))
}

fn message(greeting: &str, name: &str) -> String {
    format!("{{greeting}}, {{name}}!")
}

/// The local test: `cargo test` (plain Rust, no sandbox). `kairos plugin run` runs the built
/// plugin in the sandbox (see README.md).
#[cfg(test)]
mod tests {
    #[test]
    fn greets_by_name() {
        assert_eq!(super::message("Bonjour", "Ada"), "Bonjour, Ada!");
    }
}
