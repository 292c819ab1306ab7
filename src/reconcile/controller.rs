//! The reconcile loop of the kube backend: a kube-runtime `Controller` over `JacDeployment`s
//! and the labelled objects they own (Deployments, StatefulSets, DaemonSets, Services,
//! ConfigMaps, Secrets, mapped back by their `jac-orc/deployment` and `jac-orc/namespace`
//! labels). Each reconcile is one [`KubeBackend::reconcile`]: apply a new desired state, heal
//! (or report) drift, undeploy on deletion. Objects of other kinds are checked on every
//! reconcile too, and reconciles recur every [`ControllerConfig::resync`].
//!
//! [`lead`] runs the loop only while this replica holds the leader Lease.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::kube::resource::JacDeployment;
use crate::backend::kube::{KubeBackend, Step};
use crate::plan::{Planner, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, MANAGED_BY};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to reconcile jacdeployment {name}")]
    Reconcile {
        name: String,
        #[source]
        source: crate::backend::Error,
    },
}

/// Settings of the reconcile loop.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Watch only this namespace (restricted mode); `None`: every namespace.
    pub namespace: Option<String>,
    /// How often an unchanged deployment is looked at again (drift in kinds nobody watches).
    pub resync: Duration,
    /// How soon a deployment whose workloads are not ready is looked at again.
    pub not_ready: Duration,
    /// How soon a failed reconcile is retried.
    pub retry: Duration,
    /// Coalesces bursts of changes to one deployment.
    pub debounce: Duration,
    /// Deployments reconciled at once.
    pub concurrency: u16,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            namespace: None,
            resync: Duration::from_secs(300),
            not_ready: Duration::from_secs(10),
            retry: Duration::from_secs(30),
            debounce: Duration::from_millis(500),
            concurrency: 4,
        }
    }
}

impl ControllerConfig {
    #[must_use]
    pub fn namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    #[must_use]
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    #[must_use]
    pub fn not_ready(mut self, every: Duration) -> Self {
        self.not_ready = every;
        self
    }

    #[must_use]
    pub fn retry(mut self, after: Duration) -> Self {
        self.retry = after;
        self
    }
}

struct Context {
    backend: Arc<KubeBackend>,
    planner: Arc<dyn Planner>,
    config: ControllerConfig,
}

/// The deployment an object belongs to, by its labels.
fn owner<K: Resource>(object: K) -> Option<ObjectRef<JacDeployment>> {
    let labels = object.meta().labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let name = labels.get(LABEL_DEPLOYMENT)?;
    let namespace = labels.get(LABEL_NAMESPACE)?;
    Some(ObjectRef::new(name).within(namespace))
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn watch_owned<K>(
    c: Controller<JacDeployment>,
    client: &kube::Client,
    namespace: Option<&str>,
) -> Controller<JacDeployment>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default + std::fmt::Debug + Clone + Eq + std::hash::Hash,
{
    let labelled = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    c.watches(api::<K>(client, namespace), labelled, owner::<K>)
}

async fn reconcile(jd: Arc<JacDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = jd.namespace().unwrap_or_default();
    let name = jd.name_any();
    let step = ctx
        .backend
        .reconcile(&namespace, &name, ctx.planner.as_ref())
        .await
        .map_err(|source| Error::Reconcile { name: format!("{namespace}/{name}"), source })?;
    match &step {
        Step::Applied { changes, .. } => tracing::info!(jacdeployment = %name, %namespace, ?changes, "applied"),
        Step::Healed { objects, .. } => tracing::info!(jacdeployment = %name, %namespace, ?objects, "healed drift"),
        Step::Drifted { objects, .. } => {
            tracing::info!(jacdeployment = %name, %namespace, ?objects, "drift left alone (selfHeal: false)")
        }
        Step::Undeployed => tracing::info!(jacdeployment = %name, %namespace, "undeployed"),
        Step::Invalid(why) => tracing::warn!(jacdeployment = %name, %namespace, %why, "cannot apply the desired state"),
        Step::InSync { .. } | Step::Gone => tracing::debug!(jacdeployment = %name, %namespace, ?step, "reconciled"),
    }
    Ok(match step {
        Step::Gone | Step::Undeployed => Action::await_change(),
        Step::Invalid(_) => Action::requeue(ctx.config.resync),
        s if !s.is_ready() => Action::requeue(ctx.config.not_ready),
        _ => Action::requeue(ctx.config.resync),
    })
}

fn error_policy(jd: Arc<JacDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(jacdeployment = %jd.name_any(), error = %error, source = %std::error::Error::source(error).map(ToString::to_string).unwrap_or_default(), "reconcile failed; retrying");
    Action::requeue(ctx.config.retry)
}

/// Runs the reconcile loop until `stop` resolves (then lets the reconciles in flight finish).
pub async fn run(
    backend: Arc<KubeBackend>,
    planner: Arc<dyn Planner>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = backend.client().clone();
    let ns = config.namespace.clone();
    let ns = ns.as_deref();
    let mut c = Controller::new(api::<JacDeployment>(&client, ns), watcher::Config::default());
    c = watch_owned::<Deployment>(c, &client, ns);
    c = watch_owned::<StatefulSet>(c, &client, ns);
    c = watch_owned::<DaemonSet>(c, &client, ns);
    c = watch_owned::<Service>(c, &client, ns);
    c = watch_owned::<ConfigMap>(c, &client, ns);
    c = watch_owned::<Secret>(c, &client, ns);
    let settings = controller::Config::default().debounce(config.debounce).concurrency(config.concurrency);
    let ctx = Arc::new(Context { backend, planner, config });
    tracing::info!("reconcile loop started");
    c.with_config(settings)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    tracing::info!("reconcile loop stopped");
}

/// Runs the reconcile loop whenever `leading` is true, until `stop` is cancelled.
pub async fn lead(
    backend: Arc<KubeBackend>,
    planner: Arc<dyn Planner>,
    config: ControllerConfig,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { return },
        }
        let term = stop.child_token();
        let lost = {
            let mut leading = leading.clone();
            let term = term.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = leading.wait_for(|l| !*l) => term.cancel(),
                    () = term.cancelled() => {}
                }
            })
        };
        run(backend.clone(), planner.clone(), config.clone(), term.clone().cancelled_owned()).await;
        term.cancel();
        let _ = lost.await;
        if stop.is_cancelled() {
            return;
        }
    }
}
