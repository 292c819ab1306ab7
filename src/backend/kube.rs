//! Kubernetes backend: server-side apply (field manager `jac-orc`) through legacy discovery and
//! `DynamicObject`, readiness waits, one `JacDeployment` resource per deployment as its record,
//! and undeploy by the record's objects plus the deployment's labels.
//!
//! The submodules each own one concern: [`resource`] defines the `JacDeployment` custom
//! resource, [`records`] stores deployments as such resources, [`sync`] is the one apply path
//! (the API's deploys and the reconcile loop share it), [`rollout`] computes the config-hash
//! annotation, [`conditions`] the status, [`follow`] lets a replica that does not lead follow
//! the leader's work, [`migrate`] converts the records of earlier versions, [`discovery`]
//! resolves kinds, [`apply`] applies one object and classifies the result, [`probes`] adapts
//! gRPC probes to the server's version, [`readiness`] waits for workloads, [`delete`]
//! undeploys, [`logs`] reads the pods' logs, [`events`] publishes Events, [`errors`] maps API
//! failures, and [`detect`] decides whether a cluster is reachable from this process at all.
//!
//! A deploy validates every object with a server-side dry run before it writes the resource or
//! applies the first object, so an object the API server rejects leaves nothing behind: no
//! earlier objects, no record, and no target namespace this deploy would have created. A deploy
//! with `dry_run` ([`dry_run`]) stops at such dry runs, one per object, and reports what each
//! apply would do.
//!
//! Only the leader (see `reconcile::leader`) applies. A replica that does not lead writes the
//! desired state into the resource and follows the leader's status for its caller.

mod apply;
mod conditions;
mod delete;
mod desired;
mod detect;
mod discovery;
mod dry_run;
mod endpoint_watch;
mod errors;
mod events;
mod follow;
mod history;
pub mod idle;
mod logs;
pub mod migrate;
mod probes;
mod prune;
mod readiness;
mod records;
pub mod resource;
mod sync;

#[cfg(test)]
mod mock_tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::{Api, DeleteParams};
use serde_json::Value;
use tokio::sync::{watch, Mutex as AsyncMutex, OwnedMutexGuard};

pub use super::rollout::ANNOTATION_CONFIG_HASH;
use super::{ApplyOptions, Backend, DeploymentRecord, Error, ObjectEvent, Progress, Result};
use crate::identity::NamespaceRule;
use crate::plan::{DeploymentId, Kind, Plan};
/// Numeric resource quantities as strings, as this backend applies them (`jac-orc template`
/// prints manifests the same way, so `kubectl apply --server-side` accepts them too).
pub(crate) use apply::normalize_quantities;
use apply::ServerFeatures;
pub use desired::Step;
pub use detect::{detect, probe, Detection};
use discovery::Resolver;
pub use errors::Error as KubeError;
pub use history::ANNOTATION_HISTORY;
pub use probes::ANNOTATION_GRPC_PROBE_EXEC;

/// Field manager of every server-side apply this backend makes.
pub const FIELD_MANAGER: &str = "jac-orc";

/// How long a CustomResourceDefinition may take to become Established before apply gives up.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a replica that does not lead follows the leader's apply of a deploy that does not
/// wait for readiness.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of a [`KubeBackend`].
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespace the orchestrator runs in (its Lease lives here).
    pub orchestrator_namespace: String,
    /// Field manager for server-side apply (`jac-orc`).
    pub field_manager: String,
    /// Restricted mode (the original's inverted `CLUSTER_WIDE=true`): every deployment must
    /// target `orchestrator_namespace`. The service layer rewrites the namespace; this backend
    /// refuses plans that escape it, as a second line of defence, and reads records there only.
    pub restricted_namespace: bool,
    /// Whether this replica leads (`reconcile::leader`); `None`: it always does (one replica).
    pub leadership: Option<watch::Receiver<bool>>,
    /// This replica's name in Events (the pod's name).
    pub identity: Option<String>,
    /// How long a deploy on a replica that does not lead follows the leader's status.
    pub follow_timeout: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            orchestrator_namespace: "default".into(),
            field_manager: FIELD_MANAGER.into(),
            restricted_namespace: false,
            leadership: None,
            identity: None,
            follow_timeout: FOLLOW_TIMEOUT,
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

    /// Applies only while `leading` says so; otherwise deploys are handed to the leader.
    #[must_use]
    pub fn leadership(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leadership = Some(leading);
        self
    }

    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    #[must_use]
    pub fn follow_timeout(mut self, timeout: Duration) -> Self {
        self.follow_timeout = timeout;
        self
    }
}

