//! How the client commands print the service's views: `-o json` and `-o yaml` print a view as
//! REST returns it; `-o table` prints aligned columns for people and never JSON (nested values
//! are flattened into `a, b` and `k=v`). Everything goes to stdout through `write!` and is
//! flushed, so a closed pipe is an error the caller recognises (a quiet exit), never a panic.

use std::io::{self, Write};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::args::Output;
use crate::backend::ObjectEvent;
use crate::plan::ObjectRef;
use crate::service::views::{DeploymentTree, DeploymentView, DryRunView, Outcome, Summary, TemplateView};

/// A view with a table form.
pub(crate) trait Tabular {
    fn table(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// A write to standard output failed. Only this error says "stdout is closed": a network
/// error deep in a chain can carry an `io::Error` of kind `BrokenPipe` too (a server that
/// hung up), and that must stay a failure (see [`super::is_broken_pipe`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub(crate) struct StdoutError(#[source] pub(crate) io::Error);

fn to_stdout(written: io::Result<()>, out: &mut dyn Write) -> Result<()> {
    written.and_then(|()| out.flush()).map_err(|e| StdoutError(e).into())
}

/// Prints a view in the chosen form.
pub(crate) fn print<T: Serialize + Tabular>(output: Output, value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    let written = match output {
        Output::Table => value.table(&mut out),
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => write!(out, "{}", serde_norway::to_string(value)?),
    };
    to_stdout(written, &mut out)
}

/// Writes text as it is (a completion script, a YAML stream).
pub(crate) fn text(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    let written = out.write_all(text.as_bytes());
    to_stdout(written, &mut out)
}

pub(crate) fn line(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    let written = writeln!(out, "{text}");
    to_stdout(written, &mut out)
}

/// Aligned columns: every column as wide as its widest cell, two spaces apart, the last one
/// not padded.
#[derive(Debug, Default)]
pub(crate) struct Table {
    indent: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table { indent: 0, rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    /// Key-value lines (`STATUS  deployed`), no header.
    fn fields() -> Self {
        Table::default()
    }

    #[must_use]
    fn indented(mut self, by: usize) -> Self {
        self.indent = by;
        self
    }

    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub(crate) fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = " ".repeat(self.indent);
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A value in one cell: strings as they are, lists as `a, b`, maps as `k=v, …`, null as `-`.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(items) if items.is_empty() => "(none)".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(m) if m.is_empty() => "(none)".into(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(", "),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `OBJECT  NAMESPACE  FILE` rows.
fn objects_table(objects: &[ObjectRef], indent: usize) -> Table {
    let mut t = Table::new(&["OBJECT", "NAMESPACE", "FILE"]).indented(indent);
    for o in objects {
        t.row([o.kubectl_name(), or_dash(o.namespace.as_deref().unwrap_or("")), or_dash(&o.file)]);
    }
    t
}

/// `deployment.apps/x created (detail)`.
pub(crate) fn event(ev: &ObjectEvent) -> String {
    if ev.message.is_empty() {
        ev.line.clone()
    } else {
        format!("{} ({})", ev.line, ev.message)
    }
}

pub(crate) fn deployed(s: &Summary) -> String {
    let d = &s.deployment;
    let c = &s.counts;
    let endpoints =
        if d.endpoints.is_empty() { String::new() } else { format!("; endpoints: {}", d.endpoints.join(", ")) };
    format!(
        "deployed {}/{} in {}: {} ({} created, {} configured, {} unchanged, {} deleted) in {} ms{endpoints}",
        d.module,
        d.name,
        d.namespace,
        d.status.as_str(),
        c.created,
        c.configured,
        c.unchanged,
        c.deleted,
        s.elapsed_ms,
    )
}

pub(crate) fn dry_run_deployed(s: &Summary) -> String {
    let d = &s.deployment;
    let c = &s.counts;
    format!(
        "dry run of {}/{} in {}: {} to create, {} to configure, {} unchanged, {} to delete; nothing was applied or recorded",
        d.module, d.name, d.namespace, c.created, c.configured, c.unchanged, c.deleted,
    )
}

pub(crate) fn undeployed(s: &Summary) -> String {
    let d = &s.deployment;
    format!(
        "undeployed {}/{} in {} ({} deleted, {} kept)",
        d.module, d.name, d.namespace, s.counts.deleted, s.counts.kept
    )
}

/// A collected run: its lines, its errors, then the counts.
impl Tabular for Outcome {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        for line in &self.applied.results {
            writeln!(out, "{line}")?;
        }
        for line in &self.applied.errors {
            writeln!(out, "error: {line}")?;
        }
        let (d, c) = (&self.summary.deployment, &self.summary.counts);
        writeln!(
            out,
            "{}/{} in {}: {} created, {} configured, {} unchanged, {} deleted, {} kept",
            d.module, d.name, d.namespace, c.created, c.configured, c.unchanged, c.deleted, c.kept
        )
    }
}

/// `jac-orc status`: how a deployment stands. Serialised as the deployment view itself.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct StatusOf<'a>(pub(crate) &'a DeploymentView);

fn status_fields(d: &DeploymentView) -> Table {
    let mut t = Table::fields();
    t.row(["DEPLOYMENT".to_string(), format!("{}/{}", d.module, d.name)]);
    t.row(["NAMESPACE", &d.namespace]);
    t.row(["STATUS", d.status.as_str()]);
    t.row(["MESSAGE".to_string(), or_dash(&d.message)]);
    t.row(["VERSION", &d.version]);
    t.row(["UPDATED", &d.updated_at]);
    t.row(["ENDPOINTS".to_string(), if d.endpoints.is_empty() { "-".into() } else { d.endpoints.join(", ") }]);
    if !d.dependents.is_empty() {
        t.row(["DEPENDENTS".to_string(), d.dependents.join(", ")]);
    }
    t
}

impl Tabular for StatusOf<'_> {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        status_fields(self.0).write(out)?;
        writeln!(out)?;
        objects_table(&self.0.objects, 0).write(out)
    }
}

impl Tabular for DeploymentView {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut fields = status_fields(self);
        fields.row(["BACKEND", self.backend.as_str()]);
        fields.write(out)?;
        writeln!(out, "\nCONFIG")?;
        let mut config = Table::new(&["PLACEHOLDER", "VALUE"]).indented(2);
        for (k, v) in &self.config {
            config.row([k.clone(), cell(v)]);
        }
        config.write(out)?;
        writeln!(out, "\nOBJECTS")?;
        objects_table(&self.objects, 2).write(out)
    }
}

/// `jac-orc list`: a table of deployments, or (JSON/YAML) the tree REST returns.
#[derive(Debug)]
pub(crate) struct Deployments(pub(crate) Vec<DeploymentView>);

impl Serialize for Deployments {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.iter().cloned().collect::<DeploymentTree>().serialize(s)
    }
}

