//! Scale to zero and wake on Kubernetes (issue 12, item 2) against the API server. Pods never
//! run here, so the module server is a local process behind the Service's Endpoints (as in
//! `server.rs`), and the test stands in for the endpoints controller: it removes the Endpoints
//! once the Deployment is at zero replicas and writes them again once it is back at one. What
//! the orchestrator does is real: the idle scaler reads the module server's idleness through
//! Describe, the reconcile loop takes the Deployment to 0 replicas and keeps the Service, and a
//! call through ModuleProxy waits while the deployment wakes, then is answered.

use jac_splice_orc::pb::{self, value::Kind};
use jac_splice_orc::reconcile::IdleScaler;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;

use super::server::{create_endpoints, module_behind_endpoints_with, routable_local_ip};
use super::*;
use crate::support::{proxy_client, serve, ADMIN};

async fn replicas(c: &Cluster, ns: &str, name: &str) -> Option<i32> {
    let api = Api::<Deployment>::namespaced(c.client.clone(), ns);
    timed(api.get_opt(name)).await.unwrap().and_then(|d| d.spec?.replicas)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_module_deployment_goes_to_zero_replicas_and_a_proxied_call_wakes_it() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let Some(ip) = routable_local_ip() else {
        eprintln!("skipping: no non-loopback IPv4 address for Endpoints (they may not point at 127.0.0.0/8)");
        return;
    };
    let ns = c.namespace("idle").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));
    let _loop = c.reconciler(&backend, &svc, &ns);
    let values = json!({"module": "math", "idle-timeout": "2s"});
    let (_, mut module_server, address) = module_behind_endpoints_with(&c, &svc, &ns, "sleepy", ip, values).await;
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let id = jac_splice_orc::plan::DeploymentId::new(ns.as_str(), "python-module", "sleepy").unwrap();
    assert_eq!(replicas(&c, &ns, "sleepy").await, Some(1));

    // No call for 2 s: the scaler (reading Describe through the Endpoints) puts it to sleep.
    let scaler = IdleScaler::start(backend.clone() as Arc<dyn Backend>, Duration::from_millis(200), None);
    let asleep = eventually("the deployment scaled to zero", || async {
        timed(backend.get(&id)).await.unwrap().filter(|r| r.status == Status::Idle)
    })
    .await;
    timed(scaler.stop()).await;
    assert_eq!(asleep.wakeups, 0);
    eventually("the Deployment at 0 replicas", || async {
        (replicas(&c, &ns, "sleepy").await == Some(0)).then_some(())
    })
    .await;
    let services = Api::<KubeService>::namespaced(c.client.clone(), &ns);
    assert!(timed(services.get_opt("sleepy")).await.unwrap().is_some(), "the Service stays");
    // Stand-in for the endpoints controller: no pod, no address.
    timed(dynamic(&c.client, &ns, "v1", "Endpoints", "endpoints").delete("sleepy", &DeleteParams::default()))
        .await
        .unwrap();

    // A call through ModuleProxy wakes it and waits for its module server.
    let (addr, stop, server) = serve(svc.clone()).await;
    let mut proxy = proxy_client(&format!("http://{addr}"), Some(ADMIN)).await;
    let request = pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: "sleepy".into(), namespace: ns.clone() }),
        request: Some(pb::CallRequest {
            session: "kube-idle".into(),
            target: String::new(),
            path: vec!["sqrt".into()],
            args: vec![pb::Value { kind: Some(Kind::FloatValue(16.0)) }],
            kwargs: vec![],
        }),
    };
    let call = tokio::spawn(async move { proxy.call(request).await });
    eventually("the Deployment back at its recorded replicas", || async {
        (replicas(&c, &ns, "sleepy").await == Some(1)).then_some(())
    })
    .await;
    let waking = timed(backend.get(&id)).await.unwrap().unwrap();
    assert_eq!((waking.status, waking.wakeups), (Status::Idle, 1), "still idle until a module server is ready");
    assert!(!call.is_finished(), "the call waits for the wake-up");
    create_endpoints(&c, &ns, "sleepy", ip, port).await;
    let answer = timed(call).await.unwrap().expect("the call is answered").into_inner();
    match answer.result {
        Some(pb::value_response::Result::Value(v)) => assert_eq!(v.kind, Some(Kind::FloatValue(4.0))),
        other => panic!("{other:?}"),
    }
    let awake = eventually("the record awake", || async {
        timed(backend.get(&id)).await.unwrap().filter(|r| r.status == Status::Deployed)
    })
    .await;
    assert_eq!(awake.wakeups, 1);
    let _ = stop.send(());
    let _ = timed(server).await;
    let _ = module_server.kill().await;
}
