//! `jac-orc logs` on a real node (issue 14, item 4): the in-cluster orchestrator reads its
//! module server pod's log through the Kubernetes API (`pods/log` in its Role) and answers
//! `GET …/logs` as NDJSON, one line per object, naming the pod it came from.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn the_logs_of_a_module_server_pod_come_back_as_ndjson_naming_the_pod() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("logs", None).await;
    let ns = orc.namespace.clone();
    let (status, body) = orc
        .deploy(json!({"module": "python-module",
            "config": small_module(json!({"name": "chatty", "module": "math", "packages": []})),
            "wait": true, "wait_timeout_seconds": 180}))
        .await;
    assert_eq!(status, 200, "{body}");
    let pod = ready_pod(&node.client, &ns, "jac-orc/module-server=chatty", None).await;
    let pod_name = pod.metadata.name.clone().unwrap();

    // The module server prints its address once it listens; the log may lag the probe a moment.
    let path = format!("/deployment/{ns}/python-module/chatty/logs?tail=50");
    let mut found = None;
    for _ in 0..60 {
        let (code, text) = orc.get_text(&path).await;
        assert_eq!(code, 200, "{text}");
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        if let Some(line) = lines.into_iter().find(|l| l["line"].as_str().is_some_and(|t| t.contains("listening on"))) {
            found = Some(line);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let line = found.expect("the module server's listening line in its pod's log");
    assert!(line["source"].as_str().is_some_and(|s| s.contains(&pod_name)), "names the pod: {line}");
}
