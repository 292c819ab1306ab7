//! Real failures fail a deploy with `wait` at once, naming what the kubelet reports, long before
//! the wait's timeout (600 s here; every await is bounded by `STEP`, far below it).

use std::time::Instant;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_template_whose_image_does_not_exist_fails_naming_the_pull_error() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("pull", None).await;
    // mongodb's operator image (quay.io) is not on the node, and every registry is a local dead end.
    let started = Instant::now();
    let (status, body) = orc
        .deploy(json!({"module": "mongodb", "config": {"name": "db"}, "wait": true, "wait_timeout_seconds": 600}))
        .await;
    timing("missing image: deploy with wait → failure", started.elapsed());
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "WORKLOAD_FAILED", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("ErrImagePull") || detail.contains("ImagePullBackOff"), "{detail}");
    assert!(detail.contains("mongodb-kubernetes-operator"), "names the image: {detail}");
}

#[tokio::test]
async fn a_module_that_fails_to_import_fails_naming_crash_loop_back_off_and_its_error() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("crash", None).await;
    let started = Instant::now();
    let (status, body) = orc
        .deploy(json!({"module": "python-module",
            "config": small_module(json!({"name": "broken", "module": "no_such_module_xyz", "packages": []})),
            "wait": true, "wait_timeout_seconds": 600}))
        .await;
    timing("import failure: deploy with wait → failure", started.elapsed());
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("CrashLoopBackOff"), "{detail}");
    assert!(detail.contains("No module named 'no_such_module_xyz'"), "the module's own error: {detail}");
}
