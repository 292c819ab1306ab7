//! How long a module server has gone without a call, for the orchestrator's idle scaler
//! (`DescribeResponse.idle_seconds`). Only `GetAttr` and `Call` count: `Describe` is how the
//! scaler asks, and an empty `Release` is a client's heartbeat, so neither keeps a deployment
//! awake. Measured here, where calls land, so direct callers count as much as proxied ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LastCall {
    started: Instant,
    /// Milliseconds after `started` of the last call's start or end (0: none yet).
    at_ms: AtomicU64,
    /// Calls running now: a deployment busy with one long call is not idle.
    running: AtomicU64,
}

/// One call in flight; its end counts as activity too.
#[derive(Debug)]
pub struct InFlight<'a>(&'a LastCall);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.mark();
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LastCall {
    pub fn new() -> Self {
        LastCall { started: Instant::now(), at_ms: AtomicU64::new(0), running: AtomicU64::new(0) }
    }

    /// A call starts; it ends when the returned guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.mark();
        InFlight(self)
    }

    fn mark(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Since the last call, or since the server started when none came yet.
    pub fn idle(&self) -> Duration {
        if self.running.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idleness_counts_from_the_start_and_restarts_at_each_call() {
        let last = LastCall::new();
        std::thread::sleep(Duration::from_millis(300));
        assert!(last.idle() >= Duration::from_millis(300), "idle since the start");
        let call = last.begin();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(last.idle(), Duration::ZERO, "not idle while a call runs");
        drop(call);
        assert!(last.idle() < Duration::from_millis(300), "the call's end resets it: {:?}", last.idle());
    }
}
