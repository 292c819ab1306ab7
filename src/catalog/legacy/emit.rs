//! The emitters: the text that replaces one placeholder, given its value and where the layout
//! scanner says it sits. `$g` values are written in the form their context needs (bare, quoted,
//! escaped, re-indented) or refused; `$a` and `$d` values become whole lines. Every emitter either
//! keeps the YAML structure of the template or fails with [`Error::Unsafe`].

use serde_json::{Map, Value};

use super::layout::{is_ws, BlockInfo, Ctx};
use super::parser::Ph;
use super::scalar::{
    doc_marker_line, is_break, is_printable, json_flow, json_quote, leading_ws_first_line, plain_key, plain_safe,
    push_json_escaped, scalar_text, whole_scalar,
};

/// A value that cannot be written where its placeholder sits.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The value would change the YAML structure at this place.
    #[error("line {line}: unsafe value for placeholder `{name}`: {reason}")]
    Unsafe { name: String, line: usize, reason: String },
    /// An `$a` value that is not an array, or a `$d` value that is not an object.
    #[error("placeholder `{name}` expects {expected}")]
    WrongShape { name: String, expected: &'static str },
}

/// Replace `start..end` of the template by `text`.
#[derive(Debug)]
pub(super) struct Edit {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) text: String,
}

pub(super) fn unsafe_err(ph: &Ph, reason: impl Into<String>) -> Error {
    Error::Unsafe { name: ph.name.clone(), line: ph.line, reason: reason.into() }
}

/// The text of one `$g` occurrence outside single quotes (those are written a scalar at a time
/// by [`single_quoted`]).
pub(super) fn generic(ph: &Ph, v: &Value, ctx: &Ctx) -> Result<String, Error> {
    match ctx {
        Ctx::Whole { flow } => Ok(whole_scalar(v, *flow)),
        Ctx::Double => {
            let mut out = String::new();
            push_json_escaped(&scalar_text(v), &mut out);
            Ok(out)
        }
        Ctx::Comment => {
            let t = scalar_text(v);
            if t.chars().any(|c| is_break(c) || !is_printable(c)) {
                return Err(unsafe_err(ph, "line break inside a comment"));
            }
            Ok(t)
        }
        Ctx::Block { info, at_line_start } => {
            let t = scalar_text(v);
            check_block_text(ph, &t)?;
            if info.folded && t.contains('\n') {
                // Folding would turn the line breaks into spaces: the value would not survive.
                return Err(unsafe_err(ph, "line break inside a folded block scalar"));
            }
            if info.first && !info.explicit && *at_line_start && leading_ws_first_line(&t) {
                return Err(unsafe_err(ph, "leading whitespace would change the block scalar's indentation"));
            }
            if info.content_indent == 0 && t.split('\n').skip(1).any(doc_marker_line) {
                return Err(unsafe_err(ph, "a line at column 0 would be a document marker"));
            }
            let pad = " ".repeat(info.content_indent);
            Ok(t.split('\n').collect::<Vec<_>>().join(&format!("\n{pad}")))
        }
        Ctx::Embedded { flow, at_start, col0, prev, following } => {
            let t = match v {
                Value::Array(_) | Value::Object(_) => {
                    return Err(unsafe_err(ph, "a collection cannot be part of a larger scalar"))
                }
                other => scalar_text(other),
            };
            let allowed =
                |c: char| c.is_ascii_alphanumeric() || "._/@+=~-".contains(c) || (!flow && (c == ':' || c == ','));
            if let Some(c) = t.chars().find(|&c| !allowed(c)) {
                return Err(unsafe_err(ph, format!("{c:?} is not allowed in a value glued to other text")));
            }
            let next = following.first().copied();
            if t.ends_with(':') && next.is_none_or(is_ws) {
                return Err(unsafe_err(ph, "a trailing `:` would start a mapping"));
            }
            // What the scalar will start with once rendered.
            let mut start: Vec<u8> = t.bytes().take(3).collect();
            start.extend_from_slice(following);
            if *at_start {
                let c0 = start.first().copied();
                let c1 = start.get(1).copied();
                if matches!(c0, Some(b'-' | b'?' | b':')) && c1.is_none_or(is_ws) {
                    return Err(unsafe_err(ph, "would start with a YAML indicator"));
                }
                if c0.is_some_and(|c| b",[]{}#&*!|>'\"%@`".contains(&c)) {
                    return Err(unsafe_err(ph, "would start with a YAML indicator"));
                }
                if *col0 && (start.starts_with(b"---") || start.starts_with(b"...")) {
                    return Err(unsafe_err(ph, "would start a document marker"));
                }
            }
            if t.is_empty() && prev.is_some_and(is_ws) && next == Some(b'#') {
                return Err(unsafe_err(ph, "empty value would start a comment"));
            }
            Ok(t)
        }
        Ctx::Single { .. } => Ok(scalar_text(v).replace('\'', "''")),
    }
}

