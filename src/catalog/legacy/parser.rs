//! The placeholder parser: finds every `$g{…}`, `$a{…}` and `$d{…}` in a template's text with
//! its name, its JSON default and the exact byte range its value replaces. It knows only the one
//! layout rule of the language itself (`$a`/`$d` stand alone on their line); where a placeholder
//! sits in the YAML is the layout scanner's business.

use serde_json::{Map, Value};

/// The three placeholder kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `$g{...}`: replaced in place.
    Generic,
    /// `$a{...}`: one line per array element.
    Array,
    /// `$d{...}`: one `key: value` line per object entry.
    Dict,
}

/// A placeholder found by [`scan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Placeholder name (case-sensitive).
    pub name: String,
    /// Kind of the occurrence processed last (see [`scan`]).
    pub kind: Kind,
    /// JSON default written in the template (`""`, `[]` or `{}` when absent).
    pub default: Value,
}

/// Why a default written in a template was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefaultError {
    /// An `$a` default that is not an array, or a `$d` default that is not an object.
    #[error("default must be a json {0}")]
    Shape(&'static str),
    /// Not JSON (often a `}` inside a `$g` default, which ends the default early).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Placeholder text that cannot be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The placeholder text itself is malformed.
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// The default written in the template is not the JSON its kind needs.
    #[error("line {line}: bad default for placeholder `{name}`: {source}")]
    BadDefault {
        name: String,
        line: usize,
        #[source]
        source: DefaultError,
    },
}

/// Every placeholder in `text`, unique by name, in order of first appearance; `default` is the
/// JSON default written in the template (`""` / `[]` / `{}` when absent); when a name appears with
/// different defaults, the last one processed wins (upstream rule: all `$g` first, then `$a`, then
/// `$d`).
pub fn scan(text: &str) -> Result<Vec<Found>, super::Error> {
    let phs = parse(text)?;
    let mut out: Vec<Found> = Vec::new();
    for ph in &phs {
        if !out.iter().any(|f| f.name == ph.name) {
            out.push(Found { name: ph.name.clone(), kind: ph.kind, default: ph.default.clone() });
        }
    }
    // Upstream processed every $g, then every $a, then every $d, each overwriting the reported
    // default; replay that order so the reported default matches.
    for kind in [Kind::Generic, Kind::Array, Kind::Dict] {
        for ph in phs.iter().filter(|p| p.kind == kind) {
            if let Some(f) = out.iter_mut().find(|f| f.name == ph.name) {
                f.kind = kind;
                f.default = ph.default.clone();
            }
        }
    }
    Ok(out)
}

/// True when `text` contains any legacy placeholder (used to detect a legacy store).
pub fn is_legacy(text: &str) -> bool {
    let b = text.as_bytes();
    let mut pos = 0;
    while let Some(rel) = text[pos..].find('$') {
        let d = pos + rel;
        pos = d + 1;
        if matches!(b.get(d + 1), Some(b'g' | b'a' | b'd')) && b.get(d + 2) == Some(&b'{') {
            // A name must follow (after optional whitespace); this keeps shell `${VAR}` and
            // similar text from counting, since those have no `g`/`a`/`d` sigil letter anyway.
            let rest = &text[d + 3..];
            if let Some(c) = rest.trim_start().chars().next() {
                if !matches!(c, ':' | '{' | '}') {
                    return true;
                }
            }
        }
    }
    false
}

/// One placeholder occurrence.
#[derive(Debug, Clone)]
pub(super) struct Ph {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) default: Value,
    /// Offset of the `$`.
    pub(super) dollar: usize,
    /// Offset just past the closing `}`.
    pub(super) close_end: usize,
    /// Replaced range: the placeholder for `$g`; the whole line(s) for `$a`/`$d`.
    pub(super) start: usize,
    pub(super) end: usize,
    /// 1-based line of the `$`.
    pub(super) line: usize,
    /// Leading spaces of an `$a`/`$d` line.
    pub(super) indent: usize,
    /// `$a`/`$d` preceded by `- `.
    pub(super) dash: bool,
}

fn syntax(line: usize, message: impl Into<String>) -> Error {
    Error::Syntax { line, message: message.into() }
}

fn skip_ws(text: &str, mut i: usize) -> usize {
    // Bounded by the text length: every step consumes one character.
    while let Some(c) = text[i..].chars().next() {
        if !c.is_whitespace() {
            break;
        }
        i += c.len_utf8();
    }
    i
}

