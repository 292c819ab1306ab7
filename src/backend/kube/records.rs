//! Deployment records as `JacDeployment` resources: one per deployment, in its namespace, named
//! after it. The spec holds the desired state (non-secret values); secret values live in a
//! Secret the resource owns; the status holds what was last done. A restarted orchestrator, or a
//! second replica, lists exactly what the cluster holds.
//!
//! Names are unique per namespace, so two modules cannot both use one deployment name in one
//! namespace (the second deploy is refused). Writes use server-side apply with the
//! orchestrator's field manager; an identical write is a no-op for the API server, so an
//! unchanged redeploy writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Map, Value};

use super::errors::{api_error, is_not_found, Error as KubeError};
use super::resource::{
    default_secret_name, InventoryEntry, JacDeployment, JacDeploymentSpec, JacDeploymentStatus, Options, SecretRef,
    FINALIZER, LABEL_SECRETS_OF,
};
use crate::backend::{DeploymentRecord, Error, Result, Status};
use crate::plan::{
    DeploymentId, ObjectRef, Plan, ANNOTATION_VERSION, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_MODULE,
    LABEL_NAMESPACE, MANAGED_BY,
};

/// Where records are read: one namespace (restricted mode, whose Role reaches no further) or all.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    Namespace(String),
    All,
}

#[derive(Clone)]
pub(crate) struct Records {
    client: kube::Client,
    field_manager: String,
    scope: Scope,
}

impl Records {
    pub(crate) fn new(client: kube::Client, field_manager: &str, scope: Scope) -> Self {
        Records { client, field_manager: field_manager.to_string(), scope }
    }

    pub(crate) fn api(&self, namespace: &str) -> Api<JacDeployment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn params(&self) -> PatchParams {
        // Records are ours alone: force takes over fields anyone else may have touched.
        PatchParams::apply(&self.field_manager).force()
    }

    /// The resource of deployment `id`, if it exists and is of `id`'s module.
    pub(crate) async fn resource(&self, id: &DeploymentId) -> Result<Option<JacDeployment>> {
        let jd = self.api(&id.namespace).get_opt(&id.name).await.map_err(|e| api_error(&label(id), e))?;
        Ok(jd.filter(|jd| jd.spec.module == id.module))
    }

