//! Kubernetes backend: server-side apply (field manager `jac-orc`) through legacy discovery and
//! `DynamicObject`, readiness waits, one labelled record Secret per deployment, and undeploy by
//! the record's objects plus the deployment's labels.
//!
//! The submodules each own one concern: [`discovery`] resolves kinds, [`apply`] applies one
//! object and classifies the result, [`probes`] adapts gRPC probes to the server's version,
//! [`readiness`] waits for workloads, [`records`] stores [`DeploymentRecord`]s, [`delete`]
//! undeploys, [`errors`] maps API failures, and [`detect`] decides whether a cluster is
//! reachable from this process at all.
//!
//! A deploy validates every object with a server-side dry run before it applies the first one,
//! so an object the API server rejects leaves nothing behind: no earlier objects, no record, and
//! no target namespace this deploy would have created.

mod apply;
mod delete;
mod detect;
mod discovery;
mod errors;
mod probes;
mod readiness;
mod records;
pub mod resource;

#[cfg(test)]
mod mock_tests;

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Namespace};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::Value;

use super::{ApplyOptions, Backend, DeploymentRecord, Error, ObjectEvent, Progress, Result, Status};
use crate::plan::{DeploymentId, ObjectRef, Plan, Section};
use apply::ServerFeatures;
pub use detect::{detect, probe, Detection};
use discovery::Resolver;
pub use probes::ANNOTATION_GRPC_PROBE_EXEC;

/// Field manager of every server-side apply this backend makes.
pub const FIELD_MANAGER: &str = "jac-orc";

/// How long a CustomResourceDefinition may take to become Established before apply gives up.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-side dry runs in flight at once while validating a plan.
const DRY_RUN_CONCURRENCY: usize = 8;

/// Settings of a [`KubeBackend`].
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespace the orchestrator runs in; deployment records live here.
    pub orchestrator_namespace: String,
    /// Field manager for server-side apply (`jac-orc`).
    pub field_manager: String,
    /// Restricted mode (the original's inverted `CLUSTER_WIDE=true`): every deployment must
    /// target `orchestrator_namespace`. The service layer rewrites the namespace; this backend
    /// refuses plans that escape it, as a second line of defence.
    pub restricted_namespace: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            orchestrator_namespace: "default".into(),
            field_manager: FIELD_MANAGER.into(),
            restricted_namespace: false,
        }
    }
}

impl KubeOptions {
    #[must_use]
    pub fn orchestrator_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.orchestrator_namespace = namespace.into();
        self
    }

    #[must_use]
    pub fn restricted_namespace(mut self, restricted: bool) -> Self {
        self.restricted_namespace = restricted;
        self
    }
}

/// Deploys plans into a Kubernetes cluster.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    options: KubeOptions,
    resolver: Resolver,
    /// Learnt from `/version` on first use (a server is not upgraded under a running orchestrator
    /// often enough to ask on every deploy).
    server: std::sync::Arc<tokio::sync::OnceCell<ServerFeatures>>,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend").field("options", &self.options).finish_non_exhaustive()
    }
}

impl KubeBackend {
    pub fn new(client: kube::Client, options: KubeOptions) -> Self {
        let resolver = Resolver::new(client.clone());
        KubeBackend { client, options, resolver, server: Default::default() }
    }

