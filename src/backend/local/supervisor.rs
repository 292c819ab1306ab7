//! Keeping one workload running: a task per deployment that watches its process and restarts it
//! (same launch, same port) with backoff when it dies, a bounded number of times per window.
//!
//! The process is either our child ([`Start::Owned`], awaited with `wait`) or one a previous
//! orchestrator started and this one adopted after a restart ([`Start::Adopted`]: not our child,
//! so it is watched by polling its [`Identity`]). A restart always yields an owned child, and
//! its identity goes to the [`Journal`] so the record is updated after every restart.
//!
//! A supervisor starts in probation when a deploy still has to see the workload become ready: a
//! death then ends supervision (the deploy fails) instead of restarting. [`Supervisor::confirm`]
//! ends probation; a compare-and-swap settles a death racing the confirmation.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::process::{self, Identity, Launch};
use super::HOST;
use crate::plan::DeploymentId;

/// How long a workload may take to stop after SIGTERM before it gets SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_RESTARTS: u32 = 10;
/// A workload that stayed up this long starts a fresh restart budget.
const STABLE: Duration = Duration::from_secs(60);
const ADOPTED_POLL: Duration = Duration::from_millis(250);

const PROBATION: u8 = 0;
const CONFIRMED: u8 = 1;
const EXITED: u8 = 2;

/// What the supervised workload is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Life {
    Running(Identity),
    /// It died; a restart follows after a backoff.
    Restarting {
        restarts: u32,
        reason: String,
    },
    /// It died during probation; not restarted.
    Exited(String),
    /// It kept dying; supervision ended.
    GaveUp(String),
    Stopped,
}

/// Where a supervisor reports what the record must remember.
#[async_trait]
pub(super) trait Journal: Send + Sync {
    /// A restart of `replica` (0: the workload; 1..: an extra) replaced `old` (if known) with `new`.
    async fn restarted(&self, id: &DeploymentId, replica: usize, old: Option<Identity>, new: Identity);
    /// Supervision of `replica` ended after repeated deaths; `last` was the last process.
    async fn gave_up(&self, id: &DeploymentId, replica: usize, last: Option<Identity>, reason: String);
    /// A process became ready or stopped being so (endpoint watchers look again).
    fn endpoints_changed(&self) {}
}

/// How supervision begins.
#[derive(Debug)]
pub(super) enum Start {
    Owned(Child, Identity),
    Adopted(Identity),
}

#[derive(Debug)]
pub(super) struct Supervisor {
    stop: CancellationToken,
    mode: Arc<AtomicU8>,
    life: watch::Receiver<Life>,
    /// The running process once it accepts connections on its port.
    ready: watch::Receiver<Option<Identity>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub(super) fn start(
        id: DeploymentId,
        launch: Launch,
        start: Start,
        confirmed: bool,
        journal: Weak<dyn Journal>,
    ) -> Supervisor {
        let identity = match &start {
            Start::Owned(_, i) | Start::Adopted(i) => i.clone(),
        };
        let (tx, life) = watch::channel(Life::Running(identity));
        let stop = CancellationToken::new();
        let mode = Arc::new(AtomicU8::new(if confirmed { CONFIRMED } else { PROBATION }));
        let ready = track_ready(launch.port, life.clone(), journal.clone());
        let run = Run { id, launch, stop: stop.clone(), mode: mode.clone(), life: tx, journal };
        let task = tokio::spawn(run.supervise(start));
        Supervisor { stop, mode, life, ready, task }
    }

    /// Ends probation; `false` when the workload already died in it.
    pub(super) fn confirm(&self) -> bool {
        match self.mode.compare_exchange(PROBATION, CONFIRMED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(CONFIRMED) => true,
            Err(_) => false,
        }
    }

    pub(super) fn life(&self) -> watch::Receiver<Life> {
        self.life.clone()
    }

    /// The process, while it runs.
    pub(super) fn running(&self) -> Option<Identity> {
        match &*self.life.borrow() {
            Life::Running(i) => Some(i.clone()),
            _ => None,
        }
    }

    /// The process, once it accepts connections on its port (a restarted one is not ready
    /// until it listens again).
    pub(super) fn ready(&self) -> Option<Identity> {
        self.ready.borrow().clone()
    }

    /// Stops the workload (SIGTERM to its group, SIGKILL after [`STOP_GRACE`]) and waits,
    /// bounded, for supervision to end.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE * 2 + Duration::from_secs(2), self.task).await.is_err() {
            tracing::warn!("a supervisor did not finish stopping its workload in time");
        }
    }

    /// SIGKILL to the workload's group right now, without waiting (for callers that cannot await).
    pub(super) fn kill_now(&self) {
        self.stop.cancel();
        if let Some(identity) = self.running() {
            identity.signal(Signal::SIGKILL);
        }
    }
}

struct Run {
    id: DeploymentId,
    launch: Launch,
    stop: CancellationToken,
    mode: Arc<AtomicU8>,
    life: watch::Sender<Life>,
    journal: Weak<dyn Journal>,
}

enum Ended {
    Exited(String),
    Stopped,
}

