//! The local object store: each deployment's rendered objects as JSON files under
//! `<deployment dir>/objects/`, what `kubectl get -o json` would show on a cluster, so a user can
//! read what a deployment consists of. Secret values are never written here (the state file
//! keeps each secret once): a Secret's `data` and `stringData` values read `<redacted>`.
//!
//! The state file is the desired state; these files are derived from it. The reconcile pass
//! (`desired.rs`) writes again any file that is missing or differs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{Error, Result};
use super::fs::{create_private_dir, write_atomically};
use crate::backend::REDACTED;
use crate::plan::{ObjectRef, PlannedObject};

pub(super) const DIR: &str = "objects";

/// `<kind>.<group or core>.<namespace or cluster>.<name>.json`.
pub(super) fn file_name(o: &ObjectRef) -> String {
    let group = match o.group() {
        "" => "core",
        g => g,
    };
    let ns = o.namespace.as_deref().unwrap_or("cluster");
    format!("{}.{group}.{ns}.{}.json", o.kind.to_ascii_lowercase(), o.name)
}

/// The file's content: the manifest, with a Secret's values redacted.
pub(super) fn content(o: &PlannedObject) -> Vec<u8> {
    let mut manifest = o.manifest.clone();
    if o.object.kind == "Secret" && o.object.api_version == "v1" {
        for key in ["data", "stringData"] {
            if let Some(values) = manifest.get_mut(key).and_then(Value::as_object_mut) {
                values.values_mut().for_each(|v| *v = Value::String(REDACTED.into()));
            }
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Writes every object whose file is missing or differs (all of them with `force`), and
/// removes files of objects no longer in `objects`. Returns the objects written.
pub(super) fn sync(deployment_dir: &Path, objects: &[PlannedObject], force: bool) -> Result<Vec<ObjectRef>> {
    let dir = deployment_dir.join(DIR);
    create_private_dir(&dir)?;
    let mut written = Vec::new();
    let mut keep = Vec::with_capacity(objects.len());
    for o in objects {
        let path = dir.join(file_name(&o.object));
        let want = content(o);
        let same = !force && std::fs::read(&path).is_ok_and(|have| have == want);
        if !same {
            write_atomically(&path, &want)?;
            written.push(o.object.clone());
        }
        keep.push(path);
    }
    for entry in std::fs::read_dir(&dir).map_err(Error::io("read", &dir))?.flatten() {
        let path: PathBuf = entry.path();
        if path.extension().is_some_and(|e| e == "json") && !keep.contains(&path) {
            std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::Section;

    fn planned(kind: &str, name: &str, manifest: Value) -> PlannedObject {
        let object = ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: Some("default".into()),
            section: Section::Modules,
            file: "f.yaml".into(),
        };
        PlannedObject { object, manifest }
    }

    #[test]
    fn files_hold_the_manifests_with_secret_values_redacted_and_missing_ones_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let objects = [
            planned("ConfigMap", "c", json!({"kind": "ConfigMap", "data": {"k": "v"}})),
            planned("Secret", "s", json!({"kind": "Secret", "stringData": {"password": "hunter2"}})),
        ];
        assert_eq!(sync(dir.path(), &objects, true).unwrap().len(), 2);
        let secret = std::fs::read_to_string(dir.path().join(DIR).join("secret.core.default.s.json")).unwrap();
        assert!(!secret.contains("hunter2") && secret.contains(REDACTED), "{secret}");
        assert!(sync(dir.path(), &objects, false).unwrap().is_empty(), "nothing to write");
        let cm = dir.path().join(DIR).join("configmap.core.default.c.json");
        std::fs::remove_file(&cm).unwrap();
        let healed = sync(dir.path(), &objects, false).unwrap();
        assert_eq!(healed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert!(cm.exists());
        // An object the template no longer renders loses its file.
        assert!(sync(dir.path(), &objects[..1], false).unwrap().is_empty());
        assert!(!dir.path().join(DIR).join("secret.core.default.s.json").exists());
    }
}
