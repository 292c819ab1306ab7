//! The one error table: every service error gets one gRPC code, one HTTP status and a stable
//! reason, here and nowhere else (STYLE.md "Error mapping").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::backend::{self, local};
use crate::catalog;
use crate::proxy;
use crate::service::Error;

#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub code: Code,
    pub http: StatusCode,
    pub reason: &'static str,
}

const fn class(code: Code, http: StatusCode, reason: &'static str) -> Class {
    Class { code, http, reason }
}

pub fn classify(e: &Error) -> Class {
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
        Error::Invalid { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_ARGUMENT"),
        Error::RestrictedNamespace { .. } => class(Code::FailedPrecondition, H::BAD_REQUEST, "RESTRICTED_NAMESPACE"),
        Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
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

fn classify_backend(b: &backend::Error) -> Class {
    use StatusCode as H;
    match b {
        backend::Error::Local(l) => classify_local(l),
        backend::Error::Rejected { .. } => class(Code::InvalidArgument, H::UNPROCESSABLE_ENTITY, "REJECTED"),
        backend::Error::Conflict { .. } => class(Code::FailedPrecondition, H::CONFLICT, "FIELD_MANAGER_CONFLICT"),
        backend::Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
        backend::Error::Forbidden { .. } => class(Code::PermissionDenied, H::FORBIDDEN, "FORBIDDEN"),
        backend::Error::WorkloadFailed { .. } => {
            class(Code::FailedPrecondition, H::UNPROCESSABLE_ENTITY, "WORKLOAD_FAILED")
        }
        backend::Error::Timeout { .. } => class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "READINESS_TIMEOUT"),
        backend::Error::Unavailable(_) => class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        backend::Error::Internal(_) => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
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
pub fn public_message(e: &Error, class: Class) -> String {
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

/// A JSON error response of the REST gateway: `{"detail", "field", "reason", ...extra}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    pub field: Option<String>,
    pub reason: &'static str,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into(), field: None, reason, extra: Map::new() }
    }

    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    #[must_use]
    pub fn with_extra(mut self, extra: Map<String, Value>) -> Self {
        self.extra = extra;
        self
    }

    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("detail".into(), json!(self.detail));
        body.insert("field".into(), json!(self.field));
        body.insert("reason".into(), json!(self.reason));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let c = classify(&e);
        ApiError {
            status: c.http,
            detail: public_message(&e, c),
            field: e.field(),
            reason: c.reason,
            extra: Map::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
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
}
