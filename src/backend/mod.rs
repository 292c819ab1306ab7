//! Where deployments run. One trait, two implementations: `local` (child processes on this
//! machine, the embedded default) and `kube` (server-side apply against a Kubernetes API).
//!
//! Backends own their deployment records (local: a JSON state file; kube: one labelled Secret
//! per deployment), so a restarted orchestrator lists exactly what exists.

pub mod endpoints;
pub mod history;
pub mod kube;
pub mod local;
pub mod logs;
pub mod progress;
pub mod rollout;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::{DeploymentId, ObjectRef, Plan};
pub use history::Revision;
pub use logs::{LogLine, LogOptions, LogStream};
pub use progress::{Action, ObjectEvent, Progress};

/// Value shown instead of a secret placeholder's value in Get/List.
pub const REDACTED: &str = "<redacted>";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What only the local backend can fail at (a missing program, its data dir, its processes).
    #[error(transparent)]
    Local(#[from] local::Error),
    /// What only the Kubernetes backend can fail at (conflicts, RBAC, an unreachable API).
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    /// The API server (or the local backend's validation) rejected an object.
    #[error("{object} was rejected: {message}")]
    Rejected { object: String, message: String },
    /// A plan outside the orchestrator's namespace in restricted mode (the service layer's
    /// rule, checked again by the backend).
    #[error("{object}: {source}")]
    Restricted {
        object: String,
        #[source]
        source: crate::identity::Error,
    },
    #[error("deployment {0} not found")]
    NotFound(DeploymentId),
    /// A workload failed to become ready (ImagePullBackOff, process exited, ...).
    #[error("{object} failed: {reason}")]
    WorkloadFailed { object: String, reason: String },
    #[error("the {backend} backend cannot scale deployment {id} to zero")]
    CannotScaleToZero { id: DeploymentId, backend: &'static str },
    #[error("timed out after {}s waiting for readiness; still not ready: {}", .timeout.as_secs(), .not_ready.join(", "))]
    Timeout { timeout: Duration, not_ready: Vec<String> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a deployment currently stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DeploymentStatus)]
pub enum Status {
    Deploying,
    Deployed,
    Failed,
    /// Scaled to zero after its idle timeout: no workload runs, the record (and, on
    /// Kubernetes, the Service) stays, and the next call wakes it ([`Backend::wake`]).
    Idle,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Deploying => "deploying",
            Status::Deployed => "deployed",
            Status::Failed => "failed",
            Status::Idle => "idle (scaled to zero)",
        }
    }
}

/// Which backend runs a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Backend)]
pub enum Kind {
    /// Child processes on the orchestrator's machine.
    Local,
    /// Server-side apply against a Kubernetes API.
    Kubernetes,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Kubernetes => "kubernetes",
        }
    }
}

/// What the orchestrator remembers of a deployment. `config` holds secret values; callers that
/// return it to users go through [`DeploymentRecord::redacted_config`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: DeploymentId,
    pub version: String,
    pub config: Map<String, Value>,
    #[serde(default)]
    pub secret_keys: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub status: Status,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
    pub backend: Kind,
    /// RFC 3339.
    pub updated_at: String,
    /// Times it was woken from zero (a python-module deployment with an idle timeout).
    #[serde(default)]
    pub wakeups: u64,
}

