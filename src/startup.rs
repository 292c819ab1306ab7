//! Startup `MODULES`: the original's JSON (namespace -> module -> name -> {module, version,
//! config}) deployed when the server starts. Each entry is deployed on its own; one failing
//! entry is logged and does not stop the others (the original aborted at the first failure).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::backend::ApplyOptions;
use crate::service::{DeploymentRequest, Service};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MODULES is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("MODULES: {0}")]
    Shape(String),
    #[error("cannot read MODULES file {path}")]
    File { path: String, source: std::io::Error },
}

/// Reads `MODULES` given inline or as `@path`.
pub fn load(text: &str) -> Result<Vec<DeploymentRequest>, Error> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|source| Error::File { path: path.into(), source })?,
        None => text.to_string(),
    };
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<DeploymentRequest>, Error> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let root: Value = serde_json::from_str(text)?;
    let obj = |v: &Value, at: &str| -> Result<Map<String, Value>, Error> {
        v.as_object().cloned().ok_or_else(|| Error::Shape(format!("{at} must be an object")))
    };
    let mut out = Vec::new();
    for (namespace, modules) in obj(&root, "the top level")? {
        for (module, names) in obj(&modules, &format!("`{namespace}`"))? {
            for (name, entry) in obj(&names, &format!("`{namespace}.{module}`"))? {
                let entry = obj(&entry, &format!("`{namespace}.{module}.{name}`"))?;
                let version = entry.get("version").and_then(Value::as_str).map(str::to_string);
                let mut config = match entry.get("config") {
                    Some(Value::Object(c)) => c.clone(),
                    None | Some(Value::Null) => Map::new(),
                    Some(_) => {
                        return Err(Error::Shape(format!("`{namespace}.{module}.{name}.config` must be an object")))
                    }
                };
                // As in the original: the keys decide the name and namespace.
                config.insert("name".into(), Value::String(name.clone()));
                config.insert("namespace".into(), Value::String(namespace.clone()));
                out.push(DeploymentRequest { module: module.clone(), version, config });
            }
        }
    }
    Ok(out)
}

/// Deploys every entry as the operator (the server's own configuration needs no permission),
/// logging each outcome; returns how many succeeded.
pub async fn replay(service: Arc<Service>, requests: Vec<DeploymentRequest>) -> usize {
    let total = requests.len();
    let mut ok = 0;
    for mut req in requests {
        // Templates without a name/namespace placeholder cannot take the forced keys.
        if let Ok(t) = service.catalog().load(&req.module, req.version()) {
            req.config.retain(|k, _| (k != "name" && k != "namespace") || t.declares(k));
        }
        let label = format!("{}/{}", req.module, req.config.get("name").and_then(Value::as_str).unwrap_or("?"));
        tracing::info!(deployment = %label, "MODULES: deploying");
        let outcome = match service.deploy(&Caller::Operator, &req, ApplyOptions::default()).await {
            Ok(stream) => stream.finish().await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(summary) => {
                ok += 1;
                let d = &summary.deployment;
                tracing::info!(deployment = %d.id(), endpoints = ?d.endpoints, "MODULES: deployed");
            }
            Err(e) => {
                tracing::error!(deployment = %label, error = %e, "MODULES: deployment failed; continuing with the others")
            }
        }
    }
    tracing::info!(ok, total, "MODULES: startup deployments done");
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_force_name_and_namespace() {
        let reqs = parse(r#"{"myca": {"redis": {"cache": {"module": "redis", "version": "7.4.2", "config": {"namespace": "default", "memory": "10mb"}}}}}"#).unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].module, "redis");
        assert_eq!(reqs[0].version.as_deref(), Some("7.4.2"));
        assert_eq!(reqs[0].config["namespace"], "myca");
        assert_eq!(reqs[0].config["name"], "cache");
        assert_eq!(reqs[0].config["memory"], "10mb");
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(parse("[]").unwrap_err().to_string().contains("top level"));
        assert!(parse(r#"{"ns": {"redis": {"a": 1}}}"#).unwrap_err().to_string().contains("ns.redis.a"));
        assert!(parse("").unwrap().is_empty());
    }
}
