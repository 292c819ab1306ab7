//! What can go wrong on the local backend, with the failed step in each message and the
//! underlying cause kept as the `#[source]`. `api/status.rs` gives every variant its code.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local machine cannot run this template version (e.g. `mongod` is not installed).
    #[error("{module} cannot run on the local backend: program `{program}` was not found on PATH{hint}")]
    MissingProgram { module: String, program: String, hint: String },
    /// The template version has no local recipe at all.
    #[error("{module} {version} has no local recipe (local.yaml), so the local backend cannot run it; deploy it to a Kubernetes cluster instead")]
    NoLocalRecipe { module: String, version: String },
    /// Another `jac-orc serve` holds the data directory.
    #[error("data dir {} is in use by another jac-orc ({}); stop it or pass another --data-dir", .dir.display(), holder(*.pid))]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock data dir {}", .dir.display())]
    Lock {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// A file system step failed (`what` names it: "create", "write", "remove", ...).
    #[error("cannot {what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {} is not valid", .path.display())]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {} has format {found}; this jac-orc reads formats up to {supported} (upgrade jac-orc)", .path.display())]
    StateFormat { path: PathBuf, found: u64, supported: u64 },
    #[error("state file {} names secret `{key}`, which the record does not hold", .path.display())]
    MissingSecret { path: PathBuf, key: String },
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
    #[error("a blocking file task failed")]
    Blocking(#[source] tokio::task::JoinError),
    #[error("no free port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),
    #[error("{object} failed: cannot start {program}")]
    Spawn {
        object: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The workload exited (or was reaped) before it became ready.
    #[error("{object} failed: {reason}")]
    Exited { object: String, reason: String },
    #[error("timed out after {}s waiting for readiness; still not ready: {object}", .timeout.as_secs())]
    NotReady { object: String, timeout: Duration },
    /// Creating the virtualenv or installing packages into it failed; `reason` is a short,
    /// fixed phrase (pip's own output stays in the deployment's `venv.log`).
    #[error("{object} failed: {step}: {reason}")]
    Venv { object: String, step: &'static str, reason: String },
    #[error("the local backend is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

impl Error {
    pub(super) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// The short reason shown in a `failed` progress event.
    pub(super) fn reason(&self) -> String {
        match self {
            Error::Exited { reason, .. } => reason.clone(),
            Error::Venv { step, reason, .. } => format!("{step}: {reason}"),
            other => {
                use std::fmt::Write;
                let mut text = other.to_string();
                let mut source = std::error::Error::source(other);
                for _ in 0..8 {
                    let Some(s) = source else { break };
                    let _ = write!(text, ": {s}");
                    source = s.source();
                }
                text
            }
        }
    }
}
