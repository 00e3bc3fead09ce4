//! `NAME.toml`, the optional manifest next to `NAME.wasm`. It can only narrow what the
//! operator's config grants (see [`crate::config`]).
//!
//! ```toml
//! allowed_hosts = ["hooks.example.com", "*.pagerduty.com", "127.0.0.1:8080"]
//! [limits]
//! memory_mb = 32
//! timeout_ms = 5000
//! [config]
//! channel = "#ops"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::limits::LimitsOverride;

/// A parsed plugin manifest. Unknown keys are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// Outbound HTTP hosts the plugin asks for: `host:port` (exact), `host` (any port)
    /// or `*.example.com` (any subdomain). Only those an entry of the operator's grant
    /// covers are kept.
    pub allowed_hosts: Vec<String>,
    pub limits: LimitsOverride,
    /// String values readable through the `config` import.
    pub config: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses manifest text; the error names the offending key or value.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        for h in &m.allowed_hosts {
            crate::http::AllowedHost::parse(h)?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_manifest() {
        let m = Manifest::parse(
            "allowed_hosts = [\"x.com\"]\n[limits]\nmemory_mb = 3\n[config]\na = \"b\"\n",
        )
        .unwrap();
        assert_eq!(m.allowed_hosts, ["x.com"]);
        assert_eq!(m.limits.memory_mb, Some(3));
        assert_eq!(m.config["a"], "b");
    }

    #[test]
    fn rejects_unknown_keys_clearly() {
        let err = Manifest::parse("allowed_hosts = []\nallowed_host = [\"x\"]\n").unwrap_err();
        assert!(err.contains("unknown field `allowed_host`"), "{err}");
        assert!(err.starts_with("line 2"), "{err}");
        let err = Manifest::parse("[limits]\nmemory = 1\n").unwrap_err();
        assert!(err.contains("unknown field `memory`"), "{err}");
    }

    #[test]
    fn rejects_non_string_config_and_bad_hosts() {
        let err = Manifest::parse("[config]\nretries = 3\n").unwrap_err();
        assert!(err.contains("string"), "{err}");
        let err = Manifest::parse("allowed_hosts = [\"http://x.com/\"]\n").unwrap_err();
        assert!(err.contains("http://x.com/"), "{err}");
    }
}
