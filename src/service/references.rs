//! Wiring between deployments: a placeholder value may be another deployment's output,
//! `{"from": "mongodb/testing-db", "output": "uri"}` (CLI: `@mongodb/testing-db.uri`), in the
//! same namespace.
//!
//! The output is rendered from the referenced deployment's record (its resolved config, never
//! its live objects, see [`crate::catalog::outputs`]). Text goes into the template as it is. A
//! Secret key (a password, or a URI composed with one) goes in as `$(JAC_ORC_REF_<PLACEHOLDER>_<i>)`
//! and, in every container whose `env` uses it, an env var of that name with
//! `valueFrom.secretKeyRef` is defined before the first var that uses it, so Kubernetes' `$(VAR)`
//! expansion composes the value in the pod. Anywhere else (a ConfigMap, a Secret's data, a
//! command line) such a value is refused: a secret is never cleartext in the referencing
//! deployment's objects, and its record keeps the reference itself, not the value.
//!
//! The local backend resolves the same env the way the kubelet would (see
//! [`crate::plan::LocalRecipe::secret_env`]).
//!
//! A deployment lists the deployments referencing it (`dependents`), and undeploying it while it
//! has any is refused unless the request says `force_referenced`.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{DeploymentRequest, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::backend::{self, DeploymentRecord};
use crate::catalog::outputs::{LocalEndpoint, OutputValue, Part, SecretKeyRef};
use crate::identity::DeploymentId;
use crate::plan::{Plan, SecretEnv};

/// Keys of a reference object.
pub const FROM: &str = "from";
pub const OUTPUT: &str = "output";
/// Prefix of the env vars carrying Secret keys into `$(VAR)` expansions.
pub const VAR_PREFIX: &str = "JAC_ORC_REF_";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("placeholder `{placeholder}`: {reason}")]
    Malformed { placeholder: String, reason: String },
    #[error(
        "placeholder `{placeholder}`: {reference} names namespace `{from}`, but this deployment is in `{namespace}`: references (and the Secrets they carry) cannot cross namespaces"
    )]
    CrossNamespace { placeholder: String, reference: String, from: String, namespace: String },
    #[error("placeholder `{placeholder}`: {reference} refers to deployment {target}, which does not exist")]
    NotFound { placeholder: String, reference: String, target: DeploymentId },
    #[error("placeholder `{placeholder}`: {reference}: template {module} has no output `{output}`; valid outputs: {}", if .valid.is_empty() { "(none)".to_string() } else { .valid.join(", ") })]
    UnknownOutput { placeholder: String, reference: String, module: String, output: String, valid: Vec<String> },
    #[error(
        "placeholder `{placeholder}`: {reference} is (or holds) a Secret reference, which only a container's env can take, not {place}"
    )]
    SecretOutsideEnv { placeholder: String, reference: String, place: String },
    #[error(
        "placeholder `{placeholder}`: {reference} needs a server: references are resolved against deployed records"
    )]
    OfflineReference { placeholder: String, reference: String },
    #[error("{id} is referenced by {}: undeploy those first, or pass force_referenced", .dependents.join(", "))]
    Referenced { id: DeploymentId, dependents: Vec<String> },
}

impl Error {
    /// The request field an error is about.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::Malformed { placeholder, .. }
            | Error::CrossNamespace { placeholder, .. }
            | Error::NotFound { placeholder, .. }
            | Error::UnknownOutput { placeholder, .. }
            | Error::SecretOutsideEnv { placeholder, .. }
            | Error::OfflineReference { placeholder, .. } => Some(format!("config.{placeholder}")),
            Error::Referenced { .. } => None,
        }
    }
}

/// A reference to another deployment's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Only ever the referencing deployment's own (checked).
    pub namespace: Option<String>,
    pub module: String,
    pub name: String,
    pub output: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.from(), self.output)
    }
}

impl Reference {
    /// `Some` when `value` is a reference object (a map with a `from` key), checked.
    pub fn parse(placeholder: &str, value: &Value) -> Option<Result<Reference, Error>> {
        let Value::Object(m) = value else { return None };
        if !m.contains_key(FROM) {
            return None;
        }
        Some(Self::parse_object(placeholder, m))
    }

