//! The CLI against the test API server (`scripts/k8s-test-cluster.sh run -- cargo test --test it
//! -- cli::`): `template`'s stream is accepted by the API server, and `deploy --dry-run` against
//! `jac-orc serve --backend kube` changes nothing. Skipped (saying why) without a test API server,
//! unless `JAC_ORC_REQUIRE_K8S=1`.

use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::Value;

use super::{JacOrc, Ran};
use crate::support::{within, yaml_docs, KubeServe};

async fn client() -> kube::Client {
    let path = std::env::var_os("JAC_ORC_TEST_KUBECONFIG").expect("KubeServe checked it");
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn on(server: &KubeServe, args: &[&str]) -> Ran {
    tokio::task::block_in_place(|| JacOrc::new(&server.url(), args).token(&server.token).run())
}

/// Server-side dry-run apply of every document, as `kubectl apply --server-side --dry-run=server`.
async fn server_side_dry_run(client: &kube::Client, docs: &[Value]) -> Vec<String> {
    let mut applied = Vec::new();
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = kube::core::GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap());
        let (ar, _) = within(kube::discovery::pinned_kind(client, &gvk)).await.expect("a served kind");
        let ns = doc["metadata"]["namespace"].as_str().expect("namespaced");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let name = doc["metadata"]["name"].as_str().unwrap();
        let params = PatchParams::apply("cli-test").dry_run();
        let obj = within(api.patch(name, &params, &Patch::Apply(doc))).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(obj.metadata.labels.unwrap()["jac-orc/deployment"], "cache");
        applied.push(format!("{}/{name}", doc["kind"].as_str().unwrap()));
    }
    applied
}

#[tokio::test(flavor = "multi_thread")]
async fn template_output_with_no_server_is_accepted_by_the_api_server() {
    let Some(server) = KubeServe::start("cli-tpl").await else {
        return;
    };
    let ns = server.namespace.clone();
    // No orchestrator is asked: the CLI gets an address where nothing listens.
    let out = tokio::task::block_in_place(|| JacOrc::offline(&["template", "redis", "cache", "-n", &ns]).run());
    let stream = out.out().to_string();
    let docs = yaml_docs(&stream);
    let client = client().await;
    assert_eq!(server_side_dry_run(&client, &docs).await, ["Service/cache", "Deployment/cache", "ConfigMap/cache"]);

    // kubectl itself takes the stream (scripts/test.sh installs it).
    let kubeconfig = std::env::var("JAC_ORC_TEST_KUBECONFIG").unwrap();
    let mut kubectl = match Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            assert_ne!(std::env::var("JAC_ORC_REQUIRE_K8S").as_deref(), Ok("1"), "kubectl: {e}");
            eprintln!("skipping the kubectl half: {e}");
            server.stop().await;
            return;
        }
    };
    use std::io::Write;
    kubectl.stdin.take().unwrap().write_all(stream.as_bytes()).unwrap();
    let done = tokio::task::block_in_place(|| kubectl.wait_with_output()).unwrap();
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "kubectl: {said}{}", String::from_utf8_lossy(&done.stderr));
    for object in ["service/cache", "deployment.apps/cache", "configmap/cache"] {
        assert!(said.lines().any(|l| l.starts_with(object) && l.contains("(server dry run)")), "{said}");
    }
    // Nothing was created by either.
    let services = within(Api::<Service>::namespaced(client.clone(), &ns).list(&ListParams::default())).await.unwrap();
    assert!(services.items.is_empty());
    server.stop().await;
}

