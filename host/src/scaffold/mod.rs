//! `kairos plugin new` and `kairos plugin build`: a ready plugin project in one command, and
//! one command that runs the language's toolchain, checks the component against the
//! `kairos:plugin/task-plugin` world (the same load the server does) and writes `NAME.wasm`.
//!
//! Everything a build needs besides the toolchain is in this binary: the WIT and the Python
//! and JavaScript SDKs (`plugin-sdk/python`, `plugin-sdk/js`) are written to a scratch
//! directory for each build; the Rust SDK (`plugin-sdk`, not published) is vendored into a new
//! Rust project's `sdk/`.

mod js;
mod python;
mod rust;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use kairos_runtime::{MemoryServices, Runtime};

use crate::config::Config;

/// The WIT the host serves (`wit/plugin.wit`).
pub const PLUGIN_WIT: &str = include_str!("../../../wit/plugin.wit");

/// The world the Python and JavaScript builds use: `task-plugin` plus `wasi:http`
/// (`plugin-sdk/wit/sdk.wit`), and the WASI packages it needs.
pub const SDK_WORLD: &str = "task-plugin-sdk";
const SDK_WIT: &[(&str, &str)] = &[
    ("plugin.wit", PLUGIN_WIT),
    ("sdk.wit", include_str!("../../../plugin-sdk/wit/sdk.wit")),
    (
        "deps/cli.wit",
        include_str!("../../../plugin-sdk/wit/deps/cli.wit"),
    ),
    (
        "deps/clocks.wit",
        include_str!("../../../plugin-sdk/wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../plugin-sdk/wit/deps/filesystem.wit"),
    ),
    (
        "deps/http.wit",
        include_str!("../../../plugin-sdk/wit/deps/http.wit"),
    ),
    (
        "deps/io.wit",
        include_str!("../../../plugin-sdk/wit/deps/io.wit"),
    ),
    (
        "deps/random.wit",
        include_str!("../../../plugin-sdk/wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../plugin-sdk/wit/deps/sockets.wit"),
    ),
];

/// Writes `text` to `dir/path`, creating the directories on the way.
fn write_file(dir: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// Writes each `(path, text)` of `files` under `dir`.
fn write_files(dir: &Path, files: Files) -> anyhow::Result<()> {
    files
        .iter()
        .try_for_each(|(path, text)| write_file(dir, path, text))
}

/// Writes the SDK world's WIT (with its deps) into `dir`.
fn write_sdk_wit(dir: &Path) -> anyhow::Result<()> {
    write_files(dir, SDK_WIT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// A plugin name: what `NAME.wasm` and tasks' `plugin` use.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "plugin name {name:?}: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter"
        );
    }
    Ok(())
}

/// Fills a template: `{name}` is the plugin's name, `{{`/`}}` are literal braces.
fn fill(template: &str, name: &str) -> String {
    template
        .replace("{{", "\u{0}")
        .replace("}}", "\u{1}")
        .replace("{name}", name)
        .replace('\u{0}', "{")
        .replace('\u{1}', "}")
}

/// `(path, text)` of files a project template writes.
type Files = &'static [(&'static str, &'static str)];

/// `kairos plugin new NAME --lang L [--dir D]`: writes the project into `D/NAME` (default
/// `./NAME`); refuses to touch an existing non-empty directory. Returns the directory.
pub fn new_project(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = dir.unwrap_or(Path::new(".")).join(name);
    if root.exists()
        && std::fs::read_dir(&root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty; choose another name or --dir",
            root.display()
        );
    }
    let (files, verbatim): (Files, Files) = match lang {
        Lang::Python => (python::TEMPLATE, &[]),
        Lang::Rust => (rust::TEMPLATE, rust::SDK),
        Lang::Js => (js::TEMPLATE, js::TYPES),
    };
    for (path, template) in files {
        write_file(&root, path, &fill(template, name))?;
    }
    write_files(&root, verbatim)?;
    Ok(root)
}

