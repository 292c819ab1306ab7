//! Whether the server is ready for traffic (`/readyz`, the gRPC health service, `jac-orc
//! probe`): the startup work (restoring local workloads, the `MODULES` replay) has finished and
//! the backend answers. Liveness (`/healthz`) is only "the process serves".

use std::time::Duration;

use tokio::sync::watch;

/// How long the backend gets to answer a readiness check.
pub const BACKEND_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the server is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("not ready: the startup MODULES replay has not finished")]
    Starting,
    #[error("not ready: the backend does not answer")]
    Backend(#[source] Box<crate::backend::Error>),
    #[error("not ready: the backend did not answer within {0:?}")]
    BackendTimeout(Duration),
}

/// Shared flag "startup finished"; clones see the same state.
#[derive(Debug, Clone)]
pub struct Readiness {
    started: watch::Sender<bool>,
}

impl Readiness {
    /// Startup work pending until [`Readiness::mark_started`].
    pub fn pending() -> Self {
        Readiness { started: watch::Sender::new(false) }
    }

    /// Nothing to wait for (a service built without startup work, as in tests and embeddings).
    pub fn started() -> Self {
        Readiness { started: watch::Sender::new(true) }
    }

    pub fn mark_started(&self) {
        self.started.send_replace(true);
    }

    pub fn is_started(&self) -> bool {
        *self.started.borrow()
    }

    /// Resolves once startup has finished.
    pub async fn wait_started(&self) {
        let mut rx = self.started.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_until_marked_and_clones_share_the_state() {
        let r = Readiness::pending();
        let clone = r.clone();
        assert!(!clone.is_started());
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait_started().await }
        });
        r.mark_started();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(clone.is_started());
        assert!(Readiness::started().is_started());
    }

    #[tokio::test]
    async fn a_started_service_is_not_ready_while_its_backend_does_not_answer() {
        use std::sync::atomic::Ordering;
        let (service, backend) = crate::service::testing::Recording::service();
        service.check_ready().await.unwrap();
        backend.down.store(true, Ordering::Relaxed);
        let err = service.check_ready().await.unwrap_err();
        assert!(matches!(err, crate::service::Error::NotReady(NotReady::Backend(_))), "{err:?}");
        assert_eq!(crate::api::status::to_status(&err).code(), tonic::Code::Unavailable);
        backend.down.store(false, Ordering::Relaxed);
        service.check_ready().await.unwrap();
    }
}
