//! Revisions of a deployment: every successful deploy (and rollback) is recorded as a numbered
//! [`Revision`] by the backend ([`Backend::record_revision`]); [`Service::history`] lists them,
//! [`Service::rollback`] deploys one again as a new revision, [`Service::diff`] tells what a
//! deploy would change against the live objects (a deploy with `dry_run`: on Kubernetes a
//! server-side dry-run apply per object, locally a comparison with the object store), and
//! [`Service::with_previous_values`] fills placeholders a request leaves out with the current
//! revision's values (`reuse_values`, the CLI's default).
//!
//! | operation | verb | resource |
//! | --- | --- | --- |
//! | history | get | `jacdeployments` |
//! | diff | get, then what a deploy would need (create / update) | `jacdeployments` |
//! | rollback | what a deploy needs (update) | `jacdeployments` |
//!
//! Secret values are never part of a revision: a rollback deploys with the deployment's current
//! secrets.
//!
//! [`Backend::record_revision`]: crate::backend::Backend::record_revision

use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::deploy::{DeployStream, Event};
use super::namespacing::ORCHESTRATOR_NAMESPACE;
use super::revision_note::RevisionNote;
use super::{DeploymentRequest, Error, Result, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::backend::{Action, ApplyOptions, ObjectEvent, Revision};
use crate::identity::DeploymentId;

/// What a deploy of a request would change, object by object.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DiffView {
    /// Whether any object (or the local workload) would be created, configured, restarted or
    /// deleted.
    pub changed: bool,
    /// Every object as a deploy would report it (`unchanged` for those it would leave alone).
    pub objects: Vec<ObjectEvent>,
}

impl DiffView {
    pub fn new(objects: Vec<ObjectEvent>) -> Self {
        let changed = objects.iter().any(|o| o.action != Action::Unchanged);
        DiffView { changed, objects }
    }
}

impl Service {
    /// The deployment's revisions, oldest first; `NotFound` for a deployment that does not exist.
    pub async fn history(&self, caller: &Caller, id: &DeploymentId) -> Result<Vec<Revision>> {
        self.permit(caller, Verb::Get, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        self.require(id).await?;
        Ok(self.backend.history(id).await?)
    }

    /// Deploys revision `revision` (default: the one before the current) again, as a new
    /// revision: its template version and values, with the deployment's current secrets.
    /// Unknown revision: `RevisionNotFound`; no revision before the current one:
    /// `NoPreviousRevision` (both before any stream, with nothing changed).
    pub async fn rollback(
        &self,
        caller: &Caller,
        id: &DeploymentId,
        revision: Option<u64>,
        opts: ApplyOptions,
    ) -> Result<DeployStream> {
        self.permit_apply(caller, id).await?;
        self.require(id).await?;
        let history = self.backend.history(id).await?;
        let target = match revision {
            Some(n) => history
                .iter()
                .find(|r| r.revision == n)
                .ok_or_else(|| Error::RevisionNotFound { id: id.clone(), revision: n })?,
            None => match history.len() {
                0 | 1 => return Err(Error::NoPreviousRevision(id.clone())),
                n => &history[n - 2],
            },
        };
        let req = DeploymentRequest {
            module: id.module.clone(),
            version: Some(target.version.clone()),
            config: target.values(),
        };
        let prepared = self.prepare(caller, &req).await?;
        if prepared.plan.id != *id {
            return Err(Error::Invalid {
                field: "revision".into(),
                reason: format!("revision {} names deployment {}, not {id}", target.revision, prepared.plan.id),
            });
        }
        tracing::info!(deployment = %id, revision = target.revision, "rolling back");
        Ok(self.apply(prepared, opts, RevisionNote::rollback(caller, target.revision)))
    }

    /// What deploying `req` (with the current values for what it leaves out, when
    /// `reuse_values`) would change against the live objects. Changes nothing.
    pub async fn diff(&self, caller: &Caller, req: &DeploymentRequest, reuse_values: bool) -> Result<DiffView> {
        let id = self.resolve_unwired(req)?.id;
        self.permit(caller, Verb::Get, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        let req = if reuse_values { self.with_previous_values(req).await? } else { req.clone() };
        let opts = ApplyOptions { dry_run: true, ..ApplyOptions::default() };
        let mut stream = self.deploy(caller, &req, opts).await?;
        let mut objects = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Event::Object(ev) => objects.push(ev),
                Event::Done(_) => return Ok(DiffView::new(objects)),
                Event::Failed(e) => return Err(e),
            }
        }
        unreachable!("a run stream always ends with Done or Failed")
    }

