//! The one error table: every service error gets one gRPC code, one HTTP status and a stable
//! reason, here and nowhere else (STYLE.md "Error mapping").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::backend;
use crate::catalog;
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
        Error::Backend(b) => match b {
            backend::Error::MissingProgram { .. } => {
                class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "PROGRAM_MISSING")
            }
            backend::Error::NoLocalRecipe { .. } => {
                class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "NO_LOCAL_RECIPE")
            }
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
        },
        Error::Invalid { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_ARGUMENT"),
        Error::RestrictedNamespace { .. } => class(Code::FailedPrecondition, H::BAD_REQUEST, "RESTRICTED_NAMESPACE"),
        Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
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
}
