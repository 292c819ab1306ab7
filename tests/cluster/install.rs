//! Installing the orchestrator with its manifest: Ready through its own probe, its own
//! ServiceAccount and RBAC, the Service on ports 80 and 8000, deployments that survive a replaced
//! pod, `MODULES` replayed at start, the namespaced install's limits, and templates from a
//! ConfigMap volume.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::support::*;

/// Asks the API server whether `user` may do `verb` on `resource` (SubjectAccessReview).
async fn allowed(client: &kube::Client, user: &str, verb: &str, group: &str, resource: &str, ns: &str) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": ns}}
    });
    let ar = kube::api::ApiResource {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "authorization.k8s.io/v1".into(),
        kind: "SubjectAccessReview".into(),
        plural: "subjectaccessreviews".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let out = timed(api.create(&PostParams::default(), &serde_json::from_value(review).unwrap())).await.unwrap();
    out.data["status"]["allowed"].as_bool().unwrap_or(false)
}

#[tokio::test]
async fn kubectl_apply_gives_an_orchestrator_ready_through_its_own_probe_with_its_own_rbac() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("install", None).await;
    let ns = orc.namespace.clone();
    let spec = orc.pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("jac-orc"));
    let container = &spec.containers[0];
    // Ready was decided by this exec probe alone: it asks the server's gRPC health service.
    let probe = container.readiness_probe.as_ref().and_then(|p| p.exec.as_ref()).expect("an exec readiness probe");
    assert_eq!(probe.command.as_deref().unwrap()[..2], ["/usr/local/bin/jac-orc".to_string(), "probe".to_string()]);
    node.kubectl(&["exec", "-n", &ns, orc.pod_name(), "--", "/usr/local/bin/jac-orc", "probe", "--port", "8000"]).await;
    let (ok, _, err) = node
        .kubectl_status(
            &["exec", "-n", &ns, orc.pod_name(), "--", "/usr/local/bin/jac-orc", "probe", "--port", "1"],
            None,
        )
        .await;
    assert!(!ok, "the probe must fail where nothing listens: {err}");

    // In-cluster configuration, with the pod's ServiceAccount; no certificate is mounted, so
    // plaintext, said at start.
    let logs = node.kubectl(&["logs", "-n", &ns, orc.pod_name()]).await;
    assert!(logs.contains("backend: kubernetes") && logs.contains("in-cluster"), "{logs}");
    assert!(logs.contains("serving plaintext"), "{logs}");
    assert!(logs.contains("TokenReview"), "{logs}");

    // Its own RBAC, not cluster-admin.
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    assert!(allowed(&node.client, &sa, "create", "apps", "deployments", &ns).await);
    assert!(allowed(&node.client, &sa, "patch", "", "services", &ns).await);
    for (verb, group, resource) in
        [("list", "", "nodes"), ("create", "", "namespaces"), ("create", "apps", "deployments")]
    {
        let scope = if resource == "deployments" { "kube-system" } else { "" };
        assert!(!allowed(&node.client, &sa, verb, group, resource, scope).await, "must not {verb} {resource} {scope}");
    }

    // The REST API on the pod, and the Service: 80 like the original (through kube-proxy), 8000 for gRPC.
    let anonymous = reqwest::Client::builder().timeout(STEP).build().unwrap();
    let r = timed(anonymous.get(format!("http://{}:8000/templates", orc.ip())).send()).await.unwrap();
    assert_eq!(r.status(), 401, "no token, no templates");
    let (status, templates) = orc.get("/templates").await;
    assert_eq!(status, 200, "{templates}");
    assert!(templates.to_string().contains("python-module"), "{templates}");
    let svc = timed(Api::<Service>::namespaced(node.client.clone(), &ns).get("jac-orc")).await.unwrap();
    let svc_spec = svc.spec.unwrap();
    let ports: Vec<(Option<String>, i32)> = svc_spec.ports.unwrap().into_iter().map(|p| (p.name, p.port)).collect();
    assert_eq!(ports, [(Some("http".into()), 80), (Some("grpc".into()), 8000)]);
    let cluster_ip = svc_spec.cluster_ip.unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let started = Instant::now();
    let mut answer = None;
    // kube-proxy writes the Service's rules a moment after the Endpoints appear: retry, bounded.
    for _ in 0..120 {
        if let Ok(r) = http.get(format!("http://{cluster_ip}:80/healthz")).send().await {
            answer = Some((r.status().as_u16(), r.text().await.unwrap_or_default()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, text) = answer.expect("the Service's port 80 answers");
    assert_eq!(code, 200, "{text}");
    timing("Service ClusterIP:80 answering after the pod was Ready", started.elapsed());
}

#[tokio::test]
async fn a_replacement_orchestrator_lists_the_same_deployments_and_replays_modules() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("replace", None).await;
    let ns = orc.namespace.clone();
    let (status, body) = orc
        .deploy(json!({"module": "redis", "config": small(json!({"name": "cache", "memory": "64mb"})), "wait": true}))
        .await;
    assert_eq!(status, 200, "{body}");

    // MODULES (the original's format) names a second deployment; the Secret feeds the next pod.
    let modules = json!({ns.clone(): {"redis": {"replayed": {"module": "redis", "version": "latest",
        "config": small(json!({"memory": "64mb"}))}}}});
    let secrets = Api::<Secret>::namespaced(node.client.clone(), &ns);
    let patch = json!({"stringData": {"MODULES": modules.to_string()}});
    timed(secrets.patch("jac-orc", &PatchParams::default(), &Patch::Merge(&patch))).await.unwrap();

    let started = Instant::now();
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(node.client.clone(), &ns);
    timed(pods.delete(orc.pod_name(), &DeleteParams::default())).await.unwrap();
    let pod = ready_pod(&node.client, &ns, "app=jac-orc", Some(orc.pod_name())).await;
    timing("orchestrator pod deleted → replacement Ready", started.elapsed());
    let replacement = node.orchestrator(ns.clone(), pod);
    assert_ne!(replacement.pod_name(), orc.pod_name());

    // The replay runs after the server starts listening: wait for it (bounded).
    let mut names = Vec::new();
    for _ in 0..240 {
        names = replacement.deployment_names().await;
        if names.contains(&"replayed".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(names, ["cache", "replayed"], "the replacement lists what exists, plus MODULES");
    timing("replacement Ready → MODULES deployment listed", started.elapsed());
    let replayed = ready_pod(&node.client, &ns, "pod=replayed", None).await;
    assert_eq!(replayed.metadata.namespace.as_deref(), Some(ns.as_str()));
    let (status, body) = replacement.get(&format!("/deployment/{ns}/redis/cache")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_namespaced_install_may_not_deploy_into_another_namespace() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let other = node.namespace("elsewhere").await;
    // Restricted mode off: the request reaches Kubernetes, whose RBAC (the namespaced Role) says no.
    let open = |text: &str| {
        let from = r#"{name: JAC_ORC_RESTRICTED_NAMESPACE, value: "true"}"#;
        assert!(text.contains(from), "the manifest sets restricted mode as {from}");
        text.replace(from, r#"{name: JAC_ORC_RESTRICTED_NAMESPACE, value: "false"}"#)
    };
    let orc = node.install("nsonly", Some(&open)).await;
    let (status, body) = orc
        .deploy(json!({"module": "redis", "config": small(json!({"name": "escape", "namespace": other, "memory": "64mb"}))}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "FORBIDDEN", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&other), "the error names the namespace: {detail}");
    assert!(pods(&node.client, &other, "pod=escape").await.is_empty());
    let listed: Value = orc.get("/deployment").await.1;
    assert!(!listed.to_string().contains("escape"), "no record of a refused deploy: {listed}");
}

/// `--manifests-path` on a ConfigMap volume, as a cluster admin would ship custom templates: the
/// kubelet mounts every file (and, with nested `items[].path`, every folder) as a link into a
/// hidden `..data/` directory.
#[tokio::test]
async fn templates_from_a_config_map_volume_load() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("configmap", None).await;
    let ns = orc.namespace.clone();
    let builtin = |f: &str| {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/redis/latest").join(f))
            .unwrap()
    };
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "jac-orc-templates"},
        "data": {"placeholders": builtin("placeholders.yaml"), "redis": builtin("redis.yaml")}
    }))
    .unwrap();
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(node.client.clone(), &ns);
    timed(cms.create(&PostParams::default(), &cm)).await.unwrap();
    // Lists merge by name (volumes, containers, env) and mountPath (volumeMounts).
    let patch = json!({"spec": {"template": {"spec": {
        "volumes": [{"name": "templates", "configMap": {"name": "jac-orc-templates", "items": [
            {"key": "placeholders", "path": "redis/from-configmap/placeholders.yaml"},
            {"key": "redis", "path": "redis/from-configmap/redis.yaml"}]}}],
        "containers": [{"name": "jac-orc",
            "volumeMounts": [{"name": "templates", "mountPath": "/templates", "readOnly": true}],
            "env": [{"name": "MANIFESTS_PATH", "value": "/templates"}]}]}}}});
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(node.client.clone(), &ns);
    timed(deployments.patch("jac-orc", &PatchParams::default(), &Patch::Strategic(&patch))).await.unwrap();
    // Two replicas run: the new template's pod is the one that mounts the ConfigMap, not merely
    // another Ready pod (the old ReplicaSet's second pod is one until the rollout replaces it).
    let pod = ready_pod_mounting(&node.client, &ns, "templates").await;
    let orc = node.orchestrator(ns.clone(), pod);
    let (status, templates) = orc.get("/templates").await;
    assert_eq!(status, 200, "{templates}");
    assert!(templates.to_string().contains("from-configmap"), "{templates}");
    let (status, body) = orc
        .post(
            "/deployment/dry_run",
            json!({"module": "redis", "version": "from-configmap", "config": {"name": "fromcm"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("fromcm") && text.contains("maxmemory"),
        "rendered with the ConfigMap's placeholders: {text}"
    );
}

/// Waits (bounded) for a Ready jac-orc pod whose spec has the volume `volume`.
async fn ready_pod_mounting(client: &kube::Client, ns: &str, volume: &str) -> k8s_openapi::api::core::v1::Pod {
    let api = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
    let started = std::time::Instant::now();
    while started.elapsed() < STEP {
        let pods = timed(api.list(&kube::api::ListParams::default().labels("app=jac-orc"))).await.unwrap();
        let mounting = |p: &&k8s_openapi::api::core::v1::Pod| {
            p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| v.name == volume)
        };
        if let Some(p) = pods.items.iter().filter(mounting).find(|p| is_ready(p)) {
            return p.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let why = crate::support::diagnose(client, ns, "app=jac-orc").await;
    panic!("no Ready jac-orc pod mounting {volume} in {ns} after {STEP:?}\n{why}");
}
