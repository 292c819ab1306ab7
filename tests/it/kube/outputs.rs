//! Deployments wired by outputs on the API server (issue 11 item 3): mongodb + redis + jac-cloud,
//! the app's env referring to the mongodb Secret (secretKeyRef, composed into the URI with
//! `$(VAR)`) and to the redis Service host; no cleartext password in the app's record or objects;
//! the referenced deployments list the app and refuse to go unless `force_referenced`.

use super::*;
use jac_splice_orc::service::references;
use jac_splice_orc::service::{Error as ServiceError, UndeployOptions};

async fn deploy(svc: &Service, module: &str, ns: &str, name: &str, overrides: Value) {
    let req = request(module, ns, name, overrides);
    let stream = timed(svc.deploy(&Caller::Operator, &req, ApplyOptions::default())).await.expect("prepares");
    timed(stream.finish()).await.expect("applies");
}

fn id(ns: &str, module: &str, name: &str) -> jac_splice_orc::plan::DeploymentId {
    jac_splice_orc::plan::DeploymentId::new(ns, module, name).unwrap()
}

#[tokio::test]
async fn mongodb_redis_and_jac_cloud_are_wired_by_outputs_through_secret_references() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("wired").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);

    deploy(&svc, "mongodb", &ns, "db", json!({})).await;
    deploy(&svc, "redis", &ns, "cache", json!({})).await;
    let wired = json!({
        "database-host": {"from": "mongodb/db", "output": "uri"},
        "redis-host": {"from": "redis/cache", "output": "url"},
    });
    deploy(&svc, "jac-cloud", &ns, "app", wired.clone()).await;

    let deployments = dynamic(&c.client, &ns, "apps/v1", "Deployment", "deployments");
    let app = serde_json::to_value(timed(deployments.get("app")).await.unwrap()).unwrap();
    let spec = &app["spec"]["template"]["spec"];
    let want = json!([
        {"name": "JAC_ORC_REF_DATABASE_HOST_0",
         "valueFrom": {"secretKeyRef": {"name": "my-user-password", "key": "password"}}},
        {"name": "DATABASE_HOST",
         "value": format!("mongodb://my-user:$(JAC_ORC_REF_DATABASE_HOST_0)@db-svc.{ns}.svc.cluster.local:27017/jaseci?authSource=admin&replicaSet=db")},
        {"name": "REDIS_HOST", "value": format!("redis://cache.{ns}.svc.cluster.local:6379")},
    ]);
    assert_eq!(spec["containers"][0]["env"], want, "{spec}");
    assert_eq!(spec["initContainers"][0]["env"], want, "the mongodb-check init container too");

    // The Secret the reference names is the mongodb deployment's, holding its password.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), &ns);
    let secret = timed(secrets.get("my-user-password")).await.unwrap();
    let held = secret.data.unwrap()["password"].0.clone();
    let password = timed(svc.secrets(&Caller::Operator, &id(&ns, "mongodb", "db"))).await.unwrap().secrets["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(String::from_utf8(held).unwrap(), password);

    // No cleartext password in the app's record (view and JacDeployment) or in its objects.
    let view = timed(svc.get(&Caller::Operator, &id(&ns, "jac-cloud", "app"))).await.unwrap();
    assert_eq!(view.config["database-host"], wired["database-host"]);
    let resources = Api::<JacDeployment>::namespaced(c.client.clone(), &ns);
    let record = serde_json::to_string(&timed(resources.get("app")).await.unwrap()).unwrap();
    assert!(!record.contains(&password), "{record}");
    assert!(!app.to_string().contains(&password));
    let envs = serde_json::to_string(&timed(secrets.get("app-envs")).await.unwrap()).unwrap();
    assert!(!envs.contains(&password) && !envs.contains(&base64(&password)));

    // The referenced deployments list the app and refuse to go without force_referenced.
    for (module, name) in [("mongodb", "db"), ("redis", "cache")] {
        let v = timed(svc.get(&Caller::Operator, &id(&ns, module, name))).await.unwrap();
        assert_eq!(v.dependents, ["jac-cloud/app"], "{module}/{name}");
    }
    let err = timed(svc.undeploy(&Caller::Operator, &id(&ns, "redis", "cache"))).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::References(e) if matches!(**e, references::Error::Referenced { .. })),
        "{err}"
    );
    assert!(exists(&deployments, "cache").await, "refused: nothing was removed");
    let forced = UndeployOptions { force_referenced: true };
    let stream = timed(svc.undeploy_with(&Caller::Operator, &id(&ns, "redis", "cache"), forced)).await.unwrap();
    timed(stream.finish()).await.unwrap();
    let gone = timed(svc.get(&Caller::Operator, &id(&ns, "redis", "cache"))).await.unwrap_err();
    assert!(matches!(gone, ServiceError::NotFound(_)), "{gone}");
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
