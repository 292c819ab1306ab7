//! One loaded template version: its placeholder specs, compiled files, and local recipe.

use std::collections::BTreeMap;

use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::outputs::Outputs;
use super::placeholders::{self, Resolved, Spec, Type};
use super::render::Compiled;
use super::{legacy, Error, Result};
use crate::plan::{LocalRecipe, ObjectRef, PlannedObject, Readiness, RecipeText, Section, Segment, Slot};

const PLACEHOLDERS_FILE: &str = "placeholders.yaml";
const LOCAL_FILE: &str = "local.yaml";

/// How a version folder is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = TemplateFormat)]
pub enum Format {
    /// Handlebars files and `placeholders.yaml`.
    Native,
    /// The original's `$g`/`$a`/`$d` placeholders.
    Legacy,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Legacy => "legacy",
        }
    }
}

/// Files of a version folder as read from a store (sorted by name).
#[derive(Debug)]
pub(crate) struct RawVersion {
    pub module: String,
    pub version: String,
    pub source: String,
    pub top: Vec<(String, String)>,
    pub dependencies: Option<Vec<(String, String)>>,
}

/// `local.yaml`: how the local backend runs this version as a child process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub readiness: Readiness,
    #[serde(default)]
    pub protocol: String,
    /// Name of a list placeholder holding Python packages to install first.
    #[serde(default)]
    pub packages: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderedFile {
    pub name: String,
    pub text: String,
}

/// Rendered text of every applied file.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub dependencies: Option<Vec<RenderedFile>>,
    pub modules: Vec<RenderedFile>,
}

#[derive(Debug)]
enum Engine {
    Native(Box<Compiled>),
    Legacy,
}

#[derive(Debug)]
pub struct TemplateVersion {
    pub module: String,
    pub version: String,
    pub source: String,
    pub format: Format,
    pub description: String,
    pub specs: Vec<Spec>,
    /// What other deployments may reference (`outputs:` in `placeholders.yaml`).
    pub outputs: Outputs,
    dependencies: Option<Vec<(String, String)>>,
    modules: Vec<(String, String)>,
    local: Option<LocalSpec>,
    engine: Engine,
    /// Objects of files without placeholders (CRDs, operators), parsed once: they render to
    /// their own text, and parsing a 700-line CRD per request would dominate a dry run.
    static_objects: std::sync::OnceLock<Result<std::collections::HashMap<String, Vec<PlannedObject>>, String>>,
}

impl TemplateVersion {
    pub(crate) fn from_raw(raw: RawVersion) -> Result<Self> {
        let origin = format!("{}/{}", raw.module, raw.version);
        let placeholders_text = raw.top.iter().find(|(n, _)| n == PLACEHOLDERS_FILE).map(|(_, t)| t.clone());
        match placeholders_text {
            Some(text) => Self::native(raw, &origin, &text),
            None => Self::legacy(raw, &origin),
        }
    }

    fn native(raw: RawVersion, origin: &str, placeholders_text: &str) -> Result<Self> {
        let (description, specs) =
            placeholders::parse_file(placeholders_text, &format!("{origin}/{PLACEHOLDERS_FILE}"))?;
        let outputs = Outputs::parse(placeholders_text, &format!("{origin}/{PLACEHOLDERS_FILE}"), &specs)?;
        let local = raw
            .top
            .iter()
            .find(|(n, _)| n == LOCAL_FILE)
            .map(|(_, t)| {
                serde_norway::from_str::<LocalSpec>(t).map_err(|e| Error::BadTemplate {
                    origin: format!("{origin}/{LOCAL_FILE}"),
                    message: e.to_string(),
                })
            })
            .transpose()?;
        if let Some(list) = local.as_ref().and_then(|l| l.packages.as_ref()) {
            // Only requirement lists reach pip: their elements are checked before anything runs.
            let requirements = |s: &Spec| s.ty == Type::List && s.items == Some(placeholders::Item::Requirement);
            if !specs.iter().any(|s| &s.name == list && requirements(s)) {
                return Err(Error::BadTemplate {
                    origin: format!("{origin}/{LOCAL_FILE}"),
                    message: format!(
                        "packages names `{list}`, which is not a list placeholder with `items: requirement`"
                    ),
                });
            }
        }
        let modules: Vec<(String, String)> =
            raw.top.into_iter().filter(|(n, _)| n != PLACEHOLDERS_FILE && n != LOCAL_FILE).collect();
        let dependencies = raw.dependencies;
        let compiled = {
            let deps = dependencies.iter().flatten().map(|(n, t)| (format!("dependencies/{n}"), t.as_str()));
            let files: Vec<(String, &str)> = deps.chain(modules.iter().map(|(n, t)| (n.clone(), t.as_str()))).collect();
            Compiled::new(origin, files.iter().map(|(n, t)| (n.as_str(), *t)))?
        };
        Ok(TemplateVersion {
            module: raw.module,
            version: raw.version,
            source: raw.source,
            format: Format::Native,
            description,
            specs,
            outputs,
            dependencies,
            modules,
            local,
            engine: Engine::Native(Box::new(compiled)),
            static_objects: std::sync::OnceLock::new(),
        })
    }

