//! How the client commands print the service's views: `-o json` and `-o yaml` print a view as
//! REST returns it; `-o text` prints lines for people. Everything goes to stdout through
//! `writeln!`, so a closed pipe is an error the caller can recognise, not a panic.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::args::Output;
use crate::backend::ObjectEvent;
use crate::service::views::{DeploymentView, Summary, TemplateView};

/// Prints a view as JSON (pretty) or YAML; `text` means JSON for views without a table.
pub(crate) fn view(output: Output, value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json | Output::Text => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(out, "{}", serde_norway::to_string(value)?)?,
    }
    Ok(out.flush()?)
}

pub(crate) fn line(text: &str) -> Result<()> {
    Ok(writeln!(std::io::stdout().lock(), "{text}")?)
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

pub(crate) fn undeployed(s: &Summary) -> String {
    let d = &s.deployment;
    format!(
        "undeployed {}/{} in {} ({} deleted, {} kept)",
        d.module, d.name, d.namespace, s.counts.deleted, s.counts.kept
    )
}

pub(crate) fn deployment_table(views: &[DeploymentView]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16} {:<16} {:<20} {:<10} {:<10} ENDPOINTS", "NAMESPACE", "MODULE", "NAME", "VERSION", "STATUS")?;
    for d in views {
        writeln!(
            out,
            "{:<16} {:<16} {:<20} {:<10} {:<10} {}",
            d.namespace,
            d.module,
            d.name,
            d.version,
            d.status.as_str(),
            d.endpoints.join(",")
        )?;
    }
    Ok(out.flush()?)
}

pub(crate) fn template_table(templates: &[TemplateView]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for t in templates {
        for v in &t.versions {
            writeln!(
                out,
                "{:<16} {:<8} {:<7} {:<6} {}",
                t.module,
                v.version,
                v.format.as_str(),
                if v.local_recipe { "local" } else { "-" },
                v.placeholders.join(",")
            )?;
        }
    }
    Ok(out.flush()?)
}
