//! Undeploy: delete every object of one deployment (foreground propagation), keep what is shared.
//!
//! Objects come from the record, in reverse apply order, and then from a sweep by the
//! deployment's labels over the same kinds (objects an earlier version of the template created).
//! CRDs and Namespaces are never deleted (other deployments' custom resources and unrelated
//! workloads may live in them), nor is any object another deployment's record also lists; each
//! gets a `kept` event saying why.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams};

use super::apply::api_for;
use super::discovery::{gvk_of, Resolver};
use super::errors::{api_error, is_not_found};
use crate::backend::{Action, DeploymentRecord, ObjectEvent, Progress, Result};
use crate::plan::{DeploymentId, ObjectRef, Section};

/// How long undeploy waits for deleted objects (and their dependents) to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

type Key = (String, String, Option<String>, String);

fn key(o: &ObjectRef) -> Key {
    (o.group().to_string(), o.kind.clone(), o.namespace.clone(), o.name.clone())
}

/// Why an object must stay, if it must.
fn keep_reason(o: &ObjectRef, shared: &HashMap<Key, DeploymentId>) -> Option<String> {
    if o.is_crd() {
        Some(
            "CustomResourceDefinitions are cluster-wide and may serve other deployments; delete it by hand if unused"
                .into(),
        )
    } else if o.is_namespace() {
        Some("namespaces may hold other workloads; delete it by hand if unused".into())
    } else {
        shared.get(&key(o)).map(|other| format!("also part of deployment {other}"))
    }
}

pub(crate) async fn undeploy(
    client: &kube::Client,
    resolver: &Resolver,
    record: &DeploymentRecord,
    others: &[DeploymentRecord],
    progress: &Progress,
) -> Result<()> {
    let shared: HashMap<Key, DeploymentId> =
        others.iter().flat_map(|r| r.objects.iter().map(move |o| (key(o), r.id.clone()))).collect();
    let mut handled: BTreeSet<Key> = BTreeSet::new();
    let mut gone_checks: Vec<(Api<DynamicObject>, String)> = Vec::new();
    let mut sweep_kinds: Vec<(ObjectRef, Option<String>)> = Vec::new();

    for o in record.objects.iter().rev() {
        handled.insert(key(o));
        if let Some(why) = keep_reason(o, &shared) {
            progress.send(ObjectEvent::new(o.clone(), Action::Kept).with_message(why)).await;
            continue;
        }
        let label = o.kubectl_name();
        let Some(resolved) = resolver.resolve(&gvk_of(o)).await.map_err(|e| api_error(&label, e))? else {
            progress.send(ObjectEvent::new(o.clone(), Action::Deleted).with_message("kind no longer served")).await;
            continue;
        };
        let mut object = o.clone();
        let api = api_for(client, &resolved, &mut object, None, &record.id.namespace);
        if !sweep_kinds.iter().any(|(k, ns)| k.gvk() == o.gvk() && *ns == object.namespace) {
            sweep_kinds.push((o.clone(), object.namespace.clone()));
        }
        delete_one(&api, object, progress, &mut gone_checks).await?;
    }

    // Leftovers carrying this deployment's labels (e.g. from an earlier template version).
    let selector = crate::identity::selector(&record.id);
    for (kind, ns) in sweep_kinds {
        let Some(resolved) = resolver.resolve(&gvk_of(&kind)).await.map_err(|e| api_error(&kind.kind, e))? else {
            continue;
        };
        let mut probe = ObjectRef { namespace: ns.clone(), ..kind.clone() };
        let api = api_for(client, &resolved, &mut probe, None, &record.id.namespace);
        let list = api.list(&ListParams::default().labels(&selector)).await.map_err(|e| api_error(&kind.kind, e))?;
        for item in list.items {
            let object = ObjectRef {
                api_version: kind.api_version.clone(),
                kind: kind.kind.clone(),
                name: item.metadata.name.clone().unwrap_or_default(),
                namespace: ns.clone(),
                section: Section::Modules,
                file: String::new(),
            };
            if item.metadata.deletion_timestamp.is_some() || !handled.insert(key(&object)) {
                continue;
            }
            if let Some(why) = keep_reason(&object, &shared) {
                progress.send(ObjectEvent::new(object, Action::Kept).with_message(why)).await;
                continue;
            }
            delete_one(&api, object, progress, &mut gone_checks).await?;
        }
    }

    wait_gone(&record.id, gone_checks).await;
    Ok(())
}

async fn delete_one(
    api: &Api<DynamicObject>,
    object: ObjectRef,
    progress: &Progress,
    gone_checks: &mut Vec<(Api<DynamicObject>, String)>,
) -> Result<()> {
    match api.delete(&object.name, &DeleteParams::foreground()).await {
        Ok(_) => {
            gone_checks.push((api.clone(), object.name.clone()));
            progress.send(ObjectEvent::new(object, Action::Deleted)).await;
        }
        Err(e) if is_not_found(&e) => {
            progress.send(ObjectEvent::new(object, Action::Deleted).with_message("already gone")).await;
        }
        Err(e) => {
            let err = api_error(&object.kubectl_name(), e);
            progress.send(ObjectEvent::new(object, Action::Failed).with_message(err.to_string())).await;
            return Err(err);
        }
    }
    Ok(())
}

/// Waits (bounded) until foreground deletion finished, so an immediate redeploy does not apply
/// onto objects that are about to vanish. Running out of time is logged, not an error: the
/// deletions are accepted and the garbage collector finishes them.
async fn wait_gone(id: &DeploymentId, mut checks: Vec<(Api<DynamicObject>, String)>) {
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    let rounds = GONE_TIMEOUT.as_millis() / 250 + 1;
    for _ in 0..rounds {
        let mut still = Vec::new();
        for (api, name) in checks {
            match api.get_opt(&name).await {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => still.push((api, name)),
            }
        }
        checks = still;
        if checks.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !checks.is_empty() {
        let names: Vec<_> = checks.iter().map(|(_, n)| n.as_str()).collect();
        tracing::warn!(deployment = %id, remaining = ?names, "objects still being deleted after {}s", GONE_TIMEOUT.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(api_version: &str, kind: &str, name: &str, ns: Option<&str>) -> ObjectRef {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            section: Section::Modules,
            file: "f".into(),
        }
    }

    #[test]
    fn crds_namespaces_and_shared_objects_are_kept() {
        let other = DeploymentId { namespace: "n".into(), module: "mongodb".into(), name: "b".into() };
        let shared: HashMap<Key, DeploymentId> = [(key(&o("v1", "ServiceAccount", "op", Some("n"))), other)].into();
        assert!(keep_reason(&o("apiextensions.k8s.io/v1", "CustomResourceDefinition", "c", None), &shared).is_some());
        assert!(keep_reason(&o("v1", "Namespace", "n", None), &shared).is_some());
        assert_eq!(
            keep_reason(&o("v1", "ServiceAccount", "op", Some("n")), &shared).as_deref(),
            Some("also part of deployment n/mongodb/b")
        );
        assert_eq!(keep_reason(&o("v1", "ServiceAccount", "op", Some("other")), &shared), None);
    }
}
