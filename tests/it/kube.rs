//! Kubernetes backend against a real API server (`scripts/k8s-test-cluster.sh start`).
//!
//! Gated by `JAC_ORC_TEST_KUBECONFIG`: unset, each test prints why it skips and passes, unless
//! `JAC_ORC_REQUIRE_K8S=1` (CI), where a missing cluster fails the test. Each test works in its
//! own namespaces and deletes them at the end (also when it panics). There is no kubelet: tests
//! stand in for it by patching pod status. Plans come from the built-in catalog through the
//! service layer, as in production.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jac_splice_orc::backend::kube::{KubeBackend, KubeOptions};
use jac_splice_orc::backend::{Action, ApplyOptions, Backend, Error, ObjectEvent, Progress, Status};
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::plan::{ObjectRef, Plan, PlannedObject, Section};
use jac_splice_orc::service::{DeploymentRequest, Service, Settings};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
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

impl Cluster {
    /// `None` when the tests are skipped.
    async fn connect() -> Option<Cluster> {
        let path = kubeconfig_path()?;
        let client = client_from(&path).await;
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

impl Drop for Cluster {
    fn drop(&mut self) {
        let (path, namespaces) = (self.path.clone(), std::mem::take(&mut self.namespaces));
        // The test's runtime is gone or blocked here, so cleanup gets its own runtime and client.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = client_from(&path).await;
                let api = Api::<Namespace>::all(client.clone());
                let bindings = Api::<ClusterRoleBinding>::all(client);
                for ns in namespaces {
                    let _ = tokio::time::timeout(STEP, api.delete(&ns, &DeleteParams::background())).await;
                    // The install tests bind a ClusterRole per namespace.
                    let _ =
                        tokio::time::timeout(STEP, bindings.delete(&format!("jac-orc-{ns}"), &DeleteParams::default()))
                            .await;
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
    timed(svc.prepare(&request(module, ns, name, overrides))).await.expect("renders and passes preflight").plan
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

// === tests ===

#[tokio::test]
async fn redis_deploys_with_kubectl_lines_redeploys_unchanged_and_reconfigures() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("redis").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);

    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    timed(backend.preflight(&p)).await.unwrap();
    let (tx, rx) = progress();
    let record = timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(
        lines(&drain(rx)),
        ["service/cache created", "deployment.apps/cache created", "configmap/cache created"]
    );
    assert_eq!(record.status, Status::Deployed);
    assert_eq!(record.endpoints, [format!("cache.{ns}.svc:6379")]);

    // Labels land on the objects: listing works from the cluster itself.
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let labelled =
        timed(cms.list(&ListParams::default().labels("jac-orc/deployment=cache,jac-orc/module=redis"))).await.unwrap();
    assert_eq!(labelled.items.len(), 1);

    // Objects no controller writes to keep their resourceVersion: the redeploy wrote nothing.
    let rvs = |ns: String, client: kube::Client| async move {
        let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns);
        let cms = Api::<ConfigMap>::namespaced(client, &ns);
        let s = timed(svc.get("cache")).await.unwrap().metadata.resource_version;
        let c = timed(cms.get("cache")).await.unwrap().metadata.resource_version;
        (s, c)
    };
    let objects_before = rvs(ns.clone(), c.client.clone()).await;
    // An immediate redeploy changes nothing, not even the record.
    let secrets = Api::<Secret>::namespaced(c.client.clone(), &ns);
    let record_rv =
        |list: Vec<Secret>| list.into_iter().map(|s| s.metadata.resource_version.unwrap()).collect::<Vec<_>>();
    let before =
        record_rv(timed(secrets.list(&ListParams::default().labels("jac-orc/record=true"))).await.unwrap().items);
    let (tx, rx) = progress();
    timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(
        lines(&drain(rx)),
        ["service/cache unchanged", "deployment.apps/cache unchanged", "configmap/cache unchanged"]
    );
    let after =
        record_rv(timed(secrets.list(&ListParams::default().labels("jac-orc/record=true"))).await.unwrap().items);
    assert_eq!(before, after, "an unchanged redeploy must not rewrite the record");
    assert_eq!(objects_before, rvs(ns.clone(), c.client.clone()).await, "an unchanged redeploy must not write objects");

    // A changed value reconfigures exactly the object that uses it.
    let p2 = plan(&svc, "redis", &ns, "cache", json!({"memory": "500mb"})).await;
    let (tx, rx) = progress();
    let record = timed(backend.apply(&p2, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(
        lines(&drain(rx)),
        ["service/cache unchanged", "deployment.apps/cache unchanged", "configmap/cache configured"]
    );
    assert_eq!(record.config["memory"], "500mb");
    let cm = timed(cms.get("cache")).await.unwrap();
    assert!(cm.data.unwrap()["redis-config"].contains("maxmemory 500mb"));
}

#[tokio::test]
async fn mongodb_crd_operator_and_custom_resource_deploy_and_shared_objects_are_kept() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("mongo").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);

    let p = plan(&svc, "mongodb", &ns, "db1", json!({})).await;
    timed(backend.preflight(&p)).await.unwrap();
    let (tx, rx) = progress();
    timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    let got = lines(&drain(rx));
    // The CRD is cluster-wide: another run may have created it already.
    assert!(
        got[0].starts_with(
            "customresourcedefinition.apiextensions.k8s.io/mongodbcommunity.mongodbcommunity.mongodb.com "
        ),
        "{got:?}"
    );
    for expected in [
        "serviceaccount/jac-orc-mongodb-operator created",
        "role.rbac.authorization.k8s.io/jac-orc-mongodb-operator created",
        "rolebinding.rbac.authorization.k8s.io/jac-orc-mongodb-operator created",
        "deployment.apps/jac-orc-mongodb-operator created",
        "mongodbcommunity.mongodbcommunity.mongodb.com/db1 created",
        "secret/my-user-password created",
    ] {
        assert!(got.iter().any(|l| l == expected), "missing `{expected}` in {got:?}");
    }
    let crs = dynamic(&c.client, &ns, "mongodbcommunity.mongodb.com/v1", "MongoDBCommunity", "mongodbcommunity");
    assert!(exists(&crs, "db1").await);

    // A second deployment in the same namespace shares the operator objects with the first.
    let p2 = plan(&svc, "mongodb", &ns, "db2", json!({"username": "other-user"})).await;
    let (tx, rx) = progress();
    timed(backend.apply(&p2, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert!(lines(&drain(rx)).contains(&"mongodbcommunity.mongodbcommunity.mongodb.com/db2 created".to_string()));

    let (tx, rx) = progress();
    timed(backend.delete(&p.id, &tx)).await.unwrap();
    drop(tx);
    let events = drain(rx);
    let kept: Vec<_> = events
        .iter()
        .filter(|e| e.action == Action::Kept)
        .map(|e| (e.object.kubectl_name(), e.message.clone()))
        .collect();
    assert!(
        kept.iter().any(|(o, m)| o.starts_with("customresourcedefinition") && m.contains("cluster-wide")),
        "{kept:?}"
    );
    assert!(kept.iter().any(|(o, m)| o == "deployment.apps/jac-orc-mongodb-operator" && m.contains("db2")), "{kept:?}");
    assert!(lines(&events).contains(&"mongodbcommunity.mongodbcommunity.mongodb.com/db1 deleted".to_string()));
    assert!(lines(&events).contains(&"secret/my-user-password deleted".to_string()));
    assert_eq!(events.iter().filter(|e| e.object.name == "db1").count(), 1, "one event per object");
    assert!(!exists(&crs, "db1").await);
    assert!(exists(&crs, "db2").await);
    let deployments = dynamic(&c.client, &ns, "apps/v1", "Deployment", "deployments");
    assert!(exists(&deployments, "jac-orc-mongodb-operator").await);
}

#[tokio::test]
async fn wait_reports_waiting_then_ready_once_pods_are_ready() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("ready").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    let (tx, rx) = progress();
    let kubelet = {
        let (client, ns) = (c.client.clone(), ns.clone());
        tokio::spawn(async move { mark_ready(&client, &ns, "pod=cache").await })
    };
    let opts = ApplyOptions { wait: Some(Duration::from_secs(60)), force_conflicts: false };
    let record = timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    timed(kubelet).await.unwrap();
    drop(tx);
    let events = drain(rx);
    let for_deployment: Vec<_> = events.iter().filter(|e| e.object.kind == "Deployment").map(|e| e.action).collect();
    assert_eq!(for_deployment.first(), Some(&Action::Created));
    assert_eq!(for_deployment.last(), Some(&Action::Ready), "{:?}", lines(&events));
    assert_eq!(record.status, Status::Deployed);
}

#[tokio::test]
async fn wait_fails_fast_on_image_pull_backoff_and_records_the_failure() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("pullfail").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    let kubelet = {
        let (client, ns) = (c.client.clone(), ns.clone());
        tokio::spawn(async move {
            for pod in pods(&client, &ns, "pod=cache").await {
                let status = json!({"phase": "Pending", "containerStatuses": [{
                    "name": "jaseci-redis-master", "image": "redis", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"redis\""}}}]});
                set_pod_status(&client, &ns, &pod, status).await;
            }
        })
    };
    // The timeout is far beyond the test's step bound: only failing fast can pass.
    let opts = ApplyOptions { wait: Some(Duration::from_secs(600)), force_conflicts: false };
    let (tx, rx) = progress();
    let err = timed(backend.apply(&p, &opts, &tx)).await.unwrap_err();
    timed(kubelet).await.unwrap();
    drop(tx);
    match &err {
        Error::WorkloadFailed { object, reason } => {
            assert_eq!(object, "deployment.apps/cache");
            assert!(reason.contains("ImagePullBackOff"), "{reason}");
        }
        other => panic!("expected WorkloadFailed, got {other:?}"),
    }
    assert!(drain(rx).iter().any(|e| e.action == Action::Failed && e.object.kind == "Deployment"));
    let record = timed(backend.get(&p.id)).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert!(record.message.contains("ImagePullBackOff"));
}

