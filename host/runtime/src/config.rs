//! Runtime configuration, host-side plugin grants and the effective settings of a plugin.
//!
//! The operator's config is the ceiling: `[limits]` overlaid with `[plugin.NAME.limits]`, and
//! `[plugin.NAME] allowed_hosts`. A plugin's own manifest may only narrow it; whatever it asks
//! beyond is clamped or dropped, with a warning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::http::{AllowedHost, format_allowlist};
use crate::limits::{Limits, LimitsOverride};
use crate::manifest::Manifest;

/// Default of [`RuntimeConfig::memory_budget_mb`].
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 2048;

/// Configuration of a [`crate::Runtime`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled plugin artifacts are cached, keyed by content digest. `None`: no
    /// disk cache (every load compiles).
    pub cache_dir: Option<PathBuf>,
    /// Limits of every plugin unless its manifest or grant says otherwise.
    pub defaults: Limits,
    /// Host-side grants per plugin name (the host config's `[plugin.NAME]` tables).
    #[serde(alias = "plugin")]
    pub grants: BTreeMap<String, PluginGrant>,
    /// Maximum number of concurrently live plugin instances (the pooling allocator's size).
    pub max_instances: u32,
    /// Node-wide memory budget, MiB: the `memory_mb` of every running attempt adds up to at
    /// most this much (an attempt waits for room, within its `timeout_ms`). A plugin whose
    /// `memory_mb` alone is larger is rejected at load.
    pub memory_budget_mb: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            defaults: Limits::default(),
            grants: BTreeMap::new(),
            max_instances: 256,
            memory_budget_mb: DEFAULT_MEMORY_BUDGET_MB,
        }
    }
}

/// What the host operator grants one plugin: the most it may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginGrant {
    /// Outbound HTTP hosts the plugin may call. Its manifest may narrow the list, never
    /// widen it.
    pub allowed_hosts: Vec<String>,
    /// Let the allowed hosts resolve to loopback, private, link-local and carrier-grade NAT
    /// addresses (never to a cloud metadata address: only an entry naming it does that).
    /// Without it, such an address is reached only through an entry naming it literally.
    pub allow_private: bool,
    /// Configuration values (and secrets); they win over the manifest's.
    pub config: BTreeMap<String, String>,
    /// Limits over the node's `[limits]`; the manifest may only lower them.
    pub limits: LimitsOverride,
    /// Other plugins this one may schedule follow-ups of (`"*"`: any). A plugin may always
    /// schedule itself.
    pub may_schedule: Vec<String>,
    /// Most attempts of this plugin running at once on a node (default: the node's run slots
    /// less `scheduler.reserved_slots`). Enforced by the scheduler, not the sandbox.
    pub max_concurrency: Option<usize>,
    /// Weight in the fair share of contended run slots (default 1).
    pub weight: Option<u32>,
    /// Opt-in: one instance may serve up to this many successful tasks of the same ordering
    /// key before it is dropped (0, the default: a fresh instance per task). Saves the
    /// instantiation of large components (Python, JavaScript) at the price of state kept
    /// between those tasks: globals, the heap, caches. Never shared between keys; see
    /// the README (Reusing instances) for when an instance is dropped.
    pub reuse_instances: u32,
}

/// The settings one plugin version runs with.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) limits: Limits,
    pub(crate) allowed_hosts: Vec<AllowedHost>,
    pub(crate) allow_private: bool,
    pub(crate) may_schedule: Vec<String>,
    pub(crate) config: BTreeMap<String, String>,
    /// What the manifest asked beyond the operator's ceiling, and what was done about it.
    pub(crate) warnings: Vec<String>,
}

impl Effective {
    /// The ceiling is `defaults` overlaid with the grant's limits and the grant's hosts. The
    /// manifest narrows it: each limit is the lower of the two; its hosts count only where
    /// a grant entry covers them (no manifest hosts: the grant's). Config values: the
    /// manifest's, then the grant's over them.
    pub(crate) fn resolve(
        name: &str,
        defaults: &Limits,
        manifest: &Manifest,
        grant: Option<&PluginGrant>,
    ) -> Result<Effective, String> {
        let empty = PluginGrant::default();
        let grant = grant.unwrap_or(&empty);
        let ceiling = defaults.with(&grant.limits);
        let (limits, clamped) = ceiling.narrowed_by(&manifest.limits);
        let mut warnings: Vec<String> = clamped
            .into_iter()
            .map(|(field, asked, ceiling)| {
                format!(
                    "manifest {name}.toml asks [limits] {field} = {asked}, above the operator's \
                     ceiling of {ceiling} ([limits] / [plugin.{name}.limits]): clamped to {ceiling}"
                )
            })
            .collect();

        let mut config = manifest.config.clone();
        config.extend(grant.config.iter().map(|(k, v)| (k.clone(), v.clone())));

        let mut granted: Vec<AllowedHost> = Vec::with_capacity(grant.allowed_hosts.len());
        for h in &grant.allowed_hosts {
            push_unique(&mut granted, AllowedHost::parse(h)?);
        }
        let allowed_hosts = if manifest.allowed_hosts.is_empty() {
            granted
        } else {
            let mut narrowed = Vec::with_capacity(manifest.allowed_hosts.len());
            for h in &manifest.allowed_hosts {
                let wanted = AllowedHost::parse(h)?;
                if granted.iter().any(|g| g.covers(&wanted)) {
                    push_unique(&mut narrowed, wanted);
                } else {
                    warnings.push(format!(
                        "manifest {name}.toml asks allowed_hosts entry `{wanted}`, not covered by \
                         the operator's grant ([plugin.{name}] allowed_hosts = {}): dropped",
                        format_allowlist(&granted)
                    ));
                }
            }
            narrowed
        };
        Ok(Effective {
            limits,
            allowed_hosts,
            allow_private: grant.allow_private,
            may_schedule: grant.may_schedule.clone(),
            config,
            warnings,
        })
    }
}

