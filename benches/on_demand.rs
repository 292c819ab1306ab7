//! On-demand modules on the local backend, over gRPC on loopback (issue 12): the time from
//! `EnsureModule` of a module nothing serves to the first answer through ModuleProxy (deploy,
//! module-server start, readiness, one call), and the time of the first call at a deployment
//! scaled to zero (wake-up, start, readiness, the call). Both are dominated by the module
//! server's Python start; the anchors are Modal's ~1 s cold start and a target of ≤ 1.5 s for
//! the first call after a wake-up. Run: `cargo bench --bench on_demand`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use jac_splice_orc::auth::{admin_token, token_file::TokenFile, AuthConfig, AuthLayer, Authenticator};
use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::backend::Backend;
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::{self, module_proxy_client::ModuleProxyClient, orchestrator_client::OrchestratorClient};
use jac_splice_orc::plan::DeploymentId;
use jac_splice_orc::service::{Service, Settings};
use tonic::transport::Channel;

const TOKEN: &str = "bench-admin-token-0123456789";

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

struct Bench {
    orchestrator: OrchestratorClient<Channel>,
    proxy: ModuleProxyClient<Channel>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(backend: Arc<dyn Backend>) -> Bench {
    let service = Arc::new(Service::new(Arc::new(Catalog::builtin()), backend, Settings::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let tokens = TokenFile::single(TOKEN, admin_token::admin_identity());
    let auth = AuthLayer::new(Authenticator::new().with_tokens(tokens), AuthConfig::default());
    tokio::spawn(jac_splice_orc::server::serve(listener, service, jac_splice_orc::server::Options::new(auth), async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Bench { orchestrator: OrchestratorClient::new(channel.clone()), proxy: ModuleProxyClient::new(channel), stop }
}

/// `colorsys.rgb_to_hsv(0.2, 0.4, 0.4)` through ModuleProxy.
async fn first_answer(proxy: &mut ModuleProxyClient<Channel>, deployment: &str) {
    let number = |x: f64| pb::Value { kind: Some(pb::value::Kind::FloatValue(x)) };
    let call = pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: deployment.into(), namespace: String::new() }),
        request: Some(pb::CallRequest {
            session: "bench".into(),
            target: String::new(),
            path: vec!["rgb_to_hsv".into()],
            args: vec![number(0.2), number(0.4), number(0.4)],
            kwargs: vec![],
        }),
    };
    let answer = proxy.call(authorized(call)).await.expect("answered").into_inner();
    assert!(matches!(answer.result, Some(pb::value_response::Result::Value(_))), "{answer:?}");
}

async fn undeploy(b: &mut Bench, name: &str) {
    let request = pb::UndeployRequest {
        namespace: "default".into(),
        module: "python-module".into(),
        name: name.into(),
        ..Default::default()
    };
    let mut events = b.orchestrator.undeploy(authorized(request)).await.unwrap().into_inner();
    while events.message().await.unwrap().is_some() {}
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let local = Arc::new(
        LocalBackend::open(LocalOptions { data_dir: tmp.path().into(), python, ..Default::default() }).unwrap(),
    );
    let mut b = rt.block_on(start(local.clone()));

    c.bench_function("on_demand/local/ensure_module_to_first_answer", |bench| {
        bench.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let t = Instant::now();
                    let ensure = pb::EnsureModuleRequest { module: "colorsys".into(), ..Default::default() };
                    b.orchestrator.ensure_module(authorized(ensure)).await.expect("deployed");
                    first_answer(&mut b.proxy, "colorsys").await;
                    total += t.elapsed();
                    undeploy(&mut b, "colorsys").await;
                }
                total
            })
        })
    });

    let ensure = pb::EnsureModuleRequest { module: "colorsys".into(), idle_timeout: "1h".into(), ..Default::default() };
    rt.block_on(b.orchestrator.ensure_module(authorized(ensure))).expect("deployed");
    let id = DeploymentId::new("default", "python-module", "colorsys").unwrap();
    c.bench_function("on_demand/local/first_call_after_scale_to_zero", |bench| {
        bench.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    assert!(local.scale_to_zero(&id).await.unwrap(), "it was awake");
                    let t = Instant::now();
                    first_answer(&mut b.proxy, "colorsys").await;
                    total += t.elapsed();
                }
                total
            })
        })
    });
    let _ = b.stop.send(());
    rt.block_on(local.shutdown());
}

criterion_group! { name = on_demand; config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(20)); targets = benches }
criterion_main!(on_demand);
