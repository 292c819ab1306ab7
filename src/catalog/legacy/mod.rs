//! Renderer for the original (upstream, Python) template placeholder language.
//!
//! Upstream templates are plain YAML text with three inline placeholder kinds:
//!
//! * `$g{name}` / `$g{name:<json>}` — *generic*: replaced in place by the value. The default is
//!   everything after `:` up to the **first** `}` (so a default cannot contain `}`).
//! * `$a{name}` / `$a{name:[<json array>]}` — *new-line array*: must stand alone on its line
//!   (after indentation and an optional `- `); replaced by one line per element with the same
//!   indentation (and the dash, when there was one). The default runs from `[` to the first `]`
//!   followed by optional whitespace and `}`; it may span several lines.
//! * `$d{name}` / `$d{name:{<json object>}}` — *new-line dict*: same placement rules; replaced by
//!   one `key: value` line per entry (the dash is dropped: it only exists so YAML formatters
//!   accept the template). The default runs from `{` to the first `}` followed by optional
//!   whitespace and `}`.
//!
//! Whitespace is accepted after the sigil, around the name and `:`, and before the closing `}`.
//! Names are any run of characters other than whitespace, `:`, `{` and `}`. Defaults are JSON.
//!
//! The parsing rules (including how defaults are delimited) are kept for compatibility, but the
//! rendering deliberately fixes upstream bugs:
//!
//! * **Template injection.** Upstream pasted `str(value)` into the text, so a value with a newline
//!   or `---` could add keys or whole objects. Here every occurrence is rendered according to its
//!   YAML context: a whole plain scalar becomes a JSON double-quoted string when the text is not
//!   a safe plain scalar; inside `'...'` quotes are doubled (and the scalar is converted to a
//!   double-quoted one when the value has line breaks); inside `"..."` JSON escapes are used;
//!   inside a block scalar continuation lines are re-indented; a value glued to other text
//!   (`$g{username}-password`) must be a safe plain token or rendering fails with
//!   [`Error::Unsafe`].
//! * **Python `str()` artefacts.** Non-string values are written as JSON (`true`, `null`, `0.5`,
//!   `["a", 1]`), never `True`/`None`/`['a']`. Plain-safe strings are still written bare (like
//!   upstream), so `"3"` for `replicas` keeps meaning the integer 3.
//! * **Shapes.** An `$a` override that is not an array (upstream iterated the characters of a
//!   string) and a `$d` override that is not an object (upstream crashed) are
//!   [`Error::WrongShape`]; a default that is not valid JSON is [`Error::BadDefault`].
//! * Where a value cannot be written faithfully it is refused rather than bent: control
//!   characters or `\r` in a block scalar, line breaks in a folded (`>`) block scalar or in a
//!   comment, `$a`/`$d` inside a quoted scalar, non-plain text in a multi-line plain scalar.
//! * A `$g` written inside an `$a`/`$d` default is part of that default's JSON text (upstream
//!   expanded it first); the stored templates never do this.
//! * `$a`/`$d` lines are replaced including their line break, so no blank line is left behind
//!   (upstream left one; it never changes the YAML meaning of the stored templates).
//!
//! [`render`] works in four steps, one module each: `parser` finds the placeholders and their
//! defaults; `layout` scans the YAML around them (with the placeholders masked) to learn where
//! each one sits; `emit` writes each value for its place, using the YAML text forms in `scalar`;
//! `render` splices the results into the text. `error` holds the one error type callers see,
//! which the parser's and the emitters' own errors convert into.

mod emit;
mod error;
mod layout;
mod parser;
mod render;
mod scalar;
#[cfg(test)]
mod testing;

pub use error::Error;
pub use parser::{is_legacy, scan, DefaultError, Found, Kind};
pub use render::render;
