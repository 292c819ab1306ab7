//! A rendered, validated deployment: the ordered list of objects a backend applies.
//!
//! Backends only ever see a [`Plan`]; they never see raw request JSON. Ordering is fixed here
//! once: CRDs first (they must be Established before their custom resources), then Namespaces,
//! then everything else in template order (dependencies before the module's own files).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::identity::{
    DeploymentId, ANNOTATION_VERSION, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_MODULE, LABEL_NAMESPACE, MANAGED_BY,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Dependencies,
    Modules,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Dependencies => "dependencies",
            Section::Modules => "modules",
        }
    }
}

/// Identity of one Kubernetes-style object, as reported in events and records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None` for cluster-scoped objects (or when the template left it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub section: Section,
    pub file: String,
}

impl ObjectRef {
    /// Group, version and kind of the object, parsed from `api_version` and `kind`.
    pub fn gvk(&self) -> Gvk<'_> {
        let (group, version) = self.api_version.split_once('/').unwrap_or(("", &self.api_version));
        Gvk { group, version, kind: &self.kind }
    }

    /// API group of `api_version` ("" for the core group).
    pub fn group(&self) -> &str {
        self.gvk().group
    }

    /// Whether the object is of a kind (any version of its group).
    pub fn is(&self, kind: Kind) -> bool {
        self.gvk().is(kind)
    }

    /// kubectl's `<resource>.<group>/<name>` prefix, e.g. `deployment.apps/jac-redis`.
    ///
    /// kubectl prints the lowercase singular kind; for the core group there is no suffix.
    pub fn kubectl_name(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        match self.group() {
            "" => format!("{kind}/{}", self.name),
            group => format!("{kind}.{group}/{}", self.name),
        }
    }

    pub fn is_crd(&self) -> bool {
        self.is(Kind::CRD)
    }

    pub fn is_namespace(&self) -> bool {
        self.is(Kind::NAMESPACE)
    }
}

/// A Kubernetes group, version and kind, borrowed from an object's `apiVersion` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gvk<'a> {
    /// "" for the core group.
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
}

impl Gvk<'_> {
    pub fn is(&self, kind: Kind) -> bool {
        self.group == kind.group && self.kind == kind.kind
    }
}

/// A kind the orchestrator treats specially, named by group and kind (every version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind {
    pub group: &'static str,
    pub kind: &'static str,
}

impl Kind {
    pub const CRD: Kind = Kind { group: "apiextensions.k8s.io", kind: "CustomResourceDefinition" };
    pub const NAMESPACE: Kind = Kind { group: "", kind: "Namespace" };
    pub const SERVICE: Kind = Kind { group: "", kind: "Service" };
    pub const POD: Kind = Kind { group: "", kind: "Pod" };
    pub const DEPLOYMENT: Kind = Kind { group: "apps", kind: "Deployment" };
    pub const STATEFUL_SET: Kind = Kind { group: "apps", kind: "StatefulSet" };
    pub const DAEMON_SET: Kind = Kind { group: "apps", kind: "DaemonSet" };
}

/// One object to apply, with its full manifest (labels already added).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedObject {
    pub object: ObjectRef,
    pub manifest: Value,
}

/// A value only the local backend knows when it starts a workload, left as a slot in the
/// rendered recipe: the catalog renders everything else, the backend fills these in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The address workloads bind to (`127.0.0.1`).
    Host,
    /// The port the backend picked for this deployment.
    Port,
    /// The deployment's data directory.
    DataDir,
    /// The interpreter the backend runs Python workloads with (`--python`).
    Python,
}

/// One piece of a rendered recipe string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Text(String),
    Slot(Slot),
}

/// A rendered recipe string whose backend-known parts are still slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecipeText(pub Vec<Segment>);

impl RecipeText {
    /// A string with no slots.
    pub fn text(s: impl Into<String>) -> Self {
        RecipeText(vec![Segment::Text(s.into())])
    }

    pub fn fill(&self, values: &SlotValues) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Slot(Slot::Host) => out.push_str(&values.host),
                Segment::Slot(Slot::Port) => out.push_str(&values.port.to_string()),
                Segment::Slot(Slot::DataDir) => out.push_str(&values.data_dir),
                Segment::Slot(Slot::Python) => out.push_str(&values.python),
            }
        }
        out
    }

    pub fn uses(&self, slot: Slot) -> bool {
        self.0.contains(&Segment::Slot(slot))
    }
}