    pub(crate) async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        match self.resource(id).await? {
            Some(jd) => {
                let secrets = self.secret_values(&jd).await?;
                Ok(Some(record_of(&jd, secrets)))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn list_resources(&self) -> Result<Vec<JacDeployment>> {
        let api: Api<JacDeployment> = match &self.scope {
            Scope::Namespace(ns) => self.api(ns),
            Scope::All => Api::all(self.client.clone()),
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            // No CRD installed (or no namespace yet) means no records.
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(api_error("jacdeployments.jac-orc.io", e)),
        }
    }

    pub(crate) async fn list(&self) -> Result<Vec<DeploymentRecord>> {
        let resources = self.list_resources().await?;
        // One list of the secrets Secrets instead of one read per deployment.
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SECRETS_OF}"));
        let secrets: Vec<Secret> = if !resources.is_empty() {
            let api: Api<Secret> = match &self.scope {
                Scope::Namespace(ns) => self.secrets(ns),
                Scope::All => Api::all(self.client.clone()),
            };
            api.list(&params).await.map_err(|e| api_error("secrets", e))?.items
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(resources.len());
        for jd in &resources {
            let wanted = secret_name_of(jd);
            let found = secrets.iter().find(|s| {
                s.metadata.namespace == jd.metadata.namespace && s.metadata.name.as_deref() == Some(wanted.as_str())
            });
            let values = match (found, &jd.spec.secret_ref) {
                (Some(s), _) => decode_secret(s),
                // A Secret the user made (not labelled as ours): read on its own.
                (None, Some(_)) => self.secret_values(jd).await.unwrap_or_default(),
                (None, None) => Map::new(),
            };
            out.push(record_of(jd, values));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The values of the deployment's Secret (empty without one; an error when it is named
    /// but missing).
    pub(crate) async fn secret_values(&self, jd: &JacDeployment) -> Result<Map<String, Value>> {
        let name = secret_name_of(jd);
        let ns = jd.namespace().unwrap_or_default();
        let label = format!("secret/{name}");
        match self.secrets(&ns).get_opt(&name).await.map_err(|e| api_error(&label, e))? {
            Some(secret) => Ok(decode_secret(&secret)),
            // The default Secret appears only once a secret is generated.
            None if jd.spec.secret_ref.is_none() => Ok(Map::new()),
            None => Err(Error::Rejected {
                object: format!("jacdeployment.jac-orc.io/{}", jd.name_any()),
                message: format!("spec.secretRef names {label}, which does not exist in namespace {ns}"),
            }),
        }
    }

    /// Writes the plan as the deployment's desired state: its secret values into its Secret,
    /// then the resource's spec (with the undeploy finalizer). `self_heal`: written to
    /// `spec.options.selfHeal` when given, else left as it is (default true). Refuses a name
    /// another module holds. Returns the resource as stored.
    pub(crate) async fn write_desired(
        &self,
        plan: &Plan,
        existing: Option<&JacDeployment>,
        self_heal: Option<bool>,
    ) -> Result<JacDeployment> {
        let id = &plan.id;
        let api = self.api(&id.namespace);
        let current = match existing {
            Some(jd) => Some(jd.clone()),
            None => api.get_opt(&id.name).await.map_err(|e| api_error(&label(id), e))?,
        };
        if let Some(jd) = &current {
            if jd.spec.module != id.module {
                return Err(Error::Rejected {
                    object: label(id),
                    message: format!(
                        "the name `{}` is taken in namespace {} by a deployment of module {}",
                        id.name, id.namespace, jd.spec.module
                    ),
                });
            }
            if jd.metadata.deletion_timestamp.is_some() {
                return Err(Error::Rejected {
                    object: label(id),
                    message: "the deployment is being deleted; deploy again once it is gone".into(),
                });
            }
        }
        let (config, secret_values) = split_config(&plan.config, &plan.secret_keys);
        let secret_ref = if secret_values.is_empty() {
            None
        } else {
            let name = current
                .as_ref()
                .and_then(|jd| jd.spec.secret_ref.clone())
                .map(|r| r.name)
                .unwrap_or_else(|| default_secret_name(&id.name));
            self.write_secret(id, &name, &secret_values, current.as_ref()).await?;
            Some(SecretRef { name })
        };
        let mut options = current.as_ref().map(|jd| jd.spec.options.clone()).unwrap_or_default();
        if let Some(heal) = self_heal {
            options.self_heal = heal;
        }
        let spec = JacDeploymentSpec {
            module: id.module.clone(),
            version: plan.version.clone(),
            config,
            secret_ref: secret_ref.clone(),
            options: Options { self_heal: options.self_heal, idle_timeout: None },
        };
        let mut spec_value = serde_json::to_value(&spec).map_err(encode("the JacDeployment spec"))?;
        if self_heal.is_none() {
            // Not ours to say: leave whatever another manager (kubectl) set.
            if let Some(o) = spec_value.as_object_mut() {
                o.remove("options");
            }
        }
        let body = json!({
            "apiVersion": "jac-orc.io/v1alpha1",
            "kind": "JacDeployment",
            "metadata": {
                "name": id.name,
                "namespace": id.namespace,
                "labels": identity_labels(id),
                "annotations": {ANNOTATION_VERSION: plan.version},
                "finalizers": [FINALIZER],
            },
            "spec": spec_value,
        });
        let jd =
            api.patch(&id.name, &self.params(), &Patch::Apply(&body)).await.map_err(|e| api_error(&label(id), e))?;
        if let Some(secret_ref) = &secret_ref {
            if current.is_none() {
                // Now that the resource has a uid, its Secret can name it as owner.
                self.write_secret(id, &secret_ref.name, &secret_values, Some(&jd)).await?;
            }
        }
        Ok(jd)
    }

    /// Writes secret values into the deployment's Secret, owned by `owner` when given.
    pub(crate) async fn write_secret(
        &self,
        id: &DeploymentId,
        name: &str,
        values: &Map<String, Value>,
        owner: Option<&JacDeployment>,
    ) -> Result<()> {
        let data: BTreeMap<String, ByteString> =
            values.iter().map(|(k, v)| (k.clone(), ByteString(text_of(v).into_bytes()))).collect();
        let mut labels = identity_labels(id);
        labels.remove(LABEL_MODULE);
        labels.insert(LABEL_SECRETS_OF.into(), id.name.clone());
        let mut metadata = json!({"name": name, "namespace": id.namespace, "labels": labels});
        if let Some(owner) = owner.and_then(owner_reference) {
            metadata["ownerReferences"] = json!([owner]);
        }
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data});
        self.secrets(&id.namespace)
            .patch(name, &self.params(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("secret/{name}"), e))
    }

    /// Replaces the status, unless it is already exactly that (so a look that found nothing new
    /// writes nothing).
    pub(crate) async fn write_status(&self, jd: &JacDeployment, status: &JacDeploymentStatus) -> Result<()> {
        if jd.status.as_ref() == Some(status) {
            return Ok(());
        }
        let name = jd.name_any();
        let ns = jd.namespace().unwrap_or_default();
        let body = json!({"apiVersion": "jac-orc.io/v1alpha1", "kind": "JacDeployment", "status": status});
        // A field manager of its own: before 1.22, managedFields do not tell the status
        // subresource apart, so sharing the spec's manager would swap its fields back and forth
        // (a write on every redeploy).
        let params = PatchParams::apply(&format!("{}-status", self.field_manager)).force();
        self.api(&ns)
            .patch_status(&name, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("jacdeployment.jac-orc.io/{name}"), e))
    }

    /// Removes the undeploy finalizer (JSON patch tested against its position, so a concurrent
    /// change of the list fails instead of removing someone else's finalizer).
    pub(crate) async fn remove_finalizer(&self, jd: &JacDeployment) -> Result<()> {
        let Some(i) = jd.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let name = jd.name_any();
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ]))
        .map_err(encode("a finalizer patch"))?;
        match self
            .api(&jd.namespace().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("jacdeployment.jac-orc.io/{name}"), e)),
        }
    }

    /// Adds the undeploy finalizer to a resource created without it (by kubectl).
    pub(crate) async fn add_finalizer(&self, jd: &JacDeployment) -> Result<()> {
        let name = jd.name_any();
        let ops = if jd.finalizers().is_empty() {
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
        } else {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
        };
        let patch: json_patch::Patch = serde_json::from_value(ops).map_err(encode("a finalizer patch"))?;
        self.api(&jd.namespace().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("jacdeployment.jac-orc.io/{name}"), e))
    }
}

