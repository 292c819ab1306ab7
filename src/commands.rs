//! What each CLI command does: `serve` wires settings into the server; the client commands talk
//! to a running orchestrator over gRPC.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::api::convert::{from_proto_value, from_struct, to_struct};
use crate::backend::kube::{self as kube_backend, KubeBackend, KubeOptions};
use crate::backend::local::{LocalBackend, LocalOptions};
use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::cli::{self, ClientArgs, DeployArgs, IdArgs, ListArgs, Output, RenderArgs, TemplatesArgs};
use crate::config::{BackendChoice, ServeConfig};
use crate::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
use crate::proxy::ProxyConfig;
use crate::service::{Service, Settings};
use crate::{server, startup};

pub async fn serve(cfg: ServeConfig) -> Result<()> {
    let catalog = Arc::new(match &cfg.manifests_path {
        Some(p) => Catalog::with_override(p).with_context(|| format!("--manifests-path {}", p.display()))?,
        None => Catalog::builtin(),
    });
    let (backend, local) = choose_backend(&cfg).await?;
    let settings = Settings {
        namespace: cfg.namespace.clone(),
        restricted_namespace: cfg.restricted_namespace,
        proxy: ProxyConfig::default().max_message_bytes(cfg.max_message_bytes),
    };
    let service = Arc::new(Service::new(catalog, backend.clone(), settings));
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        templates = %cfg.manifests_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "builtin".into()),
        "jac-orc listening on {addr} (gRPC, grpc-web and REST)"
    );
    let startup_requests = match &cfg.modules {
        Some(text) => match startup::load(text) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "ignoring MODULES");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    {
        let service = service.clone();
        tokio::spawn(async move {
            if let Some(local) = local {
                local.restore().await;
            }
            if !startup_requests.is_empty() {
                startup::replay(service, startup_requests).await;
            }
        });
    }
    server::serve(listener, service, shutdown).await?;
    tracing::info!("stopping workloads");
    backend.shutdown().await;
    Ok(())
}

/// The backend to serve with, and the local backend when that is the one (it restores workloads).
type Chosen = (Arc<dyn Backend>, Option<Arc<LocalBackend>>);

/// `--backend auto|kube|local`: kube when a cluster is configured and answers, else local; one
/// log line says which and why.
async fn choose_backend(cfg: &ServeConfig) -> Result<Chosen> {
    let local = || -> Result<Chosen> {
        let l =
            Arc::new(LocalBackend::open(LocalOptions { data_dir: cfg.data_dir.clone(), python: cfg.python.clone() })?);
        Ok((l.clone(), Some(l)))
    };
    if cfg.backend == BackendChoice::Local {
        tracing::info!(reason = "--backend local", "backend: local (child processes on 127.0.0.1)");
        return local();
    }
    let found = kube_backend::detect(cfg.kubeconfig.as_deref()).await;
    let found = match (found, cfg.backend) {
        (Ok(f), _) => f,
        (Err(e), BackendChoice::Kube) => return Err(e).context("--backend kube"),
        (Err(e), _) => {
            tracing::warn!(error = %e, "backend: local (the Kubernetes configuration could not be loaded)");
            return local();
        }
    };
    let Some(client) = found.client else {
        if cfg.backend == BackendChoice::Kube {
            bail!("--backend kube: {}", found.reason);
        }
        tracing::info!(reason = %found.reason, "backend: local (child processes on 127.0.0.1)");
        return local();
    };
    match kube_backend::probe(&client, Duration::from_secs(5)).await {
        Ok(version) => {
            tracing::info!(reason = %found.reason, %version, "backend: kubernetes");
            let options = KubeOptions::default()
                .orchestrator_namespace(&cfg.namespace)
                .restricted_namespace(cfg.restricted_namespace);
            Ok((Arc::new(KubeBackend::new(client, options)), None))
        }
        Err(e) if cfg.backend == BackendChoice::Auto => {
            tracing::warn!(reason = %found.reason, error = %e, "backend: local (the configured cluster does not answer)");
            local()
        }
        Err(e) => Err(e).context("--backend kube"),
    }
}

/// Registers SIGTERM and Ctrl-C handlers now (before the address is announced, so a supervisor
/// that signals right after seeing it gets a clean stop) and resolves when either arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

