//! Scale to zero and wake on call (issue 12, item 2) on the local backend, through the real
//! server: a python-module deployment with an idle timeout stops once no call reached its module
//! server for that long (status idle, no endpoint, no process), the next calls through
//! ModuleProxy wake it once however many arrive together, references of the sessions that were
//! scaled away are NotFound saying so, a deadline shorter than the wake-up names the deployment
//! and "waking from zero", and EnsureModule wakes it too.

use std::time::Duration;

use jac_splice_orc::pb::{self, value::Kind};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::proxy::{call, kind, target};
use crate::support::{struct_of, within, Options, TestServer, ADMIN};

/// How often the test server's idle scaler looks.
const SCALER_PERIOD: Duration = Duration::from_millis(200);

async fn idle_server() -> TestServer {
    TestServer::start_with(Options { idle_scaler: Some(SCALER_PERIOD), ..Default::default() }).await
}

async fn deploy_idle(server: &TestServer, name: &str, module: &str, idle: &str) {
    let request = pb::DeployRequest {
        module: "python-module".into(),
        config: Some(struct_of(json!({"name": name, "module": module, "idle-timeout": idle}))),
        wait: true,
        ..Default::default()
    };
    let mut stream = within(server.grpc().await.deploy(request)).await.unwrap().into_inner();
    while let Some(item) = within(stream.next()).await {
        item.expect("deploy succeeds");
    }
}

async fn get(server: &TestServer, name: &str) -> pb::Deployment {
    let request =
        pb::GetDeploymentRequest { namespace: "default".into(), module: "python-module".into(), name: name.into() };
    within(server.grpc().await.get_deployment(request)).await.unwrap().into_inner()
}

