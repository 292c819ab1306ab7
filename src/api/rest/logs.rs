//! `GET /deployment/{namespace}/{module}/{name}/logs?follow=&tail=`: the same service call as
//! the `Logs` RPC, answered as NDJSON (one [`LogLine`] object per line, as it is read). Errors
//! found before the first line (bad `tail`, refused, unknown deployment) are the usual JSON
//! error with their status; one met while streaming is the last line, `{"error", "status"}`.
//! The body owns the service's stream: a client that goes away stops the reading.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{DeploymentPath, PathParams, QueryParams};
use super::stream::NDJSON;
use super::AppState;
use crate::api::openapi::TAG_DEPLOYMENTS;
use crate::api::status::{ApiError, ErrorBody};
use crate::auth::Caller;
use crate::backend::LogLine;
use crate::service::{self, LogsRequest};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Keep streaming new lines until the client goes away (`true`/`1`; default false: end
    /// after the tail).
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    follow: Option<String>,
    /// Lines from the end of each source to start with, 0 to 100000 (default: all of them).
    #[serde(default)]
    #[param(value_type = Option<i64>)]
    tail: Option<String>,
}

impl LogsQuery {
    fn request(self) -> service::Result<LogsRequest> {
        let tail = match self.tail.as_deref() {
            None | Some("") => None,
            Some(text) => Some(text.trim().parse::<i64>().map_err(|_| service::Error::Invalid {
                field: "tail".into(),
                reason: format!("{text:?} is not a line count"),
            })?),
        };
        // An empty value is the default, as for `tail` (forms and templates send `follow=`).
        let follow = match self.follow.as_deref().map(str::trim) {
            None | Some("" | "false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(service::Error::Invalid {
                    field: "follow".into(),
                    reason: format!("{other:?} is not true or false"),
                })
            }
        };
        Ok(LogsRequest { follow, tail })
    }
}

/// One NDJSON line of a logs response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum LogsLine {
    Line(LogLine),
    /// Reading failed (the last line), with the HTTP status it would have had.
    Error {
        error: ErrorBody,
        status: u16,
    },
}

/// The log lines of a deployment's workloads (`get` on `jacdeployments/log`), as NDJSON.
#[utoipa::path(get, path = "/deployment/{namespace}/{module}/{name}/logs", operation_id = "deploymentLogs",
    tag = TAG_DEPLOYMENTS, params(DeploymentPath, LogsQuery),
    responses((status = OK, description = "One JSON object per log line, as they are read", body = LogsLine,
                  content_type = "application/x-ndjson"),
              (status = BAD_REQUEST, response = inline(ErrorBody)), (status = UNAUTHORIZED, response = inline(ErrorBody)),
              (status = FORBIDDEN, response = inline(ErrorBody)), (status = NOT_FOUND, response = inline(ErrorBody)),
              (status = SERVICE_UNAVAILABLE, response = inline(ErrorBody))))]
pub(super) async fn logs(
    State(service): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DeploymentPath>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> Result<Response, ApiError> {
    let request = q.request()?;
    let stream = service.logs(&caller, &path.id()?, &request).await?;
    let lines = stream.map(|item| {
        let line = match item {
            Ok(l) => LogsLine::Line(l),
            Err(e) => {
                let err = ApiError::from(e);
                LogsLine::Error { status: err.status.as_u16(), error: err.body }
            }
        };
        let mut bytes = serde_json::to_vec(&line).expect("log lines serialize");
        bytes.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(bytes))
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}