/// Every placeholder occurrence in `text`, in text order.
pub(super) fn parse(text: &str) -> Result<Vec<Ph>, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut line = 1;
    let mut counted = 0;
    while let Some(rel) = text[pos..].find('$') {
        let dollar = pos + rel;
        let kind = match (bytes.get(dollar + 1), bytes.get(dollar + 2)) {
            (Some(b'g'), Some(b'{')) => Kind::Generic,
            (Some(b'a'), Some(b'{')) => Kind::Array,
            (Some(b'd'), Some(b'{')) => Kind::Dict,
            _ => {
                pos = dollar + 1;
                continue;
            }
        };
        line += bytes[counted..dollar].iter().filter(|&&b| b == b'\n').count();
        counted = dollar;
        let ph = parse_one(text, dollar, kind, line)?;
        // Always advances: `end` is past the closing brace.
        pos = ph.end;
        out.push(ph);
    }
    Ok(out)
}

fn sigil(kind: Kind) -> &'static str {
    match kind {
        Kind::Generic => "$g",
        Kind::Array => "$a",
        Kind::Dict => "$d",
    }
}

fn parse_one(text: &str, dollar: usize, kind: Kind, line: usize) -> Result<Ph, Error> {
    let bytes = text.as_bytes();
    let sg = sigil(kind);
    let mut i = skip_ws(text, dollar + 3);
    let name_start = i;
    while let Some(c) = text[i..].chars().next() {
        if c.is_whitespace() || matches!(c, ':' | '{' | '}') {
            break;
        }
        i += c.len_utf8();
    }
    let name = text[name_start..i].to_owned();
    if name.is_empty() {
        return Err(syntax(line, format!("{sg}{{...}} without a name")));
    }
    i = skip_ws(text, i);
    let bad = |source: DefaultError| Error::BadDefault { name: name.clone(), line, source };
    let (default, close_end) = match bytes.get(i) {
        Some(b'}') => {
            let d = match kind {
                Kind::Generic => Value::String(String::new()),
                Kind::Array => Value::Array(Vec::new()),
                Kind::Dict => Value::Object(Map::new()),
            };
            (d, i + 1)
        }
        Some(b':') => {
            let j = skip_ws(text, i + 1);
            let (raw, close_end) = match kind {
                Kind::Generic => match text[j..].find('}') {
                    // Upstream rule: the default ends at the first `}`.
                    Some(rel) => (text[j..j + rel].trim_end(), j + rel + 1),
                    None => return Err(syntax(line, format!("unterminated {sg}{{{name}"))),
                },
                Kind::Array | Kind::Dict => {
                    let (open, closer) = if kind == Kind::Array { (b'[', ']') } else { (b'{', '}') };
                    if bytes.get(j) != Some(&open) {
                        return Err(bad(DefaultError::Shape(if kind == Kind::Array { "array" } else { "object" })));
                    }
                    find_collection_end(text, j, closer)
                        .map(|(end, close)| (&text[j..end], close))
                        .ok_or_else(|| syntax(line, format!("unterminated {sg}{{{name}")))?
                }
            };
            let d: Value = serde_json::from_str(raw).map_err(|e| bad(e.into()))?;
            (d, close_end)
        }
        _ => return Err(syntax(line, format!("expected `}}` or `:` after {sg}{{{name}"))),
    };
    let mut ph =
        Ph { kind, name, default, dollar, close_end, start: dollar, end: close_end, line, indent: 0, dash: false };
    if kind != Kind::Generic {
        let line_start = text[..dollar].rfind('\n').map_or(0, |p| p + 1);
        let prefix = &text[line_start..dollar];
        let rest = prefix.trim_start_matches(' ');
        ph.indent = prefix.len() - rest.len();
        ph.dash = match rest.as_bytes() {
            [] => false,
            [b'-', b' ' | b'\t'] => true,
            _ => {
                return Err(syntax(
                    line,
                    format!("{sg}{{{}}} must start its line (after spaces and an optional `- `)", ph.name),
                ))
            }
        };
        let line_end = text[close_end..].find('\n').map(|p| close_end + p);
        let tail = &text[close_end..line_end.unwrap_or(text.len())];
        // Only whitespace, or a comment (which YAML requires to follow whitespace), may follow.
        let comment = tail.starts_with([' ', '\t']) && tail.trim_start().starts_with('#');
        if !(tail.trim().is_empty() || comment) {
            return Err(syntax(line, format!("unexpected text after {sg}{{{}}}", ph.name)));
        }
        ph.start = line_start;
        // The line break goes with the placeholder so no blank line is left behind.
        ph.end = line_end.map_or(text.len(), |p| p + 1);
    }
    Ok(ph)
}

