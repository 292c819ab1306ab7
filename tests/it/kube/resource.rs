//! Deployments as `JacDeployment` resources: what a Deploy through the API writes (spec, owned
//! Secret, status), and the migration of the labelled record Secrets earlier versions wrote.

use jac_splice_orc::backend::kube::resource::JacDeployment;
use jac_splice_orc::backend::DeploymentRecord;
use jac_splice_orc::pb;
use k8s_openapi::api::core::v1::Secret;
use tokio_stream::StreamExt;

use super::*;

#[tokio::test]
async fn a_deploy_through_the_api_writes_a_jacdeployment_with_its_status_and_secrets_apart() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("api-crd").await;
    let (addr, stop, handle) = crate::support::serve(Arc::new(service(&c.backend(&ns), &ns))).await;
    let mut grpc = crate::support::grpc_client(&format!("http://{addr}"), Some(crate::support::ADMIN)).await;
    let req = pb::DeployRequest {
        module: "mongodb".into(),
        config: Some(crate::support::struct_of(json!({"name": "db", "namespace": ns, "password": "s3cret-pw"}))),
        ..Default::default()
    };
    let mut stream = timed(grpc.deploy(req)).await.unwrap().into_inner();
    while let Some(item) = timed(stream.next()).await {
        item.unwrap();
    }
    let jd = timed(Api::<JacDeployment>::namespaced(c.client.clone(), &ns).get("db")).await.unwrap();
    assert_eq!(jd.spec.module, "mongodb");
    assert!(!jd.spec.config.contains_key("password"), "secret values never sit in the spec: {:?}", jd.spec.config);
    let secret_ref = jd.spec.secret_ref.clone().expect("a Secret holds the secret values");
    let secret = timed(Api::<Secret>::namespaced(c.client.clone(), &ns).get(&secret_ref.name)).await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"s3cret-pw");
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("JacDeployment", "db"), "owned, so it goes with it");

    let status = jd.status.expect("a status");
    assert_eq!(status.observed_generation, jd.metadata.generation);
    assert_eq!(status.status, "deployed");
    assert!(status.inventory.iter().any(|e| e.kind == "MongoDBCommunity" && e.name == "db"), "{status:?}");
    let revision = status.applied_revision.clone().expect("the applied revision");
    assert_eq!((revision.revision, revision.version.as_str()), (1, "latest"));
    assert!(revision.changes.contains(&"mongodbcommunity.mongodbcommunity.mongodb.com/db created".to_string()));
    for kind in ["Ready", "Progressing", "Degraded", "Drifted"] {
        assert!(status.condition(kind).is_some(), "condition {kind} in {:?}", status.conditions);
    }

    // Get through the API: the secret is redacted, everything else is the spec's and status's.
    let got = timed(grpc.get_deployment(pb::GetDeploymentRequest {
        namespace: ns.clone(),
        module: "mongodb".into(),
        name: "db".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    let config = jac_splice_orc::api::convert::from_struct(&got.config.unwrap());
    assert_eq!(config["password"], jac_splice_orc::backend::REDACTED);
    assert_eq!(config["name"], "db");
    let _ = stop.send(());
    timed(handle).await.unwrap();
}

/// The name today's record Secrets have: `jac-orc-dep-<FNV-1a 64 of the id>`.
fn old_secret_name(ns: &str, module: &str, name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [ns.as_bytes(), module.as_bytes(), name.as_bytes()].join(&0u8) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("jac-orc-dep-{hash:016x}")
}

/// Writes a record exactly as the Secret-based records wrote it.
async fn write_old_record(client: &kube::Client, orchestrator_ns: &str, record: &Value) {
    let (ns, module, name) = (
        record["id"]["namespace"].as_str().unwrap(),
        record["id"]["module"].as_str().unwrap(),
        record["id"]["name"].as_str().unwrap(),
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": old_secret_name(ns, module, name),
            "labels": {"app.kubernetes.io/managed-by": "jac-orc", "jac-orc/record": "true"},
            "annotations": {"jac-orc/deployment-id": format!("{ns}/{module}/{name}")},
        },
        "type": "Opaque",
        "stringData": {"record.json": record.to_string()},
    }))
    .unwrap();
    timed(Api::<Secret>::namespaced(client.clone(), orchestrator_ns).create(&PostParams::default(), &secret))
        .await
        .unwrap();
}

