//! Harness of the cluster tier: the node's kubeconfig, per-test namespaces, `kubectl`, installing
//! the orchestrator from `manifests/`, its REST API, pods, and the Python driver.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

/// Generous bound on any single step: pods here start in seconds.
pub(crate) const STEP: Duration = Duration::from_secs(150);

pub(crate) async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

/// Prints one measured figure (never asserted).
pub(crate) fn timing(what: &str, d: Duration) {
    eprintln!("[timing] {what}: {:.2} s", d.as_secs_f64());
}

fn kubeconfig_path() -> Option<PathBuf> {
    match std::env::var_os("JAC_ORC_TEST_NODE_KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("JAC_ORC_REQUIRE_NODE").as_deref() == Ok("1") => panic!(
            "JAC_ORC_REQUIRE_NODE=1 but JAC_ORC_TEST_NODE_KUBECONFIG is not set \
             (eval \"$(scripts/k8s-test-cluster.sh start --node)\")"
        ),
        None => {
            eprintln!(
                "skipping: JAC_ORC_TEST_NODE_KUBECONFIG is not set; start the one-node cluster with \
                 `scripts/images.sh build && eval \"$(scripts/k8s-test-cluster.sh start --node)\"` (root)"
            );
            None
        }
    }
}

pub(crate) async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

pub(crate) fn manifest_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests").join(file)
}

/// One test's access to the node cluster; dropping it deletes its namespaces and bindings.
pub(crate) struct Node {
    pub path: PathBuf,
    pub client: kube::Client,
    namespaces: Vec<String>,
    bindings: Vec<String>,
}

impl Node {
    /// `None` when the cluster tier is skipped.
    pub(crate) async fn connect() -> Option<Node> {
        let path = kubeconfig_path()?;
        let client = client_from(&path).await;
        Some(Node { path, client, namespaces: Vec::new(), bindings: Vec::new() })
    }

