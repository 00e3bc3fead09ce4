//! Outbound HTTP for plugins: the `allowed_hosts` allowlist and the wasi:http hooks that
//! enforce it (plus the request count and per-request timeout).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::host_impl::Meter;
use crate::logs::LogLevel;

/// One `allowed_hosts` entry: `host:port` (exact), `host` (any port) or `*.domain`
/// (any subdomain of `domain`, optionally with `:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedHost {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl AllowedHost {
    pub(crate) fn parse(entry: &str) -> Result<AllowedHost, String> {
        let bad = |why: &str| format!("invalid allowed_hosts entry `{entry}`: {why}");
        let s = entry.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.contains("://") || s.contains('/') || s.contains('@') || s.contains('?') {
            return Err(bad(
                "expected `host`, `host:port` or `*.domain` (no scheme, path or user)",
            ));
        }
        let (host, port) = split_host_port(s).ok_or_else(|| bad("bad port"))?;
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        if host.is_empty() || host.contains('*') {
            return Err(bad("`*` is only allowed as a leading `*.` label"));
        }
        Ok(AllowedHost {
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    /// Whether every `(host, port)` that `other` matches is matched by `self` too.
    pub(crate) fn covers(&self, other: &AllowedHost) -> bool {
        let ports = match (self.port, other.port) {
            (None, _) => true,
            (Some(p), Some(q)) => p == q,
            (Some(_), None) => false,
        };
        if !ports {
            return false;
        }
        match (self.wildcard, other.wildcard) {
            (false, false) => self.host == other.host,
            (false, true) => false,
            // `*.d` covers `x.d`, `*.d` and `*.x.d`, not `d`.
            (true, false) => self.is_subdomain(&other.host),
            (true, true) => other.host == self.host || self.is_subdomain(&other.host),
        }
    }

    /// Whether `host` (lowercase) is a strict subdomain of this entry's domain.
    fn is_subdomain(&self, host: &str) -> bool {
        host.len() > self.host.len() + 1
            && host.ends_with(&self.host)
            && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
    }

    pub(crate) fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            self.is_subdomain(&host)
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Splits `host[:port]` (IPv6 in brackets, or bare) into a bracket-less host and port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

pub(crate) fn format_allowlist(hosts: &[AllowedHost]) -> String {
    let list: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    format!("[{}]", list.join(", "))
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

/// The wasi:http hooks of one task: every request is a host call, counted against
/// `max_http_requests`, checked against the allowlist and bounded by `http_timeout_ms`.
pub(crate) struct HttpGate {
    pub(crate) meter: Arc<Meter>,
    pub(crate) allowed: Arc<[AllowedHost]>,
    pub(crate) timeout: Duration,
}

impl HttpGate {
    fn refuse(error: wasmtime_wasi_http::Error) -> SendFuture {
        Box::new(async move { Err(error) })
    }
}

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri().clone();
        let target = match uri.authority() {
            Some(a) => {
                let default_port = if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                };
                let host = a.host().trim_start_matches('[').trim_end_matches(']');
                (host.to_string(), a.port_u16().unwrap_or(default_port))
            }
            None => return Self::refuse(wasmtime_wasi_http::Error::HttpRequestUriInvalid),
        };
        if let Err(msg) = self.meter.charge_http() {
            self.meter.host_log(LogLevel::Error, msg);
            return Self::refuse(wasmtime_wasi_http::Error::ConnectionLimitReached);
        }
        let (host, port) = target;
        if !self.allowed.iter().any(|a| a.matches(&host, port)) {
            let shown = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let msg = format!(
                "outbound HTTP to {shown} refused: not in allowed_hosts of plugin `{}` (allowed: {})",
                self.meter.plugin,
                format_allowlist(&self.allowed)
            );
            self.meter.host_log(LogLevel::Warn, msg);
            return Self::refuse(wasmtime_wasi_http::Error::HttpRequestDenied);
        }

        let timeout = self.timeout;
        let cap = |t: Option<Duration>| Some(t.map_or(timeout, |t| t.min(timeout)));
        let opts = RequestOptions {
            connect_timeout: cap(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout)),
        };
        let meter = self.meter.clone();
        let method = request.method().clone();
        Box::new(async move {
            let sent = tokio::time::timeout(
                timeout,
                wasmtime_wasi_http::default_send_request(request, Some(opts)),
            )
            .await;
            match sent {
                Ok(Ok((res, io))) => {
                    tracing::debug!(plugin = %meter.plugin, %method, %uri, status = res.status().as_u16(), "outbound HTTP");
                    let io: Box<dyn Future<Output = _> + Send> = Box::new(io);
                    Ok((res.map(BodyExt::boxed_unsync), io))
                }
                Ok(Err(e)) => {
                    meter.host_log(
                        LogLevel::Warn,
                        format!("outbound HTTP {method} {uri} failed: {e}"),
                    );
                    Err(e)
                }
                Err(_) => {
                    meter.host_log(
                        LogLevel::Warn,
                        format!(
                            "outbound HTTP {method} {uri} timed out after {} ms",
                            timeout.as_millis()
                        ),
                    );
                    Err(wasmtime_wasi_http::Error::ConnectionTimeout)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AllowedHost {
        AllowedHost::parse(s).unwrap()
    }

    #[test]
    fn host_port_is_exact() {
        assert!(a("127.0.0.1:8080").matches("127.0.0.1", 8080));
        assert!(!a("127.0.0.1:8080").matches("127.0.0.1", 8081));
        assert!(!a("127.0.0.1:8080").matches("127.0.0.2", 8080));
    }

    #[test]
    fn bare_host_matches_any_port_and_is_case_insensitive() {
        assert!(a("Hooks.Example.com").matches("hooks.example.com", 443));
        assert!(a("hooks.example.com").matches("HOOKS.example.com", 9999));
        assert!(!a("hooks.example.com").matches("evilhooks.example.com", 443));
        assert!(!a("example.com").matches("hooks.example.com", 443));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let w = a("*.example.com");
        assert!(w.matches("a.example.com", 443));
        assert!(w.matches("a.b.example.com", 80));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("badexample.com", 443));
        assert!(!a("*.example.com:443").matches("a.example.com", 80));
    }

    #[test]
    fn coverage_of_one_entry_by_another() {
        assert!(a("hooks.example.com").covers(&a("hooks.example.com:443")));
        assert!(a("hooks.example.com:443").covers(&a("hooks.example.com:443")));
        assert!(!a("hooks.example.com:443").covers(&a("hooks.example.com")));
        assert!(!a("hooks.example.com:443").covers(&a("hooks.example.com:8443")));
        assert!(!a("hooks.example.com").covers(&a("other.example.com")));
        assert!(a("*.example.com").covers(&a("hooks.example.com")));
        assert!(a("*.example.com").covers(&a("*.a.example.com:443")));
        assert!(a("*.example.com").covers(&a("*.example.com")));
        assert!(!a("*.example.com").covers(&a("example.com")));
        assert!(!a("*.example.com").covers(&a("*.org")));
        assert!(!a("hooks.example.com").covers(&a("*.hooks.example.com")));
        assert!(!a("*.example.com").covers(&a("127.0.0.1")));
    }

    #[test]
    fn ipv6_entries() {
        assert!(a("[::1]:8080").matches("::1", 8080));
        assert!(a("::1").matches("::1", 1));
        assert_eq!(a("[::1]:8080").to_string(), "[::1]:8080");
    }

    #[test]
    fn bad_entries_are_rejected() {
        for bad in [
            "",
            "http://x.com",
            "x.com/path",
            "*",
            "a.*.com",
            "x.com:http",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allowlist_display() {
        assert_eq!(format_allowlist(&[]), "[]");
        assert_eq!(
            format_allowlist(&[a("x.com"), a("*.y.org:1")]),
            "[x.com, *.y.org:1]"
        );
    }
}