fn check_block_text(ph: &Ph, t: &str) -> Result<(), Error> {
    if let Some(c) = t.chars().find(|&c| c != '\n' && (is_break(c) || !is_printable(c))) {
        return Err(unsafe_err(ph, format!("{c:?} cannot be written in a block scalar")));
    }
    Ok(())
}

/// Renders the `$g`s of one single-quoted scalar `open..=close`.
pub(super) fn single_quoted(
    text: &str,
    values: &Map<String, Value>,
    open: usize,
    close: Option<usize>,
    members: &[&Ph],
    edits: &mut Vec<Edit>,
) -> Result<(), Error> {
    let texts: Vec<String> = members.iter().map(|p| scalar_text(values.get(&p.name).unwrap_or(&p.default))).collect();
    let simple = texts.iter().all(|t| t.chars().all(|c| !is_break(c) && is_printable(c)));
    if simple {
        for (p, t) in members.iter().zip(&texts) {
            edits.push(Edit { start: p.start, end: p.end, text: t.replace('\'', "''") });
        }
        return Ok(());
    }
    // `simple` holds when there are no members, so there is a first one here.
    let Some(first) = members.first() else {
        return Ok(());
    };
    // A line break inside '...' folds into a space, so the whole scalar becomes a JSON
    // double-quoted one instead (possible only when it sits on one line).
    let close = match close {
        Some(c) if !text[open..c].contains('\n') => c,
        _ => return Err(unsafe_err(first, "line break inside a multi-line single-quoted scalar")),
    };
    let mut decoded = String::new();
    let mut cursor = open + 1;
    for (p, t) in members.iter().zip(&texts) {
        decoded.push_str(&text[cursor..p.start].replace("''", "'"));
        decoded.push_str(t);
        cursor = p.end;
    }
    decoded.push_str(&text[cursor..close].replace("''", "'"));
    edits.push(Edit { start: open, end: close + 1, text: json_quote(&decoded) });
    Ok(())
}

