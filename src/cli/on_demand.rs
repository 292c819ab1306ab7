//! `jac-orc undeploy-on-demand [-n NS] [--idle]`: removes together the deployments made on first
//! import (`import_module(..., deploy=True)`, `EnsureModule`; they carry the `on-demand` config and
//! the `jac-orc.io/on-demand` label), each by its own `Undeploy` so the server checks the same
//! permissions and references as for one. A deployment that cannot be removed (referenced, not
//! permitted) is reported and the others are still removed; the command then fails naming it.

use anyhow::Result;
use serde::Serialize;
use tokio_stream::StreamExt;

use super::args::UndeployOnDemandArgs;
use super::client::{connect, server_error, Client, ServerError};
use super::output::{self, Tabular};
use crate::backend::{self, ObjectEvent};
use crate::pb::{self, deploy_event::Event};
use crate::service::views::{Applied, DeploymentView, Outcome, Run, Summary};

/// The undeploy outcomes, one per removed deployment (`-o json`: a list of what `undeploy -o json`
/// prints).
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Removed(Vec<Outcome>);

impl Tabular for Removed {
    fn table(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for o in &self.0 {
            writeln!(out, "{}", output::undeployed(&o.summary))?;
        }
        writeln!(out, "removed {} on-demand deployment{}", self.0.len(), if self.0.len() == 1 { "" } else { "s" })
    }
}

/// One deployment's undeploy stream, collected into its outcome.
async fn undeploy_one(client: &mut Client, d: &DeploymentView, force_referenced: bool) -> Result<Outcome> {
    let req = pb::UndeployRequest {
        namespace: d.namespace.clone(),
        module: d.module.clone(),
        name: d.name.clone(),
        force_referenced,
    };
    let mut stream = client.undeploy(req).await.map_err(server_error(None))?.into_inner();
    let mut applied = Applied::default();
    while let Some(item) = stream.next().await {
        match item.map_err(|s| ServerError::new(&s, None))?.event {
            Some(Event::Object(ev)) => applied.add(&ObjectEvent::try_from(&ev)?),
            Some(Event::Summary(s)) => return Ok(Outcome::new(Run::Undeploy, applied, Summary::try_from(&s)?)),
            None => {}
        }
    }
    anyhow::bail!("the server ended the undeploy stream of {}/{} without a summary", d.module, d.name)
}

pub(crate) async fn undeploy_on_demand(a: UndeployOnDemandArgs) -> Result<()> {
    let mut client = connect(&a.client).await?;
    let req = pb::ListDeploymentsRequest {
        namespace: a.namespace.clone().unwrap_or_default(),
        module: String::new(),
        on_demand: true,
    };
    let listed = client.list_deployments(req).await.map_err(server_error(None))?.into_inner();
    let mut chosen = listed.deployments.iter().map(DeploymentView::try_from).collect::<Result<Vec<_>, _>>()?;
    if a.idle {
        chosen.retain(|d| d.status == backend::Status::Idle);
    }
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for d in &chosen {
        match undeploy_one(&mut client, d, a.force_referenced).await {
            Ok(outcome) => removed.push(outcome),
            Err(e) => {
                let id = format!("{}/{}/{}", d.namespace, d.module, d.name);
                tracing::debug!(deployment = %id, error = %e, "could not undeploy");
                failed.push(format!("{id}: {e:#}"));
            }
        }
    }
    output::print(a.output, &Removed(removed))?;
    if !failed.is_empty() {
        anyhow::bail!("{} on-demand deployment(s) not removed:\n  {}", failed.len(), failed.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_what_it_removed() {
        let mut out = Vec::new();
        Removed(Vec::new()).table(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "removed 0 on-demand deployments\n");
    }
}
