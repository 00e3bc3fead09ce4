//! The standard plugins, compiled into the binary.
//!
//! `build.rs` builds `notify`, `alerting` and `chores` for `wasm32-wasip2` and copies them to
//! a directory of this build's `OUT_DIR`; they are embedded here with `include_bytes!`. Only
//! the bytes reach the binary: it reads no file to find them, wherever it is installed.

/// A standard plugin carried by the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinPlugin {
    pub name: &'static str,
    /// The component (`NAME.wasm`).
    pub wasm: &'static [u8],
}

macro_rules! builtin {
    ($name:literal) => {
        BuiltinPlugin {
            name: $name,
            wasm: include_bytes!(concat!(
                env!("KAIROS_BUILTIN_PLUGINS_DIR"),
                "/",
                $name,
                ".wasm"
            )),
        }
    };
}

/// The standard plugins: `notify`, `alerting`, `chores` (see `plugins/README.md`).
pub const BUILTIN_PLUGINS: &[BuiltinPlugin] =
    &[builtin!("notify"), builtin!("alerting"), builtin!("chores")];

/// The built-in plugin called `name`.
pub fn builtin_plugin(name: &str) -> Option<&'static BuiltinPlugin> {
    BUILTIN_PLUGINS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_plugins_are_embedded_as_components() {
        let names: Vec<&str> = BUILTIN_PLUGINS.iter().map(|p| p.name).collect();
        assert_eq!(names, ["notify", "alerting", "chores"]);
        for p in BUILTIN_PLUGINS {
            // A component's preamble: magic, then version 0x0d and layer 1.
            assert!(
                p.wasm.starts_with(b"\0asm\x0d\0\x01\0"),
                "{} is not a Wasm component",
                p.name
            );
        }
        assert_eq!(builtin_plugin("chores").map(|p| p.name), Some("chores"));
        assert!(builtin_plugin("noop").is_none());
    }
}