#[tokio::test]
async fn wait_covers_the_operator_and_the_custom_resource() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("mongo-wait").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "mongodb", &ns, "db", json!({})).await;
    let kubelet = {
        let (client, ns) = (c.client.clone(), ns.clone());
        tokio::spawn(async move {
            mark_ready(&client, &ns, "name=jac-orc-mongodb-operator").await;
            // Stand in for the operator: it reports the replica set Running.
            let crs = dynamic(&client, &ns, "mongodbcommunity.mongodb.com/v1", "MongoDBCommunity", "mongodbcommunity");
            for _ in 0..300 {
                if exists(&crs, "db").await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let status = json!({"status": {"phase": "Running", "currentMongoDBMembers": 1,
                "currentStatefulSetReplicas": 1, "mongoUri": "mongodb://db-0.db-svc:27017"}});
            timed(crs.patch_status("db", &PatchParams::default(), &Patch::Merge(&status))).await.unwrap();
        })
    };
    let opts = ApplyOptions { wait: Some(Duration::from_secs(60)), force_conflicts: false };
    let (tx, rx) = progress();
    let record = timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    timed(kubelet).await.unwrap();
    drop(tx);
    let ready: Vec<_> = drain(rx).into_iter().filter(|e| e.action == Action::Ready).map(|e| e.line).collect();
    for expected in
        ["deployment.apps/jac-orc-mongodb-operator ready", "mongodbcommunity.mongodbcommunity.mongodb.com/db ready"]
    {
        assert!(ready.iter().any(|l| l == expected), "missing `{expected}` in {ready:?}");
    }
    assert_eq!(record.status, Status::Deployed);
}