    fn legacy(raw: RawVersion, origin: &str) -> Result<Self> {
        // Upstream merges both folders' placeholders; for a name in both, the module folder wins.
        let mut specs: Vec<Spec> = Vec::new();
        let mut add = |files: &[(String, String)]| -> Result<()> {
            for (name, text) in files {
                let found = legacy::scan(text)
                    .map_err(|e| Error::BadTemplate { origin: format!("{origin}/{name}"), message: e.to_string() })?;
                for f in found {
                    let ty = match f.kind {
                        legacy::Kind::Generic => Type::infer(&f.default),
                        legacy::Kind::Array => Type::List,
                        legacy::Kind::Dict => Type::Map,
                    };
                    let spec = Spec {
                        name: f.name.clone(),
                        ty,
                        default: f.default,
                        description: String::new(),
                        secret: false,
                        pattern: None,
                        required: false,
                        items: None,
                    };
                    match specs.iter_mut().find(|s| s.name == f.name) {
                        Some(existing) => *existing = spec,
                        None => specs.push(spec),
                    }
                }
            }
            Ok(())
        };
        if let Some(deps) = &raw.dependencies {
            add(deps)?;
        }
        add(&raw.top)?;
        Ok(TemplateVersion {
            module: raw.module,
            version: raw.version,
            source: raw.source,
            format: Format::Legacy,
            description: String::new(),
            specs,
            outputs: Outputs::default(),
            dependencies: raw.dependencies,
            modules: raw.top,
            local: None,
            engine: Engine::Legacy,
            static_objects: std::sync::OnceLock::new(),
        })
    }

    pub fn has_dependencies(&self) -> bool {
        self.dependencies.is_some()
    }

    pub fn has_local_recipe(&self) -> bool {
        self.local.is_some()
    }

    pub fn local_spec(&self) -> Option<&LocalSpec> {
        self.local.as_ref()
    }

    pub fn declares(&self, name: &str) -> bool {
        self.specs.iter().any(|s| s.name == name)
    }

    pub fn resolve(&self, config: &Map<String, Value>, remembered: Option<&Map<String, Value>>) -> Result<Resolved> {
        placeholders::resolve(&self.specs, config, remembered)
    }

    pub fn render(&self, values: &Map<String, Value>) -> Result<Rendered> {
        let origin = format!("{}/{}", self.module, self.version);
        let one = |prefix: &str, name: &str, text: &str| -> Result<RenderedFile> {
            let text = match &self.engine {
                Engine::Native(c) => c.render(&origin, &format!("{prefix}{name}"), values)?,
                Engine::Legacy => legacy::render(text, values).map_err(|e| legacy_error(&origin, name, e))?,
            };
            Ok(RenderedFile { name: name.to_string(), text })
        };
        let dependencies = self
            .dependencies
            .as_ref()
            .map(|files| files.iter().map(|(n, t)| one("dependencies/", n, t)).collect::<Result<Vec<_>>>())
            .transpose()?;
        let modules = self.modules.iter().map(|(n, t)| one("", n, t)).collect::<Result<Vec<_>>>()?;
        Ok(Rendered { dependencies, modules })
    }

