//! The status a look at a deployment produces: outcome (`deployed`/`failed`), conditions
//! `Ready`, `Progressing`, `Degraded` and `Drifted` with reasons, endpoints, inventory and the
//! applied revision. Pure: [`next`] takes the previous status and what was seen, and keeps every
//! `lastTransitionTime` (and `updatedAt`) whose condition did not change, so looking again and
//! finding the same writes the same status, which the store then skips.

use super::resource::{AppliedRevision, Condition, InventoryEntry, JacDeploymentStatus};
use crate::backend::Error;

pub(crate) const READY: &str = "Ready";
pub(crate) const PROGRESSING: &str = "Progressing";
pub(crate) const DEGRADED: &str = "Degraded";
pub(crate) const DRIFTED: &str = "Drifted";

/// How the workloads stand after an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    /// kubectl names of what is not ready yet.
    Waiting(Vec<String>),
    Failed(String),
}

/// What an apply (or a failed attempt) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied { readiness: Readiness, message: String },
    Failed { reason: &'static str, message: String },
}

impl Outcome {
    pub(crate) fn failed(e: &Error) -> Self {
        Outcome::Failed { reason: reason_of(e), message: e.to_string() }
    }
}

/// A machine-readable reason for an error.
pub(crate) fn reason_of(e: &Error) -> &'static str {
    use super::KubeError as K;
    match e {
        Error::Rejected { .. } => "Rejected",
        Error::Restricted { .. } => "RestrictedNamespace",
        Error::Kube(K::Conflict { .. }) => "Conflict",
        Error::Kube(K::Forbidden { .. }) => "Forbidden",
        Error::Kube(
            K::Server { .. }
            | K::Unreachable { .. }
            | K::Watch { .. }
            | K::Config { .. }
            | K::ProbeTimeout(_)
            | K::LogRead { .. },
        ) => "Unavailable",
        Error::Kube(K::LeaderReported { .. }) => "Failed",
        Error::Kube(K::BadRecord { .. } | K::RecordWithoutKey { .. } | K::Encode { .. }) | Error::Local(_) => {
            "Internal"
        }
        Error::WorkloadFailed { .. } => "WorkloadFailed",
        Error::Timeout { .. } => "Timeout",
        Error::NotFound(_) => "NotFound",
        Error::CannotScaleToZero { .. } => "CannotScaleToZero",
    }
}

/// Everything one look saw.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub(crate) generation: i64,
    pub(crate) outcome: Outcome,
    /// Objects that differ from the desired state, when self-heal is off.
    pub(crate) drifted: Vec<String>,
    pub(crate) endpoints: Vec<String>,
    pub(crate) inventory: Vec<InventoryEntry>,
    pub(crate) revision: Option<AppliedRevision>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: String::new(),
        observed_generation: Some(generation),
    }
}

/// The status after `obs`, given the previous one, at time `now` (RFC 3339).
pub(crate) fn next(prev: Option<&JacDeploymentStatus>, obs: Observation, now: &str) -> JacDeploymentStatus {
    let g = obs.generation;
    let (status, message, mut conditions) = match &obs.outcome {
        Outcome::Applied { readiness, message } => {
            let (ready, progressing) = match readiness {
                Readiness::Ready => (
                    condition(READY, true, "Ready", "every workload is ready".into(), g),
                    condition(PROGRESSING, false, "Complete", "applied and ready".into(), g),
                ),
                Readiness::Waiting(names) => (
                    condition(READY, false, "WaitingForWorkloads", format!("waiting for {}", names.join(", ")), g),
                    condition(PROGRESSING, true, "RollingOut", "applied; workloads are starting".into(), g),
                ),
                Readiness::Failed(reason) => (
                    condition(READY, false, "WorkloadFailed", reason.clone(), g),
                    condition(PROGRESSING, false, "WorkloadFailed", reason.clone(), g),
                ),
            };
            let degraded = match readiness {
                Readiness::Failed(reason) => condition(DEGRADED, true, "WorkloadFailed", reason.clone(), g),
                _ => condition(DEGRADED, false, "AsExpected", String::new(), g),
            };
            ("deployed", message.clone(), vec![ready, progressing, degraded])
        }
        Outcome::Failed { reason, message } => (
            "failed",
            message.clone(),
            vec![
                condition(READY, false, reason, message.clone(), g),
                condition(PROGRESSING, false, reason, message.clone(), g),
                condition(DEGRADED, true, reason, message.clone(), g),
            ],
        ),
    };
    conditions.push(if obs.drifted.is_empty() {
        condition(DRIFTED, false, "InSync", String::new(), g)
    } else {
        let message = format!("changed or deleted outside jac-orc (selfHeal is off): {}", obs.drifted.join(", "));
        condition(DRIFTED, true, "SelfHealDisabled", message, g)
    });
    for c in &mut conditions {
        c.last_transition_time = match prev.and_then(|p| p.condition(&c.type_)) {
            Some(old) if old.status == c.status => old.last_transition_time.clone(),
            _ => now.to_string(),
        };
    }
    let mut out = JacDeploymentStatus {
        observed_generation: Some(g),
        status: status.into(),
        message,
        conditions,
        applied_revision: obs.revision.or_else(|| prev.and_then(|p| p.applied_revision.clone())),
        endpoints: obs.endpoints,
        inventory: obs.inventory,
        updated_at: prev.map(|p| p.updated_at.clone()).unwrap_or_default(),
    };
    if prev != Some(&out) {
        out.updated_at = now.to_string();
    }
    out
}

