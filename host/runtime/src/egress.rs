//! Outbound HTTP by address: which resolved addresses a plugin may reach, and sending a
//! request to exactly the addresses that were checked (no second DNS lookup between the
//! check and the connection, so a name cannot be rebound to another address in between).
//!
//! The sending half follows `wasmtime_wasi_http::default_send_request` (wasmtime 48.0.8,
//! Apache-2.0 WITH LLVM-exception), with the connection made to given socket addresses and
//! the TLS server name taken from the request's host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Why `ip` is not an ordinary public address, if it is not.
pub(crate) fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if a == 100 && (b & 0xc0) == 64 => "carrier-grade NAT",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() || a >= 240 => "reserved",
        _ => return None,
    })
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that carry an IPv4 address: NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return restricted_v4(Ipv4Addr::new(a, b, c, d));
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return restricted_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match () {
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if (s[0] & 0xfe00) == 0xfc00 => "private",
        // fe80::/10 link-local and the deprecated fec0::/10 site-local.
        _ if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 => "link-local",
        _ if ip.is_multicast() => "multicast",
        // ::/96 other than :: and ::1 (IPv4-compatible, deprecated).
        _ if s[..6] == [0, 0, 0, 0, 0, 0] => "reserved",
        _ => return None,
    })
}

/// Whether `ip` is a cloud metadata address (reachable only when named literally).
pub(crate) fn is_metadata(ip: IpAddr) -> bool {
    restricted(ip) == Some("cloud metadata")
}

/// The addresses of `host` (an IP literal is its own address), in resolver order.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    Ok(addrs)
}

/// The future a sent request leaves behind: the rest of the connection's I/O.
pub(crate) type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        Some(e) => Error::Connect(e),
        None => Error::DestinationNotFound,
    })
}

/// TLS client settings: ring, the webpki roots (as wasmtime-wasi-http's own sender).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InternalError(Some(format!("TLS setup: {e}"))))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `req` over a connection to one of `addrs` (TLS with `host` as the server name
/// when `use_tls`), with the timeouts of `options`.
pub(crate) async fn send_to(
    mut req: http::Request<WasiBody>,
    addrs: &[SocketAddr],
    host: &str,
    use_tls: bool,
    options: RequestOptions,
) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
    let forever = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(forever);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(forever);
    let between_bytes_timeout = options
        .between_bytes_timeout
        .unwrap_or(forever)
        .max(Duration::from_nanos(1));

    let tcp = tokio::time::timeout(connect_timeout, connect(addrs))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let stream: Box<dyn Stream> = if use_tls {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(Error::InvalidDnsNameError)?,
        };
        let tls = tokio_rustls::TlsConnector::from(tls_config()?);
        let s = tokio::time::timeout(connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // Origin form on the wire: the scheme and authority are only for a proxy.
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let send = async move {
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        Ok::<_, Error>(res.map(|incoming| TimedBody { incoming, timeout }.boxed_unsync()))
    };
    // Wait for the response while driving the connection's I/O.
    let mut send = std::pin::pin!(send);
    let mut conn = Some(conn);
    let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(Error::from(e))),
            }
        }
    })
    .await?;
    let io: IoFuture = Box::new(async move {
        let Some(conn) = conn else {
            return Ok(());
        };
        conn.await.map_err(|e| {
            if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }
        })
    });
    Ok((res, io))
}

/// A response body that fails when no frame arrives within the between-bytes timeout.
struct TimedBody {
    incoming: Incoming,
    timeout: tokio::time::Interval,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ip: &str) -> Option<&'static str> {
        restricted(ip.parse().unwrap())
    }

    #[test]
    fn restricted_ranges() {
        assert_eq!(r("127.0.0.1"), Some("loopback"));
        assert_eq!(r("127.5.6.7"), Some("loopback"));
        assert_eq!(r("10.1.2.3"), Some("private"));
        assert_eq!(r("172.16.0.1"), Some("private"));
        assert_eq!(r("172.31.255.255"), Some("private"));
        assert_eq!(r("192.168.1.1"), Some("private"));
        assert_eq!(r("169.254.1.1"), Some("link-local"));
        assert_eq!(r("169.254.169.254"), Some("cloud metadata"));
        assert_eq!(r("100.64.0.1"), Some("carrier-grade NAT"));
        assert_eq!(r("100.127.255.255"), Some("carrier-grade NAT"));
        assert_eq!(r("0.0.0.0"), Some("unspecified"));
        assert_eq!(r("224.0.0.1"), Some("multicast"));
        assert_eq!(r("255.255.255.255"), Some("reserved"));
        assert_eq!(r("::1"), Some("loopback"));
        assert_eq!(r("::"), Some("unspecified"));
        assert_eq!(r("fc00::1"), Some("private"));
        assert_eq!(r("fd12:3456::1"), Some("private"));
        assert_eq!(r("fd00:ec2::254"), Some("cloud metadata"));
        assert_eq!(r("fe80::1"), Some("link-local"));
        assert_eq!(r("ff02::1"), Some("multicast"));
        // IPv4 inside IPv6.
        assert_eq!(r("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(r("::ffff:169.254.169.254"), Some("cloud metadata"));
        assert_eq!(r("64:ff9b::a00:1"), Some("private"));
        assert_eq!(r("2002:c0a8:101::1"), Some("private"));
        assert_eq!(r("::127.0.0.1"), Some("reserved"));
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert_eq!(r(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn literals_are_not_looked_up() {
        let a = resolve("127.0.0.1", 8080).await.unwrap();
        assert_eq!(a, ["127.0.0.1:8080".parse().unwrap()]);
        let a = resolve("::1", 443).await.unwrap();
        assert_eq!(a, ["[::1]:443".parse().unwrap()]);
    }
}
