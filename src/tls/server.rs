//! The server's TLS: PEM certificate chain + key → `TlsAcceptor` with ALPN `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::{provider, Error, Fingerprint, Result};

/// ALPN protocols the server offers, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTlsSource {
    /// `--tls-cert` (chain, leaf first) and `--tls-key` (PKCS#8, PKCS#1 or SEC1), PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// `--tls-self-signed`: generated once into `data_dir`, for `localhost`, `127.0.0.1`, `::1`
    /// and `names` (e.g. `--tls-name jac-orc.example.com`).
    SelfSigned { data_dir: PathBuf, names: Vec<String> },
}

/// A ready acceptor and what to log about it.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// The certificate file in use (give it to clients as `--ca-file` when self-signed).
    pub certificate: PathBuf,
    /// SHA-256 of the leaf certificate.
    pub fingerprint: Fingerprint,
    /// Whether this start generated the self-signed certificate.
    pub generated: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificate", &self.certificate)
            .field("fingerprint", &self.fingerprint.to_string())
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

/// Loads (or, for [`ServerTlsSource::SelfSigned`], first generates) the certificate and key.
pub fn load(source: &ServerTlsSource) -> Result<ServerTls> {
    let (cert, key, generated) = match source {
        ServerTlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        ServerTlsSource::SelfSigned { data_dir, names } => {
            let s = super::self_signed::ensure(data_dir, names)?;
            (s.cert_path, s.key_path, s.created)
        }
    };
    let (config, fingerprint) = server_config(&cert, &key)?;
    Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), certificate: cert, fingerprint, generated })
}

/// A rustls server config for the PEM files, and the leaf's fingerprint.
pub fn server_config(cert: &Path, key: &Path) -> Result<(rustls::ServerConfig, Fingerprint)> {
    let chain = read_certificates(cert)?;
    let fingerprint = Fingerprint::of(&chain[0]);
    let key_pem = read(key)?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| Error::Pem { path: key.to_path_buf(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Config { source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| Error::Config { source })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((config, fingerprint))
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { path: path.to_path_buf(), source })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { action: "read", path: path.to_path_buf(), source })
}
