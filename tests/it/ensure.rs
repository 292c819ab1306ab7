//! Deploy on first import (issue 12, item 1): `EnsureModule` and `POST /module/ensure` on the
//! local backend, through the real server: the first call deploys a python-module deployment
//! named after the module and waits for it, later and racing calls get that same deployment,
//! bad input names its field, and the operator's allowlist and the caller's permissions hold.

use jac_splice_orc::pb::{self, value::Kind};
use jac_splice_orc::service::{EnsurePolicy, Settings};
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{http_client, within, Options, TestServer, CALLER, VIEWER};

fn ensure(module: &str) -> pb::EnsureModuleRequest {
    pb::EnsureModuleRequest { module: module.into(), ..Default::default() }
}

/// The python-module deployments serving `module`.
async fn serving(server: &TestServer, module: &str) -> Vec<pb::Deployment> {
    let request = pb::ListDeploymentsRequest { module: "python-module".into(), ..Default::default() };
    let listed = within(server.grpc().await.list_deployments(request)).await.unwrap().into_inner();
    let serves = |d: &pb::Deployment| {
        let config = jac_splice_orc::api::convert::from_struct(d.config.as_ref().unwrap());
        config["module"] == module
    };
    listed.deployments.into_iter().filter(serves).collect()
}

fn field_of(status: &tonic::Status) -> String {
    status.get_error_details().bad_request().expect("a field violation").field_violations[0].field.clone()
}

