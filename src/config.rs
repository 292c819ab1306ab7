//! Settings of `jac-orc serve`, from flags and environment (validated once, in [`crate::cli`]).

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Largest out-of-order `ModuleProxy` request buffered before forwarding.
    pub max_buffered_bytes: usize,
    /// Where pip finds python-module packages on the local backend.
    pub pip: crate::backend::local::PipSource,
    pub edge: EdgeConfig,
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
