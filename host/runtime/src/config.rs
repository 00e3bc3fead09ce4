//! Runtime configuration, host-side plugin grants and the effective settings of a plugin
//! (defaults ← manifest ← grant).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::http::AllowedHost;
use crate::limits::{Limits, LimitsOverride};
use crate::manifest::Manifest;

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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            defaults: Limits::default(),
            grants: BTreeMap::new(),
            max_instances: 256,
        }
    }
}

/// What the host operator grants one plugin, on top of its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginGrant {
    /// Extra outbound HTTP hosts (added to the manifest's).
    pub allowed_hosts: Vec<String>,
    /// Configuration values (and secrets); they win over the manifest's.
    pub config: BTreeMap<String, String>,
    /// Limits; they win over the manifest's.
    pub limits: LimitsOverride,
}

/// The settings one plugin version runs with.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) limits: Limits,
    pub(crate) allowed_hosts: Vec<AllowedHost>,
    pub(crate) config: BTreeMap<String, String>,
}

impl Effective {
    /// defaults ← manifest ← grant: the grant wins for limits and config values, and
    /// allowed_hosts is the union of both lists.
    pub(crate) fn resolve(
        defaults: &Limits,
        manifest: &Manifest,
        grant: Option<&PluginGrant>,
    ) -> Result<Effective, String> {
        let mut limits = defaults.with(&manifest.limits);
        let mut config = manifest.config.clone();
        let mut hosts: Vec<&str> = manifest.allowed_hosts.iter().map(String::as_str).collect();
        if let Some(g) = grant {
            limits = limits.with(&g.limits);
            config.extend(g.config.iter().map(|(k, v)| (k.clone(), v.clone())));
            hosts.extend(g.allowed_hosts.iter().map(String::as_str));
        }
        let mut allowed_hosts: Vec<AllowedHost> = Vec::with_capacity(hosts.len());
        for h in hosts {
            let parsed = AllowedHost::parse(h)?;
            if !allowed_hosts.contains(&parsed) {
                allowed_hosts.push(parsed);
            }
        }
        Ok(Effective {
            limits,
            allowed_hosts,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_wins_and_hosts_union() {
        let manifest = Manifest::parse(
            r#"
            allowed_hosts = ["a.example.com", "b.example.com:8080"]
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
            allowed_hosts: vec!["a.example.com".into(), "*.internal".into()],
            config: BTreeMap::from([("url".to_string(), "http://grant".to_string())]),
            limits: LimitsOverride {
                cpu_ms: Some(300),
                ..Default::default()
            },
        };
        let e = Effective::resolve(&Limits::default(), &manifest, Some(&grant)).unwrap();
        assert_eq!(e.limits.memory_mb, 16);
        assert_eq!(e.limits.cpu_ms, 300);
        assert_eq!(e.config["url"], "http://grant");
        assert_eq!(e.config["keep"], "yes");
        let hosts: Vec<String> = e.allowed_hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            hosts,
            ["a.example.com", "b.example.com:8080", "*.internal"],
            "union without duplicates"
        );
    }

    #[test]
    fn runtime_config_from_toml() {
        let cfg: RuntimeConfig = toml::from_str(
            r#"
            max_instances = 32
            [defaults]
            memory_mb = 32
            [plugin.notify]
            allowed_hosts = ["hooks.example.com"]
            [plugin.notify.config]
            token = "s3cret"
            [plugin.notify.limits]
            timeout_ms = 2000
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_instances, 32);
        assert_eq!(cfg.defaults.memory_mb, 32);
        assert_eq!(cfg.defaults.cpu_ms, 1000);
        let g = &cfg.grants["notify"];
        assert_eq!(g.allowed_hosts, ["hooks.example.com"]);
        assert_eq!(g.config["token"], "s3cret");
        assert_eq!(g.limits.timeout_ms, Some(2000));
    }
}
