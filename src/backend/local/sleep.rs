//! Scale to zero and wake (python-module deployments with an idle timeout).
//!
//! Asleep, a deployment keeps its record, port, object store and replica count; its status
//! is `idle` and its workload is recorded as not to run, so neither the reconcile pass nor a
//! restarted orchestrator starts it. The record is written before the processes stop: a crash
//! in between leaves it asleep, and the restart reaps what still runs. The extras' identities
//! go with them (removed from the record before they stop): a wake starts them afresh.
//!
//! Waking holds the deployment's lock until replica 0 answers (the extras follow, as after a
//! restart), so concurrent wakes queue behind the first and find it awake: one wake-up.

use std::sync::Arc;
use std::time::Duration;

use super::{key, Inner};
use crate::backend::{now_rfc3339, Error as BackendError, Result, Status};
use crate::plan::DeploymentId;

/// The record's message while it sleeps.
pub(super) const ASLEEP: &str = "scaled to zero after its idle timeout; the next call wakes it";

impl Inner {
    pub(super) async fn scale_to_zero(self: &Arc<Self>, id: &DeploymentId) -> Result<bool> {
        self.check_open()?;
        self.recover().await;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let entry = self.entry(id).await.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let runs = entry.workload.as_ref().is_some_and(|w| w.run);
        if entry.record.status != Status::Deployed || !runs {
            return Ok(false);
        }
        let k = key(id);
        self.update(|s| {
            if let Some(e) = s.deployments.get_mut(&k) {
                e.record.status = Status::Idle;
                e.record.message = ASLEEP.into();
                e.record.updated_at = now_rfc3339();
                if let Some(w) = e.workload.as_mut() {
                    w.run = false;
                }
            }
        })
        .await?;
        let recorded = entry.workload.as_ref().and_then(|w| w.process.clone());
        self.stop_workload(id, recorded.as_ref()).await;
        self.update(|s| {
            if let Some(w) = s.deployments.get_mut(&k).and_then(|e| e.workload.as_mut()) {
                w.process = None;
                // Already gone with `stop_extras`; cleared here too, so no identity outlives a sleep.
                w.extras.clear();
            }
        })
        .await?;
        self.endpoints_changed();
        tracing::info!(deployment = %id, "scaled to zero after its idle timeout");
        Ok(true)
    }

    /// Runs on a task of its own: a caller that gives up (its deadline, a dropped request) does
    /// not leave a wake-up half done, and the next call finds it awake.
    pub(super) async fn wake(self: &Arc<Self>, id: &DeploymentId, wait: Duration) -> Result<bool> {
        let (me, id) = (self.clone(), id.clone());
        match tokio::spawn(async move { me.wake_now(&id, wait).await }).await {
            Ok(woke) => woke,
            Err(e) => Err(BackendError::WorkloadFailed { object: "wake-up".into(), reason: e.to_string() }),
        }
    }

    async fn wake_now(self: &Arc<Self>, id: &DeploymentId, wait: Duration) -> Result<bool> {
        self.check_open()?;
        self.recover().await;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let entry = self.entry(id).await.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        if entry.record.status != Status::Idle {
            return Ok(false);
        }
        let k = key(id);
        // Still idle until it answers: callers arriving meanwhile ask to wake it too, and wait
        // for this wake-up behind the lock.
        self.update(|s| {
            if let Some(e) = s.deployments.get_mut(&k) {
                e.record.message = "waking from zero".into();
                e.record.wakeups += 1;
                if let Some(w) = e.workload.as_mut() {
                    w.run = true;
                }
            }
        })
        .await?;
        crate::metrics::global().wakeup(&format!("{}/{}", id.namespace, id.name));
        tracing::info!(deployment = %id, "waking from zero");
        let woke = self.bring_up_held(id, wait).await;
        let failed = woke.as_ref().err().cloned();
        if failed.is_some() {
            // Asleep again, so the next call tries again from a clean start.
            let recorded = self.entry(id).await.and_then(|e| e.workload.and_then(|w| w.process));
            self.stop_workload(id, recorded.as_ref()).await;
        }
        self.update(|s| {
            let Some(e) = s.deployments.get_mut(&k) else { return };
            e.record.updated_at = now_rfc3339();
            match &failed {
                None => {
                    e.record.status = Status::Deployed;
                    e.record.message.clear();
                }
                Some(reason) => {
                    e.record.status = Status::Idle;
                    e.record.message = format!("{ASLEEP}; the last wake-up failed: {reason}");
                    if let Some(w) = e.workload.as_mut() {
                        w.run = false;
                        w.process = None;
                        w.extras.clear();
                    }
                }
            }
        })
        .await?;
        self.endpoints_changed();
        match failed {
            None => Ok(true),
            Some(reason) => Err(BackendError::WorkloadFailed {
                object: super::process_ref(id).kubectl_name(),
                reason: format!("waking from zero: {reason}"),
            }),
        }
    }
}