#[tokio::test]
async fn wait_times_out_naming_what_is_not_ready() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("timeout").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    // Nobody marks the pod ready.
    let opts = ApplyOptions { wait: Some(Duration::from_secs(2)), force_conflicts: false };
    let err = timed(backend.apply(&p, &opts, &Progress::discard())).await.unwrap_err();
    match &err {
        Error::Timeout { not_ready, .. } => assert_eq!(not_ready, &["deployment.apps/cache"]),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let record = timed(backend.get(&p.id)).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
}

#[tokio::test]
async fn wait_stops_when_the_client_goes_away_and_still_records_the_deploy() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("gone").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    let (tx, rx) = progress();
    drop(rx);
    // Far beyond the step bound: only stopping early can finish in time.
    let opts = ApplyOptions { wait: Some(Duration::from_secs(600)), force_conflicts: false };
    let record = timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    assert_eq!(record.status, Status::Deployed);
    assert!(record.message.contains("disconnected"), "{}", record.message);
    let stored = timed(backend.get(&p.id)).await.unwrap().unwrap();
    assert_eq!(stored.objects.len(), 3);
}

#[tokio::test]
async fn undeploy_removes_one_deployment_and_leaves_another_alone() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("undeploy").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let a = plan(&svc, "redis", &ns, "a", json!({})).await;
    let b = plan(&svc, "redis", &ns, "b", json!({})).await;
    for p in [&a, &b] {
        timed(backend.apply(p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    }
    // The replicaset controller makes a pod for each; the foreground delete must take a's along.
    pods(&c.client, &ns, "pod=a").await;

    let (tx, rx) = progress();
    timed(backend.delete(&a.id, &tx)).await.unwrap();
    drop(tx);
    let mut got = lines(&drain(rx));
    got.sort();
    assert_eq!(got, ["configmap/a deleted", "deployment.apps/a deleted", "service/a deleted"]);

    let client = &c.client;
    for (api_version, kind, plural) in
        [("v1", "Service", "services"), ("apps/v1", "Deployment", "deployments"), ("v1", "ConfigMap", "configmaps")]
    {
        let api = dynamic(client, &ns, api_version, kind, plural);
        assert!(!exists(&api, "a").await, "{kind} a survived");
        assert!(exists(&api, "b").await, "{kind} b was removed");
    }
    let left =
        timed(Api::<Pod>::namespaced(client.clone(), &ns).list(&ListParams::default().labels("pod=a"))).await.unwrap();
    assert!(left.items.is_empty(), "a's pods must go with it (foreground propagation)");
    let ids: Vec<_> = timed(backend.list()).await.unwrap().into_iter().map(|r| r.id.name).collect();
    assert_eq!(ids, ["b"]);
    assert!(matches!(timed(backend.delete(&a.id, &Progress::discard())).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn module_endpoints_are_the_ready_addresses_of_the_grpc_port() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("endpoints").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let mut p = plan(&svc, "python-module", &ns, "mathmod", json!({"module": "math"})).await;
    for o in &mut p.objects {
        strip_grpc_probes_on_old_servers(&c.client, &mut o.manifest).await;
    }
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    assert!(timed(backend.module_endpoints(&p.id)).await.unwrap().is_empty(), "no Endpoints yet");

    // Stand in for the endpoints controller (it needs running pods, which need a kubelet).
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "mathmod"},
        "subsets": [{"addresses": [{"ip": "10.9.8.7"}], "notReadyAddresses": [{"ip": "10.9.8.6"}],
                     "ports": [{"name": "grpc", "port": 50051}, {"name": "metrics", "port": 9000}]}]
    });
    let api = dynamic(&c.client, &ns, "v1", "Endpoints", "endpoints");
    let obj: DynamicObject = serde_json::from_value(endpoints).unwrap();
    timed(api.create(&PostParams::default(), &obj)).await.unwrap();
    assert_eq!(timed(backend.module_endpoints(&p.id)).await.unwrap(), ["10.9.8.7:50051"]);
}