/// What the local backend fills into a recipe's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotValues {
    pub host: String,
    pub port: u16,
    pub data_dir: String,
    pub python: String,
}

/// How to run a template version on the local backend (`local.yaml`, rendered by the catalog
/// with the backend's values left as [`Slot`]s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRecipe {
    /// Program name looked up on PATH (or an absolute path).
    pub program: RecipeText,
    pub args: Vec<RecipeText>,
    pub readiness: Readiness,
    /// What speaks on the port (`redis`, `grpc`, ...), for humans and clients.
    pub protocol: String,
    /// Python packages to install into a per-deployment virtualenv first (python-module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, RecipeText)>,
    /// Env vars holding another deployment's secret, defined before `env` (which may expand
    /// them as `$(NAME)`): the local backend's `valueFrom.secretKeyRef`, resolved at launch from
    /// the referenced deployment's record, never stored with this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
}

/// An env var taking the value of another deployment's secret placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub name: String,
    pub deployment: DeploymentId,
    pub placeholder: String,
}

/// Kubernetes' env expansion, as the kubelet does it: `defined` first, then each of `env` in
/// order, whose `$(NAME)` takes the value of a var defined before it (else stays as written)
/// and whose `$$` is a literal `$`.
pub fn expand_env(defined: &[(String, String)], env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut known: std::collections::HashMap<String, String> = defined.iter().cloned().collect();
    let mut out = defined.to_vec();
    for (name, value) in env {
        let value = expand(&value, &known);
        known.insert(name.clone(), value.clone());
        out.push((name, value));
    }
    out
}

