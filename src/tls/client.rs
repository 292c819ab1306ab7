//! The client's TLS: a rustls config trusting `--ca-file` (else the system's roots), and
//! [`TlsConnector`], a `tower::Service<Uri>` that dials TCP and completes the handshake, for
//! `tonic::transport::Endpoint::connect_with_connector` (tonic is built without its own TLS).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::{provider, Error, Result};

/// A client config with ALPN `h2` and `http/1.1`, trusting only the certificates in `ca_file`
/// when given, else the system's root store.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in super::server::read_certificates(path)? {
                roots.add(cert).map_err(|source| Error::Config { source })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipping a system root certificate");
            }
            let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(Error::NoRoots);
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Config { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = super::server::ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config that trusts exactly the (first) certificate in `cert_file`, whatever names
/// it carries: for `jac-orc probe`, which asks its own server over loopback, where a certificate
/// issued for the Service's DNS name would never match `127.0.0.1`. Signatures are still
/// verified, so only the holder of that certificate's key passes.
pub fn pinned_config(cert_file: &Path) -> Result<rustls::ClientConfig> {
    let cert = super::server::read_certificates(cert_file)?.swap_remove(0);
    let provider = provider();
    let verifier = Arc::new(Pinned { cert, provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Config { source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = super::server::ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts one certificate exactly ([`pinned_config`]).
#[derive(Debug)]
struct Pinned {
    cert: rustls::pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials `host:port` of a URI (port 443 by default) and speaks TLS, verifying the host name.
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl TlsConnector {
    pub fn new(config: rustls::ClientConfig) -> Self {
        TlsConnector { inner: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// Connects to `host:port`, checking the certificate against `host`.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, Error::ServerName { host: host.to_string() })
        })?;
        let tcp = TcpStream::connect((bare, port)).await?;
        tcp.set_nodelay(true)?;
        self.inner.connect(name, tcp).await
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri} names no host")))?;
            let port = uri.port_u16().unwrap_or(443);
            Ok(TokioIo::new(connector.connect(host, port).await?))
        })
    }
}
