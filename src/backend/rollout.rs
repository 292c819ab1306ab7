//! Config changes roll the workload: every Deployment, StatefulSet and DaemonSet of a plan gets
//! the pod-template annotation [`ANNOTATION_CONFIG_HASH`], a digest of the plan's own ConfigMaps
//! and Secrets that its pods mount or reference (volumes, projected volumes, `envFrom`,
//! `env[].valueFrom`). A changed value changes the pod template, so Kubernetes rolls the pods;
//! an unchanged redeploy renders the same annotation, so nothing is written.
//!
//! Only objects of the same deployment count: a Secret created by someone else is not ours to
//! track. A workload that references none of them gets no annotation. The digest covers the
//! values (like Stakater Reloader's): whoever may read the workload sees a hash of them.
//!
//! The local backend uses the same digests ([`plan_config_hash`]): its one process stands for
//! the plan's workloads, and is restarted when the configuration they use changes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::plan::PlannedObject;

/// Pod-template annotation holding the digest of the configuration a workload uses.
pub const ANNOTATION_CONFIG_HASH: &str = "jac-orc.io/config-hash";

/// `sha256:<hex>` of `value` with every object's keys sorted, so key order never matters.
pub fn canonical_digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(&canonical(value)).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Which ConfigMaps and Secrets (by name) a pod spec uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct References {
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn references(pod_spec: &Value) -> References {
    let mut refs = References::default();
    let add = |set: &mut BTreeSet<String>, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            set.insert(n.to_string());
        }
    };
    for volume in pod_spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        add(&mut refs.config_maps, str_at(volume, "/configMap/name"));
        add(&mut refs.secrets, str_at(volume, "/secret/secretName"));
        for source in volume.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            add(&mut refs.config_maps, str_at(source, "/configMap/name"));
            add(&mut refs.secrets, str_at(source, "/secret/name"));
        }
    }
    let containers = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|k| pod_spec.get(k).and_then(Value::as_array).into_iter().flatten());
    for c in containers {
        for from in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
            add(&mut refs.config_maps, str_at(from, "/configMapRef/name"));
            add(&mut refs.secrets, str_at(from, "/secretRef/name"));
        }
        for env in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            add(&mut refs.config_maps, str_at(env, "/valueFrom/configMapKeyRef/name"));
            add(&mut refs.secrets, str_at(env, "/valueFrom/secretKeyRef/name"));
        }
    }
    refs
}

fn is_workload(o: &PlannedObject) -> bool {
    o.object.group() == "apps" && matches!(o.object.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
}

fn namespace_of<'a>(o: &'a PlannedObject, default_ns: &'a str) -> &'a str {
    o.object.namespace.as_deref().or_else(|| str_at(&o.manifest, "/metadata/namespace")).unwrap_or(default_ns)
}

/// The digest of what a pod spec uses among `configs` ((kind, namespace, name) → content), or
/// `None` when it uses none of them.
fn config_hash(pod_spec: &Value, ns: &str, configs: &BTreeMap<(&str, &str, &str), Value>) -> Option<String> {
    let refs = references(pod_spec);
    let wanted = refs.config_maps.iter().map(|n| ("ConfigMap", n)).chain(refs.secrets.iter().map(|n| ("Secret", n)));
    let used: Vec<Value> = wanted
        .filter_map(|(kind, name)| {
            configs
                .get(&(kind, ns, name.as_str()))
                .map(|c| serde_json::json!({"kind": kind, "name": name, "content": c}))
        })
        .collect();
    (!used.is_empty()).then(|| canonical_digest(&Value::Array(used)))
}

/// Annotates every workload of `objects` with the digest of the configuration it uses.
pub fn annotate(objects: &mut [PlannedObject], default_ns: &str) {
    let mut configs: BTreeMap<(&str, &str, &str), Value> = BTreeMap::new();
    for o in objects.iter() {
        let kind = match (o.object.api_version.as_str(), o.object.kind.as_str()) {
            ("v1", "ConfigMap") => "ConfigMap",
            ("v1", "Secret") => "Secret",
            _ => continue,
        };
        let content: Map<String, Value> = ["data", "binaryData", "stringData"]
            .into_iter()
            .filter_map(|k| o.manifest.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        configs.insert((kind, namespace_of(o, default_ns), o.object.name.as_str()), Value::Object(content));
    }
    let hashes: Vec<(usize, String)> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| is_workload(o))
        .filter_map(|(i, o)| {
            let pod_spec = o.manifest.pointer("/spec/template/spec")?;
            Some((i, config_hash(pod_spec, namespace_of(o, default_ns), &configs)?))
        })
        .collect();
    for (i, hash) in hashes {
        let Some(template) = objects[i].manifest.pointer_mut("/spec/template").and_then(Value::as_object_mut) else {
            continue;
        };
        let meta = template.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else { continue };
        let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(ANNOTATION_CONFIG_HASH.into(), Value::String(hash));
        }
    }
}

