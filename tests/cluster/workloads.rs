//! Workloads deployed through the in-cluster orchestrator's REST API run for real: redis answers
//! PING, numpy computes in its pod for a Python client on this machine, and two replicas keep
//! answering plain-value calls while one of them is deleted.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{json, Value};

use crate::support::*;

/// One command in redis's inline protocol; the raw answer.
fn redis(ip: &str, command: &str) -> String {
    let mut s = std::net::TcpStream::connect((ip, 6379)).expect("redis accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

/// resourceVersions of everything the redis deployment wrote, its record included.
async fn versions(client: &kube::Client, ns: &str) -> Vec<Option<String>> {
    let rv = |m: &kube::api::ObjectMeta| m.resource_version.clone();
    let svc = timed(Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), ns).get("cache")).await;
    let cm = timed(Api::<ConfigMap>::namespaced(client.clone(), ns).get("cache")).await;
    let dep = timed(Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns).get("cache")).await;
    let records =
        timed(Api::<Secret>::namespaced(client.clone(), ns).list(&ListParams::default().labels("jac-orc/record=true")))
            .await
            .unwrap();
    let mut out = vec![rv(&svc.unwrap().metadata), rv(&cm.unwrap().metadata), rv(&dep.unwrap().metadata)];
    out.extend(records.items.iter().map(|s| rv(&s.metadata)));
    out
}

#[tokio::test]
async fn redis_through_the_in_cluster_orchestrator_answers_ping_redeploys_unchanged_and_undeploys() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("redis", None).await;
    let ns = orc.namespace.clone();
    let request = json!({"module": "redis", "config": small(json!({"name": "cache", "memory": "64mb"})),
        "wait": true, "wait_timeout_seconds": 120});
    let started = Instant::now();
    let (status, body) = orc.deploy(request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deployment"]["status"], "deployed", "{body}");
    timing("redis: deploy with wait → pod Ready", started.elapsed());
    let pod = ready_pod(&node.client, &ns, "pod=cache", None).await;
    assert_eq!(redis(pod_ip(&pod), "PING"), "+PONG");
    timing("redis: deploy → first PONG", started.elapsed());
    // The template's command line and ConfigMap are what the server runs with.
    let maxmemory = redis(pod_ip(&pod), "CONFIG GET maxmemory");
    assert!(maxmemory.ends_with(&(64u64 << 20).to_string()), "maxmemory 64mb from the ConfigMap: {maxmemory:?}");

    let before = versions(&node.client, &ns).await;
    let (status, body) = orc.deploy(request).await;
    assert_eq!(status, 200, "{body}");
    let results: Vec<String> =
        body["results"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    let applied: Vec<&String> = results.iter().filter(|r| !r.ends_with(" ready")).collect();
    assert!(!applied.is_empty() && applied.iter().all(|r| r.ends_with(" unchanged")), "{results:?}");
    assert_eq!(before, versions(&node.client, &ns).await, "an unchanged redeploy writes nothing");

    let started = Instant::now();
    let (status, body) = orc.undeploy(&ns, "redis", "cache").await;
    assert_eq!(status, 200, "{body}");
    pods_gone(&node.client, &ns, "pod=cache").await;
    timing("redis: undeploy → pod gone", started.elapsed());
    assert!(!orc.deployment_names().await.contains(&"cache".to_string()));
}

#[tokio::test]
async fn numpy_computes_in_its_pod_for_a_python_client_on_this_machine() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("numpy", None).await;
    let ns = orc.namespace.clone();
    let started = Instant::now();
    let (status, body) = orc
        .deploy(
            // Without cpu-limit (the limit is the request): the optional placeholder left out
            // is null in the JacDeployment, which the controller must resolve again.
            json!({"module": "python-module", "config": small(json!({"name": "np", "module": "numpy", "packages": []})),
            "wait": true, "wait_timeout_seconds": 120}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deploy_to_ready = started.elapsed();
    timing("numpy: deploy with wait → pod Ready", deploy_to_ready);
    let pod = ready_pod(&node.client, &ns, "jac-orc/module-server=np", None).await;
    let result = drive(&orc.token, &["numpy", &orc.target()]).await;
    timing("numpy: deploy → first call answered (incl. Python start)", started.elapsed());
    timing("numpy: first call, connect included", Duration::from_secs_f64(result["first_call_s"].as_f64().unwrap()));
    assert_eq!(result["orchestrator"], true, "{result}");
    assert_eq!(result["sum"], 10, "{result}");
    assert_eq!(result["mean"], 4.5, "{result}");
    assert_eq!(result["host"], pod.metadata.name.clone().unwrap().as_str(), "numpy ran in the pod: {result}");
}

#[tokio::test]
async fn two_replicas_serve_and_plain_calls_survive_deleting_one_of_them() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("replicas", None).await;
    let ns = orc.namespace.clone();
    let (status, body) = orc
        .deploy(json!({"module": "python-module",
            "config": small_module(json!({"name": "np2", "module": "numpy", "packages": [], "replicas": 2})),
            "wait": true, "wait_timeout_seconds": 120}))
        .await;
    assert_eq!(status, 200, "{body}");
    let selector = "jac-orc/module-server=np2";
    let pods_now: Vec<Pod> = pods(&node.client, &ns, selector).await.into_iter().filter(is_ready).collect();
    assert_eq!(pods_now.len(), 2, "two Ready pods");
    let mut pod_ips: Vec<String> = pods_now.iter().map(|p| pod_ip(p).to_string()).collect();
    pod_ips.sort();
    let endpoints = Api::<Endpoints>::namespaced(node.client.clone(), &ns);
    let mut listed = Vec::new();
    for _ in 0..200 {
        let ep = timed(endpoints.get("np2")).await.unwrap();
        listed = ep.subsets.iter().flatten().flat_map(|s| s.addresses.iter().flatten()).map(|a| a.ip.clone()).collect();
        listed.sort();
        if listed == pod_ips {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, pod_ips, "both pods are in the Service's Endpoints");

    // Plain-value calls for 20 s; one pod is deleted 4 s in.
    let caller = driver(&orc.token, &["calls", &orc.target(), "np2", &ns, "20"]).spawn().expect("driver starts");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = pods_now[0].metadata.name.clone().unwrap();
    let started = Instant::now();
    timed(Api::<Pod>::namespaced(node.client.clone(), &ns).delete(&victim, &DeleteParams::default())).await.unwrap();
    let out = timed(caller.wait_with_output()).await.unwrap();
    let result: Value = parse_driver(out);
    eprintln!("[result] replicas: {result}");
    assert_eq!(result["failed"], 0, "every call succeeded (after at most a few retries): {result}");
    assert!(result["calls"].as_u64().unwrap() > 20, "{result}");
    let survivor = ready_pod(&node.client, &ns, selector, Some(&victim)).await;
    timing("replicas: pod deleted → a Ready replacement", started.elapsed());
    assert!(survivor.metadata.name.is_some());
}
