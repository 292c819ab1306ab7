//! The streaming RPCs' answer (Deploy, Undeploy, Rollback): the service's run as DeployEvents.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::Status;

use super::convert;
use super::status::to_status;
use crate::pb::{self, deploy_event::Event as PbEvent};
use crate::service::{DeployStream, Event};

/// The events of a Deploy or Undeploy call: one per object, then a summary, or a final error
/// status. It owns the service's stream, so a client that goes away cancels the run's waits.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DeployEvent, Status>> + Send>>;

pub(super) fn events(stream: DeployStream) -> EventStream {
    Box::pin(stream.map(|event| match event {
        Event::Object(ev) => Ok(pb::DeployEvent { event: Some(PbEvent::Object(convert::object_event(&ev))) }),
        Event::Done(summary) => Ok(pb::DeployEvent { event: Some(PbEvent::Summary(convert::summary(&summary))) }),
        Event::Failed(e) => Err(to_status(&e)),
    }))
}
