//! What REST requests carry: who sends them ([`Caller`], as the auth layer found), the JSON body
//! extractor (size limit, JSON errors naming the offending field by its serde path) and the
//! bodies and query strings of the routes.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::api::status::{ApiError, RequestError};
use crate::auth::Caller;
use crate::backend::ApplyOptions;
use crate::identity::DeploymentId;
use crate::service::{self, DeploymentRequest, DEFAULT_WAIT};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// The request's [`Caller`]; without an identity it is [`Caller::Anonymous`], which the service
/// layer refuses.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller::from_extensions(&parts.extensions))
    }
}

/// JSON body extractor with a size limit and JSON error responses (axum's own rejections are
/// plain text).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(RequestError::BodyTooLarge { limit: MAX_BODY }.into());
            }
            Err(e) => return Err(RequestError::BodyUnreadable(e).into()),
        };
        let json = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(json).map(JsonBody).map_err(|e| RequestError::bad_json(e).into())
    }
}

/// Query string extractor whose rejection is a JSON [`RequestError::BadQuery`].
#[derive(Debug)]
pub(super) struct QueryParams<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(q)) => Ok(QueryParams(q)),
            Err(e) => Err(RequestError::BadQuery { reason: e.body_text() }.into()),
        }
    }
}

/// Path parameters extractor whose rejection is a JSON [`RequestError::BadPath`].
#[derive(Debug)]
pub(super) struct PathParams<T>(pub(super) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(PathParams(p)),
            Err(e) => Err(RequestError::BadPath { reason: e.body_text() }.into()),
        }
    }
}

/// What to render or deploy (`POST /deployment`, `POST /deployment/dry_run`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeploymentBody {
    /// Template module, e.g. `redis`. Characters allowed: `[a-z0-9._-]`.
    #[schema(required = true, value_type = String, pattern = "^[a-z0-9._-]+$")]
    #[serde(default)]
    module: Option<String>,
    /// Template version folder (default `latest`).
    #[serde(default)]
    version: Option<String>,
    /// Placeholder values by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    config: Map<String, Value>,
    /// Wait until every workload is ready (deploy only; also `?wait=`).
    #[serde(default)]
    wait: Option<bool>,
    /// Readiness timeout in seconds (default 300; also `?timeout=`).
    #[serde(default)]
    wait_timeout_seconds: Option<u64>,
    /// Take over fields owned by other field managers (also `?force=`).
    #[serde(default)]
    force_conflicts: Option<bool>,
    /// Kubernetes: apply again what is changed or deleted behind the orchestrator's back
    /// (default: the deployment's setting, true for a new one).
    #[serde(default)]
    self_heal: Option<bool>,
    /// Report what the deploy would change and change nothing (deploy only; also `?dry_run=`).
    #[serde(default)]
    dry_run: Option<bool>,
    /// Placeholders not in `config` take the deployment's current values instead of their
    /// defaults (deploy only; default false, the original's semantics).
    #[serde(default)]
    reuse_values: Option<bool>,
}

impl DeploymentBody {
    pub(super) fn request(&self) -> service::Result<DeploymentRequest> {
        let module = self.module.clone().ok_or_else(|| service::Error::Invalid {
            field: "module".into(),
            reason: "missing: name the template module, e.g. \"redis\"".into(),
        })?;
        Ok(DeploymentRequest { module, version: self.version.clone(), config: self.config.clone() })
    }

    pub(super) fn reuse_values(&self) -> bool {
        self.reuse_values.unwrap_or(false)
    }

    /// Apply options from the query string, then the body.
    pub(super) fn options(&self, q: &DeployQuery) -> ApplyOptions {
        let wait = q.wait.or(self.wait).unwrap_or(false);
        let timeout = q.timeout.or(self.wait_timeout_seconds).map(Duration::from_secs).unwrap_or(DEFAULT_WAIT);
        ApplyOptions {
            wait: wait.then_some(timeout),
            force_conflicts: q.force.or(self.force_conflicts).unwrap_or(false),
            self_heal: self.self_heal,
            dry_run: q.dry_run.or(self.dry_run).unwrap_or(false),
        }
    }
}