/// The project's language, from the files in it.
pub fn detect(dir: &Path) -> anyhow::Result<Lang> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Lang::Rust)
    } else if dir.join("app.py").is_file() {
        Ok(Lang::Python)
    } else if dir.join("package.json").is_file() {
        Ok(Lang::Js)
    } else {
        bail!(
            "{}: no Cargo.toml (Rust), app.py (Python) or package.json (JavaScript) here; \
             create a project with `kairos plugin new NAME --lang …`",
            dir.display()
        )
    }
}

/// The plugin's name: the project directory's.
pub fn project_name(dir: &Path) -> anyhow::Result<String> {
    let abs = dir
        .canonicalize()
        .with_context(|| format!("no project at {}", dir.display()))?;
    let name = abs
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.to_ascii_lowercase().replace(' ', "-"))
        .context("the project directory has no usable name")?;
    check_name(&name)?;
    Ok(name)
}

/// `kairos plugin build [DIR]`: builds the project with its toolchain into `DIR/NAME.wasm`
/// (or `out`), then loads it as the server would. Returns the written file.
pub async fn build(dir: &Path, out: Option<&Path>, cfg: &Config) -> anyhow::Result<PathBuf> {
    let name = project_name(dir)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("{name}.wasm")));
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let built = scratch.path().join(format!("{name}.wasm"));
    match detect(dir)? {
        Lang::Python => python::build(dir, scratch.path(), &built)?,
        Lang::Rust => rust::build(dir, &built)?,
        Lang::Js => js::build(dir, scratch.path(), &built)?,
    }
    check_component(&built, &name, cfg)?;
    std::fs::copy(&built, &out).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// Loads the component from `path` the way the server does (compiled, checked against the
/// `task-plugin` world, limits applied); its error otherwise.
fn check_component(path: &Path, name: &str, cfg: &Config) -> anyhow::Result<()> {
    let dir = path.parent().context("the built file has no directory")?;
    let rt = Runtime::new(cfg.runtime_config(), Arc::new(MemoryServices::new()))?;
    let summary = rt.load_dir(dir);
    if let Some(err) = summary.errors.first() {
        bail!("the built component is not a Kairos plugin: {err}");
    }
    if !summary.loaded.iter().any(|n| n == name) {
        bail!("the build wrote no {name}.wasm");
    }
    Ok(())
}

/// Runs a componentizer (`what`) and checks that it wrote `out`; its output otherwise.
fn run_toolchain(mut cmd: std::process::Command, what: &str, out: &Path) -> anyhow::Result<()> {
    let output = cmd
        .output()
        .with_context(|| format!("running {what} ({:?})", cmd.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !out.is_file() {
        bail!("{what} wrote no {}", out.display());
    }
    Ok(())
}

/// Finds a toolchain program: the environment variable `env` if set, else `program` on the
/// `PATH`; otherwise an error telling how to install it.
pub fn find_tool(env: &str, program: &str, install: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env}={} is not a file; {install}", p.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{program} not found on PATH: {install} (or set {env})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_templates_filled() {
        assert!(check_name("hello-2").is_ok());
        assert!(check_name("Hello").is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
        assert_eq!(fill("{name}: {{\"a\": 1}}", "hi"), "hi: {\"a\": 1}");
        assert_eq!(
            fill("f\"{{greeting}}, {{name}}!\"", "hi"),
            "f\"{greeting}, {name}!\""
        );
    }

    #[test]
    fn new_refuses_a_non_empty_dir_and_detect_finds_the_language() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = new_project("hi", Lang::Python, Some(tmp.path())).expect("new");
        assert_eq!(detect(&p).expect("detect"), Lang::Python);
        assert_eq!(project_name(&p).expect("name"), "hi");
        let again = new_project("hi", Lang::Python, Some(tmp.path()));
        assert!(again.is_err(), "an existing project is not overwritten");
        assert!(detect(tmp.path()).is_err());
        let app = std::fs::read_to_string(p.join("app.py")).expect("app.py");
        assert!(
            app.contains("@task") && app.contains("The hi plugin"),
            "{app}"
        );
    }
}
