//! One lock per deployment: a deploy holds it from resolving its secrets to recording its
//! apply, an undeploy for its whole run, so two runs on one deployment never interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::identity::DeploymentId;

/// Held while a run owns its deployment.
pub(crate) type Held = OwnedMutexGuard<()>;

#[derive(Debug, Default)]
pub(crate) struct Locks(Mutex<HashMap<DeploymentId, Arc<AsyncMutex<()>>>>);

impl Locks {
    /// Waits until no other run holds `id`'s lock, then holds it until the guard is dropped.
    pub(crate) async fn hold(&self, id: &DeploymentId) -> Held {
        let lock = self.0.lock().expect("deployment locks").entry(id.clone()).or_default().clone();
        lock.lock_owned().await
    }
}
