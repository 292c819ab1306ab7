//! Outputs a template version declares (`outputs:` in `placeholders.yaml`): what other
//! deployments may take from one of its deployments, rendered from that deployment's resolved
//! config (its stored record), never read from live objects.
//!
//! ```yaml
//! outputs:
//!   host: {value: "{{name}}.{{namespace}}.svc.cluster.local", local: "{{local.host}}"}
//!   password: {secret: {placeholder: password, name: "{{username}}-password", key: password}}
//!   uri: {value: "mongodb://{{username}}:{{password}}@{{name}}-svc.{{namespace}}.svc.cluster.local:27017"}
//! ```
//!
//! A `value` output is a handlebars string over the resolved config (no escaping: it is text,
//! not YAML). A secret placeholder inside it becomes a [`Part::Secret`]: the key of the Secret a
//! `secret` output names for that placeholder, so a secret is handed on as a reference and never
//! as cleartext. `local` (optional) is the same output on the local backend, where
//! `{{local.host}}` and `{{local.port}}` are the deployment's recorded endpoint.

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::placeholders::Spec;
use super::{Error, Result};

/// A key of a Kubernetes Secret in the deployment's namespace (`valueFrom.secretKeyRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
    /// The secret placeholder whose value the key holds (how the local backend resolves it).
    pub placeholder: String,
}

/// One piece of a rendered output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Secret(SecretKeyRef),
}

/// A rendered output: text, Secret references, or both composed (a URI with a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputValue(pub Vec<Part>);

impl OutputValue {
    /// The text, when the output holds no Secret reference.
    pub fn as_text(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Secret(_) => return None,
            }
        }
        Some(out)
    }

    pub fn has_secret(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Secret(_)))
    }
}

/// Where the referenced deployment runs, for `local` variants: its recorded endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub host: String,
    pub port: String,
}

impl LocalEndpoint {
    /// `host:port` as the local backend records endpoints.
    pub fn parse(endpoint: &str) -> Option<LocalEndpoint> {
        let (host, port) = endpoint.rsplit_once(':')?;
        Some(LocalEndpoint { host: host.to_string(), port: port.to_string() })
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Value { local: bool },
    Secret { placeholder: String, key: String },
}

/// One declared output.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub description: String,
    kind: Kind,
}

impl OutputSpec {
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::Secret { .. })
    }
}

/// The outputs of one template version, compiled.
#[derive(Debug, Default)]
pub struct Outputs {
    specs: Vec<OutputSpec>,
    registry: Handlebars<'static>,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    outputs: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    secret: Option<RawSecret>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    placeholder: String,
    name: String,
    key: String,
}

