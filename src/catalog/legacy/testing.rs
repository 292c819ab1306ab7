//! Helpers shared by the renderer's unit tests: value maps, YAML parsing of rendered text, and
//! the hostile value most tests try to inject.

use serde_json::{Map, Value};

use super::render;

pub(super) fn vals(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(super) fn docs(s: &str) -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(s).map(|d| serde_norway::Value::deserialize(d).expect("valid yaml")).collect()
}

pub(super) fn one(s: &str) -> serde_norway::Value {
    let mut d = docs(s);
    assert_eq!(d.len(), 1, "{s}");
    d.remove(0)
}

pub(super) fn r(text: &str, v: Value) -> String {
    render(text, &vals(v)).expect("render")
}

pub(super) fn get<'a>(v: &'a serde_norway::Value, key: &str) -> &'a serde_norway::Value {
    v.get(key).unwrap_or_else(|| panic!("missing key {key} in {v:?}"))
}

pub(super) fn ystr(s: &str) -> serde_norway::Value {
    serde_norway::Value::String(s.to_owned())
}

pub(super) const EVIL: &str = "x\n---\napiVersion: v1\nkind: Secret";

/// Replaces `marker` by `with` in every string (and key) of a YAML tree.
pub(super) fn subst(v: &serde_norway::Value, marker: &str, with: &str) -> serde_norway::Value {
    use serde_norway::Value as Y;
    match v {
        Y::String(s) => Y::String(s.replace(marker, with)),
        Y::Sequence(s) => Y::Sequence(s.iter().map(|x| subst(x, marker, with)).collect()),
        Y::Mapping(m) => Y::Mapping(m.iter().map(|(k, x)| (subst(k, marker, with), subst(x, marker, with))).collect()),
        Y::Tagged(t) => Y::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: t.tag.clone(),
            value: subst(&t.value, marker, with),
        })),
        other => other.clone(),
    }
}
