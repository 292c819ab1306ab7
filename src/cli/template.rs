//! `jac-orc template`: renders a template version offline, from the built-in catalog or
//! `--manifests-path`, with no server at all, exactly as a deploy would plan it: the same
//! placeholders, namespace, labels and apply order, and resource quantities written as strings
//! as the Kubernetes backend applies them. The YAML stream (`---` between documents) is what
//! `kubectl apply -f -` takes; `-o json` prints a `v1 List` of the same objects.
//!
//! # Secrets
//! A secret placeholder not given is generated afresh for this rendering (random, different on
//! every run, never a fixed password), as a first deploy would generate one. The stream's header
//! says which were generated, and so does each document that contains one. A deploy keeps the
//! password it generated; one rendered here is not remembered anywhere, so pass `--set KEY=…` to
//! render (or apply) with a chosen one.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::args::{Output, TemplateArgs};
use super::client::values_of;
use super::output::{self, Table, Tabular};
use crate::backend::kube::normalize_quantities;
use crate::catalog::Catalog;
use crate::identity::NamespaceRule;
use crate::plan::Section;
use crate::service::{self, DeploymentRequest, Offline};

/// The namespace a rendering without `-n` targets (there is no orchestrator to ask).
const OFFLINE_NAMESPACE: &str = "default";

/// A request the catalog refused, with where the CLI got the value it is about.
#[derive(Debug, thiserror::Error)]
#[error("cannot render {module}/{version}{}", .hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
pub(crate) struct RenderError {
    module: String,
    version: String,
    hint: Option<String>,
    #[source]
    source: service::Error,
}

/// What `template` prints.
#[derive(Debug)]
struct Manifests {
    offline: Offline,
    module: String,
    /// Names of the secret placeholders generated for this rendering, with their values.
    generated: Vec<(String, String)>,
}

pub(crate) fn run(a: TemplateArgs) -> Result<()> {
    let catalog = match &a.manifests_path {
        Some(p) => Catalog::with_override(p).with_context(|| format!("--manifests-path {}", p.display()))?,
        None => Catalog::builtin(),
    };
    let values = values_of(&a.source, a.name.as_deref(), &a.namespace)?;
    let home = a.namespace.namespace.clone().unwrap_or_else(|| OFFLINE_NAMESPACE.into());
    let rule = NamespaceRule::new(home, false);
    let req = DeploymentRequest {
        module: a.source.module.clone(),
        version: Some(a.source.version.clone()),
        config: values.map().clone(),
    };
    let mut offline = service::render_offline(&catalog, &rule, &req).map_err(|source| RenderError {
        module: req.module.clone(),
        version: req.version().to_string(),
        hint: source.field().and_then(|f| values.explain(&f)),
        source,
    })?;
    for o in &mut offline.objects {
        normalize_quantities(&mut o.manifest);
    }
    let generated = offline
        .reports
        .iter()
        .filter(|r| r.generated)
        .filter_map(|r| Some((r.name.clone(), r.current.as_str()?.to_string())))
        .collect();
    let manifests = Manifests { offline, module: req.module, generated };
    match a.output {
        Output::Yaml => output::text(&manifests.stream()?),
        Output::Json | Output::Table => output::print(a.output, &manifests),
    }
}

impl Manifests {
    fn origin(&self) -> String {
        format!("{}/{}", self.module, self.offline.version)
    }

    /// `# Source: redis/latest/redis.yaml` for one object.
    fn source(&self, section: Section, file: &str) -> String {
        match section {
            Section::Dependencies => format!("{}/dependencies/{file}", self.origin()),
            Section::Modules => format!("{}/{file}", self.origin()),
        }
    }

    fn generated_note(&self) -> Vec<String> {
        self.generated
            .iter()
            .map(|(name, _)| {
                format!(
                    "Secret placeholder `{name}` was generated for this rendering only (random, different on every \
                     run; a deploy generates and keeps its own): pass --set {name}=VALUE to choose it."
                )
            })
            .collect()
    }

    /// The YAML stream: a header comment, then one `---` document per object.
    fn stream(&self) -> Result<String> {
        let id = &self.offline.id;
        let mut out = format!("# jac-orc template {} as {id}: rendered offline, no server contacted.\n", self.origin());
        for note in self.generated_note() {
            out.push_str(&format!("# {note}\n"));
        }
        for o in &self.offline.objects {
            out.push_str("---\n");
            out.push_str(&format!("# Source: {}\n", self.source(o.object.section, &o.object.file)));
            let text = serde_norway::to_string(&o.manifest)?;
            for (name, value) in &self.generated {
                if text.contains(value.as_str()) {
                    out.push_str(&format!("# Generated secret: {name} (see the header)\n"));
                }
            }
            out.push_str(&text);
        }
        Ok(out)
    }
}

impl Serialize for Manifests {
    /// A `v1 List` of the objects, which `kubectl apply -f -` takes as JSON.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items: Vec<&Value> = self.offline.objects.iter().map(|o| &o.manifest).collect();
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).serialize(s)
    }
}

impl Tabular for Manifests {
    fn table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "{} as {} (rendered offline)", self.origin(), self.offline.id)?;
        let mut t = Table::new(&["OBJECT", "NAMESPACE", "SOURCE"]);
        for o in &self.offline.objects {
            let ns = o.manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("-");
            t.row([o.object.kubectl_name(), ns.to_string(), self.source(o.object.section, &o.object.file)]);
        }
        t.write(out)?;
        for note in self.generated_note() {
            writeln!(out, "{note}")?;
        }
        Ok(())
    }
}
