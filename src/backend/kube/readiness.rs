//! Waiting for a deployment's workloads: Deployments available, StatefulSets ready, Pods Ready,
//! custom resources Running/Ready, CRDs Established.
//!
//! Polls every [`POLL`] (bounded by the caller's timeout and a round count), reporting `waiting`
//! whenever an object's state text changes and `ready` once. Pods in a state that will not heal
//! by waiting (ImagePullBackOff, CrashLoopBackOff, unschedulable, …) fail the wait at the next
//! poll after they appear, instead of running into the timeout.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::conditions::Readiness;
use super::discovery::{gvk_of, Resolver};
use crate::backend::{Action, Error, ObjectEvent, Progress, Result};
use crate::plan::{Kind, ObjectRef};

const POLL: Duration = Duration::from_millis(500);

/// Container waiting reasons that waiting longer will not fix.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
    "CreateContainerError",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ready,
    /// The client stopped listening; readiness is unknown.
    Abandoned,
}

impl Outcome {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::Abandoned => "readiness not awaited: the client disconnected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Ready,
    Waiting(String),
    Failed(String),
}

/// Whether an object's readiness is worth waiting for, and how.
fn is_target(o: &ObjectRef) -> bool {
    [Kind::DEPLOYMENT, Kind::STATEFUL_SET, Kind::POD, Kind::CRD].into_iter().any(|k| o.is(k))
        || !is_builtin_group(o.group())
}

fn is_builtin_group(group: &str) -> bool {
    matches!(group, "" | "apps" | "batch" | "policy" | "autoscaling" | "extensions") || group.ends_with(".k8s.io")
}

pub(crate) async fn wait(
    client: &kube::Client,
    resolver: &Resolver,
    objects: &[ObjectRef],
    timeout: Duration,
    progress: &Progress,
) -> Result<Outcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<(ObjectRef, Option<String>)> =
        objects.iter().filter(|o| is_target(o)).map(|o| (o.clone(), None)).collect();
    let max_rounds = timeout.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_rounds {
        if progress.is_caller_gone() {
            return Ok(Outcome::Abandoned);
        }
        let mut still = Vec::with_capacity(pending.len());
        for (object, last) in pending {
            match check(client, resolver, &object).await {
                State::Ready => progress.send(ObjectEvent::new(object, Action::Ready)).await,
                State::Waiting(msg) => {
                    if last.as_deref() != Some(msg.as_str()) {
                        progress
                            .send(ObjectEvent::new(object.clone(), Action::Waiting).with_message(msg.clone()))
                            .await;
                    }
                    still.push((object, Some(msg)));
                }
                State::Failed(reason) => {
                    progress.send(ObjectEvent::new(object.clone(), Action::Failed).with_message(reason.clone())).await;
                    return Err(Error::WorkloadFailed { object: object.kubectl_name(), reason });
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(Outcome::Ready);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + POLL).min(deadline)).await;
    }
    Err(Error::Timeout { timeout, not_ready: pending.iter().map(|(o, _)| o.kubectl_name()).collect() })
}

/// One look at every workload, without waiting: what the reconcile loop records between looks.
pub(crate) async fn snapshot(client: &kube::Client, resolver: &Resolver, objects: &[ObjectRef]) -> Readiness {
    let mut waiting = Vec::new();
    for o in objects.iter().filter(|o| is_target(o)) {
        match check(client, resolver, o).await {
            State::Ready => {}
            State::Waiting(_) => waiting.push(o.kubectl_name()),
            State::Failed(reason) => return Readiness::Failed(format!("{}: {reason}", o.kubectl_name())),
        }
    }
    if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::Waiting(waiting)
    }
}

/// One look at one object. API failures count as "still waiting": a blip must not fail a deploy.
async fn check(client: &kube::Client, resolver: &Resolver, o: &ObjectRef) -> State {
    match try_check(client, resolver, o).await {
        Ok(state) => state,
        Err(e) => State::Waiting(format!("cannot read status: {e}")),
    }
}

