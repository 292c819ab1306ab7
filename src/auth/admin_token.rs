//! The generated admin token of a laptop install, and how clients find a token.
//!
//! Server side ([`ensure`]): when `serve` starts with no auth configured (no token file, local
//! backend), it generates one admin token into `<data-dir>/token` (file 0600, a new directory
//! 0700), keeps it across restarts, and logs the path (never the token). The token authenticates
//! as user [`ADMIN_USER`] in group [`crate::auth::authorize::ADMINS`].
//!
//! Client side ([`client_token`]): `--token` / `JAC_ORC_TOKEN` when given, else, when the
//! server URL is on loopback, `<data-dir>/token` of the data dir the client would use itself
//! (`--data-dir` / `JAC_ORC_DATA_DIR`, else [`crate::config::default_data_dir`]). So the
//! README's two-command laptop flow needs no token handling at all.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::auth::authorize::ADMINS;
use crate::auth::token_file::{is_sendable_token, TokenFile};
use crate::auth::Identity;

/// File name of the generated token inside the data dir.
pub const TOKEN_FILE_NAME: &str = "token";
/// The user the generated token authenticates as.
pub const ADMIN_USER: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the data directory {path} is writable by other users (mode {mode:04o}), so anyone could replace its admin token; chmod 700 it")]
    InsecureDir { path: PathBuf, mode: u32 },
    #[error("{path} is readable or writable by other users (mode {mode:04o}); chmod 600 it, or delete it to get a new token")]
    InsecureFile { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} does not hold a token (one line of visible ASCII); delete it to get a new one")]
    Malformed { path: PathBuf },
    #[error("cannot generate a random token")]
    Random,
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The admin token of this data dir: where it is, whether this start created it, and the token
/// set to authenticate with (the token itself is not exposed).
#[derive(Debug)]
pub struct AdminToken {
    pub path: PathBuf,
    pub created: bool,
    tokens: TokenFile,
}

impl AdminToken {
    /// The one-entry token set that authenticates the admin token.
    pub fn tokens(&self) -> &TokenFile {
        &self.tokens
    }

    pub fn into_tokens(self) -> TokenFile {
        self.tokens
    }
}

/// The identity of the generated token.
pub fn admin_identity() -> Identity {
    Identity::new(ADMIN_USER).with_groups([ADMINS])
}

/// Reads `<data_dir>/token`, generating it first if it does not exist.
pub fn ensure(data_dir: &Path) -> Result<AdminToken> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| Error::CreateDir { path: data_dir.to_path_buf(), source })?;
    let dir_meta = std::fs::metadata(data_dir).map_err(|source| io("inspect", data_dir, source))?;
    let mode = dir_meta.permissions().mode() & 0o7777;
    // A sticky directory (like /tmp) does not let others replace our file.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Error::InsecureDir { path: data_dir.to_path_buf(), mode });
    }
    let path = data_dir.join(TOKEN_FILE_NAME);
    let (token, created) = match generate(&path)? {
        Some(token) => (token, true),
        None => (read_existing(&path)?, false),
    };
    Ok(AdminToken { tokens: TokenFile::single(&token, admin_identity()), path, created })
}

/// Writes a new token to `path` unless the file exists (`None` then).
fn generate(path: &Path) -> Result<Option<String>> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| Error::Random)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
        Err(source) => return Err(io("create", path, source)),
    };
    let written = file.write_all(format!("{token}\n").as_bytes()).and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written token would be "malformed" forever; let the next start try again.
        let _ = std::fs::remove_file(path);
        return Err(io("write", path, source));
    }
    Ok(Some(token))
}

fn read_existing(path: &Path) -> Result<String> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| io("inspect", path, source))?;
    if !meta.file_type().is_file() {
        return Err(Error::NotAFile { path: path.to_path_buf() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecureFile { path: path.to_path_buf(), mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| io("read", path, source))?;
    let token = text.trim();
    if !is_sendable_token(token) || token.lines().count() != 1 {
        return Err(Error::Malformed { path: path.to_path_buf() });
    }
    Ok(token.to_string())
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { action, path: path.to_path_buf(), source }
}

// === client side ===

/// A token a client sends, and where it came from (for messages). `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken {
    value: String,
    pub source: ClientTokenSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTokenSource {
    /// `--token` / `JAC_ORC_TOKEN`.
    Explicit,
    /// The server's generated token, read from this file.
    File(PathBuf),
}

impl ClientToken {
    /// The token, for the `authorization: Bearer` header only.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// The header value `Bearer <token>`, marked sensitive so HTTP stacks do not log it.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut v = http::HeaderValue::try_from(format!("Bearer {}", self.value))
            .expect("client tokens are checked to be visible ASCII");
        v.set_sensitive(true);
        v
    }
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientToken").field("value", &"<redacted>").field("source", &self.source).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the token given with --token / JAC_ORC_TOKEN has characters a bearer header cannot carry")]
    BadExplicit,
    #[error("cannot read the server's token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a token (one line of visible ASCII)")]
    Malformed { path: PathBuf },
}

