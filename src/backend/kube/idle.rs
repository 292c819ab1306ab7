//! Scale to zero and wake on Kubernetes. The `JacDeployment` carries the state in an annotation
//! ([`ANNOTATION_IDLE`]): `asleep` makes every reconcile render its Deployments with
//! `replicas: 0` ([`scaled_plan`]), so the drift check keeps them there and the Service, the
//! record and the recorded replicas stay; `waking` renders them as recorded again while the
//! record still reads idle, so callers arriving meanwhile wait for the same wake-up instead of
//! seeing a deployment without a ready pod. The wake-up count lives in [`ANNOTATION_WAKEUPS`].
//!
//! The reconcile loop (on the leader) does the scaling; any replica may write the annotation.
//! Writes carry the resource version read, so of two replicas waking one deployment only one
//! counts the wake-up; the other waits for its endpoint like everyone else.

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::resource::JacDeployment;
use super::{errors, KubeBackend};
use crate::backend::{Backend, Error, Result, Status};
use crate::plan::{DeploymentId, Plan};

/// `asleep` or `waking`; absent when it runs as recorded.
pub const ANNOTATION_IDLE: &str = "jac-orc.io/idle";
/// Times the deployment was woken from zero.
pub const ANNOTATION_WAKEUPS: &str = "jac-orc.io/wakeups";
const ASLEEP: &str = "asleep";
const WAKING: &str = "waking";
/// Field manager of the annotation patches (not the apply's: its applies must not drop them).
const MANAGER: &str = "jac-orc-idle";
/// How often a wake-up looks for a ready module server.
const WOKEN_POLL: Duration = Duration::from_millis(200);

fn label(id: &DeploymentId) -> String {
    format!("jacdeployment.jac-orc.io/{}", id.name)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn idle_state(jd: &JacDeployment) -> Option<&str> {
    jd.annotations().get(ANNOTATION_IDLE).map(String::as_str)
}

/// Whether the resource is asleep or waking (its record reads idle).
pub(crate) fn is_idle(jd: &JacDeployment) -> bool {
    matches!(idle_state(jd), Some(ASLEEP | WAKING))
}

pub(crate) fn wakeups(jd: &JacDeployment) -> u64 {
    jd.annotations().get(ANNOTATION_WAKEUPS).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The plan as a reconcile applies it: Deployments at zero replicas while asleep.
pub(crate) fn scaled_plan(jd: &JacDeployment, mut plan: Plan) -> Plan {
    if idle_state(jd) == Some(ASLEEP) {
        for o in plan.objects.iter_mut().filter(|o| o.object.kind == "Deployment") {
            if let Some(spec) = o.manifest.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("replicas".into(), 0.into());
            }
        }
    }
    plan
}

impl KubeBackend {
    /// Writes the annotations if the resource is still the version read (409 otherwise).
    async fn patch_idle(
        &self,
        jd: &JacDeployment,
        state: Option<&str>,
        wakeups: Option<u64>,
    ) -> Result<(), kube::Error> {
        let mut annotations = serde_json::Map::new();
        annotations.insert(ANNOTATION_IDLE.into(), state.map_or(Value::Null, Value::from));
        if let Some(n) = wakeups {
            annotations.insert(ANNOTATION_WAKEUPS.into(), n.to_string().into());
        }
        let patch = json!({"metadata": {"annotations": annotations, "resourceVersion": jd.resource_version()}});
        let ns = jd.namespace().unwrap_or_default();
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
        self.records().api(&ns).patch(&jd.name_any(), &params, &Patch::Merge(&patch)).await.map(|_| ())
    }

    pub(super) async fn scale_to_zero_now(&self, id: &DeploymentId) -> Result<bool> {
        let jd = self.records().resource(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        let record = self.records().get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        if record.status != Status::Deployed || is_idle(&jd) {
            return Ok(false);
        }
        self.patch_idle(&jd, Some(ASLEEP), None).await.map_err(|e| errors::api_error(&label(id), e))?;
        tracing::info!(deployment = %id, "scaled to zero after its idle timeout (the reconcile loop scales its Deployments)");
        Ok(true)
    }

    pub(super) async fn wake_now(&self, id: &DeploymentId, wait: Duration) -> Result<bool> {
        let _one = self.hold_wake(id).await;
        let give_up = Instant::now() + wait;
        let jd = self.records().resource(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        let woke = match idle_state(&jd) {
            Some(ASLEEP) => {
                let count = wakeups(&jd) + 1;
                match self.patch_idle(&jd, Some(WAKING), Some(count)).await {
                    Ok(()) => {
                        crate::metrics::global().wakeup(&format!("{}/{}", id.namespace, id.name));
                        tracing::info!(deployment = %id, "waking from zero");
                        true
                    }
                    // Another replica wrote first (and is waking it): wait for the same endpoint.
                    Err(e) if is_conflict(&e) => false,
                    Err(e) => return Err(errors::api_error(&label(id), e)),
                }
            }
            Some(WAKING) => false,
            _ => return Ok(false),
        };
        loop {
            if !self.module_endpoints(id).await?.is_empty() {
                break;
            }
            if Instant::now() >= give_up {
                return Err(Error::Timeout { timeout: wait, not_ready: vec![format!("{id} (waking from zero)")] });
            }
            tokio::time::sleep(WOKEN_POLL).await;
        }
        // Awake: the record reads as it did before it slept.
        if let Some(fresh) = self.records().resource(id).await? {
            if idle_state(&fresh) == Some(WAKING) {
                match self.patch_idle(&fresh, None, None).await {
                    Err(e) if !is_conflict(&e) => return Err(errors::api_error(&label(id), e)),
                    _ => {}
                }
            }
        }
        Ok(woke)
    }

    /// A Deploy of a sleeping deployment applies it as recorded: it is awake from then on.
    pub(super) async fn clear_idle(&self, jd: &JacDeployment) -> Result<()> {
        if idle_state(jd).is_none() {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {ANNOTATION_IDLE: null}}});
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
        let ns = jd.namespace().unwrap_or_default();
        let name = jd.name_any();
        self.records()
            .api(&ns)
            .patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| errors::api_error(&format!("jacdeployment.jac-orc.io/{name}"), e))
    }

    async fn hold_wake(&self, id: &DeploymentId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.wakes.lock().expect("wake locks").entry(id.clone()).or_default().clone();
        lock.lock_owned().await
    }
}