#[tokio::test]
async fn a_new_backend_instance_lists_the_same_records() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("records").await;
    let first = c.backend(&ns);
    let svc = service(&first, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({"memory": "123mb"})).await;
    let stored = timed(first.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    drop(first);

    let second =
        KubeBackend::new(client_from(&c.path).await, KubeOptions::default().orchestrator_namespace(ns.clone()));
    let listed = timed(second.list()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, p.id);
    assert_eq!(listed[0].config, stored.config);
    assert_eq!(listed[0].objects, stored.objects);
    assert_eq!(timed(second.get(&p.id)).await.unwrap().unwrap().config["memory"], "123mb");
}

#[tokio::test]
async fn twenty_concurrent_deploys_keep_every_record_and_object() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("concurrent").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (svc, ns) = (svc.clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            let req = request("redis", &ns, &format!("r{i}"), json!({}));
            svc.deploy(&req, ApplyOptions::default()).await?.finish().await
        }));
    }
    for t in tasks {
        timed(t).await.unwrap().unwrap();
    }
    let records = timed(backend.list()).await.unwrap();
    assert_eq!(records.len(), 20);
    let cms = timed(
        Api::<ConfigMap>::namespaced(c.client.clone(), &ns).list(&ListParams::default().labels("jac-orc/module=redis")),
    )
    .await
    .unwrap();
    let names: std::collections::BTreeSet<_> = cms.items.iter().filter_map(|c| c.metadata.name.clone()).collect();
    assert_eq!(names, (0..20).map(|i| format!("r{i}")).collect());
}

