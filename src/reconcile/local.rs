//! The local backend's reconcile loop: a pass over the state file
//! ([`LocalBackend::reconcile`]) every period, until stopped. Dead workloads are not its job:
//! each one's supervisor restarts it at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::local::LocalBackend;
use crate::plan::Planner;

/// Between passes: short enough that a removed object-store file or a changed template is
/// noticed soon, long enough that re-rendering every deployment (a preflight each) stays cheap.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);

/// How long [`LocalLoop::stop`] waits for a pass in flight before abandoning it.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// The running loop; [`LocalLoop::stop`] ends it.
#[derive(Debug)]
pub struct LocalLoop {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LocalLoop {
    /// Starts the loop; the first pass comes one `period` from now (the restore after a
    /// start brings the recorded workloads up first).
    pub fn start(backend: Arc<LocalBackend>, planner: Arc<dyn Planner>, period: Duration) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(backend, planner, period, stop.clone()));
        LocalLoop { stop, task }
    }

    /// Ends the loop. Call it after the backend's shutdown: a pass in flight then ends at its
    /// next step (a pass is never dropped halfway through an apply, unless it overruns a bound).
    pub async fn stop(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(STOP_BOUND, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the local reconcile loop ended abnormally"),
            Err(_) => {
                tracing::warn!(bound = ?STOP_BOUND, "the local reconcile pass did not end in time; abandoned");
                abort.abort();
            }
        }
    }
}

async fn run(backend: Arc<LocalBackend>, planner: Arc<dyn Planner>, period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let done = backend.reconcile(&*planner).await;
        if !done.is_empty() {
            tracing::debug!(?done, "local reconcile pass");
        }
    }
}
