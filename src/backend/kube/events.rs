//! Kubernetes Events on `JacDeployment`s (`kubectl describe jacd NAME`): what was applied,
//! healed, found drifted, failed or undeployed. Publishing is best effort: a failure is logged
//! and never fails the work it reports.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;

use super::resource::JacDeployment;

/// Longest note the events API accepts.
const MAX_NOTE: usize = 1024;

#[derive(Clone)]
pub(crate) struct Events {
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("enabled", &self.recorder.is_some()).finish()
    }
}

impl Events {
    /// Events reported as controller `jac-orc`, instance `instance` (the replica's identity).
    pub(crate) fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "jac-orc".into(), instance };
        Events { recorder: Some(Recorder::new(client, reporter)) }
    }

    pub(crate) async fn normal(&self, jd: &JacDeployment, reason: &str, note: String, about: Option<ObjectReference>) {
        self.publish(jd, EventType::Normal, reason, note, about).await;
    }

    pub(crate) async fn warning(&self, jd: &JacDeployment, reason: &str, note: String, about: Option<ObjectReference>) {
        self.publish(jd, EventType::Warning, reason, note, about).await;
    }

    async fn publish(
        &self,
        jd: &JacDeployment,
        type_: EventType,
        reason: &str,
        mut note: String,
        about: Option<ObjectReference>,
    ) {
        let Some(recorder) = &self.recorder else { return };
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE - 3;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: about };
        if let Err(e) = recorder.publish(&event, &jd.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "could not publish an event");
        }
    }
}

/// A reference to one object of a deployment, for an event's `related` field.
pub(crate) fn reference(o: &crate::plan::ObjectRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: o.namespace.clone(),
        ..Default::default()
    }
}
