//! The local backend's state file as the desired state, through the real binary with a template
//! of its own (a redis whose command line never changes, beside a ConfigMap that a Deployment
//! uses): a redeploy that changes the configuration restarts the workload and one that changes
//! nothing keeps it; a template edited on disk is applied by the reconcile loop; an object-store
//! file removed behind the backend's back is written again. Waits are bounded; no speed is
//! asserted.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::lab::{answers, eventually, grpc_deploy, log_count, workloads, Lab};
use crate::support::redis_available;

/// The ConfigMap's data: `greeting` from the config, plus `extra` lines (what a template edit
/// adds).
fn write_template(root: &Path, extra: &str) {
    let v = root.join("cfgd").join("latest");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(
        v.join("placeholders.yaml"),
        "description: A redis beside configuration its Deployment uses.\nplaceholders:\n  name:\n    type: string\n    default: cfgd\n  namespace:\n    type: string\n    default: \"\"\n  greeting:\n    type: string\n    default: hello\n",
    )
    .unwrap();
    std::fs::write(
        v.join("config.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{str name \"-conf\"}}}}\n  namespace: {{{{namespace}}}}\ndata:\n  greeting: {{{{greeting}}}}\n{extra}"),
    )
    .unwrap();
    std::fs::write(
        v.join("app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\nspec:\n  selector:\n    matchLabels:\n      app: {{name}}\n  template:\n    metadata:\n      labels:\n        app: {{name}}\n    spec:\n      containers:\n        - name: app\n          image: redis:7\n          envFrom:\n            - configMapRef:\n                name: {{str name \"-conf\"}}\n",
    )
    .unwrap();
    // The command line does not mention the greeting: only the configuration digest can
    // restart it.
    std::fs::write(
        v.join("local.yaml"),
        "program: redis-server\nargs: [\"--port\", \"{{local.port}}\", \"--bind\", \"{{local.host}}\", \"--save\", \"\", \"--appendonly\", \"no\", \"--dir\", \"{{local.data_dir}}\"]\nreadiness: {kind: tcp}\nprotocol: redis\n",
    )
    .unwrap();
}

fn config_file(lab: &Lab, name: &str) -> PathBuf {
    lab.deployment_dir("cfgd", name).join("objects").join(format!("configmap.core.default.{name}-conf.json"))
}

/// The pid of the deployment's only workload, once there is exactly one and it answers.
async fn only_pid(lab: &Lab, endpoint: &str, other_than: Option<u32>) -> u32 {
    eventually("exactly one answering workload", || async {
        let p = workloads(&lab.data);
        let ok = p.len() == 1 && Some(p[0].pid) != other_than && answers("redis", endpoint).await;
        ok.then(|| p[0].pid)
    })
    .await
}

#[tokio::test]
async fn a_changed_configuration_restarts_the_local_workload_and_an_unchanged_redeploy_keeps_it() {
    assert!(redis_available(), "redis-server must be installed");
    let templates = tempfile::tempdir().unwrap();
    write_template(templates.path(), "");
    let mut lab = Lab::new().arg("--manifests-path").arg(templates.path().display().to_string());
    let serve = lab.serve().await;
    let config = |greeting: &str| json!({"name": "c", "greeting": greeting});

    let endpoint = grpc_deploy(&serve, "cfgd", config("hello")).await.unwrap();
    let first = only_pid(&lab, &endpoint, None).await;
    assert_eq!(lab.recorded_pid("cfgd", "c"), Some(first));

    // Unchanged: the same process.
    assert_eq!(grpc_deploy(&serve, "cfgd", config("hello")).await.unwrap(), endpoint);
    assert_eq!(only_pid(&lab, &endpoint, None).await, first, "an unchanged redeploy keeps the workload");

    // A value only the ConfigMap carries: the command line is the same, the workload restarts.
    assert_eq!(grpc_deploy(&serve, "cfgd", config("bonjour")).await.unwrap(), endpoint);
    let second = only_pid(&lab, &endpoint, Some(first)).await;
    assert_eq!(lab.recorded_pid("cfgd", "c"), Some(second));
    let stored: Value = serde_json::from_slice(&std::fs::read(config_file(&lab, "c")).unwrap()).unwrap();
    assert_eq!(stored["data"]["greeting"], "bonjour", "the object store holds what was applied: {stored}");

    // The template edited on disk: the reconcile loop renders the recorded deployment again,
    // applies it and restarts the workload, with no request.
    write_template(templates.path(), "  farewell: au revoir\n");
    let third = only_pid(&lab, &endpoint, Some(second)).await;
    eventually("the restarted workload recorded", || async {
        (lab.recorded_pid("cfgd", "c") == Some(third)).then_some(())
    })
    .await;
    let stored: Value = eventually("the object store rewritten", || async {
        let v: Value = serde_json::from_slice(&std::fs::read(config_file(&lab, "c")).ok()?).ok()?;
        (v["data"]["farewell"] == "au revoir").then_some(v)
    })
    .await;
    assert_eq!(stored["data"]["greeting"], "bonjour", "the recorded values stay: {stored}");
    assert!(log_count(&lab, "renders differently from what runs") >= 1, "the reconcile loop says what it applied");
    assert_eq!(serve.records().await["c"]["status"], "deployed");
    serve.term().await;
}

#[tokio::test]
async fn an_object_store_file_removed_behind_the_backends_back_is_written_again() {
    assert!(redis_available(), "redis-server must be installed");
    let templates = tempfile::tempdir().unwrap();
    write_template(templates.path(), "");
    let mut lab = Lab::new().arg("--manifests-path").arg(templates.path().display().to_string());
    let serve = lab.serve().await;
    let endpoint = grpc_deploy(&serve, "cfgd", json!({"name": "h"})).await.unwrap();
    let pid = only_pid(&lab, &endpoint, None).await;
    let file = config_file(&lab, "h");
    let original = std::fs::read(&file).expect("the deploy wrote the object store");
    let objects = file.parent().unwrap().to_path_buf();
    let app = objects.join("deployment.apps.default.h.json");
    assert!(app.exists(), "every object has its file: {:?}", std::fs::read_dir(&objects).unwrap().collect::<Vec<_>>());

    std::fs::remove_file(&file).unwrap();
    let healed = eventually("the removed file written again", || async { std::fs::read(&file).ok() }).await;
    assert_eq!(healed, original, "written again as it was");
    eventually("a log line names the healed object", || async {
        (log_count(&lab, "healed the local object store") >= 1 && log_count(&lab, "configmap/h-conf") >= 1)
            .then_some(())
    })
    .await;
    // Only the file: the workload keeps running and nothing was applied again.
    assert_eq!(only_pid(&lab, &endpoint, None).await, pid, "healing a file does not restart the workload");
    assert_eq!(log_count(&lab, "renders differently from what runs"), 0, "an unchanged deployment is not applied");
    assert!(app.exists());
    serve.term().await;
}
