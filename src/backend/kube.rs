//! Kubernetes backend: server-side apply (field manager `jac-orc`) through legacy discovery and
//! `DynamicObject`, readiness waits, one labelled record Secret per deployment, and undeploy by
//! the record's objects plus the deployment's labels.
//!
//! The submodules each own one concern: [`discovery`] resolves kinds, [`apply`] applies one
//! object and classifies the result, [`readiness`] waits for workloads, [`records`] stores
//! [`DeploymentRecord`]s, [`delete`] undeploys, [`errors`] maps API failures, and [`detect`]
//! decides whether a cluster is reachable from this process at all.

mod apply;
mod delete;
mod detect;
mod discovery;
mod errors;
mod readiness;
mod records;

#[cfg(test)]
mod mock_tests;

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Endpoints, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;

use super::{ApplyOptions, Backend, DeploymentRecord, Error, ObjectEvent, Progress, Result, Status};
use crate::plan::{DeploymentId, ObjectRef, Plan, Section};
pub use detect::{detect, probe, Detection};
use discovery::Resolver;

/// Field manager of every server-side apply this backend makes.
pub const FIELD_MANAGER: &str = "jac-orc";

/// How long a CustomResourceDefinition may take to become Established before apply gives up.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend").field("options", &self.options).finish_non_exhaustive()
    }
}

impl KubeBackend {
    pub fn new(client: kube::Client, options: KubeOptions) -> Self {
        let resolver = Resolver::new(client.clone());
        KubeBackend { client, options, resolver }
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
    fn kind(&self) -> super::Kind {
        super::Kind::Kubernetes
    }

    async fn preflight(&self, plan: &Plan) -> Result<()> {
        self.check_namespace_rule(plan)?;
        // Every kind must be known now, except those the plan's own CRDs define: an unknown kind
        // found halfway through would leave the deployment half-applied.
        let defined: BTreeSet<(String, String)> = plan
            .objects
            .iter()
            .filter(|o| o.object.is_crd())
            .filter_map(|o| {
                let group = o.manifest.pointer("/spec/group")?.as_str()?;
                let kind = o.manifest.pointer("/spec/names/kind")?.as_str()?;
                Some((group.to_string(), kind.to_string()))
            })
            .collect();
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
        let records = self.records();
        let previous = records.get(&plan.id).await?;
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
            backend: self.kind(),
            updated_at: super::now_rfc3339(),
        };
        // A first deploy leaves a trace before touching anything, so a crash mid-apply can still
        // be undeployed; a redeploy keeps the old record until the outcome is known.
        if previous.is_none() {
            records.put(&record).await?;
        }

        let result = self.apply_objects(plan, opts, progress, &mut record).await;
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
        opts: &ApplyOptions,
        progress: &Progress,
        record: &mut DeploymentRecord,
    ) -> Result<()> {
        // The orchestrator's own namespace exists (we run there), and a namespaced install may
        // not even read Namespace objects.
        let own = plan.id.namespace == self.options.orchestrator_namespace;
        if !own && self.ensure_namespace(&plan.id.namespace).await? {
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
        let applier = apply::Applier {
            client: &self.client,
            resolver: &self.resolver,
            field_manager: &self.options.field_manager,
            force: opts.force_conflicts,
            crd_timeout: CRD_ESTABLISH_TIMEOUT,
        };
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
