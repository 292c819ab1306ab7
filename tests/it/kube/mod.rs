//! Kubernetes backend against a real API server (`scripts/k8s-test-cluster.sh start`): the fast
//! tier, with no kubelet. Pods never run here; what needs running pods is in `tests/cluster`
//! (`scripts/k8s-test-cluster.sh run --node`).
//!
//! Gated by `JAC_ORC_TEST_KUBECONFIG`: unset, each test prints why it skips and passes, unless
//! `JAC_ORC_REQUIRE_K8S=1` (CI), where a missing cluster fails the test. Each test works in its
//! own namespaces and deletes them at the end (also when it panics). Where a state no kubelet
//! could produce here is needed (an operator whose image does not exist reporting Running), tests
//! stand in for it by patching status. Plans come from the built-in catalog through the service
//! layer, as in production.

mod access;
mod deploy;
mod endpoint_watch;
mod ensure;
mod idle;
mod install;
mod leader;
mod logs;
mod outputs;
mod probes;
mod readiness;
mod reconcile;
mod resource;
mod revisions;
mod server;
mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jac_splice_orc::auth::Caller;
use jac_splice_orc::backend::kube::resource::JacDeployment;
use jac_splice_orc::backend::kube::{KubeBackend, KubeOptions};
use jac_splice_orc::backend::{Action, ApplyOptions, Backend, Error, ObjectEvent, Progress, Status};
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::plan::{ObjectRef, Plan, PlannedObject, Section};
use jac_splice_orc::service::{DeploymentRequest, Service, Settings};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

/// Generous bound on any single await: the API server answers in milliseconds.
const STEP: Duration = Duration::from_secs(90);

// === harness ===

fn kubeconfig_path() -> Option<PathBuf> {
    match std::env::var_os("JAC_ORC_TEST_KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("JAC_ORC_REQUIRE_K8S").as_deref() == Ok("1") => {
            panic!("JAC_ORC_REQUIRE_K8S=1 but JAC_ORC_TEST_KUBECONFIG is not set (eval \"$(scripts/k8s-test-cluster.sh start)\")")
        }
        None => {
            eprintln!("skipping: JAC_ORC_TEST_KUBECONFIG is not set; start a test API server with `eval \"$(scripts/k8s-test-cluster.sh start)\"`");
            None
        }
    }
}

async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// One test's cluster access and namespaces; dropping it deletes the namespaces.
struct Cluster {
    path: PathBuf,
    client: kube::Client,
    namespaces: Vec<String>,
}

/// Installs the JacDeployment CRD (as `manifests/jac-orc-crd.yaml` does) once per test run.
pub(crate) async fn install_crd(client: &kube::Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
            use kube::CustomResourceExt;
            let crd = jac_splice_orc::backend::kube::resource::JacDeployment::crd();
            let api = Api::<CustomResourceDefinition>::all(client.clone());
            let name = crd.metadata.name.clone().unwrap();
            timed(api.patch(&name, &PatchParams::apply("jac-orc-tests").force(), &Patch::Apply(&crd)))
                .await
                .expect("the JacDeployment CRD installs");
            let established = kube::runtime::wait::conditions::is_crd_established();
            timed(kube::runtime::wait::await_condition(api, &name, established)).await.expect("CRD established");
        })
        .await;
}

impl Cluster {
    /// `None` when the tests are skipped.
    async fn connect() -> Option<Cluster> {
        let path = kubeconfig_path()?;
        let client = client_from(&path).await;
        install_crd(&client).await;
        Some(Cluster { path, client, namespaces: Vec::new() })
    }

    /// Creates a fresh namespace `jo-<tag>-<pid>-<n>`.
    async fn namespace(&mut self, tag: &str) -> String {
        let name = format!("jo-{tag}-{}-{}", std::process::id(), self.namespaces.len());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        timed(Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns))
            .await
            .expect("namespace created");
        self.namespaces.push(name.clone());
        name
    }

    fn backend(&self, orchestrator_ns: &str) -> Arc<KubeBackend> {
        let options = KubeOptions::default().orchestrator_namespace(orchestrator_ns);
        Arc::new(KubeBackend::new(self.client.clone(), options))
    }
}

