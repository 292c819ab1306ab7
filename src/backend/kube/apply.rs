//! Server-side apply of one planned object, and what it did: `created` (absent before),
//! `unchanged` (the resourceVersion did not move, so nothing was written) or `configured`; and the
//! same apply as a server-side dry run (`dryRun=All`), which validates an object (schema,
//! admission, field-manager conflicts) without persisting anything.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions::is_crd_established};
use serde_json::Value;

use super::discovery::{gvk_of, no_match, Resolver};
use super::errors::{api_error, apply_error, is_not_found, Error as KubeError};
use super::probes;
use crate::backend::{Action, Error, Result};
use crate::identity;
use crate::plan::{DeploymentId, ObjectRef, PlannedObject};

/// Kinds known to be cluster-scoped, for naming objects before discovery has run.
const CLUSTER_SCOPED: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
    "IngressClass",
];

/// Best-effort namespaced reference before the object is applied (the applier replaces it with
/// the discovery-exact one).
pub(crate) fn resolved_ref(object: &ObjectRef, manifest: &Value, default_ns: &str) -> ObjectRef {
    let mut out = object.clone();
    if CLUSTER_SCOPED.contains(&object.kind.as_str()) {
        out.namespace = None;
    } else if out.namespace.is_none() {
        let ns = manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_ns);
        out.namespace = Some(ns.to_string());
    }
    out
}

/// Writes numeric resource quantities (`cpu: 0.2`, `memory: 512`) as strings.
///
/// Templates (the original's among them) render bare numbers there. Client-side apply accepted
/// them, but server-side apply's typed conversion refuses a number where the schema says
/// quantity (`resources.limits.cpu: expected string`), so they are normalised before applying.
/// Quantities live in maps named `limits`/`requests`/`hard`/`capacity` and in `sizeLimit`.
pub(crate) fn normalize_quantities(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &mut *v) {
                    ("limits" | "requests" | "hard" | "capacity", Value::Object(q)) => {
                        for n in q.values_mut().filter(|n| n.is_number()) {
                            *n = Value::String(n.to_string());
                        }
                    }
                    ("sizeLimit", n) if n.is_number() => *n = Value::String(n.to_string()),
                    _ => normalize_quantities(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_quantities),
        _ => {}
    }
}

/// Moves a Secret's `stringData` into `data` (base64), as the API server itself does when it
/// stores the Secret. `stringData` is never stored, so under server-side apply a manifest that
/// keeps it always differs from the live object, and every apply rewrites the Secret.
pub(crate) fn string_data_as_data(manifest: &mut Value) {
    if manifest.get("kind").and_then(Value::as_str) != Some("Secret")
        || manifest.get("apiVersion").and_then(Value::as_str) != Some("v1")
    {
        return;
    }
    let Some(obj) = manifest.as_object_mut() else { return };
    let Some(Value::Object(strings)) = obj.remove("stringData") else { return };
    let data = obj.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    let Some(data) = data.as_object_mut() else { return };
    for (k, v) in strings {
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let encoded = serde_json::to_value(k8s_openapi::ByteString(text.into_bytes())).unwrap_or_default();
        data.insert(k, encoded);
    }
}

/// What an apply did, from the object before (None: absent) and after.
///
/// An unmoved resourceVersion proves nothing was written. A moved one can also come from a
/// controller writing between our read and our apply (status, a revision annotation), so the
/// objects are compared without status and bookkeeping fields before saying `configured`.
pub(crate) fn classify(before: Option<&DynamicObject>, after: &DynamicObject) -> Action {
    let Some(before) = before else {
        return Action::Created;
    };
    if before.metadata.resource_version.is_some() && before.metadata.resource_version == after.metadata.resource_version
    {
        return Action::Unchanged;
    }
    classify_content(before, after)
}

/// What a server-side dry run says an apply would do. Nothing is written, so the
/// resourceVersion never moves: only the content tells `configured` from `unchanged`.
pub(crate) fn classify_dry_run(before: Option<&DynamicObject>, after: &DynamicObject) -> Action {
    match before {
        None => Action::Created,
        Some(before) => classify_content(before, after),
    }
}

/// How many times a dry run is compared again when the live object moved under it.
const DRY_RUN_READS: u32 = 4;

