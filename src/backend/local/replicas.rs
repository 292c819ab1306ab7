//! Replicas: a python-module deployment with `replicas: N` runs N module-server processes.
//!
//! Replica 0 is the deployment's recorded workload (its port in the state file, adopted after a
//! restart, as before). Replicas 1..N are extra processes of the same launch, each on its own
//! port, in its own directory `<deployment dir>/replicas/<i>/` (log, pidfile, marker), working in
//! the deployment's `data/`, each under its own [`Supervisor`] (restarted like replica 0). A
//! redeploy with other settings restarts them all; one with only another `replicas` adds or stops
//! extras. After an orchestrator restart the extras are started afresh (the reaping of
//! `restore.rs` stops old ones: they carry the deployment's marker).
//!
//! Readiness of each process ([`super::supervisor::track_ready`]) follows its supervisor's life: it counts once it
//! accepts TCP connections on its port, and from then on the watchers of
//! [`crate::backend::Backend::watch_endpoints`] see it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::error::{Error, Result};
use super::ports::Reserved;
use super::process::Identity;
use super::readiness::{self, Target};
use super::supervisor::{accepts, Start, Supervisor};
use super::{endpoint, Inner};
use crate::backend::endpoints::{Endpoint, EndpointStream};
use crate::backend::{Action, ObjectEvent, Progress};
use crate::plan::{DeploymentId, LocalRecipe};

/// The most processes one local deployment runs.
pub(super) const MAX_REPLICAS: usize = 16;

/// One extra replica (index ≥ 1).
#[derive(Debug)]
pub(super) struct Extra {
    pub(super) port: u16,
    pub(super) supervisor: Supervisor,
    /// Holds the port against other deploys while the replica has it.
    _port: Reserved,
}

/// The replicas a deployment's configuration asks for (`replicas`; 1 when absent).
pub(super) fn wanted(config: &Map<String, Value>) -> usize {
    config.get("replicas").and_then(Value::as_u64).map_or(1, |n| (n as usize).clamp(1, MAX_REPLICAS))
}

/// What tells replicas apart across restarts on one address.
fn instance(identity: &Identity) -> String {
    format!("{}-{}", identity.pid, identity.start_time)
}

/// The ready endpoints of `id` after every change (the first item: now); ends after the
/// deployment is gone (its last item is the NotFound error).
pub(super) fn watch(inner: Arc<Inner>, id: DeploymentId) -> EndpointStream {
    struct Watching {
        inner: Arc<Inner>,
        id: DeploymentId,
        changes: watch::Receiver<u64>,
        last: Option<Vec<Endpoint>>,
        done: bool,
    }
    let changes = inner.changes.subscribe();
    let start = Watching { inner, id, changes, last: None, done: false };
    Box::pin(futures::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            if w.last.is_some() && w.changes.changed().await.is_err() {
                return None;
            }
            // Seen before reading, so a change during the read wakes the next round.
            w.changes.borrow_and_update();
            match w.inner.ready_endpoints(&w.id).await {
                Ok(now) if w.last.as_ref() == Some(&now) => {}
                Ok(now) => {
                    w.last = Some(now.clone());
                    return Some((Ok(now), w));
                }
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
            }
        }
    }))
}

impl Inner {
    fn replica_dir(&self, id: &DeploymentId, index: usize) -> std::path::PathBuf {
        self.deployment_dir(id).join("replicas").join(index.to_string())
    }

    /// The ready module servers of a deployment: replica 0, then the extras.
    pub(super) async fn ready_endpoints(&self, id: &DeploymentId) -> crate::backend::Result<Vec<Endpoint>> {
        let entry = self.entry(id).await.ok_or_else(|| crate::backend::Error::NotFound(id.clone()))?;
        let Some(port) = entry.workload.as_ref().map(|w| w.port) else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        // Cloned out of the locks (a ready check may connect).
        let first = self.supervisors.lock().expect("supervisors").get(id).map(|s| (s.ready(), s.running()));
        let extras: Vec<(u16, Option<Identity>, Option<Identity>)> = self
            .extras
            .lock()
            .expect("extras")
            .get(id)
            .map(|v| v.iter().map(|e| (e.port, e.supervisor.ready(), e.supervisor.running())).collect())
            .unwrap_or_default();
        let candidates = first.map(|(r, n)| (port, r, n)).into_iter().chain(extras);
        for (port, ready, running) in candidates {
            let identity = match (ready, running) {
                (Some(i), _) => Some(i),
                (None, Some(i)) if accepts(port).await => Some(i),
                _ => None,
            };
            if let Some(i) = identity {
                found.push(Endpoint::new(endpoint(port), instance(&i)));
            }
        }
        Ok(found)
    }

    /// Endpoints of the extras (for the record), in replica order.
    pub(super) fn extra_endpoints(&self, id: &DeploymentId) -> Vec<String> {
        let extras = self.extras.lock().expect("extras");
        extras.get(id).map(|v| v.iter().map(|e| endpoint(e.port)).collect()).unwrap_or_default()
    }

