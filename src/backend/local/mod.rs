//! The local backend: runs a deployment's workload as a child process on 127.0.0.1 from the
//! plan's rendered local recipe, so `jac-orc serve` works on a laptop with no cluster.
//!
//! Workloads outlive the orchestrator's crash (each runs in its own process group, writing to
//! its log file) and are stopped by an orderly [`Backend::shutdown`]. A restarted orchestrator
//! adopts every workload that still runs as recorded (same pid, same port; each replica of a
//! deployment that runs several, `replicas.rs`), reaps whatever else
//! a crash left in the data dir, and starts the rest on their recorded ports: a deployment's
//! endpoint never changes. Records live in the state file (`state.rs`), written before a
//! workload starts and after every supervised restart; one `serve` per data dir (`lock.rs`).
//!
//! Files: `deploy.rs` apply and delete, `restore.rs` recovery after a restart, `supervisor.rs`
//! restarts, `process.rs` spawning and identifying processes, `readiness.rs`, `venv.rs`,
//! `objects.rs` the object store, `logs.rs` the workloads' log files, `desired.rs` the
//! reconcile pass (the state file as desired state, as `JacDeployment`s are on Kubernetes).

mod deploy;
mod desired;
mod error;
mod fs;
mod history;
mod lock;
mod logs;
mod objects;
mod ports;
mod process;
mod readiness;
mod replicas;
mod restore;
mod sleep;
mod state;
mod supervisor;
mod venv;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::{Mutex as AsyncMutex, OnceCell};

pub use desired::Reconciled;
pub use error::{Error, Result};
pub use venv::PipSource;

use super::{ApplyOptions, Backend, DeploymentRecord, Progress};
use crate::plan::{DeploymentId, ObjectRef, Plan, Section, SlotValues};
use lock::DataDirLock;
use process::Identity;
use state::{Entry, State, StateFile, Store};
use supervisor::{Journal, Supervisor};

/// How long a fresh workload may take to become ready when the caller did not ask to wait.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
const HOST: &str = "127.0.0.1";

#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub data_dir: PathBuf,
    /// Interpreter for python-module deployments (`--python` / `JAC_ORC_PYTHON`).
    pub python: String,
    /// Where pip finds python-module packages (`--pip-index-url`, `--pip-find-links`).
    pub pip: PipSource,
}

/// The local backend. Dropping it leaves its workloads running (as a crash would); call
/// [`Backend::shutdown`] to stop them, or [`LocalBackend::kill_all_now`] where awaiting is impossible.
#[derive(Debug)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Absolute (so process working directories can be matched against it).
    data_dir: PathBuf,
    python: String,
    pip: PipSource,
    store: Store,
    state: AsyncMutex<State>,
    supervisors: Mutex<HashMap<DeploymentId, Supervisor>>,
    /// Replicas 1..N of deployments that run more than one (`replicas.rs`).
    extras: Mutex<HashMap<DeploymentId, Vec<replicas::Extra>>>,
    /// Bumped whenever a process becomes ready or stops being so (endpoint watchers).
    changes: tokio::sync::watch::Sender<u64>,
    /// Serializes apply, delete and restore per deployment.
    locks: Mutex<HashMap<DeploymentId, Arc<AsyncMutex<()>>>>,
    /// Ports handed to first deploys that are not recorded yet.
    reserved: Arc<Mutex<HashSet<u16>>>,
    /// Set once adoption and reaping after a restart are done.
    recovered: OnceCell<()>,
    /// The state file was in a previous version's format: rewrite it.
    converted: bool,
    closing: AtomicBool,
    dir_lock: Mutex<Option<DataDirLock>>,
}

fn key(id: &DeploymentId) -> String {
    id.to_string()
}

fn endpoint(port: u16) -> String {
    format!("{HOST}:{port}")
}

fn process_ref(id: &DeploymentId) -> ObjectRef {
    ObjectRef {
        api_version: "local.jac-orc/v1".into(),
        kind: "Process".into(),
        name: id.name.clone(),
        namespace: Some(id.namespace.clone()),
        section: Section::Modules,
        file: "local.yaml".into(),
    }
}