/// Deploys plans into a Kubernetes cluster.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    options: KubeOptions,
    resolver: Resolver,
    events: events::Events,
    /// Serialises the API's applies and the reconcile loop's work on one deployment.
    locks: Arc<Mutex<HashMap<DeploymentId, Arc<AsyncMutex<()>>>>>,
    /// One wake-up from zero at a time per deployment (apart from `locks`: a wake-up waits for
    /// the reconcile loop, which takes those).
    wakes: Arc<Mutex<HashMap<DeploymentId, Arc<AsyncMutex<()>>>>>,
    /// Learnt from `/version` on first use (a server is not upgraded under a running orchestrator
    /// often enough to ask on every deploy).
    server: Arc<tokio::sync::OnceCell<ServerFeatures>>,
    /// Whether `discovery.k8s.io/v1` EndpointSlices are served, learnt on the first endpoint watch.
    slices: Arc<tokio::sync::OnceCell<bool>>,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend").field("options", &self.options).finish_non_exhaustive()
    }
}

impl KubeBackend {
    pub fn new(client: kube::Client, options: KubeOptions) -> Self {
        let resolver = Resolver::new(client.clone());
        let events = events::Events::new(client.clone(), options.identity.clone());
        KubeBackend {
            client,
            options,
            resolver,
            events,
            locks: Arc::default(),
            wakes: Arc::default(),
            server: Default::default(),
            slices: Default::default(),
        }
    }

