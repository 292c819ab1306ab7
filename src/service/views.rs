//! What the service layer answers with: complete views that every edge only encodes. REST
//! returns them as JSON as they are, gRPC converts them to messages, the CLI converts messages
//! back into them and prints them, so one new field is one change here (and in the proto).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::backend::{self, Action, DeploymentRecord, ObjectEvent};
use crate::catalog::{self, store::ModuleInfo, Report, TemplateVersion};
use crate::identity::DeploymentId;
use crate::plan::{ObjectRef, Section};

/// What a dry run shows in place of a secret generated for this request.
const GENERATED: &str = "<generated>";

/// One placeholder of a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlaceholderView {
    pub default: Value,
    /// The value this request resolves to (secrets are never shown).
    pub current: Value,
    #[serde(rename = "type")]
    pub ty: catalog::Type,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl From<&Report> for PlaceholderView {
    fn from(r: &Report) -> Self {
        let current = match (r.secret, r.generated) {
            (true, true) => Value::String(GENERATED.into()),
            (true, false) => Value::String(backend::REDACTED.into()),
            _ => r.current.clone(),
        };
        PlaceholderView {
            default: r.default.clone(),
            current,
            ty: r.ty,
            description: r.description.clone(),
            secret: r.secret,
        }
    }
}

/// Rendered files by name.
pub type Files = BTreeMap<String, String>;

/// A template version rendered for a request, touching nothing.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DryRunView {
    /// Every placeholder, in the template's order.
    pub placeholders: IndexMap<String, PlaceholderView>,
    /// Rendered files of `dependencies/` (applied first); `null` when the version has none.
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub dependencies: Option<Files>,
    /// Rendered files of the version folder itself.
    #[schema(value_type = HashMap<String, String>)]
    pub modules: Files,
    pub module: String,
    pub version: String,
    pub namespace: String,
    pub name: String,
    /// Objects in the order a deploy applies them.
    pub objects: Vec<ObjectRef>,
}

impl DryRunView {
    pub(crate) fn new(
        template: &TemplateVersion,
        id: &DeploymentId,
        reports: &[Report],
        rendered: catalog::Rendered,
        objects: Vec<ObjectRef>,
    ) -> Self {
        let files = |fs: Vec<catalog::RenderedFile>| fs.into_iter().map(|f| (f.name, f.text)).collect();
        DryRunView {
            placeholders: reports.iter().map(|r| (r.name.clone(), PlaceholderView::from(r))).collect(),
            dependencies: rendered.dependencies.map(files),
            modules: files(rendered.modules),
            module: template.module.clone(),
            version: template.version.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            objects,
        }
    }
}

/// One template module and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TemplateView {
    pub module: String,
    pub versions: Vec<TemplateVersionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TemplateVersionView {
    pub version: String,
    pub format: catalog::Format,
    /// Where it comes from: `builtin` or the override directory.
    pub source: String,
    pub description: String,
    pub has_dependencies: bool,
    /// Whether the local backend has a recipe to run it on this machine.
    pub local_recipe: bool,
    /// Placeholder names, in the template's order.
    pub placeholders: Vec<String>,
    /// The same placeholders with their type, default and description.
    pub placeholder_specs: Vec<PlaceholderSpecView>,
}

/// A placeholder as a template version declares it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlaceholderSpecView {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: catalog::Type,
    /// `null` for secrets and required placeholders without one.
    pub default: Value,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

impl From<&catalog::Spec> for PlaceholderSpecView {
    fn from(s: &catalog::Spec) -> Self {
        PlaceholderSpecView {
            name: s.name.clone(),
            ty: s.ty,
            default: s.default.clone(),
            description: s.description.clone(),
            secret: s.secret,
            required: s.required,
        }
    }
}

impl From<&ModuleInfo> for TemplateView {
    fn from(m: &ModuleInfo) -> Self {
        TemplateView { module: m.module.clone(), versions: m.versions.iter().map(|v| v.as_ref().into()).collect() }
    }
}

impl From<&TemplateVersion> for TemplateVersionView {
    fn from(v: &TemplateVersion) -> Self {
        TemplateVersionView {
            version: v.version.clone(),
            format: v.format,
            source: v.source.clone(),
            description: v.description.clone(),
            has_dependencies: v.has_dependencies(),
            local_recipe: v.has_local_recipe(),
            placeholders: v.specs.iter().map(|s| s.name.clone()).collect(),
            placeholder_specs: v.specs.iter().map(PlaceholderSpecView::from).collect(),
        }
    }
}

