//! Command-line arguments (clap): the raw flags, one `…Args` per command, and where they are
//! validated into settings (`ServeArgs` → [`ServeConfig`]; [`ValuesArgs`] and the positional
//! NAME and `-n` → [`super::values::Values`]). Help and the completion scripts
//! (`jac-orc completion SHELL`) are generated from these definitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, BackendChoice, ReflectionAccess, SecurityConfig, ServeConfig, TlsChoice};
use crate::identity::LATEST;
use crate::server::Limits;

#[derive(Debug, Parser)]
#[command(
    name = "jac-orc",
    version,
    about = "Deploy services from templates and Python modules as microservices (gRPC-first)."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `jac_splice_orc=debug` [default:
    /// info; the original's LOGGER_LEVEL is accepted too, deprecated].
    #[arg(long, global = true, env = "JAC_ORC_LOG")]
    pub log: Option<String>,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, global = true, value_enum, env = "JAC_ORC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and the event's fields).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator: gRPC, grpc-web and REST on one address.
    Serve(Box<ServeArgs>),
    /// Render a template version on the server and show every placeholder and manifest, touching nothing.
    DryRun(RenderArgs),
    /// Render a template version offline, with no server, as a YAML stream for `kubectl apply -f -`.
    Template(TemplateArgs),
    /// Deploy a template version as NAME, showing progress per object.
    Deploy(DeployArgs),
    /// Remove a deployment and everything it created.
    Undeploy(UndeployArgs),
    /// Remove every deployment made on first import (`import_module(..., deploy=True)`, EnsureModule).
    UndeployOnDemand(UndeployOnDemandArgs),
    /// Show one deployment: its status, values, endpoints and objects.
    Get(GetArgs),
    /// Show how one deployment stands: status, message, endpoints, objects, last update.
    Status(IdArgs),
    /// List deployments.
    List(ListArgs),
    /// List template modules and versions, with each placeholder's type, default and description.
    Templates(TemplatesArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
    /// Check a running jac-orc's gRPC health (the exec form of its readiness probe).
    Probe(super::probe::ProbeArgs),
    /// List a deployment's revisions, oldest first.
    History(IdArgs),
    /// Deploy an earlier revision again (default: the previous one), as a new revision.
    Rollback(RollbackArgs),
    /// Show per object what a deploy would change against the live objects (exit 0: nothing, 1: something, 2: error).
    Diff(DiffArgs),
    /// Print the logs of a deployment's workloads (its processes, or its pods); -f follows them.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub module: String,
    pub name: String,
    #[arg(short, long, env = "JAC_ORC_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Keep printing new lines as they are written, until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines from the end of each replica's or pod's log to start with (default: all).
    #[arg(long, allow_negative_numbers = true)]
    pub tail: Option<i64>,
    /// Start every line with where it comes from (`[replica 0] `, `[POD] `).
    #[arg(long)]
    pub prefix: bool,
    /// Start every line with its time, when the backend knows it (Kubernetes).
    #[arg(long)]
    pub timestamps: bool,
    /// `table` prints the lines; `json` one JSON object per line, as REST streams them.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// The revision to deploy again (default: the one before the current).
    pub revision: Option<u64>,
    /// Wait until every workload is ready.
    #[arg(long)]
    pub wait: bool,
    /// Readiness timeout in seconds (with --wait).
    #[arg(long, default_value_t = crate::service::DEFAULT_WAIT.as_secs() as u32)]
    pub timeout: u32,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Deployment name.
    pub name: String,
    #[command(flatten)]
    pub namespace: TargetNamespace,
    /// Placeholders not given take their defaults, not the deployment's current values.
    #[arg(long)]
    pub reset_values: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC, grpc-web and REST together [default: 127.0.0.1:8000; the original's
    /// HOST and PORT are accepted too, deprecated].
    #[arg(long, env = "JAC_ORC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Also serve `/metrics` (only that, without authentication) on this address.
    #[arg(long, env = "JAC_ORC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Local state (deployment records, workload data and logs).
    #[arg(long, env = "JAC_ORC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Template directory overriding the built-in catalog (<module>/<version>/...).
    #[arg(long, env = "MANIFESTS_PATH")]
    pub manifests_path: Option<PathBuf>,
    /// The orchestrator's namespace: default target of deployments.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Deploy only into --namespace (the original's CLUSTER_WIDE=true, which is also accepted).
    #[arg(long, env = "JAC_ORC_RESTRICTED_NAMESPACE")]
    pub restricted_namespace: Option<String>,
    /// Deployments to apply at startup, in the original's MODULES JSON format (or @file).
    #[arg(long, env = "MODULES")]
    pub modules: Option<String>,
    /// Revisions kept per deployment (history, rollback); the oldest go first.
    #[arg(long, env = "JAC_ORC_HISTORY_LIMIT", default_value_t = crate::backend::history::DEFAULT_LIMIT,
        value_parser = positive)]
    pub history_limit: usize,
    /// Seconds a GetModuleAccess answer (module server endpoints and call token) is valid for;
    /// direct clients ask again after it.
    #[arg(long, env = "JAC_ORC_MODULE_ACCESS_TTL", default_value = "60", value_parser = seconds)]
    pub module_access_ttl: Duration,
    /// Python interpreter for python-module deployments on the local backend.
    #[arg(long, env = "JAC_ORC_PYTHON", default_value = "python3")]
    pub python: String,
    #[arg(long, value_enum, env = "JAC_ORC_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,
    /// Kubeconfig for the kube backend (default: in-cluster config, then KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Largest request or response ModuleProxy forwards, in bytes (default 1 GiB).
    #[arg(long, env = "JAC_ORC_MAX_MESSAGE_BYTES", default_value_t = crate::proxy::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Most bytes of one ModuleProxy request held before its target is known (requests whose
    /// fields come out of order); larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "JAC_ORC_PROXY_MAX_BUFFERED_BYTES", default_value_t = crate::proxy::DEFAULT_MAX_BUFFERED_BYTES)]
    pub proxy_max_buffered_bytes: usize,
    /// Package index pip installs python-module packages from on the local backend (it may
    /// hold credentials: prefer the environment variable). Module pods on the kube backend read
    /// theirs from the Secret `jac-orc-pip` (key `index-url`) in their namespace.
    #[arg(long, env = "JAC_ORC_PIP_INDEX_URL", value_parser = parse_index_url, hide_env_values = true)]
    pub pip_index_url: Option<String>,
    /// A folder of wheels and source archives pip installs from on the local backend; without
    /// --pip-index-url pip looks nowhere else.
    #[arg(long, env = "JAC_ORC_PIP_FIND_LINKS", value_parser = parse_dir)]
    pub pip_find_links: Option<PathBuf>,
    /// A browser origin allowed to call REST and grpc-web cross-origin, as scheme://host[:port]
    /// (repeatable; default: none, so only same-origin pages and non-browser clients get in).
    #[arg(long = "cors-origin", value_name = "ORIGIN", env = "JAC_ORC_CORS_ORIGINS", value_delimiter = ',',
        value_parser = crate::api::layers::parse_origin)]
    pub cors_origins: Vec<String>,
    /// Modules and packages that may be deployed on first import (EnsureModule,
    /// `import_module(..., deploy=True)`), comma separated: a module is allowed when it or a
    /// package it belongs to is listed (`sklearn` allows `sklearn.linear_model`), a package when
    /// its project name is. Default: any; an empty list allows none.
    #[arg(long = "ensure-allow", value_name = "NAME", env = "JAC_ORC_ENSURE_ALLOW", value_delimiter = ',')]
    pub ensure_allow: Option<Vec<String>>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Who may call `serve`, over what, and for how long.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// Static bearer tokens, one `token,user,groups` per line (kube-apiserver's format). Without
    /// it the local backend generates an admin token into <data-dir>/token.
    #[arg(long, env = "JAC_ORC_TOKEN_FILE", help_heading = "Security")]
    pub token_file: Option<PathBuf>,
    /// Audience a TokenReview must accept (kube backend; repeatable). Default: the API server's.
    #[arg(long = "token-audience", env = "JAC_ORC_TOKEN_AUDIENCES", value_delimiter = ',', help_heading = "Security")]
    pub token_audiences: Vec<String>,
    /// Whether /metrics needs a token from peers that are not loopback.
    #[arg(long, env = "JAC_ORC_METRICS_AUTH", default_value_t = true, action = ArgAction::Set, help_heading = "Security")]
    pub metrics_auth: bool,
    /// Who may use gRPC reflection (default: open on a loopback listener, else authenticated).
    #[arg(long, value_enum, env = "JAC_ORC_REFLECTION", help_heading = "Security")]
    pub reflection: Option<ReflectionAccess>,
    /// TLS certificate chain (PEM), with --tls-key.
    #[arg(long, env = "JAC_ORC_TLS_CERT", requires = "tls_key", help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with --tls-cert.
    #[arg(long, env = "JAC_ORC_TLS_KEY", requires = "tls_cert", help_heading = "Security")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate once into <data-dir>/tls/ and serve TLS with it.
    #[arg(long, env = "JAC_ORC_TLS_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_dir"], help_heading = "Security")]
    pub tls_self_signed: bool,
    /// Extra name of the self-signed certificate (repeatable; localhost and loopback always).
    #[arg(
        long = "tls-name",
        env = "JAC_ORC_TLS_NAMES",
        value_delimiter = ',',
        requires = "tls_self_signed",
        help_heading = "Security"
    )]
    pub tls_names: Vec<String>,
    /// Serve TLS with DIR/tls.crt and DIR/tls.key when they exist (a mounted kubernetes.io/tls
    /// Secret, e.g. cert-manager's), else plaintext with a warning.
    #[arg(long, env = "JAC_ORC_TLS_DIR", conflicts_with = "tls_cert", help_heading = "Security")]
    pub tls_dir: Option<PathBuf>,
    /// Seconds for a TLS handshake and for an HTTP/1 request's headers.
    #[arg(long, env = "JAC_ORC_HEADER_READ_TIMEOUT", value_parser = seconds, default_value = "30", help_heading = "Limits")]
    pub header_read_timeout: Duration,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, env = "JAC_ORC_IDLE_TIMEOUT", value_parser = seconds, default_value = "300", help_heading = "Limits")]
    pub idle_timeout: Duration,
    /// Connections served at once (also kept within the open-file limit); more wait.
    #[arg(long, env = "JAC_ORC_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections, help_heading = "Limits")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "JAC_ORC_MAX_STREAMS", default_value_t = Limits::default().max_streams, help_heading = "Limits")]
    pub max_streams: u32,
}

