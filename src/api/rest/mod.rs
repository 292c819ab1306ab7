//! The REST gateway: the original's paths (`POST /deployment`, `POST /deployment/dry_run`,
//! `GET /deployment`, `GET /healthz`) plus per-deployment GET/DELETE, its `/secrets` and `/logs`,
//! `GET /templates`, `POST /module/ensure` (deploy on first import), `GET /module/access/…`
//! (direct access to module servers) and `GET /openapi.json`. Each handler turns JSON into a request, calls the
//! service layer as the request's [`Caller`] and returns its view; errors go through the one
//! table in [`super::status`].
//!
//! Routes and the OpenAPI document come from the same registration (`utoipa_axum::routes!`),
//! so the document cannot drift from the routes.

mod access;
mod body;
mod checks;
mod logs;
mod revisions;
mod stream;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{self, TAG_DEPLOYMENTS, TAG_MODULES, TAG_SERVER, TAG_TEMPLATES};
use super::status::{ApiError, ErrorBody, RequestError};
pub use body::MAX_BODY;
use body::{
    DeployQuery, DeploymentBody, DeploymentPath, EnsureBody, JsonBody, ListQuery, PathParams, QueryParams,
    UndeployQuery,
};
use stream::{StreamLine, NDJSON};

use crate::auth::Caller;
use crate::service::views::{
    DeploymentSecretsView, DeploymentTree, DeploymentView, DryRunView, EnsureView, Outcome, Run, TemplateView,
};
use crate::service::{Service, UndeployOptions};

type AppState = Arc<Service>;

/// The REST routes and the document describing them.
fn routes() -> (Router<AppState>, OpenApi) {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(templates))
        .routes(routes!(openapi_json))
        .routes(routes!(list, deploy))
        .routes(routes!(dry_run))
        .routes(routes!(get_one, undeploy))
        .routes(routes!(secrets))
        .routes(routes!(ensure_module))
        .routes(routes!(access::module_access))
        .routes(routes!(revisions::history))
        .routes(routes!(revisions::rollback))
        .routes(routes!(revisions::diff))
        .routes(routes!(logs::logs))
        .split_for_parts()
}

/// The REST routes; bodies must be JSON ([`checks::require_json`]) and every error the
/// framework answers itself gets the JSON error body ([`checks::json_errors`]).
pub fn router(service: Arc<Service>) -> Router {
    let (router, doc) = routes();
    router
        .route_layer(axum::middleware::from_fn(checks::require_json))
        .merge(super::docs::router())
        .layer(axum::middleware::from_fn(checks::json_errors))
        .layer(Extension(Arc::new(doc)))
        .with_state(service)
}

/// JSON 404 for paths no route knows.
pub async fn not_found(req: Request) -> ApiError {
    RequestError::NoRoute { method: req.method().clone(), path: req.uri().path().to_string() }.into()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = TAG_SERVER, security(()),
    responses((status = OK, description = "The server is up", body = String, content_type = "application/json",
        example = json!("OK"))))]
async fn healthz() -> Json<&'static str> {
    Json("OK")
}

/// Readiness: startup (the `MODULES` replay) has finished and the backend answers. The gRPC
/// health service and `jac-orc probe` report the same.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = TAG_SERVER, security(()),
    responses((status = OK, description = "Ready for traffic", body = String, content_type = "application/json",
        example = json!("OK")),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
async fn readyz(State(service): State<AppState>) -> Result<Json<&'static str>, ApiError> {
    service.check_ready().await?;
    Ok(Json("OK"))
}

/// Prometheus metrics (text format 0.0.4). Open to loopback peers; elsewhere it needs a token
/// unless the server runs with `--metrics-auth false`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = TAG_SERVER,
    responses((status = OK, description = "Every `jac_orc_` metric", body = String,
        content_type = "text/plain; version=0.0.4"),
              (status = UNAUTHORIZED, response = inline(ErrorBody))))]
async fn metrics() -> Response {
    metrics_response()
}

/// `/metrics` on the main port and on `--metrics-listen`.
pub fn metrics_response() -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::global().render()).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = TAG_SERVER, security(()),
    responses((status = OK, description = "The OpenAPI 3.1 document of these routes", body = Object)))]
async fn openapi_json(Extension(doc): Extension<Arc<OpenApi>>) -> Json<OpenApi> {
    Json(OpenApi::clone(&doc))
}

/// Template modules and their versions.
#[utoipa::path(get, path = "/templates", operation_id = "listTemplates", tag = TAG_TEMPLATES,
    responses((status = OK, description = "Every module with its versions", body = Vec<TemplateView>),
              (status = UNAUTHORIZED, response = inline(ErrorBody)), (status = FORBIDDEN, response = inline(ErrorBody)),
              (status = INTERNAL_SERVER_ERROR, response = inline(ErrorBody))))]
async fn templates(State(service): State<AppState>, caller: Caller) -> Result<Json<Vec<TemplateView>>, ApiError> {
    Ok(Json(service.templates(&caller).await?))
}

/// Renders a template version with the given values, touching nothing.
#[utoipa::path(post, path = "/deployment/dry_run", operation_id = "dryRun", tag = TAG_DEPLOYMENTS,
    request_body = DeploymentBody,
    responses((status = OK, description = "Every placeholder and rendered file", body = DryRunView),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = PAYLOAD_TOO_LARGE, response = inline(ErrorBody)), (status = UNSUPPORTED_MEDIA_TYPE, response = inline(ErrorBody)),
              (status = UNPROCESSABLE_ENTITY, response = inline(ErrorBody))))]
