//! The harness of the local backend's tests: [`Lab`] (a temporary data dir, the `jac-orc serve`
//! processes started on it, and a drop guard that SIGKILLs by PID whatever they left), [`workloads`]
//! (a data dir's processes, from /proc), and small clients (PING, gRPC health, deploy).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jac_splice_orc::pb::{self, deploy_event::Event};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_stream::StreamExt;

use crate::support::{redis_ping, struct_of};

/// Bound on every wait in this file (generous: the machine is shared).
pub(crate) const BOUND: Duration = Duration::from_secs(180);
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// A temporary data dir, the serves started on it, and cleanup of everything they left.
pub(crate) struct Lab {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) started: usize,
    pub(crate) serve_pids: Arc<Mutex<Vec<u32>>>,
}

pub(crate) struct Serve {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) url: String,
    /// The admin token serve generated in the data dir (what the CLI on this host sends).
    pub(crate) token: String,
}

impl Lab {
    pub(crate) fn new() -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Not created here: serve creates it (0700).
        let data = tmp.path().join("data");
        Lab { tmp, data, args: Vec::new(), started: 0, serve_pids: Arc::default() }
    }

    pub(crate) fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub(crate) fn spawn(&mut self) -> (tokio::process::Child, PathBuf) {
        self.started += 1;
        let log = self.tmp.path().join(format!("serve-{}.log", self.started));
        let out = std::fs::File::create(&log).expect("serve log");
        let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"));
        cmd.args(["serve", "--backend", "local", "--listen", "127.0.0.1:0", "--python", &python, "--data-dir"])
            .arg(&self.data)
            .args(&self.args)
            .env("JAC_ORC_LOG", "info")
            .env_remove("MODULES")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn jac-orc serve");
        self.serve_pids.lock().unwrap().push(child.id().expect("pid"));
        (child, log)
    }

    /// Starts a serve and waits until it announces its address.
    pub(crate) async fn serve(&mut self) -> Serve {
        let (mut child, log) = self.spawn();
        let pid = child.id().expect("pid");
        for _ in 0..rounds() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
                let token = std::fs::read_to_string(self.data.join("token")).expect("serve generated its admin token");
                return Serve { child, pid, url: format!("http://{addr}"), token: token.trim().to_string() };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("jac-orc serve exited with {status}:\n{text}");
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("jac-orc serve did not announce its address:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Starts a serve that must fail; returns its log.
    pub(crate) async fn serve_fails(&mut self) -> String {
        let (mut child, log) = self.spawn();
        let status = tokio::time::timeout(BOUND, child.wait()).await.expect("a second serve must exit").unwrap();
        assert!(!status.success(), "a second serve on the same data dir must fail");
        std::fs::read_to_string(&log).unwrap_or_default()
    }

    pub(crate) fn deployment_dir(&self, module: &str, name: &str) -> PathBuf {
        self.data.join("deployments").join("default").join(module).join(name)
    }

    pub(crate) fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.data.join("local-state.json")).expect("state file")).expect("json")
    }

    /// The pid the state file records for a deployment.
    pub(crate) fn recorded_pid(&self, module: &str, name: &str) -> Option<u32> {
        let key = format!("default/{module}/{name}");
        self.state()["deployments"][&key]["workload"]["process"]["pid"].as_u64().map(|p| p as u32)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        for pid in self.serve_pids.lock().unwrap().iter() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&data) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
        reap(&self.data);
    }
}

/// SIGKILLs, by PID, every workload process left in `data` (drop guards).
pub(crate) fn reap(data: &Path) {
    for p in workloads(data) {
        eprintln!("cleanup: killing leftover workload pid {} ({:?})", p.pid, p.deployment);
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
}

/// Reaps a data dir's workloads when dropped (tests that run the backend in-process).
pub(crate) struct Reaper(pub(crate) PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        reap(&self.0);
    }
}

/// Lines of every serve log of a lab that contain `what`.
pub(crate) fn log_count(lab: &Lab, what: &str) -> usize {
    (1..=lab.started)
        .map(|n| std::fs::read_to_string(lab.tmp.path().join(format!("serve-{n}.log"))).unwrap_or_default())
        .map(|t| t.lines().filter(|l| l.contains(what)).count())
        .sum()
}

pub(crate) fn rounds() -> u128 {
    BOUND.as_millis() / POLL.as_millis()
}

impl Serve {
    /// A gRPC client sending the generated admin token.
    pub(crate) async fn grpc(&self) -> crate::support::Grpc {
        crate::support::grpc_client(&self.url, Some(&self.token)).await
    }

    /// An HTTP client sending the generated admin token.
    pub(crate) fn http(&self) -> reqwest::Client {
        crate::support::http_client(Some(&self.token))
    }

