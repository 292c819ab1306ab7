//! Revisions: every successful deploy (or rollback) of a deployment is numbered and kept, newest
//! last, up to a limit. A revision holds what is needed to deploy it again, except secret values:
//! those are kept once, in the deployment's record, and a revision names them only
//! ([`Revision::config`] shows [`super::REDACTED`] for each of [`Revision::secret_keys`]).
//!
//! Backends store the list (local: the state file; kube: an annotation of the JacDeployment,
//! bounded by [`MAX_BYTES`]); [`push`] is the one rule for numbering and trimming.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DeploymentRecord, REDACTED};
use crate::plan::ObjectRef;

/// Default of `serve --history-limit`.
pub const DEFAULT_LIMIT: usize = 10;

/// Largest serialized history a backend stores (the kube annotation's share of the 256 KiB
/// all annotations of an object may take); the oldest revisions go first.
pub const MAX_BYTES: usize = 128 * 1024;

/// One numbered deploy of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    /// 1 for the first deploy, one more for each after it.
    pub revision: u64,
    /// Template version deployed.
    pub version: String,
    /// Resolved placeholder values; secret ones are `"<redacted>"`.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Which placeholders of `config` are secrets (their values stay in the deployment's record).
    #[serde(default)]
    pub secret_keys: Vec<String>,
    /// Every object the deploy applied, in apply order.
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
    /// RFC 3339, when the deploy succeeded.
    pub time: String,
    /// Who deployed it (the caller's user name; `operator` for the server's own startup).
    #[serde(default)]
    pub deployed_by: String,
    /// `deploy`, or `rollback to N`.
    #[serde(default)]
    pub description: String,
}

impl Revision {
    /// The revision a deploy that produced `record` makes (numbered by [`push`]).
    pub fn of(record: &DeploymentRecord, deployed_by: &str, description: impl Into<String>) -> Self {
        Revision {
            revision: 0,
            version: record.version.clone(),
            config: record.redacted_config(),
            secret_keys: record.secret_keys.clone(),
            objects: record.objects.clone(),
            time: record.updated_at.clone(),
            deployed_by: deployed_by.to_string(),
            description: description.into(),
        }
    }

    /// The values to deploy this revision again with: its config without the secret
    /// placeholders (the deployment's current secrets stand for them).
    pub fn values(&self) -> Map<String, Value> {
        self.config.iter().filter(|(k, _)| !self.secret_keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Appends `revision` to `history` as number last + 1, keeps the newest `limit` (at least one)
/// and drops the oldest while the list serializes to more than [`MAX_BYTES`]. Returns the
/// revision as stored.
pub fn push(history: &mut Vec<Revision>, mut revision: Revision, limit: usize) -> Revision {
    revision.revision = history.last().map_or(1, |r| r.revision + 1);
    // Never cleartext: whatever the caller passed, secret values are redacted here too.
    for k in &revision.secret_keys {
        if let Some(v) = revision.config.get_mut(k) {
            *v = Value::String(REDACTED.into());
        }
    }
    history.push(revision.clone());
    let keep = limit.max(1);
    if history.len() > keep {
        history.drain(..history.len() - keep);
    }
    while history.len() > 1 && serde_json::to_vec(history).map_or(0, |v| v.len()) > MAX_BYTES {
        history.remove(0);
    }
    revision
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rev(memory: &str) -> Revision {
        Revision {
            revision: 0,
            version: "latest".into(),
            config: json!({"memory": memory, "password": "hunter2"}).as_object().cloned().unwrap(),
            secret_keys: vec!["password".into()],
            objects: vec![],
            time: "2026-01-01T00:00:00Z".into(),
            deployed_by: "admin".into(),
            description: "deploy".into(),
        }
    }

    #[test]
    fn revisions_are_numbered_on_and_trimmed_to_the_limit() {
        let mut history = Vec::new();
        for m in ["1mb", "2mb", "3mb", "4mb"] {
            push(&mut history, rev(m), 3);
        }
        let numbers: Vec<u64> = history.iter().map(|r| r.revision).collect();
        assert_eq!(numbers, [2, 3, 4]);
        assert_eq!(history[2].config["memory"], "4mb");
        assert_eq!(push(&mut history, rev("5mb"), 0).revision, 5);
        assert_eq!(history.len(), 1, "a limit of 0 still keeps the newest");
    }

    #[test]
    fn secrets_are_never_stored_and_not_deployed_again() {
        let mut history = Vec::new();
        let stored = push(&mut history, rev("1mb"), 10);
        assert_eq!(stored.config["password"], REDACTED);
        assert!(!serde_json::to_string(&history).unwrap().contains("hunter2"));
        assert!(!stored.values().contains_key("password"));
        assert_eq!(stored.values()["memory"], "1mb");
    }

    #[test]
    fn a_history_too_large_loses_its_oldest_revisions() {
        let mut history = Vec::new();
        let big = "x".repeat(MAX_BYTES / 3);
        for _ in 0..5 {
            push(&mut history, rev(&big), 10);
        }
        assert!(history.len() < 5 && !history.is_empty());
        assert_eq!(history.last().unwrap().revision, 5);
        assert!(serde_json::to_vec(&history).unwrap().len() <= MAX_BYTES);
    }
}
