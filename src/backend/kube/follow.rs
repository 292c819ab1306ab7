//! A replica that does not lead never applies: its Deploy has written the desired state into
//! the `JacDeployment`, and this follows the leader's status until the leader has applied that
//! generation (and, with `--wait`, until the workloads are Ready or failed), then reports to the
//! caller what the leader did: the lines of the revision it applied, the other objects as
//! unchanged. Undeploy follows the resource until it is gone. Every wait is bounded.

use std::time::Duration;

use kube::runtime::wait::await_condition;
use kube::ResourceExt;

use super::conditions::{DEGRADED, READY};
use super::records::{record_of, split_config};
use super::resource::JacDeployment;
use super::sync::plan_digest;
use super::{KubeBackend, KubeError};
use crate::backend::{Action, DeploymentRecord, Error, ObjectEvent, Progress, Result};
use crate::plan::{ObjectRef, Plan};

/// Whether the leader has applied generation `generation` of `jd` (to `digest`), or failed it.
fn applied(jd: &JacDeployment, generation: i64, digest: &str) -> bool {
    let Some(status) = &jd.status else { return false };
    if status.observed_generation.unwrap_or(0) < generation {
        return false;
    }
    status.status == "failed" || status.applied_revision.as_ref().is_some_and(|r| r.digest == digest)
}

/// Whether the workloads settled: Ready, or a failure that waiting will not fix.
fn settled(jd: &JacDeployment) -> bool {
    jd.status.as_ref().is_some_and(|s| s.status == "failed" || s.is(READY) || s.is(DEGRADED))
}

/// The error a failed status stands for, as near to the leader's as its reason allows.
fn error_of(jd: &JacDeployment) -> Error {
    let status = jd.status.clone().unwrap_or_default();
    let object = format!("jacdeployment.jac-orc.io/{}", jd.name_any());
    let degraded = status.condition(DEGRADED);
    let reason = degraded.map(|c| c.reason.clone()).unwrap_or_default();
    // A workload that failed after the apply is told in Degraded (the status line stays
    // "deployed" with the apply's message): its message is what the caller needs.
    let message = match degraded.map(|c| c.message.clone()).filter(|m| !m.is_empty()) {
        Some(m) => m,
        None => status.message.clone(),
    };
    match reason.as_str() {
        "WorkloadFailed" => Error::WorkloadFailed { object, reason: message },
        "Rejected" | "InvalidSpec" | "RestrictedNamespace" => Error::Rejected { object, message },
        _ => KubeError::LeaderReported { object, reason, message }.into(),
    }
}

