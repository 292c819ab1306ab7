//! Readiness waits the API server alone can exercise: a custom resource a stand-in operator
//! reports Running, timeouts, a client that goes away, and Endpoints read for ModuleProxy.
//! (Pods that really become Ready or fail are the cluster tier's: `tests/cluster`.)

use super::*;

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
    let opts = ApplyOptions { wait: Some(Duration::from_secs(60)), force_conflicts: false, ..Default::default() };
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
    let opts = ApplyOptions { wait: Some(Duration::from_secs(2)), force_conflicts: false, ..Default::default() };
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
    let opts = ApplyOptions { wait: Some(Duration::from_secs(600)), force_conflicts: false, ..Default::default() };
    let record = timed(backend.apply(&p, &opts, &tx)).await.unwrap();
    assert_eq!(record.status, Status::Deployed);
    assert!(record.message.contains("disconnected"), "{}", record.message);
    let stored = timed(backend.get(&p.id)).await.unwrap().unwrap();
    assert_eq!(stored.objects.len(), 3);
}

#[tokio::test]
async fn module_endpoints_are_the_ready_addresses_of_the_grpc_port() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("endpoints").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "python-module", &ns, "mathmod", json!({"module": "math"})).await;
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
