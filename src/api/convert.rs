//! Views ⇄ protobuf messages, and serde_json ⇄ the protobuf well-known types. The server
//! encodes views into messages; the CLI decodes messages back into the same views, so both
//! print from one shape.

use prost_types::{value::Kind as PKind, ListValue, Struct, Value as PValue};
use serde_json::{Map, Number, Value};

use crate::backend::{self, Action, ObjectEvent};
use crate::catalog::{Format, Type};
use crate::pb;
use crate::plan::{ObjectRef, Section};
use crate::service::views::{
    Counts, DeploymentSecretsView, DeploymentView, DryRunView, PlaceholderSpecView, PlaceholderView, Summary,
    TemplateVersionView, TemplateView,
};

/// A message the CLI cannot turn into a view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the server sent an unknown {field} ({value})")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("the server's message has no {0}")]
    Missing(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// === JSON ⇄ well-known types ===

fn to_proto_value(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => PKind::NullValue(0),
        Value::Bool(b) => PKind::BoolValue(*b),
        Value::Number(n) => PKind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => PKind::StringValue(s.clone()),
        Value::Array(a) => PKind::ListValue(ListValue { values: a.iter().map(to_proto_value).collect() }),
        Value::Object(o) => PKind::StructValue(to_struct(o)),
    };
    PValue { kind: Some(kind) }
}

pub fn to_struct(m: &Map<String, Value>) -> Struct {
    Struct { fields: m.iter().map(|(k, v)| (k.clone(), to_proto_value(v))).collect() }
}

