//! A deploy or undeploy stream over REST: collected into one [`Outcome`] (the original's
//! `results`/`errors` shape), or sent as it happens, one NDJSON line per event; and an ensure's
//! progress (`POST /module/ensure` with `Accept: application/x-ndjson`).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::status::{ApiError, ErrorBody};
use crate::backend::ObjectEvent;
use crate::service::views::{Applied, EnsureView, Outcome, Run, Summary};
use crate::service::{DeployStream, EnsureEvent, EnsureEvents, Event};

pub(super) const NDJSON: &str = "application/x-ndjson";

/// Reads the whole run: 200 with its outcome, or the error's status with the lines of what was
/// applied before it failed.
pub(super) async fn collect(mut stream: DeployStream, run: Run) -> Result<Json<Outcome>, ApiError> {
    let mut applied = Applied::default();
    while let Some(event) = stream.next().await {
        match event {
            Event::Object(ev) => applied.add(&ev),
            Event::Done(summary) => return Ok(Json(Outcome::new(run, applied, summary))),
            Event::Failed(e) => return Err(ApiError::from(e).with_applied(applied)),
        }
    }
    unreachable!("a run stream always ends with Done or Failed")
}

/// One line of an NDJSON deploy or undeploy response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum StreamLine {
    /// What happened to one object.
    Event { event: ObjectEvent },
    /// The run succeeded (the last line).
    Summary { summary: Summary },
    /// The run failed (the last line), with the HTTP status the collected response would have had.
    Error { error: ErrorBody, status: u16 },
}

impl From<Event> for StreamLine {
    fn from(event: Event) -> Self {
        match event {
            Event::Object(event) => StreamLine::Event { event },
            Event::Done(summary) => StreamLine::Summary { summary },
            Event::Failed(e) => {
                let err = ApiError::from(e);
                StreamLine::Error { status: err.status.as_u16(), error: err.body }
            }
        }
    }
}

/// Streams the run as NDJSON. The body owns the stream: a client that goes away drops it,
/// which tells the run its caller has gone.
pub(super) fn ndjson(stream: DeployStream) -> Response {
    ndjson_body(stream.map(StreamLine::from))
}

/// An NDJSON response of `lines`, one JSON document per line as each arrives.
fn ndjson_body<L: Serialize>(lines: impl futures::Stream<Item = L> + Send + 'static) -> Response {
    let lines = lines.map(|l| {
        let mut line = serde_json::to_vec(&l).expect("stream lines serialize");
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// One line of an NDJSON `POST /module/ensure` response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum EnsureLine {
    /// What happened to one object of the deploy it makes.
    Event { event: ObjectEvent },
    /// The deployment serving the module (the last line).
    Ensured { ensured: EnsureView },
    /// It failed (the last line), with the HTTP status the plain response would have had.
    Error { error: ErrorBody, status: u16 },
}

impl From<EnsureEvent> for EnsureLine {
    fn from(item: EnsureEvent) -> Self {
        match item {
            EnsureEvent::Object(event) => EnsureLine::Event { event },
            EnsureEvent::Done(Ok(ensured)) => EnsureLine::Ensured { ensured },
            EnsureEvent::Done(Err(e)) => {
                let err = ApiError::from(e);
                EnsureLine::Error { status: err.status.as_u16(), error: err.body }
            }
        }
    }
}

/// Streams an ensure as NDJSON; the body owns it. An ensure that fails before anything happens
/// (bad input, not permitted, not allowed on import) is answered with its own status instead.
pub(super) async fn ensure_ndjson(mut events: EnsureEvents) -> Result<Response, ApiError> {
    let first = match events.next().await {
        Some(EnsureEvent::Done(Err(e))) => return Err(e.into()),
        Some(first) => first,
        None => unreachable!("an ensure stream always ends with Done"),
    };
    Ok(ndjson_body(futures::stream::once(async { first }).chain(events).map(EnsureLine::from)))
}
