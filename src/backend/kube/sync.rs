//! The one apply path. The API's Deploy (on the leader) and the reconcile loop both end here:
//! validate every object with a server-side dry run, apply them in plan order, look at (or wait
//! for) readiness, and record the outcome in the `JacDeployment`'s status. The reconcile loop
//! adds the drift check: when the desired state is the one last applied, each object is compared
//! with a dry run of its apply, and only the objects that differ are applied again (or, with
//! `selfHeal: false`, reported).

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::Value;

use super::apply::{self, Applier};
use super::conditions::{self, Observation, Outcome, Readiness};
use super::records::{inventory, record_of, split_config};
use super::resource::{JacDeployment, JacDeploymentStatus};
use super::{delete, errors, events, readiness, KubeBackend};
use crate::backend::rollout::canonical_digest;
use crate::backend::{now_rfc3339, Action, DeploymentRecord, Error, ObjectEvent, Progress, Result};
use crate::plan::{ObjectRef, Plan, Section};

/// Server-side dry runs in flight at once while validating a plan.
const DRY_RUN_CONCURRENCY: usize = 8;

/// `sha256:` digest of what a plan applies: version and rendered objects, key order ignored.
pub(crate) fn plan_digest(plan: &Plan) -> String {
    let objects: Vec<&Value> = plan.objects.iter().map(|o| &o.manifest).collect();
    canonical_digest(&serde_json::json!({"version": plan.version, "objects": objects}))
}

/// What a reconcile of a resource did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reconciled {
    /// A new desired state was applied; the kubectl lines of what changed.
    Applied(Vec<String>),
    /// The desired state was already applied; these objects drifted and were applied again.
    Healed(Vec<String>),
    /// These objects drifted and were left alone (`selfHeal: false`).
    Drifted(Vec<String>),
    /// Nothing differed.
    InSync,
}

/// What [`KubeBackend::apply_and_record`] did: the record (whatever the outcome), the lines of
/// what changed, and the error, if any.
#[derive(Debug)]
pub(crate) struct ApplyReport {
    pub(crate) record: DeploymentRecord,
    pub(crate) changes: Vec<String>,
    pub(crate) error: Option<Error>,
}

/// (group, kind) of the custom resources the plan's own CRDs define.
pub(crate) fn crd_defined_kinds(plan: &Plan) -> BTreeSet<(String, String)> {
    plan.objects
        .iter()
        .filter(|o| o.object.is_crd())
        .filter_map(|o| {
            let group = o.manifest.pointer("/spec/group")?.as_str()?;
            let kind = o.manifest.pointer("/spec/names/kind")?.as_str()?;
            Some((group.to_string(), kind.to_string()))
        })
        .collect()
}

/// `name.namespace.svc:port` addresses of the plan's Services (what consumers connect to).
pub(super) fn service_endpoints(objects: &[ObjectRef], plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for (o, planned) in objects.iter().zip(&plan.objects) {
        if o.kind != "Service" || o.api_version != "v1" {
            continue;
        }
        let ns = o.namespace.as_deref().unwrap_or(&plan.id.namespace);
        let ports = planned.manifest.pointer("/spec/ports").and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            if let Some(p) = port.get("port").and_then(Value::as_u64) {
                out.push(format!("{}.{ns}.svc:{p}", o.name));
            }
        }
    }
    out
}

fn resolved_refs(plan: &Plan) -> Vec<ObjectRef> {
    plan.objects.iter().map(|o| apply::resolved_ref(&o.object, &o.manifest, &plan.id.namespace)).collect()
}

