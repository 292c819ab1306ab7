//! After an orchestrator restart (or crash): adopt, reap, bring up.
//!
//! [`Inner::recover`] runs once, before any apply or delete: every recorded workload that should
//! run and still runs as recorded (pid + start time + boot id) is adopted, unrestarted, and so is
//! every recorded extra replica its configuration still asks for (`replicas.rs`); every
//! other process found in the data dir (by pidfile, working directory or marker variable) is
//! reaped, and directories without a record are removed. [`Inner::bring_up_all`] then starts
//! the workloads that should run but do not, on their recorded ports (then the extras not
//! adopted, on new ones), and finishes deploys a
//! crash interrupted (`deploying` records become `deployed` once ready; a first deploy that
//! cannot become ready is removed like any failed first deploy).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::Error;
use super::ports::Reserved;
use super::process::{self, Identity};
use super::readiness::{self, Target};
use super::replicas::{self, Extra};
use super::state::{self, Entry, ExtraProcess};
use super::supervisor::{self, Start, Supervisor};
use super::{key, Inner, DEFAULT_READY_TIMEOUT};
use crate::backend::{now_rfc3339, Progress, Status};
use crate::plan::{DeploymentId, LocalRecipe};

/// Upper bound on directories looked at when removing leftovers (per level).
const MAX_DIRS: usize = 100_000;

impl Inner {
    /// Adoption and reaping; runs once, whoever asks first.
    pub(super) async fn recover(self: &Arc<Self>) {
        self.recovered.get_or_init(|| self.recover_once()).await;
    }

