//! The local backend: runs a deployment's workload as a child process on 127.0.0.1 from the
//! template's `local.yaml` recipe, so `jac-orc serve` works on a laptop with no cluster.
//!
//! The rendered objects are kept in a local object store (the state file), which gives honest
//! `created`/`configured`/`unchanged` lines. Records survive an orchestrator restart; workloads
//! are stopped when the orchestrator stops and started again (same port when free) when it
//! comes back. A workload that dies is restarted with backoff, a bounded number of times.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::{
    now_rfc3339, Action, ApplyOptions, Backend, DeploymentRecord, Error, ObjectEvent, Progress, Result, Status,
};
use crate::plan::{DeploymentId, LocalRecipe, ObjectRef, Plan, Readiness, Section, SlotValues};

const STATE_FILE: &str = "local-state.json";
/// How long a fresh workload may take to become ready when the caller did not ask to wait.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_RESTARTS: u32 = 10;
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub data_dir: PathBuf,
    /// Interpreter for python-module deployments (`--python` / `JAC_ORC_PYTHON`).
    pub python: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredObject {
    object: ObjectRef,
    manifest: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WorkloadState {
    recipe: LocalRecipe,
    port: u16,
    #[serde(default)]
    pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    record: DeploymentRecord,
    objects: Vec<StoredObject>,
    workload: Option<WorkloadState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    deployments: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    pid: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
pub struct LocalBackend {
    opts: LocalOptions,
    state: AsyncMutex<StateFile>,
    running: Mutex<HashMap<DeploymentId, Running>>,
}

fn key(id: &DeploymentId) -> String {
    id.to_string()
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
    /// Opens (or creates) the state under `opts.data_dir`. Call [`LocalBackend::restore`] to start
    /// the workloads of deployments recorded by a previous run.
    pub fn open(opts: LocalOptions) -> Result<Self> {
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|e| Error::Internal(format!("cannot create data dir {}: {e}", opts.data_dir.display())))?;
        let path = opts.data_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("state file {} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(Error::Internal(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(LocalBackend { opts, state: AsyncMutex::new(state), running: Mutex::default() })
    }

    fn deployment_dir(&self, id: &DeploymentId) -> PathBuf {
        self.opts.data_dir.join("deployments").join(&id.namespace).join(&id.module).join(&id.name)
    }

    fn save(&self, state: &StateFile) -> Result<()> {
        let path = self.opts.data_dir.join(STATE_FILE);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
    }

    /// Starts the workloads of deployments recorded as deployed (after an orchestrator restart).
    pub async fn restore(self: &Arc<Self>) {
        let entries: Vec<Entry> = self.state.lock().await.deployments.values().cloned().collect();
        for entry in entries {
            let (Some(w), Status::Deployed) = (entry.workload.clone(), entry.record.status) else {
                continue;
            };
            let id = entry.record.id.clone();
            if let Some(pid) = w.pid {
                stop_stale(pid, &w.recipe.command(&self.slots(&id, w.port)).program);
            }
            let port = if port_is_free(w.port) { w.port } else { free_port().unwrap_or(w.port) };
            let recipe = w.recipe.clone();
            match self.start_workload(&id, &recipe, port, DEFAULT_READY_TIMEOUT, &Progress::discard()).await {
                Ok(pid) => {
                    let mut state = self.state.lock().await;
                    if let Some(e) = state.deployments.get_mut(&key(&id)) {
                        e.workload = Some(WorkloadState { recipe, port, pid: Some(pid) });
                        e.record.endpoints = vec![format!("127.0.0.1:{port}")];
                    }
                    let _ = self.save(&state);
                    tracing::info!(deployment = %id, port, "restored local workload");
                }
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "could not restore local workload")
                }
            }
        }
    }

    fn slots(&self, id: &DeploymentId, port: u16) -> SlotValues {
        SlotValues {
            host: "127.0.0.1".into(),
            port,
            data_dir: self.deployment_dir(id).join("data").display().to_string(),
            python: self.opts.python.clone(),
        }
    }

    /// Spawns the workload, waits for readiness, then hands it to a supervisor task.
    async fn start_workload(
        &self,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        port: u16,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<u32> {
        let dir = self.deployment_dir(id);
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let command = recipe.command(&self.slots(id, port));
        let program = if recipe.packages.is_empty() {
            command.program.clone()
        } else {
            progress
                .send(
                    ObjectEvent::new(process_ref(id), Action::Waiting)
                        .with_message(format!("installing {}", recipe.packages.join(" "))),
                )
                .await;
            prepare_venv(&dir, &command.program, &recipe.packages).await?
        };
        let launch = Launch { program, args: command.args, env: command.env, log: dir.join("process.log") };
        let mut child = launch.spawn()?;
        let pid = child.id().unwrap_or(0);
        let object = process_ref(id).kubectl_name();
        if let Err(e) = wait_ready(&mut child, port, &recipe.readiness, timeout, &launch.log, &object).await {
            terminate(&mut child).await;
            return Err(e);
        }
        let stop = CancellationToken::new();
        let pid_cell = Arc::new(AtomicU32::new(pid));
        let task = tokio::spawn(supervise(id.clone(), launch, child, stop.clone(), pid_cell.clone()));
        self.running.lock().expect("running lock").insert(id.clone(), Running { stop, pid: pid_cell, task });
        Ok(pid)
    }

    async fn stop_workload(&self, id: &DeploymentId) -> bool {
        let running = self.running.lock().expect("running lock").remove(id);
        match running {
            Some(r) => {
                r.stop.cancel();
                let _ = tokio::time::timeout(STOP_GRACE * 2, r.task).await;
                true
            }
            None => false,
        }
    }

    fn is_running(&self, id: &DeploymentId) -> bool {
        self.running.lock().expect("running lock").get(id).is_some_and(|r| r.pid.load(Ordering::Relaxed) != 0)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn preflight(&self, plan: &Plan) -> Result<()> {
        let module = plan.id.module.clone();
        let Some(recipe) = &plan.local else {
            return Err(Error::NoLocalRecipe { module, version: plan.version.clone() });
        };
        let recipe = recipe.command(&self.slots(&plan.id, 0));
        if find_program(&recipe.program).is_none() {
            return Err(Error::MissingProgram {
                module,
                program: recipe.program.clone(),
                hint: "; install it, or deploy to a Kubernetes cluster (serve --backend kube)".into(),
            });
        }
        if recipe.args.iter().any(|a| a == "jac_splice.server") {
            let ok = Command::new(&recipe.program)
                .args(["-c", "import jac_splice.server"])
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
                });
            }
        }
        Ok(())
    }

    async fn apply(&self, plan: &Plan, opts: &ApplyOptions, progress: &Progress) -> Result<DeploymentRecord> {
        let id = &plan.id;
        let previous = self.state.lock().await.deployments.get(&key(id)).cloned();

        // Objects: compare with the stored manifests.
        let mut stored = Vec::with_capacity(plan.objects.len());
        for o in &plan.objects {
            let before = previous.as_ref().and_then(|p| p.objects.iter().find(|s| same_object(&s.object, &o.object)));
            let action = match before {
                None => Action::Created,
                Some(b) if b.manifest == o.manifest => Action::Unchanged,
                Some(_) => Action::Configured,
            };
            progress.send(ObjectEvent::new(o.object.clone(), action)).await;
            stored.push(StoredObject { object: o.object.clone(), manifest: o.manifest.clone() });
        }
        if let Some(prev) = &previous {
            for old in prev.objects.iter().filter(|s| !plan.objects.iter().any(|o| same_object(&o.object, &s.object))) {
                progress
                    .send(
                        ObjectEvent::new(old.object.clone(), Action::Deleted).with_message("no longer in the template"),
                    )
                    .await;
            }
        }

        // The workload.
        let prev_workload = previous.as_ref().and_then(|p| p.workload.clone());
        let port = match &prev_workload {
            Some(w) => w.port,
            None => free_port()?,
        };
        let recipe = plan
            .local
            .clone()
            .ok_or_else(|| Error::NoLocalRecipe { module: id.module.clone(), version: plan.version.clone() })?;
        let unchanged = prev_workload.as_ref().is_some_and(|w| w.recipe == recipe) && self.is_running(id);
        let mut record = DeploymentRecord {
            id: id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints: vec![format!("127.0.0.1:{port}")],
            status: Status::Deployed,
            message: String::new(),
            objects: stored.iter().map(|s| s.object.clone()).collect(),
            backend: self.name().into(),
            updated_at: now_rfc3339(),
        };
        let pid = if unchanged {
            progress
                .send(
                    ObjectEvent::new(process_ref(id), Action::Unchanged)
                        .with_message(format!("running on 127.0.0.1:{port}")),
                )
                .await;
            prev_workload.and_then(|w| w.pid)
        } else {
            if self.stop_workload(id).await {
                progress
                    .send(
                        ObjectEvent::new(process_ref(id), Action::Stopped)
                            .with_message("restarting with the new settings"),
                    )
                    .await;
            }
            let timeout = opts.wait.unwrap_or(DEFAULT_READY_TIMEOUT);
            match self.start_workload(id, &recipe, port, timeout, progress).await {
                Ok(pid) => {
                    let ev = ObjectEvent::new(process_ref(id), Action::Started)
                        .with_message(format!("{} ready on 127.0.0.1:{port} (pid {pid})", recipe.protocol));
                    progress.send(ev).await;
                    Some(pid)
                }
                Err(e) => {
                    let reason = match &e {
                        Error::WorkloadFailed { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    progress.send(ObjectEvent::new(process_ref(id), Action::Failed).with_message(reason)).await;
                    record.status = Status::Failed;
                    record.message = e.to_string();
                    record.endpoints.clear();
                    let mut state = self.state.lock().await;
                    state.deployments.insert(key(id), Entry { record, objects: stored, workload: None });
                    self.save(&state)?;
                    return Err(e);
                }
            }
        };
        let mut state = self.state.lock().await;
        state.deployments.insert(
            key(id),
            Entry { record: record.clone(), objects: stored, workload: Some(WorkloadState { recipe, port, pid }) },
        );
        self.save(&state)?;
        Ok(record)
    }

    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> Result<()> {
        let entry =
            self.state.lock().await.deployments.get(&key(id)).cloned().ok_or_else(|| Error::NotFound(id.clone()))?;
        if self.stop_workload(id).await || entry.workload.is_some() {
            progress.send(ObjectEvent::new(process_ref(id), Action::Stopped)).await;
        }
        for o in entry.objects.iter().rev() {
            progress.send(ObjectEvent::new(o.object.clone(), Action::Deleted)).await;
        }
        let dir = self.deployment_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove deployment data");
            }
        }
        let mut state = self.state.lock().await;
        state.deployments.remove(&key(id));
        self.save(&state)
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        Ok(self.state.lock().await.deployments.get(&key(id)).map(|e| e.record.clone()))
    }

    async fn list(&self) -> Result<Vec<DeploymentRecord>> {
        Ok(self.state.lock().await.deployments.values().map(|e| e.record.clone()).collect())
    }

    async fn module_endpoints(&self, id: &DeploymentId) -> Result<Vec<String>> {
        let state = self.state.lock().await;
        let entry = state.deployments.get(&key(id)).ok_or_else(|| Error::NotFound(id.clone()))?;
        if !self.is_running(id) {
            return Ok(Vec::new());
        }
        Ok(entry.record.endpoints.clone())
    }

    async fn shutdown(&self) {
        let all: Vec<DeploymentId> = self.running.lock().expect("running lock").keys().cloned().collect();
        for id in all {
            self.stop_workload(&id).await;
        }
    }
}

