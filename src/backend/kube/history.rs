//! Revisions on Kubernetes: a JSON list in the `jac-orc.io/history` annotation of the
//! deployment's JacDeployment, written by server-side apply with a field manager of its own
//! (`<manager>-history`), so the spec's and the status's writes never touch it and it goes with
//! the resource on undeploy. Secret values are redacted ([`history::push`]), and the list is
//! bounded by the revision limit and [`history::MAX_BYTES`].

use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::errors::{api_error, Error as KubeError};
use super::resource::JacDeployment;
use super::KubeBackend;
use crate::backend::history::{self, Revision};
use crate::backend::{Error, Result};
use crate::plan::DeploymentId;

/// The annotation holding a deployment's revisions, oldest first.
pub const ANNOTATION_HISTORY: &str = "jac-orc.io/history";

/// The revisions stored on `jd` (none without the annotation).
pub(crate) fn history_of(jd: &JacDeployment) -> Result<Vec<Revision>> {
    match jd.annotations().get(ANNOTATION_HISTORY) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|source| {
            Error::Kube(KubeError::BadRecord {
                secret: format!("jacdeployment.jac-orc.io/{} annotation {ANNOTATION_HISTORY}", jd.name_any()),
                source,
            })
        }),
    }
}

impl KubeBackend {
    pub(super) async fn revisions(&self, id: &DeploymentId) -> Result<Vec<Revision>> {
        match self.records().resource(id).await? {
            Some(jd) => history_of(&jd),
            None => Ok(Vec::new()),
        }
    }

    pub(super) async fn push_revision(&self, id: &DeploymentId, revision: Revision, limit: usize) -> Result<Revision> {
        let jd = self.records().resource(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?;
        let mut revisions = history_of(&jd)?;
        let stored = history::push(&mut revisions, revision, limit);
        let text = serde_json::to_string(&revisions)
            .map_err(|source| Error::Kube(KubeError::Encode { what: "the revision history".into(), source }))?;
        let body = json!({
            "apiVersion": "jac-orc.io/v1alpha1",
            "kind": "JacDeployment",
            "metadata": {"name": id.name, "annotations": {ANNOTATION_HISTORY: text}},
        });
        let params = PatchParams::apply(&format!("{}-history", self.options.field_manager)).force();
        self.records()
            .api(&id.namespace)
            .patch(&id.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| api_error(&format!("jacdeployment.jac-orc.io/{}", id.name), e))?;
        Ok(stored)
    }
}
