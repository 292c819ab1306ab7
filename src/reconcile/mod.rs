//! The loops that make desired state true. The kube backend's desired state is its
//! `JacDeployment` resources: [`controller`] reconciles them (apply, config-hash rollouts, drift
//! healing, undeploy on deletion), only on the replica [`leader`] elects. The local backend's is
//! its state file: [`local`] runs its reconcile pass (config changes restart the workload, the
//! object store is healed) every few seconds, while each workload's supervisor restarts it when
//! it dies.
//!
//! Both render desired states through a [`crate::plan::Planner`] (the service layer), so what a
//! loop applies is exactly what the API's Deploy would have applied.

pub mod controller;
pub mod idle;
pub mod leader;
pub mod local;

pub use controller::{lead, run, ControllerConfig};
pub use idle::IdleScaler;
pub use leader::{elect, Election, LeaseConfig};
pub use local::LocalLoop;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::kube::KubeBackend;
use crate::plan::Planner;

/// How long a stopping reconcile loop waits for the reconciles in flight (a readiness wait can
/// last minutes; a shutdown must not).
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The kube backend's loops on one replica: its leader election and, while it leads, the
/// reconcile loop. [`KubeLoops::stop`] ends both and releases the Lease.
#[derive(Debug)]
pub struct KubeLoops {
    stop: CancellationToken,
    election: Election,
    controller: Option<JoinHandle<()>>,
}

impl KubeLoops {
    /// Starts campaigning for the leader Lease.
    pub fn elect(client: kube::Client, lease: LeaseConfig) -> Self {
        let stop = CancellationToken::new();
        let election = elect(client, lease, stop.clone());
        KubeLoops { stop, election, controller: None }
    }

    /// Whether this replica leads (what the backend's `KubeOptions::leadership` takes).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.election.leading.clone()
    }

    /// Runs the reconcile loop whenever this replica leads.
    pub fn start(&mut self, backend: Arc<KubeBackend>, planner: Arc<dyn Planner>, config: ControllerConfig) {
        let task = lead(backend, planner, config, self.leading(), self.stop.clone());
        self.controller = Some(tokio::spawn(task));
    }

    /// Stops the reconcile loop (reconciles in flight get [`STOP_GRACE`] to finish; one still
    /// waiting for readiness then is dropped, and the next leader reconciles it again), then the
    /// election, releasing the Lease so another replica takes over at once.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(mut c) = self.controller {
            match tokio::time::timeout(STOP_GRACE, &mut c).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the reconcile loop ended abnormally"),
                Err(_) => {
                    tracing::warn!(grace = ?STOP_GRACE, "reconciles still in flight at shutdown; dropped");
                    c.abort();
                    let _ = c.await;
                }
            }
        }
        if let Err(e) = self.election.task.await {
            tracing::warn!(error = %e, "the leader election ended abnormally");
        }
    }
}

/// This replica's name for its Lease and Events: `POD_NAME` (the manifests set it), else the
/// host name and process id.
pub fn replica_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "jac-orc".to_string() } else { host };
    format!("{host}-{}", std::process::id())
}