#[tokio::test]
async fn ensure_module_deploys_once_then_returns_the_same_deployment_over_grpc_and_rest() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc().await;
    // Nothing serves json yet, and a viewer may not deploy it.
    let err = within(server.grpc_as(Some(VIEWER)).await.ensure_module(ensure("json"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("may not create jacdeployments \"json\""), "{err:?}");
    assert!(serving(&server, "json").await.is_empty(), "the refusal deployed nothing");

    let first = pb::EnsureModuleRequest { idle_timeout: "90".into(), cpu_limit: "1".into(), ..ensure("json") };
    let first = within(grpc.ensure_module(first)).await.expect("deployed").into_inner();
    assert!(first.deployed);
    let deployment = first.deployment.expect("a deployment");
    assert_eq!((deployment.module.as_str(), deployment.name.as_str()), ("python-module", "json"));
    assert_eq!(deployment.status, pb::DeploymentStatus::Deployed as i32, "{deployment:?}");
    assert_eq!(deployment.endpoints.len(), 1, "ready: {deployment:?}");
    let config = jac_splice_orc::api::convert::from_struct(deployment.config.as_ref().unwrap());
    assert_eq!((&config["on-demand"], &config["idle-timeout"]), (&json!(true), &json!("90s")), "{config:?}");
    assert_eq!(config["cpu-limit"], json!("1"), "{config:?}");

    // It answers through ModuleProxy.
    let call = pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: "json".into(), namespace: String::new() }),
        request: Some(pb::CallRequest {
            session: "ensure".into(),
            target: String::new(),
            path: vec!["loads".into()],
            args: vec![pb::Value { kind: Some(Kind::StrValue("[1]".into())) }],
            kwargs: vec![],
        }),
    };
    let answer = within(server.proxy_as(Some(CALLER)).await.call(call)).await.expect("an answer").into_inner();
    assert!(matches!(answer.result, Some(pb::value_response::Result::Value(_))), "{answer:?}");

    // Again, by gRPC (a viewer too: finding needs only `get`) and by REST: found, not redeployed.
    for token in [None, Some(VIEWER)] {
        let mut client = match token {
            None => server.grpc().await,
            Some(t) => server.grpc_as(Some(t)).await,
        };
        let again = within(client.ensure_module(ensure("json"))).await.expect("found").into_inner();
        assert!(!again.deployed);
        let found = again.deployment.unwrap();
        assert_eq!((found.name.as_str(), found.updated_at.as_str()), ("json", deployment.updated_at.as_str()));
    }
    let r =
        within(server.http().post(format!("{}/module/ensure", server.url())).json(&json!({"module": "json"})).send())
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = within(r.json()).await.unwrap();
    assert_eq!((&body["deployed"], &body["deployment"]["name"]), (&json!(false), &json!("json")), "{body}");
    assert_eq!(body["differences"], json!([]), "{body}");
    // Asking for other settings finds it as it stands, and says what differs.
    let other = pb::EnsureModuleRequest {
        replicas: 2,
        packages: vec!["six".into()],
        idle_timeout: "90s".into(),
        cpu_limit: "2".into(),
        ..ensure("json")
    };
    let other = within(grpc.ensure_module(other)).await.expect("found").into_inner();
    assert!(!other.deployed);
    assert_eq!(
        other.differences,
        [
            "packages: asked [\"six\"], deployed with []",
            "cpu-limit: asked 2, deployed with 1",
            "replicas: asked 2, deployed with 1"
        ],
        "idle-timeout 90s is what it has"
    );
    assert_eq!(body["deployment"]["status"], "deployed", "{body}");
    assert_eq!(serving(&server, "json").await.len(), 1);

    // On-demand deployments are listed apart from those deployed by hand.
    let by_hand = json!({"module": "python-module", "config": {"name": "calc", "module": "math"}, "wait": true});
    let r = within(server.http().post(format!("{}/deployment", server.url())).json(&by_hand).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let listed: Value = within(server.http().get(format!("{}/deployment?on_demand=true", server.url())).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&String> = listed["default"]["python-module"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["json"], "{listed}");
    let request = pb::ListDeploymentsRequest { on_demand: true, ..Default::default() };
    let listed = within(grpc.list_deployments(request)).await.unwrap().into_inner().deployments;
    assert_eq!(listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["json"]);
    assert_eq!(
        within(grpc.list_deployments(pb::ListDeploymentsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .deployments
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn ensure_module_racing_callers_get_one_deployment() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (server.grpc().await, server.grpc().await);
    let (one, two) =
        within(async { tokio::join!(a.ensure_module(ensure("base64")), b.ensure_module(ensure("base64"))) }).await;
    let (one, two) = (one.expect("first").into_inner(), two.expect("second").into_inner());
    assert_eq!(u8::from(one.deployed) + u8::from(two.deployed), 1, "exactly one deployed: {one:?} {two:?}");
    let (one, two) = (one.deployment.unwrap(), two.deployment.unwrap());
    assert_eq!((one.name.as_str(), two.name.as_str()), ("base64", "base64"));
    assert_eq!(two.status, pb::DeploymentStatus::Deployed as i32, "the later caller waited for readiness: {two:?}");
    assert_eq!(serving(&server, "base64").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn ensure_module_refuses_bad_names_and_idle_timeouts_naming_the_field() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc().await;
    for (request, field) in [
        (ensure("not a module"), "module"),
        (ensure("numpy-2"), "module"),
        (pb::EnsureModuleRequest { idle_timeout: "soon".into(), ..ensure("json") }, "idle_timeout"),
        (pb::EnsureModuleRequest { idle_timeout: "0".into(), ..ensure("json") }, "idle_timeout"),
        (pb::EnsureModuleRequest { packages: vec!["-r /etc/passwd".into()], ..ensure("json") }, "packages[0]"),
    ] {
        let err = within(grpc.ensure_module(request.clone())).await.unwrap_err();
        assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, field), "{request:?}: {err:?}");
    }
    let http = server.http();
    for (body, field) in [
        (json!({"module": "json", "idle_timeout": "10d"}), "idle_timeout"),
        (json!({"module": "json", "idle_timeout": 1.5}), "idle_timeout"),
        (json!({"module": "a..b"}), "module"),
        (json!({"packages": []}), "module"),
    ] {
        let r = within(http.post(format!("{}/module/ensure", server.url())).json(&body).send()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = within(r.json()).await.unwrap();
        assert_eq!(err["field"], field, "{body}: {err}");
    }
    assert!(serving(&server, "json").await.is_empty(), "nothing was deployed");
    server.stop().await;
}

#[tokio::test]
async fn ensure_module_outside_the_allowlist_is_refused_naming_it() {
    let settings = Settings { ensure: EnsurePolicy::allow(["json", "numpy"]), ..Settings::default() };
    let server = TestServer::start_with(Options { settings, ..Options::default() }).await;
    let mut grpc = server.grpc().await;
    let err = within(grpc.ensure_module(ensure("base64"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("module \"base64\" may not be deployed on import"), "{err:?}");
    let with_package = pb::EnsureModuleRequest { packages: vec!["requests==2.32.3".into()], ..ensure("json") };
    let err = within(grpc.ensure_module(with_package)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("package \"requests==2.32.3\""), "{err:?}");
    let r = within(
        http_client(Some(crate::support::ADMIN))
            .post(format!("{}/module/ensure", server.url()))
            .json(&json!({"module": "base64"}))
            .send(),
    )
    .await
    .unwrap();
    let (status, body): (u16, Value) = (r.status().as_u16(), within(r.json()).await.unwrap());
    assert_eq!((status, body["reason"].as_str()), (403, Some("NOT_ALLOWED_ON_IMPORT")), "{body}");
    assert!(serving(&server, "base64").await.is_empty() && serving(&server, "json").await.is_empty());
    // A listed module is deployed.
    let allowed = within(grpc.ensure_module(ensure("json"))).await.expect("allowed").into_inner();
    assert!(allowed.deployed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_ensure_allow_limits_deploying_on_import_to_the_listed_modules() {
    let served = crate::served::Served::start(&[], &["--ensure-allow", "json,numpy"]).await;
    let token = served.admin_token();
    let mut grpc = crate::support::grpc_client(&format!("http://{}", served.addr), Some(&token)).await;
    let err = within(grpc.ensure_module(ensure("base64"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("\"base64\"") && err.message().contains("--ensure-allow"), "{err:?}");
    served.stop().await;
}

#[tokio::test]
async fn ensure_module_whose_name_another_module_holds_gets_a_hashed_name() {
    let server = TestServer::start().await;
    // `json` is taken by a deployment serving math.
    let by_hand = json!({"module": "python-module", "config": {"name": "json", "module": "math"}, "wait": true});
    let r = within(server.http().post(format!("{}/deployment", server.url())).json(&by_hand).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut grpc = server.grpc().await;
    let ensured = within(grpc.ensure_module(ensure("json"))).await.expect("deployed").into_inner();
    let name = ensured.deployment.unwrap().name;
    assert!(ensured.deployed);
    assert!(name.starts_with("json-") && name.len() == "json-".len() + 6, "{name}");
    // Both stay, each serving its own module; the next call finds the hashed one.
    assert_eq!(serving(&server, "math").await[0].name, "json");
    let again = within(grpc.ensure_module(ensure("json"))).await.expect("found").into_inner();
    assert_eq!((again.deployed, again.deployment.unwrap().name), (false, name));
    server.stop().await;
}

#[tokio::test]
async fn ensure_module_that_cannot_start_fails_naming_why_and_the_next_call_tries_again() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc().await;
    let missing = "splice_no_such_module";
    for _ in 0..2 {
        let err = within(grpc.ensure_module(ensure(missing))).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(&format!("No module named '{missing}'")), "{err:?}");
        // A first deploy that fails leaves nothing behind on the local backend.
        assert!(serving(&server, missing).await.is_empty());
    }
    server.stop().await;
}

/// Lists the names of the python-module deployments, on-demand or not.
async fn names(server: &TestServer) -> Vec<String> {
    let request = pb::ListDeploymentsRequest { module: "python-module".into(), ..Default::default() };
    let listed = within(server.grpc().await.list_deployments(request)).await.unwrap().into_inner();
    listed.deployments.into_iter().map(|d| d.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn undeploy_on_demand_removes_together_only_what_first_imports_deployed() {
    use crate::cli::{ran, JacOrc};
    let options = Options { idle_scaler: Some(std::time::Duration::from_millis(200)), ..Default::default() };
    let server = TestServer::start_with(options).await;
    let mut grpc = server.grpc().await;
    let sleepy = pb::EnsureModuleRequest { idle_timeout: "1s".into(), ..ensure("json") };
    within(grpc.ensure_module(sleepy)).await.expect("json deployed");
    within(grpc.ensure_module(ensure("base64"))).await.expect("base64 deployed");
    let by_hand = json!({"module": "python-module", "config": {"name": "calc", "module": "math"}, "wait": true});
    let r = within(server.http().post(format!("{}/deployment", server.url())).json(&by_hand).send()).await.unwrap();
    assert_eq!(r.status(), 200);

    // Bounded: far longer than the idle timeout and the scaler's period.
    let get =
        pb::GetDeploymentRequest { namespace: "default".into(), module: "python-module".into(), name: "json".into() };
    let mut idle = false;
    for _ in 0..600 {
        let d = within(grpc.get_deployment(get.clone())).await.unwrap().into_inner();
        if d.status == pb::DeploymentStatus::Idle as i32 {
            idle = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(idle, "json was never scaled to zero");

    // --idle: only the sleeping one.
    let out = ran(JacOrc::on(&server, &["undeploy-on-demand", "--idle", "-o", "json"])).json();
    let removed: Vec<&str> =
        out.as_array().unwrap().iter().map(|o| o["deployment"]["name"].as_str().unwrap()).collect();
    assert_eq!(removed, ["json"], "{out}");
    assert_eq!(names(&server).await, ["base64", "calc"]);

    // A viewer may not undeploy: the command names what it could not remove, and removes nothing.
    let r = ran(JacOrc::on(&server, &["undeploy-on-demand"]).token(VIEWER));
    let err = r.err();
    assert!(err.contains("1 on-demand deployment(s) not removed"), "{err}");
    assert!(err.contains("default/python-module/base64") && err.contains("PermissionDenied"), "{err}");
    assert_eq!(names(&server).await, ["base64", "calc"]);

    let r = ran(JacOrc::on(&server, &["undeploy-on-demand"]));
    let out = r.out();
    assert!(out.contains("undeployed python-module/base64 in default"), "{out}");
    assert!(out.ends_with("removed 1 on-demand deployment\n"), "{out}");
    assert_eq!(names(&server).await, ["calc"], "the deployment made by hand stays");
    server.stop().await;
}

/// Every item of an `EnsureModuleProgress` call, until its end or its error.
async fn progress_of(
    server: &TestServer,
    token: Option<&str>,
    request: pb::EnsureModuleRequest,
) -> (Vec<pb::EnsureModuleEvent>, Option<tonic::Status>) {
    let mut client = server.grpc_as(token).await;
    let mut stream = within(client.ensure_module_progress(request)).await.expect("a stream").into_inner();
    let mut items = Vec::new();
    loop {
        match within(stream.message()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(status) => return (items, Some(status)),
        }
    }
}

#[tokio::test]
async fn ensure_module_progress_streams_the_deploys_events_then_the_answer() {
    use pb::ensure_module_event::Event;
    let server = TestServer::start().await;
    let (items, err) = progress_of(&server, Some(VIEWER), ensure("base64")).await;
    assert!(items.is_empty(), "{items:?}");
    assert_eq!(err.map(|s| s.code()), Some(Code::PermissionDenied));

    let (items, err) = progress_of(&server, Some(crate::support::ADMIN), ensure("base64")).await;
    assert!(err.is_none(), "{err:?}");
    let (last, events) = items.split_last().expect("items");
    let lines: Vec<String> = events
        .iter()
        .map(|e| match &e.event {
            Some(Event::Object(o)) => format!("{} ({})", o.line, o.message),
            other => panic!("only object events before the answer: {other:?}"),
        })
        .collect();
    assert!(lines.iter().any(|l| l.contains(" created")), "{lines:?}");
    let started = lines.iter().find(|l| l.starts_with("process.local.jac-orc/base64 started"));
    assert!(started.is_some_and(|l| l.contains("ready on 127.0.0.1:")), "readiness is part of it: {lines:?}");
    let Some(Event::Done(done)) = &last.event else { panic!("the answer comes last: {last:?}") };
    assert!(done.deployed);
    assert_eq!(done.deployment.as_ref().unwrap().status, pb::DeploymentStatus::Deployed as i32);

    // Found: the answer alone, saying what the request asked for that it lacks.
    let again = pb::EnsureModuleRequest { replicas: 2, ..ensure("base64") };
    let (items, err) = progress_of(&server, Some(crate::support::ADMIN), again).await;
    assert!(err.is_none(), "{err:?}");
    let [pb::EnsureModuleEvent { event: Some(Event::Done(done)) }] = items.as_slice() else {
        panic!("one answer: {items:?}")
    };
    assert!(!done.deployed);
    assert_eq!(done.differences, ["replicas: asked 2, deployed with 1"]);
    server.stop().await;
}

/// `json.loads("[1]")` through ModuleProxy, in `session`.
fn loads(session: &str) -> pb::ProxyCallRequest {
    pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: "json".into(), namespace: String::new() }),
        request: Some(pb::CallRequest {
            session: session.into(),
            target: String::new(),
            path: vec!["loads".into()],
            args: vec![pb::Value { kind: Some(Kind::StrValue("[1]".into())) }],
            kwargs: vec![],
        }),
    }
}

#[tokio::test]
async fn a_module_deployed_again_under_its_name_answers_its_first_call() {
    // The proxy caches a deployment's call token; here for longer than the test, so the second
    // deployment's first call is sent with the first one's token.
    let mut settings = Settings::default();
    settings.proxy = settings.proxy.resolve_ttl(std::time::Duration::from_secs(3600));
    let server = TestServer::start_with(Options { settings, ..Default::default() }).await;
    let mut grpc = server.grpc().await;
    let mut proxy = server.proxy_as(Some(CALLER)).await;
    for round in 0..2 {
        within(grpc.ensure_module(ensure("json"))).await.expect("deployed");
        let answer = within(proxy.call(loads("again"))).await;
        let answer = answer.unwrap_or_else(|e| panic!("round {round}: {e:?}")).into_inner();
        assert!(matches!(answer.result, Some(pb::value_response::Result::Value(_))), "{answer:?}");
        let undeploy = pb::UndeployRequest {
            namespace: "default".into(),
            module: "python-module".into(),
            name: "json".into(),
            ..Default::default()
        };
        let mut events = within(grpc.undeploy(undeploy)).await.unwrap().into_inner();
        while within(events.message()).await.unwrap().is_some() {}
    }
    server.stop().await;
}

/// `POST /module/ensure` asking for NDJSON as `token`: the status and the parsed lines.
async fn ensure_ndjson(server: &TestServer, token: &str, module: &str) -> (u16, Vec<Value>) {
    let url = format!("{}/module/ensure", server.url());
    let r =
        http_client(Some(token)).post(url).header("accept", "application/x-ndjson").json(&json!({"module": module}));
    let r = within(r.send()).await.unwrap();
    let status = r.status().as_u16();
    let ndjson = r.headers().get("content-type").is_some_and(|v| v == "application/x-ndjson");
    let text = within(r.text()).await.unwrap();
    if !ndjson {
        return (status, vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))]);
    }
    (status, text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect())
}

#[tokio::test]
async fn rest_ensure_module_streams_its_progress_as_ndjson() {
    let server = TestServer::start().await;
    // Refused before anything happens: its own status and a JSON error, not a stream.
    let (status, body) = ensure_ndjson(&server, VIEWER, "base64").await;
    assert_eq!(status, 403, "{body:?}");
    assert!(body[0]["detail"].as_str().is_some_and(|m| m.contains("may not create jacdeployments")), "{body:?}");

    let (status, lines) = ensure_ndjson(&server, crate::support::ADMIN, "base64").await;
    assert_eq!(status, 200, "{lines:?}");
    let (last, events) = lines.split_last().expect("lines");
    assert!(events.iter().all(|l| l["event"]["line"].is_string()), "object events first: {lines:?}");
    assert!(
        events.iter().any(|l| l["event"]["line"] == "process.local.jac-orc/base64 started"),
        "the module server's start is part of it: {lines:?}"
    );
    assert_eq!(
        (&last["ensured"]["deployed"], &last["ensured"]["deployment"]["status"]),
        (&json!(true), &json!("deployed"))
    );

    // Found: the answer alone.
    let (status, lines) = ensure_ndjson(&server, crate::support::ADMIN, "base64").await;
    assert_eq!(status, 200);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["ensured"]["deployed"], json!(false), "{lines:?}");
    server.stop().await;
}
