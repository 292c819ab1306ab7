//! The local backend's processes, through the real binary (`jac-orc serve --backend local`) on
//! temporary data dirs: workloads outlive a kill -9 of the orchestrator and are adopted (same
//! pid, same port) by the next serve; a crash loop leaves every deployment answering on its
//! recorded endpoint with exactly one process; one serve per data dir; a private state file with
//! each secret once; failed first deploys leave nothing; a caller that leaves stops the wait.
//!
//! Processes are found through /proc: a workload is a process whose working directory,
//! command line or environment carries the data dir. Every process a test starts is stopped by
//! PID, by the test or by [`Lab`]'s drop guard. Waits are bounded; durations are never asserted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jac_splice_orc::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::support::{redis_available, redis_ping, struct_of};

/// Bound on every wait in this file (generous: the machine is shared).
const BOUND: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(100);

// === Harness ===

/// A temporary data dir, the serves started on it, and cleanup of everything they left.
struct Lab {
    tmp: tempfile::TempDir,
    data: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    started: usize,
    serve_pids: Arc<Mutex<Vec<u32>>>,
}

struct Serve {
    child: tokio::process::Child,
    pid: u32,
    url: String,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Not created here: serve creates it (0700).
        let data = tmp.path().join("data");
        Lab { tmp, data, env: Vec::new(), args: Vec::new(), started: 0, serve_pids: Arc::default() }
    }

    fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    fn spawn(&mut self) -> (tokio::process::Child, PathBuf) {
        self.started += 1;
        let log = self.tmp.path().join(format!("serve-{}.log", self.started));
        let out = std::fs::File::create(&log).expect("serve log");
        let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"));
        cmd.args(["serve", "--backend", "local", "--listen", "127.0.0.1:0", "--python", &python, "--data-dir"])
            .arg(&self.data)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
    async fn serve(&mut self) -> Serve {
        let (mut child, log) = self.spawn();
        let pid = child.id().expect("pid");
        for _ in 0..rounds() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
                return Serve { child, pid, url: format!("http://{addr}") };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("jac-orc serve exited with {status}:\n{text}");
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("jac-orc serve did not announce its address:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Starts a serve that must fail; returns its log.
    async fn serve_fails(&mut self) -> String {
        let (mut child, log) = self.spawn();
        let status = tokio::time::timeout(BOUND, child.wait()).await.expect("a second serve must exit").unwrap();
        assert!(!status.success(), "a second serve on the same data dir must fail");
        std::fs::read_to_string(&log).unwrap_or_default()
    }

    fn deployment_dir(&self, module: &str, name: &str) -> PathBuf {
        self.data.join("deployments").join("default").join(module).join(name)
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.data.join("local-state.json")).expect("state file")).expect("json")
    }

    /// The pid the state file records for a deployment.
    fn recorded_pid(&self, module: &str, name: &str) -> Option<u32> {
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
fn reap(data: &Path) {
    for p in workloads(data) {
        eprintln!("cleanup: killing leftover workload pid {} ({:?})", p.pid, p.deployment);
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
}

/// Reaps a data dir's workloads when dropped (tests that run the backend in-process).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        reap(&self.0);
    }
}

/// Lines of every serve log of a lab that contain `what`.
fn log_count(lab: &Lab, what: &str) -> usize {
    (1..=lab.started)
        .map(|n| std::fs::read_to_string(lab.tmp.path().join(format!("serve-{n}.log"))).unwrap_or_default())
        .map(|t| t.lines().filter(|l| l.contains(what)).count())
        .sum()
}

fn rounds() -> u128 {
    BOUND.as_millis() / POLL.as_millis()
}

impl Serve {
    async fn grpc(&self) -> OrchestratorClient<tonic::transport::Channel> {
        let c = tokio::time::timeout(BOUND, OrchestratorClient::connect(self.url.clone())).await;
        c.expect("connect in time").expect("connect")
    }

    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder().timeout(BOUND).build().expect("http client")
    }

    /// Every record, by name, as the REST gateway shows it.
    async fn records(&self) -> BTreeMap<String, Value> {
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

    async fn kill9(mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        tokio::time::timeout(BOUND, self.child.wait()).await.expect("killed serve exits").unwrap();
    }

    async fn term(mut self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(BOUND, self.child.wait()).await.expect("serve stops on SIGTERM").unwrap();
        assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
    }
}

/// A live process that belongs to a data dir's workloads.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    pgrp: i32,
    /// `namespace/module/name` when the marks say which.
    deployment: Option<String>,
}

