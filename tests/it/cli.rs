//! The `jac-orc` binary's client commands against a running server, through [`JacOrc`] (the
//! real binary via `CARGO_BIN_EXE_jac-orc`, as ripgrep's `TestCommand`). Offline commands
//! (`template`, `completion`, values files) are in `cli_offline.rs`, `deploy --dry-run` and
//! `status` in `cli_dry_run.rs`, and what needs the test API server in `cli_kube.rs`; all of
//! them under `cli::`, so `cargo test --test it -- cli::` runs every CLI test.

#[path = "cli_dry_run.rs"]
mod dry_run;
#[path = "cli_kube.rs"]
mod kube;
#[path = "cli_offline.rs"]
mod offline;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::{redis_available, within, TestServer};

/// Where no orchestrator listens: commands that must not need one get this as their server.
pub(crate) const NO_SERVER: &str = "http://127.0.0.1:1";

/// One run of the real binary.
pub(crate) struct JacOrc {
    cmd: Command,
    stdin: Option<String>,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub(crate) struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub(crate) fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The run succeeded; its stdout.
    #[track_caller]
    pub(crate) fn out(&self) -> &str {
        assert!(self.ok(), "exit {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr);
        &self.stdout
    }

    /// The run failed with exit status 1; its stderr.
    #[track_caller]
    pub(crate) fn err(&self) -> &str {
        assert_eq!(self.code, Some(1), "expected a failure\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stderr
    }

    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.out()).unwrap_or_else(|e| panic!("no JSON ({e}): {}", self.stdout))
    }
}

impl JacOrc {
    /// `jac-orc ARGS…` against `server` (an address; [`NO_SERVER`] for none), with none of the
    /// caller's `JAC_ORC_*` settings.
    pub(crate) fn new(server: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jac-orc"));
        cmd.args(args)
            .env("JAC_ORC_SERVER", server)
            .env_remove("JAC_ORC_NAMESPACE")
            .env_remove("JAC_ORC_TOKEN")
            .env_remove("MANIFESTS_PATH")
            .env("JAC_ORC_LOG", "warn");
        JacOrc { cmd, stdin: None }
    }

    pub(crate) fn offline(args: &[&str]) -> Self {
        Self::new(NO_SERVER, args)
    }

    /// Against a test server, as its admin.
    pub(crate) fn on(server: &TestServer, args: &[&str]) -> Self {
        Self::new(&server.url(), args).token(crate::support::ADMIN)
    }

    /// Sends `token` (`JAC_ORC_TOKEN`).
    #[must_use]
    pub(crate) fn token(mut self, token: &str) -> Self {
        self.cmd.env("JAC_ORC_TOKEN", token);
        self
    }

    #[must_use]
    pub(crate) fn stdin(mut self, text: impl Into<String>) -> Self {
        self.stdin = Some(text.into());
        self
    }