/// For an `$a`/`$d` default starting at `open`: the end of the JSON text (just past the first
/// `closer` that is followed by optional whitespace and `}`) and the offset past that `}`.
fn find_collection_end(text: &str, open: usize, closer: char) -> Option<(usize, usize)> {
    let mut j = open;
    // Each iteration moves `j` forward by at least one byte.
    while let Some(rel) = text[j..].find(closer) {
        let k = j + rel;
        let after = skip_ws(text, k + 1);
        if text.as_bytes().get(after) == Some(&b'}') {
            return Some((k + 1, after + 1));
        }
        j = k + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Error;
    use super::{is_legacy, scan, Kind};

    #[test]
    fn scan_generic_defaults_and_order() {
        let t = "a: $g{name:\"jac\"}\nb: $g{namespace}\nc: $g{ cpu : 0.2 }\nd: $g{flag:true}\n";
        let f = scan(t).expect("scan");
        let got: Vec<_> = f.iter().map(|f| (f.name.as_str(), f.kind, f.default.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("name", Kind::Generic, json!("jac")),
                ("namespace", Kind::Generic, json!("")),
                ("cpu", Kind::Generic, json!(0.2)),
                ("flag", Kind::Generic, json!(true)),
            ]
        );
    }

    #[test]
    fn scan_last_processed_default_wins() {
        // $d is processed after $g even though it appears first.
        let t = "x:\n  $d{v:{\"a\": 1}}\ny: $g{v:\"g\"}\nz: $g{w:1}\nq: $g{w:2}\n";
        let f = scan(t).expect("scan");
        assert_eq!(f[0].name, "v");
        assert_eq!(f[0].kind, Kind::Dict);
        assert_eq!(f[0].default, json!({"a": 1}));
        assert_eq!(f[1].default, json!(2));
    }

    #[test]
    fn scan_multiline_array_and_dashed_dict() {
        let t = "a: |\n  $a{\n    args:[\n      \"one\",\n      \"two]\"\n    ]\n  }\nb:\n  - $d{env-vars:{}}\n";
        let f = scan(t).expect("scan");
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].kind, &f[0].default), (Kind::Array, &json!(["one", "two]"])));
        assert_eq!((f[1].kind, &f[1].default), (Kind::Dict, &json!({})));
    }

    #[test]
    fn bad_default_names_placeholder_and_line() {
        let e = scan("a: 1\nb: $g{pw:12345678x}\n").expect_err("bad");
        match e {
            Error::BadDefault { name, line, .. } => assert_eq!((name.as_str(), line), ("pw", 2)),
            other => panic!("{other:?}"),
        }
        // A `}` inside a $g default cuts it short (upstream rule) -> not JSON.
        assert!(matches!(scan("a: $g{o:{\"k\":1}}"), Err(Error::BadDefault { .. })));
        // Nested object in a $d default is cut at the first `}}`.
        assert!(matches!(scan("  $d{o:{\"k\":{\"x\":1}}}\n"), Err(Error::BadDefault { .. })));
        let msg = scan("\n\nc: $g{pw:oops}").expect_err("bad").to_string();
        assert!(msg.contains("pw") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(scan("a: $g{name"), Err(Error::Syntax { line: 1, .. })));
        assert!(matches!(scan("a: $g{}"), Err(Error::Syntax { .. })));
        assert!(matches!(scan("a: $g{a b}"), Err(Error::Syntax { .. })));
        assert!(matches!(scan("a: $a{x}\n"), Err(Error::Syntax { .. })));
        assert!(matches!(scan("  $d{x} y\n"), Err(Error::Syntax { .. })));
        assert!(matches!(scan("  $a{x:[1,2]\n"), Err(Error::Syntax { .. })));
        // Not placeholders at all.
        assert!(scan("echo ${HOME} $g $x{y} $$").expect("scan").is_empty());
    }

    #[test]
    fn is_legacy_detects_only_placeholders() {
        assert!(is_legacy("a: $g{x}"));
        assert!(is_legacy("  $a{\n  x:[]}"));
        assert!(is_legacy("  - $d{env}"));
        assert!(!is_legacy("echo ${HOME} $gx $a {{ handlebars }}"));
        assert!(!is_legacy(""));
    }
}
