//! Python plugins: the project template and the build through componentize-py.

use std::path::Path;
use std::process::Command;

use super::{SDK_WORLD, find_tool, write_file, write_files, write_sdk_wit};

/// `kairos plugin new --lang python`: `(file, template)`.
pub const TEMPLATE: &[(&str, &str)] = &[
    ("app.py", include_str!("templates/python/app.py")),
    ("README.md", include_str!("templates/python/README.md")),
    ("test_app.py", include_str!("templates/python/test_app.py")),
];

/// The SDK package (`plugin-sdk/python/kairos_plugin`), written next to each build.
const SDK: &[(&str, &str)] = &[
    (
        "kairos_plugin/__init__.py",
        include_str!("../../../plugin-sdk/python/kairos_plugin/__init__.py"),
    ),
    (
        "kairos_plugin/http.py",
        include_str!("../../../plugin-sdk/python/kairos_plugin/http.py"),
    ),
];

/// The component's entry module: the user's `app` (which registers its `@task`) and the SDK's
/// `WitWorld`, the export componentize-py looks for.
const ENTRY: &str = "import app  # noqa: F401\nfrom kairos_plugin import WitWorld  # noqa: F401\n";

pub const INSTALL: &str = "install it with `pip install componentize-py==0.25.1` (scripts/setup-plugins \
puts it in the repository's .venv-plugins)";

/// Builds the project in `dir` into `out`, using `scratch` for the WIT, the SDK and the entry
/// module.
pub fn build(dir: &Path, scratch: &Path, out: &Path) -> anyhow::Result<()> {
    let tool = find_tool("KAIROS_COMPONENTIZE_PY", "componentize-py", INSTALL)?;
    let wit = scratch.join("wit");
    let sdk = scratch.join("sdk");
    write_sdk_wit(&wit)?;
    write_files(&sdk, SDK)?;
    let entry = scratch.join("entry");
    write_file(&entry, "_kairos_entry.py", ENTRY)?;
    let mut cmd = Command::new(&tool);
    cmd.arg("-q")
        .arg("-d")
        .arg(&wit)
        .args(["-w", SDK_WORLD, "componentize", "_kairos_entry", "-p"])
        .arg(dir)
        .arg("-p")
        .arg(&sdk)
        .arg("-p")
        .arg(&entry)
        .arg("-o")
        .arg(out);
    super::run_toolchain(cmd, "componentize-py", out)
}
