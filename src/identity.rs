//! Who a deployment is, decided once: its [`DeploymentId`] (namespace, module, name), the
//! version a request means ("latest" when none is given), the namespace rule of a restricted
//! orchestrator, and the labels every object of a deployment carries.
//!
//! This module stands at the bottom of the house (it imports nothing of the crate), so the
//! service layer, startup, both backends and the CLI use the same rules.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Labels every object a deployment creates carries (DESIGN.md "Rules of the house").
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "jac-orc";
pub const LABEL_MODULE: &str = "jac-orc/module";
pub const LABEL_DEPLOYMENT: &str = "jac-orc/deployment";
pub const LABEL_NAMESPACE: &str = "jac-orc/namespace";
pub const ANNOTATION_VERSION: &str = "jac-orc/version";

/// The version a request without one means: an ordinary version folder of that name.
pub const LATEST: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: `{value}` is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit")]
    InvalidLabel { field: &'static str, value: String },
    #[error("invalid {field} `{value}`: use only lowercase letters, digits, '.', '_' and '-' (not '.' or '..')")]
    InvalidTemplateName { field: &'static str, value: String },
    #[error("namespace `{requested}` is not allowed: this orchestrator runs in restricted-namespace mode and deploys only into `{allowed}`")]
    RestrictedNamespace { requested: String, allowed: String },
}

impl Error {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Error::InvalidLabel { field, .. } | Error::InvalidTemplateName { field, .. } => field,
            Error::RestrictedNamespace { .. } => "config.namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which deployment this is: the key of every record.
///
/// [`DeploymentId::new`] is the validated way in; every place that takes an identity from
/// outside (requests, `MODULES`, the command line) goes through it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeploymentId {
    pub namespace: String,
    pub module: String,
    pub name: String,
}

impl DeploymentId {
    /// Checks each part: namespace and name are RFC 1123 labels, module a template name.
    pub fn new(namespace: impl Into<String>, module: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        Self::with_fields(namespace.into(), module.into(), name.into(), ["namespace", "module", "name"])
    }

    /// [`DeploymentId::new`] for an identity taken from a request's `config` (errors name
    /// `config.namespace` and `config.name`).
    pub fn from_config(namespace: String, module: String, name: String) -> Result<Self> {
        Self::with_fields(namespace, module, name, ["config.namespace", "module", "config.name"])
    }

    fn with_fields(namespace: String, module: String, name: String, fields: [&'static str; 3]) -> Result<Self> {
        check_label(fields[0], &namespace)?;
        check_template_name(fields[1], &module)?;
        check_label(fields[2], &name)?;
        Ok(DeploymentId { namespace, module, name })
    }
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.module, self.name)
    }
}

/// The version a request names, `latest` when it names none (`None` or empty).
pub fn version_or_latest(version: Option<&str>) -> &str {
    version.filter(|v| !v.is_empty()).unwrap_or(LATEST)
}

/// RFC 1123 label: what Kubernetes accepts as a name or namespace.
fn is_dns_label(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Module and version names: `[a-z0-9._-]+`, never `.` or `..` (they become path segments).
pub fn is_template_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_label(field: &'static str, value: &str) -> Result<()> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(Error::InvalidLabel { field, value: value.to_string() })
    }
}

fn check_template_name(field: &'static str, value: &str) -> Result<()> {
    if is_template_name(value) {
        Ok(())
    } else {
        Err(Error::InvalidTemplateName { field, value: value.to_string() })
    }
}

/// Where deployments may go: anywhere, or (restricted mode, the original's inverted
/// `CLUSTER_WIDE=true`) only into the orchestrator's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRule {
    home: String,
    restricted: bool,
}

impl NamespaceRule {
    pub fn new(home: impl Into<String>, restricted: bool) -> Self {
        NamespaceRule { home: home.into(), restricted }
    }

    /// The orchestrator's own namespace: the default target, home of its records.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The namespace a deployment goes to: the one asked for (checked), else the home.
    pub fn target(&self, requested: Option<&str>) -> Result<String> {
        match requested.filter(|ns| !ns.is_empty()) {
            Some(ns) => self.check(ns).map(|()| ns.to_string()),
            None => Ok(self.home.clone()),
        }
    }

    /// Refuses a namespace outside the home in restricted mode.
    pub fn check(&self, namespace: &str) -> Result<()> {
        if self.restricted && namespace != self.home {
            return Err(Error::RestrictedNamespace { requested: namespace.to_string(), allowed: self.home.clone() });
        }
        Ok(())
    }
}

