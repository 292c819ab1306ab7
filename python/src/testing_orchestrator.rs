//! Test support: a stand-in for jac-orc's `Orchestrator` that answers `GetModuleAccess` from a
//! script and records `EnsureModule` calls (everything else is UNIMPLEMENTED).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::proto::orchestrator_server::{Orchestrator, OrchestratorServer};
use crate::proto::{
    DeployEvent, DeployRequest, Deployment, DeploymentSecrets, DiffRequest, DiffResponse, DryRunRequest,
    DryRunResponse, EnsureModuleEvent, EnsureModuleRequest, EnsureModuleResponse, GetDeploymentRequest,
    GetModuleAccessRequest, HistoryRequest, HistoryResponse, ListDeploymentsRequest, ListDeploymentsResponse,
    ListTemplatesRequest, ListTemplatesResponse, LogLine, LogsRequest, ModuleAccess, ModuleEndpoint, RollbackRequest,
    UndeployRequest,
};
use crate::testing::Stub;
use crate::wire::ORCHESTRATOR_SERVICE;

type Events = tokio_stream::Empty<Result<DeployEvent, Status>>;

/// What the stand-in answers and saw.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// `GetModuleAccess` answers, in order; the last one repeats.
    pub access: Arc<Mutex<VecDeque<Result<ModuleAccess, Status>>>>,
    /// How many `GetModuleAccess` requests came.
    pub asked: Arc<Mutex<usize>>,
    /// The module of every `EnsureModule` request.
    pub ensured: Arc<Mutex<Vec<String>>>,
}

impl Script {
    pub fn answer(&self, answers: impl IntoIterator<Item = Result<ModuleAccess, Status>>) {
        *self.access.lock().unwrap() = answers.into_iter().collect();
    }

    pub fn asked(&self) -> usize {
        *self.asked.lock().unwrap()
    }

    pub fn ensured(&self) -> Vec<String> {
        self.ensured.lock().unwrap().clone()
    }
}

/// Access to `endpoints` with `token`, valid for an hour.
pub fn access(endpoints: &[String], token: &str) -> ModuleAccess {
    ModuleAccess {
        namespace: "default".into(),
        deployment: "d".into(),
        module: "m".into(),
        endpoints: endpoints.iter().map(|address| ModuleEndpoint { address: address.clone() }).collect(),
        call_token: token.into(),
        ttl_seconds: 3600,
        expires_at: String::new(),
    }
}

/// jac-orc's answer for a deployment without a ready module server.
pub fn not_ready() -> Status {
    Status::failed_precondition("deployment default/d has no ready module server (it is starting)")
}

/// Serves `script` as jac-orc would (its health service says so too).
pub fn start(script: Script) -> Stub {
    let routes = tonic::service::Routes::new(OrchestratorServer::new(script));
    Stub::start(routes, Some(&[(ORCHESTRATOR_SERVICE, ServingStatus::Serving)]))
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the stand-in"))
}

#[tonic::async_trait]
impl Orchestrator for Script {
    async fn get_module_access(&self, _: Request<GetModuleAccessRequest>) -> Result<Response<ModuleAccess>, Status> {
        *self.asked.lock().unwrap() += 1;
        let mut answers = self.access.lock().unwrap();
        let answer = if answers.len() > 1 { answers.pop_front() } else { answers.front().cloned() };
        answer.unwrap_or_else(|| Err(Status::not_found("no script"))).map(Response::new)
    }

    async fn ensure_module(
        &self,
        request: Request<EnsureModuleRequest>,
    ) -> Result<Response<EnsureModuleResponse>, Status> {
        self.ensured.lock().unwrap().push(request.into_inner().module);
        Ok(Response::new(EnsureModuleResponse { deployment: Some(Deployment::default()), ..Default::default() }))
    }

    type EnsureModuleProgressStream = tokio_stream::Empty<Result<EnsureModuleEvent, Status>>;
    async fn ensure_module_progress(
        &self,
        _: Request<EnsureModuleRequest>,
    ) -> Result<Response<Self::EnsureModuleProgressStream>, Status> {
        unimplemented()
    }

    async fn dry_run(&self, _: Request<DryRunRequest>) -> Result<Response<DryRunResponse>, Status> {
        unimplemented()
    }
    type DeployStream = Events;
    async fn deploy(&self, _: Request<DeployRequest>) -> Result<Response<Events>, Status> {
        unimplemented()
    }
    type UndeployStream = Events;
    async fn undeploy(&self, _: Request<UndeployRequest>) -> Result<Response<Events>, Status> {
        unimplemented()
    }
    async fn get_deployment(&self, _: Request<GetDeploymentRequest>) -> Result<Response<Deployment>, Status> {
        unimplemented()
    }
    async fn get_deployment_secrets(
        &self,
        _: Request<GetDeploymentRequest>,
    ) -> Result<Response<DeploymentSecrets>, Status> {
        unimplemented()
    }
    async fn list_deployments(
        &self,
        _: Request<ListDeploymentsRequest>,
    ) -> Result<Response<ListDeploymentsResponse>, Status> {
        unimplemented()
    }
    async fn list_templates(
        &self,
        _: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        unimplemented()
    }
    async fn history(&self, _: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        unimplemented()
    }
    type RollbackStream = Events;
    async fn rollback(&self, _: Request<RollbackRequest>) -> Result<Response<Events>, Status> {
        unimplemented()
    }
    async fn diff(&self, _: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        unimplemented()
    }
    type LogsStream = tokio_stream::Empty<Result<LogLine, Status>>;
    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        unimplemented()
    }
}