    fn parse_object(placeholder: &str, m: &Map<String, Value>) -> Result<Reference, Error> {
        let bad = |reason: String| Error::Malformed { placeholder: placeholder.to_string(), reason };
        if let Some(extra) = m.keys().find(|k| *k != FROM && *k != OUTPUT) {
            return Err(bad(format!("a reference has only `from` and `output`, not `{extra}`")));
        }
        let text = |key: &str| match m.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad(format!("a reference needs `{key}` as a non-empty string"))),
        };
        let (from, output) = (text(FROM)?, text(OUTPUT)?);
        let segments: Vec<&str> = from.split('/').collect();
        let (namespace, module, name) = match segments[..] {
            [module, name] => (None, module, name),
            [namespace, module, name] => (Some(namespace.to_string()), module, name),
            _ => return Err(bad(format!("`from` is MODULE/NAME (e.g. mongodb/testing-db), not `{from}`"))),
        };
        if [module, name].iter().any(|s| s.is_empty()) || namespace.as_deref() == Some("") {
            return Err(bad(format!("`from` is MODULE/NAME (e.g. mongodb/testing-db), not `{from}`")));
        }
        Ok(Reference { namespace, module: module.into(), name: name.into(), output })
    }

    fn from(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}/{}", self.module, self.name),
            None => format!("{}/{}", self.module, self.name),
        }
    }

    /// The reference as a placeholder value (what a record keeps).
    pub fn to_value(&self) -> Value {
        json!({FROM: self.from(), OUTPUT: self.output})
    }

    /// The referenced deployment, for a deployment in `namespace`.
    pub fn target(&self, placeholder: &str, namespace: &str) -> Result<DeploymentId, Error> {
        if let Some(ns) = self.namespace.as_deref().filter(|ns| *ns != namespace) {
            return Err(Error::CrossNamespace {
                placeholder: placeholder.into(),
                reference: self.to_string(),
                from: ns.into(),
                namespace: namespace.into(),
            });
        }
        DeploymentId::new(namespace, &self.module, &self.name)
            .map_err(|e| Error::Malformed { placeholder: placeholder.into(), reason: format!("{self}: {e}") })
    }
}

/// The references among placeholder values, in order.
pub fn references_in(config: &Map<String, Value>) -> Result<Vec<(String, Reference)>, Error> {
    config.iter().filter_map(|(k, v)| Reference::parse(k, v).map(|r| r.map(|r| (k.clone(), r)))).collect()
}

/// Refuses references where there is no server to resolve them (`jac-orc template`).
pub fn refuse_offline(config: &Map<String, Value>) -> Result<(), Error> {
    match references_in(config)?.into_iter().next() {
        Some((placeholder, r)) => Err(Error::OfflineReference { placeholder, reference: r.to_string() }),
        None => Ok(()),
    }
}

/// The deployments among `records` whose values reference `id`, as `module/name`, sorted.
pub fn dependents_in(records: &[DeploymentRecord], id: &DeploymentId) -> Vec<String> {
    let mut out = BTreeSet::new();
    for r in records.iter().filter(|r| r.id != *id && r.id.namespace == id.namespace) {
        let refs = references_in(&r.config).unwrap_or_default();
        if refs.iter().any(|(p, reference)| reference.target(p, &r.id.namespace).is_ok_and(|t| t == *id)) {
            out.insert(format!("{}/{}", r.id.module, r.id.name));
        }
    }
    out.into_iter().collect()
}

/// The env var name carrying part `index` of `placeholder`'s value.
fn var_name(placeholder: &str, index: usize) -> String {
    let upper: String =
        placeholder.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{VAR_PREFIX}{upper}_{index}")
}

/// One placeholder wired to an output.
#[derive(Debug, Clone)]
struct Bound {
    placeholder: String,
    reference: Reference,
    /// The env vars its value expands, with the Secret keys they hold.
    vars: Vec<(String, SecretKeyRef)>,
}

/// The references of one request, resolved: what [`Wiring::apply`] needs after rendering.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    bound: Vec<Bound>,
}

impl Wiring {
    /// The request referenced nothing.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// The value the template sees for `placeholder`, and the binding to remember.
    fn bind(&mut self, placeholder: &str, reference: Reference, value: &OutputValue) -> Value {
        let mut vars = Vec::new();
        let text = match value.as_text() {
            Some(text) => text,
            None => {
                let mut out = String::new();
                for part in &value.0 {
                    match part {
                        // `$$` is Kubernetes' escape of a literal `$` in a value that expands.
                        Part::Text(t) => out.push_str(&t.replace('$', "$$")),
                        Part::Secret(r) => {
                            let var = var_name(placeholder, vars.len());
                            out.push_str(&format!("$({var})"));
                            vars.push((var, r.clone()));
                        }
                    }
                }
                out
            }
        };
        self.bound.push(Bound { placeholder: placeholder.to_string(), reference, vars });
        Value::String(text)
    }

