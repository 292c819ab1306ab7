//! Deploy and undeploy as one stream each: a single task runs the backend and sends its
//! progress down one channel; the [`DeployStream`] yields those events, then one final
//! [`Event::Done`] or [`Event::Failed`], then ends.
//!
//! # The caller leaving
//! Dropping the stream means the caller has gone. The run's [`Progress`] then reports
//! [`Progress::is_caller_gone`], so readiness waits stop early; the apply (or delete) itself
//! still completes and is recorded, with the record saying readiness was not awaited.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::locks::Held;
use super::revision_note::RevisionNote;
use super::views::{Counts, DeploymentView, Summary};
use super::{DeploymentRequest, Error, Prepared, Result, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::backend::{ApplyOptions, ObjectEvent, Progress};
use crate::identity::DeploymentId;

/// Events buffered between the run and a slow reader.
const BUFFER: usize = 128;

/// One item of a deploy or undeploy stream.
#[derive(Debug)]
pub enum Event {
    /// What happened to one object (applied, waited for, deleted, ...).
    Object(ObjectEvent),
    /// The run succeeded; the last item.
    Done(Summary),
    /// The run failed; the last item. What was applied before the failure stays applied and
    /// recorded.
    Failed(Error),
}

impl Service {
    /// Validates, renders and checks the request (errors here mean nothing was applied), then
    /// applies it in the background and returns its events.
    pub async fn deploy(&self, caller: &Caller, req: &DeploymentRequest, opts: ApplyOptions) -> Result<DeployStream> {
        Ok(self.apply(self.prepare(caller, req).await?, opts, RevisionNote::deploy(caller)))
    }

    /// Applies a prepared deployment in the background and returns its events; a successful
    /// apply (not a dry run) is recorded as a revision with `note`.
    pub(super) fn apply(&self, prepared: Prepared, opts: ApplyOptions, note: RevisionNote) -> DeployStream {
        let Prepared { plan, started, lock } = prepared;
        let backend = self.backend.clone();
        let limit = self.settings.history_limit;
        let id = plan.id.clone();
        let what = if opts.dry_run { "dry run of a deploy" } else { "deploying" };
        tracing::info!(deployment = %id, version = %plan.version, "{what}");
        DeployStream::spawn("deploy", id, started, lock, move |progress| async move {
            let outcome = backend.apply(&plan, &opts, &progress).await;
            if !opts.dry_run {
                // Counted in the run's task, so a caller who left is still counted.
                crate::metrics::global().deploy(&plan.id.module, outcome.is_ok(), started.elapsed());
            }
            let record = outcome?;
            if !opts.dry_run {
                note.record(backend.as_ref(), &record, limit).await;
            }
            Ok(DeploymentView::from(&record))
        })
    }

    /// Checks that the deployment exists (`NotFound` before any stream), then removes
    /// everything it created in the background and returns the events. The summary shows the
    /// deployment as it was.
    pub async fn undeploy(&self, caller: &Caller, id: &DeploymentId) -> Result<DeployStream> {
        self.undeploy_with(caller, id, UndeployOptions::default()).await
    }

    /// [`Service::undeploy`]; a deployment other deployments reference is refused
    /// (`FailedPrecondition`, naming them) unless `opts.force_referenced`.
    pub async fn undeploy_with(
        &self,
        caller: &Caller,
        id: &DeploymentId,
        opts: UndeployOptions,
    ) -> Result<DeployStream> {
        let started = Instant::now();
        self.permit(caller, Verb::Delete, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        let lock = self.locks.hold(id).await;
        let view = DeploymentView::from(&self.require(id).await?);
        let dependents = self.dependents(id).await?;
        if !dependents.is_empty() {
            if !opts.force_referenced {
                return Err(super::references::Error::Referenced { id: id.clone(), dependents }.into());
            }
            tracing::warn!(deployment = %id, dependents = ?dependents, "undeploying a referenced deployment (force_referenced)");
        }
        let backend = self.backend.clone();
        let target = id.clone();
        tracing::info!(deployment = %id, "undeploying");
        Ok(DeployStream::spawn("undeploy", id.clone(), started, lock, move |progress| async move {
            backend.delete(&target, &progress).await?;
            Ok(view)
        }))
    }
}

/// Options of one undeploy.
#[derive(Debug, Clone, Copy, Default)]
pub struct UndeployOptions {
    /// Undeploy even while other deployments reference this one's outputs (they keep what they
    /// were given; their next apply fails until the reference is changed).
    pub force_referenced: bool,
}

/// The events of one deploy or undeploy run. Dropping it tells the run its caller has gone.
pub struct DeployStream {
    events: mpsc::Receiver<ObjectEvent>,
    run: JoinHandle<Result<DeploymentView>>,
    /// The run's outcome once its task has ended, until the buffered events are drained.
    ended: Option<Result<Result<DeploymentView>, JoinError>>,
    finished: bool,
    counts: Counts,
    started: Instant,
    what: &'static str,
    id: DeploymentId,
    _caller: DropGuard,
}

impl std::fmt::Debug for DeployStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployStream")
            .field("run", &self.what)
            .field("deployment", &self.id)
            .field("counts", &self.counts)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl DeployStream {
    /// Starts `run` in its own task, holding `lock` until it ends. The one place a run starts.
    fn spawn<F, Fut>(what: &'static str, id: DeploymentId, started: Instant, lock: Held, run: F) -> Self
    where
        F: FnOnce(Progress) -> Fut + Send + 'static,
        Fut: Future<Output = Result<DeploymentView>> + Send + 'static,
    {
        let (tx, events) = mpsc::channel(BUFFER);
        let caller = CancellationToken::new();
        let progress = Progress::new(tx).with_caller(caller.clone());
        let span = tracing::info_span!("run", run = what, deployment = %id);
        let task = async move {
            let _lock = lock;
            let watcher = progress.clone();
            let gone = async {
                watcher.caller_gone().await;
                tracing::info!("the caller left: readiness is no longer awaited; the run completes and is recorded");
            };
            let outcome = run(progress);
            tokio::pin!(outcome);
            tokio::select! {
                biased;
                outcome = &mut outcome => outcome,
                () = gone => outcome.await,
            }
        };
        let run = tokio::spawn(task.instrument(span));
        DeployStream {
            events,
            run,
            ended: None,
            finished: false,
            counts: Counts::default(),
            started,
            what,
            id,
            _caller: caller.drop_guard(),
        }
    }

    /// Reads the run to its end: its summary, or the error it failed with.
    pub async fn finish(self) -> Result<Summary> {
        self.finish_with(|_| {}).await
    }

    /// [`Self::finish`], handing each object event to `on_object` as it arrives.
    pub async fn finish_with(mut self, mut on_object: impl FnMut(ObjectEvent)) -> Result<Summary> {
        use futures::StreamExt;
        while let Some(event) = self.next().await {
            match event {
                Event::Object(ev) => on_object(ev),
                Event::Done(summary) => return Ok(summary),
                Event::Failed(e) => return Err(e),
            }
        }
        unreachable!("a run stream always ends with Done or Failed")
    }

    fn object(&mut self, event: ObjectEvent) -> Event {
        self.counts.add(event.action);
        Event::Object(event)
    }

    fn last(&mut self, outcome: Result<Result<DeploymentView>, JoinError>) -> Event {
        self.finished = true;
        match outcome {
            Ok(Ok(deployment)) => Event::Done(Summary {
                deployment,
                counts: self.counts,
                elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(e)) => Event::Failed(e),
            Err(source) => Event::Failed(Error::RunAborted { run: self.what, id: self.id.clone(), source }),
        }
    }
}

impl Stream for DeployStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(outcome) = this.ended.take() {
                // The task has ended, so everything it sent is buffered: drain, then finish.
                return Poll::Ready(Some(match this.events.try_recv() {
                    Ok(event) => {
                        this.ended = Some(outcome);
                        this.object(event)
                    }
                    Err(_) => this.last(outcome),
                }));
            }
            if let Poll::Ready(Some(event)) = this.events.poll_recv(cx) {
                return Poll::Ready(Some(this.object(event)));
            }
            let outcome = ready!(Pin::new(&mut this.run).poll(cx));
            this.ended = Some(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::service::testing::{Recording, ABANDONED};

    fn redis(name: &str) -> DeploymentRequest {
        DeploymentRequest {
            module: "redis".into(),
            version: None,
            config: json!({"name": name}).as_object().cloned().unwrap(),
        }
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), f).await.expect("bounded")
    }

    #[tokio::test]
    async fn a_stream_yields_every_event_then_one_summary_with_the_counts() {
        let (service, _) = Recording::service();
        let mut stream = service.deploy(&Caller::Operator, &redis("counted"), ApplyOptions::default()).await.unwrap();
        let mut objects = 0;
        let summary = loop {
            match within(stream.next()).await.expect("a last event") {
                Event::Object(_) => objects += 1,
                Event::Done(s) => break s,
                Event::Failed(e) => panic!("{e}"),
            }
        };
        assert_eq!(objects, 3);
        assert_eq!(summary.counts.created, 3);
        assert_eq!(summary.deployment.name, "counted");
        assert!(within(stream.next()).await.is_none(), "nothing after the summary");
    }

    #[tokio::test]
    async fn dropping_the_stream_ends_the_wait_and_the_run_is_still_recorded() {
        let (service, backend) = Recording::service();
        let opts = ApplyOptions { wait: Some(Duration::from_secs(600)), ..ApplyOptions::default() };
        let mut stream = service.deploy(&Caller::Operator, &redis("left"), opts).await.unwrap();
        loop {
            if let Event::Object(ev) = within(stream.next()).await.expect("events") {
                if ev.action == crate::backend::Action::Waiting {
                    break;
                }
            }
        }
        drop(stream);
        let id = DeploymentId::new("default", "redis", "left").unwrap();
        let record = within(async {
            loop {
                match backend.record(&id) {
                    Some(r) => break r,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        assert_eq!(record.message, ABANDONED);
        // The run has let go of the deployment's lock: the next run starts.
        let next = service.undeploy(&Caller::Operator, &id).await.unwrap().finish();
        assert_eq!(within(next).await.unwrap().counts.deleted, 3);
    }

    #[tokio::test]
    async fn undeploying_what_does_not_exist_fails_before_any_stream() {
        let (service, _) = Recording::service();
        let id = DeploymentId::new("default", "redis", "never").unwrap();
        assert!(matches!(service.undeploy(&Caller::Operator, &id).await.unwrap_err(), Error::NotFound(_)));
    }
}