impl Tabular for Deployments {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(&["NAMESPACE", "MODULE", "NAME", "VERSION", "STATUS", "UPDATED", "ENDPOINTS"]);
        for d in &self.0 {
            t.row([
                d.namespace.clone(),
                d.module.clone(),
                d.name.clone(),
                d.version.clone(),
                d.status.as_str().to_string(),
                d.updated_at.clone(),
                or_dash(&d.endpoints.join(",")),
            ]);
        }
        t.write(out)
    }
}

/// `jac-orc templates`: each version with its placeholders' types, defaults and descriptions.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Templates(pub(crate) Vec<TemplateView>);

impl Tabular for Templates {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut first = true;
        for t in &self.0 {
            for v in &t.versions {
                if !first {
                    writeln!(out)?;
                }
                first = false;
                let mut traits = vec![v.format.as_str()];
                if v.local_recipe {
                    traits.push("local recipe");
                }
                if v.has_dependencies {
                    traits.push("dependencies");
                }
                let mut head = Table::fields();
                head.row([
                    format!("{}/{}", t.module, v.version),
                    format!("({})", traits.join(", ")),
                    v.description.clone(),
                ]);
                head.write(out)?;
                let mut specs = Table::new(&["PLACEHOLDER", "TYPE", "DEFAULT", "DESCRIPTION"]).indented(2);
                for p in &v.placeholder_specs {
                    let default = match (p.secret, p.required, &p.default) {
                        (_, true, Value::Null) => "(required)".to_string(),
                        (true, _, Value::Null) => "(generated)".to_string(),
                        (_, _, d) => cell(d),
                    };
                    let ty = if p.secret { format!("{}, secret", p.ty.as_str()) } else { p.ty.as_str().to_string() };
                    specs.row([p.name.clone(), ty, default, or_dash(&p.description)]);
                }
                specs.write(out)?;
            }
        }
        Ok(())
    }
}

impl Tabular for DryRunView {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut head = Table::fields();
        head.row(["DEPLOYMENT".to_string(), format!("{}/{}", self.module, self.name)]);
        head.row(["NAMESPACE", &self.namespace]);
        head.row(["VERSION", &self.version]);
        head.write(out)?;
        writeln!(out)?;
        // The message carries no template order (a protobuf map): by name.
        let mut names: Vec<&String> = self.placeholders.keys().collect();
        names.sort();
        let mut t = Table::new(&["PLACEHOLDER", "TYPE", "DEFAULT", "VALUE", "DESCRIPTION"]);
        for name in names {
            let p = &self.placeholders[name];
            let ty = if p.secret { format!("{}, secret", p.ty.as_str()) } else { p.ty.as_str().to_string() };
            t.row([name.clone(), ty, cell(&p.default), cell(&p.current), or_dash(&p.description)]);
        }
        t.write(out)?;
        writeln!(out)?;
        objects_table(&self.objects, 0).write(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn written(t: &Table) -> String {
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_align_and_the_last_one_is_not_padded() {
        let mut t = Table::new(&["A", "BB", "C"]);
        t.row(["long-cell", "x", "end"]);
        t.row(["y", "", ""]);
        assert_eq!(written(&t), "A          BB  C\nlong-cell  x   end\ny\n");
        let t = Table::new(&["K", "V"]).indented(2);
        assert_eq!(written(&t), "  K  V\n");
    }

    #[test]
    fn cells_flatten_nested_values_without_json() {
        assert_eq!(cell(&json!(["a", 1])), "a, 1");
        assert_eq!(cell(&json!({"k": "v", "n": [true]})), "k=v, n=true");
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("")), "\"\"");
        assert_eq!(cell(&json!([])), "(none)");
        assert_eq!(cell(&json!(0.5)), "0.5");
    }
}