    /// A backend on kube's default client (KUBECONFIG, `~/.kube/config`, or in-cluster config).
    pub async fn try_default(options: KubeOptions) -> Result<Self> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot configure a Kubernetes client: {e}")))?;
        Ok(Self::new(client, options))
    }

    pub fn options(&self) -> &KubeOptions {
        &self.options
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn records(&self) -> records::Records {
        records::Records::new(self.client.clone(), &self.options.orchestrator_namespace, &self.options.field_manager)
    }

    async fn server_features(&self) -> Result<ServerFeatures> {
        self.server
            .get_or_try_init(|| async {
                let info = self.client.apiserver_version().await.map_err(|e| errors::api_error("/version", e))?;
                Ok(ServerFeatures {
                    grpc_probes: probes::grpc_probes_supported(&info.major, &info.minor),
                    version: info.git_version,
                })
            })
            .await
            .cloned()
    }

    fn applier<'a>(&'a self, opts: &ApplyOptions, server: &'a ServerFeatures) -> apply::Applier<'a> {
        apply::Applier {
            client: &self.client,
            resolver: &self.resolver,
            field_manager: &self.options.field_manager,
            force: opts.force_conflicts,
            crd_timeout: CRD_ESTABLISH_TIMEOUT,
            server,
        }
    }

    /// Server-side dry runs of every object the API server can check now, in plan order, a few
    /// at a time. Skipped: custom resources whose CRD the plan itself applies, and objects in a
    /// Namespace the plan itself creates (neither exists until the plan runs). The error names
    /// the index of the first object that failed.
    async fn validate(&self, plan: &Plan, applier: &apply::Applier<'_>) -> Result<(), (usize, Error)> {
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

    /// Deletes a namespace this deploy created before it was rejected. Best effort: the error is
    /// the rejection, not the cleanup.
    async fn remove_created_namespace(&self, namespace: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = api.delete(namespace, &DeleteParams::background()).await {
            tracing::warn!(namespace, error = %e, "could not delete the namespace of a rejected deploy");
        }
    }

    /// Creates the deployment's target namespace when it is missing (as the original did before
    /// `kubectl apply`). Returns whether it was created.
    async fn ensure_namespace(&self, namespace: &str) -> Result<bool> {
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

    fn check_namespace_rule(&self, plan: &Plan) -> Result<()> {
        if !self.options.restricted_namespace {
            return Ok(());
        }
        let own = &self.options.orchestrator_namespace;
        let escapes = |ns: &str| ns != own;
        if escapes(&plan.id.namespace) {
            return Err(Error::Rejected {
                object: format!("deployment {}", plan.id),
                message: format!("restricted namespace mode: deployments must target namespace `{own}`"),
            });
        }
        for o in &plan.objects {
            if let Some(ns) = o.manifest.pointer("/metadata/namespace").and_then(Value::as_str) {
                if escapes(ns) {
                    return Err(Error::Rejected {
                        object: o.object.kubectl_name(),
                        message: format!("restricted namespace mode: namespace `{ns}` is outside `{own}`"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Stores the record unless an identical one (ignoring the timestamp) is already stored, so
    /// an unchanged redeploy writes nothing at all.
    async fn store_record(&self, record: &DeploymentRecord, previous: Option<&DeploymentRecord>) -> Result<()> {
        if let Some(prev) = previous {
            if records::same_content(prev, record) {
                return Ok(());
            }
        }
        self.records().put(record).await
    }
}

/// (group, kind) of the custom resources the plan's own CRDs define.
fn crd_defined_kinds(plan: &Plan) -> BTreeSet<(String, String)> {
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
fn service_endpoints(objects: &[ObjectRef], plan: &Plan) -> Vec<String> {
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

#[async_trait]
impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn preflight(&self, plan: &Plan) -> Result<()> {
        self.check_namespace_rule(plan)?;
        // Every kind must be known now, except those the plan's own CRDs define: an unknown kind
        // found halfway through would leave the deployment half-applied.
        let defined = crd_defined_kinds(plan);
        for o in &plan.objects {
            if defined.contains(&(o.object.group().to_string(), o.object.kind.clone())) {
                continue;
            }
            let gvk = discovery::gvk_of(&o.object);
            if self.resolver.resolve(&gvk).await.map_err(|e| errors::api_error(&o.object.kubectl_name(), e))?.is_none()
            {
                return Err(discovery::no_match(&o.object));
            }
        }
        Ok(())
    }

    async fn apply(&self, plan: &Plan, opts: &ApplyOptions, progress: &Progress) -> Result<DeploymentRecord> {
        self.check_namespace_rule(plan)?;
        let server = self.server_features().await?;
        let applier = self.applier(opts, &server);
        let records = self.records();
        let previous = records.get(&plan.id).await?;
        // The orchestrator's own namespace exists (we run there), and a namespaced install may
        // not even read Namespace objects. Created first: namespaced objects can be validated
        // only inside an existing namespace.
        let own = plan.id.namespace == self.options.orchestrator_namespace;
        let created_namespace = !own && self.ensure_namespace(&plan.id.namespace).await?;
        if let Err((i, e)) = self.validate(plan, &applier).await {
            let o = &plan.objects[i];
            let object = apply::resolved_ref(&o.object, &o.manifest, &plan.id.namespace);
            progress.send(ObjectEvent::new(object, super::Action::Failed).with_message(e.to_string())).await;
            if created_namespace {
                self.remove_created_namespace(&plan.id.namespace).await;
            }
            tracing::info!(deployment = %plan.id, error = %e, "rejected by the server-side dry run; nothing applied");
            return Err(e);
        }
        if created_namespace {
            let ns = ObjectRef {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                name: plan.id.namespace.clone(),
                namespace: None,
                section: Section::Dependencies,
                file: String::new(),
            };
            progress.send(ObjectEvent::new(ns, super::Action::Created).with_message("target namespace")).await;
        }
        let mut record = DeploymentRecord {
            id: plan.id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints: Vec::new(),
            status: Status::Deploying,
            message: String::new(),
            // Every planned object, namespaces resolved, so undeploy can clean up even after a
            // failure halfway through.
            objects: plan
                .objects
                .iter()
                .map(|o| apply::resolved_ref(&o.object, &o.manifest, &plan.id.namespace))
                .collect(),
            backend: self.name().to_string(),
            updated_at: super::now_rfc3339(),
        };
        // A first deploy leaves a trace before touching anything, so a crash mid-apply can still
        // be undeployed; a redeploy keeps the old record until the outcome is known.
        if previous.is_none() {
            records.put(&record).await?;
        }

        let result = self.apply_objects(plan, &applier, progress, &mut record).await;
        let readiness = match result {
            Ok(()) => match opts.wait {
                Some(timeout) => {
                    readiness::wait(&self.client, &self.resolver, &record.objects, timeout, progress).await
                }
                None => Ok(readiness::Outcome::NotRequested),
            },
            Err(e) => Err(e),
        };
        record.endpoints = service_endpoints(&record.objects, plan);
        match readiness {
            Ok(outcome) => {
                record.status = Status::Deployed;
                record.message = outcome.message().to_string();
                if let Some(prev) = &previous {
                    // Unchanged content keeps its timestamp: nothing is rewritten.
                    if records::same_content(prev, &record) {
                        record.updated_at = prev.updated_at.clone();
                    }
                }
                self.store_record(&record, previous.as_ref()).await?;
                Ok(record)
            }
            Err(e) => {
                record.status = Status::Failed;
                record.message = e.to_string();
                if let Err(store) = self.records().put(&record).await {
                    tracing::error!(deployment = %plan.id, error = %store, "could not store the failed deployment record");
                }
                Err(e)
            }
        }
    }

    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> Result<()> {
        let records = self.records();
        let Some(record) = records.get(id).await? else {
            return Err(Error::NotFound(id.clone()));
        };
        let others: Vec<DeploymentRecord> = records.list().await?.into_iter().filter(|r| &r.id != id).collect();
        delete::undeploy(&self.client, &self.resolver, &record, &others, progress).await?;
        records.delete(id).await
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        self.records().get(id).await
    }

    async fn list(&self) -> Result<Vec<DeploymentRecord>> {
        self.records().list().await
    }

    async fn module_endpoints(&self, id: &DeploymentId) -> Result<Vec<String>> {
        let record = self.records().get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        let mut out = Vec::new();
        for o in record.objects.iter().filter(|o| o.kind == "Service" && o.api_version == "v1") {
            let ns = o.namespace.as_deref().unwrap_or(&id.namespace);
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
            let name = format!("endpoints/{}", o.name);
            if let Some(ep) = api.get_opt(&o.name).await.map_err(|e| errors::api_error(&name, e))? {
                out.extend(grpc_addresses(&ep));
            }
        }
        Ok(out)
    }
}

impl KubeBackend {
    async fn apply_objects(
        &self,
        plan: &Plan,
        applier: &apply::Applier<'_>,
        progress: &Progress,
        record: &mut DeploymentRecord,
    ) -> Result<()> {
        for (i, planned) in plan.objects.iter().enumerate() {
            match applier.apply(planned, &plan.id, &plan.version).await {
                Ok((object, action)) => {
                    record.objects[i] = object.clone();
                    progress.send(ObjectEvent::new(object, action)).await;
                }
                Err(e) => {
                    progress
                        .send(
                            ObjectEvent::new(record.objects[i].clone(), super::Action::Failed)
                                .with_message(e.to_string()),
                        )
                        .await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Ready `ip:port` addresses of an Endpoints object, for the port named `grpc` (or the only port).
fn grpc_addresses(ep: &Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let port = ports.iter().find(|p| p.name.as_deref() == Some("grpc")).or(if ports.len() == 1 {
            ports.first()
        } else {
            None
        });
        let Some(port) = port else { continue };
        for addr in subset.addresses.iter().flatten() {
            out.push(format!("{}:{}", addr.ip, port.port));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_in(ns: &str, object_ns: Option<&str>) -> Plan {
        let mut manifest = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        if let Some(o) = object_ns {
            manifest["metadata"]["namespace"] = o.into();
        }
        let object = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "c".into(),
            namespace: object_ns.map(Into::into),
            section: Section::Modules,
            file: "f.yaml".into(),
        };
        Plan {
            id: DeploymentId { namespace: ns.into(), module: "redis".into(), name: "r".into() },
            version: "latest".into(),
            config: Default::default(),
            secret_keys: vec![],
            objects: vec![crate::plan::PlannedObject { object, manifest }],
            local: None,
        }
    }

    #[tokio::test]
    async fn restricted_mode_refuses_plans_outside_the_orchestrator_namespace() {
        let (svc, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = kube::Client::new(svc, "default");
        let restricted = KubeBackend::new(
            client.clone(),
            KubeOptions::default().orchestrator_namespace("orc").restricted_namespace(true),
        );
        assert!(restricted.check_namespace_rule(&plan_in("orc", None)).is_ok());
        assert!(restricted.check_namespace_rule(&plan_in("orc", Some("orc"))).is_ok());
        let err = restricted.check_namespace_rule(&plan_in("other", None)).unwrap_err();
        assert!(err.to_string().contains("restricted namespace mode"), "{err}");
        assert!(restricted.check_namespace_rule(&plan_in("orc", Some("kube-system"))).is_err());
        let open = KubeBackend::new(client, KubeOptions::default().orchestrator_namespace("orc"));
        assert!(open.check_namespace_rule(&plan_in("other", Some("kube-system"))).is_ok());
    }

    #[test]
    fn grpc_addresses_use_the_grpc_port_and_only_ready_addresses() {
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m"},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}],
                "notReadyAddresses": [{"ip": "10.0.0.7"}],
                "ports": [{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 50051}]
            }]
        }))
        .unwrap();
        assert_eq!(grpc_addresses(&ep), ["10.0.0.5:50051", "10.0.0.6:50051"]);
    }

    #[test]
    fn grpc_addresses_skip_subsets_without_a_grpc_port() {
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m"},
            "subsets": [{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}]
        }))
        .unwrap();
        assert!(grpc_addresses(&ep).is_empty());
    }
}