#[tokio::test]
async fn an_invalid_object_is_rejected_with_the_server_message_after_earlier_objects_applied() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("invalid").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let mut p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    // Replicas must be an integer >= 0: the API server refuses this Deployment.
    let deployment = p.objects.iter_mut().find(|o| o.object.kind == "Deployment").unwrap();
    deployment.manifest["spec"]["replicas"] = json!(-3);

    let (tx, rx) = progress();
    let err = timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap_err();
    drop(tx);
    match &err {
        Error::Rejected { object, message } => {
            assert_eq!(object, "deployment.apps/cache");
            assert!(message.contains("spec.replicas"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let got = lines(&drain(rx));
    assert_eq!(got, ["service/cache created", "deployment.apps/cache failed"]);
    let record = timed(backend.get(&p.id)).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert!(record.message.contains("spec.replicas"));
}

#[tokio::test]
async fn field_manager_conflicts_are_reported_unless_forced() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("conflict").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "redis", &ns, "cache", json!({})).await;
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    // Someone else takes ownership of the redis config.
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cache"}, "data": {"redis-config": "maxmemory 1mb\n"}});
    timed(cms.patch("cache", &PatchParams::apply("someone-else").force(), &Patch::Apply(&theirs))).await.unwrap();

    let err = timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap_err();
    match &err {
        Error::Conflict { object, manager, .. } => {
            assert_eq!(object, "configmap/cache");
            assert_eq!(manager, "someone-else");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let opts = ApplyOptions { wait: None, force_conflicts: true };
    let (tx, rx) = progress();
    timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    drop(tx);
    assert!(lines(&drain(rx)).contains(&"configmap/cache configured".to_string()));
}

// === install manifests ===

/// What `kubectl apply -n NS -f FILE` does on a fresh install: create every document, in `NS`
/// when namespaced. (Plain create, like kubectl's client-side apply: fields a 1.20 server does
/// not know yet, such as gRPC probes, are dropped instead of failing the request.)
async fn apply_manifest(client: &kube::Client, file: &str, ns: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests").join(file)).unwrap();
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            docs.push(v);
        }
    }
    for doc in &docs {
        let mut doc = doc.clone();
        strip_grpc_probes_on_old_servers(client, &mut doc).await;
        let doc = &doc;
        let o = planned(doc.clone(), Section::Modules, file).object;
        assert!(
            o.namespace.is_none(),
            "{file}: {} {} hard-codes a namespace; `kubectl apply -n` must decide",
            o.kind,
            o.name
        );
        let gvk = kube::core::GroupVersionKind::gvk(o.group(), o.api_version.rsplit('/').next().unwrap(), &o.kind);
        let (ar, caps) = timed(kube::discovery::pinned_kind(client, &gvk)).await.unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        match timed(api.create(&PostParams::default(), &obj)).await {
            Ok(_) => {}
            // Cluster-scoped objects are shared by the install tests (and earlier runs).
            Err(kube::Error::Api(s)) if s.code == 409 && caps.scope == kube::discovery::Scope::Cluster => {}
            Err(e) => panic!("{file}: {} {} rejected: {e}", o.kind, o.name),
        }
    }
    docs
}

/// Native gRPC probes arrived in Kubernetes 1.24; an older server (the 1.20 test server) drops
/// the `grpc` handler under create and refuses it under server-side apply. Remove probes there so
/// the rest of the object can be tested.
async fn strip_grpc_probes_on_old_servers(client: &kube::Client, manifest: &mut Value) {
    let version = timed(client.apiserver_version()).await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if minor >= 24 {
        return;
    }
    let containers = manifest.pointer_mut("/spec/template/spec/containers").and_then(Value::as_array_mut);
    for c in containers.into_iter().flatten() {
        let c = c.as_object_mut().unwrap();
        c.remove("readinessProbe");
        c.remove("livenessProbe");
    }
}

/// The documented post-install step: `kubectl create clusterrolebinding jac-orc-NS
/// --clusterrole=ROLE --serviceaccount=NS:jac-orc` (a binding's subject namespace cannot come
/// from `kubectl apply -n`).
async fn bind_cluster_role(client: &kube::Client, role: &str, ns: &str) {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("jac-orc-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "jac-orc", "namespace": ns}]
    }))
    .unwrap();
    timed(Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &crb)).await.unwrap();
    // The authorizer learns about new bindings through an informer: wait (bounded) until both
    // the namespaced and the cluster-scoped grant are in effect before asserting anything.
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    for _ in 0..200 {
        if allowed(client, &sa, "get", "", "services", Some(ns)).await
            && allowed(client, &sa, "get", "apiextensions.k8s.io", "customresourcedefinitions", None).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the install's grants never took effect for {sa}");
}