/// Sets the labels and the version annotation that tie an object to its deployment, so
/// listing, status and undeploy work from the cluster itself. The identity labels always win
/// over what a template wrote there: a template cannot hide an object from its undeploy.
pub fn label(manifest: &mut Value, id: &DeploymentId, version: &str) {
    let Some(object) = manifest.as_object_mut() else {
        return;
    };
    let metadata = object_entry(object, "metadata");
    let labels = object_entry(metadata, "labels");
    for (key, value) in [
        (LABEL_MANAGED_BY, MANAGED_BY),
        (LABEL_MODULE, id.module.as_str()),
        (LABEL_DEPLOYMENT, id.name.as_str()),
        (LABEL_NAMESPACE, id.namespace.as_str()),
    ] {
        labels.insert(key.into(), value.into());
    }
    object_entry(metadata, "annotations").insert(ANNOTATION_VERSION.into(), version.into());
}

/// Label selector matching every object of one deployment.
pub fn selector(id: &DeploymentId) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MODULE}={},{LABEL_DEPLOYMENT}={},{LABEL_NAMESPACE}={}",
        id.module, id.name, id.namespace
    )
}

/// `map[key]` as an object, replacing whatever non-object stood there.
fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id() -> DeploymentId {
        DeploymentId::new("ns1", "redis", "cache").unwrap()
    }

    #[test]
    fn identities_are_validated_part_by_part_and_name_their_field() {
        assert_eq!(id().to_string(), "ns1/redis/cache");
        for (ns, module, name, field) in [
            ("Bad", "redis", "x", "namespace"),
            ("ns", "../redis", "x", "module"),
            ("ns", "redis", "-x", "name"),
            ("ns", "redis", "", "name"),
        ] {
            assert_eq!(DeploymentId::new(ns, module, name).unwrap_err().field(), field, "{ns} {module} {name}");
        }
        let e = DeploymentId::from_config("ns".into(), "redis".into(), "a_b".into()).unwrap_err();
        assert_eq!(e.field(), "config.name");
        assert!(e.to_string().contains("`a_b`"), "{e}");
    }

    #[test]
    fn a_missing_or_empty_version_means_latest() {
        assert_eq!(version_or_latest(None), "latest");
        assert_eq!(version_or_latest(Some("")), "latest");
        assert_eq!(version_or_latest(Some("7.4.2")), "7.4.2");
    }

    #[test]
    fn template_names_reject_traversal_and_odd_characters() {
        for bad in ["", ".", "..", "a/b", "../x", "Redis", "a b", "a\\b", "é"] {
            assert!(!is_template_name(bad), "{bad:?} accepted");
        }
        for good in ["redis", "mongodb-cluster", "6.0.5", "latest", "a_b"] {
            assert!(is_template_name(good), "{good:?} refused");
        }
    }

    #[test]
    fn the_restricted_rule_keeps_deployments_home_and_the_open_rule_does_not() {
        let restricted = NamespaceRule::new("orc", true);
        assert_eq!(restricted.target(None).unwrap(), "orc");
        assert_eq!(restricted.target(Some("")).unwrap(), "orc");
        assert_eq!(restricted.target(Some("orc")).unwrap(), "orc");
        let e = restricted.target(Some("other")).unwrap_err();
        assert!(
            matches!(&e, Error::RestrictedNamespace { requested, allowed } if requested == "other" && allowed == "orc")
        );
        assert_eq!(e.field(), "config.namespace");
        let open = NamespaceRule::new("orc", false);
        assert_eq!(open.target(Some("other")).unwrap(), "other");
        assert_eq!(open.target(None).unwrap(), "orc");
    }

    #[test]
    fn labels_are_set_over_template_values_and_other_labels_stay() {
        let mut m = json!({"metadata": {"name": "x", "labels": {"jac-orc/deployment": "template-set", "app": "a"}}});
        label(&mut m, &id(), "latest");
        let labels = &m["metadata"]["labels"];
        assert_eq!(labels["app"], "a");
        assert_eq!(labels[LABEL_DEPLOYMENT], "cache");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(labels[LABEL_MODULE], "redis");
        assert_eq!(labels[LABEL_NAMESPACE], "ns1");
        assert_eq!(m["metadata"]["annotations"][ANNOTATION_VERSION], "latest");
        let mut odd = json!({"metadata": {"labels": "not a map", "annotations": null}});
        label(&mut odd, &id(), "1");
        assert_eq!(odd["metadata"]["labels"][LABEL_MODULE], "redis");
        assert_eq!(odd["metadata"]["annotations"][ANNOTATION_VERSION], "1");
        let mut not_an_object = json!("text");
        label(&mut not_an_object, &id(), "1");
        assert_eq!(not_an_object, "text");
    }

    #[test]
    fn the_selector_names_all_identity_labels() {
        assert_eq!(
            selector(&id()),
            "app.kubernetes.io/managed-by=jac-orc,jac-orc/module=redis,jac-orc/deployment=cache,jac-orc/namespace=ns1"
        );
    }
}
