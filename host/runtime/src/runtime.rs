//! [`Runtime`]: the engine, the linker, the plugin registry and loading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{TaskPlugin, TaskPluginPre};
use crate::builtin::BUILTIN_PLUGINS;
use crate::config::{Effective, RuntimeConfig};
use crate::engine::{Compiler, POOL_MAX_MEMORY, Ticker, build_engine};
use crate::host_impl::StoreState;
use crate::http::AllowedHost;
use crate::logs::now_ms;
use crate::manifest::Manifest;
use crate::outcome::RunFailure;
use crate::registry::{PluginInfo, PluginSource, PluginVersion, Registry};
use crate::services::HostServices;
use crate::warm::{WarmPool, warm_capacity};

/// The Wasm plugin runtime: one engine, the loaded plugins, and [`Runtime::run`].
pub struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<StoreState>,
    pub(crate) cfg: RuntimeConfig,
    pub(crate) services: Arc<dyn HostServices>,
    pub(crate) registry: Registry,
    compiler: Compiler,
    /// Serializes loads (two loads of one plugin must not interleave).
    load_lock: Mutex<()>,
    /// The built-in versions registered by [`Runtime::load_builtin`], by name: what a plugin
    /// serves when no directory overrides it, and again when the directory's file is removed.
    builtins: Mutex<BTreeMap<String, Arc<[u8]>>>,
    /// Per plugin, the directory files last rejected (a digest of their bytes, see
    /// [`Runtime::load_plugin`]) and why: the same files seen again (a second file-system
    /// event for one write) get the same answer without being loaded or logged again.
    rejected_files: Mutex<BTreeMap<String, (String, String)>>,
    /// The node's memory budget, one permit per MiB (see [`RuntimeConfig::memory_budget_mb`]).
    pub(crate) memory_budget: Arc<Semaphore>,
    /// Idle instances of plugins with `reuse_instances`, by version and ordering key.
    pub(crate) warm: WarmPool,
    _ticker: Ticker,
}

/// What [`Runtime::load_dir`] (or [`Runtime::load_builtins`]) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Plugins loaded (or already loaded with the same digest and manifest).
    pub loaded: Vec<String>,
    /// Files that could not be loaded.
    pub errors: Vec<LoadError>,
}

/// One file (or built-in plugin) that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file; for a built-in plugin, `builtin:NAME`.
    pub path: PathBuf,
    /// The plugin name, when the file name gives one.
    pub plugin: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// The result of (re)loading one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadChange {
    Loaded {
        digest: String,
        previous: Option<String>,
        /// The previous version came from another source (built-in, or another directory).
        source_changed: bool,
    },
    Unchanged {
        digest: String,
    },
    Removed {
        digest: String,
    },
    /// The directory's file was removed and the built-in version serves again.
    FellBack {
        digest: String,
        previous: String,
    },
    /// A built-in version was registered while a directory's version overrides it.
    Overridden {
        digest: String,
    },
    Absent,
}

/// Whether `name` is usable as a plugin name (`[A-Za-z0-9_-]+`).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a load changed nothing.
pub(crate) enum LoadFailed {
    /// Rejected now: [`Runtime::apply`] logs it, once.
    Rejected(String),
    /// The same files as the plugin's last rejection: that answer again, not logged again.
    Again(String),
}