/// The token a client should send to `server`: `explicit` (the `--token` / `JAC_ORC_TOKEN`
/// value) when non-empty; else, for a loopback `server`, `<data_dir>/token` when it exists, with
/// `data_dir` the client's `--data-dir` / `JAC_ORC_DATA_DIR` or the default; else `None` (the
/// server will answer 401 with instructions).
pub fn client_token(
    explicit: Option<&str>,
    data_dir: Option<&Path>,
    server: &str,
) -> Result<Option<ClientToken>, ClientError> {
    if let Some(token) = explicit.map(str::trim).filter(|t| !t.is_empty()) {
        if !is_sendable_token(token) {
            return Err(ClientError::BadExplicit);
        }
        return Ok(Some(ClientToken { value: token.to_string(), source: ClientTokenSource::Explicit }));
    }
    if !is_loopback_url(server) {
        return Ok(None);
    }
    let path = data_dir.map_or_else(crate::config::default_data_dir, Path::to_path_buf).join(TOKEN_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ClientError::Read { path, source }),
    };
    let token = text.trim();
    if !is_sendable_token(token) || token.lines().count() != 1 {
        return Err(ClientError::Malformed { path });
    }
    Ok(Some(ClientToken { value: token.to_string(), source: ClientTokenSource::File(path) }))
}

/// Whether a server URL (`http://127.0.0.1:8000`, `https://[::1]:8443`, `localhost:8000`) names
/// this machine: `localhost` (and `*.localhost`), 127.0.0.0/8 or `::1`.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    is_loopback_host(host)
}

/// Whether a host name or IP literal (brackets allowed) is loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback()
            || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    }
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_admin_token_is_generated_once_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/jac-orc");
        let first = ensure(&dir).unwrap();
        assert!(first.created);
        assert_eq!(first.path, dir.join("token"));
        assert_eq!(mode(&first.path), 0o600);
        assert_eq!(mode(&dir), 0o700, "a directory we create is private");
        let token = std::fs::read_to_string(&first.path).unwrap().trim().to_string();
        assert_eq!(token.len(), 64);
        assert_eq!(first.tokens().lookup(&token), Some(&admin_identity()));
        assert!(admin_identity().in_group("jac-orc:admins"));

        let second = ensure(&dir).unwrap();
        assert!(!second.created, "kept across restarts");
        assert_eq!(std::fs::read_to_string(&second.path).unwrap().trim(), token);
        assert!(second.tokens().lookup(&token).is_some());
        assert!(!format!("{second:?}").contains(&token), "Debug hides the token");
    }

    #[test]
    fn an_existing_token_file_readable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = ensure(tmp.path()).unwrap().path;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ensure(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::InsecureFile { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_data_dir_writable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure(tmp.path()).unwrap_err(), Error::InsecureDir { mode: 0o777, .. }));
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ensure(tmp.path()).unwrap().created, "a sticky directory is fine");
    }

    #[test]
    fn a_malformed_or_symlinked_token_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("token");
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        assert!(matches!(ensure(tmp.path()).unwrap_err(), Error::Malformed { .. }), "an empty file");
        std::fs::remove_file(&path).unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, "abc\n").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(ensure(tmp.path()).unwrap_err(), Error::NotAFile { .. }));
    }

    #[test]
    fn clients_prefer_the_explicit_token() {
        let tmp = tempfile::tempdir().unwrap();
        ensure(tmp.path()).unwrap();
        let t = client_token(Some(" abc "), Some(tmp.path()), "http://127.0.0.1:8000").unwrap().unwrap();
        assert_eq!((t.secret(), &t.source), ("abc", &ClientTokenSource::Explicit));
        assert_eq!(t.header_value(), "Bearer abc");
        assert!(t.header_value().is_sensitive());
        assert!(!format!("{t:?}").contains("abc"));
        assert!(matches!(client_token(Some("a b"), None, "http://127.0.0.1:8000"), Err(ClientError::BadExplicit)));
    }

    #[test]
    fn clients_read_the_data_dir_token_only_for_loopback_servers() {
        let tmp = tempfile::tempdir().unwrap();
        let admin = ensure(tmp.path()).unwrap();
        let token = std::fs::read_to_string(&admin.path).unwrap().trim().to_string();
        for url in ["http://127.0.0.1:8000", "https://localhost:8443", "http://[::1]:8000", "127.0.0.2:9"] {
            let t = client_token(Some(""), Some(tmp.path()), url).unwrap().unwrap_or_else(|| panic!("{url}"));
            assert_eq!(t.secret(), token);
            assert_eq!(t.source, ClientTokenSource::File(admin.path.clone()));
        }
        for url in ["http://10.0.0.1:8000", "http://jac-orc.default:80", "https://example.com", "not a url"] {
            assert!(client_token(None, Some(tmp.path()), url).unwrap().is_none(), "{url}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(client_token(None, Some(empty.path()), "http://127.0.0.1:8000").unwrap().is_none());
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in
            ["localhost", "LOCALHOST.", "api.localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]", "::ffff:127.0.0.1"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["localhost.example.com", "10.0.0.1", "::", "0.0.0.0", "example.com", "127.0.0.1.nip.io"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