    fn is_static(&self, text: &str) -> bool {
        match self.engine {
            Engine::Native(_) => !text.contains("{{"),
            Engine::Legacy => !legacy::is_legacy(text),
        }
    }

    /// Parses rendered files into objects (dependencies first, file and document order), using
    /// the parse-once cache for files without placeholders.
    pub fn objects(&self, rendered: &Rendered) -> Result<Vec<PlannedObject>> {
        let cache = self
            .static_objects
            .get_or_init(|| {
                let mut m = std::collections::HashMap::new();
                let sections = self
                    .dependencies
                    .iter()
                    .flatten()
                    .map(|f| (Section::Dependencies, f))
                    .chain(self.modules.iter().map(|f| (Section::Modules, f)));
                for (section, (name, text)) in sections {
                    if self.is_static(text) {
                        let file = RenderedFile { name: name.clone(), text: text.clone() };
                        m.insert(
                            format!("{}/{name}", section.as_str()),
                            parse_file(section, &file).map_err(|e| e.to_string())?,
                        );
                    }
                }
                Ok(m)
            })
            .as_ref()
            .map_err(|message| Error::BadTemplate {
                origin: format!("{}/{}", self.module, self.version),
                message: message.clone(),
            })?;
        let mut out = Vec::new();
        let sections = rendered
            .dependencies
            .iter()
            .flatten()
            .map(|f| (Section::Dependencies, f))
            .chain(rendered.modules.iter().map(|f| (Section::Modules, f)));
        for (section, file) in sections {
            match cache.get(&format!("{}/{}", section.as_str(), file.name)) {
                Some(objects) => out.extend(objects.iter().cloned()),
                None => out.extend(parse_file(section, file)?),
            }
        }
        Ok(out)
    }

    /// Renders `local.yaml` for a deployment, if this version has one. What only the local
    /// backend knows (`{{local.port}}`, `{{local.host}}`, `{{local.data_dir}}`,
    /// `{{local.python}}`) stays a [`Slot`] in the result, so the backend never renders.
    pub fn render_local(&self, values: &Map<String, Value>) -> Result<Option<LocalRecipe>> {
        let Some(spec) = &self.local else {
            return Ok(None);
        };
        let origin = format!("{}/{}/{LOCAL_FILE}", self.module, self.version);
        let markers = SlotMarkers::new();
        let mut ctx = values.clone();
        ctx.insert("local".into(), markers.context());
        // argv has no shell and no YAML, so values go in as they are.
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        let r = |t: &str| -> Result<RecipeText> {
            let text = hb
                .render_template(t, &ctx)
                .map_err(|e| Error::Render { file: origin.clone(), message: e.reason().to_string() })?;
            Ok(markers.split(&text))
        };
        let packages = match &spec.packages {
            Some(list) => values
                .get(list)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            env.push((k.clone(), r(v)?));
        }
        Ok(Some(LocalRecipe {
            program: r(&spec.program)?,
            args: spec.args.iter().map(|a| r(a)).collect::<Result<_>>()?,
            readiness: spec.readiness.clone(),
            protocol: spec.protocol.clone(),
            packages,
            env,
            secret_env: Vec::new(),
        }))
    }
}

/// Stand-ins rendered where a slot goes: a random nonce per render, so no value a caller sends
/// can be mistaken for a slot.
struct SlotMarkers {
    nonce: String,
}

