//! Static bearer tokens from a file shaped like kube-apiserver's `--token-auth-file`.
//!
//! One token per line, comma-separated, fields optionally double-quoted (`""` inside quotes is a
//! literal quote):
//!
//! ```text
//! # comments and blank lines are skipped
//! TOKEN,USER,UID,"GROUP1,GROUP2"     kube-apiserver's form
//! TOKEN,USER,"GROUP1,GROUP2"         no uid
//! TOKEN,USER,GROUP                   no uid, one group
//! ```
//!
//! Unlike kube-apiserver, three fields mean `token,user,groups` (kube reads the third as a uid),
//! which is the short form the issue asks for; four fields are kube's form exactly.
//!
//! Tokens are kept only as SHA-256 digests, compared in constant time against every entry, and
//! never appear in errors, logs or `Debug` output.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use crate::auth::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {origin} line {line}: {reason}")]
    Line {
        origin: String,
        line: usize,
        #[source]
        reason: LineError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with one line (never quoting the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("expected token,user,groups or token,user,uid,groups; found {0} field(s)")]
    FieldCount(usize),
    #[error("the token is empty")]
    EmptyToken,
    #[error("the token has characters a bearer header cannot carry (use visible ASCII without spaces or commas)")]
    BadTokenChars,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("a quoted field is not closed")]
    UnterminatedQuote,
    #[error("a quote in the middle of an unquoted field (quote the whole field)")]
    BareQuote,
    #[error("unexpected text after a closing quote")]
    TextAfterQuote,
    #[error("the same token as line {0}")]
    Duplicate(usize),
}

/// A set of static tokens and the identity each one authenticates as.
#[derive(Clone, Default)]
pub struct TokenFile {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    identity: Identity,
    line: usize,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.entries.iter().map(|e| e.identity.user.as_str()).collect();
        f.debug_struct("TokenFile").field("users", &users).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses file contents; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut file = TokenFile::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |reason| Error::Line { origin: origin.to_string(), line, reason };
            let (token, identity) = parse_line(trimmed).map_err(bad)?;
            file.insert(&token, identity, line).map_err(bad)?;
        }
        Ok(file)
    }

    /// One token for one identity (the generated admin token).
    pub fn single(token: &str, identity: Identity) -> Self {
        TokenFile { entries: vec![Entry { digest: digest(token), identity, line: 0 }] }
    }

    fn insert(&mut self, token: &str, identity: Identity, line: usize) -> Result<(), LineError> {
        let digest = digest(token);
        if let Some(first) = self.entries.iter().find(|e| bool::from(e.digest.ct_eq(&digest))) {
            return Err(LineError::Duplicate(first.line));
        }
        self.entries.push(Entry { digest, identity, line });
        Ok(())
    }

    /// The identity `token` authenticates as. Every entry is compared (no early exit), on
    /// digests, so timing says nothing about how close a guess was.
    pub fn lookup(&self, token: &str) -> Option<&Identity> {
        let presented = digest(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) && found.is_none() {
                found = Some(&entry.identity);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `token` can be sent as `authorization: Bearer <token>`: visible ASCII, no spaces
/// (commas are excluded too, as they would split the file's fields).
pub(crate) fn is_sendable_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'"')
}

fn parse_line(line: &str) -> Result<(String, Identity), LineError> {
    let fields = split_fields(line)?;
    let (token, user, uid, groups) = match fields.as_slice() {
        [t, u, g] => (t, u, None, g),
        [t, u, id, g] => (t, u, Some(id), g),
        other => return Err(LineError::FieldCount(other.len())),
    };
    if token.is_empty() {
        return Err(LineError::EmptyToken);
    }
    if !is_sendable_token(token) {
        return Err(LineError::BadTokenChars);
    }
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    let groups = groups.split(',').map(str::trim).filter(|g| !g.is_empty());
    let mut identity = Identity::new(user.clone()).with_groups(groups);
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        identity = identity.with_uid(uid.clone());
    }
    Ok((token.clone(), identity))
}

