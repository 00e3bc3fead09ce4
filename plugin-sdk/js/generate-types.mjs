// Generates the TypeScript declarations of the WIT (wit/plugin.wit, world
// kairos:plugin/task-plugin) for JavaScript guests into plugin-sdk/js/wit-types/, with the
// js-component-bindgen of @bytecodealliance/jco-transpile (the library under `jco guest-types`).
// index.d.ts builds the SDK's types on them, so they follow the WIT.
//
//   node plugin-sdk/js/generate-types.mjs          rewrite wit-types/
//   node plugin-sdk/js/generate-types.mjs --check  exit 1 if wit-types/ differs from the WIT
//
// The packages come from `scripts/setup-plugins` (.node-plugins/, or $KAIROS_NODE_MODULES).
//
// jco 1.35's own `jco types` cannot read any WIT path: its filesystem shim (preview2-shim 0.26)
// starts with no preopened directories. This script grants the WIT's directory, read-only use
// being all the bindgen makes of it, before it runs.
import { readFileSync, readdirSync, mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const witDir = join(root, "wit");
const outDir = join(here, "wit-types");
const check = process.argv.includes("--check");

const nodeModules = process.env.KAIROS_NODE_MODULES ?? join(root, ".node-plugins", "node_modules");
const transpileDir = join(nodeModules, "@bytecodealliance", "jco-transpile");
if (!existsSync(transpileDir)) {
  console.error(
    `generate-types: ${transpileDir} not found; run scripts/setup-plugins (or set KAIROS_NODE_MODULES)`,
  );
  process.exit(2);
}
// The shim instance the bindgen imports: jco-transpile's own copy when npm nested one.
const nestedShim = join(transpileDir, "node_modules", "@bytecodealliance", "preview2-shim");
const shimDir = existsSync(nestedShim) ? nestedShim : join(nodeModules, "@bytecodealliance", "preview2-shim");
const shimFs = await import(pathToFileURL(join(shimDir, "dist", "nodejs", "filesystem.js")).href);
shimFs._setPreopens({ [witDir]: witDir });

const { generateGuestTypes } = await import(pathToFileURL(join(transpileDir, "dist", "index.js")).href);
const files = await generateGuestTypes(witDir, { worldName: "task-plugin", outDir: "" });

const header = "// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.\n";
const wanted = new Map(
  Object.entries(files).map(([name, data]) => [name.replace(/^\/+/, ""), header + Buffer.from(data).toString("utf8")]),
);

function listed(dir, prefix = "") {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listed(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
  );
}

if (check) {
  const have = listed(outDir);
  const stale = [...wanted].filter(([name, text]) => !have.includes(name) || readFileSync(join(outDir, name), "utf8") !== text);
  const extra = have.filter((name) => !wanted.has(name));
  if (stale.length || extra.length) {
    for (const [name] of stale) console.error(`generate-types: plugin-sdk/js/wit-types/${name} is out of date`);
    for (const name of extra) console.error(`generate-types: plugin-sdk/js/wit-types/${name} is not generated from the WIT`);
    console.error("generate-types: run `node plugin-sdk/js/generate-types.mjs` and commit the result");
    process.exit(1);
  }
  console.log(`generate-types: ${wanted.size} file(s) match wit/plugin.wit`);
} else {
  rmSync(outDir, { recursive: true, force: true });
  for (const [name, text] of wanted) {
    mkdirSync(dirname(join(outDir, name)), { recursive: true });
    writeFileSync(join(outDir, name), text);
  }
  console.log(`generate-types: wrote ${wanted.size} file(s) to plugin-sdk/js/wit-types/`);
}
