//! Apply and delete, one deployment at a time (per-deployment lock).
//!
//! Apply: objects are compared with the stored digests; a workload that runs (or can be
//! adopted) with the same recipe and the same configuration digest (`backend::rollout`) is left
//! alone. A successful apply writes the object store (`objects.rs`). Otherwise the virtualenv is prepared first (a failure there
//! leaves a running redeploy untouched), then the record is written as `deploying` with its
//! port, the old process stopped, the new one spawned and its identity recorded, and readiness
//! awaited (stopping early when the caller has gone). A dry run stops after the comparison and
//! reports what the apply would do, writing nothing. A failed first deploy removes everything
//! it created (record, directory, virtualenv); a failed redeploy keeps its record (failed) and
//! data.

use std::sync::Arc;

use tokio::sync::watch;

use super::error::{Error, Result};
use super::ports::Reserved;
use super::process::{Identity, Launch};
use super::readiness::{self, Outcome, Target};
use super::state::{self, digest, secret_values, Entry, SealedRecipe, StoredObject, Workload};
use super::supervisor::{Life, Start, Supervisor};
use super::{endpoint, key, process_ref, replicas, venv, Inner, DEFAULT_READY_TIMEOUT, HOST};
use crate::backend::rollout::plan_config_hash;
use crate::backend::{now_rfc3339, Action, ApplyOptions, DeploymentRecord, ObjectEvent, Progress, Status};
use crate::plan::{DeploymentId, LocalRecipe, ObjectRef, Plan, PlannedObject};

/// One apply's facts, for the failure paths.
struct Attempt {
    prev: Option<Entry>,
    /// No successful deploy before: a failure removes everything.
    fresh: bool,
    record: DeploymentRecord,
    objects: Vec<StoredObject>,
    recipe: SealedRecipe,
    port: u16,
    /// What the workload's configuration digests to (`backend::rollout`).
    config_hash: Option<String>,
}

impl Inner {
    pub(super) async fn apply(
        self: &Arc<Self>,
        plan: &Plan,
        opts: &ApplyOptions,
        progress: &Progress,
    ) -> Result<DeploymentRecord> {
        self.recover().await;
        let lock = self.lock_for(&plan.id);
        let _guard = lock.lock().await;
        self.apply_held(plan, opts, progress).await
    }

    /// [`Inner::apply`] for a caller that holds the deployment's lock (the reconcile pass,
    /// which must decide and apply without a Deploy slipping in between).
    pub(super) async fn apply_held(
        self: &Arc<Self>,
        plan: &Plan,
        opts: &ApplyOptions,
        progress: &Progress,
    ) -> Result<DeploymentRecord> {
        let id = &plan.id;
        let recipe = plan
            .local
            .clone()
            .ok_or_else(|| Error::NoLocalRecipe { module: id.module.clone(), version: plan.version.clone() })?;
        self.check_open()?;
        let prev = self.entry(id).await;
        if opts.dry_run {
            return Ok(self.dry_run(plan, &recipe, prev.as_ref(), progress).await);
        }
        let objects = self.report_objects(plan, prev.as_ref(), "", progress).await;
        let (port, reservation) = match prev.as_ref().and_then(|p| p.workload.as_ref()) {
            Some(w) => (w.port, None),
            None => {
                let r = self.reserve_port().await?;
                (r.port, Some(r))
            }
        };
        let record = DeploymentRecord {
            id: id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints: vec![endpoint(port)],
            status: Status::Deployed,
            message: String::new(),
            objects: objects.iter().map(|s| s.object.clone()).collect(),
            backend: crate::backend::Kind::Local,
            updated_at: now_rfc3339(),
            wakeups: prev.as_ref().map_or(0, |p| p.record.wakeups),
        };
        let sealed = SealedRecipe::seal(&recipe, &secret_values(&plan.config, &plan.secret_keys));
        let fresh = prev.as_ref().is_none_or(|p| p.fresh);
        let config_hash = plan_config_hash(&plan.objects, &id.namespace);
        let attempt = Attempt { prev, fresh, record, objects, recipe: sealed, port, config_hash };
        let applied = match self.keep_if_unchanged(&attempt, &recipe, progress).await? {
            Some(record) => Ok(record),
            None => self.start(attempt, &recipe, reservation, opts, progress).await,
        };
        if applied.is_ok() {
            self.store_objects(id, &plan.objects).await;
        }
        applied
    }

