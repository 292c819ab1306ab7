//! Command-line arguments (clap): the raw flags, and their validation into settings
//! (`ServeArgs` → [`ServeConfig`]).

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
    /// Render a template version and show every placeholder and manifest, touching nothing.
    DryRun(RenderArgs),
    /// Deploy a template version, showing progress per object.
    Deploy(DeployArgs),
    /// Remove a deployment and everything it created.
    Undeploy(IdArgs),
    /// Show one deployment.
    Get(IdArgs),
    /// List deployments.
    List(ListArgs),
    /// List template modules and versions.
    Templates(TemplatesArgs),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

/// The template and values a dry run or deploy names.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Template module, e.g. redis.
    pub module: String,
    #[arg(long, default_value = LATEST)]
    pub version: String,
    /// Placeholder value; VALUE is read as JSON when it parses (3, true, ["a"]), else as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Placeholder value that is always a string.
    #[arg(long = "set-string", value_name = "KEY=VALUE")]
    pub set_string: Vec<String>,
}

impl TemplateArgs {
    /// The placeholder values `--set` and `--set-string` give.
    pub fn config(&self) -> Result<serde_json::Map<String, serde_json::Value>, NotKeyValue> {
        parse_sets(&self.set, &self.set_string)
    }
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub template: TemplateArgs,
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub template: TemplateArgs,
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
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    pub module: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(short, long)]
    pub module: Option<String>,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A `--set` or `--set-string` argument without a key.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not KEY=VALUE")]
pub struct NotKeyValue(String);

/// Builds the config map from `--set` (JSON when it parses) and `--set-string`.
pub fn parse_sets(
    set: &[String],
    set_string: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, NotKeyValue> {
    let mut out = serde_json::Map::new();
    let split = |s: &str| -> Result<(String, String), NotKeyValue> {
        s.split_once('=')
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| NotKeyValue(s.to_string()))
    };
    for s in set {
        let (k, v) = split(s)?;
        let value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
        out.insert(k, value);
    }
    for s in set_string {
        let (k, v) = split(s)?;
        out.insert(k, serde_json::Value::String(v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_infer_json_and_set_string_forces_strings() {
        let m = parse_sets(&["replicas=3".into(), "name=db".into(), "l=[\"a\"]".into()], &["password=12345678".into()])
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(m),
            json!({"replicas": 3, "name": "db", "l": ["a"], "password": "12345678"})
        );
        assert!(parse_sets(&["novalue".into()], &[]).is_err());
    }
}