/// Whether a dry run's answer was computed from `before`: it keeps the resourceVersion of the
/// live object it started from (nothing is written), so a different one means the object was
/// written between our read and the dry run.
fn dry_run_based_on(before: Option<&DynamicObject>, after: &DynamicObject) -> bool {
    match before {
        None => true,
        Some(before) => before.metadata.resource_version == after.metadata.resource_version,
    }
}

/// `unchanged` when the objects differ only in status and bookkeeping fields.
fn classify_content(before: &DynamicObject, after: &DynamicObject) -> Action {
    if same_content(before, after) {
        Action::Unchanged
    } else {
        Action::Configured
    }
}

/// Whether two versions of an object agree on everything but status and bookkeeping.
pub(crate) fn same_content(a: &DynamicObject, b: &DynamicObject) -> bool {
    let strip = |o: &DynamicObject| {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("status");
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                for k in ["resourceVersion", "managedFields", "generation"] {
                    meta.remove(k);
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// An API handle for `object` after discovery, with its namespace fixed in `manifest`.
pub(crate) fn api_for(
    client: &kube::Client,
    resolved: &(kube::api::ApiResource, kube::discovery::ApiCapabilities),
    object: &mut ObjectRef,
    manifest: Option<&mut Value>,
    default_ns: &str,
) -> Api<DynamicObject> {
    let (ar, caps) = resolved;
    match caps.scope {
        Scope::Namespaced => {
            let ns = object.namespace.clone().unwrap_or_else(|| default_ns.to_string());
            if let Some(meta) = manifest.and_then(|m| m.get_mut("metadata")).and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            object.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, ar)
        }
        Scope::Cluster => {
            if let Some(meta) = manifest.and_then(|m| m.get_mut("metadata")).and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
            object.namespace = None;
            Api::all_with(client.clone(), ar)
        }
    }
}

/// What the API server supports, learnt once from `/version`.
#[derive(Debug, Clone)]
pub(crate) struct ServerFeatures {
    /// e.g. `v1.20.2`, for messages.
    pub(crate) version: String,
    /// Native gRPC probes (1.24+); otherwise they are rewritten into exec probes ([`probes`]).
    pub(crate) grpc_probes: bool,
}

pub(crate) struct Applier<'a> {
    pub(crate) client: &'a kube::Client,
    pub(crate) resolver: &'a Resolver,
    pub(crate) field_manager: &'a str,
    pub(crate) force: bool,
    pub(crate) crd_timeout: Duration,
    pub(crate) server: &'a ServerFeatures,
}

/// An object ready to send: its API, exact reference and final manifest.
struct Prepared {
    api: Api<DynamicObject>,
    object: ObjectRef,
    manifest: Value,
    label: String,
}

impl Applier<'_> {
    /// The manifest as it will be applied (labels, quantities, probes for this server) and its API.
    /// `Ok(None)` when the kind is not served (yet).
    async fn prepare(&self, planned: &PlannedObject, id: &DeploymentId, version: &str) -> Result<Option<Prepared>> {
        let label = planned.object.kubectl_name();
        let Some(resolved) = self.resolver.resolve(&gvk_of(&planned.object)).await.map_err(|e| api_error(&label, e))?
        else {
            return Ok(None);
        };
        let mut manifest = planned.manifest.clone();
        // The service labelled the plan already; labelling is idempotent, so plans built by hand
        // (tests, tools) get the same labels and undeploy by label finds everything.
        identity::label(&mut manifest, id, version);
        normalize_quantities(&mut manifest);
        string_data_as_data(&mut manifest);
        probes::adapt(&mut manifest, self.server.grpc_probes, &label, &self.server.version)?;
        let mut object = resolved_ref(&planned.object, &planned.manifest, &id.namespace);
        let api = api_for(self.client, &resolved, &mut object, Some(&mut manifest), &id.namespace);
        Ok(Some(Prepared { api, object, manifest, label }))
    }

    fn params(&self, dry_run: bool) -> PatchParams {
        let mut params = PatchParams::apply(self.field_manager);
        if self.force {
            params = params.force();
        }
        params.dry_run = dry_run;
        params
    }

    /// Validates one object with a server-side dry run of the apply. `Ok(false)`: it could not
    /// be checked before the plan runs: its kind is not served yet (a custom resource whose CRD
    /// the same plan applies), or the server answered 404 because something it refers to does not
    /// exist yet (a RoleBinding's Role, its Namespace), which the plan creates before it.
    pub(crate) async fn dry_run(&self, planned: &PlannedObject, id: &DeploymentId, version: &str) -> Result<bool> {
        let Some(p) = self.prepare(planned, id, version).await? else {
            return Ok(false);
        };
        match p.api.patch(&p.object.name, &self.params(true), &Patch::Apply(&p.manifest)).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => {
                tracing::debug!(object = %p.label, error = %e, "dry run cannot check this object before the plan runs");
                Ok(false)
            }
            Err(e) => Err(apply_error(&p.label, e)),
        }
    }

    /// Whether the live object differs from what applying it would make it: missing, or a field
    /// this field manager sets changed by someone else (a server-side dry run of a forced apply,
    /// compared with the live object). Fields only others set are theirs and never drift.
    pub(crate) async fn drifted(&self, planned: &PlannedObject, id: &DeploymentId, version: &str) -> Result<bool> {
        let Prepared { api, object, manifest, label } =
            self.prepare(planned, id, version).await?.ok_or_else(|| no_match(&planned.object))?;
        let Some(live) = api.get_opt(&object.name).await.map_err(|e| api_error(&label, e))? else {
            return Ok(true);
        };
        if live.metadata.deletion_timestamp.is_some() {
            return Ok(true);
        }
        let mut params = PatchParams::apply(self.field_manager).force();
        params.dry_run = true;
        let would =
            api.patch(&object.name, &params, &Patch::Apply(&manifest)).await.map_err(|e| apply_error(&label, e))?;
        Ok(!same_content(&live, &would))
    }

    /// What applying one object would do, by a server-side dry run of the apply: its exact
    /// reference, the action, and a note. An object the server cannot check before the plan runs
    /// (its kind is served only once the plan's CRD is applied, or something it lives in, such
    /// as its namespace, does not exist yet) would be created, and the note says it was not
    /// validated.
    pub(crate) async fn preview(
        &self,
        planned: &PlannedObject,
        id: &DeploymentId,
        version: &str,
    ) -> Result<(ObjectRef, Action, String)> {
        const NOTE: &str = "server dry run";
        let Some(p) = self.prepare(planned, id, version).await? else {
            let object = resolved_ref(&planned.object, &planned.manifest, &id.namespace);
            return Ok((object, Action::Created, format!("{NOTE}; not validated: its kind is not served yet")));
        };
        // A dry run answers from the live object as it is when it runs; a controller writing
        // between our read and it (a Deployment's revision annotation after a rollout) would
        // otherwise read as `configured`. So compare against the version the dry run used.
        let mut attempts = 0;
        let (before, outcome) = loop {
            attempts += 1;
            let before = p.api.get_opt(&p.object.name).await.map_err(|e| api_error(&p.label, e))?;
            let outcome = p.api.patch(&p.object.name, &self.params(true), &Patch::Apply(&p.manifest)).await;
            let moved = matches!(&outcome, Ok(after) if !dry_run_based_on(before.as_ref(), after));
            if !moved || attempts == DRY_RUN_READS {
                break (before, outcome);
            }
            tracing::debug!(object = %p.label, attempts, "changed while being compared; reading it again");
        };
        match outcome {
            Ok(after) => Ok((p.object, classify_dry_run(before.as_ref(), &after), NOTE.into())),
            Err(e) if is_not_found(&e) && before.is_none() => {
                let reason = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                };
                let note = format!("{NOTE}; not validated: {reason}");
                Ok((p.object, Action::Created, note))
            }
            Err(e) => Err(apply_error(&p.label, e)),
        }
    }

    /// Applies one object; returns its exact reference (namespace per discovery) and the action.
    pub(crate) async fn apply(
        &self,
        planned: &PlannedObject,
        id: &DeploymentId,
        version: &str,
    ) -> Result<(ObjectRef, Action)> {
        let Prepared { api, object, manifest, label } =
            self.prepare(planned, id, version).await?.ok_or_else(|| no_match(&planned.object))?;
        let before = api.get_opt(&object.name).await.map_err(|e| api_error(&label, e))?;
        let after = api
            .patch(&object.name, &self.params(false), &Patch::Apply(&manifest))
            .await
            .map_err(|e| apply_error(&label, e))?;
        let action = classify(before.as_ref(), &after);
        tracing::debug!(object = %label, action = action.as_str(), "applied");

        if object.is_crd() {
            self.await_crd(&object.name, &manifest).await?;
        }
        Ok((object, action))
    }

    /// Waits until a CRD is Established and discovery serves its kind, so the custom resources
    /// after it in the plan resolve.
    async fn await_crd(&self, name: &str, manifest: &Value) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let label = format!("customresourcedefinition.apiextensions.k8s.io/{name}");
        let timeout = || Error::Timeout { timeout: self.crd_timeout, not_ready: vec![label.clone()] };
        let deadline = tokio::time::Instant::now() + self.crd_timeout;
        match tokio::time::timeout_at(deadline, await_condition(api, name, is_crd_established())).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(
                    KubeError::Watch { object: label, condition: "Established", source: Box::new(source) }.into()
                )
            }
            Err(_) => return Err(timeout()),
        }
        let group = manifest.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
        let kind = manifest.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or_default();
        self.resolver.forget_group(group);
        let versions: Vec<&str> = manifest
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect();
        // Discovery can trail the Established condition by a moment; poll, bounded by the deadline.
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        for version in versions {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            loop {
                interval.tick().await;
                if self.resolver.resolve(&gvk).await.map_err(|e| api_error(&label, e))?.is_some() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(timeout());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Section;

    fn obj(rv: &str, data: &str, status: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "resourceVersion": rv, "managedFields": [{"manager": rv}]},
            "data": {"a": data}, "status": {"s": status}
        }))
        .unwrap()
    }

    #[test]
    fn classify_uses_resource_versions_then_content() {
        assert_eq!(classify(None, &obj("5", "a", "")), Action::Created);
        assert_eq!(classify(Some(&obj("5", "a", "")), &obj("5", "a", "")), Action::Unchanged);
        assert_eq!(classify(Some(&obj("5", "a", "")), &obj("6", "b", "")), Action::Configured);
        // Only a controller's status write happened in between.
        assert_eq!(classify(Some(&obj("5", "a", "x")), &obj("6", "a", "y")), Action::Unchanged);
    }

    #[test]
    fn secret_string_data_is_applied_as_data_and_wins_over_it() {
        let mut m = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "n": 5}});
        string_data_as_data(&mut m);
        assert_eq!(
            m,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "bmV3", "keep": "eA==", "n": "NQ=="}})
        );
        let mut cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "stringData": {"a": "x"}});
        string_data_as_data(&mut cm);
        assert_eq!(cm["stringData"]["a"], "x", "other kinds are left alone");
    }

    #[test]
    fn a_dry_run_is_classified_by_content_because_nothing_moves_the_resource_version() {
        assert_eq!(classify_dry_run(None, &obj("5", "a", "")), Action::Created);
        assert_eq!(classify_dry_run(Some(&obj("5", "a", "")), &obj("5", "b", "")), Action::Configured);
        assert_eq!(classify_dry_run(Some(&obj("5", "a", "x")), &obj("5", "a", "x")), Action::Unchanged);
        assert!(dry_run_based_on(None, &obj("5", "a", "")));
        assert!(dry_run_based_on(Some(&obj("5", "a", "")), &obj("5", "b", "")));
        assert!(!dry_run_based_on(Some(&obj("5", "a", "")), &obj("6", "a", "")), "written in between");
    }

    #[test]
    fn resolved_ref_defaults_the_namespace_except_for_cluster_scoped_kinds() {
        let o = |kind: &str| ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            name: "x".into(),
            namespace: None,
            section: Section::Modules,
            file: "f".into(),
        };
        let m = serde_json::json!({"metadata": {"name": "x"}});
        assert_eq!(resolved_ref(&o("Service"), &m, "ns1").namespace.as_deref(), Some("ns1"));
        assert_eq!(resolved_ref(&o("Namespace"), &m, "ns1").namespace, None);
        let m = serde_json::json!({"metadata": {"name": "x", "namespace": "other"}});
        assert_eq!(resolved_ref(&o("Service"), &m, "ns1").namespace.as_deref(), Some("other"));
    }

    #[test]
    fn numeric_quantities_become_strings_and_nothing_else_changes() {
        let mut m = serde_json::json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{
            "ports": [{"containerPort": 6379}],
            "resources": {"limits": {"cpu": 0.2, "memory": "1Gi"}, "requests": {"cpu": 1}}}],
            "volumes": [{"emptyDir": {"sizeLimit": 500}}]}}}});
        normalize_quantities(&mut m);
        let c = &m["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "0.2");
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert_eq!(c["ports"][0]["containerPort"], 6379);
        assert_eq!(m["spec"]["replicas"], 1);
        assert_eq!(m["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "500");
    }
}
