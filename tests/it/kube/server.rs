//! The kube backend through the real server and the `jac-orc serve` binary.

use super::*;

#[tokio::test]
async fn through_the_server_deploys_survive_a_restart_and_modules_replay_is_idempotent() {
    use jac_splice_orc::pb::{self, deploy_event::Event, orchestrator_client::OrchestratorClient};
    use tokio_stream::StreamExt;

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("server").await;

    // First orchestrator: deploy over gRPC and over REST.
    let (addr, stop, handle) = crate::support::serve(Arc::new(service(&c.backend(&ns), &ns))).await;
    let mut grpc = timed(OrchestratorClient::connect(format!("http://{addr}"))).await.unwrap();
    let req = pb::DeployRequest {
        module: "redis".into(),
        config: Some(crate::support::struct_of(json!({"name": "cache", "namespace": ns, "memory": "64mb"}))),
        ..Default::default()
    };
    let mut stream = timed(grpc.deploy(req)).await.unwrap().into_inner();
    let (mut events, mut summary) = (Vec::new(), None);
    while let Some(item) = timed(stream.next()).await {
        match item.unwrap().event {
            Some(Event::Object(o)) => events.push(o.line),
            Some(Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    assert_eq!(events, ["service/cache created", "deployment.apps/cache created", "configmap/cache created"]);
    let d = summary.expect("summary").deployment.unwrap();
    assert_eq!((d.backend(), d.status()), (pb::Backend::Kubernetes, pb::DeploymentStatus::Deployed));
    assert_eq!(d.endpoints, [format!("cache.{ns}.svc:6379")]);
    let body: Value = timed(
        reqwest::Client::new()
            .post(format!("http://{addr}/deployment"))
            .json(&json!({"module": "redis", "config": {"name": "cache2", "namespace": ns}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["results"],
        json!(["service/cache2 created", "deployment.apps/cache2 created", "configmap/cache2 created"])
    );
    let _ = stop.send(());
    timed(handle).await.unwrap();

    // A restarted orchestrator (new client, new backend) lists exactly what exists.
    let backend = Arc::new(KubeBackend::new(
        client_from(&c.path).await,
        KubeOptions::default().orchestrator_namespace(ns.clone()),
    ));
    let svc = Arc::new(service(&backend, &ns));
    let (addr, stop, handle) = crate::support::serve(svc.clone()).await;
    let mut grpc = timed(OrchestratorClient::connect(format!("http://{addr}"))).await.unwrap();
    let list =
        timed(grpc.list_deployments(pb::ListDeploymentsRequest { namespace: ns.clone(), module: String::new() }))
            .await
            .unwrap()
            .into_inner();
    let names: Vec<_> = list.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["cache", "cache2"]);

    // Startup MODULES for what is already deployed: applied twice, nothing is written.
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let rv = || async { timed(cms.get("cache")).await.unwrap().metadata.resource_version };
    let before = rv().await;
    let modules = format!(
        r#"{{"{ns}": {{"redis": {{"cache": {{"module": "redis", "version": "latest", "config": {{"memory": "64mb"}}}}}}}}}}"#
    );
    for _ in 0..2 {
        let reqs = jac_splice_orc::startup::parse(&modules).unwrap();
        assert_eq!(timed(jac_splice_orc::startup::replay(svc.clone(), reqs)).await, 1);
    }
    assert_eq!(before, rv().await, "an idempotent replay writes nothing");
    let _ = stop.send(());
    timed(handle).await.unwrap();
}

// === ModuleProxy through a Service's Endpoints ===

/// This machine's address on its default route: Endpoints may not hold loopback addresses, so
/// the module server listens there. `None` without a non-loopback IPv4 address.
fn routable_local_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP "connect" only picks the route and source address; nothing is sent.
    socket.connect("192.0.2.1:9").or_else(|_| socket.connect("10.255.255.1:9")).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn module_proxy_reaches_the_module_server_behind_the_services_endpoints() {
    use jac_splice_orc::pb::{self, module_proxy_client::ModuleProxyClient, value::Kind};

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let Some(ip) = routable_local_ip() else {
        eprintln!("skipping: no non-loopback IPv4 address for Endpoints (they may not point at 127.0.0.0/8)");
        return;
    };
    let (mut server_process, port) = module_server("math", &ip.to_string()).await;
    let ns = c.namespace("proxy").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));

    // The python-module template, with a selector-less Service: Endpoints are then ours to write
    // (there is no kubelet to run the pods the endpoints controller would list).
    let mut p = plan(&svc, "python-module", &ns, "mathmod", json!({"module": "math"})).await;
    for o in &mut p.objects {
        if o.object.kind == "Service" {
            o.manifest.pointer_mut("/spec").and_then(Value::as_object_mut).unwrap().remove("selector");
        }
    }
    timed(backend.apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "mathmod"},
        "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "grpc", "port": port}]}]
    });
    let api = dynamic(&c.client, &ns, "v1", "Endpoints", "endpoints");
    timed(api.create(&PostParams::default(), &serde_json::from_value(endpoints).unwrap())).await.unwrap();
    let endpoint = format!("{ip}:{port}");
    assert_eq!(timed(backend.module_endpoints(&p.id)).await.unwrap(), std::slice::from_ref(&endpoint));

    // jac-orc on loopback with this backend, called through ModuleProxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(jac_splice_orc::server::serve(listener, svc.clone(), async {
        let _ = stopped.await;
    }));
    let mut proxy = timed(ModuleProxyClient::connect(format!("http://{addr}"))).await.unwrap();
    let target = |name: &str| Some(pb::ProxyTarget { deployment: name.into(), namespace: ns.clone() });
    let describe = |name: &str| pb::ProxyDescribeRequest {
        target: target(name),
        request: Some(pb::DescribeRequest { session: "kube-proxy".into() }),
    };

    let d = timed(proxy.describe(describe("mathmod"))).await.unwrap().into_inner();
    assert_eq!((d.module.as_str(), d.pid), ("math", i64::from(server_process.id().unwrap())));
    let call = pb::ProxyCallRequest {
        target: target("mathmod"),
        request: Some(pb::CallRequest {
            session: "kube-proxy".into(),
            path: vec!["sqrt".into()],
            args: vec![pb::Value { kind: Some(Kind::FloatValue(16.0)) }],
            ..Default::default()
        }),
    };
    let r = timed(proxy.call(call)).await.unwrap().into_inner();
    assert_eq!(r.result, Some(pb::value_response::Result::Value(pb::Value { kind: Some(Kind::FloatValue(4.0)) })));

    let err = timed(proxy.describe(describe("nope"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("nope"), "{err:?}");

    // The module server goes away: UNAVAILABLE naming the endpoint from the Endpoints object.
    server_process.kill().await.unwrap();
    let err = timed(proxy.describe(describe("mathmod"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&endpoint), "{err:?}");

    let _ = stop.send(());
    timed(handle).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_a_kubeconfig_picks_the_kubernetes_backend_and_says_why() {
    use std::io::BufRead;
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("serve").await;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "auto", "--listen", "127.0.0.1:0", "--namespace", &ns])
        .arg("--kubeconfig")
        .arg(&c.path)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("KUBECONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jac-orc starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::task::block_in_place(|| wait_for_log(&mut lines, "jac-orc listening on "));
    assert!(log.iter().any(|l| l.contains("backend: kubernetes") && l.contains("kubeconfig")), "{log:#?}");
    let addr =
        log.last().unwrap().split("jac-orc listening on ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    // Keep draining the log so the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.take(100_000).for_each(drop));

    let body: Value = timed(
        reqwest::Client::new()
            .post(format!("http://{addr}/deployment"))
            .json(&json!({"module": "redis", "config": {"name": "via-cli"}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["deployment"]["backend"], "kubernetes", "{body}");
    assert_eq!(body["deployment"]["namespace"], ns.as_str());
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    assert!(timed(cms.get("via-cli")).await.is_ok(), "the ConfigMap exists in the cluster");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let _ = drain.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_auto_without_a_cluster_uses_the_local_backend_and_says_why() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "auto", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", data.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jac-orc starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::task::block_in_place(|| wait_for_log(&mut lines, "jac-orc listening on "));
    assert!(log.iter().any(|l| l.contains("backend: local")), "{log:#?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
}
