//! serde_json <-> protobuf well-known types, and service types -> protobuf messages.

use prost_types::{value::Kind, ListValue, Struct, Value as PValue};
use serde_json::{Map, Number, Value};

use crate::backend::{Action, ObjectEvent};
use crate::pb;
use crate::plan::ObjectRef;
use crate::service::DeploymentView;

pub fn to_proto_value(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(to_proto_value).collect() }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    PValue { kind: Some(kind) }
}

pub fn to_struct(m: &Map<String, Value>) -> Struct {
    Struct { fields: m.iter().map(|(k, v)| (k.clone(), to_proto_value(v))).collect() }
}

/// Protobuf numbers are doubles; whole numbers come back as JSON integers so `replicas: 3`
/// type-checks as an integer.
pub fn from_proto_value(v: &PValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_proto_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

/// Struct fields are a map in protobuf; keep a stable (sorted) order.
pub fn from_struct(s: &Struct) -> Map<String, Value> {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    keys.into_iter().map(|k| (k.clone(), from_proto_value(&s.fields[k]))).collect()
}

pub fn object_ref(o: &ObjectRef) -> pb::ObjectRef {
    pb::ObjectRef {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        namespace: o.namespace.clone().unwrap_or_default(),
        section: o.section.as_str().into(),
        file: o.file.clone(),
    }
}

pub fn action(a: Action) -> pb::Action {
    match a {
        Action::Created => pb::Action::Created,
        Action::Configured => pb::Action::Configured,
        Action::Unchanged => pb::Action::Unchanged,
        Action::Deleted => pb::Action::Deleted,
        Action::Kept => pb::Action::Kept,
        Action::Started => pb::Action::Started,
        Action::Ready => pb::Action::Ready,
        Action::Waiting => pb::Action::Waiting,
        Action::Failed => pb::Action::Failed,
        Action::Stopped => pb::Action::Stopped,
    }
}

pub fn object_event(e: &ObjectEvent) -> pb::ObjectEvent {
    pb::ObjectEvent {
        object: Some(object_ref(&e.object)),
        action: action(e.action) as i32,
        line: e.line.clone(),
        message: e.message.clone(),
    }
}

pub fn deployment(v: &DeploymentView) -> pb::Deployment {
    pb::Deployment {
        namespace: v.namespace.clone(),
        module: v.module.clone(),
        name: v.name.clone(),
        version: v.version.clone(),
        config: Some(to_struct(&v.config)),
        endpoints: v.endpoints.clone(),
        status: v.status.into(),
        message: v.message.clone(),
        objects: v.objects.iter().map(object_ref).collect(),
        backend: v.backend.clone(),
        updated_at: v.updated_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_struct_with_integers_kept() {
        let v = json!({"name": "x", "replicas": 3, "cpu": 0.5, "l": [1, "a", null], "m": {"k": true}});
        let back = from_struct(&to_struct(v.as_object().unwrap()));
        assert_eq!(Value::Object(back), v);
    }
}
