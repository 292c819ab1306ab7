//! Waiting until a workload answers: its process listens on its port (so a foreign process that
//! took the port does not count) and the port speaks the recipe's protocol check (TCP accept or
//! gRPC health SERVING). The wait ends early when the workload dies or when the caller has gone
//! (the workload keeps running; the outcome says readiness was not awaited), and is bounded by
//! the caller's timeout and a round count.

use std::time::Duration;

use tokio::sync::watch;

use super::error::{Error, Result};
use super::process;
use super::supervisor::Life;
use crate::backend::Progress;
use crate::plan::Readiness;

const MAX_DELAY: Duration = Duration::from_millis(250);
const FIRST_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ready,
    /// The caller left before the workload was ready; it keeps running.
    Abandoned,
}

impl Outcome {
    /// What the record says about readiness.
    pub(super) fn message(self) -> &'static str {
        match self {
            Outcome::Ready => "",
            Outcome::Abandoned => "readiness not awaited: the client disconnected",
        }
    }
}

/// What to check.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) port: u16,
    pub(super) readiness: &'a Readiness,
    /// `process.local.jac-orc/NAME`, for messages.
    pub(super) object: &'a str,
}

/// Waits for readiness. `strict`: the first process must become ready (a deploy); otherwise
/// supervised restarts along the way are fine (a restore).
pub(super) async fn wait(
    target: Target<'_>,
    life: &mut watch::Receiver<Life>,
    strict: bool,
    timeout: Duration,
    progress: &Progress,
) -> Result<Outcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    let rounds = timeout.as_millis() / FIRST_DELAY.as_millis() + 2;
    let mut delay = FIRST_DELAY;
    for _ in 0..rounds {
        if progress.is_caller_gone() {
            return Ok(Outcome::Abandoned);
        }
        let now = life.borrow_and_update().clone();
        match now {
            Life::Running(identity) => {
                if process::listens_on(identity.pid, target.port) && answers(target.port, target.readiness).await {
                    return Ok(Outcome::Ready);
                }
            }
            Life::Restarting { .. } if !strict => {}
            Life::Restarting { reason, .. } | Life::Exited(reason) | Life::GaveUp(reason) => {
                return Err(Error::Exited {
                    object: target.object.into(),
                    reason: format!("before it was ready: {reason}"),
                });
            }
            Life::Stopped => {
                return Err(Error::Exited {
                    object: target.object.into(),
                    reason: "stopped before it was ready".into(),
                });
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until((now + delay).min(deadline)) => {}
            () = progress.caller_gone() => {}
            _ = life.changed() => {}
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
    Err(Error::NotReady { object: target.object.into(), timeout })
}

async fn answers(port: u16, readiness: &Readiness) -> bool {
    match readiness {
        Readiness::Tcp => tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
        Readiness::GrpcHealth { service } => grpc_serving(port, service).await,
    }
}

async fn grpc_serving(port: u16, service: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect_timeout(Duration::from_millis(500)).connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest { service: service.to_string() };
    match tokio::time::timeout(Duration::from_secs(2), client.check(req)).await {
        Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}
