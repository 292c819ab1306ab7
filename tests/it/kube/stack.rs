//! The whole stack of issue 11 on the API server: mongodb + redis + jac-cloud wired by outputs
//! (the app's env refers to the mongodb Secret and the redis Service), one changed env var → a new
//! config hash on the app's pod template, a rollback → the previous env and hash, and a diff
//! against the live objects that is empty afterwards.

use super::*;
use jac_splice_orc::backend::rollout::ANNOTATION_CONFIG_HASH;

async fn deploy(svc: &Service, req: DeploymentRequest) {
    let stream = timed(svc.deploy(&Caller::Operator, &req, ApplyOptions::default())).await.expect("prepares");
    timed(stream.finish()).await.expect("applies");
}

/// The app Deployment's pod-template config hash and its `app-envs` Secret's JAC_MODE value.
async fn hash_and_mode(c: &Cluster, ns: &str) -> (String, String) {
    let deployments = dynamic(&c.client, ns, "apps/v1", "Deployment", "deployments");
    let app = serde_json::to_value(timed(deployments.get("app")).await.unwrap()).unwrap();
    let hash = app["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
        .as_str()
        .unwrap_or_else(|| panic!("no config hash on the app's pod template: {app}"))
        .to_string();
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), ns);
    let envs = timed(secrets.get("app-envs")).await.unwrap();
    let mode = envs.data.unwrap_or_default().get("JAC_MODE").map(|b| String::from_utf8(b.0.clone()).unwrap());
    (hash, mode.unwrap_or_default())
}

#[tokio::test]
async fn a_wired_stack_rolls_on_an_env_change_rolls_back_and_then_diffs_empty() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("stack").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);

    deploy(&svc, request("mongodb", &ns, "db", json!({}))).await;
    deploy(&svc, request("redis", &ns, "cache", json!({}))).await;
    let wired = |mode: &str| {
        json!({
            "database-host": {"from": "mongodb/db", "output": "uri"},
            "redis-host": {"from": "redis/cache", "output": "url"},
            "env-vars": {"JAC_MODE": mode},
        })
    };
    deploy(&svc, request("jac-cloud", &ns, "app", wired("blue"))).await;

    // Wired: the password is a reference to the mongodb Secret, redis is its Service's host.
    let deployments = dynamic(&c.client, &ns, "apps/v1", "Deployment", "deployments");
    let app = serde_json::to_value(timed(deployments.get("app")).await.unwrap()).unwrap();
    let env = &app["spec"]["template"]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env.as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["JAC_ORC_REF_DATABASE_HOST_0", "DATABASE_HOST", "REDIS_HOST"], "{env}");
    assert_eq!(env[0]["valueFrom"]["secretKeyRef"], json!({"name": "my-user-password", "key": "password"}));
    assert_eq!(env[2]["value"], format!("redis://cache.{ns}.svc.cluster.local:6379"));
    let (blue_hash, mode) = hash_and_mode(&c, &ns).await;
    assert_eq!(mode, "blue");

    // One changed env var: a new config hash, so the app's pods roll.
    deploy(&svc, request("jac-cloud", &ns, "app", wired("green"))).await;
    let (green_hash, mode) = hash_and_mode(&c, &ns).await;
    assert_eq!(mode, "green");
    assert_ne!(green_hash, blue_hash, "a changed env var must change the config hash");

    // Rollback: the previous env and hash, the wiring intact.
    let app_id = jac_splice_orc::plan::DeploymentId::new(ns.as_str(), "jac-cloud", "app").unwrap();
    let run = timed(svc.rollback(&Caller::Operator, &app_id, None, ApplyOptions::default())).await.unwrap();
    timed(run.finish()).await.expect("rolls back");
    assert_eq!(hash_and_mode(&c, &ns).await, (blue_hash, "blue".to_string()));
    let app = serde_json::to_value(timed(deployments.get("app")).await.unwrap()).unwrap();
    assert_eq!(&app["spec"]["template"]["spec"]["containers"][0]["env"], env, "the wiring survives the rollback");
    let history = timed(svc.history(&Caller::Operator, &app_id)).await.unwrap();
    assert_eq!(history.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(history[2].config["env-vars"], json!({"JAC_MODE": "blue"}));

    // A diff against the live objects (server-side dry run), reusing the values: nothing to do.
    let again = timed(svc.diff(&Caller::Operator, &request("jac-cloud", &ns, "app", json!({})), true)).await.unwrap();
    assert!(!again.changed, "{again:?}");
    // …while the other env value would change the Secret.
    let other =
        timed(svc.diff(&Caller::Operator, &request("jac-cloud", &ns, "app", wired("green")), true)).await.unwrap();
    assert!(other.changed, "{other:?}");
}
