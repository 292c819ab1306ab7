//! Lanes: connections driven by the thread that calls through them.
//!
//! A lane is its own single-threaded runtime and one HTTP/2 connection. A call writes, waits in
//! `epoll` and reads on the calling thread, with no hand-off to runtime worker threads, and the
//! module server runs a lane's call on that connection's own thread (`wire::LANE_HEADER`). One
//! call at a time uses a lane; concurrent callers take further lanes (like one socket per
//! thread), up to `MAX_BUSY_LANES`; callers beyond that share the pooled channels, where HTTP/2
//! carries many calls per segment and the server runs them on its pool (fewer segments,
//! wake-ups and server threads per call than a lane each).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::coalesce::Connector;
use crate::runtime::Driver;

/// Calls in flight on lanes at once, per endpoint.
pub const MAX_BUSY_LANES: usize = 2;
/// Idle lanes kept per endpoint: as many as can be busy, so a steady set of callers always finds one.
const MAX_IDLE_LANES: usize = MAX_BUSY_LANES;
/// A lane idle for longer first lets its connection notice a close (e.g. a restarted server),
/// so the call redials instead of failing on the dead connection.
const STALE_AFTER: Duration = Duration::from_millis(50);

/// A lane could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot build a lane's runtime")]
pub struct Error(#[source] std::io::Error);

/// One connection and the runtime that drives it, owned by one call at a time.
#[derive(Debug)]
pub struct Lane {
    channel: Channel,
    runtime: Option<tokio::runtime::Runtime>,
    idle_since: Instant,
}

impl Lane {
    fn new(endpoint: &Endpoint, connector: &Connector) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error)?;
        let channel = {
            let _guard = runtime.enter();
            endpoint.connect_with_connector_lazy(connector.clone())
        };
        Ok(Self { channel, runtime: Some(runtime), idle_since: Instant::now() })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs `fut` to completion on this thread (the caller must not be inside a runtime).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        let runtime = self.runtime.as_ref().expect("a lane always has its runtime");
        runtime.block_on(fut)
    }

    fn refresh_if_stale(&self) {
        if self.idle_since.elapsed() > STALE_AFTER {
            // Two scheduler turns: the connection task reads whatever arrived while idle.
            self.block_on(async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            });
        }
    }
}

impl Driver for Lane {
    fn drive<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.block_on(fut)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so a lane may be dropped anywhere (even inside another runtime).
            runtime.shutdown_background();
        }
    }
}

/// The lanes of one endpoint: idle ones kept for reuse, and a count of busy ones.
#[derive(Debug)]
pub struct Lanes {
    endpoint: Endpoint,
    connector: Connector,
    busy: AtomicUsize,
    idle: Mutex<Vec<Lane>>,
    /// Set by `close`: no lane is handed out or kept any more.
    closed: AtomicBool,
}