    /// Brings the object store of a deployment in line with its plan (under its lock). Returns
    /// what had to be written; a failure is logged (the next reconcile pass tries again).
    pub(super) async fn store_objects(&self, id: &DeploymentId, objects: &[PlannedObject]) -> Vec<ObjectRef> {
        let dir = self.deployment_dir(id);
        let objects = objects.to_vec();
        match super::fs::blocking(move || super::objects::sync(&dir, &objects, false)).await {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(deployment = %id, error = %e, "could not write the local object store");
                Vec::new()
            }
        }
    }

    /// What a deploy would do, changing nothing: each object compared with its stored digest,
    /// the workload kept (the same recipe, running), restarted or started. The record a deploy
    /// would store (its endpoint once a port is chosen: known only for a redeploy).
    async fn dry_run(
        &self,
        plan: &Plan,
        recipe: &LocalRecipe,
        prev: Option<&Entry>,
        progress: &Progress,
    ) -> DeploymentRecord {
        const NOTE: &str = "dry run";
        let objects = self.report_objects(plan, prev, NOTE, progress).await;
        let workload = prev.and_then(|p| p.workload.as_ref().map(|w| (p, w)));
        let (action, message, endpoints) = match workload {
            Some((p, w)) => {
                // As `keep_if_unchanged` decides: the same recipe and configuration digest.
                let config_changed =
                    w.config_hash.is_some() && w.config_hash != plan_config_hash(&plan.objects, &plan.id.namespace);
                let same = w.run && !config_changed && w.recipe.unseal(&p.record.config).ok().as_ref() == Some(recipe);
                let runs = self.running(&plan.id).is_some() || w.process.as_ref().is_some_and(Identity::is_alive);
                let at = endpoint(w.port);
                // As a deploy reports it: `unchanged` when kept, `started` (not an object
                // count) when it would be (re)started.
                match (same && runs, runs) {
                    (true, _) => (Action::Unchanged, format!("{NOTE}; running on {at}"), vec![at]),
                    (false, true) => (Action::Started, format!("{NOTE}; would restart on {at}"), vec![at]),
                    (false, false) => (Action::Started, format!("{NOTE}; would start on {at}"), vec![at]),
                }
            }
            None => (Action::Started, format!("{NOTE}; would start on a free port"), vec![]),
        };
        progress.send(ObjectEvent::new(process_ref(&plan.id), action).with_message(message)).await;
        DeploymentRecord {
            id: plan.id.clone(),
            version: plan.version.clone(),
            config: plan.config.clone(),
            secret_keys: plan.secret_keys.clone(),
            endpoints,
            status: Status::Deployed,
            message: crate::backend::DRY_RUN.into(),
            objects: objects.into_iter().map(|s| s.object).collect(),
            backend: crate::backend::Kind::Local,
            updated_at: prev.map(|p| p.record.updated_at.clone()).unwrap_or_else(now_rfc3339),
            wakeups: prev.map_or(0, |p| p.record.wakeups),
        }
    }

    /// Reports created/configured/unchanged per object (and deleted for dropped ones), each
    /// with `note` as its message.
    async fn report_objects(
        &self,
        plan: &Plan,
        prev: Option<&Entry>,
        note: &str,
        progress: &Progress,
    ) -> Vec<StoredObject> {
        let mut stored = Vec::with_capacity(plan.objects.len());
        for o in &plan.objects {
            let now = StoredObject { object: o.object.clone(), digest: digest(&o.manifest) };
            let before = prev.and_then(|p| p.objects.iter().find(|s| same_object(&s.object, &o.object)));
            let action = match before {
                None => Action::Created,
                Some(b) if b.digest == now.digest => Action::Unchanged,
                Some(_) => Action::Configured,
            };
            progress.send(ObjectEvent::new(o.object.clone(), action).with_message(note)).await;
            stored.push(now);
        }
        for old in prev.iter().flat_map(|p| &p.objects) {
            if !plan.objects.iter().any(|o| same_object(&o.object, &old.object)) {
                let message = if note.is_empty() { String::new() } else { format!("; {note}") };
                let ev = ObjectEvent::new(old.object.clone(), Action::Deleted)
                    .with_message(format!("no longer in the template{message}"));
                progress.send(ev).await;
            }
        }
        stored
    }

    /// A port no record (replica 0's or a recorded extra's) or pending deploy uses.
    pub(super) async fn reserve_port(&self) -> Result<Reserved> {
        let used: std::collections::HashSet<u16> = self
            .state
            .lock()
            .await
            .file
            .deployments
            .values()
            .filter_map(|e| e.workload.as_ref())
            .flat_map(|w| std::iter::once(w.port).chain(w.extras.iter().map(|x| x.port)))
            .collect();
        for _ in 0..64 {
            let port = std::net::TcpListener::bind((HOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(Error::NoFreePort)?;
            let mut reserved = self.reserved.lock().expect("reserved ports");
            if !used.contains(&port) && reserved.insert(port) {
                return Ok(Reserved::new(port, self.reserved.clone()));
            }
        }
        Err(Error::NoFreePort(std::io::Error::other("every port offered was already taken by a deployment")))
    }

    /// The same recipe, still running (or adoptable): record the new settings, touch nothing.
    async fn keep_if_unchanged(
        self: &Arc<Self>,
        a: &Attempt,
        recipe: &LocalRecipe,
        progress: &Progress,
    ) -> Result<Option<DeploymentRecord>> {
        let Some(prev) = &a.prev else { return Ok(None) };
        let Some(w) = prev.workload.as_ref().filter(|w| w.run) else { return Ok(None) };
        // A changed configuration restarts the workload even when its command line is the same
        // (a record of a previous version has no hash: it is taken as unchanged).
        let config_changed = w.config_hash.is_some() && w.config_hash != a.config_hash;
        if w.recipe.unseal(&prev.record.config).ok().as_ref() != Some(recipe)
            || config_changed
            || !self.ensure_supervised(&a.record.id, prev).await
        {
            return Ok(None);
        }
        let id = &a.record.id;
        let message = format!("running on {}", endpoint(a.port));
        progress.send(ObjectEvent::new(process_ref(id), Action::Unchanged).with_message(message)).await;
        let mut record = a.record.clone();
        let p = &prev.record;
        if p.status == Status::Deployed
            && p.version == record.version
            && p.config == record.config
            && prev.objects == a.objects
        {
            record.updated_at = p.updated_at.clone();
        }
        let want = replicas::wanted(&record.config);
        let program =
            if self.extras_missing(id, want) { self.prepare(id, recipe, a.port, progress).await? } else { None };
        record.endpoints.extend(self.scale_extras(id, recipe, program, want, DEFAULT_READY_TIMEOUT, progress).await?);
        let process = self.running(id);
        let workload = Workload {
            recipe: a.recipe.clone(),
            port: a.port,
            process,
            run: true,
            legacy_pid: None,
            config_hash: a.config_hash.clone(),
            extras: Vec::new(),
        };
        let mut entry =
            Entry { record: record.clone(), objects: a.objects.clone(), workload: Some(workload), fresh: false };
        self.update(|s| {
            // The extras as `scale_extras` and the supervisors recorded them (they keep running).
            entry.keep_extras_of(s.deployments.get(&key(id)));
            s.deployments.insert(key(id), entry)
        })
        .await?;
        Ok(Some(record))
    }

    /// Whether the recorded workload runs under a supervisor, adopting it if it runs without one.
    async fn ensure_supervised(self: &Arc<Self>, id: &DeploymentId, entry: &Entry) -> bool {
        let confirmed =
            self.supervisors.lock().expect("supervisors").get(id).map(|s| s.running().is_some() && s.confirm());
        if let Some(ok) = confirmed {
            return ok;
        }
        let Some(identity) = entry.workload.as_ref().and_then(|w| w.process.clone()).filter(|i| i.is_alive()) else {
            return false;
        };
        let Ok(recipe) = entry.workload.as_ref().map(|w| w.recipe.unseal(&entry.record.config)).transpose() else {
            return false;
        };
        let Some(recipe) = recipe else {
            return false;
        };
        let launch = self.launch(id, &recipe, entry.workload.as_ref().map_or(0, |w| w.port), None).await;
        tracing::info!(deployment = %id, pid = identity.pid, "adopting a running workload");
        let s = Supervisor::start(id.clone(), launch, Start::Adopted(identity), true, self.journal());
        self.register(id, s).await.is_ok()
    }

    /// How to start this deployment's workload (`program`: the virtualenv's interpreter).
    pub(super) async fn launch(
        &self,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        port: u16,
        program: Option<String>,
    ) -> Launch {
        let mut command = recipe.command(&self.slots(id, port));
        if !recipe.secret_env.is_empty() {
            command.env = crate::plan::expand_env(&self.secret_env(id, recipe).await, command.env);
        }
        let dir = self.deployment_dir(id);
        Launch {
            object: process_ref(id).kubectl_name(),
            program: program.unwrap_or(command.program),
            args: command.args,
            env: command.env,
            cwd: dir.join("data"),
            dir,
            port,
            replica: 0,
        }
    }

    /// The values of the recipe's `secret_env`, from the referenced deployments' records (as
    /// the kubelet resolves `secretKeyRef`). One whose record or value is gone stays undefined,
    /// so `$(NAME)` stays as written, as on Kubernetes.
    async fn secret_env(&self, id: &DeploymentId, recipe: &LocalRecipe) -> Vec<(String, String)> {
        let state = self.state.lock().await;
        let mut out = Vec::with_capacity(recipe.secret_env.len());
        for s in &recipe.secret_env {
            let value = state
                .file
                .deployments
                .get(&super::key(&s.deployment))
                .and_then(|e| e.record.config.get(&s.placeholder));
            match value {
                Some(v) => out.push((s.name.clone(), super::state::text_of(v))),
                None => {
                    tracing::warn!(deployment = %id, referenced = %s.deployment, var = %s.name, "the referenced secret is gone; the var stays undefined")
                }
            }
        }
        out
    }

    /// The interpreter to run with: the virtualenv's when the recipe installs packages.
    pub(super) async fn prepare(
        &self,
        id: &DeploymentId,
        recipe: &LocalRecipe,
        port: u16,
        progress: &Progress,
    ) -> Result<Option<String>> {
        let dir = self.deployment_dir(id);
        let data = dir.join("data");
        state::blocking(move || state::create_private_dir(&data)).await?;
        if recipe.packages.is_empty() {
            return Ok(None);
        }
        let message = format!("installing {}", recipe.packages.join(" "));
        progress.send(ObjectEvent::new(process_ref(id), Action::Waiting).with_message(message)).await;
        let python = recipe.command(&self.slots(id, port)).program;
        let object = process_ref(id).kubectl_name();
        Ok(Some(venv::prepare(&dir, &python, &recipe.packages, &self.pip, &object).await?.display().to_string()))
    }

    /// Spawns the workload, records its identity, and hands it to a supervisor (in probation
    /// unless `confirmed`). A spawn that cannot be registered (shutting down) is stopped.
    pub(super) async fn spawn_supervised(
        self: &Arc<Self>,
        id: &DeploymentId,
        launch: Launch,
        confirmed: bool,
    ) -> Result<(Identity, watch::Receiver<Life>)> {
        let (child, identity) = launch.spawn().await?;
        let recorded = identity.clone();
        let saved = self
            .update(|s| {
                if let Some(w) = s.deployments.get_mut(&key(id)).and_then(|e| e.workload.as_mut()) {
                    w.process = Some(recorded);
                }
            })
            .await;
        let supervisor =
            Supervisor::start(id.clone(), launch, Start::Owned(child, identity.clone()), confirmed, self.journal());
        let life = supervisor.life();
        self.register(id, supervisor).await?;
        if let Err(e) = saved {
            self.stop_workload(id, None).await;
            return Err(e);
        }
        Ok((identity, life))
    }

    async fn start(
        self: &Arc<Self>,
        a: Attempt,
        recipe: &LocalRecipe,
        reservation: Option<Reserved>,
        opts: &ApplyOptions,
        progress: &Progress,
    ) -> Result<DeploymentRecord> {
        let id = a.record.id.clone();
        let program = match self.prepare(&id, recipe, a.port, progress).await {
            Ok(p) => p,
            Err(e) => return self.fail(a, false, e, progress).await,
        };
        // The intent, with its port, before anything starts.
        let mut record = a.record.clone();
        record.status = Status::Deploying;
        let workload = Workload {
            recipe: a.recipe.clone(),
            port: a.port,
            process: None,
            run: true,
            legacy_pid: None,
            config_hash: a.config_hash.clone(),
            // The old extras stop below; the new ones are recorded as they start.
            extras: Vec::new(),
        };
        let entry =
            Entry { record: record.clone(), objects: a.objects.clone(), workload: Some(workload), fresh: a.fresh };
        self.update(|s| s.deployments.insert(key(&id), entry)).await?;
        drop(reservation);

        let old = a.prev.as_ref().and_then(|p| p.workload.as_ref()).and_then(|w| w.process.clone());
        if self.stop_workload(&id, old.as_ref()).await {
            let ev =
                ObjectEvent::new(process_ref(&id), Action::Stopped).with_message("restarting with the new settings");
            progress.send(ev).await;
        }
        let launch = self.launch(&id, recipe, a.port, program.clone()).await;
        let object = launch.object.clone();
        let (identity, mut life) = match self.spawn_supervised(&id, launch, false).await {
            Ok(started) => started,
            Err(e) => return self.fail(a, true, e, progress).await,
        };
        let pid = identity.pid;
        let target = Target { port: a.port, readiness: &recipe.readiness, object: &object };
        let timeout = opts.wait.unwrap_or(DEFAULT_READY_TIMEOUT);
        let waiting = std::time::Instant::now();
        let waited = readiness::wait(target, &mut life, true, timeout, progress).await;
        crate::metrics::global().readiness_wait(&id.module, waited.is_ok(), waiting.elapsed());
        let confirmed = self.supervisors.lock().expect("supervisors").get(&id).is_some_and(Supervisor::confirm);
        let outcome = match waited {
            Ok(_) if !confirmed => {
                Err(Error::Exited { object: object.clone(), reason: "exited as it became ready".into() })
            }
            other => other,
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.stop_workload(&id, None).await;
                return self.fail(a, true, e, progress).await;
            }
        };
        let want = replicas::wanted(&record.config);
        match self.scale_extras(&id, recipe, program, want, timeout, progress).await {
            Ok(extra) => record.endpoints.extend(extra),
            Err(e) => {
                self.stop_workload(&id, None).await;
                return self.fail(a, true, e, progress).await;
            }
        }
        let mut message = format!("{} ready on {} (pid {pid})", recipe.protocol, endpoint(a.port));
        if outcome == Outcome::Abandoned {
            message = format!("{} started on {} (pid {pid}); {}", recipe.protocol, endpoint(a.port), outcome.message());
            tracing::info!(deployment = %id, "{}", outcome.message());
        }
        progress.send(ObjectEvent::new(process_ref(&id), Action::Started).with_message(message)).await;
        record.status = Status::Deployed;
        record.message = outcome.message().into();
        let done = record.clone();
        self.update(|s| {
            if let Some(e) = s.deployments.get_mut(&key(&id)) {
                e.record = done;
                e.fresh = false;
            }
        })
        .await?;
        Ok(record)
    }

    /// Records a failed apply and returns its error. `stopped_old`: the previous workload (if
    /// any) was already stopped. A first deploy leaves nothing behind; a redeploy keeps its data.
    async fn fail(&self, a: Attempt, stopped_old: bool, e: Error, progress: &Progress) -> Result<DeploymentRecord> {
        let id = a.record.id.clone();
        progress.send(ObjectEvent::new(process_ref(&id), Action::Failed).with_message(e.reason())).await;
        if self.check_open().is_err() {
            // An orderly shutdown stopped it: the record stays as it is (a `deploying` one is
            // finished by the next start), so a deploy is never undone by a stop.
            return Err(e);
        }
        if a.fresh {
            self.update(|s| s.deployments.remove(&key(&id))).await?;
            self.remove_dir(&id).await;
            return Err(e);
        }
        let entry = match (a.prev, stopped_old) {
            (Some(mut prev), false) => {
                prev.record.status = Status::Failed;
                prev.record.message = match self.running(&id) {
                    Some(_) => format!("{e}; the previous workload keeps running"),
                    None => e.to_string(),
                };
                prev.record.updated_at = now_rfc3339();
                prev
            }
            _ => {
                let mut record = a.record;
                record.status = Status::Failed;
                record.message = e.to_string();
                let workload = Workload {
                    recipe: a.recipe,
                    port: a.port,
                    process: None,
                    run: false,
                    legacy_pid: None,
                    config_hash: a.config_hash.clone(),
                    extras: Vec::new(),
                };
                Entry { record, objects: a.objects, workload: Some(workload), fresh: false }
            }
        };
        self.update(|s| {
            let mut entry = entry;
            // A previous workload that keeps running keeps its extras, as recorded now.
            if !stopped_old {
                entry.keep_extras_of(s.deployments.get(&key(&id)));
            }
            s.deployments.insert(key(&id), entry)
        })
        .await?;
        Err(e)
    }

    pub(super) async fn delete(self: &Arc<Self>, id: &DeploymentId, progress: &Progress) -> crate::backend::Result<()> {
        self.recover().await;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.check_open()?;
        let entry = self.entry(id).await.ok_or_else(|| crate::backend::Error::NotFound(id.clone()))?;
        let recorded = entry.workload.as_ref().and_then(|w| w.process.clone());
        if self.stop_workload(id, recorded.as_ref()).await || entry.workload.is_some() {
            progress.send(ObjectEvent::new(process_ref(id), Action::Stopped)).await;
        }
        for o in entry.objects.iter().rev() {
            progress.send(ObjectEvent::new(o.object.clone(), Action::Deleted)).await;
        }
        self.update(|s| {
            s.history.remove(&key(id));
            s.deployments.remove(&key(id))
        })
        .await?;
        self.endpoints_changed();
        self.remove_dir(id).await;
        Ok(())
    }
}

fn same_object(a: &ObjectRef, b: &ObjectRef) -> bool {
    a.api_version == b.api_version && a.kind == b.kind && a.name == b.name && a.namespace == b.namespace
}