/// Protobuf numbers are doubles; whole numbers come back as JSON integers so `replicas: 3`
/// type-checks as an integer.
fn from_proto_value(v: &PValue) -> Value {
    match &v.kind {
        None | Some(PKind::NullValue(_)) => Value::Null,
        Some(PKind::BoolValue(b)) => Value::Bool(*b),
        Some(PKind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Some(PKind::StringValue(s)) => Value::String(s.clone()),
        Some(PKind::ListValue(l)) => Value::Array(l.values.iter().map(from_proto_value).collect()),
        Some(PKind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

/// Struct fields come in key order.
pub fn from_struct(s: &Struct) -> Map<String, Value> {
    s.fields.iter().map(|(k, v)| (k.clone(), from_proto_value(v))).collect()
}

fn value_of(v: Option<&PValue>) -> Value {
    v.map(from_proto_value).unwrap_or(Value::Null)
}

// === enumerations ===

/// One enumeration both ways: domain value ⇄ protobuf value.
macro_rules! enumeration {
    ($field:literal, $domain:ty, $proto:ty, { $($d:path => $p:path),+ $(,)? }) => {
        impl From<$domain> for $proto {
            fn from(v: $domain) -> Self {
                match v { $($d => $p),+ }
            }
        }

        impl Decode<$domain> for $proto {
            fn decode(value: i32) -> Result<$domain> {
                match <$proto>::try_from(value) {
                    $(Ok($p) => Ok($d),)+
                    _ => Err(Error::UnknownEnum { field: $field, value }),
                }
            }
        }
    };
}

/// Decodes a protobuf enumeration field into its domain type.
trait Decode<T> {
    fn decode(value: i32) -> Result<T>;
}

enumeration!("placeholder type", Type, pb::PlaceholderType, {
    Type::String => pb::PlaceholderType::String,
    Type::Integer => pb::PlaceholderType::Integer,
    Type::Number => pb::PlaceholderType::Number,
    Type::Boolean => pb::PlaceholderType::Boolean,
    Type::List => pb::PlaceholderType::List,
    Type::Map => pb::PlaceholderType::Map,
    Type::Quantity => pb::PlaceholderType::Quantity,
    Type::Any => pb::PlaceholderType::Any,
});
enumeration!("template format", Format, pb::TemplateFormat, {
    Format::Native => pb::TemplateFormat::Native,
    Format::Legacy => pb::TemplateFormat::Legacy,
});
enumeration!("section", Section, pb::Section, {
    Section::Dependencies => pb::Section::Dependencies,
    Section::Modules => pb::Section::Modules,
});
enumeration!("deployment status", backend::Status, pb::DeploymentStatus, {
    backend::Status::Deploying => pb::DeploymentStatus::Deploying,
    backend::Status::Deployed => pb::DeploymentStatus::Deployed,
    backend::Status::Failed => pb::DeploymentStatus::Failed,
    backend::Status::Idle => pb::DeploymentStatus::Idle,
});
enumeration!("backend", backend::Kind, pb::Backend, {
    backend::Kind::Local => pb::Backend::Local,
    backend::Kind::Kubernetes => pb::Backend::Kubernetes,
});
enumeration!("action", Action, pb::Action, {
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
});

fn enum_of<D, P: From<D> + Into<i32>>(v: D) -> i32 {
    P::from(v).into()
}

// === views → messages ===

pub(crate) fn object_ref(o: &ObjectRef) -> pb::ObjectRef {
    pb::ObjectRef {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        namespace: o.namespace.clone().unwrap_or_default(),
        section: enum_of::<_, pb::Section>(o.section),
        file: o.file.clone(),
    }
}

pub fn object_event(e: &ObjectEvent) -> pb::ObjectEvent {
    pb::ObjectEvent {
        object: Some(object_ref(&e.object)),
        action: enum_of::<_, pb::Action>(e.action),
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
        status: enum_of::<_, pb::DeploymentStatus>(v.status),
        message: v.message.clone(),
        objects: v.objects.iter().map(object_ref).collect(),
        backend: enum_of::<_, pb::Backend>(v.backend),
        updated_at: v.updated_at.clone(),
        dependents: v.dependents.clone(),
        wakeups: v.wakeups,
    }
}

pub fn secrets(v: &DeploymentSecretsView) -> pb::DeploymentSecrets {
    pb::DeploymentSecrets {
        namespace: v.namespace.clone(),
        module: v.module.clone(),
        name: v.name.clone(),
        secrets: Some(to_struct(&v.secrets)),
    }
}

pub fn summary(s: &Summary) -> pb::DeploySummary {
    pb::DeploySummary {
        deployment: Some(deployment(&s.deployment)),
        created: s.counts.created,
        configured: s.counts.configured,
        unchanged: s.counts.unchanged,
        deleted: s.counts.deleted,
        kept: s.counts.kept,
        elapsed_ms: s.elapsed_ms,
    }
}

pub fn dry_run(v: &DryRunView) -> pb::DryRunResponse {
    let placeholder = |p: &PlaceholderView| pb::Placeholder {
        default: Some(to_proto_value(&p.default)),
        current: Some(to_proto_value(&p.current)),
        r#type: enum_of::<_, pb::PlaceholderType>(p.ty),
        description: p.description.clone(),
        secret: p.secret,
    };
    pb::DryRunResponse {
        placeholders: v.placeholders.iter().map(|(n, p)| (n.clone(), placeholder(p))).collect(),
        has_dependencies: v.dependencies.is_some(),
        dependencies: v.dependencies.clone().unwrap_or_default(),
        modules: v.modules.clone(),
        module: v.module.clone(),
        version: v.version.clone(),
        namespace: v.namespace.clone(),
        name: v.name.clone(),
        objects: v.objects.iter().map(object_ref).collect(),
    }
}

pub fn template(t: &TemplateView) -> pb::Template {
    let version = |v: &TemplateVersionView| pb::TemplateVersion {
        version: v.version.clone(),
        format: enum_of::<_, pb::TemplateFormat>(v.format),
        source: v.source.clone(),
        has_dependencies: v.has_dependencies,
        local_recipe: v.local_recipe,
        placeholders: v.placeholders.clone(),
        description: v.description.clone(),
        placeholder_specs: v.placeholder_specs.iter().map(placeholder_spec).collect(),
    };
    pb::Template { module: t.module.clone(), versions: t.versions.iter().map(version).collect() }
}

fn placeholder_spec(p: &PlaceholderSpecView) -> pb::PlaceholderSpec {
    pb::PlaceholderSpec {
        name: p.name.clone(),
        r#type: enum_of::<_, pb::PlaceholderType>(p.ty),
        default: Some(to_proto_value(&p.default)),
        description: p.description.clone(),
        secret: p.secret,
        required: p.required,
    }
}

// === messages → views ===

impl TryFrom<&pb::ObjectRef> for ObjectRef {
    type Error = Error;

    fn try_from(o: &pb::ObjectRef) -> Result<Self> {
        Ok(ObjectRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            namespace: Some(o.namespace.clone()).filter(|ns| !ns.is_empty()),
            section: pb::Section::decode(o.section)?,
            file: o.file.clone(),
        })
    }
}

impl TryFrom<&pb::ObjectEvent> for ObjectEvent {
    type Error = Error;

    fn try_from(e: &pb::ObjectEvent) -> Result<Self> {
        Ok(ObjectEvent {
            object: e.object.as_ref().ok_or(Error::Missing("object"))?.try_into()?,
            action: pb::Action::decode(e.action)?,
            line: e.line.clone(),
            message: e.message.clone(),
        })
    }
}

impl TryFrom<&pb::Deployment> for DeploymentView {
    type Error = Error;

    fn try_from(d: &pb::Deployment) -> Result<Self> {
        Ok(DeploymentView {
            namespace: d.namespace.clone(),
            module: d.module.clone(),
            name: d.name.clone(),
            version: d.version.clone(),
            config: d.config.as_ref().map(from_struct).unwrap_or_default(),
            endpoints: d.endpoints.clone(),
            status: pb::DeploymentStatus::decode(d.status)?,
            message: d.message.clone(),
            objects: d.objects.iter().map(ObjectRef::try_from).collect::<Result<_>>()?,
            backend: pb::Backend::decode(d.backend)?,
            updated_at: d.updated_at.clone(),
            dependents: d.dependents.clone(),
            wakeups: d.wakeups,
        })
    }
}

impl From<&pb::DeploymentSecrets> for DeploymentSecretsView {
    fn from(d: &pb::DeploymentSecrets) -> Self {
        DeploymentSecretsView {
            namespace: d.namespace.clone(),
            module: d.module.clone(),
            name: d.name.clone(),
            secrets: d.secrets.as_ref().map(from_struct).unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::DeploySummary> for Summary {
    type Error = Error;

    fn try_from(s: &pb::DeploySummary) -> Result<Self> {
        Ok(Summary {
            deployment: s.deployment.as_ref().ok_or(Error::Missing("deployment"))?.try_into()?,
            counts: Counts {
                created: s.created,
                configured: s.configured,
                unchanged: s.unchanged,
                deleted: s.deleted,
                kept: s.kept,
            },
            elapsed_ms: s.elapsed_ms,
        })
    }
}

impl TryFrom<&pb::DryRunResponse> for DryRunView {
    type Error = Error;

    fn try_from(r: &pb::DryRunResponse) -> Result<Self> {
        let placeholder = |p: &pb::Placeholder| -> Result<PlaceholderView> {
            Ok(PlaceholderView {
                default: value_of(p.default.as_ref()),
                current: value_of(p.current.as_ref()),
                ty: pb::PlaceholderType::decode(p.r#type)?,
                description: p.description.clone(),
                secret: p.secret,
            })
        };
        Ok(DryRunView {
            placeholders: r
                .placeholders
                .iter()
                .map(|(n, p)| Ok((n.clone(), placeholder(p)?)))
                .collect::<Result<_>>()?,
            dependencies: r.has_dependencies.then(|| r.dependencies.clone()),
            modules: r.modules.clone(),
            module: r.module.clone(),
            version: r.version.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            objects: r.objects.iter().map(ObjectRef::try_from).collect::<Result<_>>()?,
        })
    }
}

impl TryFrom<&pb::Template> for TemplateView {
    type Error = Error;

    fn try_from(t: &pb::Template) -> Result<Self> {
        let version = |v: &pb::TemplateVersion| -> Result<TemplateVersionView> {
            Ok(TemplateVersionView {
                version: v.version.clone(),
                format: pb::TemplateFormat::decode(v.format)?,
                source: v.source.clone(),
                description: v.description.clone(),
                has_dependencies: v.has_dependencies,
                local_recipe: v.local_recipe,
                placeholders: v.placeholders.clone(),
                placeholder_specs: v
                    .placeholder_specs
                    .iter()
                    .map(|p| {
                        Ok(PlaceholderSpecView {
                            name: p.name.clone(),
                            ty: pb::PlaceholderType::decode(p.r#type)?,
                            default: value_of(p.default.as_ref()),
                            description: p.description.clone(),
                            secret: p.secret,
                            required: p.required,
                        })
                    })
                    .collect::<Result<_>>()?,
            })
        };
        Ok(TemplateView { module: t.module.clone(), versions: t.versions.iter().map(version).collect::<Result<_>>()? })
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

    #[test]
    fn a_deployment_view_round_trips_through_its_message_with_typed_enums() {
        let view = DeploymentView {
            namespace: "default".into(),
            module: "redis".into(),
            name: "cache".into(),
            version: "latest".into(),
            config: json!({"memory": "64mb", "password": "<redacted>"}).as_object().cloned().unwrap(),
            endpoints: vec!["127.0.0.1:6379".into()],
            status: backend::Status::Failed,
            message: "boom".into(),
            objects: vec![ObjectRef {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "cache".into(),
                namespace: Some("default".into()),
                section: Section::Dependencies,
                file: "redis.yaml".into(),
            }],
            backend: backend::Kind::Kubernetes,
            updated_at: "2026-01-01T00:00:00Z".into(),
            dependents: vec!["jac-cloud/app".into()],
            wakeups: 0,
        };
        let message = deployment(&view);
        assert_eq!(message.status, pb::DeploymentStatus::Failed as i32);
        assert_eq!(message.backend, pb::Backend::Kubernetes as i32);
        assert_eq!(message.objects[0].section, pb::Section::Dependencies as i32);
        assert_eq!(DeploymentView::try_from(&message).unwrap(), view);
    }

    #[test]
    fn unspecified_enumerations_are_refused_by_name() {
        let message = pb::Deployment { status: 0, backend: pb::Backend::Local as i32, ..Default::default() };
        let err = DeploymentView::try_from(&message).unwrap_err();
        assert!(err.to_string().contains("deployment status (0)"), "{err}");
    }
}