/// A whole number of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// A positive number of seconds (`30`, `0.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

impl SecurityArgs {
    fn into_config(self) -> SecurityConfig {
        let tls = match (self.tls_cert, self.tls_key, self.tls_self_signed, self.tls_dir) {
            (Some(cert), Some(key), _, _) => Some(TlsChoice::Files { cert, key }),
            (_, _, true, _) => Some(TlsChoice::SelfSigned { names: self.tls_names }),
            (_, _, _, Some(dir)) => Some(TlsChoice::Dir(dir)),
            _ => None,
        };
        SecurityConfig {
            token_file: self.token_file,
            token_audiences: self.token_audiences.into_iter().filter(|a| !a.trim().is_empty()).collect(),
            metrics_auth: self.metrics_auth,
            reflection: self.reflection,
            tls,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_streams: self.max_streams,
        }
    }
}

/// `--pip-index-url`: an http(s) URL (shown only as "invalid", never echoed: it may hold a password).
fn parse_index_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|_| "not a URL".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(text.to_string()),
        _ => Err("expected an http:// or https:// URL of a package index".into()),
    }
}

/// `--pip-find-links`: an existing folder, made absolute (pip runs in the deployment's folder).
fn parse_dir(text: &str) -> Result<PathBuf, String> {
    let path = std::fs::canonicalize(text).map_err(|e| format!("{text}: {e}"))?;
    if path.is_dir() {
        Ok(path)
    } else {
        Err(format!("{text} is not a folder"))
    }
}

