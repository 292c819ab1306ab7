//! The one service layer both edges (gRPC and REST) call: dry_run, deploy, undeploy, get, list,
//! templates. It validates and renders before anything is applied, so bad input never changes
//! a deployment, and it serialises work on the same deployment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;

use crate::backend::{self, ApplyOptions, Backend, DeploymentRecord, Progress};
use crate::catalog::{self, Catalog, RenderedFile, TemplateVersion};
use crate::plan::{self, DeploymentId, ObjectRef, Plan};

/// Default `--wait` timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Backend(#[from] backend::Error),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("namespace `{requested}` is not allowed: this orchestrator runs in restricted-namespace mode and deploys only into `{allowed}`")]
    RestrictedNamespace { requested: String, allowed: String },
    #[error("deployment {0} not found")]
    NotFound(DeploymentId),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::Error),
}

impl Error {
    pub fn field(&self) -> Option<String> {
        match self {
            Error::Catalog(e) => e.field(),
            Error::Invalid { field, .. } => Some(field.clone()),
            Error::RestrictedNamespace { .. } => Some("config.namespace".into()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller asks to render or deploy (both edges build this).
#[derive(Debug, Clone, Default)]
pub struct DeploymentRequest {
    pub module: String,
    /// `None` or empty means "latest".
    pub version: Option<String>,
    pub config: Map<String, Value>,
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

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: "default".into(),
            restricted_namespace: false,
            proxy: crate::proxy::ProxyConfig::default(),
        }
    }
}

/// One placeholder in a dry-run report.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceholderView {
    pub default: Value,
    pub current: Value,
    #[serde(rename = "type")]
    pub ty: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

#[derive(Debug, Clone)]
pub struct DryRun {
    pub module: String,
    pub version: String,
    pub id: DeploymentId,
    pub placeholders: Vec<(String, PlaceholderView)>,
    pub dependencies: Option<Vec<RenderedFile>>,
    pub modules: Vec<RenderedFile>,
    pub objects: Vec<ObjectRef>,
}

/// A validated, rendered deployment, ready to apply.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub plan: Plan,
}

/// The view of a deployment returned to users (secrets redacted).
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    pub namespace: String,
    pub module: String,
    pub name: String,
    pub version: String,
    pub config: Map<String, Value>,
    pub endpoints: Vec<String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub objects: Vec<ObjectRef>,
    pub backend: String,
    pub updated_at: String,
}

impl From<&DeploymentRecord> for DeploymentView {
    fn from(r: &DeploymentRecord) -> Self {
        DeploymentView {
            namespace: r.id.namespace.clone(),
            module: r.id.module.clone(),
            name: r.id.name.clone(),
            version: r.version.clone(),
            config: r.redacted_config(),
            endpoints: r.endpoints.clone(),
            status: r.status.as_str(),
            message: r.message.clone(),
            objects: r.objects.clone(),
            backend: r.backend.clone(),
            updated_at: r.updated_at.clone(),
        }
    }
}

/// Outcome of a successful deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub record: DeploymentRecord,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct Service {
    catalog: Arc<Catalog>,
    backend: Arc<dyn Backend>,
    settings: Settings,
    locks: Mutex<HashMap<DeploymentId, Arc<AsyncMutex<()>>>>,
}