fn old_record(ns: &str, module: &str, name: &str, config: Value, secret_keys: &[&str]) -> Value {
    json!({
        "id": {"namespace": ns, "module": module, "name": name},
        "version": "latest",
        "config": config,
        "secret_keys": secret_keys,
        "endpoints": [format!("{name}.{ns}.svc:6379")],
        "status": "deployed",
        "message": "",
        "objects": [
            {"api_version": "v1", "kind": "Service", "name": name, "namespace": ns, "section": "modules", "file": "redis.yaml"},
            {"api_version": "apps/v1", "kind": "Deployment", "name": name, "namespace": ns, "section": "modules", "file": "redis.yaml"}
        ],
        "backend": "kubernetes",
        "updated_at": "2026-11-30T10:00:00Z"
    })
}

#[tokio::test]
async fn old_secret_records_are_migrated_once_and_keep_values_secrets_and_outcome() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("migrate").await;
    let backend = c.backend(&ns);
    let cache = old_record(&ns, "redis", "cache", json!({"name": "cache", "namespace": ns, "memory": "77mb"}), &[]);
    let db =
        old_record(&ns, "mongodb", "db", json!({"name": "db", "namespace": ns, "password": "pw-1"}), &["password"]);
    // The same name as `cache`, for another module: cannot become a resource of its own.
    let clash = old_record(&ns, "mongodb", "cache", json!({"name": "cache", "namespace": ns}), &[]);
    for r in [&cache, &db] {
        write_old_record(&c.client, &ns, r).await;
    }
    let first = timed(backend.migrate_records()).await.unwrap();
    assert_eq!((first.converted, first.already, first.skipped), (2, 0, 0));
    write_old_record(&c.client, &ns, &clash).await;

    let id = |module: &str, name: &str| jac_splice_orc::plan::DeploymentId::new(ns.as_str(), module, name).unwrap();
    let got = timed(backend.get(&id("redis", "cache"))).await.unwrap().expect("migrated");
    let old: DeploymentRecord = serde_json::from_value(cache.clone()).unwrap();
    assert_eq!(got.config, old.config);
    assert_eq!(
        (got.status, got.endpoints.clone(), got.objects.clone()),
        (Status::Deployed, old.endpoints, old.objects)
    );
    let db_record = timed(backend.get(&id("mongodb", "db"))).await.unwrap().expect("migrated");
    assert_eq!(db_record.config["password"], "pw-1");
    assert_eq!(db_record.secret_keys, ["password"]);
    let resources = Api::<JacDeployment>::namespaced(c.client.clone(), &ns);
    let db_jd = timed(resources.get("db")).await.unwrap();
    assert!(!db_jd.spec.config.contains_key("password"));
    let rvs = || async {
        let list = timed(resources.list(&ListParams::default())).await.unwrap();
        list.items.into_iter().map(|jd| jd.metadata.resource_version.unwrap()).collect::<Vec<_>>()
    };
    let before = rvs().await;

    // Once: the converted records are gone; a rerun converts nothing and writes nothing; the
    // record whose name another module holds stays where it was.
    let again = timed(backend.migrate_records()).await.unwrap();
    assert_eq!((again.converted, again.already, again.skipped), (0, 0, 1));
    assert_eq!(rvs().await, before);
    let secrets = Api::<Secret>::namespaced(c.client.clone(), &ns);
    let old_left = timed(secrets.list(&ListParams::default().labels("jac-orc/record=true"))).await.unwrap();
    let names: Vec<_> = old_left.items.iter().filter_map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names, [old_secret_name(&ns, "mongodb", "cache")]);

    // A crash after the resource was written but before the old Secret went: finished next time.
    write_old_record(&c.client, &ns, &cache).await;
    let finished = timed(backend.migrate_records()).await.unwrap();
    assert_eq!((finished.converted, finished.already, finished.skipped), (0, 1, 1));
    assert_eq!(rvs().await, before, "the resource that already existed is left as it is");
}