    /// Every record, by name, as the REST gateway shows it.
    pub(crate) async fn records(&self) -> BTreeMap<String, Value> {
        let all: Value =
            self.http().get(format!("{}/deployment", self.url)).send().await.unwrap().json().await.unwrap();
        let mut out = BTreeMap::new();
        for modules in all.as_object().into_iter().flat_map(|m| m.values()) {
            for names in modules.as_object().into_iter().flat_map(|m| m.values()) {
                for (name, d) in names.as_object().into_iter().flat_map(|m| m.iter()) {
                    out.insert(name.clone(), d.clone());
                }
            }
        }
        out
    }

    pub(crate) async fn kill9(mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        tokio::time::timeout(BOUND, self.child.wait()).await.expect("killed serve exits").unwrap();
    }

    pub(crate) async fn term(mut self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(BOUND, self.child.wait()).await.expect("serve stops on SIGTERM").unwrap();
        assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
    }
}

/// A live process that belongs to a data dir's workloads.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) pgrp: i32,
    /// `namespace/module/name` when the marks say which.
    pub(crate) deployment: Option<String>,
}

/// Live processes of this user (not zombies, not jac-orc itself) whose working directory,
/// command line or environment carries `data`.
pub(crate) fn workloads(data: &Path) -> Vec<Proc> {
    let data = data.display().to_string();
    let me = std::process::id();
    let orc = std::fs::canonicalize(env!("CARGO_BIN_EXE_jac-orc")).ok();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..].split_whitespace().collect();
        if pid == me || fields.first() == Some(&"Z") || std::fs::read_link(format!("/proc/{pid}/exe")).ok() == orc {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.display().to_string()).unwrap_or_default();
        let read = |f: &str| {
            let raw = std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
            raw.split(|b| *b == 0).map(|w| String::from_utf8_lossy(w).into_owned()).collect::<Vec<_>>()
        };
        let marks: Vec<String> =
            std::iter::once(cwd).chain(read("cmdline")).chain(read("environ")).filter(|m| m.contains(&data)).collect();
        if marks.is_empty() {
            continue;
        }
        let deployment = marks.iter().find_map(|m| {
            let rest = m.split("/deployments/").nth(1)?;
            let parts: Vec<&str> = rest.split('/').take(3).collect();
            (parts.len() == 3).then(|| parts.join("/"))
        });
        let pgrp = fields.get(2).and_then(|p| p.parse().ok()).unwrap_or(-1);
        out.push(Proc { pid, pgrp, deployment });
    }
    out
}

/// Polls `check` until it returns `Some`, bounded.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..rounds() {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting for: {what}");
}

pub(crate) async fn module_serving(endpoint: &str) -> bool {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")) else { return false };
    let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(5), ep.connect()).await else { return false };
    let req = HealthCheckRequest { service: "ModuleService".into() };
    match tokio::time::timeout(Duration::from_secs(5), HealthClient::new(channel).check(req)).await {
        Ok(Ok(r)) => r.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

pub(crate) async fn answers(module: &str, endpoint: &str) -> bool {
    match module {
        "redis" => redis_ping(endpoint).await.is_ok_and(|r| r == "+PONG"),
        _ => module_serving(endpoint).await,
    }
}

/// Deploys over gRPC with `wait`; the deployment's endpoint, or the error status.
pub(crate) async fn grpc_deploy(serve: &Serve, module: &str, config: Value) -> Result<String, tonic::Status> {
    let mut c = serve.grpc().await;
    let req = pb::DeployRequest {
        module: module.into(),
        config: Some(struct_of(config)),
        wait: true,
        wait_timeout_seconds: 120,
        ..Default::default()
    };
    let mut stream = tokio::time::timeout(BOUND, c.deploy(req)).await.expect("deploy answers")?.into_inner();
    let mut endpoint = None;
    while let Some(item) = tokio::time::timeout(BOUND, stream.next()).await.expect("events in time") {
        if let Some(Event::Summary(s)) = item?.event {
            endpoint = s.deployment.and_then(|d| d.endpoints.first().cloned());
        }
    }
    Ok(endpoint.expect("a summary with an endpoint"))
}

pub(crate) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// A wheel of a tiny pure-Python package, for `jac-orc serve --pip-find-links` (never PyPI).
pub(crate) fn build_wheel(dir: &Path) {
    let script = r#"
import sys, zipfile
d, name, ver = sys.argv[1], "jacorc_crash_pkg", "1.0"
info = f"{name}-{ver}.dist-info"
with zipfile.ZipFile(f"{d}/{name}-{ver}-py3-none-any.whl", "w") as z:
    z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
    z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: jacorc-crash-pkg\nVersion: {ver}\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: jac-orc-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
"#;
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(python).args(["-c", script]).arg(dir).status().unwrap().success();
    assert!(ok, "could not build the test wheel");
}