async fn client(args: &ClientArgs) -> Result<OrchestratorClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid --server {}", args.server))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach jac-orc at {}", args.server))?;
    Ok(OrchestratorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn print(output: Output, value: &Value) -> Result<()> {
    match output {
        Output::Json | Output::Text => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

pub async fn dry_run(a: RenderArgs) -> Result<()> {
    let config = cli::parse_sets(&a.set, &a.set_string).map_err(anyhow::Error::msg)?;
    let mut c = client(&a.client).await?;
    let r = c
        .dry_run(pb::DryRunRequest { module: a.module, version: a.version, config: Some(to_struct(&config)) })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut names: Vec<&String> = r.placeholders.keys().collect();
    names.sort();
    let placeholders: serde_json::Map<String, Value> = names
        .into_iter()
        .map(|n| {
            let p = &r.placeholders[n];
            let v = |x: &Option<prost_types::Value>| x.as_ref().map(from_proto_value).unwrap_or(Value::Null);
            (n.clone(), json!({"default": v(&p.default), "current": v(&p.current), "type": p.r#type}))
        })
        .collect();
    let sorted = |m: &std::collections::HashMap<String, String>| -> Value {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        Value::Object(keys.into_iter().map(|k| (k.clone(), Value::String(m[k].clone()))).collect())
    };
    let out = json!({
        "module": r.module, "version": r.version, "namespace": r.namespace, "name": r.name,
        "placeholders": placeholders,
        "dependencies": if r.has_dependencies { sorted(&r.dependencies) } else { Value::Null },
        "modules": sorted(&r.modules),
    });
    print(a.output, &out)
}

pub async fn deploy(a: DeployArgs) -> Result<()> {
    let config = cli::parse_sets(&a.set, &a.set_string).map_err(anyhow::Error::msg)?;
    let mut c = client(&a.client).await?;
    let req = pb::DeployRequest {
        module: a.module.clone(),
        version: a.version,
        config: Some(to_struct(&config)),
        wait: a.wait,
        wait_timeout_seconds: a.timeout,
        force_conflicts: a.force_conflicts,
    };
    let mut stream = c.deploy(req).await.map_err(status_error)?.into_inner();
    follow(&mut stream, a.output, &format!("deploying {}", a.module), false).await
}

/// Prints events as they arrive: a live spinner on a terminal, plain lines when piped.
async fn follow(
    stream: &mut tonic::Streaming<pb::DeployEvent>,
    output: Output,
    what: &str,
    undeploy: bool,
) -> Result<()> {
    let live = output == Output::Text && std::io::stderr().is_terminal();
    let bar = live.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_message(what.to_string());
        b
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => println!("{line}"),
    };
    let mut events = Vec::new();
    loop {
        match stream.next().await {
            None => break,
            Some(Ok(pb::DeployEvent { event: Some(Event::Object(ev)) })) => {
                if output == Output::Text {
                    let line =
                        if ev.message.is_empty() { ev.line.clone() } else { format!("{} ({})", ev.line, ev.message) };
                    if let Some(b) = &bar {
                        b.set_message(ev.line.clone());
                    }
                    say(line);
                } else {
                    events.push(json!({"line": ev.line, "message": ev.message}));
                }
            }
            Some(Ok(pb::DeployEvent { event: Some(Event::Summary(s)) })) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let d = s.deployment.unwrap_or_default();
                if output == Output::Text && undeploy {
                    say(format!(
                        "undeployed {}/{} in {} ({} deleted, {} kept)",
                        d.module, d.name, d.namespace, s.deleted, s.kept
                    ));
                } else if output == Output::Text {
                    let endpoints = if d.endpoints.is_empty() {
                        String::new()
                    } else {
                        format!("; endpoints: {}", d.endpoints.join(", "))
                    };
                    say(format!(
                        "deployed {}/{} in {}: {} ({} created, {} configured, {} unchanged, {} deleted) in {} ms{endpoints}",
                        d.module, d.name, d.namespace, d.status, s.created, s.configured, s.unchanged, s.deleted, s.elapsed_ms,
                    ));
                } else {
                    print(output, &json!({"events": events, "deployment": deployment_json(&d)}))?;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(s)) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(status_error(s));
            }
        }
    }
    Ok(())
}

fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "namespace": d.namespace, "module": d.module, "name": d.name, "version": d.version,
        "config": d.config.as_ref().map(from_struct).map(Value::Object).unwrap_or(Value::Null),
        "endpoints": d.endpoints, "status": d.status, "message": d.message, "backend": d.backend, "updated_at": d.updated_at,
    })
}

pub async fn undeploy(a: IdArgs) -> Result<()> {
    let mut c = client(&a.client).await?;
    let req = pb::UndeployRequest { namespace: a.namespace, module: a.module.clone(), name: a.name };
    let mut stream = c.undeploy(req).await.map_err(status_error)?.into_inner();
    follow(&mut stream, a.output, &format!("undeploying {}", a.module), true).await
}

pub async fn get(a: IdArgs) -> Result<()> {
    let mut c = client(&a.client).await?;
    let d = c
        .get_deployment(pb::GetDeploymentRequest { namespace: a.namespace, module: a.module, name: a.name })
        .await
        .map_err(status_error)?
        .into_inner();
    print(if a.output == Output::Yaml { Output::Yaml } else { Output::Json }, &deployment_json(&d))
}

pub async fn list(a: ListArgs) -> Result<()> {
    let mut c = client(&a.client).await?;
    let r = c
        .list_deployments(pb::ListDeploymentsRequest {
            namespace: a.namespace.unwrap_or_default(),
            module: a.module.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.output != Output::Text {
        return print(a.output, &Value::Array(r.deployments.iter().map(deployment_json).collect()));
    }
    println!("{:<16} {:<16} {:<20} {:<10} {:<10} ENDPOINTS", "NAMESPACE", "MODULE", "NAME", "VERSION", "STATUS");
    for d in r.deployments {
        println!(
            "{:<16} {:<16} {:<20} {:<10} {:<10} {}",
            d.namespace,
            d.module,
            d.name,
            d.version,
            d.status,
            d.endpoints.join(",")
        );
    }
    Ok(())
}

pub async fn templates(a: TemplatesArgs) -> Result<()> {
    let mut c = client(&a.client).await?;
    let r = c.list_templates(pb::ListTemplatesRequest {}).await.map_err(status_error)?.into_inner();
    if a.output != Output::Text {
        let v: Vec<Value> = r
            .templates
            .iter()
            .map(|t| json!({"module": t.module, "versions": t.versions.iter().map(|v| json!({"version": v.version, "format": v.format, "source": v.source, "local_recipe": v.local_recipe, "placeholders": v.placeholders})).collect::<Vec<_>>()}))
            .collect();
        return print(a.output, &Value::Array(v));
    }
    for t in r.templates {
        for v in t.versions {
            println!(
                "{:<16} {:<8} {:<7} {:<6} {}",
                t.module,
                v.version,
                v.format,
                if v.local_recipe { "local" } else { "-" },
                v.placeholders.join(",")
            );
        }
    }
    Ok(())
}
