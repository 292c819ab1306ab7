//! tonic implementation of `jac.splice.v1.Orchestrator`: turns messages into requests, calls
//! the service layer (as the request's [`Caller`], which the auth layer put in its extensions)
//! and encodes its views, nothing more.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{self, from_struct};
use super::ensure;
use super::events::events;
pub use super::events::EventStream;
use super::revisions;
use super::status::to_status;
use crate::auth::Caller;
use crate::backend::ApplyOptions;
use crate::identity::DeploymentId;
use crate::pb::{self, orchestrator_server::Orchestrator};
use crate::service::{self, DeploymentRequest, Service, UndeployOptions, DEFAULT_WAIT};

#[derive(Debug, Clone)]
pub struct OrchestratorApi {
    service: Arc<Service>,
}

impl OrchestratorApi {
    pub fn new(service: Arc<Service>) -> Self {
        OrchestratorApi { service }
    }
}

fn status(e: service::Error) -> Status {
    to_status(&e)
}

fn request_of(module: String, version: String, config: Option<prost_types::Struct>) -> DeploymentRequest {
    DeploymentRequest {
        module,
        version: Some(version).filter(|v| !v.is_empty()),
        config: config.as_ref().map(from_struct).unwrap_or_default(),
    }
}

fn id_of(namespace: String, module: String, name: String) -> Result<DeploymentId, Status> {
    DeploymentId::new(namespace, module, name).map_err(|e| status(e.into()))
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorApi {
    async fn dry_run(&self, request: Request<pb::DryRunRequest>) -> Result<Response<pb::DryRunResponse>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let view = self.service.dry_run(&caller, &request_of(r.module, r.version, r.config)).await.map_err(status)?;
        Ok(Response::new(convert::dry_run(&view)))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, request: Request<pb::DeployRequest>) -> Result<Response<Self::DeployStream>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let opts = ApplyOptions {
            wait: r.wait.then(|| match r.wait_timeout_seconds {
                0 => DEFAULT_WAIT,
                s => Duration::from_secs(u64::from(s)),
            }),
            force_conflicts: r.force_conflicts,
            self_heal: r.self_heal,
            dry_run: r.dry_run,
        };
        // Bad input fails here, before any stream exists and before anything is applied.
        let mut req = request_of(r.module, r.version, r.config);
        if r.reuse_values {
            req = self.service.with_previous_values(&req).await.map_err(status)?;
        }
        let stream = self.service.deploy(&caller, &req, opts).await.map_err(status)?;
        Ok(Response::new(events(stream)))
    }

    type UndeployStream = EventStream;

    async fn undeploy(&self, request: Request<pb::UndeployRequest>) -> Result<Response<Self::UndeployStream>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let id = id_of(r.namespace, r.module, r.name)?;
        let opts = UndeployOptions { force_referenced: r.force_referenced };
        Ok(Response::new(events(self.service.undeploy_with(&caller, &id, opts).await.map_err(status)?)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let view = self.service.get(&caller, &id_of(r.namespace, r.module, r.name)?).await.map_err(status)?;
        Ok(Response::new(convert::deployment(&view)))
    }

    async fn get_deployment_secrets(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentSecrets>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let view = self.service.secrets(&caller, &id_of(r.namespace, r.module, r.name)?).await.map_err(status)?;
        Ok(Response::new(convert::secrets(&view)))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let r = request.into_inner();
        let (namespace, module) = (Some(r.namespace.as_str()), Some(r.module.as_str()));
        let views = self.service.list(&caller, namespace, module, r.on_demand).await.map_err(status)?;
        Ok(Response::new(pb::ListDeploymentsResponse { deployments: views.iter().map(convert::deployment).collect() }))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let templates = self.service.templates(&caller).await.map_err(status)?;
        Ok(Response::new(pb::ListTemplatesResponse { templates: templates.iter().map(convert::template).collect() }))
    }

    async fn ensure_module(
        &self,
        request: Request<pb::EnsureModuleRequest>,
    ) -> Result<Response<pb::EnsureModuleResponse>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let req = ensure::request(request.into_inner());
        let view = self.service.ensure_module(&caller, &req).await.map_err(status)?;
        Ok(Response::new(ensure::response(view)))
    }

    type EnsureModuleProgressStream = ensure::EnsureStream;

    async fn ensure_module_progress(
        &self,
        request: Request<pb::EnsureModuleRequest>,
    ) -> Result<Response<Self::EnsureModuleProgressStream>, Status> {
        let caller = Caller::from_extensions(request.extensions());
        let req = ensure::request(request.into_inner());
        Ok(Response::new(ensure::progress(self.service.clone(), caller, req)))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        Ok(Response::new(revisions::history(&self.service, request).await?))
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        revisions::rollback(&self.service, request).await
    }

    async fn diff(&self, request: Request<pb::DiffRequest>) -> Result<Response<pb::DiffResponse>, Status> {
        Ok(Response::new(revisions::diff(&self.service, request).await?))
    }

    async fn get_module_access(
        &self,
        request: Request<pb::GetModuleAccessRequest>,
    ) -> Result<Response<pb::ModuleAccess>, Status> {
        Ok(Response::new(super::module_access::get_module_access(&self.service, request).await?))
    }

    type LogsStream = super::logs::LogLineStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Ok(Response::new(super::logs::logs(&self.service, request).await?))
    }
}
