//! Deploy/Undeploy on the local backend over gRPC: a real redis-server, records that survive a
//! restart, and a module the machine cannot run.

use jac_splice_orc::pb::{self, deploy_event::Event};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{redis_available, redis_ping, run, struct_of, within, KubeServe, Options, TestServer};

fn redis_request(name: &str, memory: &str) -> pb::DeployRequest {
    pb::DeployRequest {
        module: "redis".into(),
        config: Some(struct_of(json!({"name": name, "memory": memory}))),
        ..Default::default()
    }
}

#[tokio::test]
async fn redis_deploys_answers_ping_redeploys_unchanged_and_undeploy_stops_it() {
    assert!(redis_available(), "redis-server must be installed (the test command installs it)");
    let server = TestServer::start().await;
    let mut c = server.grpc().await;

    let (events, summary) = run(within(c.deploy(redis_request("cache", "64mb"))).await.unwrap().into_inner()).await;
    let summary = summary.expect("deploy succeeds");
    let lines: Vec<_> = events.iter().map(|e| e.line.as_str()).collect();
    assert!(lines.contains(&"service/cache created"), "{lines:?}");
    assert!(lines.contains(&"deployment.apps/cache created"), "{lines:?}");
    assert!(lines.contains(&"configmap/cache created"), "{lines:?}");
    assert!(lines.contains(&"process.local.jac-orc/cache started"), "{lines:?}");
    assert_eq!(summary.created, 3);
    let d = summary.deployment.unwrap();
    assert_eq!(
        (d.namespace.as_str(), d.module.as_str(), d.name.as_str(), d.status()),
        ("default", "redis", "cache", pb::DeploymentStatus::Deployed)
    );
    let endpoint = d.endpoints[0].clone();
    assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    assert_eq!(redis_ping(&endpoint).await.unwrap(), "+PONG");

    // The rendered memory setting reached the process.
    let conf = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
        s.write_all(b"CONFIG GET maxmemory\r\n").await.unwrap();
        let mut buf = [0u8; 128];
        let n = within(s.read(&mut buf)).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(conf.contains(&(64 * 1024 * 1024).to_string()), "{conf}");

    // Same request again: every object unchanged, same process.
    let (events, summary) = run(within(c.deploy(redis_request("cache", "64mb"))).await.unwrap().into_inner()).await;
    let s = summary.unwrap();
    assert_eq!((s.created, s.configured, s.unchanged), (0, 0, 4), "{events:?}");
    assert_eq!(s.deployment.unwrap().endpoints, vec![endpoint.clone()]);

    // A changed value: objects configured, process restarted on the same port.
    let (events, summary) = run(within(c.deploy(redis_request("cache", "32mb"))).await.unwrap().into_inner()).await;
    let s = summary.unwrap();
    assert_eq!((s.created, s.configured, s.unchanged), (0, 1, 2), "{events:?}");
    assert!(events.iter().any(|e| e.line == "configmap/cache configured"), "{events:?}");
    assert!(events.iter().any(|e| e.line == "process.local.jac-orc/cache started"), "{events:?}");
    assert_eq!(redis_ping(&endpoint).await.unwrap(), "+PONG");

    let got = within(c.get_deployment(pb::GetDeploymentRequest {
        namespace: "default".into(),
        module: "redis".into(),
        name: "cache".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(got.endpoints, vec![endpoint.clone()]);
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(list.deployments.len(), 1);

    let (events, summary) = run(within(c.undeploy(pb::UndeployRequest {
        namespace: "default".into(),
        module: "redis".into(),
        name: "cache".into(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner())
    .await;
    summary.unwrap();
    assert!(events.iter().any(|e| e.line == "process.local.jac-orc/cache stopped"), "{events:?}");
    assert!(redis_ping(&endpoint).await.is_err(), "redis still answers after undeploy");
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert!(list.deployments.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn records_survive_an_orchestrator_restart_and_workloads_come_back() {
    assert!(redis_available());
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options { data_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let server = TestServer::start_with(opts()).await;
    let mut c = server.grpc().await;
    let (_, summary) = run(within(c.deploy(redis_request("persist", "16mb"))).await.unwrap().into_inner()).await;
    let endpoint = summary.unwrap().deployment.unwrap().endpoints[0].clone();
    server.stop().await;
    assert!(redis_ping(&endpoint).await.is_err(), "workloads stop with the orchestrator");

    let server = TestServer::start_with(opts()).await;
    let mut c = server.grpc().await;
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(list.deployments.len(), 1);
    let d = &list.deployments[0];
    assert_eq!((d.name.as_str(), d.status()), ("persist", pb::DeploymentStatus::Deployed));
    assert_eq!(redis_ping(&d.endpoints[0]).await.unwrap(), "+PONG");
    server.stop().await;
}

#[tokio::test]
async fn mongodb_on_the_local_backend_fails_naming_mongod_and_records_nothing() {
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let req = pb::DeployRequest {
        module: "mongodb".into(),
        config: Some(struct_of(json!({"name": "testing-db", "namespace": "testing"}))),
        ..Default::default()
    };
    let err = within(c.deploy(req)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("`mongod`"), "{}", err.message());
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert!(list.deployments.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_input_changes_nothing_already_deployed() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let (_, summary) = run(within(c.deploy(redis_request("keep", "16mb"))).await.unwrap().into_inner()).await;
    let before = summary.unwrap().deployment.unwrap();
    for bad in [
        json!({"name": "keep", "memory": 5}),
        json!({"name": "keep", "memroy": "1mb"}),
        json!({"name": "keep", "memory": "lots"}),
    ] {
        let req = pb::DeployRequest { module: "redis".into(), config: Some(struct_of(bad)), ..Default::default() };
        assert_eq!(within(c.deploy(req)).await.unwrap_err().code(), Code::InvalidArgument);
    }
    let after = within(c.get_deployment(pb::GetDeploymentRequest {
        namespace: "default".into(),
        module: "redis".into(),
        name: "keep".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(before.config, after.config);
    assert_eq!(before.updated_at, after.updated_at);
    assert_eq!(redis_ping(&after.endpoints[0]).await.unwrap(), "+PONG");
    server.stop().await;
}

#[tokio::test]
async fn undeploy_of_an_unknown_deployment_is_not_found() {
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let err = within(c.undeploy(pb::UndeployRequest {
        namespace: "default".into(),
        module: "redis".into(),
        name: "nope".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("default/redis/nope"));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_deploy_still_gets_the_deployment_finished_and_recorded() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let mut stream = within(c.deploy(redis_request("left", "8mb"))).await.unwrap().into_inner();
    let first = within(stream.next()).await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Object(_))));
    drop(stream);
    drop(c);
    // The deploy task carries on; poll (bounded) until the record says deployed.
    let mut c = server.grpc().await;
    let id = pb::GetDeploymentRequest { namespace: "default".into(), module: "redis".into(), name: "left".into() };
    let mut deployed = None;
    for _ in 0..200 {
        if let Ok(d) = within(c.get_deployment(id.clone())).await {
            let d = d.into_inner();
            if d.status() == pb::DeploymentStatus::Deployed {
                deployed = Some(d);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let d = deployed.expect("deployment recorded as deployed");
    // The server may stop waiting for readiness once the client has gone: poll (bounded).
    let mut pong = None;
    for _ in 0..200 {
        pong = redis_ping(&d.endpoints[0]).await.ok();
        if pong.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pong.as_deref(), Some("+PONG"));
    server.stop().await;
}

/// Reads events until the run waits for readiness.
async fn until_waiting(stream: &mut tonic::Streaming<pb::DeployEvent>) {
    loop {
        let ev = within(stream.next()).await.expect("the stream stays open while waiting").unwrap();
        if let Some(Event::Object(o)) = ev.event {
            if o.action() == pb::Action::Waiting {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_client_that_leaves_during_wait_stops_the_wait_and_the_deploy_is_still_recorded() {
    // The test API server has no kubelet: pods never become Ready, so the wait never ends by itself.
    let Some(server) = KubeServe::start("gone-grpc").await else {
        return;
    };
    let mut c = crate::support::grpc_client(&server.url(), Some(&server.token)).await;
    let req = pb::DeployRequest {
        module: "redis".into(),
        config: Some(struct_of(json!({"name": "gone"}))),
        wait: true,
        wait_timeout_seconds: 600,
        ..Default::default()
    };
    let mut stream = within(c.deploy(req)).await.unwrap().into_inner();
    until_waiting(&mut stream).await;
    drop((stream, c));

    server.wait_for_log("the caller left").await;
    let d = server.wait_for_record("gone", |d| d.message.contains("disconnected")).await;
    assert_eq!(d.status(), pb::DeploymentStatus::Deployed, "{d:?}");
    assert_eq!(d.objects.len(), 3, "{d:?}");
    server.stop().await;
}
