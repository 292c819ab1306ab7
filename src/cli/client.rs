//! The client commands: each calls a running orchestrator over gRPC, converts the answer into
//! the service's views ([`crate::api::convert`]) and prints them ([`super::output`]), so
//! `-o json` prints exactly what REST returns for the same view.
//!
//! Every call carries a bearer token ([`admin_token::client_token`]: `--token` /
//! `JAC_ORC_TOKEN`, else the generated token of a loopback server's data dir) and, for
//! `https://` servers, speaks TLS trusting `--ca-file` (else the system's roots).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_stream::StreamExt;
use tonic_types::StatusExt;

use super::args::TemplatesArgs;
use super::args::{
    ClientArgs, DeployArgs, GetArgs, IdArgs, ListArgs, Output, RenderArgs, SourceArgs, TargetNamespace, UndeployArgs,
};
use super::output::{self, Deployments, StatusOf, Templates};
use super::values::{Source, Values};
use crate::api::convert::to_struct;
use crate::auth::admin_token;
use crate::backend::ObjectEvent;
use crate::identity::DeploymentId;
use crate::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
use crate::service::views::{
    Applied, DeploymentSecretsView, DeploymentView, DryRunView, Outcome, Run, Summary, TemplateView,
};
use tonic::service::interceptor::InterceptedService;

pub(super) type Client = OrchestratorClient<InterceptedService<tonic::transport::Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` (marked sensitive) to every call, when there is a token.
#[derive(Debug, Clone)]
pub(super) struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

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
    pub(super) fn new(s: &tonic::Status, values: Option<&Values>) -> Self {
        let hint = values.and_then(|v| {
            let bad = s.get_details_bad_request()?;
            let hints: Vec<String> = bad.field_violations.iter().filter_map(|f| v.explain(&f.field)).collect();
            (!hints.is_empty()).then(|| hints.join("; "))
        });
        ServerError { code: s.code(), message: s.message().to_string(), hint }
    }
}

pub(super) fn server_error(values: Option<&Values>) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| ServerError::new(&s, values).into()
}

pub(super) async fn connect(args: &ClientArgs) -> Result<Client> {
    let token = admin_token::client_token(args.token.as_deref(), args.data_dir.as_deref(), &args.server)?;
    let bearer = match token {
        Some(t) => {
            let mut value: tonic::metadata::AsciiMetadataValue =
                format!("Bearer {}", t.secret()).parse().context("the token cannot be sent as a header")?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid --server {}", args.server))?
        .connect_timeout(Duration::from_secs(5));
    let reach = || format!("cannot reach jac-orc at {}", args.server);
    let channel = if args.server.starts_with("https://") {
        let config = crate::tls::client_config(args.ca_file.as_deref()).context("TLS (--ca-file)")?;
        endpoint.connect_with_connector(crate::tls::TlsConnector::new(config)).await.with_context(reach)?
    } else {
        endpoint.connect().await.with_context(reach)?
    };
    Ok(OrchestratorClient::with_interceptor(channel, Bearer(bearer)).max_decoding_message_size(64 * 1024 * 1024))
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

pub(super) fn id_of(a: &IdArgs) -> Result<DeploymentId> {
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
        self_heal: a.no_self_heal.then_some(false),
        dry_run: a.dry_run,
        reuse_values: !a.reset_values,
    };
    let stream = connect(&a.client).await?.deploy(req).await.map_err(server_error(Some(&values)))?.into_inner();
    let run = if a.dry_run { Shown::DryRun } else { Shown::Deploy };
    follow(stream, a.output, &what, run, Some(&values)).await
}

pub(crate) async fn undeploy(u: UndeployArgs) -> Result<()> {
    let a = &u.id;
    let id = id_of(a)?;
    let what = format!("undeploying {}/{}", id.module, id.name);
    let req = pb::UndeployRequest {
        namespace: id.namespace,
        module: id.module,
        name: id.name,
        force_referenced: u.force_referenced,
    };
    let stream = connect(&a.client).await?.undeploy(req).await.map_err(server_error(None))?.into_inner();
    follow(stream, a.output, &what, Shown::Undeploy, None).await
}

/// Which run is followed, and how its end is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    Deploy,
    DryRun,
    Undeploy,
}

/// Prints a run as it happens: a live spinner on a terminal, plain lines when piped; with
/// `-o json`/`yaml`, the collected [`Outcome`] once the run has ended.
pub(super) async fn follow(
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

async fn deployment(a: &IdArgs, show_secrets: bool) -> Result<DeploymentView> {
    let id = id_of(a)?;
    let req = pb::GetDeploymentRequest { namespace: id.namespace, module: id.module, name: id.name };
    let mut client = connect(&a.client).await?;
    let d = client.get_deployment(req.clone()).await.map_err(server_error(None))?.into_inner();
    let mut view = DeploymentView::try_from(&d)?;
    if show_secrets {
        let s = client.get_deployment_secrets(req).await.map_err(server_error(None))?.into_inner();
        view.config.extend(DeploymentSecretsView::from(&s).secrets);
    }
    Ok(view)
}

pub(crate) async fn get(g: GetArgs) -> Result<()> {
    output::print(g.id.output, &deployment(&g.id, g.show_secrets).await?)
}

pub(crate) async fn status(a: IdArgs) -> Result<()> {
    output::print(a.output, &StatusOf(&deployment(&a, false).await?))
}

pub(crate) async fn list(a: ListArgs) -> Result<()> {
    let req = pb::ListDeploymentsRequest {
        namespace: a.namespace.unwrap_or_default(),
        module: a.module.unwrap_or_default(),
        on_demand: a.on_demand,
    };
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
