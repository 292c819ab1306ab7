//! Middleware of the REST router: what every route gets before and after its handler.
//!
//! - [`require_json`]: POST, PUT and PATCH, and DELETE with a body, must send
//!   `Content-Type: application/json` (415 otherwise). Browsers send `text/plain` bodies across
//!   origins without a preflight, so this is what keeps a page elsewhere from deploying.
//! - [`json_errors`]: an error status the framework answered itself (405 for a known path with
//!   another method, and anything else without a body of ours) gets the JSON error body.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use crate::api::status::{ApiError, RequestError};

/// Whether `value` is `application/json` (parameters such as `charset` allowed).
fn is_json(value: &HeaderValue) -> bool {
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn has_body(req: &Request) -> bool {
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => req.headers().contains_key(header::TRANSFER_ENCODING) || !req.body().is_end_stream(),
    }
}

pub(super) async fn require_json(req: Request, next: Next) -> Response {
    let needs_json = match *req.method() {
        Method::POST | Method::PUT | Method::PATCH => true,
        Method::DELETE => has_body(&req),
        _ => false,
    };
    let content_type = req.headers().get(header::CONTENT_TYPE);
    if needs_json && !content_type.is_some_and(is_json) {
        let found = content_type.map(|v| RequestError::quoted(v.as_bytes()));
        return ApiError::from(RequestError::UnsupportedMediaType { found }).into_response();
    }
    next.run(req).await
}

pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let ours = response.headers().get(header::CONTENT_TYPE).is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || ours {
        return response;
    }
    let error = match status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => RequestError::MethodNotAllowed { method, path },
        _ => RequestError::Http {
            status,
            detail: status.canonical_reason().unwrap_or("error").to_ascii_lowercase().to_string(),
        },
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut replaced = ApiError::from(error).into_response();
    if let Some(allow) = allow {
        replaced.headers_mut().insert(header::ALLOW, allow);
    }
    replaced
}
