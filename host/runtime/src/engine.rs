//! The one wasmtime [`Engine`] (pooling allocator, epoch interruption), its epoch
//! ticker thread, and the on-disk cache of compiled artifacts.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Epoch tick period: the resolution of the CPU budget and of yields to the executor.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Linear memory slot cap of the pool (the per-plugin `memory_mb` limit is enforced
/// below it by the store's limiter).
pub(crate) const POOL_MAX_MEMORY: usize = 1 << 32;

pub(crate) fn build_engine(max_instances: u32) -> anyhow::Result<Engine> {
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A Rust component holds its main module plus a few adapter/shim instances.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n)
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(POOL_MAX_MEMORY)
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(crate::bindings::to_anyhow)
        .context("failed to create the wasmtime engine (pooling allocator)")
}

/// Hex digest of what makes compiled artifacts compatible with this engine.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A thread advancing the engine's epoch every [`TICK`]; stopped on drop.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(engine: Engine) -> anyhow::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("kairos-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(TICK);
                    engine.increment_epoch();
                }
            })
            .context("failed to start the epoch ticker thread")?;
        Ok(Ticker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// Compiles components, through an optional on-disk cache keyed by the sha256 of the
/// component bytes and the engine fingerprint.
pub(crate) struct Compiler {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    fingerprint: String,
}

impl Compiler {
    pub(crate) fn new(engine: Engine, cache_dir: Option<PathBuf>) -> Compiler {
        let fingerprint = engine_fingerprint(&engine);
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), "cannot create plugin cache dir: {e}");
        }
        Compiler {
            engine,
            cache_dir,
            fingerprint,
        }
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", self.fingerprint)))
    }

    /// The compiled component for `bytes` (whose sha256 hex is `digest`), and whether
    /// it came from the cache.
    pub(crate) fn compile(&self, bytes: &[u8], digest: &str) -> Result<(Component, bool), String> {
        let path = self.artifact_path(digest);
        if let Some(p) = &path
            && p.is_file()
        {
            // SAFETY: artifacts in the cache dir were written by `Component::serialize`
            // of this same engine configuration (the fingerprint is in the file name)
            // and are replaced only by atomic renames; the cache dir is as trusted as
            // the host binary itself.
            match unsafe { Component::deserialize_file(&self.engine, p) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    path = %p.display(),
                    "ignoring unusable cached plugin artifact: {e}"
                ),
            }
        }
        let component =
            Component::new(&self.engine, bytes).map_err(|e| describe_compile_error(&e))?;
        if let Some(p) = &path
            && let Err(e) = store_artifact(&component, p)
        {
            tracing::warn!(path = %p.display(), "cannot cache compiled plugin: {e:#}");
        }
        Ok((component, false))
    }
}

fn store_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(crate::bindings::to_anyhow)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn describe_compile_error(e: &wasmtime::Error) -> String {
    let msg = format!("{e:#}");
    if msg.contains("magic header not detected") {
        return "not a valid WebAssembly component: not a WebAssembly file (bad magic number)"
            .to_string();
    }
    // One line: some parser errors carry multi-line debug output.
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    let msg: String = msg.chars().take(400).collect();
    if msg.contains("parse a wasm module") || msg.contains("component parser") {
        format!("not a WebAssembly component (a core module? build for wasm32-wasip2): {msg}")
    } else {
        format!("not a valid WebAssembly component: {msg}")
    }
}
