//! The one service layer every edge (gRPC, REST, the CLI through gRPC) calls: dry runs,
//! deploys and undeploys as one cancellable stream, deployments and templates. It answers with
//! complete [`views`], which the edges only encode.
//!
//! It validates and renders before anything is applied, so bad input never changes a
//! deployment, and it serialises the work on one deployment: from the moment a deploy resolves
//! its secrets to the moment its apply is recorded, nothing else touches that deployment.
//!
//! Every operation names its [`Caller`] and is authorized through the one decision,
//! [`Authorizer::permit`], before it reads or changes anything:
//!
//! | operation | verb | resource | namespace | name |
//! | --- | --- | --- | --- | --- |
//! | deploy, dry run | create (update if it exists) | `jacdeployments` | target | deployment |
//! | undeploy | delete | `jacdeployments` | its | deployment |
//! | get / list | get / list | `jacdeployments` | its (list: the one asked, else all) | deployment / - |
//! | secrets | get | `jacdeployments/secrets` | its | deployment |
//! | templates | list | `templates` | - | - |
//! | ensure module | get (found) / create (deploys) | `jacdeployments` | target | deployment |
//! | history | get | `jacdeployments` | its | deployment |
//! | diff | get, then as deploy | `jacdeployments` | target | deployment |
//! | rollback | as deploy (update) | `jacdeployments` | its | deployment |
//! | module access | call | `modules` | its | deployment |
//! | logs | get | `jacdeployments/log` | its | deployment |
//!
//! (`ModuleProxy` authorizes `call` on `modules` itself, once it knows the target.)

pub mod access;
mod deploy;
mod ensure;
mod ensure_events;
mod locks;
pub mod logs;
mod namespacing;
mod planner;
mod prepare;
pub mod readiness;
pub mod references;
mod revision_note;
mod revisions;
#[cfg(test)]
pub(crate) mod testing;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::auth::{self, Authorizer, Caller, Resource, Verb};
use crate::backend::{self, Backend, DeploymentRecord};
use crate::catalog::{self, Catalog};
use crate::identity::{self, DeploymentId, NamespaceRule};
pub use access::{AccessRequest, ModuleAccessView};
pub use deploy::{DeployStream, Event, UndeployOptions};
pub use ensure::{derived_name, parse_idle_timeout, EnsurePolicy, EnsureRequest, LABEL_ON_DEMAND, PYTHON_MODULE};
pub use ensure_events::{EnsureEvent, EnsureEvents};
use locks::Locks;
pub use logs::{LogsRequest, LogsStream};
pub use namespacing::ORCHESTRATOR_NAMESPACE;
pub use prepare::{render_offline, Offline, Prepared};
pub use readiness::{NotReady, Readiness};
pub use revisions::DiffView;
pub use views::{DeploymentSecretsView, DeploymentTree, DeploymentView, DryRunView, EnsureView, Summary, TemplateView};