/// Live processes of this user (not zombies, not jac-orc itself) whose working directory,
/// command line or environment carries `data`.
fn workloads(data: &Path) -> Vec<Proc> {
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
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
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

async fn module_serving(endpoint: &str) -> bool {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")) else { return false };
    let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(5), ep.connect()).await else { return false };
    let req = HealthCheckRequest { service: "ModuleService".into() };
    match tokio::time::timeout(Duration::from_secs(5), HealthClient::new(channel).check(req)).await {
        Ok(Ok(r)) => r.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

async fn answers(module: &str, endpoint: &str) -> bool {
    match module {
        "redis" => redis_ping(endpoint).await.is_ok_and(|r| r == "+PONG"),
        _ => module_serving(endpoint).await,
    }
}

/// Deploys over gRPC with `wait`; the deployment's endpoint, or the error status.
async fn grpc_deploy(serve: &Serve, module: &str, config: Value) -> Result<String, tonic::Status> {
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

/// Sends `AUTH password` to a Redis server; the first reply line.
async fn redis_auth(addr: &str, password: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("AUTH {password}\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// A wheel of a tiny pure-Python package, for pip with `--no-index --find-links` (never PyPI).
fn build_wheel(dir: &Path) {
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

// === Tests ===

#[tokio::test]
async fn kill_9_leaves_redis_running_and_the_next_serve_adopts_it_with_the_same_pid_and_port() {
    assert!(redis_available(), "redis-server must be installed");
    let mut lab = Lab::new();
    let serve = lab.serve().await;
    let endpoint = grpc_deploy(&serve, "redis", json!({"name": "keep", "memory": "16mb"})).await.unwrap();
    let procs = workloads(&lab.data);
    assert_eq!(procs.len(), 1, "{procs:?}");
    let pid = procs[0].pid;
    assert_eq!(procs[0].deployment.as_deref(), Some("default/redis/keep"));
    assert_eq!(procs[0].pgrp, pid as i32, "a workload leads its own process group");
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(stdout, lab.deployment_dir("redis", "keep").join("process.log"), "output goes to its log file");
    assert_eq!(lab.recorded_pid("redis", "keep"), Some(pid));

    serve.kill9().await;
    assert_eq!(redis_ping(&endpoint).await.unwrap(), "+PONG", "kill -9 of the orchestrator must not take redis down");

    let serve = lab.serve().await;
    let records = serve.records().await;
    assert_eq!(records["keep"]["endpoints"], json!([endpoint]), "{records:?}");
    assert_eq!(records["keep"]["status"], "deployed");
    // Adopted: the same process, not a restart.
    let again = eventually("the adopted redis is the only workload", || async {
        let p = workloads(&lab.data);
        (p.len() == 1).then_some(p)
    })
    .await;
    assert_eq!(again[0].pid, pid, "the next serve adopts the running redis");
    assert_eq!(redis_ping(&endpoint).await.unwrap(), "+PONG");

    // An adopted workload is not our child; it is still supervised: kill it, it comes back on
    // the same port and the record names the new process.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let new_pid = eventually("a restarted redis, recorded", || async {
        let p = workloads(&lab.data);
        let fresh = p.iter().find(|p| p.pid != pid)?.pid;
        let ok = p.len() == 1 && lab.recorded_pid("redis", "keep") == Some(fresh) && answers("redis", &endpoint).await;
        ok.then_some(fresh)
    })
    .await;
    assert_ne!(new_pid, pid);
    assert_eq!(serve.records().await["keep"]["endpoints"], json!([endpoint]));

    serve.term().await;
    eventually("SIGTERM stops every workload", || async { workloads(&lab.data).is_empty().then_some(()) }).await;
    assert!(redis_ping(&endpoint).await.is_err());
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_fails_naming_the_holder_pid() {
    let mut lab = Lab::new();
    let serve = lab.serve().await;
    let log = lab.serve_fails().await;
    assert!(log.contains(&format!("in use by another jac-orc (pid {})", serve.pid)), "{log}");
    serve.term().await;
    // Released on exit: the next serve starts.
    lab.serve().await.term().await;
}

#[tokio::test]
async fn the_state_file_is_0600_in_0700_dirs_and_holds_each_secret_once() {
    assert!(redis_available());
    let templates = tempfile::tempdir().unwrap();
    let v = templates.path().join("vault").join("latest");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(
        v.join("placeholders.yaml"),
        "description: Redis behind a generated password.\nplaceholders:\n  name:\n    type: string\n    default: vault\n  namespace:\n    type: string\n    default: \"\"\n  password:\n    type: string\n    secret: true\n    description: generated\n",
    )
    .unwrap();
    std::fs::write(
        v.join("vault.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\nstringData:\n  password: {{password}}\n",
    )
    .unwrap();
    std::fs::write(
        v.join("local.yaml"),
        "program: redis-server\nargs: [\"--port\", \"{{local.port}}\", \"--bind\", \"{{local.host}}\", \"--requirepass\", \"{{password}}\", \"--save\", \"\", \"--appendonly\", \"no\", \"--dir\", \"{{local.data_dir}}\"]\nreadiness: {kind: tcp}\nprotocol: redis\n",
    )
    .unwrap();
    let mut lab = Lab::new().arg("--manifests-path").arg(templates.path().display().to_string());
    let serve = lab.serve().await;
    let r = serve
        .http()
        .post(format!("{}/deployment", serve.url))
        .json(&json!({"module": "vault", "config": {"name": "v"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    let endpoint = body["endpoints"][0].as_str().unwrap().to_string();

    let dep = lab.deployment_dir("vault", "v");
    for dir in [
        lab.data.clone(),
        lab.data.join("deployments"),
        dep.parent().unwrap().parent().unwrap().to_path_buf(),
        dep.parent().unwrap().to_path_buf(),
        dep.clone(),
        dep.join("data"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in
        [lab.data.join("local-state.json"), lab.data.join("lock"), dep.join("process.log"), dep.join("workload.pid")]
    {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let text = std::fs::read_to_string(lab.data.join("local-state.json")).unwrap();
    let state: Value = serde_json::from_str(&text).unwrap();
    let password =
        state["deployments"]["default/vault/v"]["record"]["config"]["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 16, "a generated secret: {password}");
    assert_eq!(text.matches(&password).count(), 1, "the secret is stored once:\n{text}");
    // The stored recipe still runs with it.
    assert_eq!(redis_auth(&endpoint, &password).await, "+OK");
    serve.term().await;
}

#[tokio::test]
async fn a_failed_python_module_deploy_leaves_no_virtualenv_and_a_failed_redeploy_keeps_the_old_one() {
    let wheels = tempfile::tempdir().unwrap();
    let mut lab = Lab::new().env("PIP_NO_INDEX", "1").env("PIP_FIND_LINKS", wheels.path().display().to_string());
    let serve = lab.serve().await;
    let missing = json!(["jacorc-missing-pkg==1.0"]);
    let err = grpc_deploy(&serve, "python-module", json!({"name": "broken", "module": "json", "packages": missing}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("pip install"), "{}", err.message());
    assert!(
        !lab.deployment_dir("python-module", "broken").exists(),
        "the failed first deploy left its directory (venv)"
    );
    assert!(!serve.records().await.contains_key("broken"));

    let endpoint = grpc_deploy(&serve, "python-module", json!({"name": "kept", "module": "json"})).await.unwrap();
    assert!(module_serving(&endpoint).await);
    let err = grpc_deploy(&serve, "python-module", json!({"name": "kept", "module": "json", "packages": missing}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(lab.deployment_dir("python-module", "kept").join("venv").is_dir(), "a redeploy keeps what it had");
    let kept = &serve.records().await["kept"];
    assert_eq!(kept["status"], "failed", "{kept}");
    assert!(kept["message"].as_str().unwrap().contains("previous workload keeps running"), "{kept}");
    assert!(module_serving(&endpoint).await, "the previous module server still answers");
    serve.term().await;
    assert!(workloads(&lab.data).is_empty());
}

#[tokio::test]
async fn a_caller_that_leaves_stops_the_readiness_wait_and_the_workload_keeps_running() {
    use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
    use jac_splice_orc::backend::{ApplyOptions, Backend, Progress, Status};
    use jac_splice_orc::plan::{DeploymentId, LocalRecipe, Plan, Readiness, RecipeText};
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_path_buf());
    let backend =
        Arc::new(LocalBackend::open(LocalOptions { data_dir: tmp.path().into(), python: "python3".into() }).unwrap());
    let id = DeploymentId { namespace: "default".into(), module: "sleeper".into(), name: "never-ready".into() };
    // Never listens: only the caller leaving can end a 600 s wait early.
    let plan = Plan {
        id: id.clone(),
        version: "latest".into(),
        config: serde_json::Map::new(),
        secret_keys: vec![],
        objects: vec![],
        local: Some(LocalRecipe {
            program: RecipeText::text("sleep"),
            args: vec![RecipeText::text("600")],
            readiness: Readiness::Tcp,
            protocol: "tcp".into(),
            packages: vec![],
            env: vec![],
        }),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let caller = tokio_util::sync::CancellationToken::new();
    let progress = Progress::new(tx).with_caller(caller.clone());
    let apply = {
        let backend = backend.clone();
        tokio::spawn(async move {
            let opts = ApplyOptions { wait: Some(Duration::from_secs(600)), ..Default::default() };
            backend.apply(&plan, &opts, &progress).await
        })
    };
    let pid = eventually("the workload runs", || async { workloads(tmp.path()).first().map(|p| p.pid) }).await;
    // While it waits, the record exists as `deploying` with its endpoint and the state file names the pid.
    let pending = backend.get(&id).await.unwrap().expect("the record is written before the workload starts");
    assert_eq!(pending.status, Status::Deploying);
    assert_eq!(pending.endpoints.len(), 1);
    let state: Value = serde_json::from_slice(&std::fs::read(tmp.path().join("local-state.json")).unwrap()).unwrap();
    let recorded = &state["deployments"]["default/sleeper/never-ready"]["workload"]["process"]["pid"];
    assert_eq!(recorded.as_u64(), Some(u64::from(pid)), "{state}");
    caller.cancel();
    let record =
        tokio::time::timeout(BOUND, apply).await.expect("the wait stops once the caller has gone").unwrap().unwrap();
    assert_eq!(record.status, Status::Deployed);
    assert!(record.message.contains("readiness not awaited"), "{}", record.message);
    assert_eq!(backend.get(&id).await.unwrap().unwrap().message, record.message, "the record says so");
    assert_eq!(
        workloads(tmp.path()).iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![pid],
        "the workload keeps running"
    );
    backend.shutdown().await;
    assert!(workloads(tmp.path()).is_empty());
}

#[tokio::test]
async fn a_previous_versions_state_file_is_read_its_leftover_reaped_and_the_port_kept() {
    assert!(redis_available());
    let lab = Lab::new();
    let mut lab = lab;
    let dep = lab.deployment_dir("redis", "old");
    std::fs::create_dir_all(dep.join("data")).unwrap();
    std::fs::set_permissions(&lab.data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data_dir = dep.join("data").display().to_string();
    let args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", &data_dir]
            .map(String::from)
            .to_vec();
    // What the previous version left running when it was killed.
    let mut leftover = tokio::process::Command::new("redis-server")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let leftover_pid = leftover.id().unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    eventually("the leftover redis answers", || async { answers("redis", &endpoint).await.then_some(()) }).await;
    let old = json!({"deployments": {"default/redis/old": {
        "record": {"id": {"namespace": "default", "module": "redis", "name": "old"}, "version": "latest",
                   "config": {"name": "old", "memory": "16mb"}, "secret_keys": [], "endpoints": [endpoint],
                   "status": "deployed", "message": "", "objects": [], "backend": "local", "updated_at": "2026-11-30T10:00:00Z"},
        "objects": [{"object": {"api_version": "v1", "kind": "Service", "name": "old", "section": "modules", "file": "redis.yaml"},
                     "manifest": {"apiVersion": "v1", "kind": "Service"}}],
        "workload": {"recipe": {"program": "redis-server", "args": args, "readiness": {"kind": "tcp"}, "protocol": "redis"},
                     "port": port, "pid": leftover_pid}}}});
    std::fs::write(lab.data.join("local-state.json"), serde_json::to_vec_pretty(&old).unwrap()).unwrap();

    let serve = lab.serve().await;
    tokio::time::timeout(BOUND, leftover.wait()).await.expect("the leftover is reaped").unwrap();
    let records = serve.records().await;
    assert_eq!(records["old"]["endpoints"], json!([endpoint]), "the endpoint is kept");
    let pid = eventually("the recorded redis runs again on its port", || async {
        let p = workloads(&lab.data);
        let ok = p.len() == 1 && answers("redis", &endpoint).await;
        ok.then(|| p[0].pid)
    })
    .await;
    assert_ne!(pid, leftover_pid);
    let state = lab.state();
    assert_eq!(state["format"], 2);
    assert!(!state.to_string().contains("\"manifest\""), "rewritten in the current format: {state}");
    assert_eq!(lab.recorded_pid("redis", "old"), Some(pid));
    serve.term().await;
}

/// What the crash loop deploys: a name, its module, and the configs it alternates between.
struct Target {
    name: &'static str,
    module: &'static str,
    configs: Vec<Value>,
    /// Relative chance of being picked (virtualenv deploys are slow).
    weight: u32,
}

fn targets() -> Vec<Target> {
    let redis = |name: &'static str| Target {
        name,
        module: "redis",
        configs: ["16mb", "24mb"].iter().map(|m| json!({"name": name, "memory": m})).collect(),
        weight: 4,
    };
    let module = |name: &'static str| Target {
        name,
        module: "python-module",
        configs: ["json", "math"].iter().map(|m| json!({"name": name, "module": m})).collect(),
        weight: 3,
    };
    vec![
        redis("r0"),
        redis("r1"),
        redis("r2"),
        module("m0"),
        module("m1"),
        Target {
            name: "v0",
            module: "python-module",
            configs: vec![json!({"name": "v0", "module": "jacorc_crash_pkg", "packages": ["jacorc-crash-pkg"]})],
            weight: 1,
        },
    ]
}

#[tokio::test]
async fn crash_loop_kill_9_at_random_points_leaves_every_deployment_answering_with_one_process() {
    assert!(redis_available());
    const ITERATIONS: usize = 20;
    let seed: u64 = std::env::var("JAC_ORC_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash loop seed {seed} (rerun with JAC_ORC_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path());
    let mut lab = Lab::new().env("PIP_NO_INDEX", "1").env("PIP_FIND_LINKS", wheels.path().display().to_string());
    let targets = targets();
    let total_weight: u32 = targets.iter().map(|t| t.weight).sum();
    // First endpoint seen per deployment: it must never change.
    let mut endpoints: HashMap<&str, String> = HashMap::new();
    // Deploys that completed: their records must exist at the end.
    let mut certain: HashSet<&str> = HashSet::new();
    let mut kills_by_events = 0;

    for iteration in 0..ITERATIONS {
        let serve = lab.serve().await;
        let records = serve.records().await;
        for name in &certain {
            assert!(records.contains_key(*name), "iteration {iteration}: record {name} was lost: {records:?}");
        }
        for (name, d) in &records {
            let ep = d["endpoints"][0].as_str().unwrap_or_default().to_string();
            let first =
                endpoints.entry(targets.iter().find(|t| t.name == name).expect("known").name).or_insert(ep.clone());
            assert_eq!(*first, ep, "iteration {iteration}: the endpoint of {name} moved");
        }
        // 1-3 deploys, over gRPC or REST; kill -9 after a random number of events or a random delay.
        let ops: Vec<(usize, usize, bool)> = (0..rng.random_range(1..=3))
            .map(|_| {
                let mut pick = rng.random_range(0..total_weight);
                let t = targets.iter().position(|t| {
                    let hit = pick < t.weight;
                    pick = pick.saturating_sub(t.weight);
                    hit
                });
                let t = t.unwrap_or(0);
                (t, rng.random_range(0..targets[t].configs.len()), rng.random_bool(0.7))
            })
            .collect();
        let by_events = rng.random_bool(0.5);
        let kill_after_events: usize = rng.random_range(0..8);
        // A virtualenv takes seconds to build: give those iterations room to finish sometimes.
        let slow = ops.iter().any(|(t, _, _)| !targets[*t].configs[0]["packages"].is_null());
        let kill_after = Duration::from_millis(rng.random_range(0..if slow { 15_000 } else { 2_500 }));
        let pid = serve.pid;
        let timer = (!by_events).then(|| {
            tokio::spawn(async move {
                tokio::time::sleep(kill_after).await;
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            })
        });
        println!(
            "iteration {iteration}: {} then kill -9 {}",
            ops.iter()
                .map(|(t, c, g)| format!("{}#{c}{}", targets[*t].name, if *g { "/grpc" } else { "/rest" }))
                .collect::<Vec<_>>()
                .join(", "),
            if by_events { format!("after {kill_after_events} events") } else { format!("after {kill_after:?}") }
        );
        let mut events = 0usize;
        let mut completed: Vec<&str> = Vec::new();
        let mut interrupted: Vec<&str> = Vec::new();
        'ops: for (t, c, grpc) in &ops {
            let target = &targets[*t];
            let config = target.configs[*c].clone();
            let done: Option<String> = if *grpc {
                let req = pb::DeployRequest {
                    module: target.module.into(),
                    config: Some(struct_of(config)),
                    wait: true,
                    wait_timeout_seconds: 120,
                    ..Default::default()
                };
                let mut endpoint = None;
                // The kill may come before the connection: that is an interrupted deploy too.
                let client = tokio::time::timeout(BOUND, OrchestratorClient::connect(serve.url.clone())).await;
                let stream = match client {
                    Ok(Ok(mut client)) => tokio::time::timeout(BOUND, client.deploy(req)).await.ok(),
                    _ => None,
                };
                if let Some(Ok(stream)) = stream {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(Ok(ev))) = tokio::time::timeout(BOUND, stream.next()).await {
                        events += 1;
                        if by_events && events == kill_after_events {
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            kills_by_events += 1;
                        }
                        if let Some(Event::Summary(s)) = ev.event {
                            endpoint = s.deployment.and_then(|d| d.endpoints.first().cloned());
                        }
                    }
                }
                endpoint
            } else {
                let url = format!("{}/deployment", serve.url);
                match serve.http().post(url).json(&json!({"module": target.module, "config": config})).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.json::<Value>().await.ok().and_then(|b| b["endpoints"][0].as_str().map(String::from))
                    }
                    _ => None,
                }
            };
            match done {
                Some(ep) => {
                    let first = endpoints.entry(target.name).or_insert(ep.clone());
                    assert_eq!(*first, ep, "iteration {iteration}: the endpoint of {} moved", target.name);
                    certain.insert(target.name);
                    completed.retain(|n| *n != target.name);
                    completed.push(target.name);
                }
                None => {
                    interrupted.push(target.name);
                    break 'ops;
                }
            }
        }
        if let Some(timer) = timer {
            timer.abort();
        }
        println!("iteration {iteration}: completed {completed:?}, interrupted {interrupted:?}");
        serve.kill9().await;
        // The orchestrator's death takes no workload down.
        for name in completed.iter().filter(|n| !interrupted.contains(n)) {
            let t = targets.iter().find(|t| t.name == *name).unwrap();
            assert!(
                answers(t.module, &endpoints[name]).await,
                "iteration {iteration}: {name} died with the orchestrator"
            );
        }
    }

    // The last serve: everything comes back (or is still there) and settles.
    let serve = lab.serve().await;
    let records = eventually("every record deployed and answering", || async {
        let records = serve.records().await;
        for (name, d) in &records {
            let t = targets.iter().find(|t| t.name == name).unwrap();
            let ep = d["endpoints"][0].as_str().unwrap_or_default();
            if d["status"] != "deployed" || !answers(t.module, ep).await {
                return None;
            }
        }
        Some(records)
    })
    .await;
    for name in &certain {
        assert!(records.contains_key(*name), "record {name} was lost: {records:?}");
    }
    for (name, d) in &records {
        assert_eq!(d["endpoints"], json!([endpoints[name.as_str()]]), "the endpoint of {name} moved");
    }
    let procs = eventually("exactly one process per workload", || async {
        let procs = workloads(&lab.data);
        let mut by: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for p in &procs {
            by.entry(p.deployment.clone().unwrap_or_else(|| "?".into())).or_default().push(p.pid);
        }
        let expected: Vec<String> = records
            .values()
            .map(|d| format!("default/{}/{}", d["module"].as_str().unwrap(), d["name"].as_str().unwrap()))
            .collect();
        let ok = by.len() == records.len() && expected.iter().all(|k| by.get(k).is_some_and(|v| v.len() == 1));
        if !ok {
            println!("waiting: processes {by:?}, records {expected:?}");
        }
        ok.then_some(procs)
    })
    .await;
    for p in &procs {
        let dep = p.deployment.as_deref().unwrap();
        let (module, name) = dep.split_once('/').unwrap().1.split_once('/').unwrap();
        assert_eq!(lab.recorded_pid(module, name), Some(p.pid), "the record names the process of {dep}");
    }
    println!(
        "crash loop seed {seed}: {ITERATIONS} kills ({kills_by_events} after an event count), {} deployments, {} processes; serves adopted {} workloads, reaped {} processes",
        records.len(),
        procs.len(),
        log_count(&lab, "adopting a running workload"),
        log_count(&lab, "reaping a process"),
    );
    serve.term().await;
    eventually("SIGTERM stops every workload", || async { workloads(&lab.data).is_empty().then_some(()) }).await;
}

#[tokio::test]
async fn a_template_without_a_local_recipe_is_a_failed_precondition_and_records_nothing() {
    let server = crate::support::TestServer::start().await;
    let r = server
        .http()
        .post(format!("{}/deployment", server.url()))
        .json(&json!({"module": "jac-cloud", "config": {"name": "site"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "NO_LOCAL_RECIPE", "{body}");
    let all: Value =
        server.http().get(format!("{}/deployment", server.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(all, json!({}), "{all}");
    server.stop().await;
}
