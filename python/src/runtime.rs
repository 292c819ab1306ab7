//! The one tokio runtime of the process, shared by clients and module servers, and the way a
//! blocking caller waits on a future while still reacting to interruptions (Ctrl-C).
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<(u32, Runtime)> = OnceLock::new();

/// How long a blocked caller waits before checking for an interruption again.
pub const SLICE: Duration = Duration::from_millis(100);

/// Returns the shared runtime, building it on first use.
///
/// # Panics
/// If called in a child process after `fork()`: a forked child inherits the runtime's memory but
/// not its threads, so it could never make progress.
pub fn rt() -> &'static Runtime {
    let (pid, runtime) = RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("jac-splice")
            .enable_all()
            .build()
            .expect("jac-splice: cannot build the tokio runtime");
        (std::process::id(), runtime)
    });
    assert_eq!(
        *pid,
        std::process::id(),
        "jac-splice: the runtime was created before fork(); create clients and servers in the child process"
    );
    runtime
}

/// Something that runs a future to completion on the calling thread: the shared runtime, or a
/// client lane's own runtime.
pub trait Driver {
    fn drive<F: Future>(&self, fut: F) -> F::Output;
}

impl Driver for Runtime {
    fn drive<F: Future>(&self, fut: F) -> F::Output {
        self.block_on(fut)
    }
}

/// Runs `fut` on `driver`, calling `interrupt` every `SLICE` while it is pending; an error from
/// `interrupt` abandons (drops) `fut` and is returned.
pub fn block_on_interruptible<D: Driver + ?Sized, F: Future, E>(
    driver: &D,
    fut: F,
    mut interrupt: impl FnMut() -> Result<(), E>,
) -> Result<F::Output, E> {
    let mut fut = std::pin::pin!(fut);
    loop {
        match driver.drive(async { tokio::time::timeout(SLICE, &mut fut).await }) {
            Ok(value) => return Ok(value),
            Err(_) => interrupt()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_never_interrupts() {
        let out = block_on_interruptible(rt(), async { 7 }, || -> Result<(), ()> { panic!("no slice passed") });
        assert_eq!(out, Ok(7));
    }

    #[test]
    fn an_interruption_abandons_a_pending_future() {
        let mut checks = 0;
        let out = block_on_interruptible(rt(), std::future::pending::<()>(), || {
            checks += 1;
            if checks == 3 {
                Err("interrupted")
            } else {
                Ok(())
            }
        });
        assert_eq!((out, checks), (Err("interrupted"), 3));
    }
}
