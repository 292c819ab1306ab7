//! A backend for the service layer's own tests: it records every plan it applies, takes a
//! moment to apply (so runs overlap), and with `wait` waits until its caller has gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Service, Settings};
use crate::backend::{self, Action, ApplyOptions, Backend, DeploymentRecord, ObjectEvent, Progress, Status};
use crate::catalog::Catalog;
use crate::identity::DeploymentId;
use crate::plan::Plan;

/// What the record says when the caller left during the wait.
pub(crate) const ABANDONED: &str = "readiness not awaited: the caller left";

#[derive(Debug, Default)]
pub(crate) struct Recording {
    records: Mutex<HashMap<DeploymentId, DeploymentRecord>>,
    pub(crate) applied: Mutex<Vec<Plan>>,
    histories: Mutex<HashMap<DeploymentId, Vec<backend::Revision>>>,
    /// When set, listing fails as an unreachable backend's does.
    pub(crate) down: std::sync::atomic::AtomicBool,
}

impl Recording {
    /// A service over the built-in catalog and a fresh recording backend.
    pub(crate) fn service() -> (Arc<Service>, Arc<Recording>) {
        let backend = Arc::new(Recording::default());
        (Arc::new(Service::new(Arc::new(Catalog::builtin()), backend.clone(), Settings::default())), backend)
    }

    pub(crate) fn record(&self, id: &DeploymentId) -> Option<DeploymentRecord> {
        self.records.lock().unwrap().get(id).cloned()
    }
}

#[async_trait]
impl Backend for Recording {
    fn kind(&self) -> backend::Kind {
        backend::Kind::Local
    }

    async fn preflight(&self, _: &Plan) -> backend::Result<()> {
        Ok(())
    }

    async fn history(&self, id: &DeploymentId) -> backend::Result<Vec<backend::Revision>> {
        Ok(self.histories.lock().unwrap().get(id).cloned().unwrap_or_default())
    }

    async fn record_revision(
        &self,
        id: &DeploymentId,
        revision: backend::Revision,
        limit: usize,
    ) -> backend::Result<backend::Revision> {
        let mut histories = self.histories.lock().unwrap();
        Ok(backend::history::push(histories.entry(id.clone()).or_default(), revision, limit))
    }

    async fn apply(&self, plan: &Plan, opts: &ApplyOptions, progress: &Progress) -> backend::Result<DeploymentRecord> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for o in &plan.objects {
            progress.send(ObjectEvent::new(o.object.clone(), Action::Created)).await;
        }
        let mut message = String::new();
        if let Some(timeout) = opts.wait {
            // A wait that ends only when the caller leaves (or, failing the test, the timeout).
            if let Some(o) = plan.objects.first() {
                progress.send(ObjectEvent::new(o.object.clone(), Action::Waiting)).await;
            }
            if tokio::time::timeout(timeout, progress.caller_gone()).await.is_ok() {
                message = ABANDONED.into();
            }
        }
        let record = DeploymentRecord {
            id: plan.id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints: vec![],
            status: Status::Deployed,
            message,
            objects: plan.objects.iter().map(|o| o.object.clone()).collect(),
            backend: backend::Kind::Local,
            updated_at: backend::now_rfc3339(),
            wakeups: 0,
        };
        self.applied.lock().unwrap().push(plan.clone());
        self.records.lock().unwrap().insert(plan.id.clone(), record.clone());
        Ok(record)
    }

    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> backend::Result<()> {
        let record = self.records.lock().unwrap().remove(id);
        self.histories.lock().unwrap().remove(id);
        for o in record.iter().flat_map(|r| r.objects.iter()) {
            progress.send(ObjectEvent::new(o.clone(), Action::Deleted)).await;
        }
        Ok(())
    }

    async fn get(&self, id: &DeploymentId) -> backend::Result<Option<DeploymentRecord>> {
        Ok(self.record(id))
    }

    async fn list(&self) -> backend::Result<Vec<DeploymentRecord>> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(backend::Error::Kube(crate::backend::kube::KubeError::ProbeTimeout(Duration::from_secs(1))));
        }
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn module_endpoints(&self, _: &DeploymentId) -> backend::Result<Vec<String>> {
        Ok(vec![])
    }

    /// One line per object of the record, as if each had logged its name.
    async fn logs(&self, id: &DeploymentId, opts: &backend::LogOptions) -> backend::Result<backend::LogStream> {
        let record = self.record(id).ok_or_else(|| backend::Error::NotFound(id.clone()))?;
        let lines: Vec<String> = record.objects.iter().map(|o| o.kubectl_name()).collect();
        let lines = backend::logs::last_lines(lines, opts.tail);
        Ok(Box::pin(futures::stream::iter(lines.into_iter().map(|l| Ok(backend::LogLine::new("replica 0", l))))))
    }
}
