//! The idle scaler: scales python-module deployments with an `idle-timeout` to zero once no call
//! has reached any of their module servers for that long.
//!
//! Idleness is measured where calls land: each ready module server's `Describe` reports
//! `idle_seconds` (since its last GetAttr or Call), so calls that bypass ModuleProxy (direct
//! access) keep a deployment awake as much as proxied ones. A deployment sleeps only when every
//! ready module server answered and each has been idle at least its timeout; any doubt (one not
//! answering, none ready) leaves it running until the next pass. On Kubernetes only the leader
//! scales, as only it reconciles.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, DeploymentRecord, Status};
use crate::pb::module_service_client::ModuleServiceClient;
use crate::pb::DescribeRequest;
use crate::proxy::CALL_TOKEN;
use crate::service::{parse_idle_timeout, PYTHON_MODULE};

/// Between passes: a timeout is honoured to within about this much.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// How long one module server may take to answer `Describe`.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The session the scaler's `Describe`s name (it holds no references).
const SESSION: &str = "jac-orc-idle-scaler";

/// The running scaler; [`IdleScaler::stop`] ends it.
#[derive(Debug)]
pub struct IdleScaler {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl IdleScaler {
    /// Starts passes every `period`; with `leading`, only while it says this replica leads.
    pub fn start(backend: Arc<dyn Backend>, period: Duration, leading: Option<watch::Receiver<bool>>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(backend, period, leading, stop.clone()));
        IdleScaler { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(DESCRIBE_TIMEOUT * 2, self.task).await.is_err() {
            abort.abort();
        }
    }
}

async fn run(
    backend: Arc<dyn Backend>,
    period: Duration,
    leading: Option<watch::Receiver<bool>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if leading.as_ref().is_some_and(|l| !*l.borrow()) {
            continue;
        }
        let records = match backend.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "idle scaler: cannot list deployments");
                continue;
            }
        };
        for record in records {
            if stop.is_cancelled() {
                return;
            }
            let Some(timeout) = idle_timeout(&record) else { continue };
            if let Err(e) = sweep_one(backend.as_ref(), &record, timeout).await {
                tracing::warn!(deployment = %record.id, error = %e, "idle scaler: could not scale to zero");
            }
        }
    }
}

/// The idle timeout of a deployed python-module deployment that has one.
fn idle_timeout(record: &DeploymentRecord) -> Option<Duration> {
    if record.id.module != PYTHON_MODULE || record.status != Status::Deployed {
        return None;
    }
    let value = record.config.get("idle-timeout").filter(|v| !matches!(v, Value::Null))?;
    if value.as_str().is_some_and(|s| s.trim().is_empty()) {
        return None;
    }
    match parse_idle_timeout(value) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::debug!(deployment = %record.id, error = %e, "idle scaler: unusable idle-timeout; never scaled");
            None
        }
    }
}

async fn sweep_one(backend: &dyn Backend, record: &DeploymentRecord, timeout: Duration) -> crate::backend::Result<()> {
    let Some(token) = record.config.get(CALL_TOKEN).and_then(Value::as_str) else { return Ok(()) };
    let endpoints = backend.module_endpoints(&record.id).await?;
    if endpoints.is_empty() {
        return Ok(());
    }
    let mut least = f64::INFINITY;
    for endpoint in &endpoints {
        match idle_seconds(endpoint, token).await {
            Ok(idle) => least = least.min(idle),
            Err(why) => {
                tracing::debug!(deployment = %record.id, %endpoint, %why, "idle scaler: no answer; left running");
                return Ok(());
            }
        }
    }
    if least < timeout.as_secs_f64() {
        return Ok(());
    }
    tracing::info!(deployment = %record.id, idle_seconds = least, timeout = ?timeout, "idle: scaling to zero");
    if backend.scale_to_zero(&record.id).await? {
        crate::metrics::global().scaled_to_zero(&format!("{}/{}", record.id.namespace, record.id.name));
    }
    Ok(())
}

/// `Describe`'s `idle_seconds` of one module server.
async fn idle_seconds(endpoint: &str, token: &str) -> Result<f64, String> {
    let ask = async {
        let mut client = ModuleServiceClient::connect(format!("http://{endpoint}")).await.map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(DescribeRequest { session: SESSION.into() });
        let bearer =
            format!("Bearer {token}").parse().map_err(|_| "the call token is not a header value".to_string())?;
        request.metadata_mut().insert("authorization", bearer);
        let answer = client.describe(request).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        Ok(answer.into_inner().idle_seconds)
    };
    tokio::time::timeout(DESCRIBE_TIMEOUT, ask).await.map_err(|_| "Describe timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::Kind;
    use crate::plan::DeploymentId;

    fn record(module: &str, status: Status, config: Value) -> DeploymentRecord {
        DeploymentRecord {
            id: DeploymentId { namespace: "default".into(), module: module.into(), name: "n".into() },
            version: "latest".into(),
            config: config.as_object().cloned().unwrap(),
            secret_keys: vec![],
            endpoints: vec![],
            status,
            message: String::new(),
            objects: vec![],
            backend: Kind::Local,
            updated_at: String::new(),
            wakeups: 0,
        }
    }

    #[test]
    fn only_deployed_python_modules_with_a_usable_timeout_are_scaled() {
        let with = |t: Value| record(PYTHON_MODULE, Status::Deployed, json!({ "idle-timeout": t }));
        assert_eq!(idle_timeout(&with(json!("3s"))), Some(Duration::from_secs(3)));
        assert_eq!(idle_timeout(&with(json!("10m"))), Some(Duration::from_secs(600)));
        assert_eq!(idle_timeout(&with(json!(90))), Some(Duration::from_secs(90)));
        assert_eq!(idle_timeout(&with(json!(""))), None, "empty: never");
        assert_eq!(idle_timeout(&with(Value::Null)), None);
        assert_eq!(idle_timeout(&with(json!("soon"))), None);
        assert_eq!(idle_timeout(&record(PYTHON_MODULE, Status::Deployed, json!({}))), None);
        assert_eq!(idle_timeout(&record(PYTHON_MODULE, Status::Idle, json!({"idle-timeout": "3s"}))), None);
        assert_eq!(idle_timeout(&record("redis", Status::Deployed, json!({"idle-timeout": "3s"}))), None);
    }
}
