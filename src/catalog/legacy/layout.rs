//! The YAML layout scanner: a light, line-based scan of the template (with every placeholder
//! masked to a plain word) that records block scalars, plain scalars, quoted scalars, comments
//! and multi-line plain scalars — just enough to tell the emitters where each placeholder sits
//! ([`Ctx`]). It never fails: text it does not understand is treated as plain, and the emitters
//! are strict about what they write into plain text.

use super::parser::{Kind, Ph};

/// The template bytes with every placeholder replaced by `X`, so quotes or braces inside
/// defaults do not confuse the YAML scan and each placeholder looks like one plain word.
pub(super) fn mask(text: &str, phs: &[Ph]) -> Vec<u8> {
    let mut m = text.as_bytes().to_vec();
    for ph in phs {
        for b in &mut m[ph.dollar..ph.close_end] {
            *b = b'X';
        }
        // The rest of an `$a`/`$d` line (blank or a comment) is dropped from the output, so the
        // scan must not see it either.
        if ph.kind != Kind::Generic {
            let stop = ph.end.saturating_sub(usize::from(text.as_bytes().get(ph.end.wrapping_sub(1)) == Some(&b'\n')));
            for b in &mut m[ph.close_end..stop.max(ph.close_end)] {
                *b = b' ';
            }
        }
    }
    m
}

/// A line inside a block scalar (`|`, `>-`, …).
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockInfo {
    /// Indentation of the block scalar's content.
    pub(super) content_indent: usize,
    /// This line is the first non-empty content line (it decides the indentation).
    pub(super) first: bool,
    /// The header had an explicit indentation indicator.
    pub(super) explicit: bool,
    /// Folded (`>`): single line breaks read back as spaces.
    pub(super) folded: bool,
}

/// Where the scalars and comments of a (masked) template are.
#[derive(Debug, Default)]
pub(super) struct Layout {
    /// (line start, line end, info) for lines inside block scalars.
    blocks: Vec<(usize, usize, BlockInfo)>,
    /// (start, end, in flow) of plain scalars (end excludes trailing spaces).
    plains: Vec<(usize, usize, bool)>,
    /// (single-quoted?, opening quote, closing quote).
    quotes: Vec<(bool, usize, Option<usize>)>,
    /// (start, end) of comments.
    comments: Vec<(usize, usize)>,
    /// (start, end) of plain scalars that continue over several lines.
    multiline: Vec<(usize, usize)>,
}

/// Per-line scanner state carried between lines.
#[derive(Debug)]
struct LineState<'a> {
    quote: &'a mut Option<(bool, usize)>,
    flow: &'a mut usize,
    cont: &'a mut Option<(usize, isize)>,
    prev: &'a mut isize,
    is_cont: bool,
}

/// Column of a line's first character after its indentation and `- ` prefixes.
fn content_col(m: &[u8], off: usize, ind: usize, le: usize) -> usize {
    let mut k = off + ind;
    while k + 1 < le && m[k] == b'-' && is_ws(m[k + 1]) {
        k += 2;
        while k < le && m[k] == b' ' {
            k += 1;
        }
    }
    k - off
}

/// The indentation a continuation line of the plain scalar starting at `s` must exceed: the
/// key's column for `key: value`, the dash's for `- value`, else the line's own minus one.
fn plain_parent(m: &[u8], off: usize, ind: usize, s: usize, prev: isize) -> isize {
    let mut k = off + ind;
    let mut last_dash: Option<usize> = None;
    while k + 1 < s && m[k] == b'-' && is_ws(m[k + 1]) {
        last_dash = Some(k - off);
        k += 2;
        while k < s && m[k] == b' ' {
            k += 1;
        }
    }
    if s > k {
        (k - off) as isize
    } else {
        // A scalar alone on its line belongs to the node opened by the previous line.
        last_dash.map_or(prev.min(ind as isize - 1), |d| d as isize)
    }
}

#[derive(Debug, Clone, Copy)]
struct Blk {
    parent: isize,
    content_indent: Option<usize>,
    explicit: bool,
    folded: bool,
}