/// The Secret holding a resource's secret values: the one it names, else the default one.
pub(crate) fn secret_name_of(jd: &JacDeployment) -> String {
    jd.spec.secret_ref.as_ref().map_or_else(|| default_secret_name(&jd.name_any()), |r| r.name.clone())
}

fn encode(what: &str) -> impl FnOnce(serde_json::Error) -> Error + '_ {
    move |source| KubeError::Encode { what: what.into(), source }.into()
}

fn label(id: &DeploymentId) -> String {
    format!("jacdeployment.jac-orc.io/{}", id.name)
}

/// The identity labels every object of a deployment carries.
pub(crate) fn identity_labels(id: &DeploymentId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_MODULE.to_string(), id.module.clone()),
        (LABEL_DEPLOYMENT.to_string(), id.name.clone()),
        (LABEL_NAMESPACE.to_string(), id.namespace.clone()),
    ])
}

pub(crate) fn owner_reference(jd: &JacDeployment) -> Option<OwnerReference> {
    let mut owner = jd.controller_owner_ref(&())?;
    // The Secret goes with the resource, but must not hold up its deletion.
    owner.block_owner_deletion = None;
    Some(owner)
}

/// Non-secret values (for the spec) and secret values (for the Secret).
pub(crate) fn split_config(
    config: &Map<String, Value>,
    secret_keys: &[String],
) -> (Map<String, Value>, Map<String, Value>) {
    let mut plain = Map::new();
    let mut secret = Map::new();
    for (k, v) in config {
        if secret_keys.contains(k) {
            if !v.is_null() {
                secret.insert(k.clone(), v.clone());
            }
        } else {
            plain.insert(k.clone(), v.clone());
        }
    }
    (plain, secret)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn decode_secret(secret: &Secret) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in secret.data.iter().flatten() {
        out.insert(k.clone(), Value::String(String::from_utf8_lossy(&v.0).into_owned()));
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), Value::String(v.clone()));
    }
    out
}

