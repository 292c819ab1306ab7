//! Placeholder schema (`placeholders.yaml`) and the resolution of a request's values against it:
//! type checks (down to each element of a list that declares `items`), defaults, and generated
//! secrets. Quantities are checked by [`super::quantity`], pip requirements by
//! [`super::requirements`], so a bad value is refused here, naming the placeholder or the element
//! (`packages[1]`), before anything is rendered or run.

use rand::distr::Alphanumeric;
use rand::Rng;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{quantity, requirements, Error, Result};

/// Length of generated secret values (the original shipped a fixed `12345678`).
pub const SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = PlaceholderType)]
pub enum Type {
    String,
    Integer,
    Number,
    Boolean,
    List,
    Map,
    /// A Kubernetes quantity: a number, or a string such as `500m`, `0.5`, `512Mi`, `1Gi`, `1e3`.
    Quantity,
    Any,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
            Type::List => "list",
            Type::Map => "map",
            Type::Quantity => "quantity",
            Type::Any => "any",
        }
    }

    /// The type a legacy template's JSON default implies (legacy stores declare no types).
    pub fn infer(default: &Value) -> Type {
        match default {
            Value::String(s) if s.is_empty() => Type::String,
            Value::String(_) => Type::String,
            Value::Number(n) if n.is_i64() || n.is_u64() => Type::Quantity,
            Value::Number(_) => Type::Quantity,
            Value::Bool(_) => Type::Boolean,
            Value::Array(_) => Type::List,
            Value::Object(_) => Type::Map,
            Value::Null => Type::Any,
        }
    }

    /// Whether `value` has this type's JSON kind (its content is checked by [`check_content`]).
    fn has_kind(self, value: &Value) -> bool {
        match (self, value) {
            (Type::Any, _) => true,
            (Type::String, Value::String(_)) => true,
            (Type::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Type::Number, Value::Number(_)) => true,
            (Type::Boolean, Value::Bool(_)) => true,
            (Type::List, Value::Array(_)) => true,
            (Type::Map, Value::Object(_)) => true,
            (Type::Quantity, Value::Number(_) | Value::String(_)) => true,
            _ => false,
        }
    }
}

/// The type of each element of a list placeholder (`items:` in `placeholders.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Item {
    String,
    Integer,
    Number,
    Boolean,
    Quantity,
    /// A pip requirement ([`requirements::validate`]); a list of them holds at most
    /// [`requirements::MAX_COUNT`].
    Requirement,
}

impl Item {
    pub fn as_str(self) -> &'static str {
        match self {
            Item::String => "string",
            Item::Integer => "integer",
            Item::Number => "number",
            Item::Boolean => "boolean",
            Item::Quantity => "quantity",
            Item::Requirement => "requirement (a string)",
        }
    }

    fn has_kind(self, value: &Value) -> bool {
        match self {
            Item::String | Item::Requirement => value.is_string(),
            Item::Integer => Type::Integer.has_kind(value),
            Item::Number => value.is_number(),
            Item::Boolean => value.is_boolean(),
            Item::Quantity => Type::Quantity.has_kind(value),
        }
    }
}

/// Whether a value of the right kind is also a valid one: quantities within bounds, requirements
/// PEP 508 and nothing pip would read as an option, a path or a URL.
fn check_content(quantity: bool, requirement: bool, value: &Value) -> std::result::Result<(), String> {
    match value {
        Value::String(s) if quantity => quantity::parse(s).map(|_| ()).map_err(|e| e.to_string()),
        Value::Number(n) if quantity => quantity::check_number(n).map_err(|e| e.to_string()),
        Value::String(s) if requirement => requirements::validate(s).map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// Kind of a JSON value, for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// One declared placeholder.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub ty: Type,
    pub default: Value,
    pub description: String,
    pub secret: bool,
    pub pattern: Option<Regex>,
    /// Must be given by the caller (no default).
    pub required: bool,
    /// Type of every element (lists only).
    pub items: Option<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(rename = "type")]
    ty: Type,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    required: bool,
    /// May be left out: no default, resolves to null (false in `{{#if}}`, empty when written).
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    items: Option<Item>,
}

/// The `placeholders.yaml` file of a native template version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    description: String,
    placeholders: indexmap_like::OrderedMap<RawSpec>,
    /// Read by [`super::outputs::Outputs::parse`].
    #[serde(default, rename = "outputs")]
    _outputs: Option<serde::de::IgnoredAny>,
}

