//! JavaScript plugins: the project template and the build through componentize-js.
//!
//! componentize-js compiles one ES module, so the build inlines the SDK (`plugin-sdk/js`):
//! its host imports go to the top, its body becomes an object `__kairos_sdk`, and the plugin's
//! `import {…} from '@kairos/plugin'` becomes `const {…} = __kairos_sdk`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{find_tool, write_sdk_wit};

/// `kairos plugin new --lang js`: `(file, template)`.
pub const TEMPLATE: &[(&str, &str)] = &[
    ("app.js", include_str!("templates/js/app.js")),
    ("package.json", include_str!("templates/js/package.json")),
    ("README.md", include_str!("templates/js/README.md")),
    ("test.mjs", include_str!("templates/js/test.mjs")),
];

const SDK: &str = include_str!("../../../plugin-sdk/js/index.js");
const SDK_NAME: &str = "@kairos/plugin";
/// The names the SDK exports.
const SDK_EXPORTS: &str =
    "Permanent, Retry, KairosError, HttpError, task, log, kv, config, schedule, http";

const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js";
const INSTALL: &str = "run `npm install @bytecodealliance/componentize-js@0.23.0` in the project \
(or scripts/setup-plugins, which installs it into the repository's .node-plugins), or set \
KAIROS_NODE_MODULES to a node_modules directory that has it";

/// The build script node runs in the scratch directory.
const BUILD_MJS: &str = r#"import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
const [source, wit, out] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath: source, witPath: wit, worldName: 'task-plugin-sdk',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
"#;

/// One module: the SDK inlined, then the plugin's source.
pub fn bundle(app: &str) -> anyhow::Result<String> {
    let (imports, body): (Vec<&str>, Vec<&str>) = SDK.lines().partition(|l| {
        l.starts_with("import ") && (l.contains("'kairos:plugin/") || l.contains("'wasi:http/"))
    });
    let body: Vec<String> = body
        .iter()
        .map(|l| l.strip_prefix("export ").unwrap_or(l).to_string())
        .collect();
    let mut out = imports.join("\n");
    out.push_str("\nconst __kairos_sdk = (() => {\n");
    out.push_str(&body.join("\n"));
    out.push_str(&format!("\nreturn {{ {SDK_EXPORTS} }};\n}})();\n"));
    let mut found = false;
    for line in app.lines() {
        let t = line.trim();
        if t.starts_with("import ")
            && (t.contains(&format!("'{SDK_NAME}'")) || t.contains(&format!("\"{SDK_NAME}\"")))
        {
            found = true;
            out.push_str(&rewrite_import(t)?);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        bail!("app.js does not import from '{SDK_NAME}' (import {{ task }} from '{SDK_NAME}')");
    }
    Ok(out)
}

/// `import { a, b as c } from '@kairos/plugin';` → `const { a, b: c } = __kairos_sdk;`,
/// `import * as k from …` → `const k = __kairos_sdk;`.
fn rewrite_import(line: &str) -> anyhow::Result<String> {
    let spec = line
        .strip_prefix("import ")
        .and_then(|r| r.rsplit_once(" from "))
        .map(|(s, _)| s.trim())
        .with_context(|| format!("cannot read the import {line:?}; write it on one line"))?;
    if let Some(name) = spec.strip_prefix("* as ") {
        return Ok(format!("const {} = __kairos_sdk;", name.trim()));
    }
    if spec.starts_with('{') && spec.ends_with('}') {
        let names = spec.replace(" as ", ": ");
        return Ok(format!("const {names} = __kairos_sdk;"));
    }
    bail!("unsupported import {line:?}: use `import {{ … }} from '{SDK_NAME}'`")
}

fn node_modules(dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = std::env::var_os("KAIROS_NODE_MODULES")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(dir.join("node_modules")));
    for c in candidates {
        if c.join(COMPONENTIZE_JS).join("package.json").is_file() {
            return Ok(c);
        }
    }
    bail!("{COMPONENTIZE_JS} not found: {INSTALL}")
}

/// Builds the project in `dir` into `out`, using `scratch` for the WIT, the bundle and the
/// build script.
pub fn build(dir: &Path, scratch: &Path, out: &Path) -> anyhow::Result<()> {
    let node = find_tool(
        "KAIROS_NODE",
        "node",
        "install Node.js 20 or later (Debian: apt-get install nodejs)",
    )?;
    let modules = node_modules(dir)?;
    let app = std::fs::read_to_string(dir.join("app.js")).context("reading app.js")?;
    write_sdk_wit(&scratch.join("wit"))?;
    std::fs::write(scratch.join("bundle.js"), bundle(&app)?)?;
    std::fs::write(scratch.join("build.mjs"), BUILD_MJS)?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(&modules, scratch.join("node_modules"))
        .context("linking node_modules")?;
    let mut cmd = Command::new(&node);
    cmd.current_dir(scratch)
        .args(["build.mjs", "bundle.js", "wit"])
        .arg(out);
    super::run_toolchain(cmd, "componentize-js", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_is_inlined_and_imports_rewritten() {
        let b = bundle(
            "import { task, log as l } from '@kairos/plugin';\nexport const run = task(() => l);\n",
        )
        .expect("bundle");
        assert!(b.starts_with("import "), "{b}");
        assert!(b.contains("const { task, log: l } = __kairos_sdk;"), "{b}");
        assert!(!b.contains("export class"), "{b}");
        assert!(b.contains("export const run"), "{b}");
        assert!(bundle("export const run = () => 1;").is_err());
        assert_eq!(
            rewrite_import("import * as k from \"@kairos/plugin\";").expect("rewrite"),
            "const k = __kairos_sdk;"
        );
    }
}
