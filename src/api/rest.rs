//! The REST gateway: the original's paths (`POST /deployment`, `POST /deployment/dry_run`,
//! `GET /deployment`, `GET /healthz`) plus per-deployment GET/DELETE, `GET /templates` and
//! `GET /openapi.json`. Each handler converts JSON and calls the service layer; errors go
//! through the one table in [`super::status`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::status::ApiError;
use super::{spawn_deploy, spawn_undeploy, Streamed};
use crate::backend::{Action, ApplyOptions, ObjectEvent};
use crate::plan::Section;
use crate::service::{DeploymentRequest, DeploymentView, Service, DEFAULT_WAIT};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;
const NDJSON: &str = "application/x-ndjson";

type AppState = Arc<Service>;

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/templates", get(templates))
        .route("/openapi.json", get(openapi))
        .route("/deployment", get(list).post(deploy))
        .route("/deployment/dry_run", post(dry_run))
        .route("/deployment/{namespace}/{module}/{name}", get(get_one).delete(undeploy))
        .with_state(service)
}

/// JSON body extractor with a size limit and JSON error responses (axum's own rejections are
/// plain text).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!("request body is larger than {MAX_BODY} bytes"),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_BODY",
                    format!("cannot read request body: {e}"),
                ))
            }
        };
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let detail = format!("invalid JSON body: {e}");
            let field = field_in(&e.to_string());
            let err = ApiError::new(StatusCode::BAD_REQUEST, "BAD_JSON", detail);
            match field {
                Some(f) => err.with_field(f),
                None => err,
            }
        })
    }
}

