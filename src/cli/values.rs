//! Placeholder values from the command line, merged the way Helm merges them: `-f/--values`
//! files (YAML or JSON) deep-merged in order (maps key by key, anything else replaced), then
//! `--set`, then `--set-string` on top; then the positional NAME and `-n` are pinned, and a
//! different value for `name` or `namespace` from anywhere else is a conflict naming both.
//!
//! `--set KEY=@MODULE/NAME.OUTPUT` takes another deployment's output (`@@` escapes a literal
//! `@`; `--set-string` never reads references).
//!
//! Every top-level key remembers which sources gave it, so an error about `config.KEY` (from the
//! server's field violation, or from the catalog offline) names the file or flag that set it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::args::ValuesArgs;
use crate::catalog::placeholders::kind_of;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A values file, as given on the command line.
    File(String),
    Set,
    SetString,
    /// The positional NAME.
    Name,
    /// `-n/--namespace`.
    Namespace,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "values file {path}"),
            Source::Set => f.write_str("--set"),
            Source::SetString => f.write_str("--set-string"),
            Source::Name => f.write_str("the NAME argument"),
            Source::Namespace => f.write_str("-n/--namespace"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read values file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML (or JSON) of the right shape; `path` is where the parser stopped, when inside.
    #[error("values file {file}{}: {message}", .path.as_ref().map(|p| format!(", at `{p}`")).unwrap_or_default())]
    Parse { file: String, path: Option<String>, message: String },
    #[error("values file {file}: the top level must be a map of placeholder names to values, not {found}")]
    NotAMap { file: String, found: &'static str },
    #[error("`{0}` is not KEY=VALUE")]
    NotKeyValue(String),
    #[error("--set {set}: {reason}")]
    BadReference { set: String, reason: String },
    #[error("{key} is `{given}` from {given_by} but `{pinned}` from {pinned_by}")]
    Conflict { key: String, given: String, given_by: Source, pinned: String, pinned_by: Source },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Merged placeholder values and where each top-level key came from.
#[derive(Debug, Clone, Default)]
pub struct Values {
    map: Map<String, Value>,
    origins: BTreeMap<String, Vec<Source>>,
}

impl Values {
    /// Reads the `-f` files (`-` is stdin) and applies `--set` and `--set-string`.
    pub fn from_args(a: &ValuesArgs) -> Result<Values> {
        let mut files = Vec::with_capacity(a.values.len());
        for path in &a.values {
            files.push((path.display().to_string(), read(path)?));
        }
        Values::from_parts(&files, &a.set, &a.set_string)
    }

    /// Values files as (name, text) in order, then `--set`, then `--set-string`.
    pub fn from_parts(files: &[(String, String)], set: &[String], set_string: &[String]) -> Result<Values> {
        let mut v = Values::default();
        for (name, text) in files {
            for (key, value) in parse_file(name, text)? {
                v.merge(key, value, Source::File(name.clone()));
            }
        }
        for s in set {
            let (key, raw) = split(s)?;
            let value = set_value(&raw).map_err(|reason| Error::BadReference { set: s.clone(), reason })?;
            v.put(key, value, Source::Set);
        }
        for s in set_string {
            let (key, raw) = split(s)?;
            v.put(key, Value::String(raw), Source::SetString);
        }
        Ok(v)
    }

    /// Sets `key` from NAME or `-n`: an equal value given elsewhere is fine, a different one is
    /// a conflict naming both.
    pub fn pin(&mut self, key: &str, value: &str, source: Source) -> Result<()> {
        if let Some(given) = self.map.get(key) {
            if given.as_str() != Some(value) {
                let given_by = self.origins.get(key).and_then(|o| o.last()).cloned().unwrap_or(Source::Set);
                let given = given.as_str().map_or_else(|| given.to_string(), str::to_string);
                return Err(Error::Conflict {
                    key: key.into(),
                    given,
                    given_by,
                    pinned: value.into(),
                    pinned_by: source,
                });
            }
        }
        self.put(key.to_string(), Value::String(value.to_string()), source);
        Ok(())
    }

    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// Which sources set the placeholder a request field names (`config.KEY…`), e.g.
    /// "config.replicas was set by values file prod.yaml".
    pub fn explain(&self, field: &str) -> Option<String> {
        let key = field.strip_prefix("config.")?.split('.').next()?;
        let origins = self.origins.get(key)?;
        let by: Vec<String> = origins.iter().map(Source::to_string).collect();
        Some(format!("config.{key} was set by {}", by.join(", then ")))
    }

    /// A top-level value replaced (flags), remembering the source.
    fn put(&mut self, key: String, value: Value, source: Source) {
        self.origins.entry(key.clone()).or_default().push(source);
        self.map.insert(key, value);
    }

    /// A top-level value deep-merged into what earlier files gave.
    fn merge(&mut self, key: String, value: Value, source: Source) {
        self.origins.entry(key.clone()).or_default().push(source);
        match self.map.get_mut(&key) {
            Some(existing) => merge(existing, value),
            None => {
                self.map.insert(key, value);
            }
        }
    }
}

/// Maps merge key by key (recursively); anything else replaces what was there.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                match into.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        into.insert(k, v);
                    }
                }
            }
        }
        (into, from) => *into = from,
    }
}