async fn try_check(client: &kube::Client, resolver: &Resolver, o: &ObjectRef) -> Result<State, kube::Error> {
    let ns = o.namespace.as_deref().unwrap_or("default");
    let missing = || State::Waiting("not found".into());
    match o.gvk() {
        gvk if gvk.is(Kind::DEPLOYMENT) => {
            let Some(d) = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(&o.name).await? else {
                return Ok(missing());
            };
            let state = deployment_state(&d);
            pods_or(client, ns, d.spec.as_ref().map(|s| &s.selector), state).await
        }
        gvk if gvk.is(Kind::STATEFUL_SET) => {
            let Some(s) = Api::<StatefulSet>::namespaced(client.clone(), ns).get_opt(&o.name).await? else {
                return Ok(missing());
            };
            let state = statefulset_state(&s);
            pods_or(client, ns, s.spec.as_ref().map(|s| &s.selector), state).await
        }
        gvk if gvk.is(Kind::POD) => {
            let Some(p) = Api::<Pod>::namespaced(client.clone(), ns).get_opt(&o.name).await? else {
                return Ok(missing());
            };
            Ok(pod_state(&p))
        }
        gvk if gvk.is(Kind::CRD) => {
            let Some(c) = Api::<CustomResourceDefinition>::all(client.clone()).get_opt(&o.name).await? else {
                return Ok(missing());
            };
            let established = c
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(if established { State::Ready } else { State::Waiting("not Established".into()) })
        }
        _ => {
            let Some((ar, caps)) = resolver.resolve(&gvk_of(o)).await? else {
                return Ok(State::Waiting("kind not served".into()));
            };
            let api: Api<kube::api::DynamicObject> = match caps.scope {
                kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
                kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            let Some(obj) = api.get_opt(&o.name).await? else {
                return Ok(missing());
            };
            Ok(custom_state(obj.data.get("status")))
        }
    }
}

/// A workload's own state, unless one of its pods is stuck in a fatal state.
async fn pods_or(
    client: &kube::Client,
    ns: &str,
    selector: Option<&LabelSelector>,
    state: State,
) -> Result<State, kube::Error> {
    if state == State::Ready {
        return Ok(state);
    }
    let Some(labels) = selector.and_then(|s| s.match_labels.as_ref()).filter(|l| !l.is_empty()) else {
        return Ok(state);
    };
    let selector = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .iter()
        .find_map(|p| {
            pod_failure(p).map(|r| State::Failed(format!("pod {}: {r}", p.metadata.name.as_deref().unwrap_or("?"))))
        })
        .unwrap_or(state))
}

/// kubectl rollout status's rules.
pub(crate) fn deployment_state(d: &Deployment) -> State {
    let Some(status) = &d.status else {
        return State::Waiting("waiting for the rollout to start".into());
    };
    if let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing") {
        if c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return State::Failed(format!("ProgressDeadlineExceeded: {}", c.message.as_deref().unwrap_or_default()));
        }
    }
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return State::Waiting("waiting for the rollout to be observed".into());
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        State::Waiting(format!("{updated} of {want} updated replicas"))
    } else if total > updated {
        State::Waiting(format!("{} old replicas pending termination", total - updated))
    } else if available < updated {
        State::Waiting(format!("{available} of {updated} updated replicas available"))
    } else {
        State::Ready
    }
}

pub(crate) fn statefulset_state(s: &StatefulSet) -> State {
    let Some(status) = &s.status else {
        return State::Waiting("waiting for status".into());
    };
    if status.observed_generation.unwrap_or(0) < s.metadata.generation.unwrap_or(0) {
        return State::Waiting("waiting for the rollout to be observed".into());
    }
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < want {
        State::Waiting(format!("{ready} of {want} replicas ready"))
    } else {
        State::Ready
    }
}

pub(crate) fn pod_state(p: &Pod) -> State {
    if let Some(reason) = pod_failure(p) {
        return State::Failed(reason);
    }
    let Some(status) = &p.status else {
        return State::Waiting("Pending".into());
    };
    if status.phase.as_deref() == Some("Failed") {
        return State::Failed(format!(
            "pod failed: {}",
            status.message.as_deref().or(status.reason.as_deref()).unwrap_or("no reason given")
        ));
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        State::Ready
    } else {
        State::Waiting(status.phase.clone().unwrap_or_else(|| "Pending".into()))
    }
}

/// How much of a container's last termination message a failure quotes.
const LAST_MESSAGE: usize = 1500;

/// The last `max` bytes of `text`, on a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Why a pod will not become ready by itself, if it will not.
pub(crate) fn pod_failure(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(reason) = w.reason.as_deref().filter(|r| FATAL_WAITING.contains(r)) {
                let msg = w.message.as_deref().unwrap_or_default();
                let mut out = if msg.is_empty() {
                    format!("{reason} (container {})", c.name)
                } else {
                    format!("{reason} (container {}): {msg}", c.name)
                };
                // Why the last run ended: the termination message, which with
                // `terminationMessagePolicy: FallbackToLogsOnError` is the tail of the log (a
                // module server's import error).
                if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    let said = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
                    match said {
                        Some(m) => {
                            out.push_str(&format!("; last exit code {}: {}", t.exit_code, tail(m, LAST_MESSAGE)))
                        }
                        None => out.push_str(&format!(
                            "; last exit code {} ({})",
                            t.exit_code,
                            t.reason.as_deref().unwrap_or("no reason given")
                        )),
                    }
                }
                return Some(out);
            }
        }
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    unschedulable.map(|c| format!("Unschedulable: {}", c.message.as_deref().unwrap_or_default()))
}

