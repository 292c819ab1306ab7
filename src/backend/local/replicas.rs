//! Replicas: a python-module deployment with `replicas: N` runs N module-server processes.
//!
//! Replica 0 is the deployment's recorded workload (its port in the state file, adopted after a
//! restart, as before). Replicas 1..N are extra processes of the same launch, each on its own
//! port, in its own directory `<deployment dir>/replicas/<i>/` (log, pidfile, marker), working in
//! the deployment's `data/`, each under its own [`Supervisor`] (restarted like replica 0). A
//! redeploy with other settings restarts them all; one with only another `replicas` adds or stops
//! extras. Each extra is recorded in the state file as replica 0 is (index, port, identity):
//! written once it is spawned, rewritten by every supervised restart, removed before it is
//! stopped (so a crash in between leaves it unrecorded, and the next start reaps it). After an
//! orchestrator restart every extra that still runs as recorded is adopted, unrestarted, with its
//! port (the sessions callers hold on it live on); only missing or dead ones are started afresh,
//! on new ports. A state file without the extras' identities (written before they were recorded)
//! adopts none: its extras are reaped and started afresh.
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
use super::process::{self, Identity, Launch};
use super::readiness::{self, Target};
use super::state::ExtraProcess;
use super::supervisor::{accepts, Start, Supervisor, STOP_GRACE};
use super::{endpoint, key, Inner};
use crate::backend::endpoints::{Endpoint, EndpointStream};
use crate::backend::{Action, ObjectEvent, Progress};
use crate::plan::{DeploymentId, LocalRecipe};

/// The most processes one local deployment runs.
pub(super) const MAX_REPLICAS: usize = 16;

/// One extra replica (index ≥ 1).
#[derive(Debug)]
pub(super) struct Extra {
    pub(super) index: usize,
    pub(super) port: u16,
    pub(super) supervisor: Supervisor,
    /// Holds the port against other deploys while the replica has it.
    _port: Reserved,
}

impl Extra {
    pub(super) fn new(index: usize, reserved: Reserved, supervisor: Supervisor) -> Extra {
        Extra { index, port: reserved.port, supervisor, _port: reserved }
    }
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

    /// Stops every extra replica of a deployment; how many ran. Their records go first: a
    /// crash before they are stopped leaves them unrecorded, to be reaped.
    pub(super) async fn stop_extras(&self, id: &DeploymentId) -> usize {
        let extras = self.extras.lock().expect("extras").remove(id).unwrap_or_default();
        let n = extras.len();
        self.forget_extras(id, |_| true).await;
        futures::future::join_all(extras.into_iter().map(|e| e.supervisor.stop())).await;
        if n > 0 {
            self.endpoints_changed();
        }
        n
    }

    /// Whether a replica in 1..`want` does not run under a supervisor of this orchestrator.
    pub(super) fn extras_missing(&self, id: &DeploymentId, want: usize) -> bool {
        let extras = self.extras.lock().expect("extras");
        let have: Vec<usize> = extras.get(id).map(|v| v.iter().map(|e| e.index).collect()).unwrap_or_default();
        (1..want).any(|i| !have.contains(&i))
    }

    /// How to start (or watch) extra replica `index` of a deployment on `port`.
    pub(super) async fn extra_launch(
        &self,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        port: u16,
        program: Option<String>,
        index: usize,
    ) -> Launch {
        let mut launch = self.launch(id, recipe, port, program).await;
        launch.dir = self.replica_dir(id, index);
        launch.object = format!("{}-{index}", launch.object);
        launch.replica = index;
        launch
    }

    /// Hands an extra replica to the deployment's list (index order); refused, and the
    /// replica handed back, while shutting down.
    pub(super) fn register_extra(&self, id: &DeploymentId, extra: Extra) -> std::result::Result<(), Extra> {
        let mut map = self.extras.lock().expect("extras");
        if self.check_open().is_err() {
            return Err(extra);
        }
        let v = map.entry(id.clone()).or_default();
        let at = v.partition_point(|e| e.index < extra.index);
        v.insert(at, extra);
        Ok(())
    }

