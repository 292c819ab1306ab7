//! `GET /deployment/{namespace}/{module}/{name}/history`, `POST …/rollback` and `POST …/diff`:
//! the same service calls as the `History`, `Rollback` and `Diff` RPCs.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::{DeploymentPath, JsonBody, PathParams};
use super::{stream, wants_ndjson, AppState};
use crate::api::openapi::TAG_DEPLOYMENTS;
use crate::api::status::{ApiError, ErrorBody};
use crate::auth::Caller;
use crate::backend::{ApplyOptions, Revision};
use crate::service::views::{Outcome, Run};
use crate::service::{self, DeploymentRequest, DiffView, DEFAULT_WAIT};

/// Which revision to deploy again (`POST …/rollback`); an empty body rolls back to the previous.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    /// The revision to deploy again (default: the one before the current).
    #[serde(default)]
    revision: Option<u64>,
    /// Wait until every workload is ready.
    #[serde(default)]
    wait: Option<bool>,
    /// Readiness timeout in seconds (default 300).
    #[serde(default)]
    wait_timeout_seconds: Option<u64>,
}

/// What a deploy would deploy (`POST …/diff`): values as for `POST /deployment`; the path names
/// the module, the namespace and the name.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DiffBody {
    /// Template version folder (default `latest`).
    #[serde(default)]
    version: Option<String>,
    /// Placeholder values by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    config: Map<String, Value>,
    /// Placeholders not in `config` take the deployment's current values (default false).
    #[serde(default)]
    reuse_values: Option<bool>,
}

/// A deployment's revisions, oldest first.
#[utoipa::path(get, path = "/deployment/{namespace}/{module}/{name}/history", operation_id = "deploymentHistory",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath),
    responses((status = OK, description = "Every kept revision, oldest first", body = Vec<Revision>),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody))))]
pub(super) async fn history(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    Ok(Json(service.history(&caller, &path.id()?).await?))
}

/// Deploys an earlier revision again as a new one (NDJSON streaming as for deploy).
#[utoipa::path(post, path = "/deployment/{namespace}/{module}/{name}/rollback", operation_id = "rollback",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath), request_body = RollbackBody,
    responses((status = OK, description = "Rolled back", content(
                  (Outcome = "application/json"), (stream::StreamLine = "application/x-ndjson"))),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = PRECONDITION_FAILED, response = inline(ErrorBody)), (status = UNSUPPORTED_MEDIA_TYPE, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
pub(super) async fn rollback(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, ApiError> {
    let timeout = body.wait_timeout_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_WAIT);
    let opts = ApplyOptions { wait: body.wait.unwrap_or(false).then_some(timeout), ..ApplyOptions::default() };
    let stream = service.rollback(&caller, &path.id()?, body.revision, opts).await?;
    if wants_ndjson(&headers) {
        return Ok(stream::ndjson(stream));
    }
    Ok(stream::collect(stream, Run::Deploy).await?.into_response())
}

/// What deploying these values would change against the live objects, changing nothing.
#[utoipa::path(post, path = "/deployment/{namespace}/{module}/{name}/diff", operation_id = "diff",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath), request_body = DiffBody,
    responses((status = OK, description = "Each object as a deploy would report it", body = DiffView),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = UNSUPPORTED_MEDIA_TYPE, response = inline(ErrorBody)), (status = UNPROCESSABLE_ENTITY, response = inline(ErrorBody))))]
pub(super) async fn diff(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
    JsonBody(body): JsonBody<DiffBody>,
) -> Result<Json<DiffView>, ApiError> {
    let id = path.id()?;
    let mut config = body.config;
    for (key, value) in [("name", &id.name), ("namespace", &id.namespace)] {
        match config.get(key) {
            None => {
                config.insert(key.into(), Value::String(value.clone()));
            }
            Some(Value::String(given)) if given == value => {}
            Some(other) => {
                return Err(service::Error::Invalid {
                    field: format!("config.{key}"),
                    reason: format!("{other} differs from the path's {key} {value:?}"),
                }
                .into())
            }
        }
    }
    let req = DeploymentRequest { module: id.module.clone(), version: body.version, config };
    Ok(Json(service.diff(&caller, &req, body.reuse_values.unwrap_or(false)).await?))
}
