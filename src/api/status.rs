//! The one error table: every error an edge can answer with gets one gRPC code, one HTTP
//! status and a stable reason, here and nowhere else (STYLE.md "Error mapping"). Service errors
//! go to both edges; [`RequestError`]s are what only the REST edge can meet (its body, its paths).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use utoipa::{ToResponse, ToSchema};

use crate::backend::kube::KubeError;
use crate::backend::{self, local};
use crate::catalog;
use crate::identity;
use crate::proxy;
use crate::service::views::Applied;
use crate::service::Error;

#[derive(Debug, Clone, Copy)]
struct Class {
    code: Code,
    http: StatusCode,
    reason: &'static str,
}

const fn class(code: Code, http: StatusCode, reason: &'static str) -> Class {
    Class { code, http, reason }
}

fn classify(e: &Error) -> Class {
    use StatusCode as H;
    match e {
        Error::Catalog(c) => match c {
            catalog::Error::InvalidName { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_NAME"),
            catalog::Error::ModuleNotFound { .. } => class(Code::NotFound, H::NOT_FOUND, "TEMPLATE_NOT_FOUND"),
            catalog::Error::VersionNotFound { .. } => class(Code::NotFound, H::NOT_FOUND, "VERSION_NOT_FOUND"),
            catalog::Error::UnknownPlaceholder { .. } => {
                class(Code::InvalidArgument, H::BAD_REQUEST, "UNKNOWN_PLACEHOLDER")
            }
            catalog::Error::WrongType { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "WRONG_TYPE"),
            catalog::Error::InvalidValue { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_VALUE"),
            catalog::Error::BadTemplate { .. } | catalog::Error::Render { .. } | catalog::Error::BadYaml { .. } => {
                class(Code::FailedPrecondition, H::UNPROCESSABLE_ENTITY, "TEMPLATE_INVALID")
            }
            catalog::Error::Io(_) => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
        },
        Error::Backend(b) => classify_backend(b),
        Error::Identity(i) => match i {
            identity::Error::InvalidLabel { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_ARGUMENT"),
            identity::Error::InvalidTemplateName { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_NAME"),
            identity::Error::RestrictedNamespace { .. } => {
                class(Code::FailedPrecondition, H::BAD_REQUEST, "RESTRICTED_NAMESPACE")
            }
        },
        Error::Invalid { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_ARGUMENT"),
        Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
        Error::RunAborted { .. } => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Error::Proxy(p) => match p {
            proxy::Error::Malformed(_) | proxy::Error::NoDeployment => {
                class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_PROXY_REQUEST")
            }
            proxy::Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
            proxy::Error::NoReadyEndpoint { .. } | proxy::Error::Unreachable { .. } => {
                class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "MODULE_SERVER_UNAVAILABLE")
            }
            proxy::Error::DeadlineExceeded { .. } => {
                class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED")
            }
            proxy::Error::BadEndpoint { .. } => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
            proxy::Error::Backend(b) => classify_backend(b),
            proxy::Error::Upstream(s) => class(s.code(), http_of(s.code()), "MODULE_SERVER_ERROR"),
        },
    }
}

/// What only the REST edge meets: its request bodies and its paths.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    BodyUnreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body is not JSON of the expected shape; `field` is the path to the offending value.
    #[error("invalid JSON body: {}", .source.inner())]
    BadJson { field: Option<String>, source: serde_path_to_error::Error<serde_json::Error> },
    #[error("no route for {method} {path}")]
    NoRoute { method: Method, path: String },
}

impl RequestError {
    /// A body that does not parse, with the path of the value serde stopped at when the body
    /// is JSON but of the wrong shape (`config`, `wait`, `confg` for an unknown field).
    pub fn bad_json(source: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = source.path().to_string();
        let field = (source.inner().classify() == serde_json::error::Category::Data && path != ".").then_some(path);
        RequestError::BadJson { field, source }
    }

    fn class(&self) -> Class {
        use StatusCode as H;
        match self {
            RequestError::BodyTooLarge { .. } => class(Code::ResourceExhausted, H::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE"),
            RequestError::BodyUnreadable(_) => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_BODY"),
            RequestError::BadJson { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_JSON"),
            RequestError::NoRoute { .. } => class(Code::Unimplemented, H::NOT_FOUND, "NO_ROUTE"),
        }
    }
}

fn classify_backend(b: &backend::Error) -> Class {
    use StatusCode as H;
    match b {
        backend::Error::Local(l) => classify_local(l),
        backend::Error::Kube(k) => classify_kube(k),
        backend::Error::Rejected { .. } => class(Code::InvalidArgument, H::UNPROCESSABLE_ENTITY, "REJECTED"),
        backend::Error::Restricted { .. } => class(Code::FailedPrecondition, H::BAD_REQUEST, "RESTRICTED_NAMESPACE"),
        backend::Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
        backend::Error::WorkloadFailed { .. } => {
            class(Code::FailedPrecondition, H::UNPROCESSABLE_ENTITY, "WORKLOAD_FAILED")
        }
        backend::Error::Timeout { .. } => class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "READINESS_TIMEOUT"),
    }
}

fn classify_kube(k: &KubeError) -> Class {
    use KubeError as K;
    use StatusCode as H;
    match k {
        K::Conflict { .. } => class(Code::FailedPrecondition, H::CONFLICT, "FIELD_MANAGER_CONFLICT"),
        K::Forbidden { .. } => class(Code::PermissionDenied, H::FORBIDDEN, "FORBIDDEN"),
        K::Server { .. } | K::Unreachable { .. } | K::Watch { .. } | K::Config { .. } | K::ProbeTimeout(_) => {
            class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "UNAVAILABLE")
        }
        K::BadRecord { .. } | K::RecordWithoutKey { .. } | K::Encode { .. } => {
            class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL")
        }
        K::LeaderReported { reason, .. } => match reason.as_str() {
            "Conflict" => class(Code::FailedPrecondition, H::CONFLICT, "FIELD_MANAGER_CONFLICT"),
            "Forbidden" => class(Code::PermissionDenied, H::FORBIDDEN, "FORBIDDEN"),
            _ => class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        },
    }
}

fn classify_local(l: &local::Error) -> Class {
    use local::Error as L;
    use StatusCode as H;
    match l {
        L::MissingProgram { .. } => class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "PROGRAM_MISSING"),
        L::NoLocalRecipe { .. } => class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "NO_LOCAL_RECIPE"),
        L::Spawn { .. } | L::Exited { .. } | L::Venv { .. } => {
            class(Code::FailedPrecondition, H::UNPROCESSABLE_ENTITY, "WORKLOAD_FAILED")
        }
        L::NotReady { .. } => class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "READINESS_TIMEOUT"),
        L::Locked { .. } => class(Code::FailedPrecondition, H::CONFLICT, "DATA_DIR_LOCKED"),
        L::ShuttingDown => class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        L::NoFreePort(_) => class(Code::ResourceExhausted, H::SERVICE_UNAVAILABLE, "NO_FREE_PORT"),
        L::Lock { .. }
        | L::Io { .. }
        | L::CorruptState { .. }
        | L::StateFormat { .. }
        | L::MissingSecret { .. }
        | L::Encode(_)
        | L::Blocking(_) => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
    }
}