/// The field a serde error is about (`missing field `module``, `unknown field `x``).
fn field_in(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    (msg.contains("field")).then(|| msg[start..end].to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentBody {
    module: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    config: Map<String, Value>,
    #[serde(default)]
    wait: Option<bool>,
    #[serde(default)]
    wait_timeout_seconds: Option<u64>,
    #[serde(default)]
    force_conflicts: Option<bool>,
}

impl DeploymentBody {
    fn request(&self) -> DeploymentRequest {
        DeploymentRequest { module: self.module.clone(), version: self.version.clone(), config: self.config.clone() }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeployQuery {
    wait: Option<bool>,
    timeout: Option<u64>,
    force: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    namespace: Option<String>,
    module: Option<String>,
}

async fn healthz() -> Json<&'static str> {
    Json("OK")
}

/// JSON 404 for paths no route knows.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NO_ROUTE", format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

async fn templates(State(service): State<AppState>) -> Result<Json<Value>, ApiError> {
    let modules = service.templates()?;
    let out: Vec<Value> = modules
        .iter()
        .map(|m| {
            json!({
                "module": m.module,
                "versions": m.versions.iter().map(|v| json!({
                    "version": v.version,
                    "format": v.format.as_str(),
                    "source": v.source,
                    "description": v.description,
                    "has_dependencies": v.has_dependencies(),
                    "local_recipe": v.has_local_recipe(),
                    "placeholders": v.specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

async fn dry_run(
    State(service): State<AppState>,
    JsonBody(body): JsonBody<DeploymentBody>,
) -> Result<Json<Value>, ApiError> {
    let dry = service.dry_run(&body.request())?;
    let files = |fs: &[crate::catalog::RenderedFile]| -> Value {
        Value::Object(fs.iter().map(|f| (f.name.clone(), Value::String(f.text.clone()))).collect())
    };
    let placeholders: Map<String, Value> =
        dry.placeholders.iter().map(|(n, p)| (n.clone(), serde_json::to_value(p).unwrap_or(Value::Null))).collect();
    Ok(Json(json!({
        "placeholders": placeholders,
        "dependencies": dry.dependencies.as_deref().map(files),
        "modules": files(&dry.modules),
        "module": dry.module,
        "version": dry.version,
        "namespace": dry.id.namespace,
        "name": dry.id.name,
        "objects": dry.objects,
    })))
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON))
}

async fn deploy(
    State(service): State<AppState>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<DeploymentBody>,
) -> Result<Response, ApiError> {
    let wait = q.wait.or(body.wait).unwrap_or(false);
    let timeout = q.timeout.or(body.wait_timeout_seconds).map(Duration::from_secs).unwrap_or(DEFAULT_WAIT);
    let opts = ApplyOptions {
        wait: wait.then_some(timeout),
        force_conflicts: q.force.or(body.force_conflicts).unwrap_or(false),
    };
    // Bad input is answered here with its own status, before anything is applied.
    let prepared = service.prepare(&body.request()).await?;
    let rx = spawn_deploy(service.clone(), prepared, opts);
    if wants_ndjson(&headers) {
        return Ok(ndjson(
            rx,
            |d| json!({"summary": {"deployment": DeploymentView::from(&d.record), "elapsed_ms": d.elapsed.as_millis() as u64}}),
        ));
    }
    aggregated(rx, "deploy", |d, body| {
        let view = DeploymentView::from(&d.record);
        body.insert("endpoints".into(), json!(view.endpoints));
        body.insert("deployment".into(), json!(view));
    })
    .await
}

/// Collects a run into the seed's JSON shape: 200 with `results`/`errors` per section plus what
/// `finish` adds, or the error's status with the same sections (what was applied before it).
async fn aggregated<T>(
    rx: mpsc::Receiver<Streamed<T>>,
    what: &str,
    finish: impl FnOnce(T, &mut Map<String, Value>),
) -> Result<Response, ApiError> {
    let (mut agg, done) = collect(rx).await;
    match done {
        Some(Ok(value)) => {
            let mut body = agg.body();
            finish(value, &mut body);
            Ok(Json(Value::Object(body)).into_response())
        }
        Some(Err(e)) => {
            let err = ApiError::from(e);
            agg.fail(&err.detail);
            let extra = agg.body();
            Err(err.with_extra(extra))
        }
        None => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("{what} ended without a result")))
        }
    }
}

async fn undeploy(
    State(service): State<AppState>,
    Path((namespace, module, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = Service::parse_id(&namespace, &module, &name)?;
    let view = DeploymentView::from(&service.require(&id).await?);
    let rx = spawn_undeploy(service.clone(), id);
    if wants_ndjson(&headers) {
        return Ok(ndjson(rx, move |()| json!({"summary": {"deployment": view}})));
    }
    aggregated(rx, "undeploy", move |(), body| {
        body.insert("deployment".into(), json!(view));
    })
    .await
}

async fn get_one(
    State(service): State<AppState>,
    Path((namespace, module, name)): Path<(String, String, String)>,
) -> Result<Json<DeploymentView>, ApiError> {
    let id = Service::parse_id(&namespace, &module, &name)?;
    Ok(Json(service.get(&id).await?))
}

/// The original's shape: namespace -> module -> name -> deployment.
async fn list(State(service): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let views = service.list(q.namespace.as_deref(), q.module.as_deref()).await?;
    let mut out = Map::new();
    for v in views {
        let ns = out.entry(v.namespace.clone()).or_insert_with(|| json!({}));
        let module = ns.as_object_mut().expect("object").entry(v.module.clone()).or_insert_with(|| json!({}));
        module.as_object_mut().expect("object").insert(v.name.clone(), json!(v));
    }
    Ok(Json(Value::Object(out)))
}

/// kubectl-style `results`/`errors`, overall and per section.
#[derive(Debug, Default)]
struct Aggregate {
    results: Vec<String>,
    errors: Vec<String>,
    dependencies: (Vec<String>, Vec<String>),
    modules: (Vec<String>, Vec<String>),
}

impl Aggregate {
    fn add(&mut self, ev: &ObjectEvent) {
        let section = match ev.object.section {
            Section::Dependencies => &mut self.dependencies,
            Section::Modules => &mut self.modules,
        };
        match ev.action {
            Action::Waiting => {}
            Action::Failed => {
                let text = format!("{}: {}", ev.object.kubectl_name(), ev.message);
                section.1.push(text.clone());
                self.errors.push(text);
            }
            _ => {
                section.0.push(ev.line.clone());
                self.results.push(ev.line.clone());
            }
        }
    }

    fn fail(&mut self, detail: &str) {
        if !self.errors.iter().any(|e| e.ends_with(detail)) {
            self.errors.push(detail.to_string());
            self.modules.1.push(detail.to_string());
        }
    }

    fn body(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("results".into(), json!(self.results));
        m.insert("errors".into(), json!(self.errors));
        m.insert("dependencies".into(), json!({"results": self.dependencies.0, "errors": self.dependencies.1}));
        m.insert("modules".into(), json!({"results": self.modules.0, "errors": self.modules.1}));
        m
    }
}

async fn collect<T>(mut rx: mpsc::Receiver<Streamed<T>>) -> (Aggregate, Option<crate::service::Result<T>>) {
    let mut agg = Aggregate::default();
    let mut done = None;
    while let Some(item) = rx.recv().await {
        match item {
            Streamed::Event(ev) => agg.add(&ev),
            Streamed::Done(r) => done = Some(r),
        }
    }
    (agg, done)
}

/// Streams `{"event": …}` lines, then `{"summary": …}` or `{"error": …}`.
fn ndjson<T: Send + 'static>(
    mut rx: mpsc::Receiver<Streamed<T>>,
    summary: impl FnOnce(T) -> Value + Send + 'static,
) -> Response {
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(128);
    tokio::spawn(async move {
        let mut summary = Some(summary);
        while let Some(item) = rx.recv().await {
            let line = match item {
                Streamed::Event(ev) => json!({"event": ev}),
                Streamed::Done(Ok(v)) => match summary.take() {
                    Some(f) => f(v),
                    None => continue,
                },
                Streamed::Done(Err(e)) => {
                    let err = ApiError::from(e);
                    json!({"error": err.body(), "status": err.status.as_u16()})
                }
            };
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, NDJSON)
        .body(Body::from_stream(ReceiverStream::new(out)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_name_their_field() {
        assert_eq!(field_in("missing field `module` at line 1 column 2").as_deref(), Some("module"));
        assert_eq!(field_in("unknown field `confg`, expected one of").as_deref(), Some("confg"));
        assert_eq!(field_in("expected value at line 1 column 1"), None);
    }
}