impl LocalBackend {
    /// Opens the data dir (created 0700 when missing), locks it against a second `serve`, and
    /// reads the state. Workloads recorded by a previous run are adopted or started by
    /// [`LocalBackend::restore`] (adoption alone also happens before the first apply or delete).
    pub fn open(opts: LocalOptions) -> Result<Self> {
        if !opts.data_dir.exists() {
            state::create_private_dir(&opts.data_dir)?;
        }
        let data_dir = std::fs::canonicalize(&opts.data_dir).map_err(Error::io("resolve", &opts.data_dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&data_dir).map(|m| m.permissions().mode()).unwrap_or(0);
            if mode & 0o077 != 0 {
                tracing::warn!(data_dir = %data_dir.display(), "the data dir is accessible to other users (mode {:o}); the state file holds secrets", mode & 0o777);
            }
        }
        let dir_lock = DataDirLock::acquire(&data_dir)?;
        let path = data_dir.join(state::STATE_FILE);
        let (file, converted) = state::load(&path)?;
        if converted {
            tracing::info!(path = %path.display(), "state file is in a previous version's format; it will be rewritten");
        }
        let inner = Inner {
            python: opts.python,
            pip: opts.pip,
            store: Store::new(path),
            state: AsyncMutex::new(State::new(file)),
            supervisors: Mutex::default(),
            extras: Mutex::default(),
            changes: tokio::sync::watch::channel(0).0,
            locks: Mutex::default(),
            reserved: Arc::default(),
            recovered: OnceCell::new(),
            converted,
            closing: AtomicBool::new(false),
            dir_lock: Mutex::new(Some(dir_lock)),
            data_dir,
        };
        Ok(LocalBackend { inner: Arc::new(inner) })
    }

    /// After an orchestrator restart: adopts the workloads that still run, reaps what a crash
    /// left behind, starts the others on their recorded ports, and waits (bounded) until they
    /// answer.
    pub async fn restore(&self) {
        self.inner.recover().await;
        self.inner.bring_up_all().await;
    }

    /// SIGKILLs every workload at once without waiting: for embedders that cannot await
    /// [`Backend::shutdown`] (a test harness unwinding from a panic).
    pub fn kill_all_now(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        for s in self.inner.supervisors.lock().expect("supervisors").values() {
            s.kill_now();
        }
        for e in self.inner.extras.lock().expect("extras").values().flatten() {
            e.supervisor.kill_now();
        }
    }
}

impl Inner {
    fn root(&self) -> PathBuf {
        self.data_dir.join("deployments")
    }

    fn deployment_dir(&self, id: &DeploymentId) -> PathBuf {
        self.root().join(&id.namespace).join(&id.module).join(&id.name)
    }

    fn slots(&self, id: &DeploymentId, port: u16) -> SlotValues {
        SlotValues {
            host: HOST.into(),
            port,
            data_dir: self.deployment_dir(id).join("data").display().to_string(),
            python: self.python.clone(),
        }
    }

    fn lock_for(&self, id: &DeploymentId) -> Arc<AsyncMutex<()>> {
        self.locks.lock().expect("locks").entry(id.clone()).or_default().clone()
    }

    fn check_open(&self) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    fn journal(self: &Arc<Self>) -> Weak<dyn Journal> {
        let weak: Weak<Inner> = Arc::downgrade(self);
        weak
    }

    async fn entry(&self, id: &DeploymentId) -> Option<Entry> {
        self.state.lock().await.file.deployments.get(&key(id)).cloned()
    }

    /// Changes the state under its mutex, then writes the snapshot after releasing it.
    async fn update<R>(&self, f: impl FnOnce(&mut StateFile) -> R) -> Result<R> {
        let (out, snapshot) = {
            let mut state = self.state.lock().await;
            let out = f(&mut state.file);
            (out, state.snapshot()?)
        };
        self.store.write(snapshot).await?;
        Ok(out)
    }

