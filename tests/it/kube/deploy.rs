//! Deploys and undeploys against the API server: kubectl-like lines, unchanged redeploys, CRDs,
//! records, concurrency, conflicts, and plans the server rejects.

use super::*;

/// The records a backend lists in namespace `ns` (a cluster-wide orchestrator lists every
/// namespace's JacDeployments, other tests' included).
async fn listed_in(backend: &KubeBackend, ns: &str) -> Vec<jac_splice_orc::backend::DeploymentRecord> {
    let mut all = timed(backend.list()).await.unwrap();
    all.retain(|r| r.id.namespace == ns);
    all
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
    // An immediate redeploy changes nothing, not even the record (the JacDeployment).
    let resources = Api::<JacDeployment>::namespaced(c.client.clone(), &ns);
    let record_rv = || async { timed(resources.get("cache")).await.unwrap().metadata.resource_version };
    let before = record_rv().await;
    let hash_before = config_hash(&c.client, &ns, "cache").await;
    assert!(hash_before.as_deref().is_some_and(|h| h.starts_with("sha256:")), "{hash_before:?}");
    let (tx, rx) = progress();
    timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(
        lines(&drain(rx)),
        ["service/cache unchanged", "deployment.apps/cache unchanged", "configmap/cache unchanged"]
    );
    assert_eq!(before, record_rv().await, "an unchanged redeploy must not rewrite the record");
    assert_eq!(objects_before, rvs(ns.clone(), c.client.clone()).await, "an unchanged redeploy must not write objects");

    // A changed value reconfigures the object that holds it, and rolls the workload that mounts
    // it (a new config hash on its pod template); the Service stays as it was.
    let p2 = plan(&svc, "redis", &ns, "cache", json!({"memory": "500mb"})).await;
    let (tx, rx) = progress();
    let record = timed(backend.apply(&p2, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(
        lines(&drain(rx)),
        ["service/cache unchanged", "deployment.apps/cache configured", "configmap/cache configured"]
    );
    let hash_after = config_hash(&c.client, &ns, "cache").await;
    assert!(hash_after.is_some() && hash_after != hash_before, "{hash_before:?} -> {hash_after:?}");
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
    let ids: Vec<_> = listed_in(&backend, &ns).await.into_iter().map(|r| r.id.name).collect();
    assert_eq!(ids, ["b"]);
    assert!(matches!(timed(backend.delete(&a.id, &Progress::discard())).await, Err(Error::NotFound(_))));
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

    let second = Arc::new(KubeBackend::new(
        client_from(&c.path).await,
        KubeOptions::default().orchestrator_namespace(ns.clone()),
    ));
    let listed = listed_in(&second, &ns).await;
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
            svc.deploy(&Caller::Operator, &req, ApplyOptions::default()).await?.finish().await
        }));
    }
    for t in tasks {
        timed(t).await.unwrap().unwrap();
    }
    let records = listed_in(&backend, &ns).await;
    assert_eq!(records.len(), 20);
    let cms = timed(
        Api::<ConfigMap>::namespaced(c.client.clone(), &ns).list(&ListParams::default().labels("jac-orc/module=redis")),
    )
    .await
    .unwrap();
    let names: std::collections::BTreeSet<_> = cms.items.iter().filter_map(|c| c.metadata.name.clone()).collect();
    assert_eq!(names, (0..20).map(|i| format!("r{i}")).collect());
}

/// A plan whose Deployment the API server refuses (replicas must be >= 0).
async fn rejected_plan(svc: &Service, ns: &str) -> Plan {
    let mut p = plan(svc, "redis", ns, "cache", json!({})).await;
    let deployment = p.objects.iter_mut().find(|o| o.object.kind == "Deployment").unwrap();
    deployment.manifest["spec"]["replicas"] = json!(-3);
    p
}

fn assert_rejected_deployment(err: &Error) {
    match err {
        Error::Rejected { object, message } => {
            assert_eq!(object, "deployment.apps/cache");
            assert!(message.contains("spec.replicas"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_object_fails_the_deploy_before_anything_is_applied_or_recorded() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("invalid").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = rejected_plan(&svc, &ns).await;

    let (tx, rx) = progress();
    let err = timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap_err();
    drop(tx);
    assert_rejected_deployment(&err);
    // The Service comes first in the plan, but the dry run stopped everything before it.
    assert_eq!(lines(&drain(rx)), ["deployment.apps/cache failed"]);
    let services = dynamic(&c.client, &ns, "v1", "Service", "services");
    assert!(!exists(&services, "cache").await, "no earlier object may be left behind");
    assert!(timed(backend.get(&p.id)).await.unwrap().is_none(), "no record of a deployment that never existed");
    assert!(listed_in(&backend, &ns).await.is_empty());
}

#[tokio::test]
async fn a_rejected_redeploy_leaves_the_previous_deployment_as_it_was() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("invalid-re").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let good = plan(&svc, "redis", &ns, "cache", json!({})).await;
    let before = timed(backend.apply(&good, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let rv = timed(cms.get("cache")).await.unwrap().metadata.resource_version;

    let mut bad = rejected_plan(&svc, &ns).await;
    // A changed ConfigMap too: it must not be written either.
    let cm = bad.objects.iter_mut().find(|o| o.object.kind == "ConfigMap").unwrap();
    cm.manifest["data"]["redis-config"] = json!("maxmemory 1mb\n");
    let err = timed(backend.apply(&bad, &ApplyOptions::default(), &Progress::discard())).await.unwrap_err();
    assert_rejected_deployment(&err);
    assert_eq!(timed(cms.get("cache")).await.unwrap().metadata.resource_version, rv, "nothing was written");
    let after = timed(backend.get(&good.id)).await.unwrap().unwrap();
    assert_eq!((after.status, &after.updated_at), (Status::Deployed, &before.updated_at), "the record is untouched");
}

#[tokio::test]
async fn a_rejected_deploy_into_a_new_namespace_removes_the_namespace_it_created() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let own = c.namespace("invalid-own").await;
    let backend = c.backend(&own);
    let svc = service(&backend, &own);
    let target = format!("jo-invalid-new-{}", std::process::id());
    // Registered for cleanup, but not created: the deploy creates it.
    c.namespaces.push(target.clone());
    let p = rejected_plan(&svc, &target).await;
    let (tx, rx) = progress();
    let err = timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap_err();
    drop(tx);
    assert_rejected_deployment(&err);
    assert_eq!(lines(&drain(rx)), ["deployment.apps/cache failed"], "no `namespace created` event either");
    let namespaces = Api::<Namespace>::all(c.client.clone());
    let gone =
        timed(namespaces.get_opt(&target)).await.unwrap().is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    assert!(gone, "namespace {target} was created by the rejected deploy and must be deleted");
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
        Error::Kube(jac_splice_orc::backend::kube::KubeError::Conflict { object, manager, .. }) => {
            assert_eq!(object, "configmap/cache");
            assert_eq!(manager, "someone-else");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let opts = ApplyOptions { wait: None, force_conflicts: true, ..Default::default() };
    let (tx, rx) = progress();
    timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    drop(tx);
    assert!(lines(&drain(rx)).contains(&"configmap/cache configured".to_string()));
}
