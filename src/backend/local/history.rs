//! Revisions on the local backend: kept in the state file beside the records (so under its 0600
//! rules and atomic writes), secrets redacted, and removed with the deployment on undeploy.

use super::error::Result;
use super::{key, Inner};
use crate::backend::history::{self, Revision};
use crate::plan::DeploymentId;

impl Inner {
    /// The deployment's revisions, oldest first.
    pub(super) async fn history(&self, id: &DeploymentId) -> Vec<Revision> {
        self.state.lock().await.file.history.get(&key(id)).cloned().unwrap_or_default()
    }

    /// Appends a revision (numbered and trimmed by [`history::push`]) and writes the state file.
    pub(super) async fn record_revision(
        &self,
        id: &DeploymentId,
        revision: Revision,
        limit: usize,
    ) -> Result<Revision> {
        self.update(|s| history::push(s.history.entry(key(id)).or_default(), revision, limit)).await
    }
}
