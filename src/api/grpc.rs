//! tonic implementation of `jac.splice.v1.Orchestrator`: converts messages and calls the
//! service layer, nothing more.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, from_struct};
use super::status::to_status;
use super::{spawn_deploy, spawn_undeploy, Streamed};
use crate::backend::{Action, ApplyOptions};
use crate::pb::{self, deploy_event::Event, orchestrator_server::Orchestrator};
use crate::service::{DeploymentRequest, DeploymentView, Service, DEFAULT_WAIT};

#[derive(Debug, Clone)]
pub struct OrchestratorApi {
    service: Arc<Service>,
}

impl OrchestratorApi {
    pub fn new(service: Arc<Service>) -> Self {
        OrchestratorApi { service }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DeployEvent, Status>> + Send>>;

#[derive(Debug, Default)]
struct Counts {
    created: u32,
    configured: u32,
    unchanged: u32,
    deleted: u32,
    kept: u32,
}

impl Counts {
    fn add(&mut self, a: Action) {
        match a {
            Action::Created => self.created += 1,
            Action::Configured => self.configured += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Deleted => self.deleted += 1,
            Action::Kept => self.kept += 1,
            _ => {}
        }
    }
}

fn request_of(module: String, version: String, config: Option<prost_types::Struct>) -> DeploymentRequest {
    DeploymentRequest {
        module,
        version: Some(version).filter(|v| !v.is_empty()),
        config: config.as_ref().map(from_struct).unwrap_or_default(),
    }
}

/// Turns a service run into a gRPC event stream: events, then a summary or a final error status.
fn relay<T: Send + 'static>(
    mut rx: mpsc::Receiver<Streamed<T>>,
    summary: impl FnOnce(T, &Counts) -> Option<pb::DeploySummary> + Send + 'static,
) -> EventStream {
    let (tx, out) = mpsc::channel(128);
    tokio::spawn(async move {
        let mut summary = Some(summary);
        let mut counts = Counts::default();
        while let Some(item) = rx.recv().await {
            match item {
                Streamed::Event(ev) => {
                    counts.add(ev.action);
                    let msg = pb::DeployEvent { event: Some(Event::Object(convert::object_event(&ev))) };
                    if tx.send(Ok(msg)).await.is_err() {
                        tracing::debug!("client left; the run continues and is recorded");
                    }
                }
                Streamed::Done(Ok(value)) => {
                    if let Some(s) = summary.take().and_then(|f| f(value, &counts)) {
                        let _ = tx.send(Ok(pb::DeployEvent { event: Some(Event::Summary(s)) })).await;
                    }
                }
                Streamed::Done(Err(e)) => {
                    let _ = tx.send(Err(to_status(&e))).await;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorApi {
    async fn dry_run(&self, request: Request<pb::DryRunRequest>) -> Result<Response<pb::DryRunResponse>, Status> {
        let r = request.into_inner();
        let dry = self.service.dry_run(&request_of(r.module, r.version, r.config)).map_err(|e| to_status(&e))?;
        let placeholders = dry
            .placeholders
            .iter()
            .map(|(name, p)| {
                let ph = pb::Placeholder {
                    default: Some(convert::to_proto_value(&p.default)),
                    current: Some(convert::to_proto_value(&p.current)),
                    r#type: p.ty.into(),
                    description: p.description.clone(),
                    secret: p.secret,
                };
                (name.clone(), ph)
            })
            .collect();
        let files = |fs: &[crate::catalog::RenderedFile]| fs.iter().map(|f| (f.name.clone(), f.text.clone())).collect();
        Ok(Response::new(pb::DryRunResponse {
            placeholders,
            has_dependencies: dry.dependencies.is_some(),
            dependencies: dry.dependencies.as_deref().map(files).unwrap_or_default(),
            modules: files(&dry.modules),
            module: dry.module,
            version: dry.version,
            namespace: dry.id.namespace,
            name: dry.id.name,
            objects: dry.objects.iter().map(convert::object_ref).collect(),
        }))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, request: Request<pb::DeployRequest>) -> Result<Response<Self::DeployStream>, Status> {
        let r = request.into_inner();
        let opts = ApplyOptions {
            wait: r.wait.then(|| match r.wait_timeout_seconds {
                0 => DEFAULT_WAIT,
                s => Duration::from_secs(u64::from(s)),
            }),
            force_conflicts: r.force_conflicts,
        };
        // Bad input fails here, before any stream exists and before anything is applied.
        let prepared =
            self.service.prepare(&request_of(r.module, r.version, r.config)).await.map_err(|e| to_status(&e))?;
        let rx = spawn_deploy(self.service.clone(), prepared, opts);
        Ok(Response::new(relay(rx, |deployed, c| {
            Some(pb::DeploySummary {
                deployment: Some(convert::deployment(&DeploymentView::from(&deployed.record))),
                created: c.created,
                configured: c.configured,
                unchanged: c.unchanged,
                deleted: c.deleted,
                kept: c.kept,
                elapsed_ms: deployed.elapsed.as_millis() as u64,
            })
        })))
    }

    type UndeployStream = EventStream;

    async fn undeploy(&self, request: Request<pb::UndeployRequest>) -> Result<Response<Self::UndeployStream>, Status> {
        let r = request.into_inner();
        let id = Service::parse_id(&r.namespace, &r.module, &r.name).map_err(|e| to_status(&e))?;
        let record = self.service.require(&id).await.map_err(|e| to_status(&e))?;
        let view = DeploymentView::from(&record);
        let rx = spawn_undeploy(self.service.clone(), id);
        Ok(Response::new(relay(rx, move |(), c| {
            Some(pb::DeploySummary {
                deployment: Some(convert::deployment(&view)),
                deleted: c.deleted,
                kept: c.kept,
                ..Default::default()
            })
        })))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let r = request.into_inner();
        let id = Service::parse_id(&r.namespace, &r.module, &r.name).map_err(|e| to_status(&e))?;
        let view = self.service.get(&id).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::deployment(&view)))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let r = request.into_inner();
        let views = self.service.list(Some(&r.namespace), Some(&r.module)).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ListDeploymentsResponse { deployments: views.iter().map(convert::deployment).collect() }))
    }

    async fn list_templates(
        &self,
        _: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let modules = self.service.templates().map_err(|e| to_status(&e))?;
        let templates = modules
            .into_iter()
            .map(|m| pb::Template {
                module: m.module,
                versions: m
                    .versions
                    .iter()
                    .map(|v| pb::TemplateVersion {
                        version: v.version.clone(),
                        format: v.format.as_str().into(),
                        source: v.source.clone(),
                        has_dependencies: v.has_dependencies(),
                        local_recipe: v.has_local_recipe(),
                        placeholders: v.specs.iter().map(|s| s.name.clone()).collect(),
                        description: v.description.clone(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListTemplatesResponse { templates }))
    }
}