    /// A fresh namespace `jc-<tag>-<pid>`.
    pub(crate) async fn namespace(&mut self, tag: &str) -> String {
        let name = format!("jc-{tag}-{}", std::process::id());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        timed(Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns))
            .await
            .expect("namespace created");
        self.namespaces.push(name.clone());
        name
    }

    /// Runs kubectl against the node (bounded); returns (success, stdout, stderr).
    pub(crate) async fn kubectl_status(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.path.display()))
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs (it is on PATH)");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            timed(pipe.write_all(text.as_bytes())).await.unwrap();
            drop(pipe);
        }
        let out = timed(child.wait_with_output()).await.expect("kubectl finished");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kubectl that must succeed; returns stdout.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_status(args, None).await;
        assert!(ok, "kubectl {}: {err}{out}", args.join(" "));
        out
    }

    /// Installs the orchestrator the way its manifest's header says: `kubectl apply -n NS -f FILE`
    /// (the file as shipped, or `edit`ed text through stdin) and the ClusterRoleBinding line; then
    /// waits until its pod is Ready, which only its exec probe (`jac-orc probe`) can decide.
    pub(crate) async fn install(&mut self, tag: &str, edit: Option<&dyn Fn(&str) -> String>) -> Orchestrator {
        let ns = self.namespace(tag).await;
        let file = manifest_path("jac-orc.yaml");
        let started = Instant::now();
        let text = match edit {
            None => std::fs::read_to_string(&file).unwrap(),
            Some(edit) => edit(&std::fs::read_to_string(&file).unwrap()),
        };
        // The manifest's cluster-scoped objects (the aggregated ClusterRoles) are shared by the
        // tests installing at once: kubectl's get-then-create may lose that race with
        // AlreadyExists, and applying again then updates them (bounded).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (ok, out, err) = self.kubectl_status(&["apply", "-n", &ns, "-f", "-"], Some(&text)).await;
            if ok {
                break;
            }
            assert!(
                attempt < 4 && err.contains("AlreadyExists"),
                "kubectl apply -n {ns} -f {}: {err}{out}",
                file.display()
            );
            eprintln!("kubectl apply raced another install (attempt {attempt}): {}", err.trim());
        }
        // The header's two binding lines: CRDs, and system:auth-delegator (TokenReview and
        // SubjectAccessReview of every caller).
        for (binding, role) in
            [(format!("jac-orc-{ns}"), "jac-orc-crds"), (format!("jac-orc-{ns}-auth"), "system:auth-delegator")]
        {
            let (role, account) = (format!("--clusterrole={role}"), format!("--serviceaccount={ns}:jac-orc"));
            self.kubectl(&["create", "clusterrolebinding", &binding, &role, &account]).await;
            self.bindings.push(binding);
        }
        let pod = ready_pod(&self.client, &ns, "app=jac-orc", None).await;
        timing(&format!("install ({ns}): kubectl apply → orchestrator pod Ready"), started.elapsed());
        self.orchestrator(ns, pod)
    }

    /// The bearer token of the node's admin kubeconfig: the orchestrator's TokenReview accepts it
    /// (user admin, group system:masters, so every SubjectAccessReview allows).
    pub(crate) fn token(&self) -> String {
        std::fs::read_to_string(&self.path)
            .expect("readable kubeconfig")
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: ").map(|t| t.trim().trim_matches(['"', '\'']).to_string()))
            .expect("the node kubeconfig has a bearer token")
    }

    /// The orchestrator in `ns` running as `pod`, called with [`Node::token`].
    pub(crate) fn orchestrator(&self, namespace: String, pod: Pod) -> Orchestrator {
        Orchestrator::new(namespace, pod, &self.token())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let (path, namespaces, bindings) =
            (self.path.clone(), std::mem::take(&mut self.namespaces), std::mem::take(&mut self.bindings));
        // The test's runtime is gone or blocked here, so cleanup gets its own runtime and client.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = client_from(&path).await;
                let api = Api::<Namespace>::all(client.clone());
                for ns in namespaces {
                    let _ = tokio::time::timeout(STEP, api.delete(&ns, &DeleteParams::background())).await;
                }
                let crbs = Api::<ClusterRoleBinding>::all(client);
                for b in bindings {
                    let _ = tokio::time::timeout(STEP, crbs.delete(&b, &DeleteParams::default())).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// An orchestrator running in the cluster, reached from this machine at its pod IP with a bearer
/// token.
pub(crate) struct Orchestrator {
    pub namespace: String,
    pub pod: Pod,
    pub token: String,
    http: reqwest::Client,
}

impl Orchestrator {
    pub(crate) fn new(namespace: String, pod: Pod, token: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let http = reqwest::Client::builder().timeout(STEP).default_headers(headers).build().unwrap();
        Orchestrator { namespace, pod, token: token.to_string(), http }
    }

    pub(crate) fn pod_name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap()
    }

    pub(crate) fn ip(&self) -> &str {
        pod_ip(&self.pod)
    }

    /// `IP:8000`, the target `jac_splice.connect` takes.
    pub(crate) fn target(&self) -> String {
        format!("{}:8000", self.ip())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:8000{path}", self.ip())
    }

    /// `POST /deployment`; returns the HTTP status and the JSON body.
    pub(crate) async fn deploy(&self, body: Value) -> (u16, Value) {
        let r = timed(self.http.post(self.url("/deployment")).json(&body).send()).await.expect("deploy answered");
        let status = r.status().as_u16();
        (status, timed(r.json()).await.expect("JSON body"))
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = timed(self.http.post(self.url(path)).json(&body).send()).await.expect("answered");
        let status = r.status().as_u16();
        (status, timed(r.json()).await.expect("JSON body"))
    }

    pub(crate) async fn undeploy(&self, ns: &str, module: &str, name: &str) -> (u16, Value) {
        let r = timed(self.http.delete(self.url(&format!("/deployment/{ns}/{module}/{name}"))).send())
            .await
            .expect("undeploy answered");
        let status = r.status().as_u16();
        (status, timed(r.json()).await.expect("JSON body"))
    }

    /// `GET` of a path whose answer is not one JSON document (NDJSON streams).
    pub(crate) async fn get_text(&self, path: &str) -> (u16, String) {
        let r = timed(self.http.get(self.url(path)).send()).await.expect("answered");
        let status = r.status().as_u16();
        (status, timed(r.text()).await.expect("a body"))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let r = timed(self.http.get(self.url(path)).send()).await.expect("answered");
        let status = r.status().as_u16();
        (status, timed(r.json()).await.expect("JSON body"))
    }

    /// Names of the deployments `GET /deployment` lists (views are found wherever the listing
    /// nests them: by namespace and module, or in a plain list).
    pub(crate) async fn deployment_names(&self) -> Vec<String> {
        fn collect(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) if m.contains_key("name") && m.contains_key("module") && m.contains_key("status") => {
                    out.extend(m["name"].as_str().map(str::to_string));
                }
                Value::Object(m) => m.values().for_each(|v| collect(v, out)),
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let (status, body) = self.get("/deployment").await;
        assert_eq!(status, 200, "{body}");
        let mut names = Vec::new();
        collect(&body, &mut names);
        names.sort();
        names
    }
}

pub(crate) fn pod_ip(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).expect("a pod IP")
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits (bounded) for a Ready pod matching `selector` (other than `not`) and returns it. A pod
/// stuck pulling or crash-looping fails at once, with its state.
pub(crate) async fn ready_pod(client: &kube::Client, ns: &str, selector: &str, not: Option<&str>) -> Pod {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..1200 {
        let pods = timed(api.list(&ListParams::default().labels(selector))).await.unwrap();
        for p in &pods.items {
            if not.is_some_and(|n| p.metadata.name.as_deref() == Some(n)) {
                continue;
            }
            if is_ready(p) {
                return p.clone();
            }
            let waiting = p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                Some(format!("{}: {}", w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()))
            });
            if let Some(w) = &waiting {
                assert!(
                    !["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "ErrImageNeverPull"]
                        .iter()
                        .any(|r| w.starts_with(r)),
                    "pod {:?} in {ns} will not become Ready: {w}",
                    p.metadata.name
                );
            }
            last = format!("{:?}: {:?} {waiting:?}", p.metadata.name, p.status.as_ref().and_then(|s| s.phase.clone()));
        }
        if started.elapsed() >= STEP {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = diagnose(client, ns, selector).await;
    panic!("no Ready pod for {selector} in {ns} after {:?}; last seen {last}\n{why}", started.elapsed());
}

/// What a pod that does not become Ready is waiting on: its conditions (an unscheduled pod says
/// why in PodScheduled), the namespace's latest events, and the node's pressure and taints.
pub(crate) async fn diagnose(client: &kube::Client, ns: &str, selector: &str) -> String {
    use k8s_openapi::api::core::v1::{Event, Node};
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    if let Ok(Ok(list)) = tokio::time::timeout(STEP, pods.list(&ListParams::default().labels(selector))).await {
        for p in list.items {
            let conditions = p.status.iter().flat_map(|s| s.conditions.iter().flatten()).map(|c| {
                format!(
                    "{}={} {} {}",
                    c.type_,
                    c.status,
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )
            });
            out += &format!("pod {:?}: {}\n", p.metadata.name, conditions.collect::<Vec<_>>().join("; "));
        }
    }
    let events = Api::<Event>::namespaced(client.clone(), ns);
    if let Ok(Ok(list)) = tokio::time::timeout(STEP, events.list(&ListParams::default())).await {
        for e in list.items.iter().rev().take(15) {
            out += &format!(
                "event {} {:?}: {} {}\n",
                e.type_.clone().unwrap_or_default(),
                e.involved_object.name,
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            );
        }
    }
    let nodes = Api::<Node>::all(client.clone());
    if let Ok(Ok(list)) = tokio::time::timeout(STEP, nodes.list(&ListParams::default())).await {
        for n in list.items {
            let spec = n.spec.unwrap_or_default();
            let taints: Vec<String> = spec.taints.iter().flatten().map(|t| format!("{}:{}", t.key, t.effect)).collect();
            let conditions = n
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .map(|c| format!("{}={}", c.type_, c.status));
            out += &format!(
                "node {:?}: {}; taints [{}]\n",
                n.metadata.name,
                conditions.collect::<Vec<_>>().join(" "),
                taints.join(", ")
            );
        }
    }
    out
}

/// Waits (bounded) until no pod matches `selector`.
pub(crate) async fn pods_gone(client: &kube::Client, ns: &str, selector: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let pods = timed(api.list(&ListParams::default().labels(selector))).await.unwrap();
        if pods.items.is_empty() {
            return;
        }
        assert!(started.elapsed() < STEP, "pods {selector} in {ns} still exist after {STEP:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    timed(api.list(&ListParams::default().labels(selector))).await.unwrap().items
}

/// The Python driver (`tests/cluster/driver.py`) with this machine's jac-splice, sending `token`
/// to jac-orc; prints one JSON line. `JAC_ORC_PYTHON` chooses the interpreter (default python3).
pub(crate) fn driver(token: &str, args: &[&str]) -> tokio::process::Command {
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/driver.py"))
        .args(args)
        .env("JAC_ORC_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the driver to completion and parses its JSON line.
pub(crate) async fn drive(token: &str, args: &[&str]) -> Value {
    let out = timed(driver(token, args).output()).await.expect("driver runs");
    parse_driver(out)
}

pub(crate) fn parse_driver(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "driver failed ({}): {stderr}{stdout}", out.status);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"))
}

/// Small requests for every test deployment, so its pods fit beside each other on two cores.
pub(crate) fn small(mut config: Value) -> Value {
    config["cpu"] = json!("50m");
    config["memory"] = if config.get("memory").is_some() { config["memory"].clone() } else { json!("64Mi") };
    config
}

/// [`small`] for a python-module: its request stays small (three replicas fit), its limit is a
/// whole core, because Python's start is CPU-bound (at a 50m limit ~0.2 s of CPU takes ~4 s).
pub(crate) fn small_module(config: Value) -> Value {
    let mut config = small(config);
    config["cpu-limit"] = json!("1");
    config
}
