//! Outbound HTTP for plugins: the `allowed_hosts` allowlist, checked on the request's host
//! name and on every address it resolves to, and the wasi:http hooks that enforce it (plus
//! the request count and per-request timeout). Requests go to the addresses that were
//! checked ([`crate::egress`]); redirects are not followed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::egress;
use crate::host_impl::Meter;
use crate::logs::LogLevel;

/// One `allowed_hosts` entry: `host:port` (exact), `host` (ports 80 and 443) or
/// `*.domain` (any subdomain of `domain`, optionally with `:port`). An entry whose host is an
/// IP literal also lets requests reach that address when it is not public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedHost {
    host: String,
    wildcard: bool,
    port: Option<u16>,
    /// The host as an IP literal (not for wildcards).
    ip: Option<IpAddr>,
}

/// The ports an entry without a port allows.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

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
        let ip = if wildcard {
            None
        } else {
            host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
        };
        Ok(AllowedHost {
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
            ip,
        })
    }

    fn port_allowed(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }

    fn same_host(&self, other: &AllowedHost) -> bool {
        match (self.ip, other.ip) {
            (Some(a), Some(b)) => a == b,
            _ => self.host == other.host,
        }
    }

    /// Whether every `(host, port)` that `other` matches is matched by `self` too.
    pub(crate) fn covers(&self, other: &AllowedHost) -> bool {
        let ports = match other.port {
            Some(q) => self.port_allowed(q),
            None => DEFAULT_PORTS.iter().all(|&q| self.port_allowed(q)),
        };
        if !ports {
            return false;
        }
        match (self.wildcard, other.wildcard) {
            (false, false) => self.same_host(other),
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

    /// Whether a request to `host:port` is allowed by name.
    pub(crate) fn matches(&self, host: &str, port: u16) -> bool {
        if !self.port_allowed(port) {
            return false;
        }
        if let (Some(ip), Ok(asked)) = (self.ip, host.parse::<IpAddr>()) {
            return ip == asked.to_canonical();
        }
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            self.is_subdomain(&host)
        } else {
            host == self.host
        }
    }

    /// Whether this entry names `ip` literally, with `port` allowed.
    fn names(&self, ip: IpAddr, port: u16) -> bool {
        self.ip == Some(ip.to_canonical()) && self.port_allowed(port)
    }
}