/// The module to deploy on first import (`POST /module/ensure`); absent settings take the
/// python-module template's defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EnsureBody {
    /// Python import name, e.g. `numpy` or `sklearn.linear_model`.
    #[schema(required = true, value_type = String)]
    #[serde(default)]
    module: Option<String>,
    /// PEP 508 requirements installed before the module server starts.
    #[serde(default)]
    packages: Vec<String>,
    /// CPU of each module server, a Kubernetes quantity (`"250m"`, `0.5`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    cpu: Option<Value>,
    /// CPU limit of each module server when it may burst above `cpu`; absent: the limit is `cpu`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    cpu_limit: Option<Value>,
    /// Memory of each module server (`"256Mi"`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    memory: Option<Value>,
    /// Module servers (default 1).
    #[serde(default)]
    replicas: Option<u32>,
    /// Seconds without a call before it may be scaled to zero: a number, or `"90s"`, `"10m"`,
    /// `"1h"`; absent means never.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    idle_timeout: Option<Value>,
    /// Target namespace (default: the orchestrator's).
    #[serde(default)]
    namespace: Option<String>,
    /// Readiness timeout in seconds when it deploys (default 300).
    #[serde(default)]
    wait_timeout_seconds: Option<u64>,
}

impl EnsureBody {
    pub(super) fn request(self) -> service::Result<service::EnsureRequest> {
        let module = self.module.ok_or_else(|| service::Error::Invalid {
            field: "module".into(),
            reason: "missing: name the Python module, e.g. \"numpy\"".into(),
        })?;
        Ok(service::EnsureRequest {
            module,
            packages: self.packages,
            cpu: self.cpu,
            cpu_limit: self.cpu_limit,
            memory: self.memory,
            replicas: self.replicas,
            idle_timeout: self.idle_timeout,
            namespace: self.namespace,
            wait: self.wait_timeout_seconds.map(Duration::from_secs),
        })
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeployQuery {
    /// Wait until every workload is ready.
    wait: Option<bool>,
    /// Readiness timeout in seconds (default 300).
    timeout: Option<u64>,
    /// Take over fields owned by other field managers.
    force: Option<bool>,
    /// Report what the deploy would change (server-side dry run on Kubernetes) and change nothing.
    dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UndeployQuery {
    /// Undeploy even while other deployments reference this one's outputs (412 otherwise).
    pub(super) force_referenced: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only deployments in this namespace.
    pub(super) namespace: Option<String>,
    /// Only deployments of this template module.
    pub(super) module: Option<String>,
    /// Only deployments made on first import (`POST /module/ensure`).
    pub(super) on_demand: Option<bool>,
}

/// The path of one deployment.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DeploymentPath {
    /// Namespace the deployment runs in.
    namespace: String,
    /// Template module it was deployed from.
    module: String,
    /// Deployment name.
    name: String,
}

impl DeploymentPath {
    pub(super) fn id(self) -> service::Result<DeploymentId> {
        Ok(DeploymentId::new(self.namespace, self.module, self.name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(json: &str) -> RequestError {
        let de = &mut serde_json::Deserializer::from_str(json);
        RequestError::bad_json(serde_path_to_error::deserialize::<_, DeploymentBody>(de).unwrap_err())
    }

    fn field(e: &RequestError) -> Option<&str> {
        match e {
            RequestError::BadJson { field, .. } => field.as_deref(),
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_serde_path_of_the_offending_value() {
        assert_eq!(field(&bad(r#"{"module": "redis", "confg": {}}"#)), Some("confg"));
        assert_eq!(field(&bad(r#"{"module": 3}"#)), Some("module"));
        assert_eq!(field(&bad(r#"{"module": "redis", "wait": "soon"}"#)), Some("wait"));
        assert_eq!(field(&bad(r#"{"module": "redis", "config": []}"#)), Some("config"));
    }

    #[test]
    fn syntax_errors_name_no_field() {
        assert_eq!(field(&bad(r#"{"module": "#)), None);
        assert_eq!(field(&bad("not json")), None);
    }

    #[test]
    fn dry_run_comes_from_the_query_then_the_body_and_defaults_to_false() {
        let body: DeploymentBody = serde_json::from_str(r#"{"module": "redis", "dry_run": true}"#).unwrap();
        assert!(body.options(&DeployQuery::default()).dry_run);
        assert!(!body.options(&DeployQuery { dry_run: Some(false), ..Default::default() }).dry_run);
        let body: DeploymentBody = serde_json::from_str(r#"{"module": "redis"}"#).unwrap();
        assert!(!body.options(&DeployQuery::default()).dry_run);
        assert!(body.options(&DeployQuery { dry_run: Some(true), ..Default::default() }).dry_run);
    }

    #[test]
    fn a_body_without_module_is_refused_naming_module() {
        let body: DeploymentBody = serde_json::from_str(r#"{"config": {}}"#).unwrap();
        assert_eq!(body.request().unwrap_err().field().as_deref(), Some("module"));
    }
}