/// Waits (bounded: far longer than the idle timeout and the scaler's period) until it sleeps.
async fn asleep(server: &TestServer, name: &str) -> pb::Deployment {
    for _ in 0..600 {
        let d = get(server, name).await;
        if d.status == pb::DeploymentStatus::Idle as i32 {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was never scaled to zero: {:?}", get(server, name).await);
}

fn describe(deployment: &str, session: &str) -> pb::ProxyDescribeRequest {
    pb::ProxyDescribeRequest {
        target: target(deployment),
        request: Some(pb::DescribeRequest { session: session.into() }),
    }
}

fn process_gone(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie nobody runs any more.
    stat.is_empty() || stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

#[tokio::test]
async fn an_idle_deployment_sleeps_and_fifty_concurrent_calls_wake_it_once() {
    let server = idle_server().await;
    deploy_idle(&server, "sleepy", "math", "2s").await;
    let mut proxy = server.proxy_as(Some(ADMIN)).await;

    // A session holds a reference; Describe says how long the module server has been idle.
    let sqrt = pb::ProxyGetAttrRequest {
        target: target("sleepy"),
        request: Some(pb::GetAttrRequest {
            session: "proxy-test".into(),
            target: String::new(),
            path: vec!["sqrt".into()],
        }),
    };
    let Kind::Ref(held) = kind(within(proxy.get_attr(sqrt)).await.unwrap().into_inner()) else {
        panic!("math.sqrt comes back as a reference")
    };
    let described = within(proxy.describe(describe("sleepy", "proxy-test"))).await.unwrap().into_inner();
    assert!(described.idle_seconds < 2.0, "just called: {described:?}");
    let pid = described.pid;

    // No call for 2 s: scaled to zero, its record kept, its process stopped.
    let idle = asleep(&server, "sleepy").await;
    assert!(idle.endpoints.is_empty(), "no endpoint while it sleeps: {idle:?}");
    assert!(idle.message.contains("scaled to zero"), "{idle:?}");
    assert_eq!(idle.wakeups, 0);
    let rest = within(server.http().get(format!("{}/deployment/default/python-module/sleepy", server.url())).send())
        .await
        .unwrap();
    let body: serde_json::Value = within(rest.json()).await.unwrap();
    assert_eq!(body["status"], "idle", "{body}");
    for _ in 0..200 {
        if process_gone(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_gone(pid), "the module server {pid} still runs");

    // 50 calls at once: one wake-up, 50 answers.
    let calls = (0..50).map(|i| {
        let mut proxy = proxy.clone();
        async move {
            let request = call("sleepy", "", &["sqrt"], vec![Kind::FloatValue(f64::from(i * i))]);
            proxy.call(request).await.map(|r| (i, kind(r.into_inner())))
        }
    });
    let answers = within(futures::future::join_all(calls)).await;
    for answer in answers {
        let (i, value) = answer.expect("every call is answered");
        assert_eq!(value, Kind::FloatValue(f64::from(i)));
    }
    let awake = get(&server, "sleepy").await;
    assert_eq!(awake.status, pb::DeploymentStatus::Deployed as i32, "{awake:?}");
    assert_eq!(awake.wakeups, 1, "one wake-up for 50 calls: {awake:?}");
    assert_eq!(awake.endpoints.len(), 1, "{awake:?}");

    // The reference the session held went with the scaled-away module server.
    let err = within(proxy.call(call("sleepy", &held.id, &[], vec![Kind::FloatValue(4.0)]))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("sleepy was scaled to zero"), "{err:?}");
    assert_eq!(err.get_error_details().error_info().map(|i| i.reason.clone()), Some("SCALED_TO_ZERO".into()));

    // The wake-up is counted in /metrics.
    let metrics = within(server.http().get(format!("{}/metrics", server.url())).send()).await.unwrap();
    let text = within(metrics.text()).await.unwrap();
    assert!(text.contains("jac_orc_wakeups_total{deployment=\"default/sleepy\"} 1"), "{text}");
    assert!(text.contains("jac_orc_scaled_to_zero_total{deployment=\"default/sleepy\"} 1"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_deadline_that_passes_while_the_deployment_wakes_names_it() {
    let server = idle_server().await;
    deploy_idle(&server, "drowsy", "math", "1s").await;
    asleep(&server, "drowsy").await;
    let mut proxy = server.proxy_as(Some(ADMIN)).await;

    // A call without a deadline starts the wake-up; one with 100 ms (less than a module server
    // takes to start), sent once the wake-up is under way, runs out waiting for it. A plain
    // HTTP/2 client sends grpc-timeout alone (tonic's Channel would enforce it itself), so the
    // answer is the server's.
    let first = {
        let mut proxy = proxy.clone();
        tokio::spawn(async move { proxy.call(call("drowsy", "", &["sqrt"], vec![Kind::FloatValue(4.0)])).await })
    };
    for _ in 0..600 {
        if get(&server, "drowsy").await.message.contains("waking from zero") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let mut plain = pb::module_proxy_client::ModuleProxyClient::with_origin(http2, server.url().parse().unwrap());
    let mut request = tonic::Request::new(call("drowsy", "", &["sqrt"], vec![Kind::FloatValue(9.0)]));
    request.set_timeout(Duration::from_millis(100));
    request.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let err = within(plain.call(request)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("deployment default/python-module/drowsy was waking from zero"), "{err:?}");
    assert_eq!(err.get_error_details().error_info().map(|i| i.reason.clone()), Some("WAKING_FROM_ZERO".into()));
    let answered = within(first).await.unwrap().expect("the call that woke it is answered");
    assert_eq!(kind(answered.into_inner()), Kind::FloatValue(2.0));

    // Awake now: the next call answers, and it was one wake-up in all.
    let r = within(proxy.call(call("drowsy", "", &["sqrt"], vec![Kind::FloatValue(9.0)]))).await.unwrap();
    assert_eq!(kind(r.into_inner()), Kind::FloatValue(3.0));
    assert_eq!(get(&server, "drowsy").await.wakeups, 1);
    server.stop().await;
}

#[tokio::test]
async fn ensure_module_wakes_a_sleeping_deployment() {
    let server = idle_server().await;
    let request =
        pb::EnsureModuleRequest { module: "colorsys".into(), idle_timeout: "1s".into(), ..Default::default() };
    within(server.grpc().await.ensure_module(request.clone())).await.unwrap();
    asleep(&server, "colorsys").await;

    let woken = within(server.grpc().await.ensure_module(request)).await.unwrap().into_inner();
    assert!(!woken.deployed, "woken, not deployed again");
    let d = woken.deployment.unwrap();
    assert_eq!(d.status, pb::DeploymentStatus::Deployed as i32, "{d:?}");
    assert_eq!((d.wakeups, d.endpoints.len()), (1, 1), "{d:?}");
    server.stop().await;
}