/// One digest of the configuration every workload of the plan uses (`None` when none uses any):
/// what the local backend's process is restarted on.
pub fn plan_config_hash(objects: &[PlannedObject], default_ns: &str) -> Option<String> {
    let mut annotated = objects.to_vec();
    annotate(&mut annotated, default_ns);
    let hashes: Vec<Value> = annotated
        .iter()
        .filter_map(|o| {
            let hash = o.manifest.pointer("/spec/template/metadata/annotations")?.get(ANNOTATION_CONFIG_HASH)?;
            Some(serde_json::json!([o.object.kind, o.object.name, hash]))
        })
        .collect();
    (!hashes.is_empty()).then(|| canonical_digest(&Value::Array(hashes)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::{ObjectRef, Section};

    fn planned(manifest: Value) -> PlannedObject {
        let s = |p: &str| manifest.pointer(p).and_then(Value::as_str).map(str::to_string);
        let object = ObjectRef {
            api_version: s("/apiVersion").unwrap(),
            kind: s("/kind").unwrap(),
            name: s("/metadata/name").unwrap(),
            namespace: s("/metadata/namespace"),
            section: Section::Modules,
            file: "f.yaml".into(),
        };
        PlannedObject { object, manifest }
    }

    fn deployment(pod_spec: Value) -> PlannedObject {
        planned(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
                       "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": pod_spec}}}))
    }

    fn secret(name: &str, value: &str) -> PlannedObject {
        planned(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"K": value}}))
    }

    fn config_map(name: &str, value: &str) -> PlannedObject {
        planned(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}}))
    }

    fn hash_of(objects: &[PlannedObject]) -> Option<String> {
        let mut objects = objects.to_vec();
        annotate(&mut objects, "ns");
        let d = objects.iter().find(|o| o.object.kind == "Deployment").unwrap();
        d.manifest.pointer("/spec/template/metadata/annotations/jac-orc.io~1config-hash").map(|v| v.to_string())
    }

    fn env_from(secret: &str) -> Value {
        json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": secret}}]}]})
    }

    #[test]
    fn a_changed_value_changes_the_hash_and_the_same_value_keeps_it() {
        let a = hash_of(&[deployment(env_from("envs")), secret("envs", "one")]).expect("annotated");
        assert_eq!(hash_of(&[secret("envs", "one"), deployment(env_from("envs"))]).unwrap(), a, "order-free");
        assert_ne!(hash_of(&[deployment(env_from("envs")), secret("envs", "two")]).unwrap(), a);
        // The annotation sits on the pod template, beside the labels already there.
        let mut objects = vec![deployment(env_from("envs")), secret("envs", "one")];
        annotate(&mut objects, "ns");
        assert_eq!(objects[0].manifest["spec"]["template"]["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn every_kind_of_reference_counts() {
        let volumes = json!({"containers": [{"name": "c"}], "volumes": [{"name": "v", "configMap": {"name": "cm"}}]});
        let base = hash_of(&[deployment(volumes.clone()), config_map("cm", "1")]).expect("configMap volume");
        assert_ne!(hash_of(&[deployment(volumes), config_map("cm", "2")]).unwrap(), base);
        let secret_volume = json!({"containers": [], "volumes": [{"name": "v", "secret": {"secretName": "s"}}]});
        assert!(hash_of(&[deployment(secret_volume), secret("s", "1")]).is_some());
        let projected = json!({"containers": [], "volumes": [{"name": "v", "projected": {"sources": [{"configMap": {"name": "cm"}}]}}]});
        assert!(hash_of(&[deployment(projected), config_map("cm", "1")]).is_some());
        let key_ref = json!({"initContainers": [{"name": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "K"}}}]}]});
        assert!(hash_of(&[deployment(key_ref), secret("s", "1")]).is_some());
        let cm_ref = json!({"containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}]}]});
        assert!(hash_of(&[deployment(cm_ref), config_map("cm", "1")]).is_some());
    }

    #[test]
    fn objects_of_others_and_unreferenced_ones_do_not_count() {
        // References something the plan does not hold: no annotation at all.
        assert_eq!(hash_of(&[deployment(env_from("not-ours")), secret("envs", "x")]), None);
        // An unreferenced ConfigMap changing leaves the hash alone.
        let a = hash_of(&[deployment(env_from("envs")), secret("envs", "1"), config_map("other", "a")]);
        let b = hash_of(&[deployment(env_from("envs")), secret("envs", "1"), config_map("other", "b")]);
        assert_eq!(a, b);
        // Same name in another namespace is another object.
        let mut elsewhere = secret("envs", "1");
        elsewhere.object.namespace = Some("other".into());
        assert_eq!(hash_of(&[deployment(env_from("envs")), elsewhere]), None);
    }

    #[test]
    fn the_plan_hash_follows_the_configuration_its_workloads_use() {
        let a = plan_config_hash(&[deployment(env_from("envs")), secret("envs", "1")], "ns").expect("a hash");
        assert_eq!(plan_config_hash(&[secret("envs", "1"), deployment(env_from("envs"))], "ns").unwrap(), a);
        assert_ne!(plan_config_hash(&[deployment(env_from("envs")), secret("envs", "2")], "ns").unwrap(), a);
        assert_eq!(plan_config_hash(&[secret("envs", "1")], "ns"), None, "no workload, no hash");
    }

    #[test]
    fn the_plan_hash_ignores_configuration_no_workload_uses_and_covers_every_workload() {
        let base = [deployment(env_from("envs")), secret("envs", "1"), config_map("loose", "a")];
        let a = plan_config_hash(&base, "ns").expect("a hash");
        let loose_changed = [deployment(env_from("envs")), secret("envs", "1"), config_map("loose", "b")];
        assert_eq!(plan_config_hash(&loose_changed, "ns").unwrap(), a, "an unused ConfigMap does not count");
        // A second workload using other configuration: its change alone changes the plan's hash.
        let worker = |v: &str| {
            let mut w =
                deployment(json!({"containers": [{"name": "w", "envFrom": [{"configMapRef": {"name": "w"}}]}]}));
            w.object.name = "worker".into();
            [w, config_map("w", v)]
        };
        let two: Vec<PlannedObject> = base.iter().cloned().chain(worker("1")).collect();
        let two_changed: Vec<PlannedObject> = base.iter().cloned().chain(worker("2")).collect();
        let b = plan_config_hash(&two, "ns").unwrap();
        assert_ne!(b, a);
        assert_ne!(plan_config_hash(&two_changed, "ns").unwrap(), b);
        assert_eq!(plan_config_hash(&[deployment(env_from("missing")), secret("envs", "1")], "ns"), None);
    }

    #[test]
    fn canonical_digests_ignore_key_order_only() {
        let a = canonical_digest(&json!({"a": 1, "b": {"x": [1, 2], "y": 2}}));
        assert_eq!(a, canonical_digest(&json!({"b": {"y": 2, "x": [1, 2]}, "a": 1})));
        assert_ne!(a, canonical_digest(&json!({"b": {"y": 2, "x": [2, 1]}, "a": 1})));
        assert!(a.starts_with("sha256:") && a.len() == 71);
    }
}