impl DeploymentRecord {
    pub fn redacted_config(&self) -> Map<String, Value> {
        self.config
            .iter()
            .map(|(k, v)| {
                let v = if self.secret_keys.contains(k) { Value::String(REDACTED.into()) } else { v.clone() };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Options of one apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Wait for readiness; `None` returns once every object is applied.
    pub wait: Option<Duration>,
    pub force_conflicts: bool,
    /// Kubernetes: heal drift (`Some(false)`: only report it); `None` keeps the deployment's
    /// setting. The local backend always restarts what died.
    pub self_heal: Option<bool>,
    /// Report what the apply would do and change nothing: no object, process or record is
    /// written (kube: every apply with `dryRun=All`; local: compared with the recorded objects).
    /// The returned record is the one a real apply would store, with [`DRY_RUN`] as its message.
    pub dry_run: bool,
}

/// The message of the record a dry run returns (it is never stored).
pub const DRY_RUN: &str = "dry run: nothing was applied or recorded";

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    fn kind(&self) -> Kind;

    /// Checks, before anything is applied, that this backend can run the plan at all, so a
    /// deployment that cannot work leaves nothing half-applied.
    async fn preflight(&self, plan: &Plan) -> Result<()>;

    /// Applies the plan, reporting each object through `progress` as it is applied, and stores
    /// the record (status `Failed` with the reason when an object fails; the error is returned).
    async fn apply(&self, plan: &Plan, opts: &ApplyOptions, progress: &Progress) -> Result<DeploymentRecord>;

    /// Removes everything the deployment created, reporting each object, then its record.
    async fn delete(&self, id: &DeploymentId, progress: &Progress) -> Result<()>;

    async fn get(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>>;

    async fn list(&self) -> Result<Vec<DeploymentRecord>>;

    /// Answers when the backend can serve requests (readiness). By default a listing; backends
    /// whose listing is costly or needs more permission than serving does say so cheaper.
    async fn check_reachable(&self) -> Result<()> {
        self.list().await.map(|_| ())
    }

    /// The deployment's revisions, oldest first (empty for one never deployed).
    async fn history(&self, id: &DeploymentId) -> Result<Vec<Revision>>;

    /// Appends a revision ([`history::push`]: numbered, the newest `limit` kept) to the
    /// deployment's history and returns it as stored.
    async fn record_revision(&self, id: &DeploymentId, revision: Revision, limit: usize) -> Result<Revision>;

    /// gRPC endpoints (`host:port`) of a python-module deployment's ready module servers.
    async fn module_endpoints(&self, id: &DeploymentId) -> Result<Vec<String>>;

    /// The ready module servers of a python-module deployment as they change (see
    /// [`endpoints::EndpointStream`]); `None` when this backend cannot watch them (the proxy
    /// then asks [`Backend::module_endpoints`]).
    fn watch_endpoints(&self, _id: &DeploymentId) -> Option<endpoints::EndpointStream> {
        None
    }

    /// Scales a deployed python-module deployment to zero (local: its processes stop; kube: its
    /// Deployment goes to 0 replicas), keeping its record, port or Service, and recorded
    /// replicas. `false` when it was not deployed (already idle, deploying, failed).
    async fn scale_to_zero(&self, id: &DeploymentId) -> Result<bool> {
        Err(Error::CannotScaleToZero { id: id.clone(), backend: self.kind().as_str() })
    }

    /// Brings an idle deployment back to its recorded replicas and waits (within `wait`) until
    /// one serves, counting the wake-up. Concurrent wakes of one deployment make one wake-up:
    /// the others find it awake. `false` when it was not idle (nothing done).
    async fn wake(&self, id: &DeploymentId, wait: Duration) -> Result<bool> {
        let _ = wait;
        Err(Error::CannotScaleToZero { id: id.clone(), backend: self.kind().as_str() })
    }
    /// The log lines of the deployment's workloads: the last `opts.tail` of each source, then,
    /// with `opts.follow`, new ones as they are written, until the stream is dropped.
    /// [`Error::NotFound`] for a deployment this backend has no record of.
    async fn logs(&self, id: &DeploymentId, opts: &LogOptions) -> Result<LogStream>;

    /// Stops background work (child processes keep running only if the backend says so).
    async fn shutdown(&self) {}
}

/// Current time as RFC 3339 (UTC, seconds), without pulling in a date crate.
pub fn now_rfc3339() -> String {
    rfc3339_after(std::time::Duration::ZERO)
}

/// The time `after` from now as RFC 3339 (UTC, seconds).
pub fn rfc3339_after(after: std::time::Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = (now + after).as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_correct() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
