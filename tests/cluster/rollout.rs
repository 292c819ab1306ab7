//! A configuration change rolls the pods on a real node: redis's `memory` reaches the server only
//! through its ConfigMap (the pod template does not mention it), so without the
//! `jac-orc.io/config-hash` pod-template annotation the running pod would keep the old value.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

use crate::support::*;

/// `CONFIG GET maxmemory` of the redis at `ip`; the raw answer.
fn maxmemory(ip: &str) -> String {
    let mut s = std::net::TcpStream::connect((ip, 6379)).expect("redis accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"CONFIG GET maxmemory\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

async fn config_hash(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let d = timed(Api::<Deployment>::namespaced(client.clone(), ns).get(name)).await.unwrap();
    let annotations = d.spec?.template.metadata?.annotations?;
    annotations.get(jac_splice_orc::backend::kube::ANNOTATION_CONFIG_HASH).cloned()
}

#[tokio::test]
async fn a_changed_redis_memory_rolls_its_pod_and_the_new_pod_runs_with_it() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("rollout", None).await;
    let ns = orc.namespace.clone();
    let request = |memory: &str| {
        json!({"module": "redis", "config": small(json!({"name": "roll", "memory": memory})),
            "wait": true, "wait_timeout_seconds": 120})
    };
    let (status, body) = orc.deploy(request("64mb")).await;
    assert_eq!(status, 200, "{body}");
    let first = ready_pod(&node.client, &ns, "pod=roll", None).await;
    assert!(maxmemory(pod_ip(&first)).ends_with(&(64u64 << 20).to_string()));
    let before = config_hash(&node.client, &ns, "roll").await.expect("the Deployment's pod template has a config hash");

    let started = Instant::now();
    let (status, body) = orc.deploy(request("32mb")).await;
    assert_eq!(status, 200, "{body}");
    let after = config_hash(&node.client, &ns, "roll").await.expect("still annotated");
    assert_ne!(after, before, "a changed ConfigMap value changes the hash");
    let old = first.metadata.name.clone().unwrap();
    let second = ready_pod(&node.client, &ns, "pod=roll", Some(&old)).await;
    let answer = maxmemory(pod_ip(&second));
    assert!(answer.ends_with(&(32u64 << 20).to_string()), "the new pod runs with the new value: {answer:?}");
    timing("redis: config change → a Ready pod with it", started.elapsed());
    // The rollout finishes: the old pod goes (bounded by the step bound).
    let deadline = Instant::now() + STEP;
    while pods(&node.client, &ns, "pod=roll").await.iter().any(|p| p.metadata.name.as_deref() == Some(&old)) {
        assert!(Instant::now() < deadline, "the old pod {old} is still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