/// serde_json's `preserve_order` map gives us declaration order without another crate.
mod indexmap_like {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer};

    #[derive(Debug)]
    pub(super) struct OrderedMap<T>(pub(super) Vec<(String, T)>);

    impl<'de, T: DeserializeOwned> Deserialize<'de> for OrderedMap<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
            map.into_iter()
                .map(|(k, v)| {
                    serde_json::from_value(v)
                        .map(|t| (k.clone(), t))
                        .map_err(|e| serde::de::Error::custom(format!("placeholder `{k}`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(OrderedMap)
        }
    }
}

/// Parses `placeholders.yaml`; returns (description, specs in declaration order).
pub fn parse_file(text: &str, origin: &str) -> Result<(String, Vec<Spec>)> {
    let raw: RawFile = serde_norway::from_str(text)
        .map_err(|e| Error::BadTemplate { origin: origin.to_string(), message: e.to_string() })?;
    let mut specs = Vec::with_capacity(raw.placeholders.0.len());
    for (name, r) in raw.placeholders.0 {
        let bad = |message: String| Error::BadTemplate { origin: origin.to_string(), message };
        let pattern = r
            .pattern
            .map(|p| {
                Regex::new(&format!("^(?:{p})$")).map_err(|e| bad(format!("placeholder `{name}`: bad pattern: {e}")))
            })
            .transpose()?;
        if r.optional && (r.required || r.default.is_some()) {
            return Err(bad(format!(
                "placeholder `{name}`: `optional` means no default and not required; drop `required` and `default`"
            )));
        }
        let default = match (r.default, r.secret || r.required || r.optional) {
            (Some(d), _) => d,
            (None, true) => Value::Null,
            (None, false) => match r.ty {
                Type::List => Value::Array(vec![]),
                Type::Map => Value::Object(Map::new()),
                Type::String => Value::String(String::new()),
                _ => return Err(bad(format!("placeholder `{name}` has no default"))),
            },
        };
        if r.items.is_some() && r.ty != Type::List {
            return Err(bad(format!("placeholder `{name}`: `items` is only for lists")));
        }
        let spec = Spec {
            name,
            ty: r.ty,
            default,
            description: r.description,
            secret: r.secret,
            pattern,
            required: r.required,
            items: r.items,
        };
        if !spec.default.is_null() {
            check(&spec, &spec.default)
                .map_err(|e| bad(format!("placeholder `{}`: the default is not valid: {e}", spec.name)))?;
        }
        specs.push(spec);
    }
    Ok((raw.description, specs))
}

/// How one placeholder was resolved, for the dry-run report.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub ty: Type,
    pub default: Value,
    pub current: Value,
    pub description: String,
    pub secret: bool,
    /// The value was generated (secret not given by the caller nor remembered).
    pub generated: bool,
}

/// Resolved values (template order) plus the per-placeholder report.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub values: Map<String, Value>,
    pub reports: Vec<Report>,
}

impl Resolved {
    pub fn secret_keys(&self) -> Vec<String> {
        self.reports.iter().filter(|r| r.secret).map(|r| r.name.clone()).collect()
    }
}

/// Checks `config` against `specs` and fills in defaults. Secrets not given are taken from
/// `remembered` (the existing deployment's values, so a redeploy keeps its password) or generated.
pub fn resolve(
    specs: &[Spec],
    config: &Map<String, Value>,
    remembered: Option<&Map<String, Value>>,
) -> Result<Resolved> {
    if let Some(unknown) = config.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        return Err(Error::UnknownPlaceholder {
            name: unknown.clone(),
            valid: specs.iter().map(|s| s.name.clone()).collect(),
        });
    }
    let mut values = Map::new();
    let mut reports = Vec::with_capacity(specs.len());
    for spec in specs {
        // An explicit null where the template has no default is "not given": a resolved config
        // (an optional placeholder left out is null in it) resolves again to itself.
        let given = config.get(&spec.name).filter(|v| !(v.is_null() && spec.default.is_null()));
        let mut generated = false;
        let current = match given {
            Some(v) => {
                check(spec, v)?;
                v.clone()
            }
            None if spec.secret && spec.default.is_null() => {
                match remembered.and_then(|m| m.get(&spec.name)).filter(|v| v.is_string()) {
                    Some(v) => v.clone(),
                    None => {
                        generated = true;
                        Value::String(generate_secret())
                    }
                }
            }
            None if spec.required => {
                return Err(Error::InvalidValue { name: spec.name.clone(), reason: "is required".into() });
            }
            None => spec.default.clone(),
        };
        values.insert(spec.name.clone(), current.clone());
        reports.push(Report {
            name: spec.name.clone(),
            ty: spec.ty,
            default: spec.default.clone(),
            current,
            description: spec.description.clone(),
            secret: spec.secret,
            generated,
        });
    }
    Ok(Resolved { values, reports })
}