    /// Writes an extra replica's record (its process just spawned).
    async fn record_extra(&self, id: &DeploymentId, extra: ExtraProcess) -> Result<()> {
        let k = key(id);
        self.update(|s| {
            if let Some(w) = s.deployments.get_mut(&k).and_then(|e| e.workload.as_mut()) {
                w.record_extra(extra);
            }
        })
        .await
    }

    /// Removes the records of the extra replicas whose index `which` picks (they are about to
    /// stop); writes only when one is recorded. A failed write is logged: a stale record names
    /// a process that no longer runs, which a restart does not adopt.
    async fn forget_extras(&self, id: &DeploymentId, which: impl Fn(usize) -> bool + Send) {
        let k = key(id);
        let recorded = {
            let state = self.state.lock().await;
            let w = state.file.deployments.get(&k).and_then(|e| e.workload.as_ref());
            w.is_some_and(|w| w.extras.iter().any(|x| which(x.index)))
        };
        if !recorded {
            return;
        }
        let saved = self
            .update(|s| {
                if let Some(w) = s.deployments.get_mut(&k).and_then(|e| e.workload.as_mut()) {
                    w.extras.retain(|x| !which(x.index));
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(deployment = %id, error = %e, "could not remove the stopped replicas' records");
        }
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
                Some(v) => {
                    let (keep, surplus): (Vec<Extra>, Vec<Extra>) = v.drain(..).partition(|e| e.index < want);
                    *v = keep;
                    surplus
                }
                None => Vec::new(),
            }
        };
        if !surplus.is_empty() {
            let n = surplus.len();
            self.forget_extras(id, |i| i >= want).await;
            futures::future::join_all(surplus.into_iter().map(|e| e.supervisor.stop())).await;
            let message = format!("stopped {n} replica(s); {want} run");
            progress.send(ObjectEvent::new(super::process_ref(id), Action::Stopped).with_message(message)).await;
            self.endpoints_changed();
        }
        for index in 1..want {
            let present =
                self.extras.lock().expect("extras").get(id).is_some_and(|v| v.iter().any(|e| e.index == index));
            if present {
                continue;
            }
            self.check_open()?;
            self.start_extra(id, recipe, program.clone(), index, timeout, progress).await?;
        }
        Ok(self.extra_endpoints(id))
    }

