//! Handshakes over loopback with the self-signed certificate: trusted, untrusted, wrong name,
//! HTTP/1.1 and gRPC (HTTP/2 via ALPN) through [`TlsConnector`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const STEP: Duration = Duration::from_secs(10);

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("timed out")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn self_signed(dir: &Path) -> ServerTls {
    load(&ServerTlsSource::SelfSigned { data_dir: dir.to_path_buf(), names: vec![] }).unwrap()
}

/// Serves TLS connections on loopback: gRPC health for `application/grpc`, else `hello`.
async fn serve(tls: &ServerTls) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor.clone();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let task = tokio::spawn(async move {
        let _reporter = reporter;
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, health) = (acceptor.clone(), health.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut health = health.clone();
                    async move {
                        let grpc =
                            req.headers().get("content-type").is_some_and(|v| v.as_bytes() == b"application/grpc");
                        if grpc {
                            let r =
                                tower::Service::call(&mut health, req).await.unwrap_or_else(|e: Infallible| match e {});
                            Ok::<_, Infallible>(r.map(axum::body::Body::new))
                        } else {
                            Ok(Response::new(axum::body::Body::from("hello")))
                        }
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, task)
}

fn client_trusting(cert: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut config = client_config(Some(cert)).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await
}

fn certificate_error(e: &std::io::Error) -> Option<rustls::CertificateError> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(c.clone()),
        _ => None,
    }
}

#[test]
fn the_self_signed_certificate_is_generated_once_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = self_signed(tmp.path());
    assert!(first.generated);
    assert_eq!(first.certificate, tmp.path().join("tls/server.crt"));
    assert_eq!(mode(&tmp.path().join("tls/server.key")), 0o600);
    assert_eq!(mode(&tmp.path().join("tls")), 0o700);
    let fp = first.fingerprint.to_string();
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    assert!(fp.chars().all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase()), "{fp}");

    let second = self_signed(tmp.path());
    assert!(!second.generated);
    assert_eq!(second.fingerprint, first.fingerprint, "the same certificate after a restart");
}

#[test]
fn asking_for_a_new_name_makes_a_new_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let first = self_signed(tmp.path());
    let source = |names: &[&str]| ServerTlsSource::SelfSigned {
        data_dir: tmp.path().to_path_buf(),
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    let named = load(&source(&["jac-orc.example.com"])).unwrap();
    assert!(named.generated);
    assert_ne!(named.fingerprint, first.fingerprint);
    let again = load(&source(&["JAC-ORC.example.com", "localhost"])).unwrap();
    assert!(!again.generated, "names are covered (case-insensitively)");
    assert!(!load(&source(&[])).unwrap().generated, "fewer names reuse it too");
}

#[test]
fn given_files_load_and_bad_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = self_signed(tmp.path());
    let key = tmp.path().join("tls/server.key");
    let files = load(&ServerTlsSource::Files { cert: generated.certificate.clone(), key: key.clone() }).unwrap();
    assert!(!files.generated);
    assert_eq!(files.fingerprint, generated.fingerprint);

    let missing = load(&ServerTlsSource::Files { cert: tmp.path().join("nope.crt"), key: key.clone() }).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.crt"), "{missing}");
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not pem at all\n").unwrap();
    let err = load(&ServerTlsSource::Files { cert: empty.clone(), key: key.clone() }).unwrap_err();
    assert!(matches!(err, Error::NoCertificate { .. }) && err.to_string().contains("empty.pem"), "{err}");
    let err = load(&ServerTlsSource::Files { cert: generated.certificate.clone(), key: empty }).unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err}");
    let other = tempfile::tempdir().unwrap();
    self_signed(other.path());
    let mismatched = ServerTlsSource::Files { cert: generated.certificate, key: other.path().join("tls/server.key") };
    assert!(matches!(load(&mismatched).unwrap_err(), Error::Config { .. }), "a key of another certificate");
}

#[tokio::test]
async fn a_client_trusting_the_certificate_gets_h2_or_http1_by_alpn() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = self_signed(tmp.path());
    let (addr, server) = serve(&tls).await;

    let both = client_trusting(&tls.certificate, &[b"h2", b"http/1.1"]);
    let stream = timed(handshake(&both, addr, "localhost")).await.expect("trusted handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let stream = timed(handshake(&both, addr, "127.0.0.1")).await.expect("the IP SAN");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let http1 = client_trusting(&tls.certificate, &[b"http/1.1"]);
    let mut stream = timed(handshake(&http1, addr, "localhost")).await.expect("trusted handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    timed(stream.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")).await.unwrap();
    let mut response = Vec::new();
    timed(stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello"), "{response}");
    server.abort();
}

#[tokio::test]
async fn a_client_not_trusting_the_certificate_or_naming_another_host_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = self_signed(tmp.path());
    let (addr, server) = serve(&tls).await;
    let stranger = tempfile::tempdir().unwrap();
    let other = self_signed(stranger.path());

    let untrusting = client_trusting(&other.certificate, &[b"h2"]);
    let err = timed(handshake(&untrusting, addr, "localhost")).await.expect_err("untrusted certificate");
    assert_eq!(certificate_error(&err), Some(rustls::CertificateError::UnknownIssuer), "{err}");

    let trusting = client_trusting(&tls.certificate, &[b"h2"]);
    let err = timed(handshake(&trusting, addr, "jac-orc.example.com")).await.expect_err("a name not in the SANs");
    assert!(
        matches!(
            certificate_error(&err),
            Some(rustls::CertificateError::NotValidForNameContext { .. } | rustls::CertificateError::NotValidForName)
        ),
        "{err}"
    );
    server.abort();
}

#[tokio::test]
async fn grpc_runs_over_tls_through_the_connector() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let tmp = tempfile::tempdir().unwrap();
    let tls = self_signed(tmp.path());
    let (addr, server) = serve(&tls).await;
    let connector = TlsConnector::new(client_config(Some(&tls.certificate)).unwrap());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let channel = timed(endpoint.connect_with_connector(connector)).await.expect("TLS channel");
    let reply = timed(HealthClient::new(channel).check(HealthCheckRequest { service: String::new() })).await.unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);

    let stranger = tempfile::tempdir().unwrap();
    let untrusting = TlsConnector::new(client_config(Some(&self_signed(stranger.path()).certificate)).unwrap());
    assert!(timed(endpoint.connect_with_connector(untrusting)).await.is_err(), "no channel without trust");
    server.abort();
}

#[tokio::test]
async fn a_pinned_client_accepts_exactly_that_certificate_under_any_name() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = self_signed(tmp.path());
    let (addr, server) = serve(&tls).await;
    let pinned = tokio_rustls::TlsConnector::from(std::sync::Arc::new(pinned_config(&tls.certificate).unwrap()));
    let stream = timed(handshake(&pinned, addr, "jac-orc.example.com")).await.expect("the pinned certificate");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let stranger = tempfile::tempdir().unwrap();
    let other = self_signed(stranger.path());
    let wrong = tokio_rustls::TlsConnector::from(std::sync::Arc::new(pinned_config(&other.certificate).unwrap()));
    let err = timed(handshake(&wrong, addr, "localhost")).await.expect_err("another certificate");
    assert_eq!(certificate_error(&err), Some(rustls::CertificateError::UnknownIssuer), "{err}");
    server.abort();
}
