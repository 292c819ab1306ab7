//! How a Python thread waits on the shared runtime: with the GIL released, off the runtime's
//! own threads, and checking for Ctrl-C between short slices (`runtime::SLICE`). Every blocking
//! call of the Python classes waits here, so an interrupt ends any of them the same way.
use std::future::Future;

use pyo3::prelude::*;
use tonic::Status;

use crate::client::{self, Connection};
use crate::runtime::{block_on_interruptible, rt};

/// Ctrl-C while detached: a pending signal handler that raises ends the wait.
fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}

/// Runs `f`, which blocks on a runtime, where that is allowed: here, or, on one of the shared
/// runtime's own threads (a spawned call's completion running Python that calls again), on a
/// short-lived thread of its own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// Runs `fut` on the shared runtime with the GIL released; Ctrl-C interrupts the wait.
pub(crate) fn wait_for<T: Send>(py: Python<'_>, fut: impl Future<Output = T> + Send) -> PyResult<T> {
    py.detach(|| off_runtime(|| block_on_interruptible(rt(), fut, check_signals)))
}

/// Runs one call with the GIL released, on a lane when one is free (see
/// `Connection::block_on_call`); Ctrl-C interrupts it.
pub(crate) fn wait_on_lane<T, F>(
    py: Python<'_>,
    connection: &Connection,
    make: impl FnOnce(tonic::transport::Channel, bool) -> F + Send,
) -> PyResult<Result<T, client::Error>>
where
    T: Send,
    F: Future<Output = Result<T, Status>> + Send,
{
    py.detach(|| off_runtime(|| connection.block_on_call(make, check_signals)))
}
