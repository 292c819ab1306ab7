//! The two thin edges over [`crate::service`]: gRPC (tonic) and the REST gateway (axum). They
//! share the error table in [`status`] and the deploy/undeploy runners below.

pub mod convert;
pub mod grpc;
pub mod module_proxy;
pub mod openapi;
pub mod rest;
pub mod status;

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backend::{ApplyOptions, ObjectEvent, Progress};
use crate::plan::DeploymentId;
use crate::service::{self, Deployed, Prepared, Service};

/// What a deploy or undeploy run streams: events, then exactly one `Done`.
#[derive(Debug)]
pub enum Streamed<T> {
    Event(ObjectEvent),
    Done(service::Result<T>),
}

const CHANNEL: usize = 128;

/// Runs a prepared deploy in its own task. The task finishes (and records) the deployment even if
/// the receiver goes away: a client that disconnects must not leave a half-recorded deployment.
pub fn spawn_deploy(
    service: Arc<Service>,
    prepared: Prepared,
    opts: ApplyOptions,
) -> mpsc::Receiver<Streamed<Deployed>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let span = tracing::info_span!("deploy", deployment = %prepared.plan.id);
    tokio::spawn(
        async move {
            let (progress, forward) = forwarder(tx.clone());
            let result = service.deploy(prepared, opts, &progress).await;
            drop(progress);
            let _ = forward.await;
            let _ = tx.send(Streamed::Done(result)).await;
        }
        .instrument(span),
    );
    rx
}

pub fn spawn_undeploy(service: Arc<Service>, id: DeploymentId) -> mpsc::Receiver<Streamed<()>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let span = tracing::info_span!("undeploy", deployment = %id);
    tokio::spawn(
        async move {
            let (progress, forward) = forwarder(tx.clone());
            let result = service.undeploy(&id, &progress).await;
            drop(progress);
            let _ = forward.await;
            let _ = tx.send(Streamed::Done(result)).await;
        }
        .instrument(span),
    );
    rx
}

fn forwarder<T: Send + 'static>(tx: mpsc::Sender<Streamed<T>>) -> (Progress, tokio::task::JoinHandle<()>) {
    let (ptx, mut prx) = mpsc::channel::<ObjectEvent>(CHANNEL);
    let forward = tokio::spawn(async move {
        while let Some(ev) = prx.recv().await {
            // A gone client only stops forwarding; the producer carries on.
            let _ = tx.send(Streamed::Event(ev)).await;
        }
    });
    (Progress::new(ptx), forward)
}