impl Cluster {
    /// Runs kubectl against the test cluster; panics (with its output) when it fails.
    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            timed(input.write_all(text.as_bytes())).await.unwrap();
        }
        drop(input);
        let out = timed(child.wait_with_output()).await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubectl {args:?} failed: {stdout}{stderr}");
        stdout.into_owned()
    }

    /// The reconcile loop over namespace `ns` (so tests running side by side keep to their own
    /// deployments), with short requeues; stopped when the guard drops.
    fn reconciler(&self, backend: &Arc<KubeBackend>, svc: &Arc<Service>, ns: &str) -> Reconciler {
        let stop = tokio_util::sync::CancellationToken::new();
        let config = jac_splice_orc::reconcile::ControllerConfig::default()
            .namespace(Some(ns.to_string()))
            .not_ready(Duration::from_secs(1))
            .resync(Duration::from_secs(5))
            .retry(Duration::from_secs(1));
        let planner: Arc<dyn jac_splice_orc::plan::Planner> = svc.clone();
        let task = tokio::spawn(jac_splice_orc::reconcile::run(
            backend.clone(),
            planner,
            config,
            stop.clone().cancelled_owned(),
        ));
        Reconciler { stop, task: Some(task) }
    }
}

/// A running reconcile loop; dropping it stops the loop.
struct Reconciler {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.stop.cancel();
        // The loop finishes the reconciles in flight on its own; nothing waits for it here.
        drop(self.task.take());
    }
}

/// Polls `check` (every 200 ms, for at most [`STEP`]) until it answers `Some`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let rounds = STEP.as_millis() / 200;
    for _ in 0..rounds {
        if let Some(v) = timed(check()).await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within {}s", STEP.as_secs());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (path, namespaces) = (self.path.clone(), std::mem::take(&mut self.namespaces));
        // The test's runtime is gone or blocked here, so cleanup gets its own runtime and client.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = client_from(&path).await;
                let api = Api::<Namespace>::all(client.clone());
                let bindings = Api::<ClusterRoleBinding>::all(client.clone());
                for ns in namespaces {
                    // No reconcile loop may be left to run the undeploy finalizers: drop them, so
                    // the namespace can go.
                    let resources = Api::<JacDeployment>::namespaced(client.clone(), &ns);
                    if let Ok(Ok(list)) = tokio::time::timeout(STEP, resources.list(&ListParams::default())).await {
                        for jd in list.items {
                            let name = jd.metadata.name.unwrap_or_default();
                            let unblock = Patch::Merge(json!({"metadata": {"finalizers": null}}));
                            let _ =
                                tokio::time::timeout(STEP, resources.patch(&name, &PatchParams::default(), &unblock))
                                    .await;
                        }
                    }
                    let _ = tokio::time::timeout(STEP, api.delete(&ns, &DeleteParams::background())).await;
                    // The install tests bind ClusterRoles per namespace.
                    for name in [format!("jac-orc-{ns}"), format!("jac-orc-{ns}-auth")] {
                        let _ = tokio::time::timeout(STEP, bindings.delete(&name, &DeleteParams::default())).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

/// A progress sink and the events it collected.
fn progress() -> (Progress, mpsc::Receiver<ObjectEvent>) {
    let (tx, rx) = mpsc::channel(4096);
    (Progress::new(tx), rx)
}

fn drain(mut rx: mpsc::Receiver<ObjectEvent>) -> Vec<ObjectEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn lines(events: &[ObjectEvent]) -> Vec<String> {
    events.iter().map(|e| e.line.clone()).collect()
}

// === plans from the built-in catalog, through the service layer ===

/// The service layer over a backend, so plans are rendered, labelled and ordered exactly as in
/// production (the tests then drive the backend directly where they inspect it).
fn service(backend: &Arc<KubeBackend>, ns: &str) -> Service {
    let settings = Settings { namespace: ns.into(), restricted_namespace: false, ..Settings::default() };
    Service::new(Arc::new(Catalog::builtin()), backend.clone(), settings)
}

fn request(module: &str, ns: &str, name: &str, overrides: Value) -> DeploymentRequest {
    let mut config = Map::new();
    config.insert("namespace".into(), ns.into());
    config.insert("name".into(), name.into());
    config.extend(overrides.as_object().cloned().unwrap_or_default());
    DeploymentRequest { module: module.into(), version: None, config }
}

async fn plan(svc: &Service, module: &str, ns: &str, name: &str, overrides: Value) -> Plan {
    timed(svc.prepare(&Caller::Operator, &request(module, ns, name, overrides)))
        .await
        .expect("renders and passes preflight")
        .plan
}

fn planned(manifest: Value, section: Section, file: &str) -> PlannedObject {
    let s = |p: &str| manifest.pointer(p).and_then(Value::as_str).map(str::to_string);
    let object = ObjectRef {
        api_version: s("/apiVersion").unwrap(),
        kind: s("/kind").unwrap(),
        name: s("/metadata/name").unwrap(),
        namespace: s("/metadata/namespace"),
        section,
        file: file.into(),
    };
    PlannedObject { object, manifest }
}

// === kubelet stand-in ===

/// Waits (bounded) for pods matching `selector` to exist and returns their names.
async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<String> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    for _ in 0..300 {
        let list = timed(api.list(&ListParams::default().labels(selector))).await.unwrap();
        if !list.items.is_empty() {
            return list.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no pod matching {selector} in {ns} appeared (is kube-controller-manager running with the replicaset controller?)");
}

async fn set_pod_status(client: &kube::Client, ns: &str, name: &str, status: Value) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    timed(api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))))
        .await
        .expect("pod status patched");
}