/// `before`: the resource's generation before the caller's write (`None`: it did not exist).
pub(crate) async fn deploy(
    backend: &KubeBackend,
    jd: &JacDeployment,
    before: Option<i64>,
    plan: &Plan,
    opts: &crate::backend::ApplyOptions,
    progress: &Progress,
) -> Result<DeploymentRecord> {
    let generation = jd.metadata.generation.unwrap_or(0);
    let digest = plan_digest(plan);
    let api = backend.records().api(&plan.id.namespace);
    let name = jd.name_any();
    let (_, secrets) = split_config(&plan.config, &plan.secret_keys);
    let waiting =
        ObjectEvent::new(resource_ref(jd), Action::Waiting).with_message("the leading orchestrator applies it");
    progress.send(waiting).await;
    let timeout = opts.wait.unwrap_or(backend.options.follow_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let seen = tokio::select! {
        seen = tokio::time::timeout_at(deadline, await_condition(api.clone(), &name, move |o: Option<&JacDeployment>| {
            o.is_some_and(|jd| applied(jd, generation, &digest))
        })) => seen,
        () = progress.caller_gone() => Ok(Ok(None)),
    };
    let current = match seen {
        Ok(Ok(Some(jd))) => jd,
        Ok(Ok(None)) => return Ok(record_of(jd, secrets)),
        Ok(Err(e)) => return Err(watch_failed(&name, "applied by the leader", e)),
        Err(_) => {
            tracing::info!(deployment = %plan.id, "the leader has not applied the deploy yet; it is recorded and will be");
            let mut record = record_of(jd, secrets);
            record.message = "accepted; the leading orchestrator has not applied it yet".into();
            return Ok(record);
        }
    };
    // Same generation as before the write: the spec did not change, so the leader applies
    // nothing and the revision on record is an earlier deploy's, not this one's.
    let unchanged = before == Some(generation);
    report_objects(&current, generation, unchanged, progress).await;
    if current.status.as_ref().is_some_and(|s| s.status == "failed") {
        return Err(error_of(&current));
    }
    let Some(wait) = opts.wait else {
        return Ok(record_of(&current, secrets));
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    let settled = tokio::select! {
        seen = tokio::time::timeout(remaining, await_condition(api, &name, |o: Option<&JacDeployment>| o.is_some_and(settled))) => seen,
        () = progress.caller_gone() => return Ok(record_of(&current, secrets)),
    };
    match settled {
        Ok(Ok(Some(jd))) if jd.status.as_ref().is_some_and(|s| s.is(READY)) => {
            progress.send(ObjectEvent::new(resource_ref(&jd), Action::Ready)).await;
            let mut record = record_of(&jd, secrets);
            record.message = "ready".into();
            Ok(record)
        }
        Ok(Ok(Some(jd))) => Err(error_of(&jd)),
        Ok(Ok(None)) => Err(Error::NotFound(plan.id.clone())),
        Ok(Err(e)) => Err(watch_failed(&name, "Ready", e)),
        Err(_) => {
            let not_ready = current.status.as_ref().and_then(|s| s.condition(READY)).map(|c| c.message.clone());
            Err(Error::Timeout { timeout: wait, not_ready: not_ready.into_iter().collect() })
        }
    }
}

/// What the leader did to each object, from the revision it recorded for `generation`.
async fn report_objects(jd: &JacDeployment, generation: i64, unchanged: bool, progress: &Progress) {
    let Some(status) = &jd.status else { return };
    let changes: Vec<&str> = status
        .applied_revision
        .iter()
        .filter(|r| r.generation == generation && !unchanged)
        .flat_map(|r| r.changes.iter().map(String::as_str))
        .collect();
    for entry in &status.inventory {
        let object = ObjectRef::from(entry);
        let name = object.kubectl_name();
        let action = changes
            .iter()
            .find_map(|line| line.strip_prefix(name.as_str()).and_then(|rest| rest.strip_prefix(' ')))
            .map(|a| match a {
                "created" => Action::Created,
                _ => Action::Configured,
            })
            .unwrap_or(Action::Unchanged);
        progress.send(ObjectEvent::new(object, action)).await;
    }
}

/// Follows an undeploy the leader performs (the resource was deleted): until it is gone.
pub(crate) async fn undeploy(backend: &KubeBackend, jd: &JacDeployment, progress: &Progress) -> Result<()> {
    let ns = jd.namespace().unwrap_or_default();
    let name = jd.name_any();
    let uid = jd.uid().unwrap_or_default();
    let api = backend.records().api(&ns);
    let gone = kube::runtime::wait::conditions::is_deleted::<JacDeployment>(&uid);
    match tokio::time::timeout(backend.options.follow_timeout, await_condition(api, &name, gone)).await {
        Ok(Ok(_)) => {
            for entry in jd.status.iter().flat_map(|s| s.inventory.iter()).rev() {
                progress.send(ObjectEvent::new(ObjectRef::from(entry), Action::Deleted)).await;
            }
            Ok(())
        }
        Ok(Err(e)) => Err(watch_failed(&name, "deleted", e)),
        Err(_) => {
            tracing::info!(jacdeployment = %name, namespace = %ns, "deletion accepted; the leading orchestrator has not finished it yet");
            Ok(())
        }
    }
}

fn watch_failed(name: &str, condition: &'static str, e: kube::runtime::wait::Error) -> Error {
    KubeError::Watch { object: format!("jacdeployment.jac-orc.io/{name}"), condition, source: Box::new(e) }.into()
}

fn resource_ref(jd: &JacDeployment) -> ObjectRef {
    ObjectRef {
        api_version: "jac-orc.io/v1alpha1".into(),
        kind: "JacDeployment".into(),
        name: jd.name_any(),
        namespace: jd.namespace(),
        section: crate::plan::Section::Modules,
        file: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::Status;

    fn jd(status: serde_json::Value) -> JacDeployment {
        let mut jd = JacDeployment::new("x", serde_json::from_value(json!({"module": "redis"})).unwrap());
        jd.metadata.generation = Some(2);
        jd.status = Some(serde_json::from_value(status).unwrap());
        jd
    }

    #[test]
    fn a_generation_is_applied_once_its_revision_or_its_failure_is_recorded() {
        let rev = json!({"revision": 1, "generation": 2, "version": "latest", "digest": "sha256:a", "time": "t"});
        assert!(applied(
            &jd(json!({"observedGeneration": 2, "status": "deployed", "appliedRevision": rev})),
            2,
            "sha256:a"
        ));
        assert!(!applied(
            &jd(json!({"observedGeneration": 1, "status": "deployed", "appliedRevision": rev})),
            2,
            "sha256:a"
        ));
        assert!(!applied(
            &jd(json!({"observedGeneration": 2, "status": "deployed", "appliedRevision": rev})),
            2,
            "sha256:b"
        ));
        assert!(applied(&jd(json!({"observedGeneration": 2, "status": "failed"})), 2, "sha256:b"));
        let failed = jd(json!({"status": "failed", "message": "m", "conditions": [
            {"type": "Degraded", "status": "True", "reason": "Conflict", "lastTransitionTime": "t"}]}));
        assert!(matches!(error_of(&failed), Error::Kube(KubeError::LeaderReported { .. })));
        assert_eq!(record_of(&failed, Default::default()).status, Status::Deploying, "no observedGeneration");
    }
}