    /// `req` with each placeholder it does not give taken from the deployment's current values
    /// (when it exists and the template version still declares the placeholder). Secrets are
    /// left out: a deploy keeps the deployment's secrets anyway.
    pub async fn with_previous_values(&self, req: &DeploymentRequest) -> Result<DeploymentRequest> {
        let r = self.resolve_unwired(req)?;
        let Some(record) = self.backend.get(&r.id).await? else {
            return Ok(req.clone());
        };
        let mut out = req.clone();
        for (k, v) in &record.config {
            let derived = k == "namespace" || k == ORCHESTRATOR_NAMESPACE;
            if derived || record.secret_keys.contains(k) || out.config.contains_key(k) || !r.template.declares(k) {
                continue;
            }
            out.config.insert(k.clone(), v.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::service::testing::Recording;

    fn redis(memory: Option<&str>) -> DeploymentRequest {
        let mut config = json!({"name": "cache"}).as_object().cloned().unwrap();
        if let Some(m) = memory {
            config.insert("memory".into(), m.into());
        }
        DeploymentRequest { module: "redis".into(), version: None, config }
    }

    async fn deploy(service: &Service, req: &DeploymentRequest) {
        let run = service.deploy(&Caller::Operator, req, ApplyOptions::default()).await.unwrap().finish();
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("bounded").unwrap();
    }

    fn id() -> DeploymentId {
        DeploymentId::new("default", "redis", "cache").unwrap()
    }

    #[tokio::test]
    async fn deploys_are_numbered_and_a_rollback_is_a_new_revision_with_the_old_values() {
        let (service, backend) = Recording::service();
        deploy(&service, &redis(Some("64mb"))).await;
        deploy(&service, &redis(Some("128mb"))).await;
        let history = service.history(&Caller::Operator, &id()).await.unwrap();
        assert_eq!(history.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(history[0].config["memory"], "64mb");
        assert_eq!(history[1].deployed_by, "operator");

        let run = service.rollback(&Caller::Operator, &id(), None, ApplyOptions::default()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), run.finish()).await.unwrap().unwrap();
        assert_eq!(backend.record(&id()).unwrap().config["memory"], "64mb");
        let history = service.history(&Caller::Operator, &id()).await.unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[2].description, "rollback to 1");
    }

    #[tokio::test]
    async fn rollback_errors_name_the_revision_and_change_nothing() {
        let (service, backend) = Recording::service();
        deploy(&service, &redis(Some("64mb"))).await;
        let e = service.rollback(&Caller::Operator, &id(), None, ApplyOptions::default()).await.unwrap_err();
        assert!(matches!(e, Error::NoPreviousRevision(_)), "{e}");
        let e = service.rollback(&Caller::Operator, &id(), Some(7), ApplyOptions::default()).await.unwrap_err();
        assert!(matches!(e, Error::RevisionNotFound { revision: 7, .. }), "{e}");
        assert!(e.to_string().contains("revision 7"), "{e}");
        assert_eq!(backend.applied.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn previous_values_fill_only_what_a_request_leaves_out() {
        let (service, _) = Recording::service();
        deploy(&service, &redis(Some("64mb"))).await;
        let reused = service.with_previous_values(&redis(None)).await.unwrap();
        assert_eq!(reused.config["memory"], "64mb");
        let given = service.with_previous_values(&redis(Some("1gb"))).await.unwrap();
        assert_eq!(given.config["memory"], "1gb");
        assert!(!reused.config.contains_key("namespace"));
    }
}
