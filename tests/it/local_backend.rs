//! The local backend's processes, through the real binary (`jac-orc serve --backend local`) on
//! temporary data dirs: workloads outlive a kill -9 of the orchestrator and are adopted (same
//! pid, same port) by the next serve; a crash loop leaves every deployment answering on its
//! recorded endpoint with exactly one process; one serve per data dir; a private state file with
//! each secret once; failed first deploys leave nothing; a caller that leaves stops the wait;
//! the state file is the desired state (`desired.rs`: config changes restart, the object store
//! is healed); extra replicas are adopted with the sessions' objects on them (`replicas.rs`).
//!
//! Processes are found through /proc: a workload is a process whose working directory,
//! command line or environment carries the data dir. Every process a test starts is stopped by
//! PID, by the test or by [`Lab`]'s drop guard. Waits are bounded; durations are never asserted.

mod crash_loop;
mod desired;
pub(crate) mod lab;
mod replicas;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::support::redis_auth;
use crate::support::{redis_available, redis_ping};
use lab::{answers, eventually, grpc_deploy, mode, module_serving, workloads, Lab, Reaper, BOUND};

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

    // Because the restart was recorded, the next crash and start adopt the restarted process
    // instead of leaking it.
    serve.kill9().await;
    let serve = lab.serve().await;
    let procs = eventually("the restarted redis adopted", || async {
        let p = workloads(&lab.data);
        (p.len() == 1 && answers("redis", &endpoint).await).then_some(p)
    })
    .await;
    assert_eq!(procs[0].pid, new_pid);

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
    let mut lab = Lab::new().arg("--pip-find-links").arg(wheels.path().display().to_string());
    let serve = lab.serve().await;
    let missing = json!(["jacorc-missing-pkg==1.0"]);
    let err = grpc_deploy(&serve, "python-module", json!({"name": "broken", "module": "json", "packages": missing}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // A short reason naming the package, not pip's output.
    assert!(
        err.message().ends_with("pip install: no matching distribution for jacorc-missing-pkg==1.0"),
        "{}",
        err.message()
    );
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
    let backend = Arc::new(
        LocalBackend::open(LocalOptions {
            data_dir: tmp.path().into(),
            python: "python3".into(),
            ..Default::default()
        })
        .unwrap(),
    );
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
            secret_env: vec![],
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
    // The pid is recorded just after the spawn, so the process may be seen a moment before it is.
    let state_file = tmp.path().join("local-state.json");
    let recorded = eventually("the state file names the workload's pid", || async {
        let state: Value = serde_json::from_slice(&std::fs::read(&state_file).ok()?).ok()?;
        state["deployments"]["default/sleeper/never-ready"]["workload"]["process"]["pid"].as_u64()
    })
    .await;
    assert_eq!(recorded, u64::from(pid));
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
    let mut lab = Lab::new();
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
    // A process that merely sits in the directory (a user's shell, say) is no workload.
    let mut stranger = tokio::process::Command::new("sleep")
        .arg("300")
        .current_dir(dep.join("data"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stranger_pid = stranger.id().unwrap();
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
        let p: Vec<u32> = workloads(&lab.data).iter().map(|p| p.pid).filter(|p| *p != stranger_pid).collect();
        let ok = p.len() == 1 && answers("redis", &endpoint).await;
        ok.then(|| p[0])
    })
    .await;
    assert_ne!(pid, leftover_pid);
    assert!(matches!(stranger.try_wait(), Ok(None)), "the stranger was left alone");
    let state = lab.state();
    assert_eq!(state["format"], 2);
    assert!(!state.to_string().contains("\"manifest\""), "rewritten in the current format: {state}");
    assert_eq!(lab.recorded_pid("redis", "old"), Some(pid));
    serve.term().await;
    assert!(matches!(stranger.try_wait(), Ok(None)), "a shutdown leaves the stranger alone too");
    stranger.start_kill().unwrap();
    tokio::time::timeout(BOUND, stranger.wait()).await.expect("the stranger stops").unwrap();
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