/// Default `--wait` timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Backend(#[from] backend::Error),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// A request field the edge could not turn into a request (e.g. a missing `module`).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("deployment {0} not found")]
    NotFound(DeploymentId),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::Error),
    /// The caller may not do this (or it could not be decided).
    #[error(transparent)]
    Authorization(#[from] auth::authorize::Error),
    /// The operator's `--ensure-allow` list does not name this module or package.
    #[error("{what} {name:?} may not be deployed on import: the server's --ensure-allow list does not name it")]
    NotAllowedOnImport { what: &'static str, name: String },
    /// The task running a deploy or undeploy ended without an outcome (it panicked).
    #[error("the {run} run of {id} stopped without an outcome")]
    RunAborted {
        run: &'static str,
        id: DeploymentId,
        #[source]
        source: tokio::task::JoinError,
    },
    /// `/readyz` and the health service: startup is not finished or the backend does not answer.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("revision {revision} of deployment {id} not found")]
    RevisionNotFound { id: DeploymentId, revision: u64 },
    #[error("deployment {0} has no revision before its current one to roll back to")]
    NoPreviousRevision(DeploymentId),
    /// A reference to another deployment's output, or an undeploy of a referenced deployment.
    #[error(transparent)]
    References(Box<references::Error>),
    /// Direct access to a deployment's module servers (`GetModuleAccess`).
    #[error(transparent)]
    Access(Box<access::Error>),
}

impl From<access::Error> for Error {
    fn from(e: access::Error) -> Self {
        Error::Access(Box::new(e))
    }
}

impl From<references::Error> for Error {
    fn from(e: references::Error) -> Self {
        Error::References(Box::new(e))
    }
}

impl Error {
    /// The request field an error is about, for machine-readable error details.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::Catalog(e) => e.field(),
            Error::Identity(e) => Some(e.field().to_string()),
            Error::Invalid { field, .. } => Some(field.clone()),
            Error::RevisionNotFound { .. } => Some("revision".into()),
            Error::References(e) => e.field(),
            Error::Access(e) => e.field().map(Into::into),
            Error::NotAllowedOnImport { what, .. } => {
                Some(if *what == "module" { "module" } else { "packages" }.into())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller asks to render or deploy (every edge builds this).
#[derive(Debug, Clone, Default)]
pub struct DeploymentRequest {
    pub module: String,
    /// `None` or empty means [`identity::LATEST`].
    pub version: Option<String>,
    pub config: Map<String, Value>,
}

impl DeploymentRequest {
    /// The version this request names (`latest` when it names none).
    pub fn version(&self) -> &str {
        identity::version_or_latest(self.version.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The orchestrator's own namespace: default target and home of its records.
    pub namespace: String,
    /// Force every deployment into `namespace` (the original's `CLUSTER_WIDE=true`).
    pub restricted_namespace: bool,
    /// `ModuleProxy` limits and tuning.
    pub proxy: crate::proxy::ProxyConfig,
    /// The HTTP edge's browser and request-head rules (CORS allowlist, URI limit).
    pub edge: crate::config::EdgeConfig,
    /// What may be deployed on first import (`EnsureModule`).
    pub ensure: EnsurePolicy,
    /// Revisions kept per deployment (`serve --history-limit`).
    pub history_limit: usize,
}

impl Settings {
    pub fn namespace_rule(&self) -> NamespaceRule {
        NamespaceRule::new(self.namespace.clone(), self.restricted_namespace)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: "default".into(),
            restricted_namespace: false,
            proxy: crate::proxy::ProxyConfig::default(),
            edge: crate::config::EdgeConfig::default(),
            ensure: EnsurePolicy::default(),
            history_limit: backend::history::DEFAULT_LIMIT,
        }
    }
}

#[derive(Debug)]
pub struct Service {
    catalog: Arc<Catalog>,
    backend: Arc<dyn Backend>,
    settings: Settings,
    rule: NamespaceRule,
    locks: Locks,
    authorizer: Arc<Authorizer>,
    readiness: Readiness,
}

impl Service {
    /// A service deciding by the local backend's group rules ([`Authorizer::groups`]) until
    /// [`Service::with_authorizer`] says otherwise: identities without jac-orc's groups may do
    /// nothing.
    pub fn new(catalog: Arc<Catalog>, backend: Arc<dyn Backend>, settings: Settings) -> Self {
        let rule = settings.namespace_rule();
        let authorizer = Arc::new(Authorizer::groups());
        Service {
            catalog,
            backend,
            settings,
            rule,
            locks: Locks::default(),
            authorizer,
            readiness: Readiness::started(),
        }
    }

    /// Reports not ready until `readiness` says startup has finished (`serve` passes a pending
    /// one and marks it after the `MODULES` replay).
    #[must_use]
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Ready: startup has finished and the backend answers (`Backend::check_reachable`) within
    /// [`readiness::BACKEND_CHECK_TIMEOUT`]. Needs no permission (probes carry no token).
    pub async fn check_ready(&self) -> Result<()> {
        if !self.readiness.is_started() {
            return Err(NotReady::Starting.into());
        }
        match tokio::time::timeout(readiness::BACKEND_CHECK_TIMEOUT, self.backend.check_reachable()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotReady::Backend(Box::new(e)).into()),
            Err(_) => Err(NotReady::BackendTimeout(readiness::BACKEND_CHECK_TIMEOUT).into()),
        }
    }

    /// Decides every operation with `authorizer` (SubjectAccessReviews on the kube backend).
    #[must_use]
    pub fn with_authorizer(mut self, authorizer: Arc<Authorizer>) -> Self {
        self.authorizer = authorizer;
        self
    }

    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// The one authorization step of every operation.
    async fn permit(
        &self,
        caller: &Caller,
        verb: Verb,
        resource: Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        Ok(self.authorizer.permit(caller, verb, resource, namespace, name).await?)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub async fn templates(&self, caller: &Caller) -> Result<Vec<TemplateView>> {
        self.permit(caller, Verb::List, Resource::Templates, None, None).await?;
        Ok(self.catalog.list()?.iter().map(TemplateView::from).collect())
    }

    /// The record of a deployment that must exist.
    async fn require(&self, id: &DeploymentId) -> Result<DeploymentRecord> {
        self.backend.get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// One deployment, secrets redacted.
    pub async fn get(&self, caller: &Caller, id: &DeploymentId) -> Result<DeploymentView> {
        self.permit(caller, Verb::Get, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        let mut view = DeploymentView::from(&self.require(id).await?);
        view.dependents = self.dependents(id).await?;
        Ok(view)
    }

    /// The values of a deployment's secret placeholders (generated passwords and the like). A
    /// python-module's call token is among them only for callers also allowed to call it.
    pub async fn secrets(&self, caller: &Caller, id: &DeploymentId) -> Result<DeploymentSecretsView> {
        let (ns, name) = (Some(id.namespace.as_str()), Some(id.name.as_str()));
        self.permit(caller, Verb::Get, Resource::JacDeploymentSecrets, ns, name).await?;
        let record = self.require(id).await?;
        let mut view = DeploymentSecretsView::from(&record);
        if view.secrets.contains_key(crate::proxy::CALL_TOKEN) {
            match self.permit(caller, Verb::Call, Resource::Modules, ns, name).await {
                Ok(()) => {}
                Err(Error::Authorization(auth::authorize::Error::Denied(_))) => {
                    view.secrets.remove(crate::proxy::CALL_TOKEN);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(view)
    }

    /// Deployments, optionally of one namespace and one module (empty matches all), and only
    /// those made on first import when `on_demand`, in id order.
    pub async fn list(
        &self,
        caller: &Caller,
        namespace: Option<&str>,
        module: Option<&str>,
        on_demand: bool,
    ) -> Result<Vec<DeploymentView>> {
        let namespace = namespace.filter(|ns| !ns.is_empty());
        self.permit(caller, Verb::List, Resource::JacDeployments, namespace, None).await?;
        let all = self.backend.list().await?;
        let mut records = all.clone();
        records.retain(|r| {
            namespace.is_none_or(|ns| r.id.namespace == ns)
                && module.is_none_or(|m| m.is_empty() || r.id.module == m)
                && (!on_demand || ensure::is_on_demand(r))
        });
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records
            .iter()
            .map(|r| DeploymentView::from(r).with_dependents(references::dependents_in(&all, &r.id)))
            .collect())
    }
}