fn check(spec: &Spec, value: &Value) -> Result<()> {
    if !spec.ty.has_kind(value) {
        return Err(Error::WrongType { name: spec.name.clone(), expected: spec.ty.as_str(), got: kind_of(value) });
    }
    check_content(spec.ty == Type::Quantity, false, value)
        .map_err(|reason| Error::InvalidValue { name: spec.name.clone(), reason })?;
    if let (Some(item), Value::Array(elements)) = (spec.items, value) {
        if item == Item::Requirement && elements.len() > requirements::MAX_COUNT {
            return Err(Error::InvalidValue {
                name: spec.name.clone(),
                reason: format!(
                    "holds {} requirements; at most {} are allowed",
                    elements.len(),
                    requirements::MAX_COUNT
                ),
            });
        }
        for (i, element) in elements.iter().enumerate() {
            let name = || format!("{}[{i}]", spec.name);
            if !item.has_kind(element) {
                return Err(Error::WrongType { name: name(), expected: item.as_str(), got: kind_of(element) });
            }
            check_content(item == Item::Quantity, item == Item::Requirement, element)
                .map_err(|reason| Error::InvalidValue { name: name(), reason })?;
        }
    }
    if let (Some(re), Value::String(s)) = (&spec.pattern, value) {
        if !re.is_match(s) {
            return Err(Error::InvalidValue {
                name: spec.name.clone(),
                reason: format!("must match {}", re.as_str().trim_start_matches("^(?:").trim_end_matches(")$")),
            });
        }
    }
    if spec.secret {
        if let Value::String(s) = value {
            if s.is_empty() {
                return Err(Error::InvalidValue {
                    name: spec.name.clone(),
                    reason: "a secret must not be empty".into(),
                });
            }
        }
    }
    Ok(())
}

