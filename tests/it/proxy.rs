//! `ModuleProxy` against real module servers (`python -m jac_splice.server`) started by the
//! local backend through the Deploy RPC: forwarding (with the deployment's call token), pass-through
//! of the module server's own errors, unknown deployments, a killed module server and its
//! recovery, and deadlines.

use std::time::Duration;

use jac_splice_orc::pb::{
    self, module_proxy_client::ModuleProxyClient, module_service_client::ModuleServiceClient, value::Kind,
    value_response::Result as Outcome,
};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{struct_of, within, TestServer, ADMIN, VIEWER};

const SESSION: &str = "proxy-test";

/// Deploys a python-module deployment serving `module` and returns its endpoint.
pub(crate) async fn deploy_module(server: &TestServer, name: &str, module: &str) -> String {
    let mut c = server.grpc().await;
    let request = pb::DeployRequest {
        module: "python-module".into(),
        config: Some(struct_of(json!({"name": name, "module": module}))),
        wait: true,
        ..Default::default()
    };
    let mut stream = within(c.deploy(request)).await.unwrap().into_inner();
    let mut summary = None;
    while let Some(item) = within(stream.next()).await {
        match item.expect("deploy succeeds") {
            pb::DeployEvent { event: Some(pb::deploy_event::Event::Summary(s)) } => summary = Some(s),
            _ => continue,
        }
    }
    let deployment = summary.expect("summary").deployment.expect("deployment");
    deployment.endpoints[0].clone()
}

async fn proxy_client(server: &TestServer) -> crate::support::Proxy {
    server.proxy_as(Some(ADMIN)).await
}

/// The call token of a python-module deployment, as an authorized caller reads it.
pub(crate) async fn call_token(server: &TestServer, name: &str) -> String {
    let req =
        pb::GetDeploymentRequest { namespace: "default".into(), module: "python-module".into(), name: name.into() };
    let secrets = within(server.grpc().await.get_deployment_secrets(req)).await.unwrap().into_inner();
    let secrets = jac_splice_orc::api::convert::from_struct(&secrets.secrets.unwrap());
    secrets["call-token"].as_str().expect("the caller may see the call token").to_string()
}

pub(crate) fn target(deployment: &str) -> Option<pb::ProxyTarget> {
    Some(pb::ProxyTarget { deployment: deployment.into(), namespace: String::new() })
}

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

pub(crate) fn call(deployment: &str, target_ref: &str, path: &[&str], args: Vec<Kind>) -> pb::ProxyCallRequest {
    pb::ProxyCallRequest {
        target: target(deployment),
        request: Some(pb::CallRequest {
            session: SESSION.into(),
            target: target_ref.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            args: args.into_iter().map(value).collect(),
            kwargs: vec![],
        }),
    }
}

fn describe(deployment: &str) -> pb::ProxyDescribeRequest {
    pb::ProxyDescribeRequest {
        target: target(deployment),
        request: Some(pb::DescribeRequest { session: SESSION.into() }),
    }
}

pub(crate) fn kind(response: pb::ValueResponse) -> Kind {
    match response.result {
        Some(Outcome::Value(v)) => v.kind.expect("value kind"),
        other => panic!("expected a value, got {other:?}"),
    }
}