impl KubeBackend {
    /// Server-side dry runs of every object the API server can check now, in plan order, a few
    /// at a time. Skipped: custom resources whose CRD the plan itself applies, and objects in a
    /// Namespace the plan itself creates (neither exists until the plan runs). The error names
    /// the index of the first object that failed.
    pub(crate) async fn validate(&self, plan: &Plan, applier: &Applier<'_>) -> Result<(), (usize, Error)> {
        let defined = crd_defined_kinds(plan);
        let plan_namespaces: BTreeSet<&str> = plan
            .objects
            .iter()
            .filter(|o| o.object.kind == "Namespace" && o.object.api_version == "v1")
            .map(|o| o.object.name.as_str())
            .collect();
        // Plain loops, not iterator closures: async_trait's futures must be `Send` for any lifetime.
        let mut checks = Vec::new();
        for (i, o) in plan.objects.iter().enumerate() {
            let own_kind = defined.contains(&(o.object.group().to_string(), o.object.kind.clone()));
            let ns = apply::resolved_ref(&o.object, &o.manifest, &plan.id.namespace).namespace;
            let in_new_namespace = ns.as_deref().is_some_and(|ns| plan_namespaces.contains(ns));
            if own_kind || in_new_namespace {
                continue;
            }
            checks.push(async move { applier.dry_run(o, &plan.id, &plan.version).await.map_err(|e| (i, e)) });
        }
        let results: Vec<Result<bool, (usize, Error)>> =
            futures::stream::iter(checks).buffered(DRY_RUN_CONCURRENCY).collect().await;
        match results.into_iter().find_map(Result::err) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Reports a validation failure on the object it names.
    pub(crate) async fn report_rejection(&self, plan: &Plan, (i, e): (usize, Error), progress: &Progress) -> Error {
        let o = &plan.objects[i];
        let object = apply::resolved_ref(&o.object, &o.manifest, &plan.id.namespace);
        progress.send(ObjectEvent::new(object, Action::Failed).with_message(e.to_string())).await;
        tracing::info!(deployment = %plan.id, error = %e, "rejected by the server-side dry run; nothing applied");
        e
    }

    /// Deletes a namespace this deploy created before it was rejected. Best effort: the error is
    /// the rejection, not the cleanup.
    pub(crate) async fn remove_created_namespace(&self, namespace: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = api.delete(namespace, &DeleteParams::background()).await {
            tracing::warn!(namespace, error = %e, "could not delete the namespace of a rejected deploy");
        }
    }

    /// Creates the deployment's target namespace when it is missing (as the original did before
    /// `kubectl apply`). Returns whether it was created.
    pub(crate) async fn ensure_namespace(&self, namespace: &str) -> Result<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_opt(namespace).await.map_err(|e| errors::api_error(&format!("namespace/{namespace}"), e))?.is_some()
        {
            return Ok(false);
        }
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(namespace.to_string()), ..Default::default() },
            ..Default::default()
        };
        match api
            .create(&PostParams { field_manager: Some(self.options.field_manager.clone()), ..Default::default() }, &ns)
            .await
        {
            Ok(_) => Ok(true),
            // Another deploy into the same namespace won the race: fine.
            Err(e) if errors::status_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(errors::api_error(&format!("namespace/{namespace}"), e)),
        }
    }

    /// Applies every object of `plan` (validated already) for resource `jd`, looks at or waits
    /// for readiness (`wait`), and records the outcome in `jd`'s status. The record is returned
    /// whatever the outcome; the error, if any, beside it.
    pub(crate) async fn apply_and_record(
        &self,
        jd: &JacDeployment,
        plan: &Plan,
        applier: &Applier<'_>,
        wait: Option<std::time::Duration>,
        progress: &Progress,
    ) -> ApplyReport {
        let mut objects = resolved_refs(plan);
        let mut changes = Vec::new();
        let mut applied = Ok(());
        for (i, planned) in plan.objects.iter().enumerate() {
            match applier.apply(planned, &plan.id, &plan.version).await {
                Ok((object, action)) => {
                    let event = ObjectEvent::new(object.clone(), action);
                    if action != Action::Unchanged {
                        changes.push(event.line.clone());
                    }
                    objects[i] = object;
                    progress.send(event).await;
                }
                Err(e) => {
                    let event = ObjectEvent::new(objects[i].clone(), Action::Failed).with_message(e.to_string());
                    progress.send(event).await;
                    applied = Err(e);
                    break;
                }
            }
        }
        if applied.is_ok() {
            match self.prune(&plan.id, super::prune::dropped(jd, &objects), progress).await {
                Ok(lines) => changes.extend(lines),
                Err(e) => applied = Err(e),
            }
        }
        let outcome = match applied {
            Err(e) => Err(e),
            Ok(()) => match wait {
                Some(timeout) => {
                    let waiting = std::time::Instant::now();
                    let waited = readiness::wait(&self.client, &self.resolver, &objects, timeout, progress).await;
                    crate::metrics::global().readiness_wait(&plan.id.module, waited.is_ok(), waiting.elapsed());
                    match waited {
                        Ok(readiness::Outcome::Ready) => Ok((Readiness::Ready, "ready")),
                        Ok(o) => Ok((self.look(&objects).await, o.message())),
                        Err(e) => Err(e),
                    }
                }
                None => Ok((self.look(&objects).await, "")),
            },
        };
        let now = now_rfc3339();
        let prev = jd.status.as_ref();
        let (outcome, revision, error) = match outcome {
            Ok((readiness, message)) => {
                let digest = plan_digest(plan);
                let prev_rev = prev.and_then(|p| p.applied_revision.as_ref());
                let generation = jd.metadata.generation.unwrap_or(0);
                let revision =
                    conditions::revision(prev_rev, &digest, &plan.version, generation, changes.clone(), &now);
                (Outcome::Applied { readiness, message: message.into() }, Some(revision), None)
            }
            Err(e) => (Outcome::failed(&e), None, Some(e)),
        };
        let failed = matches!(outcome, Outcome::Failed { .. });
        let observation = Observation {
            generation: jd.metadata.generation.unwrap_or(0),
            outcome,
            drifted: Vec::new(),
            endpoints: service_endpoints(&objects, plan),
            inventory: inventory(&objects),
            revision,
        };
        let status = conditions::next(prev, observation, &now);
        if let Err(e) = self.records().write_status(jd, &status).await {
            tracing::error!(deployment = %plan.id, error = %e, "could not record the deployment's status");
            if error.is_none() {
                return ApplyReport { record: self.record_with(jd, status, plan), changes, error: Some(e) };
            }
        }
        if failed {
            let message = status.message.clone();
            self.events.warning(jd, "ApplyFailed", message, None).await;
        } else if let Some(rev) =
            status.applied_revision.as_ref().filter(|r| Some(*r) != prev.and_then(|p| p.applied_revision.as_ref()))
        {
            let note = match rev.changes.is_empty() {
                true => format!("revision {} applied; no object changed", rev.revision),
                false => format!("revision {} applied: {}", rev.revision, rev.changes.join(", ")),
            };
            self.events.normal(jd, "Applied", note, None).await;
        }
        ApplyReport { record: self.record_with(jd, status, plan), changes, error }
    }

    fn record_with(&self, jd: &JacDeployment, status: JacDeploymentStatus, plan: &Plan) -> DeploymentRecord {
        let mut jd = jd.clone();
        jd.status = Some(status);
        let (_, secrets) = split_config(&plan.config, &plan.secret_keys);
        record_of(&jd, secrets)
    }

    /// One look at the workloads' readiness.
    async fn look(&self, objects: &[ObjectRef]) -> Readiness {
        readiness::snapshot(&self.client, &self.resolver, objects).await
    }

    /// The reconcile loop's step for resource `jd` whose desired state renders to `plan`: apply
    /// it when it is new (or its last apply failed), else check each object for drift and heal
    /// (or report) what drifted. The status is updated either way.
    pub(crate) async fn reconcile_resource(&self, jd: &JacDeployment, plan: &Plan) -> Result<Reconciled> {
        let plan = annotated(plan);
        let server = self.server_features().await?;
        let status = jd.status.clone().unwrap_or_default();
        let applied = status.applied_revision.as_ref().is_some_and(|r| r.digest == plan_digest(&plan));
        let current = applied && status.status == "deployed" && status.observed_generation == jd.metadata.generation;
        if !current {
            let applier = self.applier(false, &server);
            if let Err(rejection) = self.validate(&plan, &applier).await {
                let e = self.report_rejection(&plan, rejection, &Progress::discard()).await;
                self.record_failure(jd, &plan, &e).await;
                return Err(e);
            }
            let report = self.apply_and_record(jd, &plan, &applier, None, &Progress::discard()).await;
            return match report.error {
                Some(e) => Err(e),
                None => Ok(Reconciled::Applied(report.changes)),
            };
        }
        let self_heal = jd.spec.options.self_heal;
        let checker = self.applier(true, &server);
        let mut drifted = Vec::new();
        for planned in &plan.objects {
            if checker.drifted(planned, &plan.id, &plan.version).await? {
                drifted.push(planned);
            }
        }
        let mut healed = Vec::new();
        if self_heal {
            for planned in &drifted {
                let (object, action) = checker.apply(planned, &plan.id, &plan.version).await?;
                let line = ObjectEvent::new(object.clone(), action).line;
                tracing::info!(deployment = %plan.id, object = %line, "healed drift: applied again");
                let note = format!("{line}: it was changed or deleted outside jac-orc");
                self.events.normal(jd, "Healed", note, Some(events::reference(&object))).await;
                healed.push(line);
            }
        }
        let names: Vec<String> = drifted.iter().map(|p| p.object.kubectl_name()).collect();
        if !self_heal && !names.is_empty() && !status.is(conditions::DRIFTED) {
            tracing::info!(deployment = %plan.id, objects = ?names, "drift found; selfHeal is off, left as it is");
            self.events
                .warning(jd, "Drifted", format!("selfHeal is off; not healed: {}", names.join(", ")), None)
                .await;
        }
        let objects: Vec<ObjectRef> = status.inventory.iter().map(ObjectRef::from).collect();
        let observation = Observation {
            generation: jd.metadata.generation.unwrap_or(0),
            outcome: Outcome::Applied { readiness: self.look(&objects).await, message: status.message.clone() },
            drifted: if self_heal { Vec::new() } else { names.clone() },
            endpoints: status.endpoints.clone(),
            inventory: status.inventory.clone(),
            revision: None,
        };
        let next = conditions::next(Some(&status), observation, &now_rfc3339());
        self.records().write_status(jd, &next).await?;
        Ok(match (self_heal, names.is_empty()) {
            (_, true) => Reconciled::InSync,
            (true, false) => Reconciled::Healed(healed),
            (false, false) => Reconciled::Drifted(names),
        })
    }

    /// Records a failure that happened before anything was applied (the desired state does not
    /// render, or the server rejects it).
    pub(crate) async fn record_failure(&self, jd: &JacDeployment, plan: &Plan, e: &Error) {
        self.record_failure_as(jd, plan, e, conditions::reason_of(e)).await;
    }

    /// [`KubeBackend::record_failure`] with the condition reason given.
    pub(crate) async fn record_failure_as(&self, jd: &JacDeployment, plan: &Plan, e: &Error, reason: &'static str) {
        let prev = jd.status.as_ref();
        let observation = Observation {
            generation: jd.metadata.generation.unwrap_or(0),
            outcome: Outcome::Failed { reason, message: e.to_string() },
            drifted: Vec::new(),
            endpoints: prev.map(|p| p.endpoints.clone()).unwrap_or_default(),
            inventory: prev.map(|p| p.inventory.clone()).unwrap_or_else(|| inventory(&resolved_refs(plan))),
            revision: None,
        };
        let status = conditions::next(prev, observation, &now_rfc3339());
        let changed = prev != Some(&status);
        if let Err(store) = self.records().write_status(jd, &status).await {
            tracing::error!(deployment = %plan.id, error = %store, "could not record the failed deployment");
        }
        if changed {
            self.events.warning(jd, reason, e.to_string(), None).await;
        }
    }

    /// Undeploys resource `jd` (being deleted): every object of its inventory and every leftover
    /// carrying its labels, except what other deployments share; then lets the resource go.
    pub(crate) async fn cleanup(&self, jd: &JacDeployment, progress: &Progress) -> Result<()> {
        let record = record_of(jd, Default::default());
        let records = self.records();
        let others: Vec<DeploymentRecord> = records.list().await?.into_iter().filter(|r| r.id != record.id).collect();
        delete::undeploy(&self.client, &self.resolver, &record, &others, progress).await?;
        self.events.normal(jd, "Undeployed", format!("{} objects removed", record.objects.len()), None).await;
        records.remove_finalizer(jd).await?;
        tracing::info!(deployment = %record.id, "undeployed");
        Ok(())
    }
}

/// The plan with its workloads annotated by the configuration they use.
pub(crate) fn annotated(plan: &Plan) -> Plan {
    let mut plan = plan.clone();
    crate::backend::rollout::annotate(&mut plan.objects, &plan.id.namespace);
    plan
}

/// The target namespace as an object, for the `created` event of a deploy that made it.
pub(crate) fn namespace_ref(namespace: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: namespace.into(),
        namespace: None,
        section: Section::Dependencies,
        file: String::new(),
    }
}
