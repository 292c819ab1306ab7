//! The client commands: each calls a running orchestrator over gRPC, converts the answer into
//! the service's views ([`crate::api::convert`]) and prints them ([`super::output`]), so
//! `-o json` prints exactly what REST returns for the same view.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_stream::StreamExt;

use super::args::{ClientArgs, DeployArgs, IdArgs, ListArgs, Output, RenderArgs, TemplatesArgs};
use super::output;
use crate::api::convert::to_struct;
use crate::backend::ObjectEvent;
use crate::identity::DeploymentId;
use crate::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
use crate::service::views::{Applied, DeploymentTree, DeploymentView, DryRunView, Outcome, Run, Summary, TemplateView};

type Client = OrchestratorClient<tonic::transport::Channel>;

async fn connect(args: &ClientArgs) -> Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid --server {}", args.server))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach jac-orc at {}", args.server))?;
    Ok(OrchestratorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn id_of(a: &IdArgs) -> Result<DeploymentId> {
    Ok(DeploymentId::new(a.namespace.clone(), a.module.clone(), a.name.clone())?)
}

pub(crate) async fn dry_run(a: RenderArgs) -> Result<()> {
    let config = Some(to_struct(&a.template.config()?));
    let req = pb::DryRunRequest { module: a.template.module, version: a.template.version, config };
    let r = connect(&a.client).await?.dry_run(req).await.map_err(status_error)?.into_inner();
    output::view(a.output, &DryRunView::try_from(&r)?)
}

pub(crate) async fn deploy(a: DeployArgs) -> Result<()> {
    let config = Some(to_struct(&a.template.config()?));
    let what = format!("deploying {}", a.template.module);
    let req = pb::DeployRequest {
        module: a.template.module,
        version: a.template.version,
        config,
        wait: a.wait,
        wait_timeout_seconds: a.timeout,
        force_conflicts: a.force_conflicts,
        self_heal: a.no_self_heal.then_some(false),
    };
    let stream = connect(&a.client).await?.deploy(req).await.map_err(status_error)?.into_inner();
    follow(stream, a.output, &what, Run::Deploy).await
}

pub(crate) async fn undeploy(a: IdArgs) -> Result<()> {
    let id = id_of(&a)?;
    let req = pb::UndeployRequest { namespace: id.namespace, module: id.module.clone(), name: id.name };
    let stream = connect(&a.client).await?.undeploy(req).await.map_err(status_error)?.into_inner();
    follow(stream, a.output, &format!("undeploying {}", id.module), Run::Undeploy).await
}

/// Prints a run as it happens: a live spinner on a terminal, plain lines when piped; with
/// `-o json`/`yaml`, the collected [`Outcome`] once the run has ended.
async fn follow(mut stream: tonic::Streaming<pb::DeployEvent>, output: Output, what: &str, run: Run) -> Result<()> {
    let text = output == Output::Text;
    let bar = (text && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_message(what.to_string());
        b
    });
    let say = |line: String| match &bar {
        Some(b) => {
            b.println(line);
            Ok(())
        }
        None => output::line(&line),
    };
    let mut applied = Applied::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(pb::DeployEvent { event: Some(Event::Object(ev)) }) => {
                let ev = ObjectEvent::try_from(&ev)?;
                if let Some(b) = &bar {
                    b.set_message(ev.line.clone());
                }
                if text {
                    say(output::event(&ev))?;
                }
                applied.add(&ev);
            }
            Ok(pb::DeployEvent { event: Some(Event::Summary(s)) }) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let summary = Summary::try_from(&s)?;
                return match (text, run) {
                    (true, Run::Deploy) => say(output::deployed(&summary)),
                    (true, Run::Undeploy) => say(output::undeployed(&summary)),
                    (false, _) => output::view(output, &Outcome::new(run, applied, summary)),
                };
            }
            Ok(pb::DeployEvent { event: None }) => {}
            Err(s) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(status_error(s));
            }
        }
    }
    anyhow::bail!("the server ended the {what} stream without a summary")
}

pub(crate) async fn get(a: IdArgs) -> Result<()> {
    let id = id_of(&a)?;
    let req = pb::GetDeploymentRequest { namespace: id.namespace, module: id.module, name: id.name };
    let d = connect(&a.client).await?.get_deployment(req).await.map_err(status_error)?.into_inner();
    output::view(a.output, &DeploymentView::try_from(&d)?)
}

pub(crate) async fn list(a: ListArgs) -> Result<()> {
    let req =
        pb::ListDeploymentsRequest { namespace: a.namespace.unwrap_or_default(), module: a.module.unwrap_or_default() };
    let r = connect(&a.client).await?.list_deployments(req).await.map_err(status_error)?.into_inner();
    let views = r.deployments.iter().map(DeploymentView::try_from).collect::<Result<Vec<_>, _>>()?;
    match a.output {
        Output::Text => output::deployment_table(&views),
        other => output::view(other, &views.into_iter().collect::<DeploymentTree>()),
    }
}

pub(crate) async fn templates(a: TemplatesArgs) -> Result<()> {
    let r = connect(&a.client).await?.list_templates(pb::ListTemplatesRequest {}).await.map_err(status_error)?;
    let templates = r.into_inner().templates.iter().map(TemplateView::try_from).collect::<Result<Vec<_>, _>>()?;
    match a.output {
        Output::Text => output::template_table(&templates),
        other => output::view(other, &templates),
    }
}
