//! Loaded plugins: one current version per name plus up to [`MAX_RETAINED`] superseded
//! versions (for tasks pinned to a digest), swapped atomically.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use crate::bindings::TaskPluginPre;
use crate::host_impl::StoreState;
use crate::http::AllowedHost;
use crate::limits::Limits;
use crate::outcome::{FailureKind, RunFailure};

/// Superseded versions kept per plugin.
pub const MAX_RETAINED: usize = 8;

/// One compiled, validated plugin version with its effective settings.
pub(crate) struct PluginVersion {
    pub(crate) name: String,
    pub(crate) digest: String,
    pub(crate) size_bytes: u64,
    pub(crate) loaded_at_ms: i64,
    pub(crate) manifest_digest: Option<String>,
    pub(crate) pre: TaskPluginPre<StoreState>,
    pub(crate) limits: Limits,
    pub(crate) allowed_hosts: Arc<[AllowedHost]>,
    pub(crate) allow_private: bool,
    pub(crate) may_schedule: Arc<[String]>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    /// Most tasks one instance serves (0 or 1: a fresh instance per task).
    pub(crate) reuse_instances: u32,
    pub(crate) source: PluginSource,
    /// What the manifest asked beyond the operator's grant (clamped or dropped).
    pub(crate) warnings: Vec<String>,
}

impl PluginVersion {
    /// Whether an instance may serve more than one task (`reuse_instances` > 1).
    pub(crate) fn reuses_instances(&self) -> bool {
        self.reuse_instances > 1
    }
}

/// Where a plugin version came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// Built into the binary ([`crate::BUILTIN_PLUGINS`], or [`crate::Runtime::load_builtin`]).
    Builtin,
    /// `NAME.wasm` (and `NAME.toml`) in this directory.
    Dir(PathBuf),
}

