//! `Logs` on the gRPC edge: the request as the service's [`LogsRequest`], each line as a
//! [`pb::LogLine`] (and back, for the CLI). The response owns the service's stream, so a
//! client that goes away stops the reading (a follow included).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Status};

use super::status::to_status;
use crate::auth::Caller;
use crate::backend::LogLine;
use crate::identity::DeploymentId;
use crate::pb;
use crate::service::{LogsRequest, Service};

/// The lines of a `Logs` call, or a final error status.
pub type LogLineStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

pub(super) async fn logs(service: &Service, request: Request<pb::LogsRequest>) -> Result<LogLineStream, Status> {
    let caller = Caller::from_extensions(request.extensions());
    let r = request.into_inner();
    let id = DeploymentId::new(r.namespace, r.module, r.name).map_err(|e| to_status(&e.into()))?;
    let request = LogsRequest { follow: r.follow, tail: r.tail };
    let stream = service.logs(&caller, &id, &request).await.map_err(|e| to_status(&e))?;
    Ok(Box::pin(stream.map(|line| line.map(|l| message(&l)).map_err(|e| to_status(&e)))))
}

pub fn message(l: &LogLine) -> pb::LogLine {
    pb::LogLine { source: l.source.clone(), line: l.line.clone(), time: l.time.clone().unwrap_or_default() }
}

impl From<pb::LogLine> for LogLine {
    fn from(l: pb::LogLine) -> Self {
        LogLine { source: l.source, line: l.line, time: Some(l.time).filter(|t| !t.is_empty()) }
    }
}
