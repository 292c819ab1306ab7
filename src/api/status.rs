//! The one error table: every error an edge can answer with gets one gRPC code, one HTTP
//! status and a stable reason, here and nowhere else (STYLE.md "Error mapping"). Service errors
//! go to both edges; [`RequestError`]s are what only the REST edge can meet (its body, its paths).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use utoipa::{ToResponse, ToSchema};

use crate::auth::authorize;
use crate::backend::kube::KubeError;
use crate::backend::{self, local};
use crate::catalog;
use crate::identity;
use crate::proxy;
use crate::service::views::Applied;
use crate::service::Error;
use crate::service::{access, references};

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
        Error::NotAllowedOnImport { .. } => class(Code::PermissionDenied, H::FORBIDDEN, "NOT_ALLOWED_ON_IMPORT"),
        Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
        Error::RevisionNotFound { .. } => class(Code::NotFound, H::NOT_FOUND, "REVISION_NOT_FOUND"),
        Error::NoPreviousRevision(_) => class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "NO_PREVIOUS_REVISION"),
        Error::RunAborted { .. } => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Error::Authorization(a) => classify_authorization(a),
        Error::NotReady(_) => class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "NOT_READY"),
        Error::References(r) => match r.as_ref() {
            references::Error::NotFound { .. } => class(Code::NotFound, H::NOT_FOUND, "REFERENCE_NOT_FOUND"),
            references::Error::UnknownOutput { .. } => class(Code::NotFound, H::NOT_FOUND, "OUTPUT_NOT_FOUND"),
            references::Error::Referenced { .. } => {
                class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "DEPLOYMENT_REFERENCED")
            }
            references::Error::Malformed { .. }
            | references::Error::CrossNamespace { .. }
            | references::Error::SecretOutsideEnv { .. }
            | references::Error::OfflineReference { .. } => {
                class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_REFERENCE")
            }
        },
        Error::Access(a) => match a.as_ref() {
            access::Error::Invalid { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_ARGUMENT"),
            access::Error::NotFound { .. } => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
            access::Error::NoReadyServer { .. } => {
                class(Code::FailedPrecondition, H::PRECONDITION_FAILED, "NO_READY_MODULE_SERVER")
            }
            access::Error::NoCallToken { .. } => class(Code::FailedPrecondition, H::BAD_REQUEST, "NO_CALL_TOKEN"),
            access::Error::Backend { source, .. } => classify_backend(source),
        },
        Error::Proxy(p) => match p {
            proxy::Error::Malformed(_) | proxy::Error::NoDeployment | proxy::Error::Undecodable(_) => {
                class(Code::InvalidArgument, H::BAD_REQUEST, "INVALID_PROXY_REQUEST")
            }
            proxy::Error::BufferLimit { .. } => {
                class(Code::ResourceExhausted, H::PAYLOAD_TOO_LARGE, "PROXY_BUFFER_LIMIT")
            }
            proxy::Error::NotFound(_) => class(Code::NotFound, H::NOT_FOUND, "DEPLOYMENT_NOT_FOUND"),
            proxy::Error::ReplicaGone { .. } => class(Code::NotFound, H::NOT_FOUND, "REPLICA_GONE"),
            proxy::Error::ScaledAway { .. } => class(Code::NotFound, H::NOT_FOUND, "SCALED_TO_ZERO"),
            proxy::Error::WakeDeadline { .. } => class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "WAKING_FROM_ZERO"),
            proxy::Error::WakeFailed { source, .. } => classify_backend(source),
            proxy::Error::NoReadyEndpoint { .. } | proxy::Error::Unreachable { .. } => {
                class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "MODULE_SERVER_UNAVAILABLE")
            }
            proxy::Error::DeadlineExceeded { .. } => {
                class(Code::DeadlineExceeded, H::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED")
            }
            proxy::Error::BadEndpoint { .. } => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "INTERNAL"),
            proxy::Error::Backend(b) => classify_backend(b),
            proxy::Error::Upstream(s) => class(s.code(), http_of(s.code()), "MODULE_SERVER_ERROR"),
            proxy::Error::Authorization(a) => classify_authorization(a),
            proxy::Error::NoCallToken(_) => class(Code::FailedPrecondition, H::BAD_REQUEST, "NO_CALL_TOKEN"),
            proxy::Error::CallTokenRefused { .. } => {
                class(Code::FailedPrecondition, H::BAD_REQUEST, "CALL_TOKEN_REFUSED")
            }
        },
    }
}