/// Output names: what `@module/name.OUTPUT` can spell.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Outputs {
    /// Reads `outputs:` of a `placeholders.yaml` (none: no outputs) against its placeholders.
    pub fn parse(text: &str, origin: &str, specs: &[Spec]) -> Result<Outputs> {
        let bad = |message: String| Error::BadTemplate { origin: origin.to_string(), message };
        let raw: RawFile = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        let mut out = Vec::new();
        for (name, raw) in raw.outputs.unwrap_or_default() {
            let bad_output = |m: String| bad(format!("output `{name}`: {m}"));
            if !valid_name(&name) {
                return Err(bad_output("use lowercase letters, digits, '-' and '_', starting with a letter".into()));
            }
            let raw: RawOutput = serde_json::from_value(raw).map_err(|e| bad_output(e.to_string()))?;
            let mut compile = |slot: &str, text: &str| {
                registry
                    .register_template_string(&format!("{name}/{slot}"), text)
                    .map_err(|e| bad_output(format!("{slot}: {e}")))
            };
            let kind = match (raw.value, raw.secret) {
                (Some(value), None) => {
                    compile("value", &value)?;
                    if let Some(local) = &raw.local {
                        compile("local", local)?;
                    }
                    Kind::Value { local: raw.local.is_some() }
                }
                (None, Some(secret)) => {
                    if raw.local.is_some() {
                        return Err(bad_output("a secret output has no `local` variant".into()));
                    }
                    if !specs.iter().any(|s| s.name == secret.placeholder && s.secret) {
                        return Err(bad_output(format!(
                            "`{}` is not a secret placeholder of this version",
                            secret.placeholder
                        )));
                    }
                    compile("secret", &secret.name)?;
                    Kind::Secret { placeholder: secret.placeholder, key: secret.key }
                }
                _ => return Err(bad_output("declare exactly one of `value` and `secret`".into())),
            };
            out.push(OutputSpec { name, description: raw.description, kind });
        }
        Ok(Outputs { specs: out, registry })
    }

    pub fn specs(&self) -> &[OutputSpec] {
        &self.specs
    }

    pub fn names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&OutputSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Renders output `name` (which must exist: see [`Outputs::get`]) from a deployment's
    /// resolved `config`, whose `secret_keys` never appear as text. `local` is the deployment's
    /// endpoint when it runs on the local backend.
    pub fn render(
        &self,
        origin: &str,
        name: &str,
        config: &Map<String, Value>,
        secret_keys: &[String],
        local: Option<&LocalEndpoint>,
    ) -> Result<OutputValue> {
        let spec = self
            .get(name)
            .ok_or_else(|| Error::BadTemplate { origin: origin.to_string(), message: format!("no output `{name}`") })?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let marker = |placeholder: &str| format!("\u{1}{nonce}:{placeholder}\u{1}");
        let mut ctx = config.clone();
        for key in secret_keys {
            if ctx.contains_key(key) {
                ctx.insert(key.clone(), Value::String(marker(key)));
            }
        }
        if let Some(l) = local {
            ctx.insert("local".into(), serde_json::json!({"host": l.host, "port": l.port}));
        }
        let render = |template: &str| {
            self.registry.render(&format!("{name}/{template}"), &ctx).map_err(|e| Error::Render {
                file: format!("{origin} output `{name}`"),
                message: e.reason().to_string(),
            })
        };
        match &spec.kind {
            Kind::Secret { placeholder, key } => {
                let secret_name = render("secret")?;
                if secret_name.contains('\u{1}') {
                    return Err(Error::BadTemplate {
                        origin: origin.to_string(),
                        message: format!("output `{name}`: a Secret's name cannot hold a secret"),
                    });
                }
                Ok(OutputValue(vec![Part::Secret(SecretKeyRef {
                    name: secret_name,
                    key: key.clone(),
                    placeholder: placeholder.clone(),
                })]))
            }
            Kind::Value { local: has_local } => {
                let text = render(if local.is_some() && *has_local { "local" } else { "value" })?;
                self.split(origin, name, &text, &nonce, config, secret_keys, local)
            }
        }
    }

    /// Splits rendered text at the secret markers: each becomes the Secret key a `secret`
    /// output declares for that placeholder.
    #[allow(clippy::too_many_arguments)]
    fn split(
        &self,
        origin: &str,
        name: &str,
        text: &str,
        nonce: &str,
        config: &Map<String, Value>,
        secret_keys: &[String],
        local: Option<&LocalEndpoint>,
    ) -> Result<OutputValue> {
        let open = format!("\u{1}{nonce}:");
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(&open) {
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            let after = &rest[at + open.len()..];
            let end = after.find('\u{1}').unwrap_or(after.len());
            let placeholder = &after[..end];
            let carrier =
                self.specs.iter().find(|s| matches!(&s.kind, Kind::Secret { placeholder: p, .. } if p == placeholder));
            let Some(carrier) = carrier else {
                return Err(Error::BadTemplate {
                    origin: origin.to_string(),
                    message: format!(
                        "output `{name}` uses the secret placeholder `{placeholder}`, which no secret output declares"
                    ),
                });
            };
            let carried = self.render(origin, &carrier.name, config, secret_keys, local)?;
            parts.extend(carried.0);
            rest = &after[(end + 1).min(after.len())..];
        }
        if !rest.is_empty() || parts.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(OutputValue(parts))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::placeholders::parse_file;

    const FILE: &str = r#"
placeholders:
  name: {type: string, default: db}
  namespace: {type: string, default: ""}
  username: {type: string, default: me}
  password: {type: string, secret: true}
outputs:
  host: {value: "{{name}}-svc.{{namespace}}.svc.cluster.local", local: "{{local.host}}"}
  port: {value: "27017", local: "{{local.port}}"}
  password: {secret: {placeholder: password, name: "{{username}}-password", key: password}}
  uri: {value: "mongodb://{{username}}:{{password}}@{{name}}-svc.{{namespace}}:27017/x"}
"#;

    fn outputs() -> Outputs {
        let (_, specs) = parse_file(FILE, "t").unwrap();
        Outputs::parse(FILE, "t", &specs).unwrap()
    }

    fn config() -> Map<String, Value> {
        json!({"name": "db", "namespace": "ns", "username": "me", "password": "hunter2"}).as_object().cloned().unwrap()
    }

    fn secret_ref() -> SecretKeyRef {
        SecretKeyRef { name: "me-password".into(), key: "password".into(), placeholder: "password".into() }
    }

    #[test]
    fn plain_outputs_render_from_the_config() {
        let o = outputs();
        assert_eq!(o.names(), ["host", "port", "password", "uri"]);
        let host = o.render("t", "host", &config(), &["password".into()], None).unwrap();
        assert_eq!(host.as_text().unwrap(), "db-svc.ns.svc.cluster.local");
        let local = LocalEndpoint::parse("127.0.0.1:4100").unwrap();
        let port = o.render("t", "port", &config(), &["password".into()], Some(&local)).unwrap();
        assert_eq!(port.as_text().unwrap(), "4100");
    }

    #[test]
    fn secrets_become_secret_key_references_never_text() {
        let o = outputs();
        let pw = o.render("t", "password", &config(), &["password".into()], None).unwrap();
        assert_eq!(pw, OutputValue(vec![Part::Secret(secret_ref())]));
        let uri = o.render("t", "uri", &config(), &["password".into()], None).unwrap();
        assert_eq!(
            uri.0,
            vec![
                Part::Text("mongodb://me:".into()),
                Part::Secret(secret_ref()),
                Part::Text("@db-svc.ns:27017/x".into())
            ]
        );
        assert!(uri.as_text().is_none() && uri.has_secret());
        assert!(!format!("{uri:?}").contains("hunter2"));
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_output() {
        let (_, specs) = parse_file(FILE, "t").unwrap();
        for (text, want) in [
            ("outputs:\n  x: {value: a, secret: {placeholder: password, name: n, key: k}}\n", "exactly one"),
            ("outputs:\n  x: {secret: {placeholder: username, name: n, key: k}}\n", "not a secret placeholder"),
            ("outputs:\n  Bad.Name: {value: a}\n", "lowercase"),
            ("outputs:\n  x: {value: a, extra: 1}\n", "unknown field"),
        ] {
            let err = Outputs::parse(text, "t", &specs).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let text = "placeholders: {}\noutputs:\n  x: {value: \"{{pw}}\"}\n";
        let specs = parse_file("placeholders:\n  pw: {type: string, secret: true}\n", "t").unwrap().1;
        let o = Outputs::parse(text, "t", &specs).unwrap();
        let cfg = json!({"pw": "s"}).as_object().cloned().unwrap();
        let err = o.render("t", "x", &cfg, &["pw".into()], None).unwrap_err().to_string();
        assert!(err.contains("no secret output declares"), "{err}");
    }

    #[test]
    fn built_in_templates_declare_the_outputs_the_issue_names() {
        let catalog = crate::catalog::Catalog::builtin();
        for (module, want) in [
            ("mongodb", &["host", "port", "username", "password", "uri"][..]),
            ("redis", &["host", "port", "url"][..]),
            ("python-module", &["endpoint"][..]),
        ] {
            for version in catalog.index()[module].clone() {
                let t = catalog.load(module, &version).unwrap();
                assert_eq!(t.outputs.names(), want, "{module}/{version}");
            }
        }
    }
}