/// Where a `$g` occurrence sits.
#[derive(Debug, Clone)]
pub(super) enum Ctx {
    /// On a line of a block scalar; `at_line_start` when only indentation precedes it.
    Block { info: BlockInfo, at_line_start: bool },
    /// In a comment.
    Comment,
    /// In the single-quoted scalar whose quotes are at `open` and `close` (`None`: never closed).
    Single { open: usize, close: Option<usize> },
    /// In a double-quoted scalar.
    Double,
    /// The whole of a plain scalar (`flow`: inside `[...]` or `{...}`).
    Whole { flow: bool },
    /// Glued to other text of a plain scalar: `at_start` when the scalar begins with it, `col0`
    /// when it begins its line, `prev` the byte before it, `following` up to three bytes after it.
    Embedded { flow: bool, at_start: bool, col0: bool, prev: Option<u8>, following: Vec<u8> },
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

fn is_flow_ind(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

impl Layout {
    pub(super) fn scan(m: &[u8]) -> Layout {
        let mut lay = Layout::default();
        let mut block: Option<Blk> = None;
        let mut quote: Option<(bool, usize)> = None;
        let mut flow: usize = 0;
        // A plain scalar still open at the end of the previous line: (its start, the column a
        // continuation line must be indented beyond).
        let mut cont: Option<(usize, isize)> = None;
        // Indentation the value of the previous line's open node must exceed (-1 at the start
        // of a document).
        let mut prev: isize = -1;
        let mut off = 0;
        // One iteration per line.
        loop {
            let le = m[off..].iter().position(|&b| b == b'\n').map_or(m.len(), |p| off + p);
            let line = &m[off..le];
            let ind = line.iter().take_while(|&&b| b == b' ').count();
            let mut in_block = false;
            if let Some(blk) = block.as_mut() {
                if line.iter().all(|&b| is_ws(b)) {
                    in_block = true;
                } else if ind as isize > blk.parent && blk.content_indent.is_none_or(|ci| ind >= ci) {
                    let first = blk.content_indent.is_none();
                    let ci = *blk.content_indent.get_or_insert(ind);
                    lay.blocks.push((
                        off,
                        le,
                        BlockInfo { content_indent: ci, first, explicit: blk.explicit, folded: blk.folded },
                    ));
                    in_block = true;
                } else {
                    block = None;
                }
            }
            if in_block {
                cont = None;
            } else {
                // A tab-only line is not blank for YAML indentation purposes.
                let blank = line.iter().all(|&b| b == b' ' || b == b'\r');
                let comment = line.get(ind) == Some(&b'#');
                let is_cont = quote.is_none()
                    && flow == 0
                    && !blank
                    && !comment
                    && cont.is_some_and(|(_, parent)| ind as isize > parent);
                if !blank && !is_cont {
                    cont = None;
                }
                if !blank {
                    let mut st =
                        LineState { quote: &mut quote, flow: &mut flow, cont: &mut cont, prev: &mut prev, is_cont };
                    if let Some(b) = lay.scan_line(m, off, le, ind, &mut st) {
                        block = Some(b);
                    }
                }
            }
            if le >= m.len() {
                break;
            }
            off = le + 1;
        }
        lay
    }

    /// Tokenizes one line outside block scalars; returns a block scalar that starts after it.
    fn scan_line(&mut self, m: &[u8], off: usize, le: usize, ind: usize, st: &mut LineState<'_>) -> Option<Blk> {
        let (quote, flow) = (&mut *st.quote, &mut *st.flow);
        let mut i = off;
        let mut plain: Option<usize> = None;
        if st.is_cont {
            // The line continues a multi-line plain scalar.
            i += ind;
            plain = Some(i);
        } else if quote.is_none() {
            i += ind;
            let l = &m[off..le];
            if i == off && (l.starts_with(b"---") || l.starts_with(b"...")) && l.get(3).is_none_or(|&b| is_ws(b)) {
                i += 3;
            }
        }
        let mut header: Option<usize> = None;
        // Every branch advances `i` or ends the plain scalar (which then advances next round).
        while i < le {
            let c = m[i];
            let next = if i + 1 < le { Some(m[i + 1]) } else { None };
            if let Some((single, open)) = *quote {
                if single && c == b'\'' {
                    if next == Some(b'\'') {
                        i += 2;
                        continue;
                    }
                    self.quotes.push((true, open, Some(i)));
                    *quote = None;
                } else if !single && c == b'\\' {
                    i += 1;
                } else if !single && c == b'"' {
                    self.quotes.push((false, open, Some(i)));
                    *quote = None;
                }
                i += 1;
                continue;
            }
            if let Some(s) = plain {
                let ends = (c == b':' && next.is_none_or(|n| is_ws(n) || (*flow > 0 && is_flow_ind(n))))
                    || (c == b'#' && i > off && is_ws(m[i - 1]))
                    || (*flow > 0 && is_flow_ind(c));
                if ends {
                    self.plains.push((s, trim_end(m, s, i), *flow > 0));
                    plain = None;
                } else {
                    i += 1;
                }
                continue;
            }
            match c {
                b' ' | b'\t' | b'\r' => i += 1,
                b'#' => {
                    self.comments.push((i, le));
                    i = le;
                }
                b'\'' | b'"' => {
                    *quote = Some((c == b'\'', i));
                    i += 1;
                }
                b'-' | b'?' | b':' if next.is_none_or(|n| is_ws(n) || (*flow > 0 && is_flow_ind(n))) => i += 1,
                b'[' | b'{' => {
                    *flow += 1;
                    i += 1;
                }
                b']' | b'}' => {
                    *flow = flow.saturating_sub(1);
                    i += 1;
                }
                b',' if *flow > 0 => i += 1,
                b'&' | b'*' | b'!' => {
                    while i < le && !is_ws(m[i]) {
                        i += 1;
                    }
                }
                b'|' | b'>' if *flow == 0 => {
                    header = Some(i);
                    i = le;
                }
                _ => {
                    plain = Some(i);
                    i += 1;
                }
            }
        }
        let cont_start = st.cont.map(|(s, _)| s);
        let doc_marker = !st.is_cont
            && (m[off..le].starts_with(b"---") || m[off..le].starts_with(b"..."))
            && m.get(off + 3).is_none_or(|&b| b == b'\n' || is_ws(b));
        if let Some(s) = plain {
            self.plains.push((s, trim_end(m, s, le), *flow > 0));
        }
        match (st.is_cont, cont_start) {
            (true, Some(s0)) => {
                self.multiline.push((s0, le));
                if plain.is_none() || *flow > 0 || quote.is_some() {
                    *st.cont = None;
                }
            }
            _ => {
                *st.cont = match plain {
                    Some(s) if *flow == 0 && quote.is_none() => {
                        // A scalar on a `---` line is the document's root node.
                        let parent = if doc_marker { -1 } else { plain_parent(m, off, ind, s, *st.prev) };
                        Some((s, parent))
                    }
                    _ => None,
                };
            }
        }
        // An unterminated single-quoted scalar is recorded so placeholders in it are found.
        if let Some((single, open)) = *quote {
            if !self.quotes.iter().any(|q| q.1 == open) {
                self.quotes.push((single, open, None));
            }
        }
        let old_prev = *st.prev;
        let comment_only = m.get(off + ind) == Some(&b'#');
        *st.prev = if doc_marker {
            -1
        } else if st.is_cont || comment_only {
            old_prev
        } else {
            content_col(m, off, ind, le) as isize
        };
        let h = header?;
        block_header(m, off, le, ind, h)
    }

    pub(super) fn in_quote(&self, p: usize) -> bool {
        self.quotes.iter().any(|(_, o, c)| *o < p && c.is_none_or(|c| p < c))
    }

    pub(super) fn in_multiline(&self, p: usize) -> bool {
        self.multiline.iter().any(|(s, e)| *s <= p && p < *e)
    }

    pub(super) fn block_at(&self, p: usize) -> Option<(BlockInfo, usize)> {
        self.blocks.iter().find(|(s, e, _)| *s <= p && p < *e).map(|(s, _, info)| (*info, *s))
    }

    pub(super) fn context(&self, m: &[u8], ph: &Ph) -> Ctx {
        let (p, q) = (ph.dollar, ph.close_end);
        if let Some((info, s)) = self.block_at(p) {
            return Ctx::Block { info, at_line_start: m[s..p].iter().all(|&b| b == b' ') };
        }
        if self.comments.iter().any(|(s, e)| *s <= p && p < *e) {
            return Ctx::Comment;
        }
        // The latest opening quote before `p` whose scalar is still open at `p`.
        if let Some((single, open, close)) =
            self.quotes.iter().filter(|(_, o, c)| *o < p && c.is_none_or(|c| p < c)).max_by_key(|(_, o, _)| *o)
        {
            return if *single { Ctx::Single { open: *open, close: *close } } else { Ctx::Double };
        }
        let line_start = m[..p].iter().rposition(|&b| b == b'\n').map_or(0, |x| x + 1);
        // Inside a multi-line plain scalar nothing is "whole": be as strict as for glued text.
        let multi = self.in_multiline(p);
        let line_end = m[q..].iter().position(|&b| b == b'\n').map_or(m.len(), |x| q + x);
        let (s, e, flow) =
            self.plains.iter().find(|(s, e, _)| *s <= p && p < *e).copied().unwrap_or((p, usize::MAX, false));
        if s == p && e == q && !multi {
            return Ctx::Whole { flow };
        }
        Ctx::Embedded {
            flow,
            at_start: s == p || multi,
            col0: p == line_start,
            prev: if p > line_start { Some(m[p - 1]) } else { None },
            following: m[q..line_end.min(q + 3)].to_vec(),
        }
    }
}

fn trim_end(m: &[u8], s: usize, mut e: usize) -> usize {
    while e > s && is_ws(m[e - 1]) {
        e -= 1;
    }
    e
}

/// Parses a block scalar header (`|`, `>-`, `|2` …) at `h`; `None` if the rest of the line is
/// not a valid header.
fn block_header(m: &[u8], off: usize, le: usize, ind: usize, h: usize) -> Option<Blk> {
    let mut j = h + 1;
    let mut digit: Option<usize> = None;
    for _ in 0..2 {
        match m.get(j) {
            Some(b'-' | b'+') if j < le => j += 1,
            Some(&d @ b'1'..=b'9') if j < le => {
                digit = Some(usize::from(d - b'0'));
                j += 1;
            }
            _ => break,
        }
    }
    let rest = &m[j..le];
    let rest_ok = rest.iter().all(|&b| is_ws(b)) || {
        let t: Vec<u8> = rest.iter().copied().skip_while(|&b| is_ws(b)).collect();
        t.first() == Some(&b'#') && rest.first().is_some_and(|&b| is_ws(b))
    };
    if !rest_ok {
        return None;
    }
    // The parent node's indentation: the key's column, or the last `- ` for `- |`.
    let mut k = off + ind;
    let mut last_dash: Option<usize> = None;
    while k + 1 < le && m[k] == b'-' && is_ws(m[k + 1]) {
        last_dash = Some(k - off);
        k += 2;
        while k < le && m[k] == b' ' {
            k += 1;
        }
    }
    let parent = if k == h { last_dash.map_or(ind as isize - 1, |d| d as isize) } else { (k - off) as isize };
    let content_indent = digit.map(|d| (parent.max(0) as usize) + d);
    Some(Blk { parent, content_indent, explicit: digit.is_some(), folded: m[h] == b'>' })
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::{mask, BlockInfo, Ctx, Layout};

    /// The layout of `text` and the offset of placeholder `name`'s `$`.
    fn scanned(text: &str, name: &str) -> (Layout, Vec<u8>, super::Ph) {
        let phs = parse(text).expect("parse");
        let m = mask(text, &phs);
        let ph = phs.into_iter().find(|p| p.name == name).expect("placeholder");
        (Layout::scan(&m), m, ph)
    }

    fn ctx(text: &str, name: &str) -> Ctx {
        let (lay, m, ph) = scanned(text, name);
        lay.context(&m, &ph)
    }

    #[test]
    fn each_place_a_generic_can_sit_is_told_apart() {
        let t = "a: $g{whole}\nb: pre-$g{glued}\nc: '$g{single}'\nd: \"$g{double}\"\ne: 1 # $g{comment}\n\
                 f: [$g{flow}, x]\ng: |\n  $g{block}\n";
        assert!(matches!(ctx(t, "whole"), Ctx::Whole { flow: false }));
        assert!(matches!(ctx(t, "glued"), Ctx::Embedded { at_start: false, col0: false, prev: Some(b'-'), .. }));
        assert!(matches!(ctx(t, "single"), Ctx::Single { close: Some(_), .. }));
        assert!(matches!(ctx(t, "double"), Ctx::Double));
        assert!(matches!(ctx(t, "comment"), Ctx::Comment));
        assert!(matches!(ctx(t, "flow"), Ctx::Whole { flow: true }));
        assert!(matches!(
            ctx(t, "block"),
            Ctx::Block { info: BlockInfo { content_indent: 2, first: true, explicit: false, folded: false }, .. }
        ));
    }

    #[test]
    fn quotes_and_hashes_inside_defaults_are_masked() {
        // Unmasked, the `'` would open a quote and the ` #` a comment for the rest of the text.
        let t = "a: $g{x:\"it's # not\"}\nb: $g{y}\n";
        assert!(matches!(ctx(t, "x"), Ctx::Whole { flow: false }));
        assert!(matches!(ctx(t, "y"), Ctx::Whole { flow: false }));
    }

    #[test]
    fn block_scalars_follow_headers_and_end_at_lesser_indentation() {
        let t = "a: |2\n    $g{deep}\nb: $g{after}\nc:\n  - >-\n    x\n    $g{folded}\nd: 1\n";
        // An explicit indicator fixes the content indentation at the parent's column + 2.
        assert!(matches!(
            ctx(t, "deep"),
            Ctx::Block { info: BlockInfo { content_indent: 2, explicit: true, first: false, .. }, at_line_start: true }
        ));
        assert!(matches!(ctx(t, "after"), Ctx::Whole { flow: false }));
        assert!(matches!(
            ctx(t, "folded"),
            Ctx::Block { info: BlockInfo { content_indent: 4, folded: true, first: false, .. }, .. }
        ));
    }

    #[test]
    fn continuation_lines_and_quotes_spanning_lines_are_recorded() {
        let t = "a: first\n  $g{cont}\nb: 'open\n  $a{inq}\n  close'\n";
        let (lay, m, cont) = scanned(t, "cont");
        assert!(lay.in_multiline(cont.dollar));
        // Inside a multi-line plain scalar nothing counts as a whole scalar.
        assert!(matches!(lay.context(&m, &cont), Ctx::Embedded { at_start: true, .. }));
        let (lay, _, inq) = scanned(t, "inq");
        assert!(lay.in_quote(inq.dollar) && !lay.in_multiline(inq.dollar));
    }
}
