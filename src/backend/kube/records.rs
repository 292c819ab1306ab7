//! Deployment records: one labelled Secret per deployment in the orchestrator's namespace.
//!
//! One object per deployment (never a shared blob) means concurrent deploys of distinct
//! deployments cannot lose each other's records, and a restarted orchestrator lists exactly
//! what the cluster holds. The name is derived from the deployment id, so no lookup is needed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

use super::errors::{api_error, is_not_found, status_code, Error as KubeError};
use crate::backend::{DeploymentRecord, Result};
use crate::plan::{DeploymentId, LABEL_MANAGED_BY, MANAGED_BY};

pub(crate) const LABEL_RECORD: &str = "jac-orc/record";
const ANNOTATION_ID: &str = "jac-orc/deployment-id";
const KEY: &str = "record.json";

/// `jac-orc-dep-<16 hex>`: FNV-1a 64 of the id, stable across builds and platforms.
pub(crate) fn secret_name(id: &DeploymentId) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // NUL separators keep ("a","bc") and ("ab","c") apart.
    for byte in [id.namespace.as_bytes(), id.module.as_bytes(), id.name.as_bytes()].join(&0u8) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("jac-orc-dep-{hash:016x}")
}

/// Whether two records differ only in their timestamp.
pub(crate) fn same_content(a: &DeploymentRecord, b: &DeploymentRecord) -> bool {
    let strip = |r: &DeploymentRecord| {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("updated_at");
        }
        v
    };
    strip(a) == strip(b)
}

pub(crate) struct Records {
    api: Api<Secret>,
    client: kube::Client,
    namespace: String,
    field_manager: String,
}

impl Records {
    pub(crate) fn new(client: kube::Client, namespace: &str, field_manager: &str) -> Self {
        Records {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            field_manager: field_manager.to_string(),
        }
    }

    pub(crate) async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        let name = secret_name(id);
        let secret = self.api.get_opt(&name).await.map_err(|e| api_error(&format!("secret/{name}"), e))?;
        secret.map(|s| decode(&s)).transpose()
    }

    pub(crate) async fn list(&self) -> Result<Vec<DeploymentRecord>> {
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RECORD}=true"));
        let list = match self.api.list(&params).await {
            Ok(list) => list,
            // No orchestrator namespace yet means no records yet.
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(api_error("secrets", e)),
        };
        let mut out = Vec::with_capacity(list.items.len());
        for secret in &list.items {
            match decode(secret) {
                Ok(record) => out.push(record),
                // One corrupt record must not hide the others.
                Err(e) => {
                    tracing::warn!(secret = ?secret.metadata.name, error = %e, "skipping unreadable deployment record")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(crate) async fn put(&self, record: &DeploymentRecord) -> Result<()> {
        let name = secret_name(&record.id);
        let bad = |source| KubeError::BadRecord { secret: format!("secret/{name}"), source };
        let json = serde_json::to_vec(record).map_err(bad)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    (LABEL_RECORD.to_string(), "true".to_string()),
                ])),
                annotations: Some(BTreeMap::from([(ANNOTATION_ID.to_string(), record.id.to_string())])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(KEY.to_string(), ByteString(json))])),
            ..Default::default()
        };
        // The record is ours alone: force takes over fields anyone else may have touched.
        let params = PatchParams::apply(&self.field_manager).force();
        let mut value = serde_json::to_value(&secret).map_err(bad)?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        match self.api.patch(&name, &params, &Patch::Apply(&value)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                self.ensure_namespace().await?;
                self.api
                    .patch(&name, &params, &Patch::Apply(&value))
                    .await
                    .map(|_| ())
                    .map_err(|e| api_error(&format!("secret/{name}"), e))
            }
            Err(e) => Err(api_error(&format!("secret/{name}"), e)),
        }
    }

    pub(crate) async fn delete(&self, id: &DeploymentId) -> Result<()> {
        let name = secret_name(id);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("secret/{name}"), e)),
        }
    }

    async fn ensure_namespace(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(self.namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(api_error(&format!("namespace/{}", self.namespace), e)),
        }
    }
}

fn decode(secret: &Secret) -> Result<DeploymentRecord> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| KubeError::RecordWithoutKey { secret: format!("secret/{name}"), key: KEY })?;
    Ok(serde_json::from_slice(&bytes.0)
        .map_err(|source| KubeError::BadRecord { secret: format!("secret/{name}"), source })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, module: &str, name: &str) -> DeploymentId {
        DeploymentId { namespace: ns.into(), module: module.into(), name: name.into() }
    }

    #[test]
    fn secret_names_are_stable_valid_and_distinct() {
        let a = secret_name(&id("default", "redis", "jac-redis"));
        assert_eq!(a, secret_name(&id("default", "redis", "jac-redis")));
        assert!(a.len() <= 63 && a.starts_with("jac-orc-dep-"));
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(secret_name(&id("a", "bc", "d")), secret_name(&id("ab", "c", "d")));
        assert_ne!(a, secret_name(&id("default", "redis", "jac-redis2")));
    }
}
