//! The kube backend through the real server and the `jac-orc serve` binary.

use super::*;

#[tokio::test]
async fn through_the_server_deploys_survive_a_restart_and_modules_replay_is_idempotent() {
    use jac_splice_orc::pb::{self, deploy_event::Event};
    use tokio_stream::StreamExt;

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("server").await;

    // First orchestrator: deploy over gRPC and over REST.
    let (addr, stop, handle) = crate::support::serve(Arc::new(service(&c.backend(&ns), &ns))).await;
    let mut grpc = crate::support::grpc_client(&format!("http://{addr}"), Some(crate::support::ADMIN)).await;
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
        crate::support::http_client(Some(crate::support::ADMIN))
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
    let mut grpc = crate::support::grpc_client(&format!("http://{addr}"), Some(crate::support::ADMIN)).await;
    let list = timed(grpc.list_deployments(pb::ListDeploymentsRequest { namespace: ns.clone(), ..Default::default() }))
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
pub(super) fn routable_local_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP "connect" only picks the route and source address; nothing is sent.
    socket.connect("192.0.2.1:9").or_else(|_| socket.connect("10.255.255.1:9")).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn module_proxy_reaches_the_module_server_behind_the_services_endpoints() {
    use jac_splice_orc::pb::{self, value::Kind};

    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let Some(ip) = routable_local_ip() else {
        eprintln!("skipping: no non-loopback IPv4 address for Endpoints (they may not point at 127.0.0.0/8)");
        return;
    };
    let ns = c.namespace("proxy").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));
    let (p, mut server_process, endpoint) = module_behind_endpoints(&c, &svc, &ns, "mathmod", ip).await;
    assert_eq!(timed(backend.module_endpoints(&p.id)).await.unwrap(), std::slice::from_ref(&endpoint));

    // jac-orc on loopback with this backend, called through ModuleProxy.
    let (addr, stop, handle) = crate::support::serve(svc.clone()).await;
    let mut proxy = crate::support::proxy_client(&format!("http://{addr}"), Some(crate::support::ADMIN)).await;
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
    timed(handle).await.unwrap();
}

/// A python-module deployment `name` (its plan applied with a selector-less Service), and a
/// module server on `ip` serving `math` with the deployment's call token behind its Endpoints.
pub(super) async fn module_behind_endpoints(
    c: &Cluster,
    svc: &Service,
    ns: &str,
    name: &str,
    ip: std::net::IpAddr,
) -> (Plan, tokio::process::Child, String) {
    module_behind_endpoints_with(c, svc, ns, name, ip, json!({"module": "math"})).await
}

/// [`module_behind_endpoints`] with these values (a `module` among them).
pub(super) async fn module_behind_endpoints_with(
    c: &Cluster,
    svc: &Service,
    ns: &str,
    name: &str,
    ip: std::net::IpAddr,
    values: Value,
) -> (Plan, tokio::process::Child, String) {
    // Endpoints of a selector-less Service are ours to write (there is no kubelet to run the
    // pods the endpoints controller would list).
    let mut p = plan(svc, "python-module", ns, name, values).await;
    for o in &mut p.objects {
        if o.object.kind == "Service" {
            o.manifest.pointer_mut("/spec").and_then(Value::as_object_mut).unwrap().remove("selector");
        }
    }
    let token = p.config["call-token"].as_str().expect("a generated call token").to_string();
    let module = p.config["module"].as_str().expect("a module").to_string();
    let (process, port) = module_server(&module, &ip.to_string(), &token).await;
    timed(c.backend(ns).apply(&p, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    create_endpoints(c, ns, name, ip, port).await;
    (p, process, format!("{ip}:{port}"))
}

/// The Endpoints of selector-less Service `name`: one ready address, the `grpc` port.
pub(super) async fn create_endpoints(c: &Cluster, ns: &str, name: &str, ip: std::net::IpAddr, port: u16) {
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
        "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "grpc", "port": port}]}]
    });
    let api = dynamic(&c.client, ns, "v1", "Endpoints", "endpoints");
    timed(api.create(&PostParams::default(), &serde_json::from_value(endpoints).unwrap())).await.unwrap();
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

    // Users authenticate as themselves (TokenReview): no admin token is generated here.
    assert!(!data.path().join("token").exists(), "no admin token on the kube backend");
    let deploy = json!({"module": "redis", "config": {"name": "via-cli"}});
    let url = format!("http://{addr}/deployment");
    let anonymous = timed(crate::support::http_client(None).post(&url).json(&deploy).send()).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let token = crate::support::kubeconfig_token(&c.path);
    let body: Value = timed(crate::support::http_client(Some(&token)).post(&url).json(&deploy).send())
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
