//! Native template rendering: handlebars with YAML-safe output.
//!
//! Safety comes from the escape function: `{{name}}` always emits one YAML double-quoted scalar
//! (JSON string syntax, which YAML accepts), so a value with newlines or `---` can never add keys
//! or objects. Typed values use helpers that emit JSON, which is also valid YAML flow:
//!
//! | helper | emits |
//! | --- | --- |
//! | `{{name}}` | the value as one quoted string |
//! | `{{yaml x}}` / `{{json x}}` | the value with its type: `1`, `0.2`, `true`, `"s"`, `["a"]`, `{"k": "v"}` |
//! | `{{str a "-" b}}` | the parts concatenated into one quoted string |
//! | `{{lines "first" x}}` | lines (scalars, or every item of a list) joined as one quoted string |
//! | `{{string-map x}}` | a map with every value turned into a string (Secret `stringData`) |
//!
//! Triple-stash `{{{x}}}` would bypass the escaping, so templates using it are refused at load.

use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::{Map, Value};

use super::{Error, Result};

/// A compiled set of native template files.
#[derive(Debug)]
pub struct Compiled {
    registry: Handlebars<'static>,
}

impl Compiled {
    /// Compiles files (name, text); fails on syntax errors and on triple-stash.
    pub fn new<'a>(origin: &str, files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.set_prevent_indent(true);
        registry.register_escape_fn(quote);
        registry.register_helper("yaml", Box::new(yaml_helper));
        registry.register_helper("json", Box::new(yaml_helper));
        registry.register_helper("str", Box::new(str_helper));
        registry.register_helper("lines", Box::new(lines_helper));
        registry.register_helper("string-map", Box::new(string_map_helper));
        for (name, text) in files {
            if text.contains("{{{") {
                return Err(Error::BadTemplate {
                    origin: format!("{origin}/{name}"),
                    message: "triple-stash {{{...}}} is not allowed: it would insert values without YAML quoting"
                        .into(),
                });
            }
            registry
                .register_template_string(name, text)
                .map_err(|e| Error::BadTemplate { origin: format!("{origin}/{name}"), message: e.to_string() })?;
        }
        Ok(Compiled { registry })
    }

    pub fn render(&self, origin: &str, name: &str, values: &Map<String, Value>) -> Result<String> {
        self.registry
            .render(name, values)
            .map_err(|e| Error::Render { file: format!("{origin}/{name}"), message: e.reason().to_string() })
    }
}

/// One YAML double-quoted scalar holding `s` exactly.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// Text of a scalar for concatenation: strings raw, numbers and booleans as written.
fn scalar_text(v: &Value) -> std::result::Result<String, RenderErrorReason> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        other => {
            Err(RenderErrorReason::Other(format!("expected a scalar, got {}", super::placeholders::kind_of(other))))
        }
    }
}

fn param<'a>(h: &'a Helper<'_>, i: usize) -> std::result::Result<&'a Value, RenderErrorReason> {
    h.param(i).map(|p| p.value()).ok_or_else(|| RenderErrorReason::ParamNotFoundForIndex("helper", i))
}

fn yaml_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = param(h, 0)?;
    out.write(&serde_json::to_string(v).map_err(|e| RenderErrorReason::Other(e.to_string()))?)?;
    Ok(())
}

fn str_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let mut s = String::new();
    for p in h.params() {
        s.push_str(&scalar_text(p.value())?);
    }
    out.write(&quote(&s))?;
    Ok(())
}

fn lines_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    // Each part is one line (a scalar) or several (a list), so fixed lines can precede a list.
    let mut s = String::new();
    for p in h.params() {
        match p.value() {
            Value::Array(items) => {
                for item in items {
                    s.push_str(&scalar_text(item)?);
                    s.push('\n');
                }
            }
            other => {
                s.push_str(&scalar_text(other)?);
                s.push('\n');
            }
        }
    }
    out.write(&quote(&s))?;
    Ok(())
}

fn string_map_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = param(h, 0)?;
    let map = v.as_object().ok_or_else(|| {
        RenderErrorReason::Other(format!("`string-map` needs a map, got {}", super::placeholders::kind_of(v)))
    })?;
    let mut strings = Map::new();
    for (k, v) in map {
        let text = match v {
            Value::Array(_) | Value::Object(_) => v.to_string(),
            other => scalar_text(other)?,
        };
        strings.insert(k.clone(), Value::String(text));
    }
    out.write(&Value::Object(strings).to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(text: &str, values: Value) -> Result<String> {
        let c = Compiled::new("t", [("f.yaml", text)])?;
        c.render("t", "f.yaml", values.as_object().unwrap())
    }

    #[test]
    fn plain_insertion_is_one_quoted_scalar_even_with_document_markers() {
        let out = render("name: {{name}}\nkind: X\n", json!({"name": "a\n---\nkind: Secret\nb: c"})).unwrap();
        let docs: Vec<Value> =
            serde_norway::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["name"], json!("a\n---\nkind: Secret\nb: c"));
        assert_eq!(docs[0]["kind"], json!("X"));
    }

    #[test]
    fn typed_helpers_keep_types() {
        let out = render(
            "r: {{yaml replicas}}\nc: {{yaml cpu}}\nl: {{json l}}\ns: {{str user \"-password\"}}\n",
            json!({"replicas": 2, "cpu": 0.5, "l": ["a", 1], "user": "me"}),
        )
        .unwrap();
        assert_eq!(out, "r: 2\nc: 0.5\nl: [\"a\",1]\ns: \"me-password\"\n");
    }

    #[test]
    fn lines_and_string_maps() {
        let out = render(
            "a: {{lines \"p\" args}}\nd: {{string-map env}}\n",
            json!({"args": ["x", "y"], "env": {"N": 1, "S": "v"}}),
        )
        .unwrap();
        assert_eq!(out, "a: \"p\\nx\\ny\\n\"\nd: {\"N\":\"1\",\"S\":\"v\"}\n");
    }

    #[test]
    fn hyphenated_names_render() {
        let out = render("a: {{yaml cpu-limit}}\n", json!({"cpu-limit": 1})).unwrap();
        assert_eq!(out, "a: 1\n");
    }

    #[test]
    fn undeclared_names_fail_strictly() {
        let err = render("a: {{nope}}\n", json!({})).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn triple_stash_is_refused() {
        assert!(render("a: {{{x}}}\n", json!({"x": 1})).is_err());
    }
}