async fn unbind_cluster_role(client: &kube::Client, ns: &str) {
    let _ = timed(
        Api::<ClusterRoleBinding>::all(client.clone()).delete(&format!("jac-orc-{ns}"), &DeleteParams::default()),
    )
    .await;
}

/// Asks the API server whether `user` may do `verb` on `resource` (SubjectAccessReview).
async fn allowed(client: &kube::Client, user: &str, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": ns.unwrap_or("")}}
    });
    let ar = kube::api::ApiResource {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "authorization.k8s.io/v1".into(),
        kind: "SubjectAccessReview".into(),
        plural: "subjectaccessreviews".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: DynamicObject = serde_json::from_value(review).unwrap();
    let out = timed(api.create(&PostParams::default(), &obj)).await.unwrap();
    out.data["status"]["allowed"].as_bool().unwrap_or(false)
}

/// The namespaced rules a Deploy of the built-in templates needs.
const DEPLOY_NEEDS: &[(&str, &str)] = &[
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("", "pods"),
    ("", "endpoints"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("mongodbcommunity.mongodb.com", "mongodbcommunity"),
];

#[tokio::test]
async fn namespaced_install_grants_what_deploy_needs_in_its_namespace_only() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("install").await;
    let elsewhere = c.namespace("elsewhere").await;
    let docs = apply_manifest(&c.client, "jac-orc.yaml", &ns).await;
    bind_cluster_role(&c.client, "jac-orc-crds", &ns).await;
    let sa = format!("system:serviceaccount:{ns}:jac-orc");

    for (group, resource) in DEPLOY_NEEDS {
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(
                allowed(&c.client, &sa, verb, group, resource, Some(&ns)).await,
                "{verb} {group}/{resource} in {ns}"
            );
        }
        assert!(
            !allowed(&c.client, &sa, "create", group, resource, Some(&elsewhere)).await,
            "create {resource} outside {ns}"
        );
    }
    for verb in ["get", "list", "watch", "create", "patch"] {
        assert!(
            allowed(&c.client, &sa, verb, "apiextensions.k8s.io", "customresourcedefinitions", None).await,
            "{verb} crds"
        );
    }
    // Nothing cluster-wide beyond CRDs: no namespaces, no cluster RBAC, no nodes, no CRD deletion.
    for (verb, group, resource) in [
        ("create", "", "namespaces"),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("list", "", "nodes"),
        ("list", "", "secrets"),
    ] {
        assert!(
            !allowed(&c.client, &sa, verb, group, resource, None).await,
            "must not {verb} {group}/{resource} cluster-wide"
        );
    }
    assert_mode(&docs, true);
    unbind_cluster_role(&c.client, &ns).await;
}

#[tokio::test]
async fn cluster_wide_install_grants_deploy_in_every_namespace() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("install-cw").await;
    let elsewhere = c.namespace("elsewhere-cw").await;
    let docs = apply_manifest(&c.client, "jac-orc-cluster-wide.yaml", &ns).await;
    bind_cluster_role(&c.client, "jac-orc-cluster-wide", &ns).await;
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    for (group, resource) in DEPLOY_NEEDS {
        for verb in ["get", "list", "create", "patch", "delete"] {
            assert!(
                allowed(&c.client, &sa, verb, group, resource, Some(&elsewhere)).await,
                "{verb} {group}/{resource} in {elsewhere}"
            );
        }
    }
    for verb in ["get", "create", "patch"] {
        assert!(allowed(&c.client, &sa, verb, "", "namespaces", None).await, "{verb} namespaces");
    }
    for (verb, group, resource) in [
        ("list", "", "nodes"),
        ("delete", "", "namespaces"),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "", "persistentvolumes"),
    ] {
        assert!(!allowed(&c.client, &sa, verb, group, resource, None).await, "must not {verb} {group}/{resource}");
    }
    assert_mode(&docs, false);
    unbind_cluster_role(&c.client, &ns).await;
}

/// The Deployment runs our image with gRPC probes and the MODULES Secret; restricted mode is
/// on only in the namespaced install.
fn assert_mode(docs: &[Value], restricted: bool) {
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["grpc"]["port"], 8000);
    assert_eq!(container["livenessProbe"]["grpc"]["port"], 8000);
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], "jac-orc");
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env["JAC_ORC_LISTEN"]["value"], "0.0.0.0:8000");
    assert_eq!(container["args"], json!(["serve", "--backend", "kube"]));
    assert_eq!(env.get("JAC_ORC_RESTRICTED_NAMESPACE").map(|e| e["value"] == "true").unwrap_or(false), restricted);
}

