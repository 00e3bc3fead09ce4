//! Glue between the wit-bindgen bindings and the plugin's code, used by the code that
//! [`#[task]`](macro@crate::task) and [`export_plugin!`](crate::export_plugin) generate. Not part of
//! the API: names here may change.

use std::sync::Once;

use serde::de::DeserializeOwned;

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

/// Runs one attempt of a `#[task]` function: parses the payload (a permanent error when it
/// does not parse), calls `f`, converts its result.
pub fn run_fn<T, R>(task: wit::Task, f: impl FnOnce(T) -> R) -> Result<wit::Outcome, wit::TaskError>
where
    T: FromTask,
    R: crate::TaskReturn,
{
    prepare();
    let result = T::from_task(crate::Task::from(task)).and_then(|task| f(task).into_task_result());
    to_wit(result)
}

/// What a `#[task]` function may take: a [`Task<P>`](crate::Task) whose payload parses.
#[diagnostic::on_unimplemented(
    message = "a #[task] function takes one `Task<P>` (`P: serde::Deserialize`), not `{Self}`"
)]
pub trait FromTask: Sized {
    /// The task with its payload parsed.
    fn from_task(task: crate::Task) -> Result<Self, crate::TaskError>;
}

impl<P: DeserializeOwned> FromTask for crate::Task<P> {
    fn from_task(task: crate::Task) -> Result<Self, crate::TaskError> {
        task.parse()
    }
}

/// Runs one attempt of a [`Plugin`](crate::Plugin): converts the task, calls the plugin,
/// converts its result.
pub fn run<P: crate::Plugin>(task: wit::Task) -> Result<wit::Outcome, wit::TaskError> {
    prepare();
    to_wit(P::run(crate::Task::from(task)))
}

/// Before the plugin's code runs: the panic hook and the `log` crate's backend.
fn prepare() {
    install_panic_hook();
    crate::log::install_logger();
}

fn to_wit(
    result: Result<crate::Outcome, crate::TaskError>,
) -> Result<wit::Outcome, wit::TaskError> {
    match result {
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