    /// The supervised process, when it runs.
    fn running(&self, id: &DeploymentId) -> Option<Identity> {
        self.supervisors.lock().expect("supervisors").get(id).and_then(Supervisor::running)
    }

    /// Hands a workload to its supervisor; refused (and the workload stopped) while shutting down.
    async fn register(&self, id: &DeploymentId, supervisor: Supervisor) -> Result<()> {
        let refused = {
            let mut map = self.supervisors.lock().expect("supervisors");
            if self.closing.load(Ordering::SeqCst) {
                Some((supervisor, None))
            } else {
                map.insert(id.clone(), supervisor).map(|old| (old, Some(())))
            }
        };
        match refused {
            Some((s, None)) => {
                s.stop().await;
                Err(Error::ShuttingDown)
            }
            Some((old, Some(()))) => {
                tracing::warn!(deployment = %id, "replaced a supervisor that was still registered");
                old.stop().await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Stops the deployment's workload (every replica): through its supervisor, or (not supervised, e.g. before
    /// a restore reached it) by its recorded identity. Whether anything ran.
    async fn stop_workload(&self, id: &DeploymentId, recorded: Option<&Identity>) -> bool {
        let extras = self.stop_extras(id).await > 0;
        let supervisor = self.supervisors.lock().expect("supervisors").remove(id);
        let stopped = match supervisor {
            Some(s) => {
                let ran = s.running().is_some();
                s.stop().await;
                ran
            }
            None => match recorded {
                Some(identity) => identity.stop(supervisor::STOP_GRACE).await,
                None => false,
            },
        };
        process::remove_pidfile(&self.deployment_dir(id)).await;
        stopped || extras
    }

    async fn remove_dir(&self, id: &DeploymentId) {
        let dir = self.deployment_dir(id);
        let shown = dir.display().to_string();
        let removed = state::blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", dir)(e)),
            _ => Ok(()),
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(dir = %shown, error = %e, "could not remove deployment data");
        }
    }

    async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Bounded: an apply that registers after `closing` is refused, so this drains.
        for _ in 0..16 {
            let mut all: Vec<Supervisor> =
                self.supervisors.lock().expect("supervisors").drain().map(|(_, s)| s).collect();
            all.extend(self.extras.lock().expect("extras").drain().flat_map(|(_, v)| v).map(|e| e.supervisor));
            if all.is_empty() {
                break;
            }
            futures::future::join_all(all.into_iter().map(Supervisor::stop)).await;
        }
        self.dir_lock.lock().expect("dir lock").take();
    }
}

#[async_trait]
impl Journal for Inner {
    async fn restarted(&self, id: &DeploymentId, replica: usize, old: Option<Identity>, new: Identity) {
        let saved = self
            .update(|s| {
                let Some(w) = s.deployments.get_mut(&key(id)).and_then(|e| e.workload.as_mut()) else { return false };
                if replica == 0 {
                    if w.process != old {
                        return false;
                    }
                    w.process = Some(new);
                    return true;
                }
                // Only a replica still recorded: one being stopped was removed first and stays so.
                match w.extras.iter_mut().find(|x| x.index == replica && Some(&x.process) == old.as_ref()) {
                    Some(x) => {
                        x.process = new;
                        true
                    }
                    None => false,
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(deployment = %id, replica, error = %e, "could not record the restarted workload");
        }
    }

    async fn gave_up(&self, id: &DeploymentId, replica: usize, last: Option<Identity>, reason: String) {
        let saved = self
            .update(|s| {
                let Some(e) = s.deployments.get_mut(&key(id)) else { return };
                if replica > 0 {
                    // An extra that gave up runs no more: nothing to adopt after a restart. The
                    // deployment stays as it is (replica 0 still serves).
                    if let Some(w) = e.workload.as_mut() {
                        w.extras.retain(|x| x.index != replica || Some(&x.process) != last.as_ref());
                    }
                    return;
                }
                if let Some(w) = e.workload.as_mut().filter(|w| w.process == last) {
                    w.process = None;
                    e.record.status = super::Status::Failed;
                    e.record.message = reason;
                    e.record.updated_at = super::now_rfc3339();
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(deployment = %id, replica, error = %e, "could not record the failed workload");
        }
    }

    fn endpoints_changed(&self) {
        Inner::endpoints_changed(self);
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> super::Kind {
        super::Kind::Local
    }

    async fn preflight(&self, plan: &Plan) -> super::Result<()> {
        let module = plan.id.module.clone();
        let Some(recipe) = &plan.local else {
            return Err(Error::NoLocalRecipe { module, version: plan.version.clone() }.into());
        };
        let recipe = recipe.command(&self.inner.slots(&plan.id, 0));
        if find_program(&recipe.program).is_none() {
            return Err(Error::MissingProgram {
                module,
                program: recipe.program.clone(),
                hint: "; install it, or deploy to a Kubernetes cluster (serve --backend kube)".into(),
            }
            .into());
        }
        if recipe.args.iter().any(|a| a == "jac_splice.server") {
            let ok = Command::new(&recipe.program)
                .args(["-c", "import jac_splice.server"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(Error::MissingProgram {
                    module,
                    program: format!("{} -m jac_splice.server", recipe.program),
                    hint: " (the jac-splice Python package is not installed for that interpreter: pip install ./python, or set --python / JAC_ORC_PYTHON)".into(),
                }
                .into());
            }
        }
        Ok(())
    }

    async fn apply(&self, plan: &Plan, opts: &ApplyOptions, progress: &Progress) -> super::Result<DeploymentRecord> {
        Ok(self.inner.apply(plan, opts, progress).await?)
    }

    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> super::Result<()> {
        self.inner.delete(id, progress).await
    }

    async fn get(&self, id: &DeploymentId) -> super::Result<Option<DeploymentRecord>> {
        Ok(self.inner.entry(id).await.map(|e| e.record))
    }

    async fn list(&self) -> super::Result<Vec<DeploymentRecord>> {
        Ok(self.inner.state.lock().await.file.deployments.values().map(|e| e.record.clone()).collect())
    }

    async fn history(&self, id: &DeploymentId) -> super::Result<Vec<super::Revision>> {
        Ok(self.inner.history(id).await)
    }

    async fn record_revision(
        &self,
        id: &DeploymentId,
        revision: super::Revision,
        limit: usize,
    ) -> super::Result<super::Revision> {
        Ok(self.inner.record_revision(id, revision, limit).await?)
    }

    async fn module_endpoints(&self, id: &DeploymentId) -> super::Result<Vec<String>> {
        Ok(self.inner.ready_endpoints(id).await?.into_iter().map(|e| e.address).collect())
    }

    /// Follows the deployment's processes (replica 0 and the extras) as they become ready,
    /// restart or stop: every change of a supervised process wakes the watchers.
    fn watch_endpoints(&self, id: &DeploymentId) -> Option<super::endpoints::EndpointStream> {
        Some(replicas::watch(self.inner.clone(), id.clone()))
    }

    async fn scale_to_zero(&self, id: &DeploymentId) -> super::Result<bool> {
        self.inner.scale_to_zero(id).await
    }

    async fn wake(&self, id: &DeploymentId, wait: Duration) -> super::Result<bool> {
        self.inner.wake(id, wait).await
    }

    /// Each replica's `process.log` (`logs.rs`).
    async fn logs(&self, id: &DeploymentId, opts: &super::LogOptions) -> super::Result<super::LogStream> {
        if self.inner.entry(id).await.is_none() {
            return Err(super::Error::NotFound(id.clone()));
        }
        Ok(logs::stream(self.inner.deployment_dir(id), *opts))
    }

    /// Stops every workload (records stay: the next start brings them back on the same ports)
    /// and releases the data dir.
    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    let executable =
        |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_and_missing_ones_are_not() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-jac-orc").is_none());
    }
}