impl Service {
    pub fn new(catalog: Arc<Catalog>, backend: Arc<dyn Backend>, settings: Settings) -> Self {
        Service { catalog, backend, settings, locks: Mutex::default() }
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

    pub fn templates(&self) -> Result<Vec<catalog::store::ModuleInfo>> {
        Ok(self.catalog.list()?)
    }

    fn load(&self, req: &DeploymentRequest) -> Result<Arc<TemplateVersion>> {
        let version = req.version.as_deref().filter(|v| !v.is_empty()).unwrap_or("latest");
        Ok(self.catalog.load(&req.module, version)?)
    }

    /// Applies the namespace rule (the original's, minus its inverted naming) to the config.
    fn with_namespace(&self, template: &TemplateVersion, config: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut config = config.clone();
        if !template.declares("namespace") {
            return Ok(config);
        }
        let given = config.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        match given {
            Some(ns) if self.settings.restricted_namespace && ns != self.settings.namespace => {
                return Err(Error::RestrictedNamespace { requested: ns, allowed: self.settings.namespace.clone() });
            }
            Some(_) => {}
            None => {
                if let Some(v) = config.get("namespace") {
                    if !v.is_string() && !v.is_null() {
                        return Err(catalog::Error::WrongType {
                            name: "namespace".into(),
                            expected: "string",
                            got: catalog::placeholders::kind_of(v),
                        }
                        .into());
                    }
                }
                config.insert("namespace".into(), Value::String(self.settings.namespace.clone()));
            }
        }
        Ok(config)
    }

    fn deployment_id(&self, template: &TemplateVersion, values: &Map<String, Value>) -> Result<DeploymentId> {
        let namespace = match values.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => self.settings.namespace.clone(),
        };
        validate_dns_label("config.namespace", &namespace)?;
        let name = match values.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::Invalid {
                    field: "config.name".into(),
                    reason: format!("must be a string, got {}", catalog::placeholders::kind_of(other)),
                })
            }
            None => template.module.clone(),
        };
        validate_dns_label("config.name", &name)?;
        Ok(DeploymentId { namespace, module: template.module.clone(), name })
    }

    /// Renders without touching anything.
    pub fn dry_run(&self, req: &DeploymentRequest) -> Result<DryRun> {
        let template = self.load(req)?;
        let config = self.with_namespace(&template, &req.config)?;
        let resolved = template.resolve(&config, None)?;
        let id = self.deployment_id(&template, &resolved.values)?;
        let rendered = template.render(&resolved.values)?;
        let objects = template.objects(&rendered)?;
        let placeholders = resolved
            .reports
            .iter()
            .map(|r| {
                let current = match (r.secret, r.generated) {
                    (true, true) => Value::String("<generated>".into()),
                    (true, false) => Value::String(backend::REDACTED.into()),
                    _ => r.current.clone(),
                };
                let view = PlaceholderView {
                    default: r.default.clone(),
                    current,
                    ty: r.ty.as_str(),
                    description: r.description.clone(),
                    secret: r.secret,
                };
                (r.name.clone(), view)
            })
            .collect();
        let mut ordered = objects;
        Plan::order_objects(&mut ordered);
        Ok(DryRun {
            module: template.module.clone(),
            version: template.version.clone(),
            id,
            placeholders,
            dependencies: rendered.dependencies,
            modules: rendered.modules,
            objects: ordered.into_iter().map(|o| o.object).collect(),
        })
    }

    /// Validates, renders and plans a deployment, and checks the backend can run it. Nothing is
    /// applied yet, so any error here leaves every deployment as it was.
    pub async fn prepare(&self, req: &DeploymentRequest) -> Result<Prepared> {
        let template = self.load(req)?;
        let config = self.with_namespace(&template, &req.config)?;
        let mut resolved = template.resolve(&config, None)?;
        let id = self.deployment_id(&template, &resolved.values)?;
        // A redeploy keeps the secrets it generated before (a new password would break clients).
        if resolved.reports.iter().any(|r| r.generated) {
            if let Some(existing) = self.backend.get(&id).await? {
                resolved = template.resolve(&config, Some(&existing.config))?;
            }
        }
        let rendered = template.render(&resolved.values)?;
        let mut objects = template.objects(&rendered)?;
        for o in &mut objects {
            label(&mut o.manifest, &id, &template.version);
        }
        Plan::order_objects(&mut objects);
        let local = template.render_local(&resolved.values)?;
        let plan = Plan {
            id,
            version: template.version.clone(),
            secret_keys: resolved.secret_keys(),
            config: resolved.values,
            objects,
            local,
        };
        self.backend.preflight(&plan).await?;
        Ok(Prepared { plan })
    }

    fn lock_for(&self, id: &DeploymentId) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().expect("locks mutex");
        locks.entry(id.clone()).or_default().clone()
    }

    /// Applies a prepared deployment, reporting progress.
    pub async fn deploy(&self, prepared: Prepared, opts: ApplyOptions, progress: &Progress) -> Result<Deployed> {
        let started = Instant::now();
        let lock = self.lock_for(&prepared.plan.id);
        let _guard = lock.lock().await;
        tracing::info!(deployment = %prepared.plan.id, version = %prepared.plan.version, "deploying");
        let record = self.backend.apply(&prepared.plan, &opts, progress).await?;
        Ok(Deployed { record, elapsed: started.elapsed() })
    }

    /// Prepare + deploy in one call (startup replay, tests).
    pub async fn deploy_request(
        &self,
        req: &DeploymentRequest,
        opts: ApplyOptions,
        progress: &Progress,
    ) -> Result<Deployed> {
        let prepared = self.prepare(req).await?;
        self.deploy(prepared, opts, progress).await
    }

    pub fn parse_id(namespace: &str, module: &str, name: &str) -> Result<DeploymentId> {
        catalog::validate_name("module", module)?;
        validate_dns_label("namespace", namespace)?;
        validate_dns_label("name", name)?;
        Ok(DeploymentId { namespace: namespace.into(), module: module.into(), name: name.into() })
    }

    pub async fn undeploy(&self, id: &DeploymentId, progress: &Progress) -> Result<()> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        if self.backend.get(id).await?.is_none() {
            return Err(Error::NotFound(id.clone()));
        }
        self.backend.delete(id, progress).await?;
        Ok(())
    }

    /// Checks that a deployment exists, before an undeploy stream is opened.
    pub async fn require(&self, id: &DeploymentId) -> Result<DeploymentRecord> {
        self.backend.get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))
    }

    pub async fn get(&self, id: &DeploymentId) -> Result<DeploymentView> {
        Ok(DeploymentView::from(&self.require(id).await?))
    }

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

/// RFC 1123 label: what Kubernetes accepts as a name or namespace.
pub fn validate_dns_label(field: &str, value: &str) -> Result<()> {
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: field.into(),
            reason: format!("`{value}` is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"),
        })
    }
}

/// Adds the labels every deployment object carries (DESIGN.md), so listing, status and undeploy
/// work from the cluster itself.
fn label(manifest: &mut Value, id: &DeploymentId, version: &str) {
    let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(plan::LABEL_MANAGED_BY.into(), plan::MANAGED_BY.into());
        labels.insert(plan::LABEL_MODULE.into(), id.module.clone().into());
        labels.insert(plan::LABEL_DEPLOYMENT.into(), id.name.clone().into());
        labels.insert(plan::LABEL_NAMESPACE.into(), id.namespace.clone().into());
    }
    let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(a) = annotations.as_object_mut() {
        a.insert(plan::ANNOTATION_VERSION.into(), version.into());
    }
}