/// The caller may not (403), has no identity (401), or the API server could not decide (503; the
/// review's cause is logged, see [`public_message`]).
fn classify_authorization(a: &authorize::Error) -> Class {
    use StatusCode as H;
    match a {
        authorize::Error::Denied(_) => class(Code::PermissionDenied, H::FORBIDDEN, "PERMISSION_DENIED"),
        authorize::Error::Unauthenticated { .. } => class(Code::Unauthenticated, H::UNAUTHORIZED, "UNAUTHENTICATED"),
        authorize::Error::Review { .. } => {
            class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "AUTHORIZATION_UNAVAILABLE")
        }
    }
}

/// What the HTTP edge meets before the service: request bodies, paths, query strings, methods,
/// content types and the head checks of [`super::layers`] (URI length, `Host`, `Origin`).
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
    /// A body that is not `application/json` (a browser's no-preflight `text/plain` POST).
    #[error("unsupported content type `{}`: send the body as `application/json`", .found.as_deref().unwrap_or("(none)"))]
    UnsupportedMediaType { found: Option<String> },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    #[error("invalid query string: {reason}")]
    BadQuery { reason: String },
    #[error("invalid path: {reason}")]
    BadPath { reason: String },
    #[error("the request URI is {len} bytes long; the limit is {limit}")]
    UriTooLong { len: usize, limit: usize },
    /// A loopback listener asked for a name that is not loopback (DNS rebinding).
    #[error("host `{host}` is not a loopback name: this server listens on loopback and answers only requests for localhost, 127.0.0.1 or [::1]")]
    ForeignHost { host: String },
    #[error("cross-origin requests from `{origin}` are not allowed (the server allows the origins given with --cors-origin)")]
    OriginNotAllowed { origin: String },
    /// A protobuf message that does not decode (a gRPC request; see `api/codec.rs`).
    #[error("the request message is not valid protobuf: {0}")]
    Undecodable(#[source] prost::DecodeError),
    /// An error status the framework answered without a body of ours (kept, given a JSON body).
    #[error("{detail}")]
    Http { status: StatusCode, detail: String },
}

impl RequestError {
    /// A body that does not parse, with the path of the value serde stopped at when the body
    /// is JSON but of the wrong shape (`config`, `wait`, `confg` for an unknown field).
    pub fn bad_json(source: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = source.path().to_string();
        let field = (source.inner().classify() == serde_json::error::Category::Data && path != ".").then_some(path);
        RequestError::BadJson { field, source }
    }

    /// Header text quoted in a message: bounded, visible ASCII only.
    pub fn quoted(value: &[u8]) -> String {
        let text: String =
            value.iter().take(100).map(|b| if b.is_ascii_graphic() { *b as char } else { '?' }).collect();
        if value.len() > 100 {
            format!("{text}...")
        } else {
            text
        }
    }

