//! HTTPS for the API (`[api.tls]`): a rustls server config from PEM files, with errors that
//! name the file and what is wrong with it.

use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;

use crate::auth::TlsSection;

/// Reads the certificate chain and key; HTTP/1.1 over TLS 1.2 and 1.3.
pub fn acceptor(tls: &TlsSection) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("`api.tls.cert`: reading {}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("`api.tls.cert`: {} is not PEM", tls.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "`api.tls.cert`: {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
        tls.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| {
        format!(
            "`api.tls.key`: {} holds no private key (expected PEM PKCS#8, PKCS#1 or SEC1)",
            tls.key.display()
        )
    })?;
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("`api.tls`: the key does not match the certificate, or is not supported")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
