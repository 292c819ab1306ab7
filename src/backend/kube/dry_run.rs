//! `deploy --dry-run` on Kubernetes: every object goes through the same server-side apply as a
//! deploy, with `dryRun=All` (schema, admission and field-manager conflicts are checked, nothing
//! is persisted), and is reported as what the apply would do: created, configured or unchanged
//! against the live object. Neither the target namespace nor the record is written.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use super::sync::service_endpoints;
use super::{apply, errors, KubeBackend};
use crate::backend::{self, Action, DeploymentRecord, ObjectEvent, Progress, Result, Status};
use crate::plan::{ObjectRef, Plan, Section};

impl KubeBackend {
    /// Reports what applying `plan` would do, changing nothing; the record a deploy would store.
    pub(super) async fn dry_run(
        &self,
        plan: &Plan,
        applier: &apply::Applier<'_>,
        progress: &Progress,
    ) -> Result<DeploymentRecord> {
        let previous = self.records().get(&plan.id).await?;
        // The orchestrator's own namespace exists (we run there), and a namespaced install may
        // not even read Namespace objects.
        if plan.id.namespace != self.options.orchestrator_namespace {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let ns = &plan.id.namespace;
            if api.get_opt(ns).await.map_err(|e| errors::api_error(&format!("namespace/{ns}"), e))?.is_none() {
                let object = ObjectRef {
                    api_version: "v1".into(),
                    kind: "Namespace".into(),
                    name: ns.clone(),
                    namespace: None,
                    section: Section::Dependencies,
                    file: String::new(),
                };
                let ev = ObjectEvent::new(object, Action::Created).with_message("target namespace; server dry run");
                progress.send(ev).await;
            }
        }
        let mut objects = Vec::with_capacity(plan.objects.len());
        for planned in &plan.objects {
            match applier.preview(planned, &plan.id, &plan.version).await {
                Ok((object, action, note)) => {
                    progress.send(ObjectEvent::new(object.clone(), action).with_message(note)).await;
                    objects.push(object);
                }
                Err(e) => {
                    let object = apply::resolved_ref(&planned.object, &planned.manifest, &plan.id.namespace);
                    progress.send(ObjectEvent::new(object, Action::Failed).with_message(e.to_string())).await;
                    tracing::info!(deployment = %plan.id, error = %e, "rejected by the server-side dry run");
                    return Err(e);
                }
            }
        }
        if let Some(jd) = self.records().resource(&plan.id).await? {
            for o in super::prune::dropped(&jd, &objects) {
                let ev = ObjectEvent::new(o, Action::Deleted).with_message("no longer in the template; server dry run");
                progress.send(ev).await;
            }
        }
        Ok(DeploymentRecord {
            id: plan.id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints: service_endpoints(&objects, plan),
            status: Status::Deployed,
            message: backend::DRY_RUN.into(),
            objects,
            backend: backend::Kind::Kubernetes,
            wakeups: previous.as_ref().map_or(0, |p| p.wakeups),
            updated_at: previous.map(|p| p.updated_at).unwrap_or_else(backend::now_rfc3339),
        })
    }
}
