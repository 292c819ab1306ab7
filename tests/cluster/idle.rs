//! Scale to zero and wake on call in the cluster (issue 12, item 2): a python-module deployment
//! with `idle-timeout: 3s` and no calls goes to zero replicas (its pod is gone, its record reads
//! idle with no endpoint); then 50 calls through ModuleProxy arrive together, wake it once and
//! are all answered by the new pod.

use std::time::{Duration, Instant};

use jac_splice_orc::pb::{self, module_proxy_client::ModuleProxyClient, value::Kind};
use serde_json::json;
use tonic::transport::Channel;

use crate::support::*;

fn sqrt(ns: &str, x: f64) -> tonic::Request<pb::ProxyCallRequest> {
    tonic::Request::new(pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: "nap".into(), namespace: ns.into() }),
        request: Some(pb::CallRequest {
            // One session per caller, as 50 clients would have.
            session: format!("caller-{x}"),
            target: String::new(),
            path: vec!["sqrt".into()],
            args: vec![pb::Value { kind: Some(Kind::FloatValue(x)) }],
            kwargs: vec![],
        }),
    })
}

#[tokio::test]
async fn an_idle_module_scales_to_zero_and_fifty_calls_wake_it_once() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("idle", None).await;
    let ns = orc.namespace.clone();
    let (status, body) = orc
        .deploy(json!({"module": "python-module",
            "config": small_module(json!({"name": "nap", "module": "math", "packages": [], "idle-timeout": "3s"})),
            "wait": true, "wait_timeout_seconds": 180}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Ready when the deploy returned; no call comes, so it may be asleep soon after.
    let selector = "jac-orc/module-server=nap";

    let path = format!("/deployment/{ns}/python-module/nap");
    let started = Instant::now();
    let mut idle = None;
    for _ in 0..240 {
        let (code, d) = orc.get(&path).await;
        assert_eq!(code, 200, "{d}");
        if d["status"] == "idle" {
            idle = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle = idle.unwrap_or_else(|| panic!("nap was never scaled to zero: {:?}", body));
    timing("idle: deployed → scaled to zero (idle-timeout 3s)", started.elapsed());
    assert_eq!(idle["endpoints"], json!([]), "{idle}");
    pods_gone(&node.client, &ns, selector).await;
    timing("idle: deployed → its pod gone", started.elapsed());

    let channel = timed(Channel::from_shared(format!("http://{}", orc.target())).unwrap().connect()).await.unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", orc.token).parse().unwrap();
    let proxy = ModuleProxyClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let woken = Instant::now();
    let calls = (0..50).map(|i| {
        let mut proxy = proxy.clone();
        let ns = ns.clone();
        async move {
            let answer = proxy.call(sqrt(&ns, f64::from(i * i))).await.expect("every call is answered").into_inner();
            match answer.result {
                Some(pb::value_response::Result::Value(v)) => assert_eq!(v.kind, Some(Kind::FloatValue(f64::from(i)))),
                other => panic!("call {i}: {other:?}"),
            }
            woken.elapsed()
        }
    });
    let answered = timed(futures::future::join_all(calls)).await;
    timing(
        "idle: 50 concurrent calls at a sleeping deployment → first answered",
        answered.iter().min().copied().unwrap(),
    );
    timing("idle: 50 concurrent calls at a sleeping deployment → all answered", woken.elapsed());
    let (_, awake) = orc.get(&path).await;
    assert_eq!(awake["status"], "deployed", "{awake}");
    assert_eq!(awake["wakeups"], 1, "one wake-up for 50 calls: {awake}");
    assert_eq!(pods(&node.client, &ns, selector).await.len(), 1);
}