    async fn recover_once(self: &Arc<Self>) {
        let entries: Vec<Entry> = self.state.lock().await.file.deployments.values().cloned().collect();
        let mut adopted: Vec<Identity> = Vec::new();
        let mut reap: Vec<Identity> = Vec::new();
        for entry in &entries {
            let id = &entry.record.id;
            let Some(w) = &entry.workload else { continue };
            if let Some(identity) = w.process.clone().filter(Identity::is_alive) {
                if w.run && self.adopt(entry, identity.clone()).await {
                    adopted.push(identity);
                } else {
                    reap.push(identity);
                }
            }
            // Each extra on its own: one whose replica 0 died keeps the sessions it holds.
            let want = replicas::wanted(&entry.record.config);
            for x in w.extras.iter().filter(|x| x.process.is_alive()) {
                if w.run && (1..want).contains(&x.index) && self.adopt_extra(entry, x).await {
                    adopted.push(x.process.clone());
                } else {
                    reap.push(x.process.clone());
                }
            }
            if let Some(pid) = w.legacy_pid {
                let command = w.recipe.unseal(&entry.record.config).ok().map(|r| r.command(&self.slots(id, w.port)));
                if let (Some(identity), Some(c)) = (Identity::of(pid), command) {
                    if runs(pid, &c.program, &c.args) {
                        reap.push(identity);
                    }
                }
            }
            if let Some(identity) = process::read_pidfile(&self.deployment_dir(id)).filter(Identity::is_alive) {
                reap.push(identity);
            }
        }
        for stray in process::strays(&self.root()) {
            let entry = entries.iter().find(|e| self.deployment_dir(&e.record.id) == stray.dir);
            let program = entry.and_then(|e| {
                let w = e.workload.as_ref()?;
                Some(w.recipe.unseal(&e.record.config).ok()?.command(&self.slots(&e.record.id, w.port)).program)
            });
            if stray.is_ours(program.as_deref()) {
                reap.push(stray.identity);
            } else {
                tracing::warn!(pid = stray.identity.pid, program = %stray.program, dir = %stray.dir.display(), "a process that is not a workload has its working directory in the data dir; leaving it alone");
            }
        }
        let adopted_group = |i: &Identity| {
            adopted.iter().any(|a| a.pid == i.pid || process::stat(i.pid).is_some_and(|s| s.pgrp == a.pid as i32))
        };
        reap.retain(|i| !adopted_group(i));
        reap.sort_by_key(|i| i.pid);
        reap.dedup();
        for identity in &reap {
            tracing::warn!(pid = identity.pid, "reaping a process a previous jac-orc left in the data dir");
        }
        futures::future::join_all(reap.iter().map(|i| i.stop(supervisor::STOP_GRACE))).await;
        let known: Vec<PathBuf> = entries.iter().map(|e| self.deployment_dir(&e.record.id)).collect();
        let root = self.root();
        if let Err(e) = state::blocking(move || remove_leftovers(&root, &known)).await {
            tracing::warn!(error = %e, "could not remove leftover deployment directories");
        }
        let converted = self.converted;
        let saved = self
            .update(|s| {
                for e in s.deployments.values_mut() {
                    if let Some(w) = e.workload.as_mut() {
                        w.legacy_pid = None;
                        if w.process.as_ref().is_some_and(|p| !adopted.contains(p)) {
                            w.process = None;
                        }
                        // The others were reaped or are gone: bring-up starts them afresh.
                        w.extras.retain(|x| adopted.contains(&x.process));
                    }
                }
            })
            .await;
        match saved {
            Ok(()) if converted => tracing::info!("state file rewritten in the current format"),
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "could not save the recovered state"),
        }
        tracing::info!(adopted = adopted.len(), reaped = reap.len(), "local workloads recovered");
    }

    /// Supervises a live recorded workload; a `deploying` one stays in probation until
    /// [`Inner::bring_up`] sees it ready.
    async fn adopt(self: &Arc<Self>, entry: &Entry, identity: Identity) -> bool {
        let id = &entry.record.id;
        let Some((recipe, program, port)) = self.recorded_launch(entry) else { return false };
        let launch = self.launch(id, &recipe, port, program).await;
        let confirmed = entry.record.status != Status::Deploying;
        tracing::info!(deployment = %id, pid = identity.pid, port, "adopting a running workload");
        let s = Supervisor::start(id.clone(), launch, Start::Adopted(identity), confirmed, self.journal());
        self.register(id, s).await.is_ok()
    }

    /// Supervises a live recorded extra replica on its recorded port (held again). Confirmed at
    /// once: it was started (and recorded) by a previous orchestrator, so a death restarts it.
    async fn adopt_extra(self: &Arc<Self>, entry: &Entry, x: &ExtraProcess) -> bool {
        let id = &entry.record.id;
        let Some((recipe, program, _)) = self.recorded_launch(entry) else { return false };
        if !self.reserved.lock().expect("reserved ports").insert(x.port) {
            tracing::warn!(deployment = %id, replica = x.index, port = x.port, "the port of a running replica is held by another; not adopting it");
            return false;
        }
        let reserved = Reserved::new(x.port, self.reserved.clone());
        let launch = self.extra_launch(id, &recipe, x.port, program, x.index).await;
        tracing::info!(deployment = %id, replica = x.index, pid = x.process.pid, port = x.port, "adopting a running replica");
        let s = Supervisor::start(id.clone(), launch, Start::Adopted(x.process.clone()), true, self.journal());
        match self.register_extra(id, Extra::new(x.index, reserved, s)) {
            Ok(()) => {
                self.endpoints_changed();
                true
            }
            Err(refused) => {
                refused.supervisor.stop().await;
                false
            }
        }
    }

    /// The recorded recipe of a deployment, the interpreter it runs with (its virtualenv's, when
    /// it installs packages) and replica 0's port.
    fn recorded_launch(&self, entry: &Entry) -> Option<(LocalRecipe, Option<String>, u16)> {
        let w = entry.workload.as_ref()?;
        let recipe = w.recipe.unseal(&entry.record.config).ok()?;
        let program = (!recipe.packages.is_empty()).then(|| {
            self.deployment_dir(&entry.record.id).join("venv").join("bin").join("python").display().to_string()
        });
        Some((recipe, program, w.port))
    }

    /// Starts every workload that should run and does not; waits (bounded) until each answers.
    pub(super) async fn bring_up_all(self: &Arc<Self>) {
        let ids: Vec<DeploymentId> = self
            .state
            .lock()
            .await
            .file
            .deployments
            .values()
            .filter(|e| e.workload.as_ref().is_some_and(|w| w.run))
            .map(|e| e.record.id.clone())
            .collect();
        futures::future::join_all(ids.iter().map(|id| self.bring_up(id))).await;
    }

    async fn bring_up(self: &Arc<Self>, id: &DeploymentId) {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let _ = self.bring_up_held(id, DEFAULT_READY_TIMEOUT).await;
    }

    /// Starts the recorded workload of `id` unless it runs (the deployment's lock held) and
    /// waits up to `timeout` until it answers; the error says why it did not.
    pub(super) async fn bring_up_held(
        self: &Arc<Self>,
        id: &DeploymentId,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        let gone = || Err(format!("deployment {id} has no workload to start"));
        if self.check_open().is_err() {
            return Err(Error::ShuttingDown.to_string());
        }
        let Some(entry) = self.entry(id).await else { return gone() };
        let Some(w) = entry.workload.clone().filter(|w| w.run) else { return gone() };
        // A deploy a crash interrupted must show it works; a deployed one just comes back.
        let strict = entry.record.status == Status::Deploying;
        let adopted = self.supervisors.lock().expect("supervisors").get(id).map(Supervisor::life);
        let spawned = adopted.is_none();
        let result = async {
            let recipe = w.recipe.unseal(&entry.record.config)?;
            let mut life = match adopted {
                Some(life) => life,
                None => {
                    let program = self.prepare(id, &recipe, w.port, &Progress::discard()).await?;
                    let launch = self.launch(id, &recipe, w.port, program).await;
                    let (identity, life) = self.spawn_supervised(id, launch, !strict).await?;
                    tracing::info!(deployment = %id, pid = identity.pid, port = w.port, "started a recorded workload");
                    life
                }
            };
            let object = super::process_ref(id).kubectl_name();
            let target = Target { port: w.port, readiness: &recipe.readiness, object: &object };
            let waited = readiness::wait(target, &mut life, strict, timeout, &Progress::discard()).await;
            if waited.is_ok() {
                self.bring_up_extras(id, &entry.record.config, &recipe, w.port).await;
            }
            waited
        }
        .await;
        if self.check_open().is_err() {
            // Stopped by an orderly shutdown: not a failure; the next start tries again.
            return Err(Error::ShuttingDown.to_string());
        }
        let confirmed = self.supervisors.lock().expect("supervisors").get(id).is_some_and(Supervisor::confirm);
        let object = || super::process_ref(id).kubectl_name();
        let outcome = match result {
            Ok(_) if confirmed => Ok(()),
            Ok(_) => Err(Error::Exited { object: object(), reason: "exited as it became ready".into() }),
            Err(e) => Err(e),
        };
        let update = match (outcome, strict) {
            (Ok(()), _) => {
                tracing::info!(deployment = %id, port = w.port, "local workload is back");
                // A finished interrupted deploy, or one that had given up and now runs again.
                let recovered = strict || (spawned && entry.record.status == Status::Failed);
                if !recovered {
                    return Ok(());
                }
                Change::Deployed
            }
            (Err(e), false) => {
                tracing::error!(deployment = %id, "local workload did not come back: {}", e.reason());
                if self.supervisors.lock().expect("supervisors").contains_key(id) {
                    // Its supervisor keeps trying (and records when it gives up).
                    return Err(e.reason());
                }
                Change::Failed(format!("could not start after a restart: {e}"))
            }
            (Err(e), true) => {
                tracing::error!(deployment = %id, "an interrupted deploy could not finish: {}", e.reason());
                self.stop_workload(id, None).await;
                if entry.fresh {
                    Change::Remove
                } else {
                    Change::Stopped(format!("an interrupted deploy could not finish: {e}"))
                }
            }
        };
        let remove = matches!(update, Change::Remove);
        let failure = match &update {
            Change::Deployed => None,
            Change::Failed(m) | Change::Stopped(m) => Some(m.clone()),
            Change::Remove => Some("an interrupted first deploy could not finish".to_string()),
        };
        let saved = self
            .update(|s| {
                if remove {
                    s.deployments.remove(&key(id));
                    return;
                }
                let Some(e) = s.deployments.get_mut(&key(id)) else { return };
                e.record.updated_at = now_rfc3339();
                match update {
                    Change::Deployed => {
                        e.record.status = Status::Deployed;
                        e.record.message.clear();
                        e.fresh = false;
                    }
                    Change::Failed(message) => {
                        e.record.status = Status::Failed;
                        e.record.message = message;
                    }
                    Change::Stopped(message) => {
                        e.record.status = Status::Failed;
                        e.record.message = message;
                        if let Some(w) = e.workload.as_mut() {
                            w.run = false;
                            w.process = None;
                        }
                    }
                    Change::Remove => {}
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(deployment = %id, error = %e, "could not record the outcome of bringing the workload back");
        }
        if remove {
            self.remove_dir(id).await;
        }
        failure.map_or(Ok(()), Err)
    }
}

/// What bringing a workload back changes in its record.
enum Change {
    Deployed,
    /// It does not run; the next start tries again.
    Failed(String),
    /// An interrupted redeploy that cannot finish: failed, not run again.
    Stopped(String),
    /// An interrupted first deploy that cannot finish: gone, like any failed first deploy.
    Remove,
}

/// Whether `pid` runs exactly `program args` (how a previous version's pid is recognised).
fn runs(pid: u32, program: &str, args: &[String]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut words = cmdline.split(|b| *b == 0).map(|w| String::from_utf8_lossy(w).into_owned());
    let first = words.next().unwrap_or_default();
    let base = |s: &str| Path::new(s).file_name().map(|f| f.to_owned());
    base(&first) == base(program) && words.filter(|w| !w.is_empty()).eq(args.iter().filter(|a| !a.is_empty()).cloned())
}

/// Removes `<root>/<ns>/<module>/<name>` directories no record names (a crash during delete).
fn remove_leftovers(root: &Path, known: &[PathBuf]) -> super::Result<()> {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|it| it.take(MAX_DIRS).flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default()
    };
    for ns in dirs(root) {
        for module in dirs(&ns) {
            for name in dirs(&module) {
                if !known.contains(&name) {
                    tracing::warn!(dir = %name.display(), "removing a deployment directory without a record");
                    std::fs::remove_dir_all(&name).map_err(super::Error::io("remove", &name))?;
                }
            }
        }
    }
    Ok(())
}
