//! Settings of `jac-orc serve`, from flags and environment (validated once, in [`crate::cli`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which backend runs deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// A Kubernetes cluster when one is configured, else the local backend.
    Auto,
    Kube,
    Local,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// A second listener serving only `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub manifests_path: Option<PathBuf>,
    pub namespace: String,
    pub restricted_namespace: bool,
    /// `MODULES` JSON to deploy at startup.
    pub modules: Option<String>,
    pub python: String,
    pub backend: BackendChoice,
    pub kubeconfig: Option<PathBuf>,
    /// Largest message `ModuleProxy` forwards.
    pub max_message_bytes: usize,
    pub security: SecurityConfig,
    /// Largest out-of-order `ModuleProxy` request buffered before forwarding.
    pub max_buffered_bytes: usize,
    /// Where pip finds python-module packages on the local backend.
    pub pip: crate::backend::local::PipSource,
    pub edge: EdgeConfig,
    /// Modules and packages that may be deployed on first import (`None`: any); `serve` makes
    /// the service's `EnsurePolicy` of it, so this file stays below the service layer.
    pub ensure_allow: Option<Vec<String>>,
    /// Revisions kept per deployment.
    pub history_limit: usize,
    /// How long a `GetModuleAccess` answer is valid for.
    pub module_access_ttl: std::time::Duration,
}

/// Authentication, TLS and connection limits of `serve`.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub token_file: Option<PathBuf>,
    /// Audiences TokenReviews ask for (empty: the API server's).
    pub token_audiences: Vec<String>,
    pub metrics_auth: bool,
    /// `None`: open on a loopback listener, else authenticated.
    pub reflection: Option<ReflectionAccess>,
    /// `None`: plaintext.
    pub tls: Option<TlsChoice>,
    /// Connection limits (`crate::server::Limits`).
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_streams: u32,
}

/// Who may use gRPC reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReflectionAccess {
    /// Anyone who reaches the port.
    Open,
    /// Authenticated callers only.
    Auth,
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// `--tls-cert` / `--tls-key`.
    Files { cert: PathBuf, key: PathBuf },
    /// `--tls-self-signed` (with `--tls-name`s), generated into the data dir.
    SelfSigned { names: Vec<String> },
    /// `--tls-dir`: `tls.crt` and `tls.key` there when present, else plaintext.
    Dir(PathBuf),
}

impl TlsChoice {
    /// The certificate files of a `--tls-dir` (a `kubernetes.io/tls` Secret's keys).
    pub fn dir_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        (dir.join("tls.crt"), dir.join("tls.key"))
    }
}

/// The HTTP edge's browser and request-head rules (`crate::api::layers`).
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Origins allowed to call cross-origin (REST, grpc-web), as `parse_origin` returns them.
    pub cors_origins: Vec<String>,
    /// Longest request URI (path and query) accepted.
    pub max_uri_bytes: usize,
}

/// Default of [`EdgeConfig::max_uri_bytes`].
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig { cors_origins: Vec::new(), max_uri_bytes: DEFAULT_MAX_URI_BYTES }
    }
}

impl EdgeConfig {
    /// Adds an origin allowed to call cross-origin (`parse_origin`'s form).
    #[must_use]
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }
}

/// Default state directory: `$XDG_STATE_HOME/jac-orc`, `~/.local/state/jac-orc`, or `./.jac-orc`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("jac-orc");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/state/jac-orc");
    }
    PathBuf::from(".jac-orc")
}

/// Truthy environment values (`1`, `true`, `yes`, `on`).
pub fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}
