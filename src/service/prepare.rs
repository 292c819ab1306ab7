//! From a request to a rendered plan: the template it names, the namespace rule, the identity,
//! the caller's permission, the resolved values (secrets generated under the deployment's lock)
//! and the backend's preflight. Nothing here changes a deployment. [`render_offline`] is the same
//! path with no backend and no caller (`jac-orc template`).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::locks::Held;
use super::namespacing::{with_namespace, wrong_type};
use super::references::Wiring;
use super::views::DryRunView;
use super::{DeploymentRequest, Result, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::catalog::{Catalog, Report, Resolved, TemplateVersion};
use crate::identity::{self, DeploymentId, NamespaceRule};
use crate::plan::{Plan, PlannedObject};

/// A validated, rendered deployment, ready to apply. It holds the deployment's lock, so the
/// secrets it resolved stay the deployment's until its apply is recorded (or it is dropped).
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    /// When the request arrived.
    pub(super) started: Instant,
    pub(super) lock: Held,
}

/// A request checked against its template.
pub(super) struct Resolution {
    pub(super) template: Arc<TemplateVersion>,
    /// The request's values with the namespace rule applied.
    pub(super) config: Map<String, Value>,
    pub(super) resolved: Resolved,
    pub(super) id: DeploymentId,
    /// The references among the request's values, resolved (see [`super::references`]).
    pub(super) wiring: Wiring,
}

/// A request rendered with no backend: the objects a deploy would apply, labelled as the
/// orchestrator labels them, in apply order.
#[derive(Debug)]
pub struct Offline {
    pub id: DeploymentId,
    pub version: String,
    pub objects: Vec<PlannedObject>,
    /// How each placeholder resolved (`generated` marks secrets made up for this rendering).
    pub reports: Vec<Report>,
}

/// Renders `req` from `catalog` under `rule` exactly as a deploy would plan it, with no server
/// and no backend. Secrets not given are generated afresh: there is no record to remember them.
pub fn render_offline(catalog: &Catalog, rule: &NamespaceRule, req: &DeploymentRequest) -> Result<Offline> {
    super::references::refuse_offline(&req.config)?;
    let Resolution { template, resolved, id, .. } = resolve(catalog, rule, req)?;
    let objects = planned_objects(&template, &resolved.values, &id)?;
    Ok(Offline { id, version: template.version.clone(), objects, reports: resolved.reports })
}

/// The rendered objects, labelled with the deployment's identity, in apply order.
fn planned_objects(
    template: &TemplateVersion,
    values: &Map<String, Value>,
    id: &DeploymentId,
) -> Result<Vec<PlannedObject>> {
    let rendered = template.render(values)?;
    let mut objects = template.objects(&rendered)?;
    for o in &mut objects {
        identity::label(&mut o.manifest, id, &template.version);
    }
    Plan::order_objects(&mut objects);
    Ok(objects)
}

impl Service {
    /// Renders without touching anything. The caller needs what the deploy would need.
    pub async fn dry_run(&self, caller: &Caller, req: &DeploymentRequest) -> Result<DryRunView> {
        let r = self.resolve_wired(Some(caller), req).await?;
        self.permit_apply(caller, &r.id).await?;
        let rendered = r.template.render(&r.resolved.values)?;
        let objects = if r.wiring.is_empty() {
            let mut objects = r.template.objects(&rendered)?;
            Plan::order_objects(&mut objects);
            objects
        } else {
            // Planned as a deploy plans it, so a reference a deploy would refuse is refused here.
            plan_of(&r.template, r.resolved.clone(), r.id.clone(), &r.wiring)?.objects
        };
        let objects = objects.into_iter().map(|o| o.object).collect();
        Ok(DryRunView::new(&r.template, &r.id, &r.resolved.reports, rendered, objects))
    }

    /// Validates, renders and plans a deployment, and checks the backend can run it. Nothing is
    /// applied yet, so any error here leaves every deployment as it was.
    pub async fn prepare(&self, caller: &Caller, req: &DeploymentRequest) -> Result<Prepared> {
        let started = Instant::now();
        let resolution = self.resolve_wired(Some(caller), req).await?;
        self.permit_apply(caller, &resolution.id).await?;
        let lock = self.locks.hold(&resolution.id).await;
        self.plan(resolution, started, lock).await
    }

    /// Plans a resolved request whose deployment's `lock` the caller holds.
    pub(super) async fn plan(&self, resolution: Resolution, started: Instant, lock: Held) -> Result<Prepared> {
        let Resolution { template, config, mut resolved, id, wiring } = resolution;
        // Secrets are generated here, under the lock: a concurrent first deploy waits, then
        // finds this one's record and keeps its secrets (a new password would break clients).
        if resolved.reports.iter().any(|r| r.generated) {
            let existing = self.backend.get(&id).await?;
            resolved = template.resolve(&config, existing.as_ref().map(|r| &r.config))?;
        }
        let plan = plan_of(&template, resolved, id, &wiring)?;
        self.backend.preflight(&plan).await?;
        Ok(Prepared { plan, started, lock })
    }