/// The deployment record Secrets in the orchestrator's namespace.
/// Deployment records in `ns`: JacDeployments, and the Secrets jac-orc labels as its own.
async fn records(client: &kube::Client, ns: &str) -> usize {
    use jac_splice_orc::backend::kube::resource::JacDeployment;
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let all = within(api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=jac-orc"))).await.unwrap();
    let jds = within(Api::<JacDeployment>::namespaced(client.clone(), ns).list(&ListParams::default())).await.unwrap();
    all.items.len() + jds.items.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_dry_run_on_kubernetes_is_a_server_side_dry_run_that_changes_nothing() {
    let Some(server) = KubeServe::start("cli-dry").await else {
        return;
    };
    let ns = server.namespace.clone();
    let client = client().await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);

    let out = on(&server, &["deploy", "redis", "cache", "-n", &ns, "--set", "memory=64mb", "--dry-run"]);
    let out = out.out().to_string();
    for object in ["service/cache", "deployment.apps/cache", "configmap/cache"] {
        assert!(out.lines().any(|l| l == format!("{object} created (server dry run)")), "{out}");
    }
    assert!(out.contains("3 to create, 0 to configure, 0 unchanged"), "{out}");
    assert!(within(cms.get_opt("cache")).await.unwrap().is_none(), "no object was created");
    assert_eq!(records(&client, &ns).await, 0, "no record was written");
    assert!(on(&server, &["get", "redis", "cache", "-n", &ns]).err().contains("not found"));

    // Into a namespace that does not exist: it would be created, and is not.
    let missing = format!("{ns}-missing");
    let out = on(&server, &["deploy", "redis", "cache", "-n", &missing, "--dry-run"]).out().to_string();
    assert!(out.contains(&format!("namespace/{missing} created (target namespace; server dry run)")), "{out}");
    assert!(out.contains("configmap/cache created (server dry run; not validated"), "{out}");
    let namespaces = Api::<Namespace>::all(client.clone());
    assert!(within(namespaces.get_opt(&missing)).await.unwrap().is_none(), "the namespace was not created");

    // Deployed for real; a changed dry run reports the change, and the live objects keep their
    // resourceVersion (nothing was written) and the record its content.
    on(&server, &["deploy", "redis", "cache", "-n", &ns, "--set", "memory=64mb"]).out();
    let rv = || async { within(cms.get("cache")).await.unwrap().metadata.resource_version };
    let before = rv().await;
    let record = on(&server, &["get", "redis", "cache", "-n", &ns, "-o", "json"]).json();
    let out =
        on(&server, &["deploy", "redis", "cache", "-n", &ns, "--set", "memory=128mb", "--dry-run"]).out().to_string();
    assert!(out.lines().any(|l| l == "configmap/cache configured (server dry run)"), "{out}");
    assert!(out.lines().any(|l| l == "service/cache unchanged (server dry run)"), "{out}");
    // The Deployment's pod template carries the ConfigMap's digest (jac-orc.io/config-hash), so
    // a changed ConfigMap configures it too: that is what rolls the pods.
    assert!(out.lines().any(|l| l == "deployment.apps/cache configured (server dry run)"), "{out}");
    assert_eq!(rv().await, before);
    let data = within(cms.get("cache")).await.unwrap().data.unwrap();
    assert!(data["redis-config"].contains("maxmemory 64mb"), "{data:?}");
    assert_eq!(on(&server, &["get", "redis", "cache", "-n", &ns, "-o", "json"]).json(), record);

    // What the API server rejects is reported as the deploy would report it, and applies nothing:
    // a Service name must start with a letter (DNS-1035), which a deployment name need not.
    let r = on(&server, &["deploy", "redis", "1cache", "-n", &ns, "--dry-run"]);
    assert!(r.err().contains("service/1cache was rejected"), "{}", r.stderr);
    assert!(on(&server, &["get", "redis", "1cache", "-n", &ns]).err().contains("not found"));
    assert_eq!(rv().await, before);

    let status = on(&server, &["status", "redis", "cache", "-n", &ns]).out().to_string();
    assert!(status.lines().any(|l| l.starts_with("STATUS") && l.ends_with("deployed")), "{status}");
    assert!(status.contains(&format!("cache.{ns}.svc:6379")), "{status}");
    on(&server, &["undeploy", "redis", "cache", "-n", &ns]).out();
    server.stop().await;
}