/// The revision after applying `digest`: the previous one when the desired state is the same,
/// else the next number with what this apply changed.
pub(crate) fn revision(
    prev: Option<&AppliedRevision>,
    digest: &str,
    version: &str,
    generation: i64,
    changes: Vec<String>,
    now: &str,
) -> AppliedRevision {
    match prev {
        Some(p) if p.digest == digest && p.version == version => p.clone(),
        _ => AppliedRevision {
            revision: prev.map_or(1, |p| p.revision + 1),
            generation,
            version: version.into(),
            digest: digest.into(),
            changes,
            time: now.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(readiness: Readiness) -> Observation {
        Observation {
            generation: 3,
            outcome: Outcome::Applied { readiness, message: String::new() },
            drifted: vec![],
            endpoints: vec!["a.ns.svc:1".into()],
            inventory: vec![],
            revision: None,
        }
    }

    #[test]
    fn the_same_look_twice_gives_the_same_status() {
        let first = next(None, applied(Readiness::Waiting(vec!["deployment.apps/x".into()])), "t1");
        assert_eq!(first.updated_at, "t1");
        assert_eq!(first.status, "deployed");
        assert!(!first.is(READY) && first.is(PROGRESSING) && !first.is(DEGRADED));
        let again = next(Some(&first), applied(Readiness::Waiting(vec!["deployment.apps/x".into()])), "t2");
        assert_eq!(again, first, "nothing new: no new times either");
        let ready = next(Some(&first), applied(Readiness::Ready), "t3");
        assert!(ready.is(READY) && !ready.is(PROGRESSING));
        assert_eq!(ready.condition(READY).unwrap().last_transition_time, "t3");
        assert_eq!(ready.condition(DEGRADED).unwrap().last_transition_time, "t1", "Degraded stayed False");
        assert_eq!(ready.updated_at, "t3");
    }

    #[test]
    fn failures_are_degraded_with_their_reason_and_drift_is_reported() {
        let err = Error::Rejected { object: "configmap/x".into(), message: "m".into() };
        let mut obs = applied(Readiness::Ready);
        obs.outcome = Outcome::failed(&err);
        let failed = next(None, obs, "t1");
        assert_eq!(failed.status, "failed");
        let degraded = failed.condition(DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "Rejected"));
        let mut obs = applied(Readiness::Ready);
        obs.drifted = vec!["service/x".into()];
        let drifted = next(None, obs, "t1");
        assert!(drifted.is(DRIFTED));
        assert!(drifted.condition(DRIFTED).unwrap().message.contains("service/x"));
    }

    #[test]
    fn revisions_count_changes_of_the_desired_state_only() {
        let r1 = revision(None, "sha256:a", "latest", 1, vec!["service/x created".into()], "t1");
        assert_eq!(r1.revision, 1);
        assert_eq!(revision(Some(&r1), "sha256:a", "latest", 2, vec![], "t2"), r1);
        let r2 = revision(Some(&r1), "sha256:b", "latest", 2, vec!["configmap/x configured".into()], "t2");
        assert_eq!((r2.revision, r2.generation, r2.time.as_str()), (2, 2, "t2"));
    }
}