#[tokio::test]
async fn module_calls_are_forwarded_to_the_deployed_module_server() {
    let server = TestServer::start().await;
    let endpoint = deploy_module(&server, "math", "math").await;
    let mut proxy = proxy_client(&server).await;

    // GetAttr of plain data comes back by value.
    let pi = within(proxy.get_attr(pb::ProxyGetAttrRequest {
        target: target("math"),
        request: Some(pb::GetAttrRequest { session: SESSION.into(), target: String::new(), path: vec!["pi".into()] }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(matches!(kind(pi), Kind::FloatValue(v) if (v - std::f64::consts::PI).abs() < 1e-12));

    // Call.
    let r = within(proxy.call(call("math", "", &["sqrt"], vec![Kind::FloatValue(16.0)]))).await.unwrap().into_inner();
    assert_eq!(kind(r), Kind::FloatValue(4.0));

    // A Python exception comes back in-band, untouched.
    let r = within(proxy.call(call("math", "", &["sqrt"], vec![Kind::FloatValue(-1.0)]))).await.unwrap().into_inner();
    match r.result {
        Some(Outcome::Error(e)) => assert_eq!(e.r#type, "ValueError", "{e:?}"),
        other => panic!("expected a remote ValueError, got {other:?}"),
    }

    // A large payload (beyond gRPC's 4 MiB default) both ways: bytes(b) through @builtins.
    let big = vec![7u8; 24 << 20];
    let r = within(proxy.call(call("math", "@builtins", &["bytes"], vec![Kind::BytesValue(big.clone())])))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(kind(r), Kind::BytesValue(b) if b == big));

    // A callable comes back as a reference, which Release frees.
    let r = within(proxy.get_attr(pb::ProxyGetAttrRequest {
        target: target("math"),
        request: Some(pb::GetAttrRequest { session: SESSION.into(), target: String::new(), path: vec!["sqrt".into()] }),
    }))
    .await
    .unwrap()
    .into_inner();
    let Kind::Ref(reference) = kind(r) else { panic!("expected a reference") };
    let held = within(proxy.describe(describe("math"))).await.unwrap().into_inner();
    assert_eq!(held.session_refs, 1);
    let released = within(proxy.release(pb::ProxyReleaseRequest {
        target: target("math"),
        request: Some(pb::ReleaseRequest { session: SESSION.into(), ids: vec![reference.id.clone()] }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!((released.released, released.remaining), (1, 0));

    // The module server's own error statuses pass through unchanged: the reference is gone.
    let err = within(proxy.call(call("math", &reference.id, &[], vec![]))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Describe reaches the deployment's process: same pid as asked directly.
    let via_proxy = within(proxy.describe(describe("math"))).await.unwrap().into_inner();
    let mut direct = within(ModuleServiceClient::connect(format!("http://{endpoint}"))).await.unwrap();
    let mut asked = tonic::Request::new(pb::DescribeRequest { session: SESSION.into() });
    let bearer = format!("Bearer {}", call_token(&server, "math").await);
    asked.metadata_mut().insert("authorization", bearer.parse().unwrap());
    let direct = within(direct.describe(asked)).await.unwrap().into_inner();
    assert_eq!(via_proxy.module, "math");
    assert_eq!(via_proxy.pid, direct.pid);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", via_proxy.pid)).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("jac_splice.server"),
        "pid {} is not a module server",
        via_proxy.pid
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_deployment_is_not_found_naming_it() {
    let server = TestServer::start().await;
    let mut proxy = proxy_client(&server).await;
    let err = within(proxy.describe(describe("no-such-module"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-module"), "{err:?}");

    let err = within(proxy.describe(describe(""))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn killed_module_server_is_unavailable_naming_the_endpoint_then_recovers() {
    let server = TestServer::start().await;
    let endpoint = deploy_module(&server, "mathk", "math").await;
    let mut proxy = proxy_client(&server).await;
    let before = within(proxy.describe(describe("mathk"))).await.unwrap().into_inner().pid;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // SIGKILL is asynchronous: wait until the process is gone (reaped by the supervisor, or a
    // zombie whose socket is already closed).
    within(async {
        while std::fs::read_to_string(format!("/proc/{before}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let err = within(proxy.describe(describe("mathk"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&endpoint), "{err:?}");

    // The local backend restarts the module server (with backoff); calls work again.
    let after = within(async {
        loop {
            match proxy.describe(describe("mathk")).await {
                Ok(r) => break r.into_inner().pid,
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await;
    assert_ne!(after, before);
    server.stop().await;
}

#[tokio::test]
async fn caller_deadline_is_propagated_to_the_forwarded_call() {
    let server = TestServer::start().await;
    deploy_module(&server, "clock", "time").await;
    let mut proxy = proxy_client(&server).await;

    // tonic's Channel would enforce the timeout itself and report CANCELLED; a plain HTTP/2
    // client only sends the header, so the code asserted is the one the proxy answers with.
    let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let origin: http::Uri = server.url().parse().unwrap();
    let mut plain = ModuleProxyClient::with_origin(http2, origin);
    let mut request = tonic::Request::new(call("clock", "", &["sleep"], vec![Kind::FloatValue(3.0)]));
    request.set_timeout(Duration::from_millis(200));
    request.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let err = within(plain.call(request)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("deadline"), "{err:?}");

    // The proxy and the module server are still fine afterwards.
    let r = within(proxy.describe(describe("clock"))).await.unwrap().into_inner();
    assert_eq!(r.module, "time");
    server.stop().await;
}

#[tokio::test]
async fn a_call_batch_is_answered_in_order_with_each_failure_in_its_place_and_refused_to_a_viewer() {
    let server = TestServer::start().await;
    deploy_module(&server, "mathb", "math").await;
    let mut proxy = proxy_client(&server).await;
    let batch = |calls: Vec<pb::ProxyCallRequest>| pb::ProxyCallBatchRequest {
        target: target("mathb"),
        request: Some(pb::CallBatchRequest {
            session: SESSION.into(),
            calls: calls
                .into_iter()
                .map(|c| pb::CallRequest { session: String::new(), ..c.request.unwrap() })
                .collect(),
        }),
    };
    let calls = vec![
        call("mathb", "", &["sqrt"], vec![Kind::FloatValue(16.0)]),
        // The served code raises: in-band, as a single Call answers it.
        call("mathb", "", &["sqrt"], vec![Kind::FloatValue(-1.0)]),
        // Not served: the status a single Call fails with, in this call's place only.
        call("mathb", "@builtins", &["eval"], vec![Kind::StrValue("1".into())]),
        call("mathb", "no-such-reference", &[], vec![]),
        // A reference handed out in a batch belongs to the batch's session.
        call("mathb", "@builtins", &["iter"], vec![Kind::StrValue("ab".into())]),
        call("mathb", "", &["sqrt"], vec![Kind::FloatValue(9.0)]),
    ];
    let results = within(proxy.call_batch(batch(calls))).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6, "{results:?}");
    let mut results = results.into_iter().map(|r| r.result.expect("a result"));
    use pb::call_result::Result as Each;
    let mut value = |what: &str| match results.next() {
        Some(Each::Response(r)) => r,
        other => panic!("{what}: expected a response, got {other:?}"),
    };
    assert_eq!(kind(value("sqrt(16)")), Kind::FloatValue(4.0));
    match value("sqrt(-1)").result {
        Some(Outcome::Error(e)) => assert_eq!(e.r#type, "ValueError", "{e:?}"),
        other => panic!("expected a remote ValueError, got {other:?}"),
    }
    let mut failure = |what: &str| match results.next() {
        Some(Each::Failure(f)) => f,
        other => panic!("{what}: expected a failure, got {other:?}"),
    };
    let refused = failure("eval");
    assert_eq!(Code::from_i32(refused.code), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message.contains("is not served"), "{refused:?}");
    let unknown = failure("unknown reference");
    assert_eq!(Code::from_i32(unknown.code), Code::NotFound, "{unknown:?}");
    let mut value = |what: &str| match results.next() {
        Some(Each::Response(r)) => r,
        other => panic!("{what}: expected a response, got {other:?}"),
    };
    assert!(matches!(kind(value("iter")), Kind::Ref(_)));
    assert_eq!(kind(value("sqrt(9)")), Kind::FloatValue(3.0));
    let held = within(proxy.describe(describe("mathb"))).await.unwrap().into_inner();
    assert_eq!(held.session_refs, 1, "the iterator is the session's");

    // Authorized as Call is: a viewer may not call modules.
    let one = vec![call("mathb", "", &["sqrt"], vec![Kind::FloatValue(4.0)])];
    let err = within(server.proxy_as(Some(VIEWER)).await.call_batch(batch(one))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    server.stop().await;
}
