//! Glue between the wit-bindgen bindings and [`Plugin`](crate::Plugin), used by
//! [`export_plugin!`](crate::export_plugin). Not part of the API: names here may change.

use std::sync::Once;

/// The bindings generated from `wit/plugin.wit` (world `kairos:plugin/task-plugin`).
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "kairos:plugin/task-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_task_plugin",
        default_bindings_module: "kairos_plugin_sdk::__private::bindings",
    });
}

pub use bindings::Guest;
use bindings::kairos::plugin::types as wit;

/// Runs one attempt: converts the task, calls the plugin, converts its result.
pub fn run<P: crate::Plugin>(task: wit::Task) -> Result<wit::Outcome, wit::TaskError> {
    install_panic_hook();
    match P::run(crate::Task::from(task)) {
        Ok(outcome) => Ok(wit::Outcome {
            output: outcome.output,
        }),
        Err(error) => Err(error.into()),
    }
}

/// Wasm aborts on panic, so the message must be written out before that happens: the default
/// hook prints it to stderr (captured by the host) and this one adds an error line to the task
/// log with the message and location as fields.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string panic payload)");
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            crate::log::error(
                "plugin panicked",
                &[("panic", &message), ("location", &location)],
            );
        }));
    });
}

impl From<crate::TaskError> for wit::TaskError {
    fn from(error: crate::TaskError) -> Self {
        match error {
            crate::TaskError::Retryable {
                message,
                retry_after_ms,
            } => wit::TaskError::Retryable(wit::Retryable {
                message,
                retry_after_ms,
            }),
            crate::TaskError::Permanent { message } => wit::TaskError::Permanent(message),
        }
    }
}

impl From<wit::Task> for crate::Task {
    fn from(task: wit::Task) -> Self {
        crate::Task {
            id: task.id,
            key: task.key,
            plugin: task.plugin,
            attempt: task.attempt,
            due_at_ms: task.due_at_ms,
            payload: task.payload,
        }
    }
}
