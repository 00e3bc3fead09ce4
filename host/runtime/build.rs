//! Builds the Wasm guests and tells the crate where they are.
//!
//! One nested `cargo build --release --target wasm32-wasip2 --workspace` of the guest workspace
//! (`plugins/Cargo.toml`: the shipped plugins, the test guests and the SDK's example), into its
//! own target directory `<target>/wasm-guests`, then copies
//!
//! - `notify`, `alerting`, `chores` to `$OUT_DIR/builtin/NAME.wasm`, exported as
//!   `KAIROS_BUILTIN_PLUGINS_DIR`: the crate embeds them with `include_bytes!` (the path is
//!   used at compile time only, nothing of it reaches the binary), and to
//!   `<target>/plugins/NAME.wasm`, for tests and scripts that want them as files (the
//!   product never reads that directory);
//! - `noop`, `hostile`, `hello`, `typed` to `<target>/test-guests/NAME.wasm`, exported as
//!   `KAIROS_TEST_GUESTS_DIR` (for tests and benchmarks only).
//!
//! `<target>` is this build's target directory (`CARGO_TARGET_DIR`, else found above `OUT_DIR`).
//! The same build by hand, from the repository root:
//!
//! ```text
//! cargo build --manifest-path plugins/Cargo.toml --release --target wasm32-wasip2 --workspace \
//!     --target-dir target/wasm-guests
//! ```

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "wasm32-wasip2";
/// Shipped plugins, embedded in the binary (and copied to `<target>/plugins`).
const PLUGINS: &[&str] = &["notify", "alerting", "chores"];
/// Guests for the host's tests, copied to `<target>/test-guests`.
const TEST_GUESTS: &[&str] = &["noop", "hostile", "hello", "typed"];

fn main() {
    if let Err(message) = build() {
        eprintln!("\nerror: building the Wasm guests failed: {message}\n");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let repo = manifest_dir
        .join("../..")
        .canonicalize()
        .map_err(|e| format!("cannot resolve the repository root: {e}"))?;
    let guest_manifest = repo.join("plugins/Cargo.toml");

    for dir in ["wit", "plugin-sdk", "plugins"] {
        watch(&repo.join(dir)).map_err(|e| format!("cannot scan {dir}/: {e}"))?;
    }
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    check_guest_target(&rustc)?;

    let target = target_dir(&repo)?;
    let guest_target = target.join("wasm-guests");
    cargo_build(&guest_manifest, &guest_target)?;

    let built = guest_target.join(GUEST_TARGET).join("release");
    // A private copy for `include_bytes!`: `<target>/plugins` is for people and tests, who may
    // put other files there.
    let builtin_dir = PathBuf::from(var("OUT_DIR")?).join("builtin");
    let plugins_dir = target.join("plugins");
    let test_guests_dir = target.join("test-guests");
    copy_guests(&built, PLUGINS, &builtin_dir)?;
    copy_guests(&built, PLUGINS, &plugins_dir)?;
    copy_guests(&built, TEST_GUESTS, &test_guests_dir)?;

    println!(
        "cargo::rustc-env=KAIROS_BUILTIN_PLUGINS_DIR={}",
        builtin_dir.display()
    );
    println!(
        "cargo::rustc-env=KAIROS_TEST_GUESTS_DIR={}",
        test_guests_dir.display()
    );
    Ok(())
}

fn var(name: &str) -> Result<OsString, String> {
    env::var_os(name).ok_or_else(|| format!("cargo did not set {name}"))
}

/// `rerun-if-changed` for `dir`, leaving out `target/` directories (a guest crate built by hand
/// in place must not make every host build rebuild the guests) and hidden entries.
fn watch(dir: &Path) -> io::Result<()> {
    let entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    let skipped = |e: &fs::DirEntry| {
        let name = e.file_name();
        name == "target" || name.to_string_lossy().starts_with('.')
    };
    if !entries.iter().any(skipped) {
        // Cargo scans a directory recursively, so new files are noticed too.
        println!("cargo::rerun-if-changed={}", dir.display());
        return Ok(());
    }
    for entry in entries.iter().filter(|e| !skipped(e)) {
        if entry.file_type()?.is_dir() {
            watch(&entry.path())?;
        } else {
            println!("cargo::rerun-if-changed={}", entry.path().display());
        }
    }
    Ok(())
}

/// Fails early, with the fix, when the standard library for the guest target is missing.
fn check_guest_target(rustc: &OsString) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rustc.to_string_lossy()))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let std_dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(GUEST_TARGET)
        .join("lib");
    if output.status.success() && std_dir.is_dir() {
        return Ok(());
    }
    Err(format!(
        "the {GUEST_TARGET} target is not installed for this toolchain (no {}).\n\
         Install it with:\n\n    rustup target add {GUEST_TARGET}\n\n\
         or, without network, unpack ../shared/toolchain/rust-std-{GUEST_TARGET}.tar.xz into \
         \"$(rustc --print sysroot)/lib/rustlib/\" as ../shared/toolchain/README.md describes.",
        std_dir.display()
    ))
}

/// This build's target directory: `CARGO_TARGET_DIR` when set (relative to the workspace
/// root), else the directory holding `CACHEDIR.TAG` above `OUT_DIR`
/// (`<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`).
fn target_dir(repo: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Ok(repo.join(dir));
    }
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    if let Some(dir) = out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return Ok(dir.to_owned());
    }
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("unexpected OUT_DIR layout: {}", out_dir.display()))?;
    let mut dir = profile_dir.parent().unwrap_or(profile_dir);
    if env::var_os("TARGET").is_some_and(|t| dir.file_name() == Some(t.as_os_str())) {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_owned())
}

/// The one nested cargo invocation, isolated from what the outer build passes down.
fn cargo_build(manifest: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args([
            "--workspace",
            "--release",
            "--locked",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // Config files are looked up from the current directory: use the guest workspace's.
        .current_dir(manifest.parent().unwrap_or(manifest))
        // The host's flags (e.g. `-C target-cpu=native`, coverage) are not for the guests.
        // An explicit empty RUSTFLAGS also overrides `build.rustflags` from config files.
        .env("RUSTFLAGS", "")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_BUILD_BUILD_DIR")
        // `cargo clippy` sets a workspace wrapper (clippy-driver) and coverage tools a wrapper;
        // neither is meant for the guests.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER")
        // Inner cargo output is progress for a human; keep build-script stdout for cargo.
        .stdout(Stdio::from(io::stderr()));
    // The guest workspace's own [profile.release] decides, not the outer build's overrides.
    for (key, _) in env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("CARGO_PROFILE_"))
        {
            cmd.env_remove(key);
        }
    }
    eprintln!("running: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "`cargo build --manifest-path {} --release --target {GUEST_TARGET}` failed ({status}); \
         its errors are above. If it says the lock file needs updating, run \
         `cargo update --manifest-path {0} --workspace` and commit plugins/Cargo.lock.",
        manifest.display()
    ))
}

/// Copies `<built>/NAME.wasm` to `<dest>/NAME.wasm` for each name, only when the bytes changed
/// and by rename, so a `kairos serve` watching the directory never sees a half-written file.
fn copy_guests(built: &Path, names: &[&str], dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    for name in names {
        let from = built.join(format!("{name}.wasm"));
        let to = dest.join(format!("{name}.wasm"));
        let bytes = fs::read(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        if fs::read(&to).is_ok_and(|old| old == bytes) {
            continue;
        }
        let partial = dest.join(format!(".{name}.wasm.partial"));
        fs::write(&partial, &bytes)
            .and_then(|()| fs::rename(&partial, &to))
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    Ok(())
}