impl Run {
    /// Runs until stopped, until a death in probation, or until the restart budget is spent;
    /// each round of the loop ends in one of those or in a restart.
    async fn supervise(self, start: Start) {
        let mut current = Some(start);
        let mut last: Option<Identity> = None;
        let mut restarts = 0u32;
        loop {
            if let Some(start) = current.take() {
                let up = Instant::now();
                let identity = match &start {
                    Start::Owned(_, i) | Start::Adopted(i) => i.clone(),
                };
                last = Some(identity.clone());
                self.life.send_replace(Life::Running(identity));
                let exit = match self.watch(start).await {
                    Ended::Stopped => return self.stopped().await,
                    Ended::Exited(exit) => exit,
                };
                let reason = format!("{exit}: {}", log_tail(&self.launch.log()));
                if self.mode.compare_exchange(PROBATION, EXITED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.life.send_replace(Life::Exited(reason));
                    return;
                }
                if up.elapsed() >= STABLE {
                    restarts = 0;
                }
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return self.give_up(last, restarts - 1, reason).await;
                }
                tracing::warn!(deployment = %self.id, restarts, "local workload {reason}; restarting");
                self.life.send_replace(Life::Restarting { restarts, reason });
            }
            let backoff = Duration::from_millis(250 * 2u64.pow(restarts.min(7)));
            tokio::select! {
                () = self.stop.cancelled() => return self.stopped().await,
                () = tokio::time::sleep(backoff) => {}
            }
            match self.launch.spawn().await {
                Ok((child, identity)) => {
                    tracing::info!(deployment = %self.id, pid = identity.pid, "local workload restarted");
                    if let Some(journal) = self.journal.upgrade() {
                        journal.restarted(&self.id, self.launch.replica, last.clone(), identity.clone()).await;
                    }
                    current = Some(Start::Owned(child, identity));
                }
                Err(e) => {
                    restarts += 1;
                    let reason = super::error::Error::reason(&e);
                    if restarts > MAX_RESTARTS {
                        return self.give_up(last, restarts - 1, reason).await;
                    }
                    tracing::warn!(deployment = %self.id, restarts, "cannot restart local workload: {reason}");
                    self.life.send_replace(Life::Restarting { restarts, reason });
                }
            }
        }
    }

    /// Waits for the process to end, or stops it when asked.
    async fn watch(&self, start: Start) -> Ended {
        match start {
            Start::Owned(mut child, identity) => tokio::select! {
                () = self.stop.cancelled() => {
                    process::stop_child(&mut child, &identity, STOP_GRACE).await;
                    Ended::Stopped
                }
                status = child.wait() => Ended::Exited(match status {
                    Ok(s) => format!("exited with {s}"),
                    Err(e) => format!("could not be waited for: {e}"),
                }),
            },
            Start::Adopted(identity) => loop {
                tokio::select! {
                    () = self.stop.cancelled() => {
                        identity.stop(STOP_GRACE).await;
                        return Ended::Stopped;
                    }
                    () = tokio::time::sleep(ADOPTED_POLL) => {
                        if !identity.is_alive() {
                            return Ended::Exited("exited (adopted after a restart: its status is not ours to see)".into());
                        }
                    }
                }
            },
        }
    }

    async fn stopped(&self) {
        self.life.send_replace(Life::Stopped);
        process::remove_pidfile(&self.launch.dir).await;
    }

    async fn give_up(&self, last: Option<Identity>, restarts: u32, reason: String) {
        let reason = format!("kept exiting; gave up after {restarts} restarts: {reason}");
        tracing::error!(deployment = %self.id, "local workload {reason}");
        self.life.send_replace(Life::GaveUp(reason.clone()));
        if let Some(journal) = self.journal.upgrade() {
            journal.gave_up(&self.id, self.launch.replica, last, reason).await;
        }
    }
}

/// The last lines of a workload's log, for error messages (a Python traceback ends with the
/// exception; caret lines are skipped).
pub(super) fn log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 8 * 1024;
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).and_then(|_| f.read_to_end(&mut bytes));
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~')).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

const READY_POLL: Duration = Duration::from_millis(50);
/// How long a (re)started process may take to listen before it is no longer watched for it.
const READY_ROUNDS: u32 = 2400;

/// Follows a supervised process's life and says when it accepts connections on `port` (at
/// once for `port` 0), telling the journal about every change.
pub(super) fn track_ready(
    port: u16,
    mut life: watch::Receiver<Life>,
    journal: Weak<dyn Journal>,
) -> watch::Receiver<Option<Identity>> {
    let (tx, rx) = watch::channel(None);
    let publish = move |ready: Option<Identity>| {
        if tx.send_if_modified(|now| std::mem::replace(now, ready) != *now) {
            if let Some(j) = journal.upgrade() {
                j.endpoints_changed();
            }
        }
    };
    tokio::spawn(async move {
        loop {
            let current = life.borrow_and_update().clone();
            let mut relook = false;
            match current {
                Life::Running(identity) => {
                    let mut up = false;
                    for _ in 0..READY_ROUNDS {
                        if port == 0 || accepts(port).await {
                            up = true;
                            break;
                        }
                        tokio::select! {
                            changed = life.changed() => {
                                if changed.is_err() {
                                    publish(None);
                                    return;
                                }
                                relook = true;
                                break;
                            }
                            () = tokio::time::sleep(READY_POLL) => {}
                        }
                    }
                    publish(up.then_some(identity));
                }
                _ => publish(None),
            }
            if !relook && life.changed().await.is_err() {
                publish(None);
                return;
            }
        }
    });
    rx
}

pub(super) async fn accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect((HOST, port))).await,
        Ok(Ok(_))
    )
}
