//! YAML text forms for values: when a string may be written as a bare plain scalar, how any
//! value is written as JSON that YAML reads back identically, which characters YAML cannot
//! hold literally or reads as line breaks. Pure functions; the emitters decide which form a
//! place needs.

use serde_json::Value;

/// YAML `c-printable` (what may appear literally in a YAML stream), minus the BOM.
pub(super) fn is_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | '\u{85}'
        | '\u{20}'..='\u{7e}'
        | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fefe}'
        | '\u{ff00}'..='\u{fffd}'
        | '\u{10000}'..='\u{10ffff}')
}

/// Characters YAML (1.1, as libyaml reads it) treats as line breaks.
pub(super) fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Text of a value: strings as-is, everything else as JSON.
pub(super) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => json_flow(other),
    }
}

/// JSON text that is also valid YAML flow syntax (spaces after `:` and `,`, and every character
/// YAML does not allow literally escaped).
pub(super) fn json_flow(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&json_quote(s)),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&json_quote(k));
                out.push_str(": ");
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal, which YAML reads back identically as a double-quoted scalar.
pub(super) fn json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    push_json_escaped(s, &mut out);
    out.push('"');
    out
}

pub(super) fn push_json_escaped(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if !is_printable(c) || is_break(c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Can `s` be written as a complete plain scalar without adding structure?
pub(super) fn plain_safe(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    if s.starts_with(' ') || s.ends_with(' ') || s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if s.chars().any(|c| c == '\t' || is_break(c) || !is_printable(c)) {
        return false;
    }
    if matches!(first, ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@' | '`') {
        return false;
    }
    if matches!(first, '-' | '?' | ':') && second.is_none_or(|c| c == ' ' || (flow && "[]{},".contains(c))) {
        return false;
    }
    if s.contains(": ") || s.ends_with(':') || s.contains(" #") {
        return false;
    }
    if flow && s.contains([',', '[', ']', '{', '}', ':']) {
        return false;
    }
    true
}

/// Plain-safe text for a whole scalar, or its JSON string form.
pub(super) fn whole_scalar(v: &Value, flow: bool) -> String {
    match v {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) if plain_safe(s, flow) => s.clone(),
        Value::String(s) => json_quote(s),
        other => json_flow(other),
    }
}

/// Would this line, at column 0, be a `---` or `...` document marker?
pub(super) fn doc_marker_line(l: &str) -> bool {
    (l.starts_with("---") || l.starts_with("..."))
        && l[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t' || c == '\r')
}

/// Does the first non-empty line of `t` start with whitespace?
pub(super) fn leading_ws_first_line(t: &str) -> bool {
    t.split('\n').find(|l| !l.is_empty()).is_some_and(|l| l.starts_with([' ', '\t']))
}

/// Keys written bare: identifier-like and not a YAML 1.1 boolean/null word.
pub(super) fn plain_key(k: &str) -> bool {
    let mut chars = k.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return false;
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)) {
        return false;
    }
    !matches!(k.to_ascii_lowercase().as_str(), "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null")
}

#[cfg(test)]
mod tests {
    use super::{json_quote, plain_safe, whole_scalar};
    use serde_json::{json, Value};

    const TRICKY: &[&str] = &[
        "plain",
        "a: b",
        "x\n---\nkind: Secret",
        "tab\there",
        "q\"uote\\",
        "'single'",
        "#hash",
        " lead",
        "nel\u{85}ls\u{2028}ps\u{2029}",
        "bell\u{7}del\u{7f}",
        "bom\u{feff}",
        "emoji \u{1f600}",
        "",
    ];

    #[test]
    fn json_quoted_strings_read_back_identically() {
        for s in TRICKY {
            let doc = format!("k: {}\n", json_quote(s));
            let y: serde_norway::Value = serde_norway::from_str(&doc).expect("valid yaml");
            assert_eq!(y.get("k").and_then(|v| v.as_str()), Some(*s), "{doc}");
        }
    }

    #[test]
    fn whole_scalars_never_add_structure() {
        for s in TRICKY {
            for flow in [false, true] {
                let text = whole_scalar(&json!(s), flow);
                let doc = if flow { format!("k: [{text}, end]\n") } else { format!("k: {text}\nend: 1\n") };
                let y: serde_norway::Value = serde_norway::from_str(&doc).expect("valid yaml");
                let got = if flow { y.get("k").and_then(|k| k.get(0)) } else { y.get("k") };
                assert_eq!(got.and_then(|v| v.as_str()), Some(*s), "{doc}");
                // Bare only when it reads back as the same string.
                assert_eq!(plain_safe(s, flow), text == *s, "{s:?}");
            }
        }
        assert_eq!(whole_scalar(&Value::from(3), false), "3");
    }
}
