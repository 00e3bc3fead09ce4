use kairos_plugin_sdk::serde_json::json;
use kairos_plugin_sdk::{FollowUp, Outcome, Plugin, Task, TaskError, When, http, kv, log};
use serde::{Deserialize, Serialize};

/// The payload, e.g. `{"name": "Ada", "url": "http://hooks.example/greetings"}`.
#[derive(Deserialize, Serialize)]
struct Greeting {
    name: String,
    url: String,
}

struct Hello;

impl Plugin for Hello {
    fn run(task: Task) -> Result<Outcome, TaskError> {
        let greeting: Greeting = task.payload_json()?; // a bad payload: permanent error
        log::info("greeting", &[("name", &greeting.name), ("id", &task.id)]);
        kv::set(&format!("greeted/{}", greeting.name), &task.id)?;
        // Have `notify` remind us in an hour; the uniqueness key makes a retry harmless.
        let reminder = json!({"url": greeting.url, "message": "say hello again"});
        let follow_up = FollowUp::new("notify", &task.key, When::Delay(3_600_000), reminder);
        kairos_plugin_sdk::schedule(follow_up.unique(format!("hello:{}", task.id)))?;
        let response = http::post_json(&greeting.url, &greeting)?; // denied host: permanent
        match response.status {
            200..=299 => Ok(Outcome::with_output(format!("greeted {}", greeting.name))),
            status => Err(TaskError::retryable(format!("greeting got HTTP {status}"))),
        }
    }
}

kairos_plugin_sdk::export_plugin!(Hello);
