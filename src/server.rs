//! Serves gRPC (Orchestrator, health, reflection), grpc-web and the REST gateway on ONE listener.
//! It never binds: callers (main, tests) pass a bound listener, so tests use port 0.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceExt;

use crate::api::{grpc::OrchestratorApi, rest};
use crate::pb::{self, orchestrator_server::OrchestratorServer};
use crate::service::Service;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The whole HTTP surface as one axum router.
pub async fn app(service: Arc<Service>) -> Result<Router, Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrchestratorServer<OrchestratorApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let grpc = tonic::service::Routes::new(OrchestratorServer::new(OrchestratorApi::new(service.clone())))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    // Both routers want a fallback; REST paths are matched first, gRPC (and grpc-web) requests
    // go to tonic's router by content type, and anything else gets a JSON 404.
    Ok(rest::router(service).fallback(move |req: Request| {
        let grpc = grpc.clone();
        async move {
            if is_grpc(&req) {
                grpc.oneshot(req).await.into_response()
            } else {
                rest::not_found(req).await.into_response()
            }
        }
    }))
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = app(service).await?;
    // Small gRPC messages would otherwise wait on Nagle + delayed ACK (~40 ms per call).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}
