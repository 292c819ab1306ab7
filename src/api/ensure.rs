//! `EnsureModule` and `EnsureModuleProgress`: the request as the service's, its view as the
//! answer, and the progress stream (the deploy's object events, then the answer).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert;
use super::status::to_status;
use crate::auth::Caller;
use crate::pb::{self, ensure_module_event::Event};
use crate::service::{self, EnsureView, Service};

/// The items of one `EnsureModuleProgress` call. It owns the ensure, so a client that goes away
/// drops it as it would drop a unary `EnsureModule` (a deploy under way completes and is recorded).
pub type EnsureStream = Pin<Box<dyn Stream<Item = Result<pb::EnsureModuleEvent, Status>> + Send>>;

pub(super) fn request(r: pb::EnsureModuleRequest) -> service::EnsureRequest {
    let text = |s: String| Some(s).filter(|s| !s.is_empty());
    service::EnsureRequest {
        module: r.module,
        packages: r.packages,
        cpu: text(r.cpu).map(Into::into),
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

/// Where the progress stream is: the ensure running (events flow), or ended (its events
/// drained, then its answer).
struct Running<F> {
    ensure: Option<Pin<Box<F>>>,
    events: mpsc::UnboundedReceiver<crate::backend::ObjectEvent>,
    outcome: Option<service::Result<EnsureView>>,
}

pub(super) fn progress(service: Arc<Service>, caller: Caller, req: service::EnsureRequest) -> EnsureStream {
    let (tx, events) = mpsc::unbounded_channel();
    let ensure = async move { service.ensure_module_with(&caller, &req, Some(&tx)).await };
    let start = Running { ensure: Some(Box::pin(ensure)), events, outcome: None };
    let object = |ev: &crate::backend::ObjectEvent| pb::EnsureModuleEvent {
        event: Some(Event::Object(convert::object_event(ev))),
    };
    Box::pin(futures::stream::unfold(Some(start), move |state| async move {
        let mut s = state?;
        if let Some(ensure) = s.ensure.as_mut() {
            // Events first: everything the ensure sent before it ended comes before its answer.
            tokio::select! {
                biased;
                Some(ev) = s.events.recv() => return Some((Ok(object(&ev)), Some(s))),
                outcome = ensure => {
                    s.ensure = None;
                    s.outcome = Some(outcome);
                }
            }
        }
        if let Ok(ev) = s.events.try_recv() {
            return Some((Ok(object(&ev)), Some(s)));
        }
        let last = match s.outcome.take()? {
            Ok(view) => Ok(pb::EnsureModuleEvent { event: Some(Event::Done(response(view))) }),
            Err(e) => Err(to_status(&e)),
        };
        Some((last, None))
    }))
}