impl Lanes {
    /// `endpoint` should send no HTTP/2 pings: a module server runs a lane's call on the
    /// connection's thread and answers pings only between calls. A dead server still shows as a
    /// closed connection (and TCP keepalive covers a silent peer).
    pub fn new(endpoint: Endpoint, connector: Connector) -> Self {
        Self {
            endpoint,
            connector,
            busy: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Drops the idle lanes (closing their connections); lanes in use are dropped when handed
    /// back, and `take` hands out none from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(idle);
    }

    /// An idle lane (the most recently used one) or a new one; `None` when `MAX_BUSY_LANES`
    /// calls already run on lanes. Every lane taken must be handed back with `put`.
    pub fn take(&self) -> Result<Option<Lane>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        let busy = self.busy.fetch_add(1, Ordering::AcqRel);
        if busy >= MAX_BUSY_LANES {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lane = match idle {
            Some(lane) => {
                lane.refresh_if_stale();
                Ok(lane)
            }
            None => Lane::new(&self.endpoint, &self.connector),
        };
        if lane.is_err() {
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
        lane.map(Some)
    }

    /// Returns a lane after a call.
    /// Gives back a lane that must carry no further call: its connection is dropped.
    pub fn discard(&self, lane: Lane) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        drop(lane);
    }

    pub fn put(&self, mut lane: Lane) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        lane.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_LANES && !self.closed.load(Ordering::Acquire) {
            idle.push(lane);
        } else {
            drop(idle);
            drop(lane);
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    use super::*;

    fn lanes() -> Lanes {
        // Lanes connect lazily: nothing listens here and nothing is dialled by these tests.
        let endpoint = Endpoint::from_static("http://127.0.0.1:9");
        Lanes::new(endpoint, Connector::new(Duration::from_secs(5)))
    }

    #[test]
    fn at_most_max_busy_lanes_are_handed_out_at_once() {
        let lanes = lanes();
        let taken: Vec<Lane> = (0..MAX_BUSY_LANES).map(|_| lanes.take().unwrap().expect("a free lane")).collect();
        assert!(lanes.take().unwrap().is_none(), "one lane more than MAX_BUSY_LANES");
        for lane in taken {
            lanes.put(lane);
        }
        assert!(lanes.take().unwrap().is_some(), "a returned lane frees its place");
    }

    #[test]
    fn a_returned_lane_is_reused_and_idle_lanes_are_bounded() {
        let lanes = lanes();
        let first = lanes.take().unwrap().unwrap();
        lanes.put(first);
        assert_eq!(lanes.idle_count(), 1);
        // The idle lane comes back (not a new one): the pool is empty again while it is out.
        let again = lanes.take().unwrap().unwrap();
        assert_eq!(lanes.idle_count(), 0);
        lanes.put(again);
        // However many lanes were made, no more than MAX_IDLE_LANES stay idle.
        let many: Vec<Lane> = (0..MAX_BUSY_LANES).map(|_| lanes.take().unwrap().unwrap()).collect();
        for lane in many {
            lanes.put(lane);
        }
        assert!(lanes.idle_count() <= MAX_IDLE_LANES);
    }

    #[test]
    fn closed_lanes_hand_out_none_and_keep_none() {
        let lanes = lanes();
        let out = lanes.take().unwrap().unwrap();
        lanes.put(lanes.take().unwrap().unwrap());
        lanes.close();
        assert_eq!(lanes.idle_count(), 0, "idle lanes are dropped");
        assert!(lanes.take().unwrap().is_none());
        lanes.put(out);
        assert_eq!(lanes.idle_count(), 0, "a lane handed back after close is dropped");
    }

    #[test]
    fn concurrent_callers_never_hold_more_than_max_busy_lanes() {
        const THREADS: usize = 8;
        let lanes = Arc::new(lanes());
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (lanes, holding, most, start) = (lanes.clone(), holding.clone(), most.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut got = 0;
                    for _ in 0..200 {
                        if let Some(lane) = lanes.take().unwrap() {
                            got += 1;
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            holding.fetch_sub(1, Ordering::SeqCst);
                            lanes.put(lane);
                        }
                    }
                    got
                })
            })
            .collect();
        let got: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(got > 0);
        assert!(most.load(Ordering::SeqCst) <= MAX_BUSY_LANES, "{} lanes at once", most.load(Ordering::SeqCst));
        // Every lane came back: the whole budget is free again.
        let all: Vec<Lane> = (0..MAX_BUSY_LANES).map(|_| lanes.take().unwrap().expect("a free lane")).collect();
        assert_eq!(all.len(), MAX_BUSY_LANES);
    }

    #[test]
    fn a_lane_can_be_dropped_inside_another_runtime() {
        let lanes = lanes();
        let lane = lanes.take().unwrap().unwrap();
        let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Dropping a runtime inside a runtime panics unless it shuts down in the background.
        outer.block_on(async move { drop(lane) });
    }
}