impl From<String> for LoadFailed {
    fn from(reason: String) -> Self {
        Self::Rejected(reason)
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator sized by `max_instances`, epoch interruption
    /// with a ticker thread stopped when the runtime is dropped) and the linker.
    pub fn new(
        cfg: RuntimeConfig,
        services: Arc<dyn HostServices>,
    ) -> anyhow::Result<Arc<Runtime>> {
        for (name, grant) in &cfg.grants {
            for h in &grant.allowed_hosts {
                AllowedHost::parse(h)
                    .map_err(|e| anyhow::anyhow!("host config [plugin.{name}]: {e}"))?;
            }
        }
        anyhow::ensure!(
            cfg.memory_budget_mb >= 1,
            "memory_budget_mb must be at least 1 (MiB)"
        );
        let budget_permits = usize::try_from(cfg.memory_budget_mb)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let cfg_max_instances = cfg.max_instances;
        let engine = build_engine(cfg.max_instances)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(crate::bindings::to_anyhow)
            .context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(crate::bindings::to_anyhow)
            .context("linking wasi:http")?;
        TaskPlugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(crate::bindings::to_anyhow)
            .context("linking the kairos:plugin imports")?;
        let ticker = Ticker::start(engine.clone())?;
        let compiler = Compiler::new(engine.clone(), cfg.cache_dir.clone());
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cfg,
            services,
            registry: Registry::default(),
            compiler,
            load_lock: Mutex::new(()),
            builtins: Mutex::new(BTreeMap::new()),
            rejected_files: Mutex::new(BTreeMap::new()),
            memory_budget: Arc::new(Semaphore::new(budget_permits)),
            warm: WarmPool::new(warm_capacity(cfg_max_instances)),
            _ticker: ticker,
        }))
    }

    /// Loads every `NAME.wasm` (with its optional `NAME.toml`) in `dir`. A plugin that
    /// fails keeps its previous version, if it had one.
    pub fn load_dir(&self, dir: &Path) -> LoadSummary {
        let mut summary = LoadSummary::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                summary.errors.push(LoadError {
                    path: dir.to_path_buf(),
                    plugin: None,
                    message: format!("cannot read plugin directory: {e}"),
                });
                return summary;
            }
        };
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if stem.starts_with('.') {
                continue;
            }
            if !valid_name(stem) {
                summary.errors.push(LoadError {
                    path: path.clone(),
                    plugin: None,
                    message: "invalid plugin file name: NAME must be made of letters, digits, \
                              `_` and `-`"
                        .to_string(),
                });
                continue;
            }
            names.push(stem.to_string());
        }
        names.sort();
        for name in names {
            match self.reload(dir, &name) {
                Ok(_) => summary.loaded.push(name),
                Err(message) => summary.errors.push(LoadError {
                    path: dir.join(format!("{name}.wasm")),
                    plugin: Some(name),
                    message,
                }),
            }
        }
        summary
    }

    /// Loads one `NAME.wasm` (with `NAME.toml` beside it, if any); returns its digest.
    pub fn load_file(&self, path: &Path) -> Result<String, LoadError> {
        let err = |plugin: Option<String>, message: String| LoadError {
            path: path.to_path_buf(),
            plugin,
            message,
        };
        let name = match path.file_stem().and_then(|s| s.to_str()) {
            Some(n) if valid_name(n) && path.extension().is_some_and(|e| e == "wasm") => n,
            _ => {
                return Err(err(
                    None,
                    "expected a NAME.wasm file, NAME made of letters, digits, `_` and `-`".into(),
                ));
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match self.reload(dir, name) {
            Ok(LoadChange::Loaded { digest, .. } | LoadChange::Unchanged { digest }) => Ok(digest),
            Ok(
                LoadChange::Removed { .. }
                | LoadChange::FellBack { .. }
                | LoadChange::Overridden { .. }
                | LoadChange::Absent,
            ) => Err(err(Some(name.to_string()), "file not found".into())),
            Err(message) => Err(err(Some(name.to_string()), message)),
        }
    }

    /// Brings `name` in line with `dir`: loads a new or changed `NAME.wasm`/`NAME.toml`,
    /// unloads a removed `NAME.wasm`. Errors are logged once and leave the current
    /// version serving.
    pub(crate) fn reload(&self, dir: &Path, name: &str) -> Result<LoadChange, String> {
        self.apply(name, || {
            let mut content = None;
            let result = self.load_plugin(dir, name, &mut content);
            // Under the load lock, so that concurrent reloads keep it in line with the
            // registry: remembered only for files rejected now, kept while they are seen
            // again, forgotten after anything else.
            let mut rejected = self
                .rejected_files
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match (&result, content) {
                (Err(LoadFailed::Again(_)), _) => {}
                (Err(LoadFailed::Rejected(reason)), Some(content)) => {
                    rejected.insert(name.to_string(), (content, reason.clone()));
                }
                _ => {
                    rejected.remove(name);
                }
            }
            result
        })
    }

    /// Loads the standard plugins built into the binary ([`BUILTIN_PLUGINS`]), as
    /// [`Runtime::load_builtin`] does each.
    pub fn load_builtins(&self) -> LoadSummary {
        let mut summary = LoadSummary::default();
        for p in BUILTIN_PLUGINS {
            match self.load_builtin(p.name, p.wasm) {
                Ok(_) => summary.loaded.push(p.name.to_string()),
                Err(e) => summary.errors.push(e),
            }
        }
        summary
    }

    /// Loads `wasm` as the built-in version of `name` (no manifest: the operator's grant and
    /// `[limits]` apply, as to a directory plugin without `NAME.toml`); returns its digest.
    /// A directory's `NAME.wasm` overrides it: loaded while one serves, it only becomes the
    /// version `name` falls back to when that file is removed.
    pub fn load_builtin(
        &self,
        name: &str,
        wasm: impl Into<Arc<[u8]>>,
    ) -> Result<String, LoadError> {
        let err = |message: String| LoadError {
            path: PathBuf::from(format!("builtin:{name}")),
            plugin: valid_name(name).then(|| name.to_string()),
            message,
        };
        if !valid_name(name) {
            return Err(err(
                "invalid plugin name: it must be made of letters, digits, `_` and `-`".into(),
            ));
        }
        let wasm: Arc<[u8]> = wasm.into();
        let result = self.apply(name, || {
            self.builtins_map().insert(name.to_string(), wasm.clone());
            match self.registry.current(name) {
                Some(cur) if matches!(cur.source, PluginSource::Dir(_)) => {
                    Ok(LoadChange::Overridden {
                        digest: sha256_hex(&wasm),
                    })
                }
                _ => Ok(self.install_bytes(
                    name,
                    &wasm,
                    sha256_hex(&wasm),
                    Manifest::default(),
                    None,
                    PluginSource::Builtin,
                )?),
            }
        });
        match result {
            Ok(
                LoadChange::Loaded { digest, .. }
                | LoadChange::Unchanged { digest }
                | LoadChange::Overridden { digest }
                | LoadChange::FellBack { digest, .. },
            ) => Ok(digest),
            Ok(LoadChange::Removed { .. } | LoadChange::Absent) => Err(err("not loaded".into())),
            Err(message) => Err(err(message)),
        }
    }

    fn builtins_map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<[u8]>>> {
        self.builtins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one load of `name` under the load lock and logs what it did. Errors are logged
    /// once and leave the current version serving.
    fn apply(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<LoadChange, LoadFailed>,
    ) -> Result<LoadChange, String> {
        let _guard = match self.load_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let result = load();
        let source = || {
            self.registry
                .current(name)
                .map_or_else(String::new, |v| v.source.to_string())
        };
        match &result {
            Ok(LoadChange::Loaded {
                digest,
                previous,
                source_changed,
            }) => match previous {
                Some(prev) if *source_changed => tracing::info!(
                    plugin = name, digest = %digest, previous = %prev, source = %source(),
                    "plugin `{name}` from {} overrides its previous version", source()
                ),
                Some(prev) if prev != digest => tracing::info!(
                    plugin = name, digest = %digest, previous = %prev, source = %source(),
                    "plugin `{name}` swapped to a new version"
                ),
                Some(_) => tracing::info!(plugin = name, digest = %digest,
                    "plugin `{name}` reloaded (manifest changed)"),
                None => tracing::info!(plugin = name, digest = %digest, source = %source(),
                    "plugin `{name}` loaded"),
            },
            Ok(LoadChange::Removed { digest }) => tracing::info!(
                plugin = name, digest = %digest,
                "plugin `{name}` unloaded: {name}.wasm was removed"
            ),
            Ok(LoadChange::FellBack { digest, previous }) => tracing::info!(
                plugin = name, digest = %digest, previous = %previous,
                "plugin `{name}` serves its built-in version again: {name}.wasm was removed"
            ),
            Ok(LoadChange::Overridden { digest }) => tracing::debug!(
                plugin = name, digest = %digest,
                "built-in plugin `{name}` registered; the directory's version overrides it"
            ),
            Ok(LoadChange::Unchanged { .. }) => self.registry.set_error(name, None),
            Ok(LoadChange::Absent) => self.registry.set_error(name, None),
            // Logged when first rejected; the error shows again if anything cleared it since.
            Err(LoadFailed::Again(reason)) => self.registry.set_error(name, Some(reason)),
            Err(LoadFailed::Rejected(reason)) => {
                self.registry.set_error(name, Some(reason));
                match self.registry.current(name) {
                    Some(cur) => tracing::error!(
                        plugin = name, serving = %cur.digest,
                        "rejected new version of plugin `{name}`: {reason}; version {} keeps serving",
                        cur.digest.get(..12).unwrap_or(&cur.digest)
                    ),
                    None => tracing::error!(plugin = name, "cannot load plugin `{name}`: {reason}"),
                }
            }
        }
        result.map_err(|e| match e {
            LoadFailed::Rejected(reason) | LoadFailed::Again(reason) => reason,
        })
    }

    /// Loads `dir`'s `NAME.wasm` and `NAME.toml`. Sets `content` to a digest of the two files
    /// as read, which [`Self::reload`] remembers when they are rejected: the same files seen
    /// again (a second event for one write, or the watcher's first reconcile racing a write)
    /// fail with [`LoadFailed::Again`] without being loaded again.
    fn load_plugin(
        &self,
        dir: &Path,
        name: &str,
        content: &mut Option<String>,
    ) -> Result<LoadChange, LoadFailed> {
        let wasm_path = dir.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&wasm_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match self.registry.current(name) {
                    Some(cur) if cur.source.is_dir(dir) => Ok(self.file_removed(name)?),
                    _ => Ok(LoadChange::Absent),
                };
            }
            Err(e) => return Err(format!("cannot read {}: {e}", wasm_path.display()).into()),
        };
        let manifest_path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!("cannot read {}: {e}", manifest_path.display()).into());
            }
        };
        let manifest_digest = text.as_deref().map(|t| sha256_hex(t.as_bytes()));
        let digest = sha256_hex(&bytes);
        let files = format!("{digest}:{}", manifest_digest.as_deref().unwrap_or("-"));
        let last = self
            .rejected_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if let Some((rejected, reason)) = last
            && rejected == files
        {
            return Err(LoadFailed::Again(reason));
        }
        *content = Some(files);
        let manifest = match &text {
            Some(text) => {
                Manifest::parse(text).map_err(|e| format!("invalid manifest {name}.toml: {e}"))?
            }
            None => Manifest::default(),
        };
        Ok(self.install_bytes(
            name,
            &bytes,
            digest,
            manifest,
            manifest_digest,
            PluginSource::Dir(dir.to_path_buf()),
        )?)
    }

    /// `name`'s file was removed from the directory its current version came from: its
    /// built-in version serves again, if it has one, else it is unloaded.
    fn file_removed(&self, name: &str) -> Result<LoadChange, String> {
        let builtin = self.builtins_map().get(name).cloned();
        let Some(wasm) = builtin else {
            let digest = self.registry.remove(name).unwrap_or_default();
            return Ok(LoadChange::Removed { digest });
        };
        match self.install_bytes(
            name,
            &wasm,
            sha256_hex(&wasm),
            Manifest::default(),
            None,
            PluginSource::Builtin,
        ) {
            Ok(LoadChange::Loaded {
                digest, previous, ..
            }) => Ok(LoadChange::FellBack {
                digest,
                previous: previous.unwrap_or_default(),
            }),
            Ok(other) => Ok(other),
            Err(e) => {
                self.registry.remove(name);
                Err(format!(
                    "{name}.wasm was removed and its built-in version cannot be loaded: {e}"
                ))
            }
        }
    }

    /// Validates `bytes` (whose SHA-256 is `digest`, hashed once by the caller) as `name`
    /// from `source` under the operator's grant narrowed by `manifest`, compiles it (or
    /// reuses a compiled version of the same digest, in memory or in the cache dir) and makes
    /// it the current version.
    fn install_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        digest: String,
        manifest: Manifest,
        manifest_digest: Option<String>,
        source: PluginSource,
    ) -> Result<LoadChange, String> {
        let current = self.registry.current(name);
        if let Some(cur) = &current
            && cur.digest == digest
            && cur.manifest_digest == manifest_digest
            && cur.source == source
        {
            return Ok(LoadChange::Unchanged { digest });
        }
        let source_changed = current.is_some_and(|cur| cur.source != source);
        let mut eff = Effective::resolve(
            name,
            &self.cfg.defaults,
            &manifest,
            self.cfg.grants.get(name),
        )
        .map_err(|e| format!("invalid settings: {e}"))?;
        if eff.limits.memory_bytes() > POOL_MAX_MEMORY {
            let cap = (POOL_MAX_MEMORY >> 20) as u64;
            eff.warnings.push(format!(
                "memory_mb {} is above the engine's maximum: capped at {cap}",
                eff.limits.memory_mb
            ));
            eff.limits.memory_mb = cap;
        }
        if eff.limits.memory_mb > self.cfg.memory_budget_mb {
            return Err(format!(
                "its memory_mb of {} MiB exceeds the node's memory budget (memory_budget_mb = {}): \
                 it could never run; lower [plugin.{name}.limits] memory_mb or raise \
                 memory_budget_mb",
                eff.limits.memory_mb, self.cfg.memory_budget_mb
            ));
        }
        let pre = match self.registry.find_compiled(&digest) {
            Some(pre) => pre,
            None => self.compile(bytes, &digest)?,
        };
        let version = Arc::new(PluginVersion {
            name: name.to_string(),
            digest: digest.clone(),
            size_bytes: bytes.len() as u64,
            loaded_at_ms: now_ms(),
            manifest_digest,
            pre,
            limits: eff.limits,
            allowed_hosts: eff.allowed_hosts.into(),
            allow_private: eff.allow_private,
            may_schedule: eff.may_schedule.into(),
            config: Arc::new(eff.config),
            reuse_instances: self.cfg.grants.get(name).map_or(0, |g| g.reuse_instances),
            source,
            warnings: eff.warnings,
        });
        for w in &version.warnings {
            tracing::warn!(plugin = name, "plugin `{name}`: {w}");
        }
        let previous = self.registry.install(version);
        Ok(LoadChange::Loaded {
            digest,
            previous,
            source_changed,
        })
    }

    fn compile(&self, bytes: &[u8], digest: &str) -> Result<TaskPluginPre<StoreState>, String> {
        let (component, _cached) = self.compiler.compile(bytes, digest)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("its imports cannot be satisfied by the Kairos host: {e:#}"))?;
        TaskPluginPre::new(instance_pre).map_err(|e| {
            format!("it does not export the kairos:plugin task-plugin world (`run`): {e:#}")
        })
    }

    /// The loaded plugins, by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry.infos()
    }

    /// Plugin files rejected while no version of their plugin is loaded (a version that
    /// is loaded carries its own `last_error` in [`Runtime::plugins`]).
    pub fn rejected_plugins(&self) -> Vec<crate::registry::Rejected> {
        self.registry.rejected()
    }

    /// The digest a task for `name` (optionally pinned to `version`) would run, or why
    /// it cannot run.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<String, RunFailure> {
        self.registry
            .lookup(name, version)
            .map(|v| v.digest.clone())
    }

    /// Instances kept idle for their key's next task (plugins with `reuse_instances`).
    pub fn idle_instances(&self) -> usize {
        self.warm.len()
    }

    /// What an attempt of `name`'s current version reserves from the memory budget, MiB (0 for
    /// a plugin not loaded: it fails without instantiating).
    pub fn reservation_mb(&self, name: &str) -> u64 {
        self.registry
            .current(name)
            .map_or(0, |v| v.limits.memory_mb.min(self.cfg.memory_budget_mb))
    }

    /// Unloads `name` (all versions). Returns whether it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        self.registry.remove(name).is_some()
    }
}