impl SlotMarkers {
    const SLOTS: [(Slot, &'static str); 4] =
        [(Slot::Host, "host"), (Slot::Port, "port"), (Slot::DataDir, "data_dir"), (Slot::Python, "python")];

    fn new() -> Self {
        SlotMarkers { nonce: format!("{:016x}", rand::random::<u64>()) }
    }

    fn marker(&self, name: &str) -> String {
        format!("\u{1}{}:{name}\u{1}", self.nonce)
    }

    fn context(&self) -> Value {
        Value::Object(Self::SLOTS.iter().map(|(_, n)| ((*n).to_string(), Value::String(self.marker(n)))).collect())
    }

    fn split(&self, text: &str) -> RecipeText {
        let mut segments = Vec::new();
        let mut rest = text;
        loop {
            let next = Self::SLOTS
                .iter()
                .filter_map(|(slot, n)| rest.find(&self.marker(n)).map(|at| (at, *slot, self.marker(n).len())))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, slot, len)) = next else { break };
            if at > 0 {
                segments.push(Segment::Text(rest[..at].to_string()));
            }
            segments.push(Segment::Slot(slot));
            rest = &rest[at + len..];
        }
        if !rest.is_empty() || segments.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        RecipeText(segments)
    }
}

/// Values that cannot be placed safely, or have the wrong shape, are the caller's error;
/// everything else is the template's.
fn legacy_error(origin: &str, file: &str, e: legacy::Error) -> Error {
    match e {
        legacy::Error::Unsafe { name, reason, .. } => {
            Error::InvalidValue { name, reason: format!("cannot be placed safely in {file}: {reason}") }
        }
        legacy::Error::WrongShape { name, expected } => {
            Error::InvalidValue { name, reason: format!("must be {expected}") }
        }
        other => Error::Render { file: format!("{origin}/{file}"), message: other.to_string() },
    }
}

/// Parses one rendered file into objects, in document order.
fn parse_file(section: Section, file: &RenderedFile) -> Result<Vec<PlannedObject>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&file.text).enumerate() {
        let bad = |message: String| Error::BadYaml { file: file.name.clone(), message };
        let value: Value = Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let str_at = |ptr: &str| value.pointer(ptr).and_then(Value::as_str).map(str::to_string);
        let (Some(api_version), Some(kind), Some(name)) =
            (str_at("/apiVersion"), str_at("/kind"), str_at("/metadata/name"))
        else {
            return Err(bad(format!("document {} needs apiVersion, kind and metadata.name", i + 1)));
        };
        let namespace = str_at("/metadata/namespace").filter(|n| !n.is_empty());
        out.push(PlannedObject {
            object: ObjectRef { api_version, kind, name, namespace, section, file: file.name.clone() },
            manifest: value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SlotValues;

    #[test]
    fn local_recipes_leave_backend_values_as_slots() {
        let catalog = crate::catalog::Catalog::builtin();
        let redis = catalog.load("redis", "latest").unwrap();
        let values = redis.resolve(&Map::new(), None).unwrap().values;
        let recipe = redis.render_local(&values).unwrap().expect("redis has a local recipe");
        assert!(recipe.args.iter().any(|a| a.uses(Slot::Port)), "{recipe:?}");
        let slots = SlotValues { host: "127.0.0.1".into(), port: 7001, data_dir: "/d".into(), python: "py".into() };
        let cmd = recipe.command(&slots);
        assert_eq!(cmd.program, "redis-server");
        let at = cmd.args.iter().position(|a| a == "--port").unwrap();
        assert_eq!(cmd.args[at + 1], "7001");
        assert!(cmd.args.contains(&"/d".to_string()) && cmd.args.contains(&"1000mb".to_string()), "{cmd:?}");
    }

    #[test]
    fn values_that_look_like_slots_stay_text() {
        let catalog = crate::catalog::Catalog::builtin();
        let module = catalog.load("python-module", "latest").unwrap();
        let mut config = Map::new();
        config.insert("name".into(), "m".into());
        config.insert("module".into(), "json".into());
        let mut values = module.resolve(&config, None).unwrap().values;
        // Not a valid module name, but render_local must never turn a value into a slot.
        values.insert("module".into(), Value::String("{{local.port}}\u{1}x:port\u{1}".into()));
        let recipe = module.render_local(&values).unwrap().unwrap();
        let arg = recipe.args.iter().find(|a| a.fill_test().contains("local.port")).expect("module arg");
        assert!(!arg.uses(Slot::Port), "{arg:?}");
    }

    impl RecipeText {
        fn fill_test(&self) -> String {
            self.fill(&SlotValues { host: "h".into(), port: 1, data_dir: "d".into(), python: "p".into() })
        }
    }
}