fn push_unique(list: &mut Vec<AllowedHost>, h: AllowedHost) {
    if !list.contains(&h) {
        list.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(e: &Effective) -> Vec<String> {
        e.allowed_hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn manifest_narrows_within_the_grant_and_grant_config_wins() {
        let manifest = Manifest::parse(
            r#"
            allowed_hosts = ["a.example.com:443", "hooks.internal:8080"]
            [limits]
            memory_mb = 16
            cpu_ms = 50
            [config]
            url = "http://manifest"
            keep = "yes"
            "#,
        )
        .unwrap();
        let grant = PluginGrant {
            allowed_hosts: vec!["a.example.com".into(), "*.internal:8080".into()],
            config: BTreeMap::from([("url".to_string(), "http://grant".to_string())]),
            limits: LimitsOverride {
                cpu_ms: Some(300),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Effective::resolve("p", &Limits::default(), &manifest, Some(&grant)).unwrap();
        assert_eq!(e.limits.memory_mb, 16, "narrowed below the default");
        assert_eq!(e.limits.cpu_ms, 50, "narrowed below the grant");
        assert_eq!(e.config["url"], "http://grant");
        assert_eq!(e.config["keep"], "yes");
        assert_eq!(hosts(&e), ["a.example.com:443", "hooks.internal:8080"]);
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    }

    /// The probe: a manifest raising memory to 4096 MiB and host calls to 4e9 and allowing
    /// `127.0.0.1` on every port was accepted as is.
    #[test]
    fn manifest_cannot_raise_limits_or_add_hosts() {
        let manifest = Manifest::parse(
            "allowed_hosts = [\"127.0.0.1\"]\n[limits]\nmemory_mb = 4096\nmax_host_calls = 4000000000\n",
        )
        .unwrap();
        let e = Effective::resolve("bomb", &Limits::default(), &manifest, None).unwrap();
        assert_eq!(e.limits.memory_mb, 64);
        assert_eq!(e.limits.max_host_calls, 1_000);
        assert!(e.allowed_hosts.is_empty(), "{:?}", hosts(&e));
        assert_eq!(e.warnings.len(), 3, "{:#?}", e.warnings);
        assert_eq!(
            e.warnings[0],
            "manifest bomb.toml asks [limits] memory_mb = 4096, above the operator's ceiling \
             of 64 ([limits] / [plugin.bomb.limits]): clamped to 64"
        );
        assert!(
            e.warnings[1].contains("max_host_calls = 4000000000"),
            "{}",
            e.warnings[1]
        );
        assert_eq!(
            e.warnings[2],
            "manifest bomb.toml asks allowed_hosts entry `127.0.0.1`, not covered by the \
             operator's grant ([plugin.bomb] allowed_hosts = []): dropped"
        );

        // A grant for one port does not cover the manifest's every-port entry either.
        let grant = PluginGrant {
            allowed_hosts: vec!["127.0.0.1:8080".into()],
            limits: LimitsOverride {
                memory_mb: Some(128),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Effective::resolve("bomb", &Limits::default(), &manifest, Some(&grant)).unwrap();
        assert_eq!(
            e.limits.memory_mb, 128,
            "the grant's ceiling, not the manifest's ask"
        );
        assert!(e.allowed_hosts.is_empty(), "{:?}", hosts(&e));
    }

    #[test]
    fn manifest_without_hosts_gets_the_grants() {
        let grant = PluginGrant {
            allowed_hosts: vec!["127.0.0.1:8080".into(), "*.example.com".into()],
            ..Default::default()
        };
        let e = Effective::resolve("n", &Limits::default(), &Manifest::default(), Some(&grant))
            .unwrap();
        assert_eq!(hosts(&e), ["127.0.0.1:8080", "*.example.com"]);
        assert!(e.warnings.is_empty());
    }

    #[test]
    fn runtime_config_from_toml() {
        let cfg: RuntimeConfig = toml::from_str(
            r#"
            max_instances = 32
            memory_budget_mb = 512
            [defaults]
            memory_mb = 32
            [plugin.notify]
            allowed_hosts = ["hooks.example.com"]
            allow_private = true
            [plugin.notify.config]
            token = "s3cret"
            [plugin.notify.limits]
            timeout_ms = 2000
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_instances, 32);
        assert_eq!(cfg.memory_budget_mb, 512);
        assert_eq!(RuntimeConfig::default().memory_budget_mb, 2048);
        assert_eq!(cfg.defaults.memory_mb, 32);
        assert_eq!(cfg.defaults.cpu_ms, 1000);
        let g = &cfg.grants["notify"];
        assert_eq!(g.allowed_hosts, ["hooks.example.com"]);
        assert!(g.allow_private);
        assert_eq!(g.config["token"], "s3cret");
        assert_eq!(g.limits.timeout_ms, Some(2000));
    }
}
