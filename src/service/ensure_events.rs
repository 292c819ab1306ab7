//! `EnsureModule` as a stream, for the edges that show its progress (gRPC's
//! `EnsureModuleProgress`, REST's NDJSON): the deploy's object events as they happen, then the
//! outcome. The stream owns the ensure, so dropping it drops the call as a unary caller leaving
//! would (a deploy under way completes and is recorded).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;

use super::ensure::EnsureRequest;
use super::views::EnsureView;
use super::{Result, Service};
use crate::auth::Caller;
use crate::backend::ObjectEvent;

/// One item of an ensure's stream.
#[derive(Debug)]
pub enum EnsureEvent {
    /// What happened to one object of the deploy it makes.
    Object(ObjectEvent),
    /// The last item: the deployment serving the module, or why there is none.
    Done(Result<EnsureView>),
}

pub type EnsureEvents = Pin<Box<dyn Stream<Item = EnsureEvent> + Send>>;

/// Where the stream is: the ensure running (events flow), or ended (its events drained, then
/// its outcome).
struct Running<F> {
    ensure: Option<Pin<Box<F>>>,
    events: mpsc::UnboundedReceiver<ObjectEvent>,
    outcome: Option<Result<EnsureView>>,
}

impl Service {
    /// [`Service::ensure_module`] as a stream of its progress, then its outcome.
    pub fn ensure_module_events(self: Arc<Self>, caller: Caller, req: EnsureRequest) -> EnsureEvents {
        let (tx, events) = mpsc::unbounded_channel();
        let ensure = async move { self.ensure_module_with(&caller, &req, Some(&tx)).await };
        let start = Running { ensure: Some(Box::pin(ensure)), events, outcome: None };
        Box::pin(futures::stream::unfold(Some(start), |state| async move {
            let mut s = state?;
            if let Some(ensure) = s.ensure.as_mut() {
                // Events first: everything the ensure sent before it ended comes before its outcome.
                tokio::select! {
                    biased;
                    Some(ev) = s.events.recv() => return Some((EnsureEvent::Object(ev), Some(s))),
                    outcome = ensure => {
                        s.ensure = None;
                        s.outcome = Some(outcome);
                    }
                }
            }
            if let Ok(ev) = s.events.try_recv() {
                return Some((EnsureEvent::Object(ev), Some(s)));
            }
            Some((EnsureEvent::Done(s.outcome.take()?), None))
        }))
    }
}
