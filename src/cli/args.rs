//! Command-line arguments (clap): the raw flags, one `…Args` per command, and where they are
//! validated into settings (`ServeArgs` → [`ServeConfig`]; [`ValuesArgs`] and the positional
//! NAME and `-n` → [`super::values::Values`]). Help and the completion scripts
//! (`jac-orc completion SHELL`) are generated from these definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, BackendChoice, ServeConfig};
use crate::identity::LATEST;

#[derive(Debug, Parser)]
#[command(
    name = "jac-orc",
    version,
    about = "Deploy services from templates and Python modules as microservices (gRPC-first)."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `jac_splice_orc=debug`.
    #[arg(long, global = true, env = "JAC_ORC_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator: gRPC, grpc-web and REST on one address.
    Serve(ServeArgs),
    /// Render a template version on the server and show every placeholder and manifest, touching nothing.
    DryRun(RenderArgs),
    /// Render a template version offline, with no server, as a YAML stream for `kubectl apply -f -`.
    Template(TemplateArgs),
    /// Deploy a template version as NAME, showing progress per object.
    Deploy(DeployArgs),
    /// Remove a deployment and everything it created.
    Undeploy(IdArgs),
    /// Show one deployment: its status, values, endpoints and objects.
    Get(IdArgs),
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
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC, grpc-web and REST together.
    #[arg(long, env = "JAC_ORC_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
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
}

impl ServeArgs {
    pub fn into_config(self) -> ServeConfig {
        // The original's variable restricts when "true", despite its name.
        let restricted = match &self.restricted_namespace {
            Some(v) => config::truthy(v),
            None => std::env::var("CLUSTER_WIDE").is_ok_and(|v| v.trim() == "true"),
        };
        ServeConfig {
            listen: self.listen,
            data_dir: self.data_dir.unwrap_or_else(config::default_data_dir),
            manifests_path: self.manifests_path,
            namespace: self.namespace,
            restricted_namespace: restricted,
            modules: self.modules.filter(|m| !m.trim().is_empty()),
            python: self.python,
            backend: self.backend,
            kubeconfig: self.kubeconfig,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Orchestrator address.
    #[arg(long, env = "JAC_ORC_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
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
    /// Show what the deploy would change and change nothing (on Kubernetes: a server-side dry
    /// run of every object); nothing is recorded.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
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
pub struct ListArgs {
    /// Only deployments in this namespace (default: every namespace).
    #[arg(short, long, env = "JAC_ORC_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(short, long)]
    pub module: Option<String>,
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
}