impl ServeArgs {
    /// The settings; `HOST`/`PORT` (the original's names) fill in a listen address not given.
    pub fn into_config(self) -> anyhow::Result<ServeConfig> {
        let host = std::env::var("HOST").ok().filter(|v| !v.trim().is_empty());
        let port = std::env::var("PORT").ok().filter(|v| !v.trim().is_empty());
        let listen = listen_address(self.listen, host.as_deref(), port.as_deref()).map_err(anyhow::Error::msg)?;
        // The original's variable restricts when "true", despite its name.
        let restricted = match &self.restricted_namespace {
            Some(v) => config::truthy(v),
            None => std::env::var("CLUSTER_WIDE").is_ok_and(|v| v.trim() == "true"),
        };
        Ok(ServeConfig {
            listen,
            metrics_listen: self.metrics_listen,
            data_dir: self.data_dir.unwrap_or_else(config::default_data_dir),
            manifests_path: self.manifests_path,
            namespace: self.namespace,
            restricted_namespace: restricted,
            modules: self.modules.filter(|m| !m.trim().is_empty()),
            python: self.python,
            backend: self.backend,
            kubeconfig: self.kubeconfig,
            max_message_bytes: self.max_message_bytes,
            security: self.security.into_config(),
            max_buffered_bytes: self.proxy_max_buffered_bytes,
            pip: crate::backend::local::PipSource { index_url: self.pip_index_url, find_links: self.pip_find_links },
            edge: config::EdgeConfig { cors_origins: self.cors_origins, ..config::EdgeConfig::default() },
            ensure_allow: self.ensure_allow,
            history_limit: self.history_limit,
            module_access_ttl: self.module_access_ttl,
        })
    }
}

