//! ModuleProxy's endpoint set follows a watch (issue 12 item 4): EndpointSlices created, changed
//! and deleted by hand (this API server has no endpoint controller) reach the backend's
//! `watch_endpoints` stream and the proxy's resolver without polling.

use futures::StreamExt;
use jac_splice_orc::backend::endpoints::Endpoint;
use jac_splice_orc::proxy::resolve::Resolver;

use super::*;

fn slice(name: &str, service: &str, ready: &[(&str, &str, bool)]) -> DynamicObject {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(ip, uid, ready)| {
            json!({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": uid, "uid": uid}})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn addresses(set: &[Endpoint]) -> Vec<&str> {
    set.iter().map(|e| e.address.as_str()).collect()
}

#[tokio::test]
async fn the_endpoint_watch_follows_endpoint_slices_and_the_proxy_set_with_it() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("epwatch").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "python-module", &ns, "rng", json!({"module": "random", "replicas": 3})).await;
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();

    let mut watch = backend.watch_endpoints(&p.id).expect("the kube backend watches endpoints");
    assert!(timed(watch.next()).await.unwrap().unwrap().is_empty(), "no slices yet");

    let api = dynamic(&c.client, &ns, "discovery.k8s.io/v1", "EndpointSlice", "endpointslices");
    let two = slice(
        "rng-a",
        "rng",
        &[("10.1.0.1", "pod-1", true), ("10.1.0.2", "pod-2", true), ("10.1.0.3", "pod-3", false)],
    );
    timed(api.create(&PostParams::default(), &two)).await.unwrap();
    let set = timed(watch.next()).await.unwrap().unwrap();
    assert_eq!(addresses(&set), ["10.1.0.1:50051", "10.1.0.2:50051"]);
    assert_eq!(set[0].instance, "pod-1", "the pod's uid tells replicas apart");
    // A slice of another Service is not ours.
    let other = slice("other-a", "other", &[("10.2.0.1", "pod-x", true)]);
    timed(api.create(&PostParams::default(), &other)).await.unwrap();

    // The proxy's resolver sees the same set: sessions are placed on its two endpoints.
    let resolver = Resolver::new(backend.clone(), Duration::from_secs(1), Duration::from_secs(600));
    let mut placed = std::collections::HashMap::new();
    for i in 0..20 {
        let session = format!("s{i}");
        let pick = timed(resolver.pick(&p.id, &session)).await.unwrap();
        placed.insert(session, pick.endpoint);
    }
    let used: std::collections::HashSet<&String> = placed.values().collect();
    assert_eq!(used.len(), 2, "{placed:?}");

    // The third pod becomes ready: the stream says so, placed sessions stay, new ones reach it.
    let three =
        slice("rng-a", "rng", &[("10.1.0.1", "pod-1", true), ("10.1.0.2", "pod-2", true), ("10.1.0.3", "pod-3", true)]);
    timed(api.replace("rng-a", &PostParams::default(), &three)).await.unwrap();
    let set = timed(watch.next()).await.unwrap().unwrap();
    assert_eq!(addresses(&set), ["10.1.0.1:50051", "10.1.0.2:50051", "10.1.0.3:50051"]);
    let reached_third = within_rounds(|| async {
        for i in 100..160 {
            let pick = timed(resolver.pick(&p.id, &format!("s{i}"))).await.unwrap();
            if pick.endpoint == "10.1.0.3:50051" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(reached_third, "new sessions reach the new replica");
    for (session, endpoint) in &placed {
        assert_eq!(&timed(resolver.pick(&p.id, session)).await.unwrap().endpoint, endpoint, "{session} moved");
    }

    // The slice goes: nothing is ready, for the stream and for the proxy.
    timed(api.delete("rng-a", &DeleteParams::default())).await.unwrap();
    assert!(timed(watch.next()).await.unwrap().unwrap().is_empty());
    let none = within_rounds(|| async { resolver.pick(&p.id, "s0").await.is_err() }).await;
    assert!(none, "the proxy stops picking removed endpoints");
}

/// Retries `f` (bounded) until it is true: the resolver's watch task applies a change a moment
/// after the test's own stream saw it.
async fn within_rounds<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