    /// Stops every extra replica of a deployment; how many ran.
    pub(super) async fn stop_extras(&self, id: &DeploymentId) -> usize {
        let extras = self.extras.lock().expect("extras").remove(id).unwrap_or_default();
        let n = extras.len();
        futures::future::join_all(extras.into_iter().map(|e| e.supervisor.stop())).await;
        if n > 0 {
            self.endpoints_changed();
        }
        n
    }

    /// Runs `want` replicas in all: extras beyond it are stopped, missing ones started (each
    /// awaited until ready, within `timeout`). Returns the extras' endpoints. (Changed settings
    /// restart every replica: [`Inner::stop_workload`] stops the extras with replica 0.)
    pub(super) async fn scale_extras(
        self: &Arc<Self>,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        program: Option<String>,
        want: usize,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<Vec<String>> {
        let surplus = {
            let mut map = self.extras.lock().expect("extras");
            match map.get_mut(id) {
                Some(v) if v.len() > want.saturating_sub(1) => v.split_off(want.saturating_sub(1)),
                _ => Vec::new(),
            }
        };
        if !surplus.is_empty() {
            let n = surplus.len();
            futures::future::join_all(surplus.into_iter().map(|e| e.supervisor.stop())).await;
            let message = format!("stopped {n} replica(s); {want} run");
            progress.send(ObjectEvent::new(super::process_ref(id), Action::Stopped).with_message(message)).await;
            self.endpoints_changed();
        }
        let have = self.extras.lock().expect("extras").get(id).map_or(0, Vec::len);
        for index in have + 1..want {
            self.check_open()?;
            let reserved = self.reserve_port().await?;
            let port = reserved.port;
            let mut launch = self.launch(id, recipe, port, program.clone()).await;
            launch.dir = self.replica_dir(id, index);
            launch.object = format!("{}-{index}", launch.object);
            let dir = launch.dir.clone();
            super::state::blocking(move || super::state::create_private_dir(&dir)).await?;
            let object = launch.object.clone();
            let (child, identity) = launch.spawn().await?;
            let supervisor =
                Supervisor::start(id.clone(), launch, Start::Owned(child, identity), false, self.journal());
            let mut life = supervisor.life();
            let target = Target { port, readiness: &recipe.readiness, object: &object };
            let waited = readiness::wait(target, &mut life, true, timeout, progress).await;
            let confirmed = supervisor.confirm();
            match waited {
                Ok(_) if confirmed => {}
                Ok(_) => {
                    supervisor.stop().await;
                    return Err(Error::Exited { object, reason: "exited as it became ready".into() });
                }
                Err(e) => {
                    supervisor.stop().await;
                    return Err(e);
                }
            }
            let message = format!("replica {index} ready on {}", endpoint(port));
            progress.send(ObjectEvent::new(super::process_ref(id), Action::Started).with_message(message)).await;
            let refused = {
                let mut map = self.extras.lock().expect("extras");
                if self.check_open().is_err() {
                    Some(supervisor)
                } else {
                    map.entry(id.clone()).or_default().push(Extra { port, supervisor, _port: reserved });
                    None
                }
            };
            if let Some(s) = refused {
                s.stop().await;
                return Err(Error::ShuttingDown);
            }
            self.endpoints_changed();
        }
        Ok(self.extra_endpoints(id))
    }

    /// After an orchestrator restart brought replica 0 back: starts the extras (logged, not
    /// fatal: replica 0 serves meanwhile) and records their endpoints.
    pub(super) async fn bring_up_extras(
        self: &Arc<Self>,
        id: &DeploymentId,
        config: &Map<String, Value>,
        recipe: &LocalRecipe,
        port: u16,
    ) {
        let want = wanted(config);
        if want <= 1 {
            return;
        }
        let quiet = Progress::discard();
        let started = match self.prepare(id, recipe, port, &quiet).await {
            Ok(program) => self.scale_extras(id, recipe, program, want, super::DEFAULT_READY_TIMEOUT, &quiet).await,
            Err(e) => Err(e),
        };
        let extra = match started {
            Ok(extra) => extra,
            Err(e) => {
                tracing::error!(deployment = %id, "could not start the extra replicas: {}", e.reason());
                self.extra_endpoints(id)
            }
        };
        let key = super::key(id);
        let saved = self
            .update(|s| {
                if let Some(e) = s.deployments.get_mut(&key) {
                    e.record.endpoints = std::iter::once(endpoint(port)).chain(extra).collect();
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(deployment = %id, error = %e, "could not record the replicas' endpoints");
        }
    }

    /// Tells endpoint watchers to look again.
    pub(super) fn endpoints_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_replicas_come_from_the_configuration_within_bounds() {
        let config = |v: Value| serde_json::json!({ "replicas": v }).as_object().cloned().unwrap();
        assert_eq!(wanted(&Map::new()), 1);
        assert_eq!(wanted(&config(3.into())), 3);
        assert_eq!(wanted(&config(0.into())), 1);
        assert_eq!(wanted(&config(1000.into())), MAX_REPLICAS);
        assert_eq!(wanted(&config("three".into())), 1);
    }
}
