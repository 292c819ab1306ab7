//! Progress reporting from backends to whoever streams it (gRPC, NDJSON, CLI), free of tonic.

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plan::ObjectRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    Kept,
    Started,
    Ready,
    Waiting,
    Failed,
    Stopped,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::Kept => "kept",
            Action::Started => "started",
            Action::Ready => "ready",
            Action::Waiting => "waiting",
            Action::Failed => "failed",
            Action::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ObjectEvent {
    pub object: ObjectRef,
    pub action: Action,
    /// kubectl-style line: `deployment.apps/jac-redis created`.
    pub line: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl ObjectEvent {
    pub fn new(object: ObjectRef, action: Action) -> Self {
        let line = format!("{} {}", object.kubectl_name(), action.as_str());
        ObjectEvent { object, action, line, message: String::new() }
    }

    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

/// Sender side handed to backends. Sending never fails loudly: a receiver that went away means
/// the client left, and the backend still finishes (and records) what it started. Whoever owns
/// the run cancels [`Progress::caller_gone`] when the caller leaves, so waits stop early.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Option<mpsc::Sender<ObjectEvent>>,
    gone: CancellationToken,
}

impl Progress {
    pub fn new(tx: mpsc::Sender<ObjectEvent>) -> Self {
        Progress { tx: Some(tx), gone: CancellationToken::new() }
    }

    /// A sink that drops every event (startup `MODULES` replay, tests).
    pub fn discard() -> Self {
        Progress { tx: None, gone: CancellationToken::new() }
    }

    /// Ties this run to `token`: cancelling it means the caller has gone.
    #[must_use]
    pub fn with_caller(mut self, token: CancellationToken) -> Self {
        self.gone = token;
        self
    }

    pub async fn send(&self, event: ObjectEvent) {
        tracing::info!(line = %event.line, message = %event.message, "progress");
        if let Some(tx) = &self.tx {
            let _ = tx.send(event).await;
        }
    }

    /// Whether the caller has gone (its stream was dropped, or nobody receives the events):
    /// waiting on readiness for it is pointless.
    pub fn is_caller_gone(&self) -> bool {
        self.gone.is_cancelled() || self.tx.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Resolves when the caller has gone; pending forever for runs nobody can leave.
    pub async fn caller_gone(&self) {
        match &self.tx {
            Some(tx) => tokio::select! {
                () = self.gone.cancelled() => {}
                () = tx.closed() => {}
            },
            None => self.gone.cancelled().await,
        }
    }
}
