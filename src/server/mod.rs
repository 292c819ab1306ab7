//! Serves gRPC (Orchestrator, ModuleProxy, health, reflection), grpc-web and the REST gateway on ONE listener.
//! It never binds: callers (main, tests) pass a bound listener, so tests use port 0.
//!
//! [`serve`] is the accept loop: it holds one place under [`Limits::max_connections`] per
//! connection (further clients wait in the listen backlog) and hands each connection to its own
//! task ([`connection`]), which does the TLS handshake and puts every request through the auth
//! layer ([`Options::auth`]) before any surface sees it.

mod connection;
mod health;
pub mod limits;
mod reflection;

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceExt;

use crate::api::{grpc::OrchestratorApi, module_proxy::ModuleProxyServer, rest};
use crate::auth::AuthLayer;
use crate::pb::orchestrator_server::OrchestratorServer;
use crate::proxy::ModuleProxy;
use crate::service::Service;
pub use limits::Limits;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gRPC reflection setup failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving failed")]
    Io(#[from] std::io::Error),
}

/// The whole HTTP surface as one axum router.
pub async fn app(service: Arc<Service>) -> Result<Router, Error> {
    Ok(app_parts(service).await?.0)
}

/// The router and, for the fast path of [`serve`], the `ModuleProxy` service inside it.
async fn app_parts(service: Arc<Service>) -> Result<(Router, ModuleProxyServer), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health::report(health, &service).await;
    let settings = service.settings();
    let module_proxy = ModuleProxyServer::new(Arc::new(ModuleProxy::new(
        service.backend().clone(),
        settings.namespace.clone(),
        settings.proxy.clone(),
        service.authorizer().clone(),
    )));
    let (reflection, reflection_alpha) = (reflection::builder()?.build_v1()?, reflection::builder()?.build_v1alpha()?);
    let grpc = tonic::service::Routes::new(OrchestratorServer::new(OrchestratorApi::new(service.clone())))
        .add_service(module_proxy.clone())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    // Both routers want a fallback; REST paths are matched first, gRPC (and grpc-web) requests
    // go to tonic's router by content type, and anything else gets a JSON 404.
    let router = rest::router(service).fallback(move |req: Request| {
        let grpc = grpc.clone();
        async move {
            if is_grpc(&req) {
                grpc.oneshot(req).await.into_response()
            } else {
                rest::not_found(req).await.into_response()
            }
        }
    });
    Ok((router, module_proxy))
}

/// How [`serve`] treats connections: who gets in, over what, for how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Authentication of every request on every surface.
    pub auth: AuthLayer,
    /// `None`: plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    pub limits: Limits,
}

impl Options {
    /// Plaintext with the default limits.
    pub fn new(auth: AuthLayer) -> Self {
        Options { auth, tls: None, limits: Limits::default() }
    }

    #[must_use]
    pub fn tls(mut self, tls: Option<crate::tls::ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// HTTP/2 flow control of accepted connections. hyper's server defaults (1 MiB windows, 16 KiB
/// frames, 400 KiB send buffer) throttle a 64 MiB ndarray forwarded through `ModuleProxy` to a
/// fraction of loopback bandwidth, hence a hand-built accept loop instead of `axum::serve`.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_FRAME: u32 = 1 << 20;
const SEND_BUFFER: usize = 16 << 20;
/// How long in-flight requests may run on after the shutdown signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tokio_util::sync::CancellationToken;

    let edge = crate::api::layers::EdgeLayer::new(&service.settings().edge);
    let (router, module_proxy) = app_parts(service).await?;
    let limits = options.limits.fitted(limits::open_file_limit());
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER);
    let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
    let shared = Arc::new(connection::Shared {
        router,
        module_proxy,
        edge,
        auth: options.auth,
        tls: options.tls.map(|t| t.acceptor),
        builder,
        limits,
        local: listener.local_addr()?,
        stop: stop.clone(),
        kill: kill.clone(),
    });
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let places = Arc::new(tokio::sync::Semaphore::new(all as usize));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut saturated = false;
    loop {
        let place = match places.clone().try_acquire_owned() {
            Ok(p) => {
                saturated = false;
                p
            }
            Err(_) => {
                if !saturated {
                    tracing::warn!(max = all, "connection limit reached: new connections wait until one closes");
                    saturated = true;
                }
                tokio::select! {
                    p = places.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the open connections.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small gRPC messages would otherwise wait on Nagle + delayed ACK (~40 ms per call).
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection::serve(stream, peer, shared.clone(), place));
    }
    drop(listener);
    stop.cancel();
    // Clients that keep their HTTP/2 connection open (pooled channels with heartbeats) would
    // otherwise hold the drain, and with it the stop of every workload, until they go away.
    if tokio::time::timeout(DRAIN, places.acquire_many(all)).await.is_err() {
        tracing::info!(seconds = DRAIN.as_secs(), "connections still open after the drain period; closing them");
        kill.cancel();
        let _ = tokio::time::timeout(DRAIN, places.acquire_many(all)).await;
    }
    Ok(())
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}