fn expand(text: &str, known: &std::collections::HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match known.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A recipe with its slots filled: exactly what the backend executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommand {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl LocalRecipe {
    pub fn command(&self, values: &SlotValues) -> LocalCommand {
        LocalCommand {
            program: self.program.fill(values),
            args: self.args.iter().map(|a| a.fill(values)).collect(),
            env: self.env.iter().map(|(k, v)| (k.clone(), v.fill(values))).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Readiness {
    /// The port accepts TCP connections.
    Tcp,
    /// The gRPC health service reports SERVING for `service`.
    GrpcHealth { service: String },
}

/// Everything a backend needs to deploy.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: DeploymentId,
    pub version: String,
    /// Resolved placeholder values (defaults, overrides and generated secrets), template order.
    pub config: Map<String, Value>,
    /// Names of placeholders whose values must never be returned by Get/List.
    pub secret_keys: Vec<String>,
    /// Objects in apply order.
    pub objects: Vec<PlannedObject>,
    /// How the local backend runs it, when the template version has a `local.yaml`.
    pub local: Option<LocalRecipe>,
}

impl Plan {
    /// Sorts objects into apply order: CRDs, then Namespaces, then the rest, stably.
    pub fn order_objects(objects: &mut [PlannedObject]) {
        objects.sort_by_key(|o| {
            if o.object.is_crd() {
                0
            } else if o.object.is_namespace() {
                1
            } else {
                2
            }
        });
    }
}

/// A deployment's desired state as a `JacDeployment` (or the local state file) holds it: the
/// identity, the template version and every value it sets, secret values included.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub id: DeploymentId,
    /// Empty means "latest".
    pub version: String,
    pub config: Map<String, Value>,
}

/// Why a desired state does not render into a plan: the text a status shows.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Renders desired states into plans exactly as the API's deploys do (the service layer
/// implements it), so the reconcile loop applies what a Deploy would have applied.
#[async_trait::async_trait]
pub trait Planner: Send + Sync + std::fmt::Debug + 'static {
    /// The plan for `desired`; secret placeholders it does not set are generated.
    async fn plan(&self, desired: &Desired) -> Result<Plan, PlanError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api_version: &str, kind: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: None,
            section: Section::Modules,
            file: "f.yaml".into(),
        }
    }

    #[test]
    fn kubectl_names_follow_kubectl() {
        assert_eq!(obj("apps/v1", "Deployment", "jac-redis").kubectl_name(), "deployment.apps/jac-redis");
        assert_eq!(obj("v1", "Service", "jac-redis").kubectl_name(), "service/jac-redis");
        assert_eq!(
            obj("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity", "db").kubectl_name(),
            "mongodbcommunity.mongodbcommunity.mongodb.com/db"
        );
    }

    #[test]
    fn kinds_compare_by_group_and_kind_through_the_gvk() {
        let crd = obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", "c");
        assert_eq!(crd.gvk(), Gvk { group: "apiextensions.k8s.io", version: "v1", kind: "CustomResourceDefinition" });
        assert!(crd.is_crd() && !crd.is_namespace());
        assert!(obj("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition", "c").is(Kind::CRD));
        assert!(!obj("example.com/v1", "CustomResourceDefinition", "c").is(Kind::CRD));
        let svc = obj("v1", "Service", "s");
        assert_eq!((svc.gvk().group, svc.gvk().version), ("", "v1"));
        assert!(svc.is(Kind::SERVICE) && !svc.is(Kind::DEPLOYMENT));
        assert!(!obj("serving.knative.dev/v1", "Service", "s").is(Kind::SERVICE));
        assert!(obj("apps/v1", "StatefulSet", "s").is(Kind::STATEFUL_SET));
    }

    #[test]
    fn order_puts_crds_then_namespaces_first_and_keeps_the_rest_stable() {
        let mut objects: Vec<PlannedObject> = [
            obj("v1", "Service", "a"),
            obj("v1", "Namespace", "ns"),
            obj("apps/v1", "Deployment", "b"),
            obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", "crd"),
        ]
        .into_iter()
        .map(|object| PlannedObject { object, manifest: Value::Null })
        .collect();
        Plan::order_objects(&mut objects);
        let names: Vec<_> = objects.iter().map(|o| o.object.name.as_str()).collect();
        assert_eq!(names, ["crd", "ns", "a", "b"]);
    }

    #[test]
    fn recipe_slots_are_filled_by_the_backend_values() {
        let recipe = LocalRecipe {
            program: RecipeText(vec![Segment::Slot(Slot::Python)]),
            args: vec![
                RecipeText::text("--port"),
                RecipeText(vec![Segment::Text("127.0.0.1:".into()), Segment::Slot(Slot::Port)]),
                RecipeText(vec![Segment::Slot(Slot::DataDir), Segment::Text("/x".into())]),
            ],
            readiness: Readiness::Tcp,
            protocol: "redis".into(),
            packages: vec![],
            env: vec![("H".into(), RecipeText(vec![Segment::Slot(Slot::Host)]))],
            secret_env: vec![],
        };
        let values =
            SlotValues { host: "127.0.0.1".into(), port: 6380, data_dir: "/d".into(), python: "python3".into() };
        let cmd = recipe.command(&values);
        assert_eq!(cmd.program, "python3");
        assert_eq!(cmd.args, ["--port", "127.0.0.1:6380", "/d/x"]);
        assert_eq!(cmd.env, [("H".to_string(), "127.0.0.1".to_string())]);
        assert!(recipe.args[1].uses(Slot::Port) && !recipe.args[0].uses(Slot::Port));
    }

    #[test]
    fn env_expands_vars_defined_before_as_the_kubelet_does() {
        let defined = vec![("JAC_ORC_REF_DB_0".to_string(), "s3cr$t".to_string())];
        let env = vec![
            ("DB".to_string(), "mongodb://me:$(JAC_ORC_REF_DB_0)@h/x".to_string()),
            ("COPY".to_string(), "$(DB)|$(LATER)|$$(DB)|$5|$(".to_string()),
            ("LATER".to_string(), "l".to_string()),
        ];
        let out = expand_env(&defined, env);
        assert_eq!(out[0], ("JAC_ORC_REF_DB_0".to_string(), "s3cr$t".to_string()));
        assert_eq!(out[1].1, "mongodb://me:s3cr$t@h/x");
        assert_eq!(out[2].1, "mongodb://me:s3cr$t@h/x|$(LATER)|$(DB)|$5|$(");
        assert_eq!(out.len(), 4);
    }
}
