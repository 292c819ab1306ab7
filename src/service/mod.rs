//! The one service layer every edge (gRPC, REST, the CLI through gRPC) calls: dry runs,
//! deploys and undeploys as one cancellable stream, deployments and templates. It answers with
//! complete [`views`], which the edges only encode.
//!
//! It validates and renders before anything is applied, so bad input never changes a
//! deployment, and it serialises the work on one deployment: from the moment a deploy resolves
//! its secrets to the moment its apply is recorded, nothing else touches that deployment.

mod deploy;
mod locks;
mod planner;
mod prepare;
#[cfg(test)]
mod testing;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::backend::{self, Backend, DeploymentRecord};
use crate::catalog::{self, Catalog};
use crate::identity::{self, DeploymentId, NamespaceRule};
pub use deploy::{DeployStream, Event};
use locks::Locks;
pub use prepare::Prepared;
pub use views::{DeploymentTree, DeploymentView, DryRunView, Summary, TemplateView};

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
    /// The task running a deploy or undeploy ended without an outcome (it panicked).
    #[error("the {run} run of {id} stopped without an outcome")]
    RunAborted {
        run: &'static str,
        id: DeploymentId,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// The request field an error is about, for machine-readable error details.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::Catalog(e) => e.field(),
            Error::Identity(e) => Some(e.field().to_string()),
            Error::Invalid { field, .. } => Some(field.clone()),
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
}

impl Service {
    pub fn new(catalog: Arc<Catalog>, backend: Arc<dyn Backend>, settings: Settings) -> Self {
        let rule = settings.namespace_rule();
        Service { catalog, backend, settings, rule, locks: Locks::default() }
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

    pub fn templates(&self) -> Result<Vec<TemplateView>> {
        Ok(self.catalog.list()?.iter().map(TemplateView::from).collect())
    }

    /// The record of a deployment that must exist.
    async fn require(&self, id: &DeploymentId) -> Result<DeploymentRecord> {
        self.backend.get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))
    }

    pub async fn get(&self, id: &DeploymentId) -> Result<DeploymentView> {
        Ok(DeploymentView::from(&self.require(id).await?))
    }

    /// Deployments, optionally of one namespace and one module (empty matches all), in id order.
    pub async fn list(&self, namespace: Option<&str>, module: Option<&str>) -> Result<Vec<DeploymentView>> {
        let mut records = self.backend.list().await?;
        records.retain(|r| {
            namespace.is_none_or(|ns| ns.is_empty() || r.id.namespace == ns)
                && module.is_none_or(|m| m.is_empty() || r.id.module == m)
        });
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records.iter().map(DeploymentView::from).collect())
    }
}