/// HTTP status of a gRPC code, per the "HTTP Mapping" notes of `google/rpc/code.proto`.
fn http_of(code: Code) -> StatusCode {
    use StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// The status a proxied call ends with: a module server's own error status is passed through
/// unchanged (message, details and metadata); the proxy's errors go through the table above.
pub fn proxy_status(e: proxy::Error) -> tonic::Status {
    match e {
        proxy::Error::Upstream(status) => *status,
        other => to_status(&Error::Proxy(other)),
    }
}

/// The text users see: internal errors are logged and replaced by a generic message.
fn public_message(e: &Error, class: Class) -> String {
    if class.code == Code::Internal {
        tracing::error!(error = %e, "internal error");
        "internal error (see the orchestrator's log)".into()
    } else {
        e.to_string()
    }
}

pub fn to_status(e: &Error) -> tonic::Status {
    let c = classify(e);
    let message = public_message(e, c);
    let mut details = ErrorDetails::new();
    details.set_error_info(c.reason, "jac-orc", std::collections::HashMap::new());
    if let (Some(field), Code::InvalidArgument) = (e.field(), c.code) {
        details.add_bad_request_violation(field, message.clone());
    }
    tonic::Status::with_error_details(c.code, message, details)
}

/// The JSON body of every REST error: `{"detail", "field", "reason"}`, plus the lines of what a
/// failed deploy or undeploy applied before it failed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, ToResponse)]
#[response(description = "An error, with its detail, the field it is about and a stable reason")]
pub struct ErrorBody {
    pub detail: String,
    /// The request field the error is about (`module`, `config.replicas`, ...).
    pub field: Option<String>,
    /// Stable machine-readable reason (`TEMPLATE_NOT_FOUND`, ...), as in gRPC's `ErrorInfo`.
    pub reason: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
}

/// A REST error: its status and body, both from the table above.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    fn of(c: Class, detail: String, field: Option<String>) -> Self {
        ApiError { status: c.http, body: ErrorBody { detail, field, reason: c.reason, applied: None } }
    }

    /// Adds what a failed run applied before it failed (its final error among the errors).
    #[must_use]
    pub fn with_applied(mut self, mut applied: Applied) -> Self {
        applied.fail(&self.body.detail);
        self.body.applied = Some(applied);
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let c = classify(&e);
        ApiError::of(c, public_message(&e, c), e.field())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let field = match &e {
            RequestError::BadJson { field, .. } => field.clone(),
            _ => None,
        };
        ApiError::of(e.class(), e.to_string(), field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_maps_to_404_and_not_found() {
        let e = Error::Catalog(catalog::Error::ModuleNotFound { module: "x".into(), valid: vec!["redis".into()] });
        let c = classify(&e);
        assert_eq!((c.code, c.http), (Code::NotFound, StatusCode::NOT_FOUND));
        let s = to_status(&e);
        assert!(s.message().contains("redis"));
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "TEMPLATE_NOT_FOUND");
    }

    #[test]
    fn bad_values_carry_the_field() {
        let e =
            Error::Catalog(catalog::Error::WrongType { name: "replicas".into(), expected: "integer", got: "string" });
        let s = to_status(&e);
        assert_eq!(s.code(), Code::InvalidArgument);
        let v = s.get_error_details().bad_request().unwrap().field_violations[0].field.clone();
        assert_eq!(v, "config.replicas");
    }

    #[test]
    fn proxy_errors_map_to_unavailable_not_found_and_deadline() {
        use crate::plan::DeploymentId;
        let id = DeploymentId { namespace: "default".into(), module: "python-module".into(), name: "np".into() };
        let s = proxy_status(proxy::Error::Unreachable {
            endpoint: "127.0.0.1:1".into(),
            deployment: id.clone(),
            reason: "connection refused".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("127.0.0.1:1"), "{s:?}");
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "MODULE_SERVER_UNAVAILABLE");
        assert_eq!(proxy_status(proxy::Error::NotFound(id)).code(), Code::NotFound);
        let late = proxy::Error::DeadlineExceeded { timeout: std::time::Duration::from_millis(5), endpoint: None };
        assert_eq!(proxy_status(late).code(), Code::DeadlineExceeded);
    }

    #[test]
    fn module_server_statuses_pass_through_unchanged() {
        let upstream = tonic::Status::with_details(Code::NotFound, "no such reference", "d".into());
        let s = proxy_status(proxy::Error::Upstream(Box::new(upstream)));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no such reference"));
        assert_eq!(s.details(), b"d");
    }

    #[test]
    fn kube_errors_map_to_conflict_forbidden_unavailable_and_keep_their_source() {
        use crate::backend::kube::KubeError;
        let api =
            |code: u16| Box::new(kube::Error::Api(Box::new(kube::core::Status::failure("m", "R").with_code(code))));
        let cases = [
            (
                KubeError::Conflict {
                    object: "o".into(),
                    manager: "helm".into(),
                    message: "m".into(),
                    source: api(409),
                },
                Code::FailedPrecondition,
                StatusCode::CONFLICT,
                "FIELD_MANAGER_CONFLICT",
            ),
            (
                KubeError::Forbidden { object: "o".into(), message: "m".into(), source: api(403) },
                Code::PermissionDenied,
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
            ),
            (
                KubeError::Server { object: "o".into(), code: 503, message: "m".into(), source: api(503) },
                Code::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
            ),
        ];
        for (k, code, http, reason) in cases {
            let e = Error::Backend(backend::Error::Kube(k));
            assert!(std::error::Error::source(&e).is_some(), "{e:?} keeps its cause");
            let c = classify(&e);
            assert_eq!((c.code, c.http, c.reason), (code, http, reason), "{e}");
        }
        let restricted = Error::Backend(backend::Error::Restricted {
            object: "deployment x".into(),
            source: identity::Error::RestrictedNamespace { requested: "a".into(), allowed: "b".into() },
        });
        assert_eq!(classify(&restricted).reason, "RESTRICTED_NAMESPACE");
    }
}