async fn dry_run(
    State(service): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<DeploymentBody>,
) -> Result<Json<DryRunView>, ApiError> {
    Ok(Json(service.dry_run(&caller, &body.request()?).await?))
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON))
}

/// Deploys a template version. With `Accept: application/x-ndjson` the response streams one
/// line per event as it happens, then a summary (or an error) line.
#[utoipa::path(post, path = "/deployment", operation_id = "deploy", tag = TAG_DEPLOYMENTS,
    params(DeployQuery), request_body = DeploymentBody,
    responses((status = OK, description = "Applied (and ready, with wait)", content(
                  (Outcome = "application/json"), (StreamLine = "application/x-ndjson"))),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = CONFLICT, response = inline(ErrorBody)), (status = PRECONDITION_FAILED, response = inline(ErrorBody)),
              (status = PAYLOAD_TOO_LARGE, response = inline(ErrorBody)), (status = UNSUPPORTED_MEDIA_TYPE, response = inline(ErrorBody)),
              (status = UNPROCESSABLE_ENTITY, response = inline(ErrorBody)), (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody)), (status = GATEWAY_TIMEOUT, response = inline(ErrorBody))))]
async fn deploy(
    State(service): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<DeployQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<DeploymentBody>,
) -> Result<Response, ApiError> {
    // Bad input is answered here with its own status, before anything is applied.
    let mut req = body.request()?;
    if body.reuse_values() {
        req = service.with_previous_values(&req).await?;
    }
    let stream = service.deploy(&caller, &req, body.options(&q)).await?;
    if wants_ndjson(&headers) {
        return Ok(stream::ndjson(stream));
    }
    Ok(stream::collect(stream, Run::Deploy).await?.into_response())
}

/// Deployments, keyed namespace → module → name.
#[utoipa::path(get, path = "/deployment", operation_id = "listDeployments", tag = TAG_DEPLOYMENTS,
    params(ListQuery),
    responses((status = OK, description = "Deployments", body = DeploymentTree),
              (status = UNAUTHORIZED, response = inline(ErrorBody)), (status = FORBIDDEN, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
async fn list(
    State(service): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<DeploymentTree>, ApiError> {
    let on_demand = q.on_demand.unwrap_or(false);
    let views = service.list(&caller, q.namespace.as_deref(), q.module.as_deref(), on_demand).await?;
    Ok(Json(views.into_iter().collect()))
}

/// One deployment.
#[utoipa::path(get, path = "/deployment/{namespace}/{module}/{name}", operation_id = "getDeployment",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath),
    responses((status = OK, description = "The deployment", body = DeploymentView),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody))))]
async fn get_one(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(service.get(&caller, &path.id()?).await?))
}

/// The values of a deployment's secret placeholders (`get` on `jacdeployments/secrets`).
#[utoipa::path(get, path = "/deployment/{namespace}/{module}/{name}/secrets", operation_id = "getDeploymentSecrets",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath),
    responses((status = OK, description = "Secret placeholder values", body = DeploymentSecretsView),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody))))]
async fn secrets(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
) -> Result<Json<DeploymentSecretsView>, ApiError> {
    Ok(Json(service.secrets(&caller, &path.id()?).await?))
}

/// Removes everything a deployment created (NDJSON streaming as for deploy).
#[utoipa::path(delete, path = "/deployment/{namespace}/{module}/{name}", operation_id = "undeploy",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath, UndeployQuery),
    responses((status = OK, description = "Removed", content(
                  (Outcome = "application/json"), (StreamLine = "application/x-ndjson"))),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = PRECONDITION_FAILED, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
async fn undeploy(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
    QueryParams(q): QueryParams<UndeployQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let opts = UndeployOptions { force_referenced: q.force_referenced.unwrap_or(false) };
    let stream = service.undeploy_with(&caller, &path.id()?, opts).await?;
    if wants_ndjson(&headers) {
        return Ok(stream::ndjson(stream));
    }
    Ok(stream::collect(stream, Run::Undeploy).await?.into_response())
}

/// The python-module deployment serving a Python module, deployed and awaited first when none
/// does (`get` on `jacdeployments` when found, `create` when it deploys). With `Accept:
/// application/x-ndjson` the response streams the deploy's object events as they happen, then
/// the answer (`{"ensured": …}`) or an error line.
#[utoipa::path(post, path = "/module/ensure", operation_id = "ensureModule", tag = TAG_MODULES,
    request_body = EnsureBody,
    responses((status = OK, description = "The deployment serving the module (ready, when this call deployed it)", content(
                  (EnsureView = "application/json"), (stream::EnsureLine = "application/x-ndjson"))),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = CONFLICT, response = inline(ErrorBody)),
              (status = PRECONDITION_FAILED, response = inline(ErrorBody)), (status = PAYLOAD_TOO_LARGE, response = inline(ErrorBody)),
              (status = UNSUPPORTED_MEDIA_TYPE, response = inline(ErrorBody)), (status = UNPROCESSABLE_ENTITY, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody)), (status = GATEWAY_TIMEOUT, response = inline(ErrorBody))))]
async fn ensure_module(
    State(service): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EnsureBody>,
) -> Result<Response, ApiError> {
    let req = body.request()?;
    if wants_ndjson(&headers) {
        return stream::ensure_ndjson(service.ensure_module_events(caller, req)).await;
    }
    Ok(Json(service.ensure_module(&caller, &req).await?).into_response())
}
