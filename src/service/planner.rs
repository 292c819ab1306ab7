//! The service layer as the reconcile loops' [`Planner`]: a desired state (a `JacDeployment`'s
//! spec and secrets) renders through the same resolution, labels and preflight as a Deploy
//! request, so what a loop applies is exactly what the API would have applied.

use async_trait::async_trait;
use serde_json::Value;

use super::prepare::{plan_of, Resolution};
use super::{DeploymentRequest, Error, Result, Service};
use crate::plan::{Desired, Plan, PlanError, Planner};

impl Service {
    async fn plan_desired(&self, desired: &Desired) -> Result<Plan> {
        let id = &desired.id;
        let version = (!desired.version.is_empty()).then(|| desired.version.clone());
        let template = self.catalog.load(&id.module, crate::identity::version_or_latest(version.as_deref()))?;
        let mut config = desired.config.clone();
        // The resource's own name and namespace decide, as the `MODULES` keys do.
        for (key, value) in [("name", &id.name), ("namespace", &id.namespace)] {
            if template.declares(key) && config.get(key).is_none_or(Value::is_null) {
                config.insert(key.into(), Value::String(value.clone()));
            }
        }
        let req = DeploymentRequest { module: id.module.clone(), version, config };
        let Resolution { template, resolved, id: named, wiring, .. } = self.resolve_wired(None, &req).await?;
        if &named != id {
            return Err(Error::Invalid {
                field: "config".into(),
                reason: format!("the template names this deployment {named}, not {id}"),
            });
        }
        let plan = plan_of(&template, resolved, named, &wiring)?;
        self.backend.preflight(&plan).await?;
        Ok(plan)
    }
}

#[async_trait]
impl Planner for Service {
    async fn plan(&self, desired: &Desired) -> Result<Plan, PlanError> {
        self.plan_desired(desired).await.map_err(|e| PlanError { message: e.to_string(), source: Some(Box::new(e)) })
    }
}