/// Default of `--listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// `--listen` / `JAC_ORC_LISTEN` when given; else the original's `HOST` and `PORT` (either may be
/// missing: the default's host or port stands in), with a deprecation line; else the default.
fn listen_address(flag: Option<SocketAddr>, host: Option<&str>, port: Option<&str>) -> Result<SocketAddr, String> {
    if let Some(addr) = flag {
        if host.is_some() || port.is_some() {
            tracing::warn!("HOST/PORT are ignored: --listen (JAC_ORC_LISTEN) is set");
        }
        return Ok(addr);
    }
    let default: SocketAddr = DEFAULT_LISTEN.parse().expect("a valid default");
    if host.is_none() && port.is_none() {
        return Ok(default);
    }
    let port = match port {
        Some(p) => p.trim().parse::<u16>().map_err(|_| format!("PORT={p:?} is not a port number"))?,
        None => default.port(),
    };
    let ip = match host.map(str::trim) {
        None => default.ip(),
        // The original's uvicorn took host names too; this one is the only one common there.
        Some("localhost") => std::net::Ipv4Addr::LOCALHOST.into(),
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("HOST={h:?} is not an IP address (use --listen ADDR:PORT)"))?,
    };
    let addr = SocketAddr::new(ip, port);
    tracing::warn!(
        listen = %addr,
        "HOST and PORT are deprecated (the original's names): use --listen {addr} or JAC_ORC_LISTEN={addr}"
    );
    Ok(addr)
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Orchestrator address (`https://` for TLS).
    #[arg(long, env = "JAC_ORC_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// Bearer token. Default: for a loopback server, the token `jac-orc serve` generated in the
    /// data dir.
    #[arg(long, env = "JAC_ORC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data dir whose generated token to send to a loopback server (default: serve's default).
    #[arg(long, env = "JAC_ORC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// CA certificate(s) (PEM) to trust for an https:// server, instead of the system's roots.
    #[arg(long, env = "JAC_ORC_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// How a client command prints: a table for people, or the view exactly as REST returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and lines (`text` is accepted too); never JSON.
    #[value(alias = "text")]
    Table,
    Json,
    Yaml,
}

