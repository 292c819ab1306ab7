//! The log lines of a deployment's workloads, as every backend reports them
//! ([`crate::backend::Backend::logs`]): which lines to send ([`LogOptions`]), one line with where
//! it came from ([`LogLine`]), and the stream of them ([`LogStream`]).
//!
//! The stream owns everything it reads from (files, API responses), so dropping it (the client
//! went away) stops the reading; with `follow` nothing else ends it but the workload's end.

use std::pin::Pin;

use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;

/// The most lines `tail` may ask for (per source).
pub const MAX_TAIL: i64 = 100_000;

/// Longest line sent as one: a longer one (a process writing without line breaks) is cut into
/// pieces of this size, so neither a reader's buffer nor a message grows without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which lines to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep sending new lines until the stream is dropped.
    pub follow: bool,
    /// Lines from the end of each source to start with; `None`: all of them (bounded by the
    /// backend: the local backend reads at most the last [`MAX_TAIL_BYTES`] of a file).
    pub tail: Option<u32>,
}

/// The most bytes read back from the end of one local log file for its tail.
pub const MAX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// One line of a workload's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LogLine {
    /// Where it was written: `replica 0` (local), the pod's name, or `pod/container` when the
    /// pod has more than one container.
    pub source: String,
    /// The line, without its line break (invalid UTF-8 replaced).
    pub line: String,
    /// RFC 3339, when the backend knows it (Kubernetes); local process logs carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl LogLine {
    pub fn new(source: impl Into<String>, line: impl Into<String>) -> Self {
        LogLine { source: source.into(), line: line.into(), time: None }
    }

    #[must_use]
    pub fn at(mut self, time: impl Into<String>) -> Self {
        self.time = Some(time.into());
        self
    }
}

/// Lines as they are read; an error ends it.
pub type LogStream = Pin<Box<dyn Stream<Item = super::Result<LogLine>> + Send>>;

/// Splits a buffer of log bytes into complete lines (`\n`, with a `\r` before it dropped),
/// leaving an unfinished last line in `pending` for the next read. A pending line longer than
/// [`MAX_LINE_BYTES`] is sent as it is.
pub fn split_lines(pending: &mut Vec<u8>, bytes: &[u8]) -> Vec<String> {
    pending.extend_from_slice(bytes);
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(i) = pending[start..].iter().position(|b| *b == b'\n') {
        let mut line = &pending[start..start + i];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        out.extend(pieces(line));
        start += i + 1;
    }
    pending.drain(..start);
    if pending.len() >= MAX_LINE_BYTES {
        out.extend(pieces(pending));
        pending.clear();
    }
    out
}

/// A line as pieces of at most [`MAX_LINE_BYTES`] (an empty line is one empty piece).
fn pieces(line: &[u8]) -> Vec<String> {
    if line.is_empty() {
        return vec![String::new()];
    }
    line.chunks(MAX_LINE_BYTES).map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

/// The last `n` of `lines` (all of them for `None`).
pub fn last_lines(lines: Vec<String>, n: Option<u32>) -> Vec<String> {
    match n {
        Some(n) if (n as usize) < lines.len() => {
            let skip = lines.len() - n as usize;
            lines.into_iter().skip(skip).collect()
        }
        _ => lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_line_breaks_and_an_unfinished_one_waits() {
        let mut pending = Vec::new();
        assert_eq!(split_lines(&mut pending, b"one\r\ntwo\n\nthr"), ["one", "two", ""]);
        assert_eq!(pending, b"thr");
        assert_eq!(split_lines(&mut pending, b"ee\n"), ["three"]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_line_without_breaks_is_sent_in_bounded_pieces() {
        let mut pending = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let out = split_lines(&mut pending, &long);
        assert_eq!(out.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_tail_is_the_last_lines() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(last_lines(lines(&["a", "b", "c"]), Some(2)), ["b", "c"]);
        assert_eq!(last_lines(lines(&["a"]), Some(5)), ["a"]);
        assert!(last_lines(lines(&["a"]), Some(0)).is_empty());
        assert_eq!(last_lines(lines(&["a", "b"]), None), ["a", "b"]);
    }
}
