//! The gRPC health service follows readiness ([`Service::check_ready`]), so the kubelet's gRPC
//! probe and `jac-orc probe` say what `/readyz` says: NOT_SERVING until the startup `MODULES`
//! replay has finished and while the backend does not answer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::grpc::OrchestratorApi;
use crate::api::module_proxy::ModuleProxyServer;
use crate::pb::orchestrator_server::OrchestratorServer;
use crate::service::Service;

/// How often readiness is checked again once startup has finished (a backend that stops
/// answering turns the health service NOT_SERVING within this).
const RECHECK: Duration = Duration::from_secs(10);
/// How often it is checked while startup is pending or the backend was down.
const RETRY: Duration = Duration::from_secs(2);

/// Sets the statuses from a first check now (so a server is never announced with a stale
/// SERVING), then keeps them current in a task that ends with the service.
pub(super) async fn report(health: HealthReporter, service: &Arc<Service>) {
    let mut ready = check(&health, service, None).await;
    let weak: Weak<Service> = Arc::downgrade(service);
    tokio::spawn(async move {
        loop {
            let Some(service) = weak.upgrade() else { return };
            let pause = if ready { RECHECK } else { RETRY };
            // Startup's end is seen at once rather than at the next tick.
            let started = service.readiness().clone();
            let starting = !started.is_started();
            drop(service);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = started.wait_started(), if starting => {}
            }
            let Some(service) = weak.upgrade() else { return };
            ready = check(&health, &service, Some(ready)).await;
        }
    });
}

/// One check; logs when the state changes. Returns whether it is ready.
async fn check(health: &HealthReporter, service: &Service, before: Option<bool>) -> bool {
    let outcome = service.check_ready().await;
    let ready = outcome.is_ok();
    let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    // "" is the server as a whole: what `jac-orc probe` and the install manifests' probes ask.
    health.set_service_status("", status).await;
    health.set_service_status(<OrchestratorServer<OrchestratorApi> as NamedService>::NAME, status).await;
    health.set_service_status(<ModuleProxyServer as NamedService>::NAME, status).await;
    if before != Some(ready) {
        match outcome {
            Ok(()) => tracing::info!("ready: startup finished and the backend answers"),
            Err(e) => tracing::info!(reason = format!("{:#}", anyhow::Error::new(e)), "not ready"),
        }
    }
    ready
}