fn now() -> String {
    // Any valid RFC 3339 time will do for lastTransitionTime.
    jac_splice_orc::backend::now_rfc3339()
}

async fn mark_ready(client: &kube::Client, ns: &str, selector: &str) {
    for pod in pods(client, ns, selector).await {
        let status = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()}]});
        set_pod_status(client, ns, &pod, status).await;
    }
}

/// The `jac-orc.io/config-hash` annotation of a Deployment's pod template.
async fn config_hash(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let api = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    let d = timed(api.get(name)).await.unwrap();
    d.spec?.template.metadata?.annotations?.get(jac_splice_orc::backend::kube::ANNOTATION_CONFIG_HASH).cloned()
}

async fn exists(api: &Api<DynamicObject>, name: &str) -> bool {
    timed(api.get_opt(name)).await.unwrap().is_some_and(|o| o.metadata.deletion_timestamp.is_none())
}

fn dynamic(client: &kube::Client, ns: &str, api_version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

// === processes ===

/// `python3 -m jac_splice.server MODULE` on `host`, requiring `call_token`, and the port it printed.
async fn module_server(module: &str, host: &str, call_token: &str) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = tokio::process::Command::new(python)
        .args(["-m", "jac_splice.server", module, "--host", host, "--port", "0"])
        .env("JAC_SPLICE_CALL_TOKEN", call_token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("module server starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timed(lines.next_line()).await.unwrap().expect("module server prints its address");
    let port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok()).expect("a port");
    (child, port)
}

/// Reads the server's log lines (stderr) until `want` appears; returns the lines read.
fn wait_for_log(lines: &mut impl Iterator<Item = std::io::Result<String>>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.take(200) {
        let line = line.expect("log line");
        let done = line.contains(want);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("`{want}` never logged: {seen:#?}");
}
