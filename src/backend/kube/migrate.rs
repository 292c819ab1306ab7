//! Startup migration of the records earlier versions kept: one labelled Secret per deployment
//! (`jac-orc/record=true`, JSON in `record.json`) in the orchestrator's namespace. Each becomes a
//! `JacDeployment` (spec from the record's config and version, secret values into the resource's
//! Secret, status from the record's outcome, inventory and endpoints), then the old Secret is
//! deleted. Idempotent: a resource that already exists for the same module is kept as it is and
//! only the old Secret goes; a crash between the two steps is finished by the next start. A
//! name another module's resource holds is left alone (logged, old Secret kept).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};

use super::conditions::{self, Observation, Outcome, Readiness};
use super::errors::Error as KubeError;
use super::errors::{api_error, is_not_found};
use super::records::inventory;
use super::KubeBackend;
use crate::backend::{DeploymentRecord, Result, Status};
use crate::plan::{Plan, LABEL_MANAGED_BY, MANAGED_BY};

/// Label of the records of earlier versions.
pub const LABEL_RECORD: &str = "jac-orc/record";
const KEY: &str = "record.json";

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Records turned into resources.
    pub converted: usize,
    /// Records whose resource already existed (only the old Secret was removed).
    pub already: usize,
    /// Records left in place (unreadable, or their name is another module's).
    pub skipped: usize,
}

impl KubeBackend {
    /// Converts every old record Secret in the orchestrator's namespace into a `JacDeployment`.
    pub async fn migrate_records(&self) -> Result<Migrated> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.options.orchestrator_namespace);
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RECORD}=true"));
        let secrets = match api.list(&params).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => return Ok(Migrated::default()),
            Err(e) => return Err(api_error("secrets", e)),
        };
        let mut out = Migrated::default();
        for secret in secrets {
            let name = secret.metadata.name.clone().unwrap_or_default();
            let record = match decode(&secret) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(secret = %name, error = %e, "old deployment record is unreadable; left in place");
                    out.skipped += 1;
                    continue;
                }
            };
            match self.migrate_one(&record).await? {
                Some(existed) => {
                    if existed {
                        out.already += 1;
                    } else {
                        out.converted += 1;
                    }
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(api_error(&format!("secret/{name}"), e)),
                    }
                    tracing::info!(deployment = %record.id, existed, "migrated an old deployment record to a JacDeployment");
                }
                None => out.skipped += 1,
            }
        }
        Ok(out)
    }

    /// `Some(existed)` once the record has a resource; `None` when it cannot have one.
    async fn migrate_one(&self, record: &DeploymentRecord) -> Result<Option<bool>> {
        let records = self.records();
        let api = records.api(&record.id.namespace);
        let label = format!("jacdeployment.jac-orc.io/{}", record.id.name);
        if let Some(jd) = api.get_opt(&record.id.name).await.map_err(|e| api_error(&label, e))? {
            if jd.spec.module == record.id.module {
                return Ok(Some(true));
            }
            tracing::warn!(deployment = %record.id, holder = %jd.spec.module, "old record not migrated: its name is another module's deployment; left in place");
            return Ok(None);
        }
        let plan = Plan {
            id: record.id.clone(),
            version: record.version.clone(),
            config: record.config.clone(),
            secret_keys: record.secret_keys.clone(),
            objects: Vec::new(),
            local: None,
        };
        let jd = records.write_desired(&plan, None, None).await?;
        // The outcome the record remembers; the reconcile loop takes it from there.
        let outcome = match record.status {
            Status::Failed => Outcome::Failed { reason: "Migrated", message: record.message.clone() },
            _ => Outcome::Applied {
                readiness: Readiness::Waiting(record.objects.iter().map(|o| o.kubectl_name()).collect()),
                message: record.message.clone(),
            },
        };
        let observation = Observation {
            generation: jd.metadata.generation.unwrap_or(1),
            outcome,
            drifted: Vec::new(),
            endpoints: record.endpoints.clone(),
            inventory: inventory(&record.objects),
            revision: None,
        };
        let status = conditions::next(None, observation, &record.updated_at);
        records.write_status(&jd, &status).await?;
        Ok(Some(false))
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
