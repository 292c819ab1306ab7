//! The `JacDeployment` custom resource (`jac-orc.io/v1alpha1`): one per deployment, in the
//! deployment's namespace and named after it. Its spec is the desired state (what the API's
//! Deploy writes, and what `kubectl apply` may write just the same); its status is what the
//! orchestrator last did (conditions, the applied revision, endpoints, the object inventory).
//!
//! Secret placeholder values never sit in the spec: they live in a Secret of the same namespace
//! (`spec.secretRef`, by default [`default_secret_name`], owned by the resource and created by
//! the orchestrator when it generates them).
//!
//! The CRD in `manifests/` is generated from these types ([`crd_yaml`]); a test fails when the
//! checked-in file differs. The schema is structural and avoids what Kubernetes 1.20 refuses
//! (no CEL, no `default: null`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::{ObjectRef, Section};

/// API group of the resource (and of the RBAC resources of `auth::authorize`).
pub const GROUP: &str = "jac-orc.io";
/// Finalizer that makes deleting a `JacDeployment` undeploy what it created first.
pub const FINALIZER: &str = "jac-orc.io/undeploy";
/// Label on the Secret holding a deployment's secret values (value: the deployment's name).
pub const LABEL_SECRETS_OF: &str = "jac-orc.io/secrets-of";

/// `<name>-jac-orc-secrets`: where secret values go when `spec.secretRef` names no Secret.
pub fn default_secret_name(name: &str) -> String {
    format!("{name}-jac-orc-secrets")
}

/// A deployment of a jac-orc template: module, version and placeholder values. The orchestrator
/// renders it, applies the objects with server-side apply, keeps them as declared (unless
/// `options.selfHeal` is false) and deletes them when the resource is deleted.
// kube's printcolumn syntax repeats `type_ = "string"` per column, which the lint takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "jac-orc.io",
    version = "v1alpha1",
    kind = "JacDeployment",
    namespaced,
    status = "JacDeploymentStatus",
    derive = "PartialEq",
    shortname = "jacd",
    category = "jac-orc",
    doc = "A deployment of a jac-orc template (module, version, placeholder values), reconciled by the orchestrator.",
    printcolumn(name = "Module", type_ = "string", json_path = ".spec.module"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Endpoints", type_ = "string", json_path = ".status.endpoints"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct JacDeploymentSpec {
    /// Template module: `redis`, `mongodb`, `jac-cloud`, `python-module`, ...
    pub module: String,
    /// Template version; `latest` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Values of the template's non-secret placeholders (any JSON value each). Placeholders not
    /// given take their defaults. `name` and `namespace`, when given, must match the resource.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Map<String, Value>,
    /// The Secret (same namespace) whose keys are the values of secret placeholders. Without it,
    /// the orchestrator keeps generated secrets in `<name>-jac-orc-secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Options::is_default")]
    pub options: Options,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    pub name: String,
}

/// How the orchestrator treats the deployment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// Re-apply an object changed or deleted behind the orchestrator's back (default true).
    /// When false, such drift is only reported (condition `Drifted`).
    #[serde(default = "yes")]
    pub self_heal: bool,
    /// python-module only: scale to zero after this long without calls (`90s`, `10m`, `1h`, or
    /// seconds). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for Options {
    fn default() -> Self {
        Options { self_heal: true, idle_timeout: None }
    }
}

impl Options {
    fn is_default(&self) -> bool {
        *self == Options::default()
    }

    /// `idleTimeout` as a duration: seconds (`90`), or a number with `s`, `m` or `h`.
    pub fn idle_timeout_duration(&self) -> Result<Option<std::time::Duration>, String> {
        let Some(text) = self.idle_timeout.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let (number, unit) = match text.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
            _ => (text, 's'),
        };
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("`{text}`: use seconds, or a number ending in s, m or h")),
        };
        let n: u64 = number.parse().map_err(|_| format!("`{text}`: use seconds, or a number ending in s, m or h"))?;
        Ok(Some(std::time::Duration::from_secs(n.saturating_mul(scale))))
    }
}

/// What the orchestrator last did with the deployment.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JacDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `deploying`, `deployed` or `failed` (what the API reports).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `Ready`, `Progressing`, `Degraded` and `Drifted`, each with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The desired state last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<AppliedRevision>,
    /// `host:port` addresses of the deployment's Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Every object of the deployment, in apply order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// RFC 3339 time of the last change of the record (not of every look).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub updated_at: String,
}

/// A condition, as Kubernetes writes them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The desired state of the last successful apply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRevision {
    /// Counts the applies that changed the desired state (1 for the first).
    pub revision: i64,
    pub generation: i64,
    /// Template version applied.
    pub version: String,
    /// `sha256:` digest of the rendered objects (secret values included, order-independent).
    pub digest: String,
    /// What that apply changed: kubectl-style lines (`deployment.apps/x configured`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// RFC 3339.
    pub time: String,
}

/// One object of the deployment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `dependencies` or `modules`.
    pub section: String,
    /// Template file it came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
}

