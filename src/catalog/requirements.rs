//! Python package requirements as a request may give them: PEP 508 requirement strings (a name,
//! extras, version specifiers and environment markers), and nothing else pip would also read
//! from a command line or a requirements file: no options (`-r FILE`, `--index-url URL`), no
//! paths, no URLs or direct references (`name @ url`, `git+https://…`), no archive file names.
//! Where packages come from is the operator's configuration, never a request's.
//!
//! The accepted language is a strict subset of PEP 508, chosen so that a valid requirement means
//! the same on pip's command line (after `--`) and as one line of a requirements file: printable
//! ASCII with single-character spaces only, no `#`, `$`, `\`, `/`, `@` or quotes other than the
//! markers' own, and no token after a space that starts with `-`.

/// Longest requirement string accepted.
pub const MAX_LEN: usize = 256;
/// Most requirements one list placeholder may hold.
pub const MAX_COUNT: usize = 64;
/// Deepest nesting of parentheses in a marker.
const MAX_DEPTH: usize = 8;

/// Why a string is not an acceptable requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("must hold only printable ASCII characters and spaces (no tabs, newlines or leading/trailing spaces)")]
    Characters,
    #[error(
        "is a pip option: options such as `-r FILE` or `--index-url URL` are not allowed (where packages come from is the orchestrator's configuration)"
    )]
    Option,
    #[error("is a URL or direct reference: `name @ url`, `git+https://...` and `file://` are not allowed")]
    Url,
    #[error("is a path: local directories and files are not allowed")]
    Path,
    #[error("looks like an archive file name, which pip would read as a local path")]
    Archive,
    #[error("is not a PEP 508 requirement: expected {expected} at character {at} (e.g. `numpy`, `numpy==2.1.3`, `requests[socks]>=2; python_version >= \"3.9\"`)")]
    Syntax { at: usize, expected: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// File name endings pip treats as archives (`pip._internal.utils.filetypes`).
const ARCHIVES: [&str; 11] =
    [".zip", ".whl", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma", ".tar.gz", ".tgz"];

/// Environment marker variables of PEP 508.
const MARKER_VARS: [&str; 12] = [
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
];

/// Version comparison operators, longest first so `===` is not read as `==`.
const COMPARISONS: [&str; 8] = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"];

/// Checks one requirement string.
pub fn validate(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(Error::TooLong { max: MAX_LEN });
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) || s.starts_with(' ') || s.ends_with(' ') {
        return Err(Error::Characters);
    }
    if s.starts_with('-') || s.contains(" -") {
        return Err(Error::Option);
    }
    if s.contains("://") || s.contains('@') || s.to_ascii_lowercase().starts_with("file:") {
        return Err(Error::Url);
    }
    if s.starts_with(['.', '/', '~']) || s.contains(['/', '\\']) {
        return Err(Error::Path);
    }
    Parser { s: s.as_bytes(), at: 0 }.requirement()?;
    let before_marker = s.split(';').next().unwrap_or(s).trim_end().to_ascii_lowercase();
    if ARCHIVES.iter().any(|ext| before_marker.ends_with(ext)) {
        return Err(Error::Archive);
    }
    Ok(())
}

/// A recursive-descent parser over the bytes of one requirement.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn requirement(&mut self) -> Result<()> {
        self.name("a package name")?;
        self.spaces();
        if self.peek() == Some(b'[') {
            self.extras()?;
            self.spaces();
        }
        match self.peek() {
            Some(b'(') => {
                self.bump();
                self.spaces();
                self.versions()?;
                self.spaces();
                self.expect(b')', "`)`")?;
                self.spaces();
            }
            Some(b'=' | b'!' | b'<' | b'>' | b'~') => {
                self.versions()?;
                self.spaces();
            }
            _ => {}
        }
        if self.peek() == Some(b';') {
            self.bump();
            self.spaces();
            self.marker(0)?;
            self.spaces();
        }
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("the end, `[extras]`, a version specifier or `; marker`")),
        }
    }

    /// `[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`
    fn name(&mut self, what: &'static str) -> Result<()> {
        if !self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
            return Err(self.error(what));
        }
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            self.bump();
        }
        if !self.s[self.at - 1].is_ascii_alphanumeric() {
            return Err(Error::Syntax { at: self.at, expected: "a name ending in a letter or digit" });
        }
        Ok(())
    }

    fn extras(&mut self) -> Result<()> {
        self.expect(b'[', "`[`")?;
        self.spaces();
        if self.peek() == Some(b']') {
            self.bump();
            return Ok(());
        }
        loop {
            self.name("an extra's name")?;
            self.spaces();
            match self.peek() {
                Some(b',') => {
                    self.bump();
                    self.spaces();
                }
                Some(b']') => {
                    self.bump();
                    return Ok(());
                }
                _ => return Err(self.error("`,` or `]`")),
            }
        }
    }

    /// `cmp version (, cmp version)*`
    fn versions(&mut self) -> Result<()> {
        loop {
            self.comparison()?;
            self.spaces();
            if !self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
                return Err(self.error("a version"));
            }
            while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b"._*+!-".contains(&b)) {
                self.bump();
            }
            let save = self.at;
            self.spaces();
            if self.peek() == Some(b',') {
                self.bump();
                self.spaces();
            } else {
                self.at = save;
                return Ok(());
            }
        }
    }

    fn comparison(&mut self) -> Result<&'static str> {
        let rest = &self.s[self.at..];
        match COMPARISONS.iter().find(|op| rest.starts_with(op.as_bytes())) {
            Some(op) => {
                self.at += op.len();
                Ok(op)
            }
            None => Err(self.error("a comparison (==, !=, <=, >=, ~=, ===, <, >)")),
        }
    }

    /// `and` binds tighter than `or`; parentheses group.
    fn marker(&mut self, depth: usize) -> Result<()> {
        loop {
            loop {
                self.marker_expr(depth)?;
                if !self.keyword("and") {
                    break;
                }
            }
            if !self.keyword("or") {
                return Ok(());
            }
        }
    }

    fn marker_expr(&mut self, depth: usize) -> Result<()> {
        self.spaces();
        if self.peek() == Some(b'(') {
            if depth >= MAX_DEPTH {
                return Err(self.error("fewer nested parentheses"));
            }
            self.bump();
            self.spaces();
            self.marker(depth + 1)?;
            self.spaces();
            return self.expect(b')', "`)`");
        }
        self.marker_var()?;
        self.spaces();
        if self.keyword_here("in") {
            self.at += 2;
        } else if self.keyword_here("not") {
            self.at += 3;
            if self.peek() != Some(b' ') {
                return Err(self.error("` in` after `not`"));
            }
            self.spaces();
            if !self.keyword_here("in") {
                return Err(self.error("`in` after `not`"));
            }
            self.at += 2;
        } else {
            self.comparison()?;
        }
        self.spaces();
        self.marker_var()
    }

    /// An environment marker variable or a quoted string of letters, digits and `._-+*!`.
    fn marker_var(&mut self) -> Result<()> {
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.bump();
                while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b"._-+*!".contains(&b)) {
                    self.bump();
                }
                self.expect(q, "the closing quote (marker strings hold letters, digits and . _ - + * !)")
            }
            _ => {
                let rest = &self.s[self.at..];
                let var = MARKER_VARS.iter().filter(|v| rest.starts_with(v.as_bytes())).max_by_key(|v| v.len());
                match var {
                    Some(v) if !rest.get(v.len()).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') => {
                        self.at += v.len();
                        Ok(())
                    }
                    _ => Err(self.error("a marker variable (python_version, sys_platform, ...) or a quoted string")),
                }
            }
        }
    }

    /// Consumes ` word ` (spaces optional before, a non-name character after) if it is next.
    fn keyword(&mut self, word: &str) -> bool {
        let save = self.at;
        self.spaces();
        if self.keyword_here(word) {
            self.at += word.len();
            self.spaces();
            true
        } else {
            self.at = save;
            false
        }
    }

    fn keyword_here(&self, word: &str) -> bool {
        let rest = &self.s[self.at..];
        rest.starts_with(word.as_bytes())
            && !rest.get(word.len()).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.bump();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at += 1;
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(b) {
            self.bump();
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn error(&self, expected: &'static str) -> Error {
        Error::Syntax { at: self.at + 1, expected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep_508_requirements_are_accepted() {
        for ok in [
            "numpy",
            "numpy==2.1.3",
            "NumPy>=1.26,<3",
            "requests[socks,security]>=2.31",
            "requests [socks] >= 2.31 , != 2.32.0",
            "name (>=1.0, <2)",
            "zope.interface~=6.0",
            "pkg===1.0+local.1",
            "pkg==1.*",
            "pkg==1!2.0.post1.dev3",
            "typing-extensions; python_version < \"3.11\"",
            "pywin32>=306; sys_platform == 'win32' and platform_machine != 'arm64'",
            "uvloop; (sys_platform != \"win32\" and implementation_name == \"cpython\") or os_name == \"posix\"",
            "x; 'linux' in sys_platform",
            "x; \"cp\" not in implementation_name",
            "a_b-c.d",
            "x[]",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn pip_options_paths_urls_and_archives_are_refused_with_their_reason() {
        let cases: &[(&str, Error)] = &[
            ("-r", Error::Option),
            ("--index-url", Error::Option),
            ("-e.", Error::Option),
            ("numpy --hash=sha256:00", Error::Option),
            ("numpy -i http", Error::Option),
            ("/etc/passwd", Error::Path),
            ("./project", Error::Path),
            ("..", Error::Path),
            ("~user/pkg", Error::Path),
            ("sub/dir", Error::Path),
            ("c:\\pkg", Error::Path),
            ("git+https://github.com/x/y", Error::Url),
            ("pkg @ file:///tmp/pkg", Error::Url),
            ("pkg@https://x/y.whl", Error::Url),
            ("file:pkg", Error::Url),
            ("evil.tar.gz", Error::Archive),
            ("evil-1.0-py3-none-any.whl", Error::Archive),
            ("pkg==1.zip", Error::Archive),
            ("", Error::Empty),
            (" numpy", Error::Characters),
            ("numpy ", Error::Characters),
            ("numpy\n-r /etc/passwd", Error::Characters),
            ("numpy\t==1", Error::Characters),
            ("nümpy", Error::Characters),
        ];
        for (input, want) in cases {
            assert_eq!(validate(input).as_ref(), Err(want), "{input:?}");
        }
        assert_eq!(validate(&"a".repeat(MAX_LEN + 1)), Err(Error::TooLong { max: MAX_LEN }));
    }

    #[test]
    fn what_requirements_files_would_read_otherwise_is_a_syntax_error() {
        for bad in [
            "numpy # comment",
            "numpy==${VERSION}",
            "numpy; os_name == \"a#b\"",
            "numpy; os_name == \"$HOME\"",
            "numpy; os_name == \"a b\"",
            "numpy==",
            "numpy==-1",
            "numpy=1",
            "numpy,scipy",
            "numpy scipy",
            "_private",
            "pkg-",
            "pkg[",
            "pkg[a,]",
            "pkg; python_version",
            "pkg; python_versions == '3'",
            "pkg; os_name == 'x' or",
            "pkg; not_a_var == 'x'",
            "pkg; ((((((((((os_name == 'x'))))))))))",
        ] {
            assert!(matches!(validate(bad), Err(Error::Syntax { .. })), "{bad:?}: {:?}", validate(bad));
        }
    }

    #[test]
    fn syntax_errors_say_where_and_what_was_expected() {
        let e = validate("numpy==").unwrap_err();
        assert_eq!(e, Error::Syntax { at: 8, expected: "a version" });
        assert!(e.to_string().contains("character 8"), "{e}");
    }
}