    /// Runs to the end (blocking: call it from `block_in_place` in async tests, or use [`ran`]).
    pub(crate) fn run(mut self) -> Ran {
        self.cmd.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("jac-orc starts");
        if let Some(text) = self.stdin.take() {
            child.stdin.take().unwrap().write_all(text.as_bytes()).expect("stdin written");
        }
        let out = child.wait_with_output().expect("jac-orc ends");
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts it with stdout piped, for a command that runs until stopped (`logs -f`).
    pub(crate) fn spawn(mut self) -> std::process::Child {
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("jac-orc starts")
    }

    /// Runs with stdout a pipe whose read end is already closed (`… | head -0`): every write
    /// fails with EPIPE. Returns the exit code and stderr.
    pub(crate) fn run_into_closed_pipe(mut self) -> Ran {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = self.cmd.stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output().expect("jac-orc runs");
        Ran {
            code: out.status.code(),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a command from an async test (multi-thread runtime) without blocking the server.
pub(crate) fn ran(cmd: JacOrc) -> Ran {
    tokio::task::block_in_place(|| cmd.run())
}

/// Asserts a run ended quietly with exit status 0 although its stdout was closed.
#[track_caller]
pub(crate) fn assert_quiet_on_closed_pipe(cmd: JacOrc, what: &str) {
    let r = tokio::task::block_in_place(|| cmd.run_into_closed_pipe());
    assert_eq!(r.code, Some(0), "{what}: exit {:?}, stderr: {}", r.code, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{what} panicked: {}", r.stderr);
    assert!(!r.stderr.contains("error"), "{what} was not quiet: {}", r.stderr);
}

/// Asserts table output is no JSON at all: it does not parse, and no line opens an object or a list.
#[track_caller]
pub(crate) fn assert_not_json(out: &str, what: &str) {
    assert!(!out.trim().is_empty(), "{what} printed nothing");
    assert!(serde_json::from_str::<Value>(out).is_err(), "{what} printed JSON: {out}");
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with('{') || l.trim_start().starts_with('[')),
        "{what} printed JSON lines: {out}"
    );
}

pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("file written");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_dry_run_deploy_list_undeploy() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let v = ran(JacOrc::on(s, &["dry-run", "redis", "cli-cache", "--set", "cpu=0.5", "-o", "json"])).json();
    assert_eq!(v["placeholders"]["name"]["current"], "cli-cache");
    assert_eq!(v["placeholders"]["cpu"]["current"], 0.5);
    assert!(v["modules"]["redis.yaml"].as_str().unwrap().contains("cli-cache"));

    let r = ran(JacOrc::on(s, &["deploy", "redis", "cli-cache", "--set", "memory=8mb"]));
    assert!(r.out().contains("service/cli-cache created"), "{}", r.stdout);
    assert!(r.stdout.contains("deployed redis/cli-cache in default: deployed"), "{}", r.stdout);

    let out = ran(JacOrc::on(s, &["list"])).out().to_string();
    assert!(out.lines().any(|l| l.contains("cli-cache") && l.contains("127.0.0.1:")), "{out}");

    let r = ran(JacOrc::on(s, &["dry-run", "redis", "--set", "nope=1"]));
    assert!(r.err().contains("unknown placeholder `nope`"), "{}", r.stderr);
    assert!(r.stderr.contains("config.nope was set by --set"), "{}", r.stderr);

    let r = ran(JacOrc::on(s, &["undeploy", "redis", "cli-cache"]));
    assert!(r.out().contains("process.local.jac-orc/cli-cache stopped"), "{}", r.stdout);
    server.stop().await;
}

/// What REST answers to `GET path`.
async fn rest_get(server: &TestServer, path: &str) -> Value {
    within(server.http().get(format!("{}{path}", server.url())).send()).await.unwrap().json().await.unwrap()
}

fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    ran(JacOrc::on(server, args)).json()
}

/// A deploy outcome without what differs between two runs of the same deploy.
fn timeless(mut outcome: Value) -> Value {
    let o = outcome.as_object_mut().unwrap();
    o.remove("elapsed_ms").expect("elapsed_ms");
    o["deployment"].as_object_mut().unwrap().remove("updated_at").expect("updated_at");
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_json_output_is_what_rest_returns_for_the_same_view() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let body = json!({"module": "redis", "config": {"name": "same-view", "memory": "8mb"}});
    let deploy = || async {
        let r = within(s.http().post(format!("{}/deployment", s.url())).json(&body).send()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    deploy().await;

    let get = cli_json(s, &["get", "redis", "same-view", "-o", "json"]);
    assert_eq!(get, rest_get(s, "/deployment/default/redis/same-view").await);
    assert_eq!(get["status"], "deployed");
    assert_eq!(cli_json(s, &["status", "redis", "same-view", "-o", "json"]), get);
    assert_eq!(cli_json(s, &["list", "-o", "json"]), rest_get(s, "/deployment").await);
    let templates = cli_json(s, &["templates", "-o", "json"]);
    assert_eq!(templates, rest_get(s, "/templates").await);
    let redis = templates.as_array().unwrap().iter().find(|t| t["module"] == "redis").unwrap();
    let specs = &redis["versions"][0]["placeholder_specs"];
    assert_eq!(specs[0]["name"], "name", "{specs}");
    assert!(specs[0]["description"].as_str().is_some_and(|d| !d.is_empty()), "{specs}");

    let dry = cli_json(s, &["dry-run", "redis", "same-view", "--set", "memory=8mb", "-o", "json"]);
    let rest_dry: Value = within(s.http().post(format!("{}/deployment/dry_run", s.url())).json(&body).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry, rest_dry);

    // Two unchanged redeploys, one through each edge, report the same outcome.
    let by_cli = cli_json(s, &["deploy", "redis", "same-view", "--set", "memory=8mb", "-o", "json"]);
    let by_rest = deploy().await;
    assert_eq!(by_cli["unchanged"], 4, "{by_cli}");
    assert_eq!(timeless(by_cli), timeless(by_rest));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_flag_addresses_deployments_in_every_command() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let r = ran(JacOrc::on(s, &["deploy", "redis", "cache", "-n", "team-b", "--set", "memory=8mb"]));
    assert!(r.out().contains("deployed redis/cache in team-b"), "{}", r.stdout);
    assert_eq!(cli_json(s, &["get", "redis", "cache", "-n", "team-b", "-o", "json"])["namespace"], "team-b");
    assert_eq!(
        ran(JacOrc::on(s, &["status", "redis", "cache", "--namespace", "team-b", "-o", "json"])).json()["namespace"],
        "team-b"
    );
    let listed = cli_json(s, &["list", "-n", "team-b", "-o", "json"]);
    assert!(listed["team-b"]["redis"]["cache"].is_object(), "{listed}");
    assert_eq!(cli_json(s, &["list", "-n", "team-c", "-o", "json"]), json!({}));
    // The same name in the default namespace is another deployment: there is none.
    let r = ran(JacOrc::on(s, &["get", "redis", "cache"]));
    assert!(r.err().contains("deployment default/redis/cache not found"), "{}", r.stderr);
    // JAC_ORC_NAMESPACE is the default of -n.
    let mut cmd = JacOrc::on(s, &["status", "redis", "cache", "-o", "json"]);
    cmd.cmd.env("JAC_ORC_NAMESPACE", "team-b");
    assert_eq!(ran(cmd).json()["name"], "cache");
    let dry = cli_json(s, &["dry-run", "redis", "cache", "-n", "team-b", "-o", "json"]);
    assert_eq!(dry["namespace"], "team-b");
    let r = ran(JacOrc::on(s, &["undeploy", "redis", "cache", "-n", "team-b"]));
    assert!(r.out().contains("undeployed redis/cache in team-b"), "{}", r.stdout);
    assert_eq!(cli_json(s, &["list", "-o", "json"]), json!({}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_value_from_a_file_is_named_by_file_and_key_in_the_servers_error() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "values.yaml", "memory: 8mb\ncpu: {much: 1}\n");
    let r = ran(JacOrc::on(&server, &["deploy", "redis", "cache", "-f", &file]));
    let err = r.err();
    assert!(err.contains("placeholder `cpu` expects quantity, got map"), "{err}");
    assert!(err.contains(&format!("config.cpu was set by values file {file}")), "{err}");
    assert_eq!(ran(JacOrc::on(&server, &["list", "-o", "json"])).json(), json!({}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn table_output_never_prints_json_and_a_closed_pipe_is_a_quiet_exit() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let deploy = ran(JacOrc::on(s, &["deploy", "redis", "tab", "--set", "memory=8mb", "-o", "table"]));
    assert_not_json(deploy.out(), "deploy");
    for args in [
        &["list", "-o", "table"][..],
        &["list", "-o", "text"],
        &["get", "redis", "tab", "-o", "table"],
        &["get", "redis", "tab"],
        &["status", "redis", "tab"],
        &["templates"],
        &["templates", "redis", "-o", "table"],
        &["dry-run", "redis", "tab", "-o", "table"],
        &["deploy", "redis", "tab", "--set", "memory=8mb", "--dry-run"],
    ] {
        let out = ran(JacOrc::on(s, args)).out().to_string();
        assert_not_json(&out, &args.join(" "));
    }
    let templates = ran(JacOrc::on(s, &["templates", "redis"])).out().to_string();
    assert!(templates.contains("Redis maxmemory (evicts least-recently-used keys"), "{templates}");
    let dry = ran(JacOrc::on(s, &["dry-run", "redis", "tab", "-o", "table"])).out().to_string();
    assert!(dry.lines().any(|l| l.starts_with("memory") && l.contains("Redis maxmemory")), "{dry}");

    for args in [
        &["deploy", "redis", "tab", "--set", "memory=8mb"][..],
        &["deploy", "redis", "tab", "--set", "memory=8mb", "-o", "json"],
        &["deploy", "redis", "tab", "--dry-run"],
        &["list"],
        &["status", "redis", "tab"],
        &["templates"],
    ] {
        assert_quiet_on_closed_pipe(JacOrc::on(s, args), &args.join(" "));
    }
    // The deploys that lost their reader still ran and were recorded.
    assert_eq!(cli_json(s, &["get", "redis", "tab", "-o", "json"])["status"], "deployed");
    server.stop().await;
}
