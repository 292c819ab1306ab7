//! TLS with rustls (ring provider), for `serve` and for clients.
//!
//! - [`server`]: `--tls-cert`/`--tls-key` (PEM files), or `--tls-self-signed` ([`self_signed`]:
//!   a key and certificate generated once into the data dir and reused) → a
//!   `tokio_rustls::TlsAcceptor` offering ALPN `h2` and `http/1.1`, so gRPC (HTTP/2) and
//!   grpc-web/REST over HTTP/1.1 share the port, as in plaintext.
//! - [`client`]: a rustls client config trusting a `--ca-file` (or the system roots), and a
//!   connector for tonic channels (`Endpoint::connect_with_connector`).

pub mod client;
pub mod self_signed;
pub mod server;

use std::path::PathBuf;

pub use client::{client_config, pinned_config, TlsConnector};
pub use self_signed::SelfSigned;
pub use server::{load, ServerTls, ServerTlsSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificate and key do not form a usable TLS configuration")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("cannot generate the self-signed certificate")]
    Generate {
        #[source]
        source: rcgen::Error,
    },
    #[error("no trusted root certificates: the system has none; pass --ca-file")]
    NoRoots,
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SHA-256 fingerprint of a certificate (DER), shown as `AB:CD:…` like
/// `openssl x509 -fingerprint -sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
        Fingerprint(out)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// The ring provider, explicitly, so nothing depends on a process-wide default.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests;