#[tokio::test]
async fn through_the_server_deploys_survive_a_restart_and_modules_replay_is_idempotent() {
    use jac_splice_orc::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
    use tokio_stream::StreamExt;

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("server").await;

    // First orchestrator: deploy over gRPC and over REST.
    let (addr, stop, handle) = crate::support::serve(Arc::new(service(&c.backend(&ns), &ns))).await;
    let mut grpc = timed(OrchestratorClient::connect(format!("http://{addr}"))).await.unwrap();
    let req = pb::DeployRequest {
        module: "redis".into(),
        config: Some(crate::support::struct_of(json!({"name": "cache", "namespace": ns, "memory": "64mb"}))),
        ..Default::default()
    };
    let mut stream = timed(grpc.deploy(req)).await.unwrap().into_inner();
    let (mut events, mut summary) = (Vec::new(), None);
    while let Some(item) = timed(stream.next()).await {
        match item.unwrap().event {
            Some(Event::Object(o)) => events.push(o.line),
            Some(Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    assert_eq!(events, ["service/cache created", "deployment.apps/cache created", "configmap/cache created"]);
    let d = summary.expect("summary").deployment.unwrap();
    assert_eq!((d.backend(), d.status()), (pb::Backend::Kubernetes, pb::DeploymentStatus::Deployed));
    assert_eq!(d.endpoints, [format!("cache.{ns}.svc:6379")]);
    let body: Value = timed(
        reqwest::Client::new()
            .post(format!("http://{addr}/deployment"))
            .json(&json!({"module": "redis", "config": {"name": "cache2", "namespace": ns}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["results"],
        json!(["service/cache2 created", "deployment.apps/cache2 created", "configmap/cache2 created"])
    );
    let _ = stop.send(());
    timed(handle).await.unwrap();

    // A restarted orchestrator (new client, new backend) lists exactly what exists.
    let backend = Arc::new(KubeBackend::new(
        client_from(&c.path).await,
        KubeOptions::default().orchestrator_namespace(ns.clone()),
    ));
    let svc = Arc::new(service(&backend, &ns));
    let (addr, stop, handle) = crate::support::serve(svc.clone()).await;
    let mut grpc = timed(OrchestratorClient::connect(format!("http://{addr}"))).await.unwrap();
    let list =
        timed(grpc.list_deployments(pb::ListDeploymentsRequest { namespace: ns.clone(), module: String::new() }))
            .await
            .unwrap()
            .into_inner();
    let names: Vec<_> = list.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["cache", "cache2"]);

    // Startup MODULES for what is already deployed: applied twice, nothing is written.
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let rv = || async { timed(cms.get("cache")).await.unwrap().metadata.resource_version };
    let before = rv().await;
    let modules = format!(
        r#"{{"{ns}": {{"redis": {{"cache": {{"module": "redis", "version": "latest", "config": {{"memory": "64mb"}}}}}}}}}}"#
    );
    for _ in 0..2 {
        let reqs = jac_splice_orc::startup::parse(&modules).unwrap();
        assert_eq!(timed(jac_splice_orc::startup::replay(svc.clone(), reqs)).await, 1);
    }
    assert_eq!(before, rv().await, "an idempotent replay writes nothing");
    let _ = stop.send(());
    timed(handle).await.unwrap();
}

// === ModuleProxy through a Service's Endpoints ===

/// This machine's address on its default route: Endpoints may not hold loopback addresses, so
/// the module server listens there. `None` without a non-loopback IPv4 address.
fn routable_local_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP "connect" only picks the route and source address; nothing is sent.
    socket.connect("192.0.2.1:9").or_else(|_| socket.connect("10.255.255.1:9")).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `python3 -m jac_splice.server MODULE` on `host`, and the port it printed.
async fn module_server(module: &str, host: &str) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = tokio::process::Command::new(python)
        .args(["-m", "jac_splice.server", module, "--host", host, "--port", "0"])
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

#[tokio::test]
async fn module_proxy_reaches_the_module_server_behind_the_services_endpoints() {
    use jac_splice_orc::pb::{self, module_proxy_client::ModuleProxyClient, value::Kind};

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let Some(ip) = routable_local_ip() else {
        eprintln!("skipping: no non-loopback IPv4 address for Endpoints (they may not point at 127.0.0.0/8)");
        return;
    };
    let (mut server_process, port) = module_server("math", &ip.to_string()).await;
    let ns = c.namespace("proxy").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));

    // The python-module template, with a selector-less Service: Endpoints are then ours to write
    // (there is no kubelet to run the pods the endpoints controller would list).
    let mut p = plan(&svc, "python-module", &ns, "mathmod", json!({"module": "math"})).await;
    for o in &mut p.objects {
        strip_grpc_probes_on_old_servers(&c.client, &mut o.manifest).await;
        if o.object.kind == "Service" {
            o.manifest.pointer_mut("/spec").and_then(Value::as_object_mut).unwrap().remove("selector");
        }
    }
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "mathmod"},
        "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "grpc", "port": port}]}]
    });
    let api = dynamic(&c.client, &ns, "v1", "Endpoints", "endpoints");
    timed(api.create(&PostParams::default(), &serde_json::from_value(endpoints).unwrap())).await.unwrap();
    let endpoint = format!("{ip}:{port}");
    assert_eq!(timed(backend.module_endpoints(&p.id)).await.unwrap(), std::slice::from_ref(&endpoint));

    // jac-orc on loopback with this backend, called through ModuleProxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(jac_splice_orc::server::serve(listener, svc.clone(), async {
        let _ = stopped.await;
    }));
    let mut proxy = timed(ModuleProxyClient::connect(format!("http://{addr}"))).await.unwrap();
    let target = |name: &str| Some(pb::ProxyTarget { deployment: name.into(), namespace: ns.clone() });
    let describe = |name: &str| pb::ProxyDescribeRequest {
        target: target(name),
        request: Some(pb::DescribeRequest { session: "kube-proxy".into() }),
    };

    let d = timed(proxy.describe(describe("mathmod"))).await.unwrap().into_inner();
    assert_eq!((d.module.as_str(), d.pid), ("math", i64::from(server_process.id().unwrap())));
    let call = pb::ProxyCallRequest {
        target: target("mathmod"),
        request: Some(pb::CallRequest {
            session: "kube-proxy".into(),
            path: vec!["sqrt".into()],
            args: vec![pb::Value { kind: Some(Kind::FloatValue(16.0)) }],
            ..Default::default()
        }),
    };
    let r = timed(proxy.call(call)).await.unwrap().into_inner();
    assert_eq!(r.result, Some(pb::value_response::Result::Value(pb::Value { kind: Some(Kind::FloatValue(4.0)) })));

    let err = timed(proxy.describe(describe("nope"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("nope"), "{err:?}");

    // The module server goes away: UNAVAILABLE naming the endpoint from the Endpoints object.
    server_process.kill().await.unwrap();
    let err = timed(proxy.describe(describe("mathmod"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&endpoint), "{err:?}");

    let _ = stop.send(());
    timed(handle).await.unwrap().unwrap();
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

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_a_kubeconfig_picks_the_kubernetes_backend_and_says_why() {
    use std::io::BufRead;
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("serve").await;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "auto", "--listen", "127.0.0.1:0", "--namespace", &ns])
        .arg("--kubeconfig")
        .arg(&c.path)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("KUBECONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jac-orc starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::task::block_in_place(|| wait_for_log(&mut lines, "jac-orc listening on "));
    assert!(log.iter().any(|l| l.contains("backend: kubernetes") && l.contains("kubeconfig")), "{log:#?}");
    let addr =
        log.last().unwrap().split("jac-orc listening on ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    // Keep draining the log so the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.take(100_000).for_each(drop));

    let body: Value = timed(
        reqwest::Client::new()
            .post(format!("http://{addr}/deployment"))
            .json(&json!({"module": "redis", "config": {"name": "via-cli"}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["deployment"]["backend"], "kubernetes", "{body}");
    assert_eq!(body["deployment"]["namespace"], ns.as_str());
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    assert!(timed(cms.get("via-cli")).await.is_ok(), "the ConfigMap exists in the cluster");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let _ = drain.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_auto_without_a_cluster_uses_the_local_backend_and_says_why() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "auto", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", data.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jac-orc starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::task::block_in_place(|| wait_for_log(&mut lines, "jac-orc listening on "));
    assert!(log.iter().any(|l| l.contains("backend: local")), "{log:#?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
}
