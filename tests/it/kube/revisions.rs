//! Revisions on Kubernetes: the history in the JacDeployment's annotation (no secret in it),
//! rollback, diff by server-side dry run against the live objects, and pruning of an object a
//! new template version no longer renders.

use super::*;
use jac_splice_orc::backend::kube::ANNOTATION_HISTORY;
use jac_splice_orc::service::DiffView;

/// Module `pair`: version `v1` renders ConfigMaps `<name>` and `<second>` (default `duo-b`), `v2`
/// only `<name>`; `token` is a generated secret both hold.
fn pair_templates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let placeholders = "placeholders:\n  name:\n    type: string\n    default: pair\n  second:\n    type: string\n    default: duo-b\n  namespace:\n    type: string\n    default: \"\"\n  greeting:\n    type: string\n    default: hello\n  token:\n    type: string\n    secret: true\n";
    let cm = |suffix: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{{suffix}}}}}\n  namespace: {{{{namespace}}}}\ndata:\n  greeting: {{{{greeting}}}}\n  token: {{{{token}}}}\n")
    };
    for (version, files) in [("v1", vec!["name", "second"]), ("v2", vec!["name"])] {
        let v = dir.path().join("pair").join(version);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("placeholders.yaml"), placeholders).unwrap();
        for f in files {
            std::fs::write(v.join(format!("{f}.yaml")), cm(f)).unwrap();
        }
    }
    dir
}

fn service_over(backend: &Arc<KubeBackend>, ns: &str, catalog: Catalog) -> Arc<Service> {
    let settings = Settings { namespace: ns.into(), restricted_namespace: false, ..Settings::default() };
    Arc::new(Service::new(Arc::new(catalog), backend.clone(), settings))
}

async fn deploy(svc: &Service, req: DeploymentRequest) -> Vec<String> {
    use futures::StreamExt;
    let mut stream = timed(svc.deploy(&Caller::Operator, &req, ApplyOptions::default())).await.expect("deploys");
    let mut out = Vec::new();
    while let Some(event) = timed(stream.next()).await {
        match event {
            jac_splice_orc::service::Event::Object(ev) => out.push(ev.line),
            jac_splice_orc::service::Event::Done(_) => return out,
            jac_splice_orc::service::Event::Failed(e) => panic!("deploy failed: {e}"),
        }
    }
    panic!("the stream ended without an outcome")
}

fn id(ns: &str, module: &str, name: &str) -> jac_splice_orc::identity::DeploymentId {
    jac_splice_orc::identity::DeploymentId::new(ns, module, name).unwrap()
}

fn changed_lines(view: &DiffView) -> Vec<String> {
    view.objects.iter().filter(|o| o.action != Action::Unchanged).map(|o| o.line.clone()).collect()
}

#[tokio::test]
async fn history_rollback_and_a_diff_by_server_dry_run() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("revs").await;
    let backend = c.backend(&ns);
    let svc = service_over(&backend, &ns, Catalog::builtin());
    deploy(&svc, request("redis", &ns, "cache", json!({"memory": "64mb"}))).await;
    deploy(&svc, request("redis", &ns, "cache", json!({"memory": "128mb"}))).await;
    let cache = id(&ns, "redis", "cache");
    let history = timed(svc.history(&Caller::Operator, &cache)).await.unwrap();
    assert_eq!(history.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((&history[0].config["memory"], &history[1].config["memory"]), (&json!("64mb"), &json!("128mb")));
    let jd = timed(Api::<JacDeployment>::namespaced(c.client.clone(), &ns).get("cache")).await.unwrap();
    assert!(jd.metadata.annotations.unwrap_or_default().contains_key(ANNOTATION_HISTORY));

    let run = timed(svc.rollback(&Caller::Operator, &cache, None, ApplyOptions::default())).await.unwrap();
    timed(run.finish()).await.expect("rolls back");
    assert_eq!(timed(backend.get(&cache)).await.unwrap().unwrap().config["memory"], "64mb");
    let cm = timed(Api::<ConfigMap>::namespaced(c.client.clone(), &ns).get("cache")).await.unwrap();
    assert!(format!("{:?}", cm.data).contains("64mb"), "{:?}", cm.data);
    assert_eq!(timed(svc.history(&Caller::Operator, &cache)).await.unwrap().len(), 3);

    // The diff is a server-side dry run against the live objects.
    let same = timed(svc.diff(&Caller::Operator, &request("redis", &ns, "cache", json!({})), true)).await.unwrap();
    assert!(!same.changed, "{same:?}");
    assert_eq!(same.objects.len(), 3, "{same:?}");
    let other = request("redis", &ns, "cache", json!({"memory": "32mb"}));
    let changed = timed(svc.diff(&Caller::Operator, &other, true)).await.unwrap();
    assert!(changed.changed);
    assert!(changed_lines(&changed).contains(&"configmap/cache configured".to_string()), "{changed:?}");
    // Nothing was applied by the diff.
    assert_eq!(timed(backend.get(&cache)).await.unwrap().unwrap().config["memory"], "64mb");
    // Without reused values, the default memory is a change too.
    let reset = timed(svc.diff(&Caller::Operator, &request("redis", &ns, "cache", json!({})), false)).await.unwrap();
    assert!(reset.changed, "{reset:?}");
}

#[tokio::test]
async fn a_new_version_prunes_what_it_no_longer_renders_and_a_rollback_brings_it_back() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("prune").await;
    let backend = c.backend(&ns);
    let templates = pair_templates();
    let svc = service_over(&backend, &ns, Catalog::directory_only(templates.path()).unwrap());
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let versioned = |version: &str| DeploymentRequest {
        version: Some(version.into()),
        ..request("pair", &ns, "duo", json!({"greeting": "hi"}))
    };
    deploy(&svc, versioned("v1")).await;
    assert!(timed(cms.get_opt("duo-b")).await.unwrap().is_some());

    // v2 no longer renders duo-b: a diff says so, and the deploy deletes it.
    let view = timed(svc.diff(&Caller::Operator, &versioned("v2"), true)).await.unwrap();
    assert!(changed_lines(&view).contains(&"configmap/duo-b deleted".to_string()), "{view:?}");
    assert!(timed(cms.get_opt("duo-b")).await.unwrap().is_some(), "a diff deletes nothing");
    let lines = deploy(&svc, versioned("v2")).await;
    assert!(lines.contains(&"configmap/duo-b deleted".to_string()), "{lines:?}");
    assert!(timed(cms.get_opt("duo-b")).await.unwrap().is_none(), "pruned");
    assert!(timed(cms.get_opt("duo")).await.unwrap().is_some());

    // The generated secret never reaches the history annotation; a rollback keeps it.
    let duo = id(&ns, "pair", "duo");
    let token = timed(backend.get(&duo)).await.unwrap().unwrap().config["token"].as_str().unwrap().to_string();
    let jd = timed(Api::<JacDeployment>::namespaced(c.client.clone(), &ns).get("duo")).await.unwrap();
    let annotation = jd.metadata.annotations.unwrap_or_default()[ANNOTATION_HISTORY].clone();
    assert!(!annotation.contains(&token), "{annotation}");

    let run = timed(svc.rollback(&Caller::Operator, &duo, Some(1), ApplyOptions::default())).await.unwrap();
    timed(run.finish()).await.expect("rolls back");
    let back = timed(cms.get_opt("duo-b")).await.unwrap().expect("duo-b is back");
    assert_eq!(back.data.unwrap_or_default()["token"], token);
    let history = timed(svc.history(&Caller::Operator, &duo)).await.unwrap();
    assert_eq!(history.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(), ["v1", "v2", "v1"]);
}
