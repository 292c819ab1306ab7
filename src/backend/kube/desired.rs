//! One reconcile of one `JacDeployment`, as the reconcile loop runs it: under the deployment's
//! lock, read the resource afresh; being deleted → undeploy and let it go; otherwise make sure
//! it carries the undeploy finalizer, turn spec + Secret into the desired state, render it with
//! the [`Planner`] (the service layer, as for the API's deploys), keep secrets it generated in
//! the resource's Secret, and hand the plan to the shared apply path (`sync.rs`).
//!
//! A spec that cannot work (a secret value inline, a name that contradicts the resource, a
//! module or value the template refuses) is recorded as `failed` with reason `InvalidSpec`.

use kube::ResourceExt;
use serde_json::Value;

use super::conditions::READY;
use super::records::{id_of, split_config};
use super::resource::{default_secret_name, JacDeployment, FINALIZER};
use super::sync::Reconciled;
use super::KubeBackend;
use crate::backend::{Error, Progress, Result};
use crate::plan::{Desired, Plan, Planner};

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The resource does not exist (any more).
    Gone,
    /// It was being deleted: its objects are removed and it is released.
    Undeployed,
    /// Its spec cannot work; the reason is in its status.
    Invalid(String),
    /// A new desired state was applied (lines of what changed). `ready`: its workloads are.
    Applied { changes: Vec<String>, ready: bool },
    /// Drifted objects were applied again.
    Healed { objects: Vec<String>, ready: bool },
    /// Drifted objects were left alone (`selfHeal: false`).
    Drifted { objects: Vec<String>, ready: bool },
    /// Everything is as desired.
    InSync { ready: bool },
}

impl Step {
    /// Whether the deployment's workloads are ready (false for steps that do not say).
    pub fn is_ready(&self) -> bool {
        match self {
            Step::Applied { ready, .. }
            | Step::Healed { ready, .. }
            | Step::Drifted { ready, .. }
            | Step::InSync { ready } => *ready,
            _ => false,
        }
    }
}

fn invalid(jd: &JacDeployment, message: impl Into<String>) -> Error {
    Error::Rejected { object: format!("jacdeployment.jac-orc.io/{}", jd.name_any()), message: message.into() }
}

impl KubeBackend {
    /// Reconciles the resource `namespace/name` once.
    pub async fn reconcile(&self, namespace: &str, name: &str, planner: &dyn Planner) -> Result<Step> {
        let records = self.records();
        let api = records.api(namespace);
        let label = format!("jacdeployment.jac-orc.io/{name}");
        let get = || async { api.get_opt(name).await.map_err(|e| super::errors::api_error(&label, e)) };
        let Some(first) = get().await? else {
            return Ok(Step::Gone);
        };
        let _held = self.hold(&id_of(&first)).await;
        // Afresh, under the lock: the API may have written it while we waited.
        let Some(mut jd) = get().await? else {
            return Ok(Step::Gone);
        };
        let has_finalizer = jd.finalizers().iter().any(|f| f == FINALIZER);
        if jd.metadata.deletion_timestamp.is_some() {
            if !has_finalizer {
                return Ok(Step::Gone);
            }
            self.cleanup(&jd, &Progress::discard()).await?;
            return Ok(Step::Undeployed);
        }
        if !has_finalizer {
            records.add_finalizer(&jd).await?;
            let Some(fresh) = get().await? else {
                return Ok(Step::Gone);
            };
            jd = fresh;
        }
        let plan = match self.desired_plan(&jd, planner).await {
            Ok(plan) => plan,
            Err(e) => {
                let message = e.to_string();
                self.record_invalid(&jd, &e).await;
                return Ok(Step::Invalid(message));
            }
        };
        // Asleep: its Deployments at zero replicas, kept there by the drift check.
        let plan = super::idle::scaled_plan(&jd, plan);
        let reconciled = self.reconcile_resource(&jd, &plan).await?;
        let ready = get().await?.and_then(|jd| jd.status).is_some_and(|s| s.is(READY));
        Ok(match reconciled {
            Reconciled::Applied(changes) => Step::Applied { changes, ready },
            Reconciled::Healed(objects) => Step::Healed { objects, ready },
            Reconciled::Drifted(objects) => Step::Drifted { objects, ready },
            Reconciled::InSync => Step::InSync { ready },
        })
    }

    /// The plan of the resource's desired state, with generated secrets stored.
    async fn desired_plan(&self, jd: &JacDeployment, planner: &dyn Planner) -> Result<Plan> {
        let id = id_of(jd);
        for (key, want) in [("name", &id.name), ("namespace", &id.namespace)] {
            match jd.spec.config.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == want => {}
                Some(other) => {
                    return Err(invalid(jd, format!("spec.config.{key} is {other}, but the resource says `{want}`")))
                }
            }
        }
        jd.spec.options.idle_timeout_duration().map_err(|e| invalid(jd, format!("spec.options.idleTimeout: {e}")))?;
        let records = self.records();
        let stored = records.secret_values(jd).await?;
        let mut config = jd.spec.config.clone();
        config.extend(stored.clone());
        let desired = Desired { id: id.clone(), version: jd.spec.version.clone(), config };
        let plan = planner.plan(&desired).await.map_err(|e| invalid(jd, e.message))?;
        self.check_namespace_rule(&plan)?;
        if let Some(inline) = plan.secret_keys.iter().find(|k| jd.spec.config.contains_key(*k)) {
            let secret = jd.spec.secret_ref.as_ref().map_or_else(|| default_secret_name(&id.name), |r| r.name.clone());
            return Err(invalid(
                jd,
                format!("`{inline}` is a secret placeholder: put its value in Secret {secret} (spec.secretRef), never in spec.config"),
            ));
        }
        let (_, secrets) = split_config(&plan.config, &plan.secret_keys);
        let missing: Vec<&String> = secrets.keys().filter(|k| !stored.contains_key(*k)).collect();
        if !missing.is_empty() {
            if let Some(named) = &jd.spec.secret_ref {
                if named.name != default_secret_name(&id.name) {
                    let keys: Vec<&str> = missing.iter().map(|k| k.as_str()).collect();
                    return Err(invalid(jd, format!("Secret {} has no key {}", named.name, keys.join(", "))));
                }
            }
            let mut all = stored;
            all.extend(secrets);
            let name = default_secret_name(&id.name);
            records.write_secret(&id, &name, &all, Some(jd)).await?;
            tracing::info!(deployment = %id, secret = %name, "generated secret values stored");
        }
        Ok(plan)
    }

    async fn record_invalid(&self, jd: &JacDeployment, e: &Error) {
        tracing::warn!(deployment = %id_of(jd), error = %e, "the desired state cannot be applied");
        let plan = Plan {
            id: id_of(jd),
            version: jd.spec.version.clone(),
            config: Default::default(),
            secret_keys: Vec::new(),
            objects: Vec::new(),
            local: None,
        };
        let invalid =
            Error::Rejected { object: format!("jacdeployment.jac-orc.io/{}", jd.name_any()), message: e.to_string() };
        self.record_failure_as(jd, &plan, &invalid, "InvalidSpec").await;
    }
}