    /// `create` on a new deployment, `update` on one that exists.
    pub(super) async fn permit_apply(&self, caller: &Caller, id: &DeploymentId) -> Result<()> {
        let verb = match caller {
            Caller::User(_) if self.backend.get(id).await?.is_some() => Verb::Update,
            _ => Verb::Create,
        };
        self.permit(caller, verb, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await
    }

    pub(super) fn resolve(&self, req: &DeploymentRequest) -> Result<Resolution> {
        resolve(&self.catalog, &self.rule, req)
    }

    /// [`Service::resolve`] with the request's references to other deployments' outputs left
    /// out (they take their defaults): enough for the deployment's identity and template, without
    /// reading the referenced deployments. Errors in a reference itself are still reported.
    pub(super) fn resolve_unwired(&self, req: &DeploymentRequest) -> Result<Resolution> {
        let refs = super::references::references_in(&req.config)?;
        if refs.is_empty() {
            return self.resolve(req);
        }
        let mut unwired = req.clone();
        for (placeholder, _) in refs {
            unwired.config.remove(&placeholder);
        }
        self.resolve(&unwired)
    }

    /// [`Service::resolve`] after resolving the request's references to other deployments'
    /// outputs (`caller` needs `get` on each; none for the reconcile loops).
    pub(super) async fn resolve_wired(&self, caller: Option<&Caller>, req: &DeploymentRequest) -> Result<Resolution> {
        let (wired, wiring) = self.wire(caller, req).await?;
        Ok(Resolution { wiring, ..self.resolve(&wired)? })
    }
}

fn resolve(catalog: &Catalog, rule: &NamespaceRule, req: &DeploymentRequest) -> Result<Resolution> {
    let template = catalog.load(&req.module, req.version())?;
    let config = with_namespace(rule, &template, &req.config)?;
    let resolved = template.resolve(&config, None)?;
    let id = identity(rule, &template, &resolved.values)?;
    Ok(Resolution { template, config, resolved, id, wiring: Wiring::default() })
}

/// The deployment a request's resolved values name: `namespace` (else the orchestrator's)
/// and `name` (else the module's).
fn identity(rule: &NamespaceRule, template: &TemplateVersion, values: &Map<String, Value>) -> Result<DeploymentId> {
    let namespace = match values.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => rule.home().to_string(),
    };
    let name = match values.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(wrong_type("name", other).into()),
        None => template.module.clone(),
    };
    Ok(DeploymentId::from_config(namespace, template.module.clone(), name)?)
}

/// The plan of resolved values: rendered, labelled, in apply order (a deploy's, and the
/// reconcile loops' through the [`crate::plan::Planner`]).
pub(super) fn plan_of(
    template: &TemplateVersion,
    resolved: Resolved,
    id: DeploymentId,
    wiring: &Wiring,
) -> Result<Plan> {
    let objects = planned_objects(template, &resolved.values, &id)?;
    let local = template.render_local(&resolved.values)?;
    let mut plan = Plan {
        id,
        version: template.version.clone(),
        secret_keys: resolved.secret_keys(),
        config: resolved.values,
        objects,
        local,
    };
    wiring.apply(&mut plan)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::backend::ApplyOptions;
    use crate::service::testing::Recording;

    #[tokio::test]
    async fn concurrent_first_deploys_keep_one_generated_secret() {
        let (service, backend) = Recording::service();
        let req = DeploymentRequest {
            module: "mongodb".into(),
            version: None,
            config: json!({"name": "db"}).as_object().cloned().unwrap(),
        };
        let run = |service: Arc<Service>, req: DeploymentRequest| async move {
            service.deploy(&Caller::Operator, &req, ApplyOptions::default()).await.unwrap().finish().await.unwrap()
        };
        let runs: Vec<_> = (0..4).map(|_| tokio::spawn(run(service.clone(), req.clone()))).collect();
        for r in runs {
            tokio::time::timeout(Duration::from_secs(30), r).await.expect("deploy ends").unwrap();
        }
        let applied = backend.applied.lock().unwrap();
        assert_eq!(applied.len(), 4);
        let passwords: Vec<&Value> = applied.iter().map(|p| &p.config["password"]).collect();
        assert!(passwords[0].as_str().is_some_and(|p| p.len() >= 24), "{passwords:?}");
        assert!(
            passwords.iter().all(|p| *p == passwords[0]),
            "every run applied the first run's secret: {passwords:?}"
        );
    }
}