/// A `--set` value: `@MODULE/NAME.OUTPUT` is another deployment's output (the JSON reference
/// `{"from": "MODULE/NAME", "output": "OUTPUT"}`) and `@@…` a literal text starting with `@`;
/// anything else is JSON when it parses (`3`, `true`, `["a"]`, `{"k": 1}`), else the text.
fn set_value(raw: &str) -> Result<Value, String> {
    if let Some(literal) = raw.strip_prefix("@@") {
        return Ok(Value::String(format!("@{literal}")));
    }
    if let Some(reference) = raw.strip_prefix('@') {
        let bad = || format!("`@{reference}` is not @MODULE/NAME.OUTPUT (write @@ for a literal @)");
        let (from, output) = reference.rsplit_once('.').ok_or_else(bad)?;
        let segments: Vec<&str> = from.split('/').collect();
        if !(2..=3).contains(&segments.len()) || segments.iter().any(|s| s.is_empty()) || output.is_empty() {
            return Err(bad());
        }
        return Ok(serde_json::json!({"from": from, "output": output}));
    }
    Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())))
}

fn split(s: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::NotKeyValue(s.to_string()))
}

fn read(path: &Path) -> Result<String> {
    let file = path.display().to_string();
    let read = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| Error::Read { file, source })
}

/// A values file's top-level map: JSON for `*.json`, else YAML (JSON is YAML too). An empty
/// file gives no values.
fn parse_file(name: &str, text: &str) -> Result<Map<String, Value>> {
    let parse_error = |path: String, message: String| Error::Parse {
        file: name.to_string(),
        path: Some(path).filter(|p| p != "."),
        message,
    };
    let value: Value = if name.ends_with(".json") {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| parse_error(e.path().to_string(), e.inner().to_string()))?
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, Option<Value>>(de) {
            Ok(v) => v.unwrap_or(Value::Null),
            Err(e) => return Err(parse_error(e.path().to_string(), e.inner().to_string())),
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(Error::NotAMap { file: name.to_string(), found: kind_of(&other) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(name: &str, text: &str) -> (String, String) {
        (name.to_string(), text.to_string())
    }

    #[test]
    fn sets_infer_json_and_set_string_forces_strings() {
        let v = Values::from_parts(
            &[],
            &["replicas=3".into(), "name=db".into(), "l=[\"a\"]".into()],
            &["password=12345678".into()],
        )
        .unwrap();
        assert_eq!(
            Value::Object(v.map().clone()),
            json!({"replicas": 3, "name": "db", "l": ["a"], "password": "12345678"})
        );
        assert!(matches!(Values::from_parts(&[], &["novalue".into()], &[]), Err(Error::NotKeyValue(_))));
    }

    #[test]
    fn at_values_are_output_references_and_double_at_escapes() {
        let v = Values::from_parts(
            &[],
            &[
                "database-host=@mongodb/testing-db.uri".into(),
                "redis-host=@dev/redis/cache.url".into(),
                "greeting=@@home".into(),
                "plain=a@b".into(),
            ],
            &["literal=@mongodb/x.uri".into()],
        )
        .unwrap();
        assert_eq!(
            Value::Object(v.map().clone()),
            json!({
                "database-host": {"from": "mongodb/testing-db", "output": "uri"},
                "redis-host": {"from": "dev/redis/cache", "output": "url"},
                "greeting": "@home",
                "plain": "a@b",
                "literal": "@mongodb/x.uri",
            })
        );
        for bad in ["x=@mongodb", "x=@mongodb.uri", "x=@mongodb/db.", "x=@/db.uri", "x=@a/b/c/d.uri"] {
            let err = Values::from_parts(&[], &[bad.into()], &[]).unwrap_err();
            assert!(matches!(err, Error::BadReference { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("@@"), "{err}");
        }
    }

    #[test]
    fn files_merge_deeply_in_order_then_flags_replace() {
        let a = file("a.yaml", "memory: 64mb\nlabels: {team: a, tier: db}\nlist: [1, 2]\n");
        let b = file("b.json", r#"{"memory": "128mb", "labels": {"team": "b"}, "list": [3]}"#);
        let v = Values::from_parts(&[a, b], &["cpu=0.5".into(), "memory=256mb".into()], &["tier=3".into()]).unwrap();
        assert_eq!(
            Value::Object(v.map().clone()),
            json!({"memory": "256mb", "labels": {"team": "b", "tier": "db"}, "list": [3], "cpu": 0.5, "tier": "3"})
        );
        assert_eq!(
            v.explain("config.memory").unwrap(),
            "config.memory was set by values file a.yaml, then values file b.json, then --set"
        );
        assert_eq!(
            v.explain("config.labels.team").unwrap(),
            "config.labels was set by values file a.yaml, then values file b.json"
        );
        assert_eq!(v.explain("module"), None);
    }

    #[test]
    fn bad_files_are_named_with_the_path_inside_them() {
        let err = Values::from_parts(&[file("bad.yaml", "a: [1\n")], &[], &[]).unwrap_err();
        assert!(matches!(&err, Error::Parse { file, .. } if file == "bad.yaml"), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
        let err = Values::from_parts(&[file("bad.json", r#"{"a": {"b": [1, }}"#)], &[], &[]).unwrap_err();
        assert!(err.to_string().starts_with("values file bad.json"), "{err}");
        let err = Values::from_parts(&[file("list.yaml", "- a\n- b\n")], &[], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "values file list.yaml: the top level must be a map of placeholder names to values, not list"
        );
        assert!(Values::from_parts(&[file("empty.yaml", "")], &[], &[]).unwrap().map().is_empty());
    }

    #[test]
    fn a_pinned_name_agrees_or_conflicts_naming_both() {
        let mut v = Values::from_parts(&[], &["name=cache".into()], &[]).unwrap();
        let err = v.clone().pin("name", "other", Source::Name).unwrap_err();
        assert_eq!(err.to_string(), "name is `cache` from --set but `other` from the NAME argument");
        v.pin("name", "cache", Source::Name).unwrap();
        assert_eq!(v.map()["name"], "cache");
        let mut v = Values::from_parts(&[file("v.yaml", "namespace: prod\n")], &[], &[]).unwrap();
        let err = v.pin("namespace", "dev", Source::Namespace).unwrap_err();
        assert_eq!(err.to_string(), "namespace is `prod` from values file v.yaml but `dev` from -n/--namespace");
    }
}