/// A deployment as users see it (secret values redacted).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeploymentView {
    pub namespace: String,
    pub module: String,
    pub name: String,
    pub version: String,
    /// Resolved placeholder values; secret ones read `<redacted>`.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Where the workloads answer (`127.0.0.1:41231`, `jac-redis.default.svc:6379`).
    pub endpoints: Vec<String>,
    pub status: backend::Status,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub objects: Vec<ObjectRef>,
    pub backend: backend::Kind,
    /// RFC 3339.
    pub updated_at: String,
    /// Deployments (`module/name`, same namespace) whose values reference this one's outputs;
    /// undeploying it is refused while there are any, unless `force_referenced`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
    /// Times it was woken from zero (python-module deployments with an idle timeout).
    #[serde(skip_serializing_if = "is_zero")]
    pub wakeups: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DeploymentView {
    /// The deployment this view shows.
    pub fn id(&self) -> DeploymentId {
        DeploymentId { namespace: self.namespace.clone(), module: self.module.clone(), name: self.name.clone() }
    }

    #[must_use]
    pub fn with_dependents(mut self, dependents: Vec<String>) -> Self {
        self.dependents = dependents;
        self
    }
}

impl From<&DeploymentRecord> for DeploymentView {
    fn from(r: &DeploymentRecord) -> Self {
        DeploymentView {
            namespace: r.id.namespace.clone(),
            module: r.id.module.clone(),
            name: r.id.name.clone(),
            version: r.version.clone(),
            config: r.redacted_config(),
            // Where it serves when up stays recorded; while it sleeps nothing answers there.
            endpoints: if r.status == backend::Status::Idle { Vec::new() } else { r.endpoints.clone() },
            status: r.status,
            message: r.message.clone(),
            objects: r.objects.clone(),
            backend: r.backend,
            updated_at: r.updated_at.clone(),
            dependents: Vec::new(),
            wakeups: r.wakeups,
        }
    }
}

/// What `EnsureModule` (`POST /module/ensure`) answers: the deployment serving the module.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EnsureView {
    pub deployment: DeploymentView,
    /// Whether this call deployed it (false: it existed, or a racing caller deployed it).
    pub deployed: bool,
    /// Settings the request asked for that a found deployment does not have, one line each
    /// (`replicas: asked 3, deployed with 1`); it is returned as it stands.
    pub differences: Vec<String>,
}

/// The values of a deployment's secret placeholders, for callers allowed
/// `jacdeployments/secrets` (`GetDeploymentSecrets`, `GET /deployment/{ns}/{module}/{name}/secrets`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeploymentSecretsView {
    pub namespace: String,
    pub module: String,
    pub name: String,
    /// Secret placeholder → its value, e.g. `{"password": "…"}`.
    #[schema(value_type = Object)]
    pub secrets: Map<String, Value>,
}

impl From<&DeploymentRecord> for DeploymentSecretsView {
    fn from(r: &DeploymentRecord) -> Self {
        let secrets = r.config.iter().filter(|(k, _)| r.secret_keys.contains(k)).map(|(k, v)| (k.clone(), v.clone()));
        DeploymentSecretsView {
            namespace: r.id.namespace.clone(),
            module: r.id.module.clone(),
            name: r.id.name.clone(),
            secrets: secrets.collect(),
        }
    }
}

/// How many objects a run created, configured, left unchanged, deleted or kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counts {
    pub created: u32,
    pub configured: u32,
    pub unchanged: u32,
    pub deleted: u32,
    pub kept: u32,
}

impl Counts {
    pub fn add(&mut self, action: Action) {
        match action {
            Action::Created => self.created += 1,
            Action::Configured => self.configured += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Deleted => self.deleted += 1,
            Action::Kept => self.kept += 1,
            Action::Started | Action::Ready | Action::Waiting | Action::Failed | Action::Stopped => {}
        }
    }
}

/// The end of a successful deploy or undeploy run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Summary {
    /// The deployment as recorded after a deploy; as it was before an undeploy.
    pub deployment: DeploymentView,
    #[serde(flatten)]
    pub counts: Counts,
    /// Milliseconds from the request to the summary.
    pub elapsed_ms: u64,
}

/// kubectl-style lines of one section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Lines {
    pub results: Vec<String>,
    pub errors: Vec<String>,
}

/// kubectl-style lines of a run, overall and per section (the original's `results`/`errors`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Applied {
    pub results: Vec<String>,
    pub errors: Vec<String>,
    pub dependencies: Lines,
    pub modules: Lines,
}

impl Applied {
    /// Adds one event: failures to `errors`, every other line but `waiting` to `results`.
    pub fn add(&mut self, ev: &ObjectEvent) {
        let section = match ev.object.section {
            Section::Dependencies => &mut self.dependencies,
            Section::Modules => &mut self.modules,
        };
        match ev.action {
            Action::Waiting => {}
            Action::Failed => {
                let text = format!("{}: {}", ev.object.kubectl_name(), ev.message);
                section.errors.push(text.clone());
                self.errors.push(text);
            }
            _ => {
                section.results.push(ev.line.clone());
                self.results.push(ev.line.clone());
            }
        }
    }

