//! The API's accept loop (HTTP/1.1): at most `api.max_connections` open connections (one
//! more is answered 503 and closed), request headers within `api.header_timeout_ms` (a slow
//! client's connection, or an idle keep-alive one, is closed), and a graceful stop that lets
//! requests in flight finish. With `[api.tls]`, each connection first completes a TLS
//! handshake, within the header timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub struct ServeOptions {
    pub max_connections: usize,
    /// HTTPS when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub header_timeout: Duration,
    /// How long requests in flight may take to finish once the stop is asked for.
    pub drain: Duration,
}

/// What a connection beyond the limit is told before it is closed.
fn busy() -> Vec<u8> {
    let body = r#"{"error":"too many open connections; retry in a little while"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `stop` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; answering 503");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&busy()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        match &opts.tls {
            None => {
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "API connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task (a slow one holds only its own
                // slot, and only for the header timeout); the connection joins the graceful
                // drain once it is HTTP.
                let (acceptor, http, watcher) =
                    (acceptor.clone(), http.clone(), graceful.watcher());
                let handshake_timeout = opts.header_timeout;
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = watcher.watch(http.serve_connection(TokioIo::new(tls), service));
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "API connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(opts.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the drain time; closing them");
    }
}