    pub fn options(&self) -> &KubeOptions {
        &self.options
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Whether this replica applies (it leads, or no election runs).
    pub fn is_leader(&self) -> bool {
        self.options.leadership.as_ref().is_none_or(|l| *l.borrow())
    }

    pub(crate) fn records(&self) -> records::Records {
        let scope = if self.options.restricted_namespace {
            records::Scope::Namespace(self.options.orchestrator_namespace.clone())
        } else {
            records::Scope::All
        };
        records::Records::new(self.client.clone(), &self.options.field_manager, scope)
    }

    /// Holds deployment `id` until the guard is dropped.
    pub(crate) async fn hold(&self, id: &DeploymentId) -> OwnedMutexGuard<()> {
        let lock = self.locks.lock().expect("locks").entry(id.clone()).or_default().clone();
        lock.lock_owned().await
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

    fn applier<'a>(&'a self, force: bool, server: &'a ServerFeatures) -> apply::Applier<'a> {
        apply::Applier {
            client: &self.client,
            resolver: &self.resolver,
            field_manager: &self.options.field_manager,
            force,
            crd_timeout: CRD_ESTABLISH_TIMEOUT,
            server,
        }
    }

    /// The service layer's namespace rule again, over the plan and every object's namespace.
    fn check_namespace_rule(&self, plan: &Plan) -> Result<()> {
        let rule = NamespaceRule::new(&self.options.orchestrator_namespace, self.options.restricted_namespace);
        let restricted = |object: String| move |source| Error::Restricted { object, source };
        rule.check(&plan.id.namespace).map_err(restricted(format!("deployment {}", plan.id)))?;
        for o in &plan.objects {
            if let Some(ns) = o.manifest.pointer("/metadata/namespace").and_then(Value::as_str) {
                rule.check(ns).map_err(restricted(o.object.kubectl_name()))?;
            }
        }
        Ok(())
    }
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
        let defined = sync::crd_defined_kinds(plan);
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
        let plan = sync::annotated(plan);
        let server = self.server_features().await?;
        let applier = self.applier(opts.force_conflicts, &server);
        // A preview writes nothing, so it needs no leadership: any replica answers it.
        if opts.dry_run {
            return self.dry_run(&plan, &applier, progress).await;
        }
        // The orchestrator's own namespace exists (we run there), and a namespaced install may
        // not even read Namespace objects. Created first: namespaced objects can be validated
        // only inside an existing namespace.
        let own = plan.id.namespace == self.options.orchestrator_namespace;
        let created_namespace = !own && self.ensure_namespace(&plan.id.namespace).await?;
        if let Err(rejection) = self.validate(&plan, &applier).await {
            let e = self.report_rejection(&plan, rejection, progress).await;
            if created_namespace {
                self.remove_created_namespace(&plan.id.namespace).await;
            }
            return Err(e);
        }
        if created_namespace {
            let ns = sync::namespace_ref(&plan.id.namespace);
            progress.send(ObjectEvent::new(ns, super::Action::Created).with_message("target namespace")).await;
        }
        if !self.is_leader() {
            // The generation before this write tells an unchanged redeploy (the spec, and with it
            // the generation, stays) from a change the leader still has to apply.
            let before = self.records().resource(&plan.id).await?.and_then(|jd| jd.metadata.generation);
            let jd = self.records().write_desired(&plan, None, opts.self_heal).await?;
            self.clear_idle(&jd).await?;
            return follow::deploy(self, &jd, before, &plan, opts, progress).await;
        }
        let _held = self.hold(&plan.id).await;
        // The resource is the first trace, so a crash mid-apply can still be undeployed.
        let jd = self.records().write_desired(&plan, None, opts.self_heal).await?;
        self.clear_idle(&jd).await?;
        let report = self.apply_and_record(&jd, &plan, &applier, opts.wait, progress).await;
        match report.error {
            Some(e) => Err(e),
            None => Ok(report.record),
        }
    }

    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> Result<()> {
        let records = self.records();
        let Some(jd) = records.resource(id).await? else {
            return Err(Error::NotFound(id.clone()));
        };
        let label = format!("jacdeployment.jac-orc.io/{}", id.name);
        // The intent first: a crash halfway through leaves a resource being deleted, which the
        // reconcile loop finishes, never one it would apply again.
        let api = records.api(&id.namespace);
        match api.delete(&id.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if errors::is_not_found(&e) => return Err(Error::NotFound(id.clone())),
            Err(e) => return Err(errors::api_error(&label, e)),
        }
        if !self.is_leader() {
            return follow::undeploy(self, &jd, progress).await;
        }
        let _held = self.hold(id).await;
        let current = api.get_opt(&id.name).await.map_err(|e| errors::api_error(&label, e))?;
        // Gone already: it had no finalizer (kubectl created it and no reconcile loop ran).
        self.cleanup(current.as_ref().unwrap_or(&jd), progress).await
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        self.records().get(id).await
    }

    async fn history(&self, id: &DeploymentId) -> Result<Vec<super::Revision>> {
        self.revisions(id).await
    }

    async fn record_revision(
        &self,
        id: &DeploymentId,
        revision: super::Revision,
        limit: usize,
    ) -> Result<super::Revision> {
        self.push_revision(id, revision, limit).await
    }

    async fn list(&self) -> Result<Vec<DeploymentRecord>> {
        self.records().list().await
    }

    /// The API server's `/version`, which every identity may read: a listing would be a
    /// cluster-wide read on every probe, and forbidden to an install whose Role is namespaced.
    async fn check_reachable(&self) -> Result<()> {
        self.client.apiserver_version().await.map(|_| ()).map_err(|e| errors::api_error("/version", e))
    }

    async fn module_endpoints(&self, id: &DeploymentId) -> Result<Vec<String>> {
        let record = self.records().get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        let mut out = Vec::new();
        for o in record.objects.iter().filter(|o| o.is(Kind::SERVICE)) {
            let ns = o.namespace.as_deref().unwrap_or(&id.namespace);
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
            let name = format!("endpoints/{}", o.name);
            if let Some(ep) = api.get_opt(&o.name).await.map_err(|e| errors::api_error(&name, e))? {
                out.extend(grpc_addresses(&ep));
            }
        }
        Ok(out)
    }

    /// Annotates the resource asleep; the reconcile loop scales its Deployments to 0 (`idle.rs`).
    async fn scale_to_zero(&self, id: &DeploymentId) -> Result<bool> {
        self.scale_to_zero_now(id).await
    }

    async fn wake(&self, id: &DeploymentId, wait: Duration) -> Result<bool> {
        self.wake_now(id, wait).await
    }

    /// The logs of the deployment's pods (`logs.rs`).
    async fn logs(&self, id: &DeploymentId, opts: &super::LogOptions) -> Result<super::LogStream> {
        let record = self.records().get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        logs::logs(&self.client, &record, opts).await
    }

    /// EndpointSlices where served (1.21+), Endpoints otherwise (`endpoint_watch.rs`).
    fn watch_endpoints(&self, id: &DeploymentId) -> Option<super::endpoints::EndpointStream> {
        Some(endpoint_watch::watch(self.client.clone(), self.records(), self.slices.clone(), id.clone()))
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
    use crate::plan::{ObjectRef, Section};

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
        assert!(err.to_string().contains("restricted-namespace mode"), "{err}");
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
