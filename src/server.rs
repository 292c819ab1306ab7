//! Serves gRPC (Orchestrator, ModuleProxy, health, reflection), grpc-web and the REST gateway on ONE listener.
//! It never binds: callers (main, tests) pass a bound listener, so tests use port 0.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceExt;

use crate::api::{grpc::OrchestratorApi, module_proxy::ModuleProxyServer, rest};
use crate::pb::{self, orchestrator_server::OrchestratorServer};
use crate::proxy::ModuleProxy;
use crate::service::Service;

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
    health.set_serving::<OrchestratorServer<OrchestratorApi>>().await;
    health.set_serving::<ModuleProxyServer>().await;
    let settings = service.settings();
    let module_proxy = ModuleProxyServer::new(Arc::new(ModuleProxy::new(
        service.backend().clone(),
        settings.namespace.clone(),
        settings.proxy.clone(),
    )));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let (app, module_proxy) = app_parts(service).await?;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        let (app, module_proxy) = (app.clone(), module_proxy.clone());
        // ModuleProxy calls (the hot path) go straight to their service; everything else
        // (REST, the other gRPC services, grpc-web) through the router.
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let response: BoxFuture = if is_module_proxy_call(&req) {
                let mut proxy = module_proxy.clone();
                let call = tower::Service::call(&mut proxy, req.map(tonic::body::Body::new));
                Box::pin(async move { call.await.map(|r| r.map(axum::body::Body::new)) })
            } else {
                Box::pin(app.clone().oneshot(req.map(axum::body::Body::new)))
            };
            response
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Clients that keep their HTTP/2 connection open (pooled channels with heartbeats) would
    // otherwise hold the drain, and with it the stop of every workload, until they go away.
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!(seconds = DRAIN.as_secs(), "connections still open after the drain period; closing them");
    }
    Ok(())
}

type BoxFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<axum::body::Body>, std::convert::Infallible>> + Send>>;

/// A plain gRPC (not grpc-web) request to `ModuleProxy`.
fn is_module_proxy_call<B>(req: &http::Request<B>) -> bool {
    let grpc = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;")
    });
    grpc && req.uri().path().starts_with("/jac.splice.v1.ModuleProxy/")
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}