    /// Finishes a plan rendered from wired values: its config keeps the references (never a
    /// value taken from another deployment), each container whose env expands a Secret key gets
    /// the secretKeyRef var defined before it, the local recipe learns where those keys come
    /// from, and a Secret key anywhere else is refused.
    pub fn apply(&self, plan: &mut Plan) -> Result<(), Error> {
        for b in &self.bound {
            plan.config.insert(b.placeholder.clone(), b.reference.to_value());
        }
        let vars: Vec<(&Bound, &String, &SecretKeyRef)> =
            self.bound.iter().flat_map(|b| b.vars.iter().map(move |(v, r)| (b, v, r))).collect();
        if vars.is_empty() {
            return Ok(());
        }
        let refused = |b: &Bound, place: String| Error::SecretOutsideEnv {
            placeholder: b.placeholder.clone(),
            reference: b.reference.to_string(),
            place,
        };
        for o in &mut plan.objects {
            let place = format!("{} {}", o.object.kind, o.object.name);
            define_in_env(&mut o.manifest, &vars);
            let mut rest = o.manifest.clone();
            drop_env_values(&mut rest);
            let text = rest.to_string();
            if let Some((b, _, _)) = vars.iter().find(|(_, v, _)| text.contains(&format!("$({v})"))) {
                return Err(refused(b, place));
            }
        }
        if let Some(local) = &mut plan.local {
            let uses = |t: &crate::plan::RecipeText, v: &str| {
                t.0.iter().any(|s| matches!(s, crate::plan::Segment::Text(x) if x.contains(&format!("$({v})"))))
            };
            for (b, v, r) in &vars {
                if uses(&local.program, v) || local.args.iter().any(|a| uses(a, v)) {
                    return Err(refused(b, "the local recipe's command line".into()));
                }
                if local.env.iter().any(|(_, t)| uses(t, v)) {
                    let target = b.reference.target(&b.placeholder, &plan.id.namespace)?;
                    local.secret_env.push(SecretEnv {
                        name: (*v).clone(),
                        deployment: target,
                        placeholder: r.placeholder.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Every container list (`containers`, `initContainers`) anywhere in `manifest`.
fn containers_mut(manifest: &mut Value, each: &mut dyn FnMut(&mut Map<String, Value>)) {
    match manifest {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match (k.as_str(), v) {
                    ("containers" | "initContainers", Value::Array(list)) => {
                        list.iter_mut().filter_map(Value::as_object_mut).for_each(&mut *each)
                    }
                    (_, v) => containers_mut(v, each),
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| containers_mut(v, each)),
        _ => {}
    }
}

/// In each container, defines each var before the first env entry whose value expands it.
fn define_in_env(manifest: &mut Value, vars: &[(&Bound, &String, &SecretKeyRef)]) {
    containers_mut(manifest, &mut |container| {
        let Some(Value::Array(env)) = container.get_mut("env") else { return };
        let mut out = Vec::with_capacity(env.len());
        let mut defined = BTreeSet::new();
        for entry in env.drain(..) {
            if let Some(value) = entry.get("value").and_then(Value::as_str) {
                for (_, var, r) in vars {
                    if value.contains(&format!("$({var})")) && defined.insert((*var).clone()) {
                        out.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}}));
                    }
                }
            }
            if let Some(name) = entry.get("name").and_then(Value::as_str) {
                defined.insert(name.to_string());
            }
            out.push(entry);
        }
        *env = out;
    });
}

/// Removes every container env `value` (where `$(VAR)` expands), to find what is left elsewhere.
fn drop_env_values(manifest: &mut Value) {
    containers_mut(manifest, &mut |container| {
        if let Some(Value::Array(env)) = container.get_mut("env") {
            env.iter_mut().filter_map(Value::as_object_mut).for_each(|e| {
                e.remove("value");
            });
        }
    });
}

impl Service {
    /// Resolves the references among `req`'s values into the values the template sees; the
    /// [`Wiring`] finishes the plan. `caller` (none for the reconcile loops) needs `get` on each
    /// referenced deployment. Errors name the placeholder and the reference.
    pub(super) async fn wire(
        &self,
        caller: Option<&Caller>,
        req: &DeploymentRequest,
    ) -> super::Result<(DeploymentRequest, Wiring)> {
        let refs = references_in(&req.config)?;
        let mut wiring = Wiring::default();
        if refs.is_empty() {
            return Ok((req.clone(), wiring));
        }
        let template = self.catalog.load(&req.module, req.version())?;
        let config = super::namespacing::with_namespace(&self.rule, &template, &req.config)?;
        let namespace = match config.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => self.rule.home().to_string(),
        };
        let mut wired = req.clone();
        for (placeholder, reference) in refs {
            let target = reference.target(&placeholder, &namespace)?;
            if let Some(caller) = caller {
                let (ns, name) = (Some(target.namespace.as_str()), Some(target.name.as_str()));
                self.permit(caller, Verb::Get, Resource::JacDeployments, ns, name).await?;
            }
            let Some(record) = self.backend.get(&target).await? else {
                return Err(Error::NotFound { placeholder, reference: reference.to_string(), target }.into());
            };
            let value = self.output_of(&record, &placeholder, &reference)?;
            let value = wiring.bind(&placeholder, reference, &value);
            wired.config.insert(placeholder, value);
        }
        Ok((wired, wiring))
    }

    /// The output a reference names, rendered from the referenced deployment's record.
    fn output_of(&self, record: &DeploymentRecord, placeholder: &str, r: &Reference) -> super::Result<OutputValue> {
        let template = self.catalog.load(&record.id.module, &record.version)?;
        if template.outputs.get(&r.output).is_none() {
            return Err(Error::UnknownOutput {
                placeholder: placeholder.into(),
                reference: r.to_string(),
                module: format!("{}/{}", record.id.module, record.version),
                output: r.output.clone(),
                valid: template.outputs.names(),
            }
            .into());
        }
        let local = match record.backend {
            backend::Kind::Local => record.endpoints.first().and_then(|e| LocalEndpoint::parse(e)),
            backend::Kind::Kubernetes => None,
        };
        let origin = format!("{}/{}", record.id.module, record.version);
        Ok(template.outputs.render(&origin, &r.output, &record.config, &record.secret_keys, local.as_ref())?)
    }

    /// The deployments referencing `id`, as `module/name`.
    pub(super) async fn dependents(&self, id: &DeploymentId) -> super::Result<Vec<String>> {
        Ok(dependents_in(&self.backend.list().await?, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ObjectRef, PlannedObject, Section};

    fn reference(v: Value) -> Result<Reference, Error> {
        Reference::parse("database-host", &v).expect("a reference")
    }

    #[test]
    fn references_parse_and_bad_ones_name_the_placeholder() {
        let r = reference(json!({"from": "mongodb/testing-db", "output": "uri"})).unwrap();
        assert_eq!((r.module.as_str(), r.name.as_str(), r.output.as_str()), ("mongodb", "testing-db", "uri"));
        assert_eq!(r.to_string(), "mongodb/testing-db.uri");
        assert_eq!(r.to_value(), json!({"from": "mongodb/testing-db", "output": "uri"}));
        assert!(Reference::parse("x", &json!({"a": 1})).is_none());
        assert!(Reference::parse("x", &json!("mongodb/testing-db.uri")).is_none());
        for (bad, want) in [
            (json!({"from": "mongodb", "output": "uri"}), "MODULE/NAME"),
            (json!({"from": "mongodb/db"}), "`output`"),
            (json!({"from": "mongodb/db", "output": "uri", "x": 1}), "not `x`"),
            (json!({"from": 3, "output": "uri"}), "`from`"),
        ] {
            let e = reference(bad.clone()).unwrap_err();
            assert_eq!(e.field().as_deref(), Some("config.database-host"), "{bad}");
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
        let other = reference(json!({"from": "prod/mongodb/db", "output": "uri"})).unwrap();
        let e = other.target("database-host", "dev").unwrap_err();
        assert!(matches!(e, Error::CrossNamespace { .. }) && e.to_string().contains("cannot cross namespaces"), "{e}");
        assert_eq!(other.target("database-host", "prod").unwrap().to_string(), "prod/mongodb/db");
    }

    fn uri() -> OutputValue {
        let r = SecretKeyRef { name: "me-password".into(), key: "password".into(), placeholder: "password".into() };
        OutputValue(vec![Part::Text("mongodb://me:".into()), Part::Secret(r), Part::Text("@db:27017/$x".into())])
    }

    fn deployment(env: Value) -> PlannedObject {
        PlannedObject {
            object: ObjectRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "app".into(),
                namespace: Some("ns".into()),
                section: Section::Modules,
                file: "f".into(),
            },
            manifest: json!({"spec": {"template": {"spec": {
                "initContainers": [{"name": "check", "env": env.clone()}],
                "containers": [{"name": "app", "env": env}, {"name": "side"}]}}}}),
        }
    }

    fn plan(objects: Vec<PlannedObject>) -> Plan {
        Plan {
            id: DeploymentId::new("ns", "jac-cloud", "app").unwrap(),
            version: "latest".into(),
            config: Map::new(),
            secret_keys: vec![],
            objects,
            local: None,
        }
    }

    #[test]
    fn secret_parts_compose_with_var_expansion_defined_before_their_use() {
        let mut wiring = Wiring::default();
        let r = reference(json!({"from": "mongodb/db", "output": "uri"})).unwrap();
        let value = wiring.bind("database-host", r, &uri());
        assert_eq!(value, json!("mongodb://me:$(JAC_ORC_REF_DATABASE_HOST_0)@db:27017/$$x"));
        let env = json!([{"name": "A", "value": "1"}, {"name": "DATABASE_HOST", "value": value}]);
        let mut p = plan(vec![deployment(env)]);
        p.config.insert("database-host".into(), value.clone());
        wiring.apply(&mut p).unwrap();
        assert_eq!(p.config["database-host"], json!({"from": "mongodb/db", "output": "uri"}));
        let spec = &p.objects[0].manifest["spec"]["template"]["spec"];
        for list in ["containers", "initContainers"] {
            let env = &spec[list][0]["env"];
            assert_eq!(env.as_array().unwrap().len(), 3, "{env}");
            assert_eq!(env[0]["name"], "A");
            assert_eq!(
                env[1],
                json!({"name": "JAC_ORC_REF_DATABASE_HOST_0",
                       "valueFrom": {"secretKeyRef": {"name": "me-password", "key": "password"}}})
            );
            assert_eq!(env[2]["name"], "DATABASE_HOST");
        }
        assert!(spec["containers"][1].get("env").is_none());
    }

    #[test]
    fn secret_parts_anywhere_but_env_are_refused_and_text_goes_anywhere() {
        let mut wiring = Wiring::default();
        let r = reference(json!({"from": "mongodb/db", "output": "uri"})).unwrap();
        let value = wiring.bind("database-host", r, &uri());
        let mut cm = deployment(json!([]));
        cm.object.kind = "ConfigMap".into();
        cm.manifest = json!({"data": {"url": value}});
        let e = wiring.apply(&mut plan(vec![cm.clone()])).unwrap_err();
        assert!(matches!(e, Error::SecretOutsideEnv { .. }), "{e}");
        assert!(e.to_string().contains("ConfigMap app") && e.to_string().contains("database-host"), "{e}");

        let mut text = Wiring::default();
        let r = reference(json!({"from": "redis/cache", "output": "url"})).unwrap();
        let url = OutputValue(vec![Part::Text("redis://cache.ns.svc.cluster.local:6379".into())]);
        assert_eq!(text.bind("redis-host", r, &url), json!("redis://cache.ns.svc.cluster.local:6379"));
        cm.manifest = json!({"data": {"url": "redis://cache.ns.svc.cluster.local:6379"}});
        text.apply(&mut plan(vec![cm])).unwrap();
    }

    #[test]
    fn dependents_are_the_records_referencing_a_deployment_in_its_namespace() {
        let record = |ns: &str, module: &str, name: &str, config: Value| DeploymentRecord {
            id: DeploymentId::new(ns, module, name).unwrap(),
            version: "latest".into(),
            config: config.as_object().cloned().unwrap(),
            secret_keys: vec![],
            endpoints: vec![],
            status: crate::backend::Status::Deployed,
            message: String::new(),
            objects: vec![],
            backend: crate::backend::Kind::Local,
            updated_at: String::new(),
            wakeups: 0,
        };
        let by = json!({"redis-host": {"from": "redis/cache", "output": "url"}});
        let records = [
            record("ns", "redis", "cache", json!({})),
            record("ns", "jac-cloud", "b", by.clone()),
            record("ns", "jac-cloud", "a", by.clone()),
            record("other", "jac-cloud", "c", by),
            record("ns", "jac-cloud", "d", json!({"redis-host": "redis://x"})),
        ];
        let id = DeploymentId::new("ns", "redis", "cache").unwrap();
        assert_eq!(dependents_in(&records, &id), ["jac-cloud/a", "jac-cloud/b"]);
    }
}
