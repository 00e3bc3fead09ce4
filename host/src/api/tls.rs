//! HTTPS for the API (`[api.tls]`): a rustls server config from PEM files, with errors that
//! name the file and what is wrong with it.

use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

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

/// What a node trusts when it forwards to another node over HTTPS: `api.tls.ca`, or the
/// node's own certificate.
pub fn peer_client(tls: &TlsSection) -> anyhow::Result<Arc<ClientConfig>> {
    match &tls.ca {
        Some(ca) => client_trusting("`api.tls.ca`", ca),
        None => client_trusting("`api.tls.cert`", &tls.cert),
    }
}

/// A client config trusting only the certificates of the PEM file at `path` (`what` names
/// the setting in errors).
pub fn client_trusting(what: &str, path: &std::path::Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{what}: reading {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("{what}: {} is not PEM", path.display()))?;
        roots.add(cert).with_context(|| {
            format!("{what}: a certificate in {} is not usable", path.display())
        })?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{what}: {} holds no certificate",
        path.display()
    );
    let cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