/// Placeholder values: `-f` files first (deep-merged in order), then `--set`, then `--set-string`.
#[derive(Debug, Clone, Default, Args)]
pub struct ValuesArgs {
    /// Values file, YAML or JSON (`-` reads stdin); repeatable, merged in order (maps deeply),
    /// before --set.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Placeholder value; VALUE is read as JSON when it parses (3, true, ["a"]), else as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Placeholder value that is always a string.
    #[arg(long = "set-string", value_name = "KEY=VALUE")]
    pub set_string: Vec<String>,
}

/// The template a command renders and the values it renders with.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Template module, e.g. redis.
    pub module: String,
    /// Template version folder.
    #[arg(long, default_value = LATEST)]
    pub version: String,
    #[command(flatten)]
    pub values: ValuesArgs,
}

/// `-n/--namespace` where it may be left to the server (its own namespace).
#[derive(Debug, Clone, Default, Args)]
pub struct TargetNamespace {
    /// Target namespace (default: the orchestrator's own; `default` offline).
    #[arg(short, long, env = "JAC_ORC_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Deployment name (default: the template's default name).
    pub name: Option<String>,
    #[command(flatten)]
    pub namespace: TargetNamespace,
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Deployment name (default: the template's default name).
    pub name: Option<String>,
    #[command(flatten)]
    pub namespace: TargetNamespace,
    /// Template directory overriding the built-in catalog (<module>/<version>/...).
    #[arg(long, env = "MANIFESTS_PATH")]
    pub manifests_path: Option<PathBuf>,
    /// `yaml`: the manifests as a YAML stream; `json`: a v1 List of them; `table`: what would be applied.
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Deployment name (`--set name=` is accepted when it agrees).
    pub name: String,
    #[command(flatten)]
    pub namespace: TargetNamespace,
    /// Wait until every workload is ready.
    #[arg(long)]
    pub wait: bool,
    /// Readiness timeout in seconds (with --wait).
    #[arg(long, default_value_t = crate::service::DEFAULT_WAIT.as_secs() as u32)]
    pub timeout: u32,
    /// Take over fields owned by other field managers.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Kubernetes: leave objects changed or deleted behind the orchestrator's back as they are
    /// (reported as drift instead of applied again).
    #[arg(long)]
    pub no_self_heal: bool,
    /// Show what the deploy would change and change nothing (on Kubernetes: a server-side dry
    /// run of every object); nothing is recorded.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Placeholders not given take their defaults, not the deployment's current values.
    #[arg(long)]
    pub reset_values: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One existing deployment.
#[derive(Debug, Args)]
pub struct IdArgs {
    pub module: String,
    pub name: String,
    #[arg(short, long, env = "JAC_ORC_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct UndeployArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// Undeploy even while other deployments reference this one's outputs (see `get`'s
    /// DEPENDENTS). Unrelated to `deploy --force-conflicts`.
    #[arg(long)]
    pub force_referenced: bool,
}

#[derive(Debug, Args)]
pub struct UndeployOnDemandArgs {
    /// Only those in this namespace (default: every namespace).
    #[arg(short, long, env = "JAC_ORC_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only those scaled to zero (status `idle`).
    #[arg(long)]
    pub idle: bool,
    /// Undeploy even those other deployments reference.
    #[arg(long)]
    pub force_referenced: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// Show the values of secret placeholders (needs `get` on `jacdeployments/secrets`).
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only deployments in this namespace (default: every namespace).
    #[arg(short, long, env = "JAC_ORC_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(short, long)]
    pub module: Option<String>,
    /// Only deployments made on first import (`import_module(..., deploy=True)`, EnsureModule).
    #[arg(long)]
    pub on_demand: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    /// Only this module.
    pub module: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_takes_module_then_a_required_name() {
        let cli = Cli::try_parse_from(["jac-orc", "deploy", "redis", "cache", "-f", "a.yaml", "--set", "x=1"]).unwrap();
        let Command::Deploy(d) = cli.command else { panic!("not deploy") };
        assert_eq!((d.source.module.as_str(), d.name.as_str()), ("redis", "cache"));
        assert_eq!(d.source.values.values, [PathBuf::from("a.yaml")]);
        let err = Cli::try_parse_from(["jac-orc", "deploy", "redis"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn text_output_is_still_accepted_as_table() {
        let cli = Cli::try_parse_from(["jac-orc", "list", "-o", "text"]).unwrap();
        let Command::List(l) = cli.command else { panic!("not list") };
        assert_eq!(l.output, Output::Table);
    }

    #[test]
    fn serve_flags_for_pip_and_cors_are_checked_when_parsed() {
        let serve = |args: &[&str]| {
            let argv = ["jac-orc", "serve"].iter().chain(args).copied();
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Serve(a) => a.into_config().expect("valid settings"),
                other => panic!("{other:?}"),
            })
        };
        let dir = std::env::temp_dir();
        let cfg = serve(&["--cors-origin", "https://App.example/", "--cors-origin", "http://localhost:3000"]).unwrap();
        assert_eq!(cfg.edge.cors_origins, ["https://app.example", "http://localhost:3000"]);
        for bad in [
            &["--cors-origin", "*"][..],
            &["--cors-origin", "app.example"],
            &["--pip-index-url", "ftp://x/simple"],
            &["--pip-index-url", "not a url"],
            &["--pip-find-links", "/no/such/folder"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
        let cfg =
            serve(&["--pip-index-url", "https://u:p@idx.example/simple", "--pip-find-links", dir.to_str().unwrap()])
                .unwrap();
        assert_eq!(cfg.pip.index_url.as_deref(), Some("https://u:p@idx.example/simple"));
        assert!(cfg.pip.find_links.unwrap().is_absolute());
        assert_eq!(serve(&[]).unwrap().max_buffered_bytes, crate::proxy::DEFAULT_MAX_BUFFERED_BYTES);
        assert_eq!(serve(&[]).unwrap().module_access_ttl, crate::proxy::DEFAULT_ACCESS_TTL);
        assert_eq!(serve(&["--module-access-ttl", "2.5"]).unwrap().module_access_ttl, Duration::from_millis(2500));
        assert!(serve(&["--module-access-ttl", "0"]).is_err());
    }

    #[test]
    fn host_and_port_stand_in_for_a_listen_address_not_given() {
        let given: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(listen_address(Some(given), Some("0.0.0.0"), Some("1")).unwrap(), given);
        assert_eq!(listen_address(None, None, None).unwrap().to_string(), DEFAULT_LISTEN);
        assert_eq!(listen_address(None, Some("0.0.0.0"), Some("8080")).unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(listen_address(None, None, Some("8081")).unwrap().to_string(), "127.0.0.1:8081");
        assert_eq!(listen_address(None, Some("::1"), None).unwrap().to_string(), "[::1]:8000");
        assert_eq!(listen_address(None, Some("localhost"), Some("1")).unwrap().to_string(), "127.0.0.1:1");
        assert!(listen_address(None, None, Some("http")).unwrap_err().contains("PORT=\"http\""));
        assert!(listen_address(None, Some("example.org"), None).unwrap_err().contains("HOST=\"example.org\""));
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked() {
        let cli = Cli::try_parse_from(["jac-orc", "list"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["jac-orc", "serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["jac-orc", "serve", "--log-format", "xml"]).is_err());
    }
}
