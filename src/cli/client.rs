//! The client commands: each calls a running orchestrator over gRPC, converts the answer into
//! the service's views ([`crate::api::convert`]) and prints them ([`super::output`]), so
//! `-o json` prints exactly what REST returns for the same view.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_stream::StreamExt;
use tonic_types::StatusExt;

use super::args::TemplatesArgs;
use super::args::{ClientArgs, DeployArgs, IdArgs, ListArgs, Output, RenderArgs, SourceArgs, TargetNamespace};
use super::output::{self, Deployments, StatusOf, Templates};
use super::values::{Source, Values};
use crate::api::convert::to_struct;
use crate::backend::ObjectEvent;
use crate::identity::DeploymentId;
use crate::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
use crate::service::views::{Applied, DeploymentView, DryRunView, Outcome, Run, Summary, TemplateView};

type Client = OrchestratorClient<tonic::transport::Channel>;

/// What the server answered a call with, and (for a bad placeholder value) where the CLI got
/// that value.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code:?}){}", .hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
pub(crate) struct ServerError {
    pub(crate) code: tonic::Code,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl ServerError {
    fn new(s: &tonic::Status, values: Option<&Values>) -> Self {
        let hint = values.and_then(|v| {
            let bad = s.get_details_bad_request()?;
            let hints: Vec<String> = bad.field_violations.iter().filter_map(|f| v.explain(&f.field)).collect();
            (!hints.is_empty()).then(|| hints.join("; "))
        });
        ServerError { code: s.code(), message: s.message().to_string(), hint }
    }
}

fn server_error(values: Option<&Values>) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| ServerError::new(&s, values).into()
}

async fn connect(args: &ClientArgs) -> Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid --server {}", args.server))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach jac-orc at {}", args.server))?;
    Ok(OrchestratorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// The values a render or deploy sends: files and flags merged, then NAME and `-n` pinned.
pub(crate) fn values_of(source: &SourceArgs, name: Option<&str>, namespace: &TargetNamespace) -> Result<Values> {
    let mut values = Values::from_args(&source.values)?;
    if let Some(name) = name {
        values.pin("name", name, Source::Name)?;
    }
    if let Some(ns) = &namespace.namespace {
        values.pin("namespace", ns, Source::Namespace)?;
    }
    Ok(values)
}

fn id_of(a: &IdArgs) -> Result<DeploymentId> {
    Ok(DeploymentId::new(a.namespace.clone(), a.module.clone(), a.name.clone())?)
}

pub(crate) async fn dry_run(a: RenderArgs) -> Result<()> {
    let values = values_of(&a.source, a.name.as_deref(), &a.namespace)?;
    let req = pb::DryRunRequest {
        module: a.source.module.clone(),
        version: a.source.version.clone(),
        config: Some(to_struct(values.map())),
    };
    let r = connect(&a.client).await?.dry_run(req).await.map_err(server_error(Some(&values)))?.into_inner();
    output::print(a.output, &DryRunView::try_from(&r)?)
}

pub(crate) async fn deploy(a: DeployArgs) -> Result<()> {
    let values = values_of(&a.source, Some(&a.name), &a.namespace)?;
    let what = format!("deploying {}/{}", a.source.module, a.name);
    let req = pb::DeployRequest {
        module: a.source.module.clone(),
        version: a.source.version.clone(),
        config: Some(to_struct(values.map())),
        wait: a.wait,
        wait_timeout_seconds: a.timeout,
        force_conflicts: a.force_conflicts,
        dry_run: a.dry_run,
    };
    let stream = connect(&a.client).await?.deploy(req).await.map_err(server_error(Some(&values)))?.into_inner();
    let run = if a.dry_run { Shown::DryRun } else { Shown::Deploy };
    follow(stream, a.output, &what, run, Some(&values)).await
}

pub(crate) async fn undeploy(a: IdArgs) -> Result<()> {
    let id = id_of(&a)?;
    let what = format!("undeploying {}/{}", id.module, id.name);
    let req = pb::UndeployRequest { namespace: id.namespace, module: id.module, name: id.name };
    let stream = connect(&a.client).await?.undeploy(req).await.map_err(server_error(None))?.into_inner();
    follow(stream, a.output, &what, Shown::Undeploy, None).await
}

/// Which run is followed, and how its end is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Deploy,
    DryRun,
    Undeploy,
}

/// Prints a run as it happens: a live spinner on a terminal, plain lines when piped; with
/// `-o json`/`yaml`, the collected [`Outcome`] once the run has ended.
async fn follow(
    mut stream: tonic::Streaming<pb::DeployEvent>,
    output: Output,
    what: &str,
    shown: Shown,
    values: Option<&Values>,
) -> Result<()> {
    let table = output == Output::Table;
    let bar = (table && std::io::stderr().is_terminal()).then(|| {
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
                if table {
                    say(output::event(&ev))?;
                }
                applied.add(&ev);
            }
            Ok(pb::DeployEvent { event: Some(Event::Summary(s)) }) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let summary = Summary::try_from(&s)?;
                if !table {
                    let run = if shown == Shown::Undeploy { Run::Undeploy } else { Run::Deploy };
                    return output::print(output, &Outcome::new(run, applied, summary));
                }
                return say(match shown {
                    Shown::Deploy => output::deployed(&summary),
                    Shown::DryRun => output::dry_run_deployed(&summary),
                    Shown::Undeploy => output::undeployed(&summary),
                });
            }
            Ok(pb::DeployEvent { event: None }) => {}
            Err(s) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(ServerError::new(&s, values).into());
            }
        }
    }
    anyhow::bail!("the server ended the {what} stream without a summary")
}

async fn deployment(a: &IdArgs) -> Result<DeploymentView> {
    let id = id_of(a)?;
    let req = pb::GetDeploymentRequest { namespace: id.namespace, module: id.module, name: id.name };
    let d = connect(&a.client).await?.get_deployment(req).await.map_err(server_error(None))?.into_inner();
    Ok(DeploymentView::try_from(&d)?)
}

pub(crate) async fn get(a: IdArgs) -> Result<()> {
    output::print(a.output, &deployment(&a).await?)
}

pub(crate) async fn status(a: IdArgs) -> Result<()> {
    output::print(a.output, &StatusOf(&deployment(&a).await?))
}

pub(crate) async fn list(a: ListArgs) -> Result<()> {
    let req =
        pb::ListDeploymentsRequest { namespace: a.namespace.unwrap_or_default(), module: a.module.unwrap_or_default() };
    let r = connect(&a.client).await?.list_deployments(req).await.map_err(server_error(None))?.into_inner();
    let views = r.deployments.iter().map(DeploymentView::try_from).collect::<Result<Vec<_>, _>>()?;
    output::print(a.output, &Deployments(views))
}

pub(crate) async fn templates(a: TemplatesArgs) -> Result<()> {
    let r = connect(&a.client).await?.list_templates(pb::ListTemplatesRequest {}).await.map_err(server_error(None))?;
    let mut templates = r.into_inner().templates.iter().map(TemplateView::try_from).collect::<Result<Vec<_>, _>>()?;
    if let Some(module) = &a.module {
        templates.retain(|t| &t.module == module);
        anyhow::ensure!(!templates.is_empty(), "the server has no template module `{module}`");
    }
    output::print(a.output, &Templates(templates))
}
