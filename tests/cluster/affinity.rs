//! Session affinity across three replicas in the cluster (issue 12 items 3 and 4): a Python
//! client's numpy Generator keeps its state over 100 calls through jac-orc's ModuleProxy, 30
//! sessions reach all three pods, and deleting the pod holding a session gives its old reference
//! a NotFound naming the replica that went away while new work of the session carries on.

use std::process::Stdio;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

/// The driver's next JSON line.
async fn line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let text = timed(lines.next_line()).await.expect("driver output").expect("a line from the driver");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn three_replicas_keep_each_session_on_its_pod_and_report_a_deleted_one() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("affinity", None).await;
    let ns = orc.namespace.clone();
    let (status, body) = orc
        .deploy(json!({"module": "python-module",
            "config": small_module(json!({"name": "np3", "module": "numpy", "packages": [], "replicas": 3})),
            "wait": true, "wait_timeout_seconds": 180}))
        .await;
    assert_eq!(status, 200, "{body}");
    let selector = "jac-orc/module-server=np3";
    let ready: Vec<Pod> = pods(&node.client, &ns, selector).await.into_iter().filter(is_ready).collect();
    assert_eq!(ready.len(), 3, "three Ready pods");
    let names: Vec<String> = ready.iter().map(|p| p.metadata.name.clone().unwrap()).collect();

    let started = Instant::now();
    let mut child = driver(&orc.token, &["affinity", &orc.target(), "np3", &ns])
        .stdin(Stdio::piped())
        .spawn()
        .expect("driver starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = line(&mut lines).await;
    eprintln!("[result] affinity: {first}");
    timing("affinity: 100 generator calls + 30 sessions", started.elapsed());
    assert_eq!(first["same_state"], true, "the Generator kept its state over 100 calls: {first}");
    assert_ne!(first["matches_local"], false, "the draws are numpy's for the seed: {first}");
    assert_eq!(first["stable"], true, "every session stayed on its pod: {first}");
    let mut hosts: Vec<String> =
        first["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect();
    hosts.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(hosts, expected, "30 sessions reached all three pods: {first}");

    let victim = first["keeper_host"].as_str().unwrap().to_string();
    assert!(names.contains(&victim), "{first}");
    let deleted = Instant::now();
    let api = Api::<Pod>::namespaced(node.client.clone(), &ns);
    timed(api.delete(&victim, &DeleteParams::default().grace_period(1))).await.unwrap();
    // The replica is gone once its pod is (a terminating pod may still answer its sessions).
    let mut gone = false;
    for _ in 0..240 {
        if timed(api.get_opt(&victim)).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(gone, "pod {victim} still exists 60 s after its deletion");
    let mut stdin = child.stdin.take().unwrap();
    timed(stdin.write_all(b"deleted\n")).await.unwrap();
    let second = line(&mut lines).await;
    eprintln!("[result] affinity after deleting {victim}: {second}");
    timing("affinity: pod deleted → the session's next answer", deleted.elapsed());
    assert!(second.get("error").is_none(), "the driver failed after the deletion: {second}");
    let gone = second["gone"].as_str().unwrap();
    assert!(gone.contains("went away") && gone.contains("np3"), "NotFound naming the gone replica: {second}");
    assert_eq!(second["again_ok"], true, "new work of the session carries on: {second}");
    assert_ne!(second["new_host"], victim.as_str(), "{second}");
    let out = timed(child.wait_with_output()).await.unwrap();
    assert!(out.status.success(), "driver: {}", String::from_utf8_lossy(&out.stderr));
}
