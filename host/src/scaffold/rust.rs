//! Rust plugins: the project template (with the SDK vendored into `sdk/`, since it is not
//! published) and the build through cargo for `wasm32-wasip2`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{PLUGIN_WIT, find_tool};

/// `kairos plugin new --lang rust`: `(file, template)`; `{name}` is filled in.
pub const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("templates/rust/lib.rs")),
    ("README.md", include_str!("templates/rust/README.md")),
    (".gitignore", include_str!("templates/rust/gitignore")),
];

/// The SDK (`plugin-sdk`, its macros and the WIT) as written into a new project's `sdk/`,
/// verbatim.
pub const SDK: &[(&str, &str)] = &[
    (
        "sdk/kairos-plugin-sdk/Cargo.toml",
        include_str!("templates/rust/sdk-Cargo.toml"),
    ),
    ("sdk/wit/plugin.wit", PLUGIN_WIT),
    (
        "sdk/kairos-plugin-macros/Cargo.toml",
        include_str!("templates/rust/macros-Cargo.toml"),
    ),
    (
        "sdk/kairos-plugin-macros/src/lib.rs",
        include_str!("../../../plugin-sdk/macros/src/lib.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/examples/hello/src/lib.rs",
        include_str!("../../../plugin-sdk/examples/hello/src/lib.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/lib.rs",
        include_str!("../../../plugin-sdk/src/lib.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/config.rs",
        include_str!("../../../plugin-sdk/src/config.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/error.rs",
        include_str!("../../../plugin-sdk/src/error.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/export.rs",
        include_str!("../../../plugin-sdk/src/export.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/http.rs",
        include_str!("../../../plugin-sdk/src/http.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/http/error.rs",
        include_str!("../../../plugin-sdk/src/http/error.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/http/url.rs",
        include_str!("../../../plugin-sdk/src/http/url.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/http/wasi.rs",
        include_str!("../../../plugin-sdk/src/http/wasi.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/kv.rs",
        include_str!("../../../plugin-sdk/src/kv.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/log.rs",
        include_str!("../../../plugin-sdk/src/log.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/scheduler.rs",
        include_str!("../../../plugin-sdk/src/scheduler.rs"),
    ),
    (
        "sdk/kairos-plugin-sdk/src/task.rs",
        include_str!("../../../plugin-sdk/src/task.rs"),
    ),
];

const TARGET: &str = "wasm32-wasip2";

pub const INSTALL: &str =
    "install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`";

/// Builds the crate in `dir` with `cargo build --release --target wasm32-wasip2` (its target
/// directory: `CARGO_TARGET_DIR`, else `dir/target`) and copies the component to `out`.
pub fn build(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let cargo = find_tool("CARGO", "cargo", INSTALL)?;
    check_target()?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let crate_name = crate_name(dir)?;
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "--lib", "--target", TARGET])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    super::run_toolchain(cmd, "cargo build", &built)?;
    std::fs::copy(&built, out).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The `[package] name` in `dir/Cargo.toml`.
fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no [package] name", path.display()))
}

/// With rustup, the wasm32-wasip2 standard library must be installed; without rustup the
/// build itself says what is missing.
fn check_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(TARGET) {
        bail!("the Rust target {TARGET} is not installed: run `rustup target add {TARGET}`");
    }
    Ok(())
}
