//! `EnsureModule` and `EnsureModuleProgress`: the request as the service's, its view as the
//! answer, and the progress stream (the deploy's object events, then the answer).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::Status;

use super::convert;
use super::status::to_status;
use crate::auth::Caller;
use crate::pb::{self, ensure_module_event::Event};
use crate::service::{self, EnsureEvent, EnsureView, Service};

/// The items of one `EnsureModuleProgress` call. It owns the ensure, so a client that goes away
/// drops it as it would drop a unary `EnsureModule` (a deploy under way completes and is recorded).
pub type EnsureStream = Pin<Box<dyn Stream<Item = Result<pb::EnsureModuleEvent, Status>> + Send>>;

pub(super) fn request(r: pb::EnsureModuleRequest) -> service::EnsureRequest {
    let text = |s: String| Some(s).filter(|s| !s.is_empty());
    service::EnsureRequest {
        module: r.module,
        packages: r.packages,
        cpu: text(r.cpu).map(Into::into),
        cpu_limit: text(r.cpu_limit).map(Into::into),
        memory: text(r.memory).map(Into::into),
        replicas: Some(r.replicas).filter(|n| *n != 0),
        idle_timeout: text(r.idle_timeout).map(Into::into),
        namespace: text(r.namespace),
        wait: Some(r.wait_timeout_seconds).filter(|s| *s != 0).map(|s| Duration::from_secs(u64::from(s))),
    }
}

pub(super) fn response(view: EnsureView) -> pb::EnsureModuleResponse {
    pb::EnsureModuleResponse {
        deployment: Some(convert::deployment(&view.deployment)),
        deployed: view.deployed,
        differences: view.differences,
    }
}

pub(super) fn progress(service: Arc<Service>, caller: Caller, req: service::EnsureRequest) -> EnsureStream {
    Box::pin(service.ensure_module_events(caller, req).map(|item| match item {
        EnsureEvent::Object(ev) => Ok(pb::EnsureModuleEvent { event: Some(Event::Object(convert::object_event(&ev))) }),
        EnsureEvent::Done(Ok(view)) => Ok(pb::EnsureModuleEvent { event: Some(Event::Done(response(view))) }),
        EnsureEvent::Done(Err(e)) => Err(to_status(&e)),
    }))
}
