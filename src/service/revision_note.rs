//! Who made a revision and why: given to the run that records it once its deploy is done.

use crate::auth::Caller;
use crate::backend::{DeploymentRecord, Revision};

/// Who made a revision and why, given to the run that records it.
#[derive(Debug, Clone)]
pub(super) struct RevisionNote {
    pub(super) by: String,
    pub(super) description: String,
}

impl RevisionNote {
    pub(super) fn deploy(caller: &Caller) -> Self {
        RevisionNote { by: caller.name().to_string(), description: "deploy".into() }
    }

    pub(super) fn rollback(caller: &Caller, to: u64) -> Self {
        RevisionNote { by: caller.name().to_string(), description: format!("rollback to {to}") }
    }

    /// Records the revision `record` makes; a failure is logged (the deploy itself is done).
    pub(super) async fn record(self, backend: &dyn crate::backend::Backend, record: &DeploymentRecord, limit: usize) {
        let revision = Revision::of(record, &self.by, self.description);
        match backend.record_revision(&record.id, revision, limit).await {
            Ok(r) => tracing::info!(deployment = %record.id, revision = r.revision, "revision recorded"),
            Err(e) => tracing::error!(deployment = %record.id, error = %e, "could not record the revision"),
        }
    }
}