    fn class(&self) -> Class {
        use StatusCode as H;
        match self {
            RequestError::BodyTooLarge { .. } => class(Code::ResourceExhausted, H::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE"),
            RequestError::BodyUnreadable(_) => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_BODY"),
            RequestError::BadJson { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_JSON"),
            RequestError::NoRoute { .. } => class(Code::Unimplemented, H::NOT_FOUND, "NO_ROUTE"),
            RequestError::UnsupportedMediaType { .. } => {
                class(Code::InvalidArgument, H::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            RequestError::MethodNotAllowed { .. } => {
                class(Code::Unimplemented, H::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            }
            RequestError::BadQuery { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_QUERY"),
            RequestError::BadPath { .. } => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_PATH"),
            RequestError::UriTooLong { .. } => class(Code::InvalidArgument, H::URI_TOO_LONG, "URI_TOO_LONG"),
            RequestError::ForeignHost { .. } => {
                class(Code::PermissionDenied, H::MISDIRECTED_REQUEST, "HOST_NOT_ALLOWED")
            }
            RequestError::OriginNotAllowed { .. } => class(Code::PermissionDenied, H::FORBIDDEN, "ORIGIN_NOT_ALLOWED"),
            RequestError::Undecodable(_) => class(Code::InvalidArgument, H::BAD_REQUEST, "BAD_PROTOBUF"),
            RequestError::Http { status, .. } => Class { code: code_of(*status), http: *status, reason: "HTTP_ERROR" },
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            RequestError::BadJson { field, .. } => field.clone(),
            RequestError::UnsupportedMediaType { .. } => Some("content-type".into()),
            RequestError::BadQuery { .. } => Some("query".into()),
            RequestError::BadPath { .. } => Some("path".into()),
            RequestError::ForeignHost { .. } => Some("host".into()),
            RequestError::OriginNotAllowed { .. } => Some("origin".into()),
            _ => None,
        }
    }

    /// The answer to a request refused before any route ran: a gRPC status (trailers-only, with
    /// the request's grpc-web content type) when the request is gRPC, else the JSON body.
    pub fn respond(self, request_content_type: Option<&http::HeaderValue>) -> Response {
        let content_type = request_content_type.and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !content_type.starts_with("application/grpc") {
            return ApiError::from(self).into_response();
        }
        let mut response = self.status().into_http::<axum::body::Body>();
        if content_type.starts_with("application/grpc-web") {
            if let Ok(v) = http::HeaderValue::from_str(content_type) {
                response.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
        }
        response
    }

    /// The gRPC status of this error, with its reason and field.
    pub fn status(&self) -> tonic::Status {
        let c = self.class();
        let message = self.to_string();
        let mut details = ErrorDetails::new();
        details.set_error_info(c.reason, "jac-orc", std::collections::HashMap::new());
        if let (Some(field), Code::InvalidArgument) = (self.field(), c.code) {
            details.add_bad_request_violation(field, message.clone());
        }
        tonic::Status::with_error_details(c.code, message, details)
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
        backend::Error::CannotScaleToZero { .. } => {
            class(Code::FailedPrecondition, H::UNPROCESSABLE_ENTITY, "CANNOT_SCALE_TO_ZERO")
        }
    }
}

fn classify_kube(k: &KubeError) -> Class {
    use KubeError as K;
    use StatusCode as H;
    match k {
        K::Conflict { .. } => class(Code::FailedPrecondition, H::CONFLICT, "FIELD_MANAGER_CONFLICT"),
        K::Forbidden { .. } => class(Code::PermissionDenied, H::FORBIDDEN, "FORBIDDEN"),
        K::Server { .. }
        | K::Unreachable { .. }
        | K::Watch { .. }
        | K::Config { .. }
        | K::ProbeTimeout(_)
        | K::LogRead { .. } => class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
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

/// gRPC code of an HTTP status (the inverse of [`http_of`], for statuses the framework answered).
fn code_of(status: StatusCode) -> Code {
    use StatusCode as H;
    match status {
        H::BAD_REQUEST | H::UNSUPPORTED_MEDIA_TYPE | H::URI_TOO_LONG => Code::InvalidArgument,
        H::UNAUTHORIZED => Code::Unauthenticated,
        H::FORBIDDEN | H::MISDIRECTED_REQUEST => Code::PermissionDenied,
        H::NOT_FOUND => Code::NotFound,
        H::CONFLICT => Code::Aborted,
        H::METHOD_NOT_ALLOWED | H::NOT_IMPLEMENTED => Code::Unimplemented,
        H::PAYLOAD_TOO_LARGE | H::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        H::SERVICE_UNAVAILABLE => Code::Unavailable,
        H::GATEWAY_TIMEOUT | H::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_client_error() => Code::FailedPrecondition,
        _ => Code::Internal,
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

/// The text users see: internal errors are logged and replaced by a generic message; an
/// authorization that could not be decided is logged with its cause.
fn public_message(e: &Error, class: Class) -> String {
    if class.code == Code::Internal {
        tracing::error!(error = %e, "internal error");
        return "internal error (see the orchestrator's log)".into();
    }
    if class.reason == "AUTHORIZATION_UNAVAILABLE" {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        tracing::warn!(error = %chain, "authorization could not be decided");
        return "cannot decide authorization right now (the Kubernetes API server did not answer); try again".into();
    }
    e.to_string()
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
        ApiError::of(e.class(), e.to_string(), e.field())
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
        let gone = proxy_status(proxy::Error::ReplicaGone {
            deployment: Box::new(id.clone()),
            lost: "127.0.0.1:2".into(),
            message: "unknown reference id \"r1\"".into(),
        });
        assert_eq!(gone.code(), Code::NotFound);
        assert_eq!(gone.get_error_details().error_info().unwrap().reason, "REPLICA_GONE");
        assert!(gone.message().contains("default/python-module/np") || gone.message().contains("np"), "{gone:?}");
        assert!(gone.message().contains("went away") && gone.message().contains("127.0.0.1:2"), "{gone:?}");
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

    #[test]
    fn authorization_errors_are_403_401_and_503_naming_what_was_refused() {
        use crate::auth::{Denied, Resource, Verb};
        let denied = Denied {
            user: "alice".into(),
            verb: Verb::Create,
            resource: Resource::JacDeployments,
            namespace: Some("prod".into()),
            name: Some("db".into()),
            reason: None,
        };
        let e = Error::Authorization(authorize::Error::Denied(Box::new(denied.clone())));
        let s = to_status(&e);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "user alice may not create jacdeployments \"db\" in namespace prod");
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "PERMISSION_DENIED");
        let rest = ApiError::from(Error::Authorization(authorize::Error::Denied(Box::new(denied.clone()))));
        assert_eq!((rest.status, rest.body.reason), (StatusCode::FORBIDDEN, "PERMISSION_DENIED"));
        let via_proxy = proxy_status(proxy::Error::Authorization(authorize::Error::Denied(Box::new(denied))));
        assert_eq!(via_proxy.code(), Code::PermissionDenied);

        let anonymous = authorize::Error::Unauthenticated { verb: Verb::List, resource: Resource::Templates };
        let rest = ApiError::from(Error::Authorization(anonymous));
        assert_eq!((rest.status, rest.body.reason), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));

        let unreachable = kube::Error::Api(Box::new(kube::core::Status::failure("down", "ServiceUnavailable")));
        let review = authorize::Error::Review { source: Box::new(unreachable) };
        let s = to_status(&Error::Authorization(review));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "AUTHORIZATION_UNAVAILABLE");
        assert!(!s.message().contains("down"), "the cause is logged, not sent: {s:?}");
    }

    #[test]
    fn edge_refusals_have_their_status_reason_and_field_and_speak_grpc_to_grpc() {
        let cases = [
            (RequestError::UnsupportedMediaType { found: Some("text/plain".into()) }, 415, "UNSUPPORTED_MEDIA_TYPE"),
            (
                RequestError::MethodNotAllowed { method: Method::PUT, path: "/deployment".into() },
                405,
                "METHOD_NOT_ALLOWED",
            ),
            (RequestError::UriTooLong { len: 9000, limit: 8192 }, 414, "URI_TOO_LONG"),
            (RequestError::ForeignHost { host: "evil.example".into() }, 421, "HOST_NOT_ALLOWED"),
            (RequestError::OriginNotAllowed { origin: "https://evil.example".into() }, 403, "ORIGIN_NOT_ALLOWED"),
            (RequestError::BadQuery { reason: "x".into() }, 400, "BAD_QUERY"),
            (RequestError::Http { status: StatusCode::IM_A_TEAPOT, detail: "teapot".into() }, 418, "HTTP_ERROR"),
        ];
        for (e, http, reason) in cases {
            assert_eq!(e.class().http.as_u16(), http, "{e}");
            let status = e.status();
            assert_eq!(status.get_error_details().error_info().unwrap().reason, reason, "{e}");
            let grpc = e.respond(Some(&http::HeaderValue::from_static("application/grpc-web+proto")));
            assert_eq!(grpc.status(), StatusCode::OK, "gRPC errors are trailers-only 200s");
            assert_eq!(grpc.headers()["content-type"], "application/grpc-web+proto");
            assert!(grpc.headers().contains_key("grpc-status"));
        }
        let json = RequestError::ForeignHost { host: "evil.example".into() }.respond(None);
        assert_eq!(json.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(json.headers()["content-type"], "application/json");
        assert_eq!(RequestError::quoted(b"a\nb"), "a?b");
        assert!(RequestError::quoted(&[b'x'; 300]).ends_with("..."));
    }

    #[test]
    fn the_proxy_buffer_limit_is_resource_exhausted() {
        let s = proxy_status(proxy::Error::BufferLimit { needed: 300 << 20, limit: 8 << 20 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "PROXY_BUFFER_LIMIT");
        assert_eq!(proxy_status(proxy::Error::Undecodable("failed to decode".into())).code(), Code::InvalidArgument);
    }
}