/// The identity a resource stands for.
pub(crate) fn id_of(jd: &JacDeployment) -> DeploymentId {
    DeploymentId { namespace: jd.namespace().unwrap_or_default(), module: jd.spec.module.clone(), name: jd.name_any() }
}

/// What the API reports for a resource: the spec's values plus its secrets, the status's
/// outcome, inventory and endpoints.
pub(crate) fn record_of(jd: &JacDeployment, secrets: Map<String, Value>) -> DeploymentRecord {
    let default = JacDeploymentStatus::default();
    let status = jd.status.as_ref().unwrap_or(&default);
    let generation = jd.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    let outcome = match status.status.as_str() {
        _ if observed < generation => Status::Deploying,
        "deployed" if super::idle::is_idle(jd) => Status::Idle,
        "deployed" => Status::Deployed,
        "failed" => Status::Failed,
        _ => Status::Deploying,
    };
    let mut secret_keys: Vec<String> = secrets.keys().cloned().collect();
    secret_keys.sort();
    let mut config = jd.spec.config.clone();
    config.extend(secrets);
    let updated_at = match status.updated_at.as_str() {
        "" => jd.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        t => t.to_string(),
    };
    DeploymentRecord {
        id: id_of(jd),
        version: if jd.spec.version.is_empty() { "latest".into() } else { jd.spec.version.clone() },
        config,
        secret_keys,
        endpoints: status.endpoints.clone(),
        status: outcome,
        message: status.message.clone(),
        objects: status.inventory.iter().map(ObjectRef::from).collect(),
        backend: crate::backend::Kind::Kubernetes,
        updated_at,
        wakeups: super::idle::wakeups(jd),
    }
}

pub(crate) fn inventory(objects: &[ObjectRef]) -> Vec<InventoryEntry> {
    objects.iter().map(InventoryEntry::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_leave_the_spec() {
        let config = json!({"name": "db", "password": "pw", "port": 1, "token": null}).as_object().cloned().unwrap();
        let (plain, secret) = split_config(&config, &["password".into(), "token".into()]);
        assert_eq!(Value::Object(plain), json!({"name": "db", "port": 1}));
        assert_eq!(Value::Object(secret), json!({"password": "pw"}));
    }

    #[test]
    fn records_read_the_outcome_only_for_the_observed_generation() {
        let mut jd = JacDeployment::new("cache", serde_json::from_value(json!({"module": "redis"})).unwrap());
        jd.metadata.namespace = Some("ns".into());
        jd.metadata.generation = Some(2);
        jd.status =
            Some(JacDeploymentStatus { observed_generation: Some(1), status: "deployed".into(), ..Default::default() });
        let secrets = json!({"password": "x"}).as_object().cloned().unwrap();
        let r = record_of(&jd, secrets);
        assert_eq!(r.status, Status::Deploying);
        assert_eq!((r.id.namespace.as_str(), r.id.module.as_str(), r.id.name.as_str()), ("ns", "redis", "cache"));
        assert_eq!((r.version.as_str(), r.secret_keys.as_slice()), ("latest", ["password".to_string()].as_slice()));
        assert_eq!(r.redacted_config()["password"], crate::backend::REDACTED);
        jd.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(record_of(&jd, Map::new()).status, Status::Deployed);
    }
}