/// Custom resources: `status.phase` Running/Ready, or a `Ready` condition that is True.
pub(crate) fn custom_state(status: Option<&Value>) -> State {
    let Some(status) = status else {
        return State::Waiting("waiting for status".into());
    };
    let phase = status.get("phase").and_then(Value::as_str);
    let ready_condition = status.get("conditions").and_then(Value::as_array).into_iter().flatten().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("Ready")
            && c.get("status").and_then(Value::as_str) == Some("True")
    });
    match phase {
        Some("Running" | "Ready") => State::Ready,
        _ if ready_condition => State::Ready,
        Some("Failed") => {
            State::Failed(status.get("message").and_then(Value::as_str).unwrap_or("phase Failed").to_string())
        }
        Some(p) => State::Waiting(format!("phase {p}")),
        None => State::Waiting("waiting for status".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn deployment_is_ready_only_when_the_current_generation_is_available() {
        let d = |gen: i64, status: Value| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": "d", "generation": gen}, "spec": {"replicas": 2, "selector": {}, "template": {}}, "status": status})).unwrap()
        };
        let full = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(deployment_state(&d(2, full.clone())), State::Ready);
        assert!(matches!(deployment_state(&d(3, full)), State::Waiting(_)));
        let partial = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1});
        assert_eq!(deployment_state(&d(2, partial)), State::Waiting("1 of 2 updated replicas available".into()));
        let old = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(deployment_state(&d(2, old)), State::Waiting("1 old replicas pending termination".into()));
        let stuck = json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]});
        assert!(matches!(deployment_state(&d(2, stuck)), State::Failed(m) if m.contains("too slow")));
    }

    #[test]
    fn statefulset_counts_ready_replicas() {
        let s: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "s", "generation": 1}, "spec": {"selector": {}, "serviceName": "s", "template": {}}, "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 0}})).unwrap();
        assert_eq!(statefulset_state(&s), State::Waiting("0 of 1 replicas ready".into()));
    }

    #[test]
    fn pods_are_ready_by_condition_and_fail_on_fatal_waiting_reasons() {
        assert_eq!(
            pod_state(&pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}))),
            State::Ready
        );
        assert_eq!(pod_state(&pod(json!({"phase": "Pending"}))), State::Waiting("Pending".into()));
        let pulling = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope\""}}}]}),
        );
        assert!(matches!(pod_state(&pulling), State::Failed(m) if m.starts_with("ImagePullBackOff (container c)")));
        let creating = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(pod_state(&creating), State::Waiting("Pending".into()));
        let crashing = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "module-server", "image": "i", "imageID": "",
            "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "jac-splice: cannot import module 'nope': ModuleNotFoundError(\"No module named 'nope'\")\n"}}}]}),
        );
        assert_eq!(
            pod_failure(&crashing).as_deref(),
            Some("CrashLoopBackOff (container module-server): back-off 20s restarting failed container; last exit code 1: \
                  jac-splice: cannot import module 'nope': ModuleNotFoundError(\"No module named 'nope'\")")
        );
        let silent = pod(json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
            "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        assert_eq!(
            pod_failure(&silent).as_deref(),
            Some("CrashLoopBackOff (container c); last exit code 137 (OOMKilled)")
        );
        assert_eq!(tail("aéb", 2), "b", "cut on a character boundary");
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}),
        );
        assert_eq!(pod_failure(&unschedulable).as_deref(), Some("Unschedulable: 0/3 nodes"));
    }

    #[test]
    fn custom_resources_use_phase_or_ready_condition() {
        assert_eq!(custom_state(Some(&json!({"phase": "Running"}))), State::Ready);
        assert_eq!(custom_state(Some(&json!({"conditions": [{"type": "Ready", "status": "True"}]}))), State::Ready);
        assert_eq!(custom_state(Some(&json!({"phase": "Pending"}))), State::Waiting("phase Pending".into()));
        assert!(
            matches!(custom_state(Some(&json!({"phase": "Failed", "message": "bad"}))), State::Failed(m) if m == "bad")
        );
        assert!(matches!(custom_state(None), State::Waiting(_)));
    }

    #[test]
    fn only_workloads_custom_resources_and_crds_are_awaited() {
        let o = |api_version: &str, kind: &str| ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "x".into(),
            namespace: None,
            section: crate::plan::Section::Modules,
            file: "f".into(),
        };
        assert!(is_target(&o("apps/v1", "Deployment")));
        assert!(is_target(&o("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity")));
        assert!(is_target(&o("apiextensions.k8s.io/v1", "CustomResourceDefinition")));
        assert!(!is_target(&o("v1", "Service")));
        assert!(!is_target(&o("rbac.authorization.k8s.io/v1", "Role")));
    }
}
