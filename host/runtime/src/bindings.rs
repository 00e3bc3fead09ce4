//! The host's single `bindgen!` site for the `task-plugin` world (`wit/plugin.wit`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "task-plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

/// wasmtime's error as an `anyhow::Error` (wasmtime's `anyhow` feature is not enabled).
pub(crate) fn to_anyhow(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}
