//! `GET /module/access/{namespace}/{deployment}`: the same service call as the
//! `GetModuleAccess` RPC.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::body::PathParams;
use super::AppState;
use crate::api::openapi::TAG_MODULES;
use crate::api::status::{ApiError, ErrorBody};
use crate::auth::Caller;
use crate::service::{AccessRequest, ModuleAccessView};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct AccessPath {
    /// Namespace the deployment runs in.
    namespace: String,
    /// The python-module deployment.
    deployment: String,
}

/// Direct access to a python-module deployment: its ready module servers and their call token
/// (`call` on `modules`, as for ModuleProxy). Ask again after `ttl_seconds`.
#[utoipa::path(get, path = "/module/access/{namespace}/{deployment}", operation_id = "getModuleAccess",
    tag = TAG_MODULES, params(AccessPath),
    responses((status = OK, description = "The ready module servers and their call token", body = ModuleAccessView),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = PRECONDITION_FAILED, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
pub(super) async fn module_access(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AccessPath>,
) -> Result<Json<ModuleAccessView>, ApiError> {
    let request = AccessRequest { namespace: Some(path.namespace), deployment: path.deployment };
    Ok(Json(service.module_access(&caller, &request).await?))
}
