//! The local backend's reconcile pass, the same model as the Kubernetes one: the state file is
//! the desired state. For each deployment recorded as deployed, its record (template version
//! and values) is rendered again through the [`Planner`], as the API's Deploy would render it:
//!
//! - what renders differently (another template, a changed configuration) is applied, which
//!   restarts the workload when its command line or the configuration it uses changed;
//! - otherwise the object store is checked, and a file removed or changed behind the
//!   backend's back is written again (logged);
//! - dead workloads are the supervisor's: it restarts them (with backoff) as it always has.
//!
//! Failed deployments are left as they are (a crash-looping workload must not be retried
//! forever); deployments being deployed belong to their apply. The decision is taken under the
//! deployment's lock against the record as it is then: a Deploy that changed it while the plan
//! was rendered wins, and the next pass looks again.

use std::sync::Arc;

use super::state::{digest, Entry};
use super::{Inner, LocalBackend};
use crate::backend::{ApplyOptions, Progress, Status};
use crate::plan::{DeploymentId, Desired, Plan, Planner};

/// What the pass did to one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Its desired state renders differently from what was applied: applied again.
    Applied(DeploymentId),
    /// Object-store files written again (kubectl names).
    Healed(DeploymentId, Vec<String>),
}

impl LocalBackend {
    /// One reconcile pass over every deployed deployment (one at a time; a shutdown stops it
    /// between deployments).
    pub async fn reconcile(&self, planner: &dyn Planner) -> Vec<Reconciled> {
        self.inner.reconcile(planner).await
    }
}

fn desired_of(entry: &Entry) -> Desired {
    Desired { id: entry.record.id.clone(), version: entry.record.version.clone(), config: entry.record.config.clone() }
}

/// Whether `plan` renders exactly the objects `entry` applied.
fn renders_the_same(plan: &Plan, entry: &Entry) -> bool {
    plan.objects.len() == entry.objects.len()
        && plan.objects.iter().zip(&entry.objects).all(|(p, s)| p.object == s.object && digest(&p.manifest) == s.digest)
}

impl Inner {
    async fn reconcile(self: &Arc<Self>, planner: &dyn Planner) -> Vec<Reconciled> {
        self.recover().await;
        let ids: Vec<DeploymentId> = {
            let state = self.state.lock().await;
            let deployed = state.file.deployments.values().filter(|e| e.record.status == Status::Deployed);
            deployed.map(|e| e.record.id.clone()).collect()
        };
        let mut out = Vec::new();
        for id in ids {
            if self.check_open().is_err() {
                break;
            }
            if let Some(done) = self.reconcile_one(&id, planner).await {
                out.push(done);
            }
        }
        out
    }

    async fn reconcile_one(self: &Arc<Self>, id: &DeploymentId, planner: &dyn Planner) -> Option<Reconciled> {
        let desired = desired_of(&self.entry(id).await.filter(|e| e.record.status == Status::Deployed)?);
        // Rendered without the lock: the planner's preflight may run the interpreter, and a
        // Deploy of this deployment should not wait for it.
        let plan = match planner.plan(&desired).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!(deployment = %id, error = %e, "the recorded deployment no longer renders; left as it is");
                return None;
            }
        };
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let entry = self.entry(id).await.filter(|e| e.record.status == Status::Deployed)?;
        if desired_of(&entry) != desired {
            // Redeployed or undeployed meanwhile; the next pass renders what it recorded.
            return None;
        }
        if !renders_the_same(&plan, &entry) {
            tracing::info!(deployment = %id, "the desired state renders differently from what runs: applying it");
            return match self.apply_held(&plan, &ApplyOptions::default(), &Progress::discard()).await {
                Ok(_) => Some(Reconciled::Applied(id.clone())),
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "reconcile apply failed");
                    None
                }
            };
        }
        let written = self.store_objects(id, &plan.objects).await;
        if written.is_empty() {
            return None;
        }
        let names: Vec<String> = written.iter().map(|o| o.kubectl_name()).collect();
        tracing::info!(deployment = %id, objects = ?names, "healed the local object store: written again");
        Some(Reconciled::Healed(id.clone(), names))
    }
}
