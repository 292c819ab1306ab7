//! gRPC probes on every supported cluster: native where the server has them (1.24+), exec forms
//! (`jac-orc probe`, `python -m jac_splice.probe`) asking the same health service below.

use std::process::Stdio;

use super::*;

fn python() -> String {
    std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the test's Python has jac-splice; in CI (`JAC_ORC_REQUIRE_K8S=1`, after the wheel is
/// installed) a missing package fails instead of skipping.
fn python_has_jac_splice() -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", "import jac_splice.probe"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("JAC_ORC_REQUIRE_K8S").as_deref() == Ok("1") {
        panic!("{} cannot import jac_splice.probe (install the wheel: python/scripts/build.sh)", python());
    }
    if !ok {
        eprintln!("skipping: {} cannot import jac_splice.probe (python/scripts/build.sh installs it)", python());
    }
    ok
}

/// Runs a probe command to completion (bounded) and returns (success, stderr).
async fn run_probe(program: &str, args: &[&str]) -> (bool, String) {
    let out = timed(tokio::process::Command::new(program).args(args).stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .expect("probe runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn python_module_probes_become_tcp_readiness_and_exec_liveness_on_servers_before_1_24() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("probes").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "python-module", &ns, "mathmod", json!({"module": "math"})).await;
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    let deployments = dynamic(&c.client, &ns, "apps/v1", "Deployment", "deployments");
    let d = timed(deployments.get("mathmod")).await.unwrap();
    let container = &d.data["spec"]["template"]["spec"]["containers"][0];
    let version = timed(c.client.apiserver_version()).await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if minor >= 24 {
        assert_eq!(container["readinessProbe"]["grpc"], json!({"port": 50051, "service": "ModuleService"}));
        return;
    }
    // The module server listens once it serves: readiness is a TCP connect the kubelet makes, cheap
    // enough to check every second; liveness asks the health service from inside the container.
    assert_eq!(container["readinessProbe"]["tcpSocket"], json!({"port": 50051}));
    assert_eq!(container["readinessProbe"]["periodSeconds"], 1, "the probe's other settings are kept");
    assert!(container["readinessProbe"].get("grpc").is_none() && container["readinessProbe"].get("exec").is_none());
    assert_eq!(
        container["livenessProbe"]["exec"]["command"],
        json!(["python", "-m", "jac_splice.probe", "--port", "50051", "--timeout", "5"])
    );
    assert!(container["livenessProbe"].get("grpc").is_none());
}

#[tokio::test]
async fn the_module_probe_passes_only_for_services_the_module_server_reports_serving() {
    if !python_has_jac_splice() {
        return;
    }
    let (mut server, port) = module_server("math", "127.0.0.1", "probe-test-call-token-0123456789").await;
    let port = port.to_string();
    let py = python();
    for service in ["", "ModuleService", "jac.splice.v1.ModuleService"] {
        let (ok, err) =
            run_probe(&py, &["-m", "jac_splice.probe", "--port", &port, "--service", service, "--timeout", "5"]).await;
        assert!(ok, "service {service:?}: {err}");
    }
    let (ok, err) = run_probe(&py, &["-m", "jac_splice.probe", "--port", &port, "--service", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("'nope'"), "{err}");
    server.kill().await.unwrap();
    let (ok, err) = run_probe(&py, &["-m", "jac_splice.probe", "--port", &port]).await;
    assert!(!ok);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jac_orc_probe_passes_against_a_running_server_and_fails_without_one() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "local", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("MODULES")
        .stderr(Stdio::piped())
        .spawn()
        .expect("jac-orc starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::task::block_in_place(|| wait_for_log(&mut lines, "jac-orc listening on "));
    let addr = log.last().unwrap().split("jac-orc listening on ").nth(1).unwrap().split(' ').next().unwrap();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let drain = std::thread::spawn(move || lines.take(100_000).for_each(drop));
    let bin = env!("CARGO_BIN_EXE_jac-orc");

    let (ok, err) = run_probe(bin, &["probe", "--port", &port, "--timeout", "5"]).await;
    assert!(ok, "{err}");
    let (ok, err) = run_probe(bin, &["probe", "--port", &port, "--service", "jac.splice.v1.Orchestrator"]).await;
    assert!(ok, "{err}");
    let (ok, err) = run_probe(bin, &["probe", "--port", &port, "--service", "nope"]).await;
    assert!(!ok, "an unknown service is not serving");
    assert!(err.contains("health check"), "{err}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let _ = drain.join();
    let (ok, err) = run_probe(bin, &["probe", "--port", &port, "--timeout", "2"]).await;
    assert!(!ok);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}