    /// Starts extra replica `index` on a fresh port, records it, and waits until it is ready.
    async fn start_extra(
        self: &Arc<Self>,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        program: Option<String>,
        index: usize,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<()> {
        let reserved = self.reserve_port().await?;
        let port = reserved.port;
        let launch = self.extra_launch(id, recipe, port, program, index).await;
        let dir = launch.dir.clone();
        super::state::blocking(move || super::state::create_private_dir(&dir)).await?;
        let object = launch.object.clone();
        let (mut child, identity) = launch.spawn().await?;
        // Recorded before it is supervised, as replica 0 is: a crash from here on adopts it.
        if let Err(e) = self.record_extra(id, ExtraProcess { index, port, process: identity.clone() }).await {
            process::stop_child(&mut child, &identity, STOP_GRACE).await;
            return Err(e);
        }
        let supervisor = Supervisor::start(id.clone(), launch, Start::Owned(child, identity), false, self.journal());
        let mut life = supervisor.life();
        let target = Target { port, readiness: &recipe.readiness, object: &object };
        let waited = readiness::wait(target, &mut life, true, timeout, progress).await;
        let confirmed = supervisor.confirm();
        let failed = match waited {
            Ok(_) if confirmed => None,
            Ok(_) => Some(Error::Exited { object, reason: "exited as it became ready".into() }),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            self.forget_extras(id, |i| i == index).await;
            supervisor.stop().await;
            return Err(e);
        }
        let message = format!("replica {index} ready on {}", endpoint(port));
        progress.send(ObjectEvent::new(super::process_ref(id), Action::Started).with_message(message)).await;
        if let Err(refused) = self.register_extra(id, Extra::new(index, reserved, supervisor)) {
            refused.supervisor.stop().await;
            return Err(Error::ShuttingDown);
        }
        self.endpoints_changed();
        Ok(())
    }

    /// After an orchestrator restart brought replica 0 back: starts the extras that were not
    /// adopted (logged, not fatal: replica 0 serves meanwhile) and records their endpoints.
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
        let program = match self.extras_missing(id, want) {
            true => self.prepare(id, recipe, port, &quiet).await,
            false => Ok(None),
        };
        let started = match program {
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
    use crate::backend::ApplyOptions;
    use crate::plan::{Plan, Readiness, RecipeText, Segment, Slot};

    /// SIGKILLs whatever a test left in its data dir, found by marker (a failed assertion).
    struct Reap(std::path::PathBuf);

    impl Drop for Reap {
        fn drop(&mut self) {
            for stray in process::strays(&self.0.join("deployments")) {
                stray.identity.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    fn plan(replicas: u64) -> Plan {
        let id = DeploymentId { namespace: "default".into(), module: "web".into(), name: "w".into() };
        let text = RecipeText::text;
        Plan {
            id,
            version: "latest".into(),
            config: serde_json::json!({"name": "w", "replicas": replicas}).as_object().cloned().unwrap(),
            secret_keys: vec![],
            objects: vec![],
            local: Some(LocalRecipe {
                program: text("python3"),
                args: vec![
                    text("-m"),
                    text("http.server"),
                    RecipeText(vec![Segment::Slot(Slot::Port)]),
                    text("--bind"),
                    text("127.0.0.1"),
                ],
                readiness: Readiness::Tcp,
                protocol: "http".into(),
                packages: vec![],
                env: vec![],
                secret_env: vec![],
            }),
        }
    }

    fn open(dir: &std::path::Path) -> super::super::LocalBackend {
        let opts = super::super::LocalOptions { data_dir: dir.into(), python: "python3".into(), ..Default::default() };
        super::super::LocalBackend::open(opts).unwrap()
    }

    async fn extras_recorded(inner: &Inner) -> Vec<ExtraProcess> {
        let e = inner.entry(&plan(1).id).await.unwrap();
        e.workload.unwrap().extras
    }

    async fn apply(inner: &Arc<Inner>, replicas: u64) {
        let opts = ApplyOptions { wait: Some(Duration::from_secs(60)), ..Default::default() };
        inner.apply(&plan(replicas), &opts, &Progress::discard()).await.unwrap();
    }

    /// A crash (the runtime and the backend dropped, the processes left running), the next
    /// backend adopting the extra with its port held, redeploys that add and stop extras, and a
    /// scale to zero: the record follows each step.
    #[test]
    fn extras_are_adopted_with_their_ports_and_their_records_follow_redeploys_and_sleep() {
        let tmp = tempfile::tempdir().unwrap();
        let _reap = Reap(tmp.path().to_path_buf());
        let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let before = runtime().block_on(async {
            let backend = open(tmp.path());
            apply(&backend.inner, 2).await;
            extras_recorded(&backend.inner).await
        });
        assert_eq!(before.iter().map(|x| x.index).collect::<Vec<_>>(), vec![1], "{before:?}");
        assert!(before[0].process.is_alive(), "a crash leaves the extra running");

        runtime().block_on(async {
            let backend = open(tmp.path());
            backend.restore().await;
            let inner = &backend.inner;
            assert_eq!(extras_recorded(inner).await, before, "adopted as recorded");
            assert_eq!(inner.extra_endpoints(&plan(1).id), vec![endpoint(before[0].port)]);
            assert!(inner.reserved.lock().unwrap().contains(&before[0].port), "the adopted extra's port is held");
            let fresh = inner.reserve_port().await.unwrap();
            assert_ne!(fresh.port, before[0].port);
            drop(fresh);

            apply(inner, 3).await;
            let three = extras_recorded(inner).await;
            assert_eq!(three.iter().map(|x| x.index).collect::<Vec<_>>(), vec![1, 2]);
            assert_eq!(three[0], before[0], "the adopted extra runs on");
            apply(inner, 2).await;
            assert_eq!(extras_recorded(inner).await, before, "the surplus replica's record goes");
            assert!(!three[1].process.is_alive(), "the surplus replica stopped");

            assert!(inner.scale_to_zero(&plan(1).id).await.unwrap());
            assert_eq!(extras_recorded(inner).await, vec![], "asleep: no extra's identity is kept");
            assert!(!before[0].process.is_alive(), "the extra stopped with the deployment");
            assert!(!inner.reserved.lock().unwrap().contains(&before[0].port), "its port is free again");
            inner.shutdown().await;
        });
    }

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
