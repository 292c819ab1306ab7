//! `jac-orc probe`: the exec form of the orchestrator's gRPC readiness probe, for clusters older
//! than Kubernetes 1.24 (no native `grpc:` probes).
//!
//! It asks the standard gRPC health service (`grpc.health.v1.Health/Check`) of a running server
//! on this machine, exactly what the kubelet's gRPC probe asks, and exits 0 only for SERVING. The
//! install manifests run it as `jac-orc probe --port 8000`; the kube backend's exec fallback for
//! gRPC probes appends `--port P [--service S] --timeout T` the same way (see
//! `backend::kube::ANNOTATION_GRPC_PROBE_EXEC`).
//!
//! With `--tls-dir` (`JAC_ORC_TLS_DIR`, which the manifests set for `serve` too) holding a
//! certificate, it speaks TLS and accepts exactly that certificate
//! ([`crate::tls::pinned_config`]); the health service needs no token.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Arguments of `jac-orc probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Host of the server (the probe runs inside its pod).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the server's gRPC listener.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Health service name to check; empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds for connecting and answering together (a probe's `timeoutSeconds`).
    #[arg(long, default_value_t = 1.0)]
    pub timeout: f64,
    /// Speak TLS when DIR/tls.crt exists (the server's own `--tls-dir`), trusting exactly it.
    #[arg(long, env = "JAC_ORC_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid timeout {0}: it must be a positive number of seconds")]
    BadTimeout(f64),
    #[error("cannot set up TLS for the probe")]
    Tls(#[source] crate::tls::Error),
    #[error("invalid address {address}")]
    BadAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("health check of {address} failed")]
    Check {
        address: String,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("{address} did not answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("{address} reports {status} for service {service:?}")]
    NotServing { address: String, service: String, status: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks the server once; `Ok` means SERVING.
pub async fn run(args: &ProbeArgs) -> Result<()> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::BadTimeout(args.timeout));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let host = if args.host.contains(':') { format!("[{}]", args.host) } else { args.host.clone() };
    let address = format!("{host}:{}", args.port);
    let cert = args.tls_dir.as_deref().map(|d| crate::config::TlsChoice::dir_files(d).0).filter(|c| c.is_file());
    let tls = cert.map(|c| crate::tls::pinned_config(&c)).transpose().map_err(Error::Tls)?;
    match tokio::time::timeout(timeout, check(&address, &args.service, timeout, tls)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { address, timeout }),
    }
}

async fn check(address: &str, service: &str, timeout: Duration, tls: Option<rustls::ClientConfig>) -> Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|source| Error::BadAddress { address: address.into(), source })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let connected = match tls {
        Some(config) => endpoint.connect_with_connector(crate::tls::TlsConnector::new(config)).await,
        None => endpoint.connect().await,
    };
    let channel = connected.map_err(|source| Error::Connect { address: address.into(), source })?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_err(|status| Error::Check { address: address.into(), source: Box::new(status) })?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        other => Err(Error::NotServing {
            address: address.into(),
            service: service.into(),
            status: other.map(|s| s.as_str_name().to_string()).unwrap_or_else(|_| format!("status {}", answer.status)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(port: u16, service: &str) -> ProbeArgs {
        ProbeArgs { host: "127.0.0.1".into(), port, service: service.into(), timeout: 5.0, tls_dir: None }
    }

    /// A health service on a loopback port, with `served` SERVING and `down` NOT_SERVING.
    async fn health_server() -> (u16, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("served", tonic_health::ServingStatus::Serving).await;
        reporter.set_service_status("down", tonic_health::ServingStatus::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (port, stop, handle)
    }

    #[tokio::test]
    async fn serving_passes_and_everything_else_fails_with_the_reason() {
        let (port, stop, handle) = health_server().await;
        run(&args(port, "")).await.unwrap();
        run(&args(port, "served")).await.unwrap();
        let err = run(&args(port, "down")).await.unwrap_err();
        assert!(matches!(&err, Error::NotServing { status, .. } if status == "NOT_SERVING"), "{err:?}");
        let err = run(&args(port, "unknown")).await.unwrap_err();
        match &err {
            Error::Check { source, .. } => assert_eq!(source.code(), tonic::Code::NotFound),
            other => panic!("expected a failed check, got {other:?}"),
        }
        let _ = stop.send(());
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn nothing_listening_fails_to_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = run(&args(port, "")).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. } | Error::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_non_positive_timeout_is_refused() {
        let mut a = args(1, "");
        a.timeout = 0.0;
        assert!(matches!(run(&a).await, Err(Error::BadTimeout(_))));
    }
}