/// Why a request to `host:port`, which resolved to `addrs`, must not be sent, if it must
/// not: one of the addresses is not public (loopback, private, link-local, carrier-grade
/// NAT, unspecified, multicast, reserved, cloud metadata) and neither an entry naming that
/// IP literally nor `allow_private` (which never opens the cloud metadata addresses) lets
/// it through.
pub(crate) fn address_refusal(
    allowed: &[AllowedHost],
    allow_private: bool,
    host: &str,
    port: u16,
    addrs: &[SocketAddr],
) -> Option<String> {
    for addr in addrs {
        let ip = addr.ip();
        let Some(kind) = egress::restricted(ip) else {
            continue;
        };
        if allowed.iter().any(|e| e.names(ip, port)) {
            continue;
        }
        let metadata = egress::is_metadata(ip);
        if allow_private && !metadata {
            continue;
        }
        let what = if host.parse::<IpAddr>().is_ok() {
            format!("{ip} is a {kind} address")
        } else {
            format!("{host} resolves to {ip}, a {kind} address")
        };
        let shown = SocketAddr::new(ip, port);
        let how = if metadata {
            format!("only an allowed_hosts entry naming it (`{shown}`) opens it")
        } else {
            format!(
                "allow it with an allowed_hosts entry naming the IP (`{shown}`) or \
                 allow_private = true in the plugin's grant"
            )
        };
        return Some(format!("{what}; {how}"));
    }
    None
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
                (http::Response<WasiBody>, egress::IoFuture),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

/// The wasi:http hooks of one task: every request is a host call, counted against
/// `max_http_requests`, checked against the allowlist by name and by resolved address,
/// sent to the checked address and bounded by `http_timeout_ms`.
pub(crate) struct HttpGate {
    pub(crate) meter: Arc<Meter>,
    pub(crate) allowed: Arc<[AllowedHost]>,
    pub(crate) allow_private: bool,
    pub(crate) timeout: Duration,
}

impl HttpGate {
    fn refuse(error: wasmtime_wasi_http::Error) -> SendFuture {
        Box::new(async move { Err(error) })
    }
}

/// How an outbound request failed before it had a response.
enum Failure {
    /// Refused by address (the message says why).
    Refused(String),
    Net(wasmtime_wasi_http::Error),
}

fn show(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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
        let use_tls = uri.scheme_str() == Some("https");
        let (host, port) = match uri.authority() {
            Some(a) => {
                let host = a.host().trim_start_matches('[').trim_end_matches(']');
                (
                    host.to_string(),
                    a.port_u16().unwrap_or(if use_tls { 443 } else { 80 }),
                )
            }
            None => return Self::refuse(wasmtime_wasi_http::Error::HttpRequestUriInvalid),
        };
        if let Err(msg) = self.meter.charge_http() {
            self.meter.host_log(LogLevel::Error, msg);
            return Self::refuse(wasmtime_wasi_http::Error::ConnectionLimitReached);
        }
        if !self.allowed.iter().any(|a| a.matches(&host, port)) {
            let msg = format!(
                "outbound HTTP to {} refused: not in allowed_hosts of plugin `{}` (allowed: {})",
                show(&host, port),
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
        let allowed = self.allowed.clone();
        let allow_private = self.allow_private;
        let method = request.method().clone();
        Box::new(async move {
            let attempt = async {
                let addrs = egress::resolve(&host, port).await.map_err(Failure::Net)?;
                if let Some(why) = address_refusal(&allowed, allow_private, &host, port, &addrs) {
                    return Err(Failure::Refused(why));
                }
                egress::send_to(request, &addrs, &host, use_tls, opts)
                    .await
                    .map_err(Failure::Net)
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok((res, io))) => {
                    tracing::debug!(plugin = %meter.plugin, %method, %uri, status = res.status().as_u16(), "outbound HTTP");
                    Ok((res, io))
                }
                Ok(Err(Failure::Refused(why))) => {
                    meter.host_log(
                        LogLevel::Warn,
                        format!("outbound HTTP to {} refused: {why}", show(&host, port)),
                    );
                    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
                }
                Ok(Err(Failure::Net(e))) => {
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

    /// The probe: a bare-host entry allowed every port.
    #[test]
    fn bare_host_means_ports_80_and_443_and_is_case_insensitive() {
        assert!(a("Hooks.Example.com").matches("hooks.example.com", 443));
        assert!(a("hooks.example.com").matches("HOOKS.example.com", 80));
        assert!(!a("hooks.example.com").matches("hooks.example.com", 9999));
        assert!(!a("127.0.0.1").matches("127.0.0.1", 8080));
        assert!(!a("*.example.com").matches("a.example.com", 22));
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
        assert!(
            !a("hooks.example.com").covers(&a("hooks.example.com:8443")),
            "80/443 only"
        );
        assert!(a("127.0.0.1").covers(&a("127.0.0.1:80")));
        assert!(a("[::1]:8080").covers(&a("[0::1]:8080")));
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
        assert!(
            a("[::1]:8080").matches("0:0::1", 8080),
            "compared as addresses"
        );
        assert!(a("::1").matches("::1", 443));
        assert!(!a("::1").matches("::1", 1));
        assert_eq!(a("[::1]:8080").to_string(), "[::1]:8080");
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The probe: a name resolving to 127.0.0.1 or 169.254.169.254 got through, since only
    /// names were checked.
    #[test]
    fn names_resolving_to_non_public_addresses_are_refused() {
        let allowed = [a("localhost:8080"), a("*.example.com")];
        let why = address_refusal(
            &allowed,
            false,
            "localhost",
            8080,
            &addrs(&["127.0.0.1:8080"]),
        )
        .expect("refused");
        assert_eq!(
            why,
            "localhost resolves to 127.0.0.1, a loopback address; allow it with an \
             allowed_hosts entry naming the IP (`127.0.0.1:8080`) or allow_private = true in \
             the plugin's grant"
        );
        let why = address_refusal(
            &allowed,
            false,
            "meta.example.com",
            80,
            &addrs(&["169.254.169.254:80"]),
        )
        .expect("refused");
        assert!(why.contains("a cloud metadata address"), "{why}");
        // Any one bad address refuses the request.
        assert!(
            address_refusal(
                &allowed,
                false,
                "x.example.com",
                443,
                &addrs(&["93.184.216.34:443", "10.0.0.7:443"]),
            )
            .is_some()
        );
        for bad in [
            "[::1]:443",
            "[fd00:ec2::254]:443",
            "[fe80::1]:443",
            "100.64.1.1:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(
                address_refusal(&allowed, false, "x.example.com", 443, &addrs(&[bad])).is_some(),
                "{bad}"
            );
        }
        assert_eq!(
            address_refusal(
                &allowed,
                false,
                "x.example.com",
                443,
                &addrs(&["93.184.216.34:443"])
            ),
            None
        );
    }

    #[test]
    fn literal_ip_entries_and_allow_private_open_non_public_addresses() {
        let literal = [a("127.0.0.1:8080"), a("169.254.169.254")];
        assert_eq!(
            address_refusal(
                &literal,
                false,
                "127.0.0.1",
                8080,
                &addrs(&["127.0.0.1:8080"])
            ),
            None
        );
        // The entry names the IP for its port only.
        assert!(
            address_refusal(
                &literal,
                false,
                "127.0.0.1",
                8081,
                &addrs(&["127.0.0.1:8081"])
            )
            .is_some()
        );
        assert_eq!(
            address_refusal(
                &literal,
                false,
                "169.254.169.254",
                80,
                &addrs(&["169.254.169.254:80"])
            ),
            None,
            "named literally by the operator"
        );

        let names = [a("localhost:8080"), a("*.corp.example")];
        assert_eq!(
            address_refusal(
                &names,
                true,
                "localhost",
                8080,
                &addrs(&["[::1]:8080", "127.0.0.1:8080"])
            ),
            None
        );
        assert_eq!(
            address_refusal(
                &names,
                true,
                "db.corp.example",
                443,
                &addrs(&["10.1.2.3:443"])
            ),
            None
        );
        let why = address_refusal(
            &names,
            true,
            "m.corp.example",
            80,
            &addrs(&["169.254.169.254:80"]),
        )
        .expect("allow_private never opens the metadata address");
        assert!(
            why.contains("only an allowed_hosts entry naming it"),
            "{why}"
        );
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