impl PluginSource {
    /// Whether this is the directory `dir`.
    pub fn is_dir(&self, dir: &Path) -> bool {
        matches!(self, PluginSource::Dir(d) if d == dir)
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Builtin => f.write_str("builtin"),
            // A relative directory called `builtin` must not read as the built-in source.
            PluginSource::Dir(d) if d.as_os_str() == "builtin" => f.write_str("./builtin"),
            PluginSource::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// `"builtin"`, or the directory.
impl Serialize for PluginSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A loaded plugin, as listed by [`crate::Runtime::plugins`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// sha256 hex of the current `.wasm`.
    pub digest: String,
    pub size_bytes: u64,
    pub loaded_at_ms: i64,
    /// Effective allowlist (the operator's grant, narrowed by the manifest).
    pub allowed_hosts: Vec<String>,
    /// Whether the allowed hosts may resolve to non-public addresses (the grant's
    /// `allow_private`).
    pub allow_private: bool,
    /// Other plugins it may schedule (the grant's `may_schedule`).
    pub may_schedule: Vec<String>,
    /// Digests still runnable, newest (current) first.
    pub versions: Vec<String>,
    /// Effective limits of the current version.
    pub limits: Limits,
    /// Where the current version came from: `"builtin"` or the plugin directory.
    pub source: PluginSource,
    /// Why the latest attempt to load a new version was rejected (the current version
    /// kept serving), if it was.
    pub last_error: Option<String>,
    /// What the current version's manifest asked beyond the operator's ceiling (limits
    /// clamped, hosts dropped).
    pub warnings: Vec<String>,
}

struct Entry {
    current: Arc<PluginVersion>,
    /// Superseded versions, newest first.
    older: Vec<Arc<PluginVersion>>,
    last_error: Option<String>,
}

/// A plugin file that could not be loaded while no version of it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub name: String,
    pub error: String,
}

#[derive(Default)]
pub(crate) struct Registry {
    map: RwLock<HashMap<String, Entry>>,
    /// Why a plugin with no version loaded was rejected, by name.
    rejected: std::sync::Mutex<BTreeMap<String, String>>,
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        match self.map.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry>> {
        match self.map.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(crate) fn current(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.read().get(name).map(|e| e.current.clone())
    }

    /// The version to run: the current one, or the pinned digest (full or a unique
    /// prefix of at least 8 hex digits, `sha256:` optional).
    pub(crate) fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<PluginVersion>, RunFailure> {
        let map = self.read();
        let Some(entry) = map.get(name) else {
            let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(RunFailure::new(
                FailureKind::UnknownPlugin,
                format!(
                    "unknown plugin `{name}`: no {name}.wasm is loaded (loaded plugins: [{}])",
                    names.join(", ")
                ),
            ));
        };
        let Some(want) = version else {
            return Ok(entry.current.clone());
        };
        let want = want.trim();
        let want = want
            .strip_prefix("sha256:")
            .unwrap_or(want)
            .to_ascii_lowercase();
        let all = || std::iter::once(&entry.current).chain(entry.older.iter());
        if let Some(v) = all().find(|v| v.digest == want) {
            return Ok(v.clone());
        }
        if want.len() >= 8 {
            let mut hits = all().filter(|v| v.digest.starts_with(&want));
            if let (Some(v), None) = (hits.next(), hits.next()) {
                return Ok(v.clone());
            }
        }
        let known: Vec<&str> = all().map(|v| short(&v.digest)).collect();
        Err(RunFailure::new(
            FailureKind::UnknownVersion,
            format!(
                "plugin `{name}` has no version `{want}` (versions in memory, newest first: [{}]; \
                 at most {MAX_RETAINED} superseded versions are kept)",
                known.join(", ")
            ),
        ))
    }

    /// A compiled pre-instance for `digest`, from any loaded plugin version.
    pub(crate) fn find_compiled(&self, digest: &str) -> Option<TaskPluginPre<StoreState>> {
        self.read().values().find_map(|e| {
            std::iter::once(&e.current)
                .chain(e.older.iter())
                .find(|v| v.digest == digest)
                .map(|v| v.pre.clone())
        })
    }

    /// Makes `v` the current version of its plugin; returns the previous current digest.
    pub(crate) fn install(&self, v: Arc<PluginVersion>) -> Option<String> {
        self.rejected_map().remove(&v.name);
        let mut map = self.write();
        match map.get_mut(&v.name) {
            None => {
                map.insert(
                    v.name.clone(),
                    Entry {
                        current: v,
                        older: Vec::new(),
                        last_error: None,
                    },
                );
                None
            }
            Some(e) => {
                let prev = std::mem::replace(&mut e.current, v);
                let prev_digest = prev.digest.clone();
                e.older.retain(|o| o.digest != e.current.digest);
                if prev.digest != e.current.digest {
                    e.older.insert(0, prev);
                    e.older.truncate(MAX_RETAINED);
                }
                e.last_error = None;
                Some(prev_digest)
            }
        }
    }

    /// Unloads `name` with all its versions; returns the current digest it had.
    pub(crate) fn remove(&self, name: &str) -> Option<String> {
        self.rejected_map().remove(name);
        self.write().remove(name).map(|e| e.current.digest.clone())
    }

    /// Records (or, with `None`, clears) why the latest load of `name` was rejected.
    /// Without a loaded version, a rejection is kept apart (see [`Registry::rejected`]).
    pub(crate) fn set_error(&self, name: &str, error: Option<&str>) {
        if let Some(e) = self.write().get_mut(name) {
            e.last_error = error.map(str::to_string);
            return;
        }
        let mut rejected = self.rejected_map();
        match error {
            Some(err) => {
                rejected.insert(name.to_string(), err.to_string());
            }
            None => {
                rejected.remove(name);
            }
        }
    }

    fn rejected_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.rejected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plugin files that were rejected while no version of their plugin was loaded.
    pub(crate) fn rejected(&self) -> Vec<Rejected> {
        self.rejected_map()
            .iter()
            .map(|(name, error)| Rejected {
                name: name.clone(),
                error: error.clone(),
            })
            .collect()
    }

    /// Names of plugins whose current version was loaded from `dir`.
    pub(crate) fn names_in(&self, dir: &Path) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, e)| e.current.source.is_dir(dir))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) fn infos(&self) -> Vec<PluginInfo> {
        let mut out: Vec<PluginInfo> = self
            .read()
            .iter()
            .map(|(name, e)| {
                let c = &e.current;
                PluginInfo {
                    name: name.clone(),
                    digest: c.digest.clone(),
                    size_bytes: c.size_bytes,
                    loaded_at_ms: c.loaded_at_ms,
                    allowed_hosts: c.allowed_hosts.iter().map(ToString::to_string).collect(),
                    allow_private: c.allow_private,
                    may_schedule: c.may_schedule.to_vec(),
                    versions: std::iter::once(c)
                        .chain(e.older.iter())
                        .map(|v| v.digest.clone())
                        .collect(),
                    limits: c.limits,
                    source: c.source.clone(),
                    last_error: e.last_error.clone(),
                    warnings: c.warnings.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