pub fn generate_secret() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(SECRET_LEN).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<Spec> {
        let text = r#"
description: test
placeholders:
  name: {type: string, default: jac-redis, pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?"}
  replicas: {type: integer, default: 1}
  cpu: {type: quantity, default: 0.2}
  password: {type: string, secret: true}
  env-vars: {type: map}
  packages: {type: list, items: requirement}
  sizes: {type: list, items: quantity, default: []}
"#;
        parse_file(text, "t").unwrap().1
    }

    #[test]
    fn defaults_fill_in_and_order_is_declaration_order() {
        let r = resolve(&specs(), &Map::new(), None).unwrap();
        let keys: Vec<_> = r.values.keys().cloned().collect();
        assert_eq!(keys, ["name", "replicas", "cpu", "password", "env-vars", "packages", "sizes"]);
        assert_eq!(r.values["name"], json!("jac-redis"));
        assert_eq!(r.values["env-vars"], json!({}));
    }

    #[test]
    fn secrets_are_generated_long_and_random_and_remembered() {
        let a = resolve(&specs(), &Map::new(), None).unwrap();
        let b = resolve(&specs(), &Map::new(), None).unwrap();
        let pa = a.values["password"].as_str().unwrap();
        assert!(pa.len() >= 24);
        assert_ne!(pa, b.values["password"].as_str().unwrap());
        assert!(a.reports.iter().any(|r| r.name == "password" && r.generated));
        let c = resolve(&specs(), &Map::new(), Some(&a.values)).unwrap();
        assert_eq!(c.values["password"], a.values["password"]);
    }

    #[test]
    fn unknown_placeholder_is_named_with_the_valid_ones() {
        let mut cfg = Map::new();
        cfg.insert("nmae".into(), json!("x"));
        let err = resolve(&specs(), &cfg, None).unwrap_err().to_string();
        assert!(err.contains("nmae") && err.contains("replicas"), "{err}");
    }

    #[test]
    fn wrong_type_names_placeholder_and_expected_type() {
        let mut cfg = Map::new();
        cfg.insert("replicas".into(), json!("three"));
        let err = resolve(&specs(), &cfg, None).unwrap_err().to_string();
        assert!(err.contains("replicas") && err.contains("integer"), "{err}");
        let mut cfg = Map::new();
        cfg.insert("cpu".into(), json!("lots"));
        assert!(resolve(&specs(), &cfg, None).is_err());
        cfg.insert("cpu".into(), json!("500m"));
        assert!(resolve(&specs(), &cfg, None).is_ok());
    }

    #[test]
    fn pattern_is_enforced() {
        let mut cfg = Map::new();
        cfg.insert("name".into(), json!("Bad_Name"));
        let err = resolve(&specs(), &cfg, None).unwrap_err().to_string();
        assert!(err.contains("name") && err.contains("must match"), "{err}");
    }

    fn refused(name: &str, value: Value) -> Error {
        let mut cfg = Map::new();
        cfg.insert(name.into(), value);
        resolve(&specs(), &cfg, None).unwrap_err()
    }

    #[test]
    fn quantities_are_kubernetes_quantities_within_bounds() {
        for (value, reason) in [
            (json!("-1"), "negative"),
            (json!(-1), "negative"),
            (json!("1e308"), "larger"),
            (json!(1e308), "larger"),
            (json!("1000mb"), "not a Kubernetes quantity"),
        ] {
            let e = refused("cpu", value.clone());
            assert_eq!(e.field().as_deref(), Some("config.cpu"), "{value}");
            assert!(matches!(e, Error::InvalidValue { .. }) && e.to_string().contains(reason), "{value}: {e}");
        }
        assert!(matches!(refused("cpu", json!(true)), Error::WrongType { .. }));
    }

    #[test]
    fn list_elements_are_checked_and_named_by_index() {
        let e = refused("packages", json!(["numpy", 3]));
        assert!(matches!(e, Error::WrongType { .. }), "{e:?}");
        assert_eq!(e.field().as_deref(), Some("config.packages[1]"));
        let e = refused("packages", json!(["numpy", "-r", "/etc/passwd"]));
        assert_eq!(e.field().as_deref(), Some("config.packages[1]"));
        assert!(e.to_string().contains("pip option"), "{e}");
        let e = refused("sizes", json!(["1Gi", "-5"]));
        assert_eq!(e.field().as_deref(), Some("config.sizes[1]"));
        let many: Vec<String> = (0..=requirements::MAX_COUNT).map(|i| format!("p{i}")).collect();
        let e = refused("packages", json!(many));
        assert_eq!(e.field().as_deref(), Some("config.packages"));
        let mut cfg = Map::new();
        cfg.insert("packages".into(), json!(["numpy==2.1.3", "requests[socks]>=2"]));
        assert!(resolve(&specs(), &cfg, None).is_ok());
    }

    #[test]
    fn templates_with_invalid_defaults_or_items_on_scalars_are_refused() {
        let bad_default = "placeholders:\n  cpu: {type: quantity, default: \"-1\"}\n";
        assert!(parse_file(bad_default, "t").unwrap_err().to_string().contains("negative"));
        let items_on_scalar = "placeholders:\n  x: {type: string, items: string}\n";
        assert!(parse_file(items_on_scalar, "t").unwrap_err().to_string().contains("only for lists"));
        let bad_element = "placeholders:\n  p: {type: list, items: requirement, default: [\"-e.\"]}\n";
        assert!(parse_file(bad_element, "t").is_err());
    }

    #[test]
    fn optional_placeholders_resolve_to_null_unless_given_and_are_still_checked() {
        let text =
            "placeholders:\n  cpu: {type: quantity, default: 1}\n  cpu-limit: {type: quantity, optional: true}\n";
        let specs = parse_file(text, "t").unwrap().1;
        let r = resolve(&specs, &Map::new(), None).unwrap();
        assert_eq!(r.values["cpu-limit"], Value::Null);
        let mut cfg = Map::new();
        cfg.insert("cpu-limit".into(), json!("2"));
        assert_eq!(resolve(&specs, &cfg, None).unwrap().values["cpu-limit"], json!("2"));
        let again = resolve(&specs, &r.values, None).unwrap();
        assert_eq!(again.values, r.values, "a resolved config resolves to itself");
        cfg.insert("cpu-limit".into(), json!("-2"));
        let e = resolve(&specs, &cfg, None).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("config.cpu-limit"));
    }

    #[test]
    fn optional_with_a_default_or_required_is_refused() {
        for text in [
            "placeholders:\n  l: {type: quantity, optional: true, default: 1}\n",
            "placeholders:\n  l: {type: quantity, optional: true, required: true}\n",
        ] {
            let e = parse_file(text, "t").unwrap_err().to_string();
            assert!(e.contains("`l`") && e.contains("optional"), "{e}");
        }
    }
}