impl From<&ObjectRef> for InventoryEntry {
    fn from(o: &ObjectRef) -> Self {
        InventoryEntry {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            namespace: o.namespace.clone(),
            section: o.section.as_str().into(),
            file: o.file.clone(),
        }
    }
}

impl From<&InventoryEntry> for ObjectRef {
    fn from(e: &InventoryEntry) -> Self {
        ObjectRef {
            api_version: e.api_version.clone(),
            kind: e.kind.clone(),
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            section: if e.section == "dependencies" { Section::Dependencies } else { Section::Modules },
            file: e.file.clone(),
        }
    }
}

impl JacDeploymentStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether condition `type_` is `True`.
    pub fn is(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// `config` takes any JSON object: placeholder values are typed by the template, not here.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The CustomResourceDefinition as one YAML document.
pub fn crd_document() -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(JacDeployment::crd()).expect("the CRD serializes");
    serde_norway::to_string(&crd).expect("the CRD serializes as YAML")
}

/// The CustomResourceDefinition, as `manifests/jac-orc-crd.yaml` holds it.
pub fn crd_yaml() -> String {
    format!(
        "# Generated from src/backend/kube/resource.rs: do not edit. Regenerate with\n\
         #   JAC_ORC_BLESS=1 cargo test --lib crd_manifest_matches_the_types\n{}",
        crd_document()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = "manifests/jac-orc-crd.yaml";
    /// The install files carry the same CRD between these lines.
    const INSTALLS: [&str; 2] = ["manifests/jac-orc.yaml", "manifests/jac-orc-cluster-wide.yaml"];
    const BEGIN: &str = "# BEGIN generated JacDeployment CRD";
    const END: &str = "# END generated JacDeployment CRD";

    /// `text` with the block between the markers replaced by `crd`.
    fn with_crd_block(text: &str, crd: &str) -> Option<String> {
        let begin = text.find(BEGIN)?;
        let body = begin + text[begin..].find('\n')? + 1;
        let end = body + text[body..].find(END)?;
        Some(format!("{}{crd}{}", &text[..body], &text[end..]))
    }

    #[test]
    fn crd_manifest_matches_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bless = std::env::var("JAC_ORC_BLESS").as_deref() == Ok("1");
        let hint = "run JAC_ORC_BLESS=1 cargo test --lib crd_manifest_matches_the_types";
        let generated = crd_yaml();
        if bless {
            std::fs::write(root.join(CHECKED_IN), &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(root.join(CHECKED_IN)).unwrap_or_default();
        assert!(checked_in == generated, "{CHECKED_IN} differs from what the types generate; {hint}");
        for install in INSTALLS {
            let text = std::fs::read_to_string(root.join(install)).unwrap();
            let want = with_crd_block(&text, &crd_document()).unwrap_or_else(|| panic!("{install}: no {BEGIN} block"));
            if bless {
                std::fs::write(root.join(install), &want).unwrap();
            }
            let text = std::fs::read_to_string(root.join(install)).unwrap();
            assert!(text == want, "the CRD in {install} differs from what the types generate; {hint}");
        }
    }

    #[test]
    fn the_schema_is_structural_for_kubernetes_1_20() {
        let yaml = crd_yaml();
        // 1.20 refuses null defaults and does not know CEL rules.
        assert!(!yaml.contains("default: null"), "{yaml}");
        assert!(!yaml.contains("x-kubernetes-validations"), "{yaml}");
        let crd = serde_json::to_value(<JacDeployment as kube::CustomResourceExt>::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["config"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(spec["required"], serde_json::json!(["module"]));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Module", "Version", "Status", "Endpoints", "Age"]);
    }

    #[test]
    fn specs_round_trip_and_options_default_to_self_heal() {
        let spec: JacDeploymentSpec = serde_json::from_value(serde_json::json!({"module": "redis"})).unwrap();
        assert!(spec.options.self_heal);
        assert_eq!(serde_json::to_value(&spec).unwrap(), serde_json::json!({"module": "redis"}));
        let spec: JacDeploymentSpec =
            serde_json::from_value(serde_json::json!({"module": "redis", "options": {"selfHeal": false}})).unwrap();
        assert!(!spec.options.self_heal);
        assert_eq!(serde_json::to_value(&spec).unwrap()["options"], serde_json::json!({"selfHeal": false}));
    }

    #[test]
    fn idle_timeouts_are_seconds_or_units() {
        let with = |t: &str| Options { self_heal: true, idle_timeout: Some(t.into()) }.idle_timeout_duration();
        assert_eq!(with("90").unwrap(), Some(std::time::Duration::from_secs(90)));
        assert_eq!(with("10m").unwrap(), Some(std::time::Duration::from_secs(600)));
        assert_eq!(with("1h").unwrap(), Some(std::time::Duration::from_secs(3600)));
        assert!(with("soon").is_err() && with("5d").is_err() && with("-1s").is_err());
        assert_eq!(Options::default().idle_timeout_duration().unwrap(), None);
    }
}
