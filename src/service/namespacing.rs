//! The namespace rule applied to a request's values: the namespace a deployment goes to and the
//! orchestrator's own namespace for templates that need it.

use serde_json::{Map, Value};

use super::Result;
use crate::catalog::{self, placeholders::kind_of, TemplateVersion};
use crate::identity::NamespaceRule;

/// Applies the namespace rule to a template that takes a namespace: the one asked for
/// (checked), else the orchestrator's. A template declaring [`ORCHESTRATOR_NAMESPACE`]
/// (python-module's NetworkPolicy lets the orchestrator's pods in) gets the orchestrator's
/// namespace there unless the request names one.
pub(super) fn with_namespace(
    rule: &NamespaceRule,
    template: &TemplateVersion,
    config: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let mut config = config.clone();
    if template.declares(ORCHESTRATOR_NAMESPACE) {
        let given = config.get(ORCHESTRATOR_NAMESPACE).is_some_and(|v| v.as_str() != Some(""));
        if !given {
            config.insert(ORCHESTRATOR_NAMESPACE.into(), Value::String(rule.home().to_string()));
        }
    }
    if !template.declares("namespace") {
        return Ok(config);
    }
    let requested = match config.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(ns)) => Some(ns.as_str()),
        Some(other) => return Err(wrong_type("namespace", other).into()),
    };
    let namespace = rule.target(requested)?;
    config.insert("namespace".into(), Value::String(namespace));
    Ok(config)
}

/// The placeholder the service fills with its own namespace (see `with_namespace`).
pub const ORCHESTRATOR_NAMESPACE: &str = "orchestrator-namespace";

pub(super) fn wrong_type(name: &str, got: &Value) -> catalog::Error {
    catalog::Error::WrongType { name: name.into(), expected: "string", got: kind_of(got) }
}