/// Splits one CSV record (RFC 4180 quoting, whitespace around fields trimmed).
fn split_fields(line: &str) -> Result<Vec<String>, LineError> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(LineError::UnterminatedQuote),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(LineError::TextAfterQuote),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(LineError::BareQuote),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_error(text: &str) -> (usize, LineError) {
        match TokenFile::parse(text, "tokens.csv").unwrap_err() {
            Error::Line { line, reason, origin } => {
                assert_eq!(origin, "tokens.csv");
                (line, reason)
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn kube_style_lines_with_uid_and_quoted_groups_parse() {
        let f = TokenFile::parse("t1,alice,u-1,\"jac-orc:admins,devs\"\n", "x").unwrap();
        let alice = f.lookup("t1").expect("t1 is alice");
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.uid.as_deref(), Some("u-1"));
        assert_eq!(alice.groups, ["jac-orc:admins", "devs"]);
    }

    #[test]
    fn three_fields_are_token_user_groups_quoted_or_single() {
        let text = "t1,bob,\"jac-orc:viewers, jac-orc:callers\"\nt2,carol,jac-orc:viewers\nt3, dave , \"\"\n";
        let f = TokenFile::parse(text, "x").unwrap();
        assert_eq!(f.len(), 3);
        let bob = f.lookup("t1").unwrap();
        assert_eq!(bob.uid, None);
        assert_eq!(bob.groups, ["jac-orc:viewers", "jac-orc:callers"]);
        assert_eq!(f.lookup("t2").unwrap().groups, ["jac-orc:viewers"]);
        let dave = f.lookup("t3").unwrap();
        assert_eq!(dave.user, "dave", "whitespace around fields is trimmed");
        assert!(dave.groups.is_empty());
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_skipped() {
        let text = "# admins\r\n\r\n   \n  # indented comment\nt1,alice,jac-orc:admins\r\n";
        let f = TokenFile::parse(text, "x").unwrap();
        assert_eq!(f.len(), 1);
        assert!(f.lookup("t1").is_some());
    }

    #[test]
    fn unknown_wrong_and_prefix_tokens_are_rejected() {
        let f = TokenFile::parse("secret-token,alice,jac-orc:admins\n", "x").unwrap();
        assert!(f.lookup("secret-token").is_some());
        for wrong in ["", "secret", "secret-token ", "secret-tokenX", "SECRET-TOKEN"] {
            assert!(f.lookup(wrong).is_none(), "{wrong:?} must not authenticate");
        }
    }

    #[test]
    fn bad_lines_are_named_by_number_and_reason() {
        assert_eq!(line_error("# c\nt1,alice\n"), (2, LineError::FieldCount(2)));
        assert_eq!(line_error("t1,a,b,c,d\n"), (1, LineError::FieldCount(5)));
        assert_eq!(line_error("\n\n,alice,g\n"), (3, LineError::EmptyToken));
        assert_eq!(line_error("t1,,g\n"), (1, LineError::EmptyUser));
        assert_eq!(line_error("t1,alice,\"g1,g2\n"), (1, LineError::UnterminatedQuote));
        assert_eq!(line_error("t1,al\"ice,g\n"), (1, LineError::BareQuote));
        assert_eq!(line_error("t1,alice,\"g\" x\n"), (1, LineError::TextAfterQuote));
        assert_eq!(line_error("\"t 1\",alice,g\n"), (1, LineError::BadTokenChars));
        assert_eq!(line_error("t1,alice,g\nt2,bob,g\nt1,carol,g\n"), (3, LineError::Duplicate(1)));
    }

    #[test]
    fn errors_and_debug_never_show_tokens() {
        let err = TokenFile::parse("supersecret,alice,g\nsupersecret,bob,g\n", "tokens.csv").unwrap_err();
        let text = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
        assert!(text.contains("line 2") && text.contains("line 1"), "{text}");
        assert!(!text.contains("supersecret"), "{text}");
        let f = TokenFile::parse("supersecret,alice,g\n", "x").unwrap();
        let debug = format!("{f:?}");
        assert!(debug.contains("alice") && !debug.contains("supersecret"), "{debug}");
    }

    #[test]
    fn load_names_a_missing_file() {
        let err = TokenFile::load(Path::new("/nonexistent/tokens.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens.csv"), "{err}");
        assert!(matches!(err, Error::Read { .. }));
    }

    #[test]
    fn quoted_quotes_are_literal() {
        assert_eq!(split_fields(r#"a, "b ""c"", d" ,e"#).unwrap(), ["a", r#"b "c", d"#, "e"]);
        assert_eq!(split_fields("a,,").unwrap(), ["a", "", ""]);
    }
}
