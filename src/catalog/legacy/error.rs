//! The one error [`scan`](super::scan) and [`render`](super::render) return. The parser and the
//! emitters each have a narrower error of their own (a parse can never be "unsafe", an emitter
//! never meets a syntax error); both convert into this one, variant for variant, so callers
//! match a single flat enum.

use super::{emit, parser, DefaultError};

/// Errors from [`scan`](super::scan) and [`render`](super::render).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The placeholder text itself is malformed.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line of the `$`.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The default written in the template is not the JSON its kind needs.
    #[error("line {line}: bad default for placeholder `{name}`: {source}")]
    BadDefault {
        /// Placeholder name.
        name: String,
        /// 1-based line of the `$`.
        line: usize,
        /// What is wrong with the default.
        #[source]
        source: DefaultError,
    },
    /// The value cannot be written at this place without changing the YAML structure.
    #[error("line {line}: unsafe value for placeholder `{name}`: {reason}")]
    Unsafe {
        /// Placeholder name.
        name: String,
        /// 1-based line of the `$`.
        line: usize,
        /// Why the value was refused.
        reason: String,
    },
    /// An `$a` override that is not an array, or a `$d` override that is not an object.
    #[error("placeholder `{name}` expects {expected}")]
    WrongShape {
        /// Placeholder name.
        name: String,
        /// `"array"` or `"object"`.
        expected: &'static str,
    },
}

impl From<parser::Error> for Error {
    fn from(e: parser::Error) -> Self {
        match e {
            parser::Error::Syntax { line, message } => Error::Syntax { line, message },
            parser::Error::BadDefault { name, line, source } => Error::BadDefault { name, line, source },
        }
    }
}

impl From<emit::Error> for Error {
    fn from(e: emit::Error) -> Self {
        match e {
            emit::Error::Unsafe { name, line, reason } => Error::Unsafe { name, line, reason },
            emit::Error::WrongShape { name, expected } => Error::WrongShape { name, expected },
        }
    }
}