fn same_object(a: &ObjectRef, b: &ObjectRef) -> bool {
    a.api_version == b.api_version && a.kind == b.kind && a.name == b.name && a.namespace == b.namespace
}

#[derive(Debug, Clone)]
struct Launch {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::Internal(format!("cannot open {}: {e}", self.log.display())))?;
        let log2 = log.try_clone().map_err(|e| Error::Internal(e.to_string()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log).stderr(log2).kill_on_drop(true);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.spawn()
            .map_err(|e| Error::WorkloadFailed { object: self.program.clone(), reason: format!("cannot start: {e}") })
    }
}

/// Waits until the workload answers, failing early (with its log) if it exits.
async fn wait_ready(
    child: &mut Child,
    port: u16,
    readiness: &Readiness,
    timeout: Duration,
    log: &Path,
    object: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::WorkloadFailed {
                object: object.into(),
                reason: format!("exited with {status} before it was ready: {}", log_tail(log)),
            });
        }
        let ready = match readiness {
            Readiness::Tcp => tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
            Readiness::GrpcHealth { service } => grpc_serving(port, service).await,
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout { timeout, not_ready: vec![object.to_string()] });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

async fn grpc_serving(port: u16, service: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect_timeout(Duration::from_millis(500)).connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest { service: service.to_string() };
    match tokio::time::timeout(Duration::from_secs(2), client.check(req)).await {
        Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

/// Last lines of a workload's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    // The last lines carry the reason (a Python traceback ends with the exception).
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~')).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

/// Keeps a workload running: restarts it with backoff when it dies, stops it on cancel.
async fn supervise(id: DeploymentId, launch: Launch, mut child: Child, stop: CancellationToken, pid: Arc<AtomicU32>) {
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        tokio::select! {
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                pid.store(0, Ordering::Relaxed);
                return;
            }
            status = child.wait() => {
                pid.store(0, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(60) {
                    restarts = 0;
                }
                restarts += 1;
                tracing::warn!(deployment = %id, ?status, restarts, "local workload exited: {}", log_tail(&launch.log));
                if restarts > MAX_RESTARTS {
                    tracing::error!(deployment = %id, "local workload keeps dying; giving up after {MAX_RESTARTS} restarts");
                    return;
                }
                let backoff = Duration::from_millis(250 * 2u64.pow(restarts.min(7)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match launch.spawn() {
                    Ok(c) => {
                        pid.store(c.id().unwrap_or(0), Ordering::Relaxed);
                        child = c;
                    }
                    Err(e) => {
                        tracing::error!(deployment = %id, error = %e, "restart failed");
                        return;
                    }
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after a grace period.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Kills a workload left over by an orchestrator that died without stopping it, if the pid
/// still runs the same program.
fn stop_stale(pid: u32, program: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = cmdline.split(|b| *b == 0).next().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
    let base = |s: &str| Path::new(s).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    if !first.is_empty() && base(&first) == base(program) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

/// A per-deployment virtualenv (seeing the interpreter's own packages, e.g. jac_splice) with
/// the requested packages; reused while the package list stays the same.
async fn prepare_venv(dir: &Path, python: &str, packages: &[String]) -> Result<String> {
    let venv = dir.join("venv");
    let marker = venv.join(".jac-orc-packages");
    let wanted = packages.join("\n");
    let venv_python = venv.join("bin").join("python").display().to_string();
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(venv_python);
    }
    let run = |program: String, args: Vec<String>, what: &'static str| async move {
        let out =
            Command::new(&program).args(&args).stdin(Stdio::null()).output().await.map_err(|e| {
                Error::WorkloadFailed { object: what.into(), reason: format!("cannot run {program}: {e}") }
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            Err(Error::WorkloadFailed {
                object: what.into(),
                reason: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            })
        }
    };
    run(
        python.to_string(),
        vec!["-m".into(), "venv".into(), "--system-site-packages".into(), venv.display().to_string()],
        "virtualenv",
    )
    .await?;
    let mut args = vec!["-m".into(), "pip".into(), "install".into(), "--disable-pip-version-check".into(), "-q".into()];
    args.extend(packages.iter().cloned());
    run(venv_python.clone(), args, "pip install").await?;
    std::fs::write(&marker, wanted).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(venv_python)
}

fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| executable(p))
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Internal(format!("no free port: {e}")))
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
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