    /// Adds the run's final error, unless an event already said it.
    pub fn fail(&mut self, detail: &str) {
        if !self.errors.iter().any(|e| e.ends_with(detail)) {
            self.errors.push(detail.to_string());
            self.modules.errors.push(detail.to_string());
        }
    }
}

/// What deploy and undeploy return when the whole run is collected: its lines, the deployment's
/// endpoints (deploy only) and the summary.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Outcome {
    #[serde(flatten)]
    pub applied: Applied,
    /// The deployment's endpoints (after a deploy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Which run an [`Outcome`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Deploy,
    Undeploy,
}

impl Outcome {
    pub fn new(run: Run, applied: Applied, summary: Summary) -> Self {
        let endpoints = (run == Run::Deploy).then(|| summary.deployment.endpoints.clone());
        Outcome { applied, endpoints, summary }
    }
}

/// Deployments keyed namespace → module → name (the original's `GET /deployment` shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct DeploymentTree(pub BTreeMap<String, BTreeMap<String, BTreeMap<String, DeploymentView>>>);

impl FromIterator<DeploymentView> for DeploymentTree {
    fn from_iter<I: IntoIterator<Item = DeploymentView>>(views: I) -> Self {
        let mut tree = DeploymentTree::default();
        for v in views {
            let names = tree.0.entry(v.namespace.clone()).or_default().entry(v.module.clone()).or_default();
            names.insert(v.name.clone(), v);
        }
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: &str, section: Section) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            name: "x".into(),
            namespace: None,
            section,
            file: "f.yaml".into(),
        }
    }

    #[test]
    fn applied_lines_go_to_their_section_and_failures_to_errors_once() {
        let mut a = Applied::default();
        a.add(&ObjectEvent::new(object("Service", Section::Modules), Action::Created));
        a.add(&ObjectEvent::new(object("ConfigMap", Section::Dependencies), Action::Unchanged));
        a.add(&ObjectEvent::new(object("Pod", Section::Modules), Action::Waiting).with_message("pending"));
        a.add(&ObjectEvent::new(object("Pod", Section::Modules), Action::Failed).with_message("ImagePullBackOff"));
        a.fail("ImagePullBackOff");
        a.fail("timed out");
        assert_eq!(a.results, ["service/x created", "configmap/x unchanged"]);
        assert_eq!(a.dependencies.results, ["configmap/x unchanged"]);
        assert_eq!(a.errors, ["pod/x: ImagePullBackOff", "timed out"]);
        assert_eq!(a.modules.errors, ["pod/x: ImagePullBackOff", "timed out"]);
    }

    #[test]
    fn counts_count_only_what_changed_objects() {
        let mut c = Counts::default();
        for a in [Action::Created, Action::Created, Action::Unchanged, Action::Ready, Action::Kept, Action::Deleted] {
            c.add(a);
        }
        assert_eq!(c, Counts { created: 2, configured: 0, unchanged: 1, deleted: 1, kept: 1 });
    }

    #[test]
    fn an_outcome_flattens_lines_and_summary_and_only_a_deploy_names_endpoints() {
        let deployment = DeploymentView {
            namespace: "default".into(),
            module: "redis".into(),
            name: "cache".into(),
            version: "latest".into(),
            config: Map::new(),
            endpoints: vec!["127.0.0.1:1".into()],
            status: backend::Status::Deployed,
            message: String::new(),
            objects: vec![],
            backend: backend::Kind::Local,
            updated_at: "2026-01-01T00:00:00Z".into(),
            dependents: vec![],
            wakeups: 0,
        };
        let summary = Summary { deployment, counts: Counts::default(), elapsed_ms: 7 };
        let deployed = serde_json::to_value(Outcome::new(Run::Deploy, Applied::default(), summary.clone())).unwrap();
        let keys: Vec<&str> = deployed.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "results",
                "errors",
                "dependencies",
                "modules",
                "endpoints",
                "deployment",
                "created",
                "configured",
                "unchanged",
                "deleted",
                "kept",
                "elapsed_ms"
            ]
        );
        assert_eq!(deployed["endpoints"], json!(["127.0.0.1:1"]));
        assert_eq!(deployed["deployment"]["status"], "deployed");
        assert_eq!(deployed["deployment"]["backend"], "local");
        let undeployed = serde_json::to_value(Outcome::new(Run::Undeploy, Applied::default(), summary)).unwrap();
        assert!(undeployed.get("endpoints").is_none());
    }
}