/// The lines of one `$a` occurrence; `block` is the block scalar it sits in, if any, and `multi`
/// says whether the next line continues a plain scalar.
pub(super) fn array(ph: &Ph, v: &Value, block: Option<(BlockInfo, usize)>, multi: bool) -> Result<String, Error> {
    let Value::Array(items) = v else {
        return Err(Error::WrongShape { name: ph.name.clone(), expected: "array" });
    };
    let pad = " ".repeat(ph.indent);
    let dash = if ph.dash { "- " } else { "" };
    let mut out = String::new();
    match block {
        Some((info, _)) => {
            // Inside a block scalar each element is raw text; continuation lines get the same
            // indentation so an element can never end the block scalar.
            let mut content = String::new();
            for item in items {
                let t = scalar_text(item);
                check_block_text(ph, &t)?;
                if info.folded && t.contains('\n') {
                    return Err(unsafe_err(ph, "line break inside a folded block scalar"));
                }
                for (i, l) in t.split('\n').enumerate() {
                    let lead = if i == 0 { dash } else { "" };
                    content.push_str(lead);
                    content.push_str(l);
                    content.push('\n');
                }
            }
            if info.first && !info.explicit && leading_ws_first_line(&content) {
                return Err(unsafe_err(ph, "leading whitespace would change the block scalar's indentation"));
            }
            if ph.indent == 0 && content.lines().any(doc_marker_line) {
                return Err(unsafe_err(ph, "a line at column 0 would be a document marker"));
            }
            for l in content.lines() {
                if !l.is_empty() {
                    out.push_str(&pad);
                }
                out.push_str(l);
                out.push('\n');
            }
        }
        None => {
            // Outside a block scalar each element is a YAML scalar of its own.
            for item in items {
                // When the next line continues the scalar, only plain text can be continued.
                if multi && !matches!(item, Value::String(s) if plain_safe(s, false)) {
                    return Err(unsafe_err(ph, "the next line continues this scalar"));
                }
                out.push_str(&pad);
                out.push_str(dash);
                out.push_str(&whole_scalar(item, false));
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// The `key: value` lines of one `$d` occurrence.
pub(super) fn dict(ph: &Ph, v: &Value) -> Result<String, Error> {
    let Value::Object(entries) = v else {
        return Err(Error::WrongShape { name: ph.name.clone(), expected: "object" });
    };
    let pad = " ".repeat(ph.indent);
    let mut out = String::new();
    for (k, x) in entries {
        out.push_str(&pad);
        if plain_key(k) {
            out.push_str(k);
        } else {
            out.push_str(&json_quote(k));
        }
        out.push_str(": ");
        out.push_str(&json_flow(x));
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::scalar::json_quote;
    use super::super::testing::{docs, get, one, r, vals, ystr, EVIL};
    use super::super::{render, Error};

    #[test]
    fn generic_types_are_json_not_python() {
        let t = "a: $g{a}\nb: $g{b}\nc: $g{c}\nd: $g{d}\ne: $g{e}\nf: $g{f}\ng: $g{g}\n";
        let out = r(t, json!({"a": true, "b": null, "c": 0.5, "d": ["a", 1], "e": {"k": "v"}, "f": 1e-5, "g": 3}));
        assert!(!out.contains("True") && !out.contains("None") && !out.contains("['a'"), "{out}");
        let y = one(&out);
        let want = one("a: true\nb: null\nc: 0.5\nd: [a, 1]\ne: {k: v}\nf: 0.00001\ng: 3\n");
        assert_eq!(y, want);
    }

    #[test]
    fn generic_whole_scalar_is_quoted_when_unsafe() {
        let t = "k:\n  name: $g{v}\n  other: 1\n";
        for v in [
            EVIL,
            "a: b",
            "a #b",
            "- x",
            "-",
            "[1]",
            "{a}",
            "*alias",
            "&a",
            "!tag",
            "|",
            ">",
            "%x",
            "@x",
            "`x",
            "'q'",
            "\"q\"",
            "?",
            " lead",
            "trail ",
            "tab\tx",
            "---",
            "...",
            "x:",
            "",
            "\u{1}ctl",
            "\u{85}nel",
            "\u{2028}ls",
            "caf\u{e9}",
        ] {
            let out = r(t, json!({ "v": v }));
            let y = one(&out);
            assert_eq!(get(get(&y, "k"), "name"), &ystr(v), "{v:?} -> {out}");
            assert_eq!(get(&y, "k").as_mapping().map(|m| m.len()), Some(2), "{out}");
        }
        // Ordinary strings stay bare, like upstream.
        assert_eq!(r("a: $g{v}", json!({"v": "testing-db"})), "a: testing-db");
        assert_eq!(r("a: $g{v}", json!({"v": "python:3.13-slim"})), "a: python:3.13-slim");
    }

    #[test]
    fn generic_in_flow_collection() {
        let t = "a: [$g{v}, b]\n";
        let y = one(&r(t, json!({"v": "x, y]"})));
        assert_eq!(get(&y, "a").as_sequence().map(|s| s.len()), Some(2));
        assert_eq!(get(&y, "a").get(0), Some(&ystr("x, y]")));
    }

    #[test]
    fn generic_single_quoted() {
        let t = "p: '$g{pw:\"12345678\"}'\nq: 1\n";
        assert_eq!(r(t, json!({})), "p: '12345678'\nq: 1\n");
        let y = one(&r(t, json!({"pw": "it's"})));
        assert_eq!(get(&y, "p"), &ystr("it's"));
        // A line break would fold: the scalar becomes a JSON double-quoted one.
        let out = r("p: 'pre-$g{pw}-''x'''\nq: 1\n", json!({"pw": EVIL}));
        let y = one(&out);
        assert_eq!(get(&y, "p"), &ystr(&format!("pre-{EVIL}-'x'")), "{out}");
        assert_eq!(y.as_mapping().map(|m| m.len()), Some(2));
        // Numbers inside quotes stay strings.
        assert_eq!(get(&one(&r(t, json!({"pw": 123}))), "p"), &ystr("123"));
    }

    #[test]
    fn generic_double_quoted() {
        let t = "a: \"pre $g{v} post\"\nb: \"$g{w:[\"t\", 1]}\"\n";
        let out = r(t, json!({"v": "q\"\\\n---\nk: v"}));
        let y = one(&out);
        assert_eq!(get(&y, "a"), &ystr("pre q\"\\\n---\nk: v post"));
        assert_eq!(get(&y, "b"), &ystr("[\"t\", 1]"));
    }

    #[test]
    fn generic_embedded_plain() {
        let t = "name: $g{u:\"my-user\"}-password\n";
        assert_eq!(r(t, json!({})), "name: my-user-password\n");
        assert_eq!(r(t, json!({"u": 7})), "name: 7-password\n");
        assert_eq!(r(t, json!({"u": ""})), "name: -password\n");
        for bad in [EVIL, "a b", "a#", "{a}", "'", "@x", ",x"] {
            match render(t, &vals(json!({ "u": bad }))) {
                Err(Error::Unsafe { name, line, .. }) => {
                    assert_eq!((name.as_str(), line), ("u", 1))
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(render(t, &vals(json!({"u": [1]}))), Err(Error::Unsafe { .. })));
        // `x:` is fine before `-` but would start a mapping before a space.
        assert_eq!(r(t, json!({"u": "x:"})), "name: x:-password\n");
        assert!(matches!(render("a: $g{u} b\n", &vals(json!({"u": "x:"}))), Err(Error::Unsafe { .. })));
        // Empty value between a space and `#` would turn the rest into a comment.
        assert!(matches!(render("a: b $g{u}#c\n", &vals(json!({"u": ""}))), Err(Error::Unsafe { .. })));
    }

    #[test]
    fn generic_in_comment() {
        let t = "a: 1 # $g{v}\n";
        assert_eq!(r(t, json!({"v": "x"})), "a: 1 # x\n");
        assert!(matches!(render(t, &vals(json!({"v": "x\ny: 2"}))), Err(Error::Unsafe { .. })));
    }

    #[test]
    fn generic_in_block_scalar() {
        let t = "d:\n  conf: |\n    maxmemory $g{m:\"1000mb\"}\n      nested\n    tail\nn: 1\n";
        let base = one(&r(t, json!({})));
        assert_eq!(get(get(&base, "d"), "conf"), &ystr("maxmemory 1000mb\n  nested\ntail\n"));
        let y = one(&r(t, json!({ "m": EVIL })));
        assert_eq!(get(get(&y, "d"), "conf"), &ystr(&format!("maxmemory {EVIL}\n  nested\ntail\n")));
        assert_eq!(y.as_mapping().map(|m| m.len()), Some(2));
        // A carriage return cannot be written in a block scalar.
        assert!(matches!(render(t, &vals(json!({"m": "a\rb"}))), Err(Error::Unsafe { .. })));
        // At the start of the first content line, leading spaces would change the indentation.
        let t2 = "c: |\n  $g{m}\n  rest\n";
        assert!(matches!(render(t2, &vals(json!({"m": "  x"}))), Err(Error::Unsafe { .. })));
        assert_eq!(get(&one(&r(t2, json!({"m": "x\n y"}))), "c"), &ystr("x\n y\nrest\n"));
    }

    #[test]
    fn same_name_uses_own_default_when_missing() {
        let t = "a: $g{n:\"one\"}\nb: $g{n:\"two\"}\n";
        assert_eq!(r(t, json!({})), "a: one\nb: two\n");
        assert_eq!(r(t, json!({"n": "z"})), "a: z\nb: z\n");
        // A null override is used as is (upstream: key present wins).
        assert_eq!(r("a: $g{n:\"d\"}", json!({"n": null})), "a: null");
    }

    // ---- arrays -----------------------------------------------------------------------------

    const ARGS: &str =
        "args:\n  - |\n    $a{\n      args:[\n        \"mkdir app\",\n        \"cd app\"\n      ]\n    }\nnext: 1\n";

    #[test]
    fn array_default_lines_in_block_scalar() {
        assert_eq!(r(ARGS, json!({})), "args:\n  - |\n    mkdir app\n    cd app\nnext: 1\n");
        assert_eq!(r("a: |\n  - $a{x:[\"p\", 2]}\n", json!({})), "a: |\n  - p\n  - 2\n");
        assert_eq!(r("a: |\n  x\n  $a{x}\nb: 1\n", json!({})), "a: |\n  x\nb: 1\n");
    }

    #[test]
    fn array_element_with_newlines_stays_in_block() {
        let items = json!(["echo a", EVIL, "  indented", "", true, {"k": [1]}]);
        let out = r(ARGS, json!({ "args": items.clone() }));
        let y = one(&out);
        assert_eq!(
            get(&y, "args").get(0),
            Some(&ystr(&format!("echo a\n{EVIL}\n  indented\n\ntrue\n{{\"k\": [1]}}\n"))),
            "{out}"
        );
        assert_eq!(get(&y, "next"), &serde_norway::Value::from(1));
        // Leading whitespace on the first line would move the block's indentation.
        assert!(matches!(render(ARGS, &vals(json!({"args": ["  x", "y"]}))), Err(Error::Unsafe { .. })));
        assert!(matches!(render(ARGS, &vals(json!({"args": ["a\u{2028}b"]}))), Err(Error::Unsafe { .. })));
    }

    #[test]
    fn array_wrong_shape() {
        match render(ARGS, &vals(json!({"args": "abc"}))) {
            Err(Error::WrongShape { name, expected }) => {
                assert_eq!((name.as_str(), expected), ("args", "array"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn array_outside_block_is_a_sequence() {
        let t = "cmd:\n  - $a{c:[\"sh\"]}\nz: 1\n";
        let out = r(t, json!({"c": ["a: b", EVIL, 1, null]}));
        let y = one(&out);
        let want: serde_norway::Value =
            serde_norway::from_str(&format!("[{}, {}, 1, null]", json_quote("a: b"), json_quote(EVIL))).expect("yaml");
        assert_eq!(get(&y, "cmd"), &want, "{out}");
        assert_eq!(y.as_mapping().map(|m| m.len()), Some(2));
    }

    // ---- dicts ------------------------------------------------------------------------------

    const ENVS: &str = "kind: Secret\nstringData:\n  - $d{env-vars:{}}\n---\nkind: Other\n";

    #[test]
    fn dict_entries_keys_and_values() {
        let ev = json!({"DATABASE_HOST": "mongodb://h", "weird key: x": EVIL, "yes": "1", "n": 2, "o": {"a": [true]}});
        let out = r(ENVS, json!({ "env-vars": ev.clone() }));
        let d = docs(&out);
        assert_eq!(d.len(), 2, "{out}");
        let sd = get(&d[0], "stringData");
        assert_eq!(sd.as_mapping().map(|m| m.len()), Some(5));
        assert_eq!(get(sd, "DATABASE_HOST"), &ystr("mongodb://h"));
        assert_eq!(get(sd, "weird key: x"), &ystr(EVIL));
        assert_eq!(get(sd, "yes"), &ystr("1"));
        assert_eq!(get(sd, "n"), &serde_norway::Value::from(2));
        assert!(out.contains("  DATABASE_HOST: \"mongodb://h\"\n"), "{out}");
        assert!(!out.contains("- "), "dash must be dropped: {out}");
    }

    #[test]
    fn dict_empty_removes_line_and_wrong_shape() {
        assert_eq!(r(ENVS, json!({})), "kind: Secret\nstringData:\n---\nkind: Other\n");
        for bad in [json!("s"), json!([1]), json!(null)] {
            match render(ENVS, &vals(json!({ "env-vars": bad }))) {
                Err(Error::WrongShape { name, expected }) => {
                    assert_eq!((name.as_str(), expected), ("env-vars", "object"))
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
