//! ModuleProxy's endpoint set follows a watch (issue 12 item 4): EndpointSlices (Endpoints on a
//! server without `discovery.k8s.io/v1`, such as this tier's 1.20) created, changed and deleted
//! by hand (this API server runs no endpoint controller) reach the backend's `watch_endpoints`
//! stream and the proxy's resolver without polling.

use futures::StreamExt;
use jac_splice_orc::backend::endpoints::Endpoint;
use jac_splice_orc::proxy::resolve::Resolver;

use super::*;

/// What the endpoints controller would write for `service`: an EndpointSlice where the server
/// serves `discovery.k8s.io/v1`, else Endpoints.
fn endpoints_object(slices: bool, service: &str, ready: &[(&str, &str, bool)]) -> DynamicObject {
    let target = |uid: &str| json!({"kind": "Pod", "name": uid, "uid": uid});
    let value = if slices {
        let endpoints: Vec<Value> = ready
            .iter()
            .map(
                |(ip, uid, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": target(uid)}),
            )
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-a"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    } else {
        let of = |want: bool| -> Vec<Value> {
            ready
                .iter()
                .filter(|r| r.2 == want)
                .map(|(ip, uid, _)| json!({"ip": ip, "targetRef": target(uid)}))
                .collect()
        };
        json!({
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": service},
            "subsets": [{"addresses": of(true), "notReadyAddresses": of(false),
                         "ports": [{"name": "grpc", "port": 50051}, {"name": "metrics", "port": 9000}]}],
        })
    };
    serde_json::from_value(value).unwrap()
}

async fn serves_slices(client: &kube::Client) -> bool {
    let groups = timed(client.list_api_groups()).await.unwrap();
    groups.groups.iter().any(|g| g.name == "discovery.k8s.io" && g.versions.iter().any(|v| v.version == "v1"))
}

fn addresses(set: &[Endpoint]) -> Vec<&str> {
    set.iter().map(|e| e.address.as_str()).collect()
}

/// Retries `f` (bounded) until it is true: the resolver's watch task applies a change a moment
/// after the test's own stream saw it.
async fn within_rounds<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_endpoint_watch_follows_the_ready_addresses_and_the_proxy_set_with_it() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("epwatch").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let p = plan(&svc, "python-module", &ns, "rng", json!({"module": "random", "replicas": 3})).await;
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();

    let mut watch = backend.watch_endpoints(&p.id).expect("the kube backend watches endpoints");
    assert!(timed(watch.next()).await.unwrap().unwrap().is_empty(), "nothing ready yet");

    let slices = serves_slices(&c.client).await;
    let api = if slices {
        dynamic(&c.client, &ns, "discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
    } else {
        dynamic(&c.client, &ns, "v1", "Endpoints", "endpoints")
    };
    let name = if slices { "rng-a" } else { "rng" };
    let two = [("10.1.0.1", "pod-1", true), ("10.1.0.2", "pod-2", true), ("10.1.0.3", "pod-3", false)];
    timed(api.create(&PostParams::default(), &endpoints_object(slices, "rng", &two))).await.unwrap();
    let set = timed(watch.next()).await.unwrap().unwrap();
    assert_eq!(addresses(&set), ["10.1.0.1:50051", "10.1.0.2:50051"], "slices: {slices}");
    assert_eq!(set[0].instance, "pod-1", "the pod's uid tells replicas apart");
    // Another Service's endpoints are not ours.
    let other = endpoints_object(slices, "other", &[("10.2.0.1", "pod-x", true)]);
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
    let all = [("10.1.0.1", "pod-1", true), ("10.1.0.2", "pod-2", true), ("10.1.0.3", "pod-3", true)];
    let three = serde_json::to_value(endpoints_object(slices, "rng", &all)).unwrap();
    timed(api.patch(name, &PatchParams::default(), &Patch::Merge(&three))).await.unwrap();
    let set = timed(watch.next()).await.unwrap().unwrap();
    assert_eq!(addresses(&set), ["10.1.0.1:50051", "10.1.0.2:50051", "10.1.0.3:50051"]);
    // Sessions stay where they were first placed, so each round asks with sessions never seen:
    // a round that ran before the resolver applied the change must not pin the next ones.
    let round = std::sync::atomic::AtomicUsize::new(0);
    let reached_third = within_rounds(|| async {
        let first = 100 + 60 * round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in first..first + 60 {
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

    // It goes: nothing is ready, for the stream and for the proxy.
    timed(api.delete(name, &DeleteParams::default())).await.unwrap();
    assert!(timed(watch.next()).await.unwrap().unwrap().is_empty());
    let none = within_rounds(|| async { resolver.pick(&p.id, "s0").await.is_err() }).await;
    assert!(none, "the proxy stops picking removed endpoints");
}
