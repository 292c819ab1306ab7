//! Pruning: after a successful apply, the objects the previous apply recorded (the status's
//! inventory) that the new plan no longer renders are deleted, as a new template version or
//! new values drop them. Only objects whose live labels say they belong to this deployment are
//! deleted; CRDs and Namespaces never are (as on undeploy).

use kube::api::DeleteParams;

use super::apply::api_for;
use super::discovery::gvk_of;
use super::errors::{api_error, is_not_found};
use super::resource::JacDeployment;
use super::KubeBackend;
use crate::backend::{Action, ObjectEvent, Progress, Result};
use crate::plan::{DeploymentId, ObjectRef, LABEL_DEPLOYMENT, LABEL_MODULE, LABEL_NAMESPACE};

fn same(a: &ObjectRef, b: &ObjectRef) -> bool {
    a.group() == b.group() && a.kind == b.kind && a.name == b.name && a.namespace == b.namespace
}

/// What `jd`'s last apply recorded that `objects` (the new apply's) no longer holds.
pub(crate) fn dropped(jd: &JacDeployment, objects: &[ObjectRef]) -> Vec<ObjectRef> {
    let before = jd.status.iter().flat_map(|s| s.inventory.iter()).map(ObjectRef::from);
    before.filter(|o| !o.is_crd() && !o.is_namespace() && !objects.iter().any(|n| same(n, o))).collect()
}

impl KubeBackend {
    /// Deletes each of `dropped` that still carries `id`'s labels, reporting it `deleted`;
    /// returns their kubectl lines.
    pub(crate) async fn prune(
        &self,
        id: &DeploymentId,
        dropped: Vec<ObjectRef>,
        progress: &Progress,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for o in dropped {
            let label = o.kubectl_name();
            let Some(resolved) = self.resolver.resolve(&gvk_of(&o)).await.map_err(|e| api_error(&label, e))? else {
                continue;
            };
            let mut object = o.clone();
            let api = api_for(&self.client, &resolved, &mut object, None, &id.namespace);
            let Some(live) = api.get_opt(&object.name).await.map_err(|e| api_error(&label, e))? else {
                continue;
            };
            let labels = live.metadata.labels.unwrap_or_default();
            let ours = [(LABEL_MODULE, &id.module), (LABEL_DEPLOYMENT, &id.name), (LABEL_NAMESPACE, &id.namespace)]
                .iter()
                .all(|(k, v)| labels.get(*k) == Some(*v));
            if !ours || live.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api.delete(&object.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(api_error(&label, e)),
            }
            let event = ObjectEvent::new(object, Action::Deleted).with_message("no longer in the template");
            lines.push(event.line.clone());
            progress.send(event).await;
        }
        Ok(lines)
    }
}
