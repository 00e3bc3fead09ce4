use anyhow::{Context as _, anyhow};
use kairos_plugin_sdk::serde_json::{self, json};
use kairos_plugin_sdk::{FollowUp, Outcome, Task, When, http, kv, log};
use serde::{Deserialize, Serialize};

/// The payload, e.g. `{"name": "Ada", "url": "http://hooks.example/greetings"}`.
#[derive(Deserialize, Serialize)]
struct Greeting {
    name: String,
    url: String,
}

/// One attempt. A payload that is not a `Greeting` fails permanently before this runs.
#[kairos_plugin_sdk::task]
fn run(task: Task<Greeting>) -> anyhow::Result<Outcome> {
    let greeting = &task.payload;
    log::info!(name = greeting.name, id = task.id; "greeting");
    kv::set(&format!("greeted/{}", greeting.name), &task.id)?; // host failure: retryable
    // Have `notify` remind us in an hour; the uniqueness key makes a retry harmless.
    let reminder = json!({"url": greeting.url, "message": "say hello again"});
    let follow_up = FollowUp::new("notify", &task.key, When::Delay(3_600_000), reminder);
    kairos_plugin_sdk::schedule(follow_up.unique(format!("hello:{}", task.id)))?;

    let request = http::Request::post(&greeting.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", &task.id)
        .body(serde_json::to_vec(greeting)?)?;
    let response = http::send(request).context("posting the greeting")?; // denied: permanent
    match response.status() {
        status if status.is_success() => {
            Ok(Outcome::with_output(format!("greeted {}", greeting.name)))
        }
        status if status.is_client_error() => Err(kairos_plugin_sdk::permanent(anyhow!(
            "the greeting was refused: HTTP {status}"
        ))),
        status => Err(anyhow!("the greeting got HTTP {status}")), // retryable
    }
}
