//! The one tokio runtime of the process, shared by clients and module servers.
use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<(u32, Runtime)> = OnceLock::new();

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
