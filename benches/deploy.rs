//! Deploy latency over gRPC on loopback: time to the first streamed event and to the summary,
//! for an unchanged redeploy and for a changed value, on the local backend (redis-server) and,
//! when `JAC_ORC_TEST_KUBECONFIG` points at a test API server, on the Kubernetes backend.
//! The original took 335 ms to deploy redis against the same test API server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use jac_splice_orc::api::convert::to_struct;
use jac_splice_orc::auth::{admin_token, token_file::TokenFile, AuthConfig, AuthLayer, Authenticator};
use jac_splice_orc::backend::kube::{KubeBackend, KubeOptions};
use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::backend::Backend;
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::{self, orchestrator_client::OrchestratorClient};
use jac_splice_orc::service::{Service, Settings};
use serde_json::json;
use tokio_stream::StreamExt;

/// The bench's one token (an admin).
const TOKEN: &str = "bench-admin-token-0123456789";

async fn start(
    backend: Arc<dyn Backend>,
    ns: &str,
) -> (OrchestratorClient<tonic::transport::Channel>, tokio::sync::oneshot::Sender<()>) {
    let settings = Settings { namespace: ns.into(), restricted_namespace: false, ..Settings::default() };
    let service = Arc::new(Service::new(Arc::new(Catalog::builtin()), backend, settings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tokens = TokenFile::single(TOKEN, admin_token::admin_identity());
    let auth = AuthLayer::new(Authenticator::new().with_tokens(tokens), AuthConfig::default());
    tokio::spawn(jac_splice_orc::server::serve(listener, service, jac_splice_orc::server::Options::new(auth), async {
        let _ = rx.await;
    }));
    (OrchestratorClient::connect(format!("http://{addr}")).await.unwrap(), tx)
}

/// Runs one deploy; returns (time to first event, time to the end of the stream).
async fn deploy(c: &mut OrchestratorClient<tonic::transport::Channel>, memory: &str) -> (Duration, Duration) {
    let req = pb::DeployRequest {
        module: "redis".into(),
        config: Some(to_struct(json!({"name": "bench", "memory": memory}).as_object().unwrap())),
        ..Default::default()
    };
    let mut req = tonic::Request::new(req);
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let t = Instant::now();
    let mut stream = c.deploy(req).await.unwrap().into_inner();
    let mut first = None;
    while let Some(item) = stream.next().await {
        item.unwrap();
        first.get_or_insert_with(|| t.elapsed());
    }
    (first.unwrap(), t.elapsed())
}

fn bench_backend(c: &mut Criterion, label: &str, rt: &tokio::runtime::Runtime, backend: Arc<dyn Backend>, ns: &str) {
    let (mut client, stop) = rt.block_on(start(backend, ns));
    rt.block_on(deploy(&mut client, "64mb"));
    c.bench_function(&format!("deploy/{label}/redis_unchanged/first_event"), |b| {
        b.iter_custom(|n| rt.block_on(sum(&mut client, n, true)))
    });
    c.bench_function(&format!("deploy/{label}/redis_unchanged/complete"), |b| {
        b.iter_custom(|n| rt.block_on(sum(&mut client, n, false)))
    });
    let mut flip = false;
    c.bench_function(&format!("deploy/{label}/redis_changed_value/complete"), |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    flip = !flip;
                    total += deploy(&mut client, if flip { "32mb" } else { "64mb" }).await.1;
                }
                total
            })
        })
    });
    let _ = stop.send(());
}

async fn sum(client: &mut OrchestratorClient<tonic::transport::Channel>, n: u64, first: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let (f, all) = deploy(client, "64mb").await;
        total += if first { f } else { all };
    }
    total
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let local = Arc::new(
        LocalBackend::open(LocalOptions {
            data_dir: tmp.path().into(),
            python: "python3".into(),
            ..Default::default()
        })
        .unwrap(),
    );
    bench_backend(c, "local", &rt, local.clone(), "default");
    rt.block_on(local.shutdown());

    match std::env::var_os("JAC_ORC_TEST_KUBECONFIG") {
        Some(path) => {
            let ns = format!("jo-bench-{}", std::process::id());
            let client = rt.block_on(async {
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                kube::Client::try_from(cfg).unwrap()
            });
            // What an install provides (manifests/): the JacDeployment CRD and the orchestrator's
            // own namespace, which the backend never creates.
            rt.block_on(async {
                use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
                use kube::CustomResourceExt;
                let crd = jac_splice_orc::backend::kube::resource::JacDeployment::crd();
                let crds = kube::Api::<CustomResourceDefinition>::all(client.clone());
                let name = crd.metadata.name.clone().unwrap();
                let params = kube::api::PatchParams::apply("jac-orc-bench").force();
                crds.patch(&name, &params, &kube::api::Patch::Apply(&crd)).await.expect("the CRD installs");
                let established = kube::runtime::wait::conditions::is_crd_established();
                let wait = kube::runtime::wait::await_condition(crds, &name, established);
                tokio::time::timeout(Duration::from_secs(60), wait).await.expect("CRD established in time").unwrap();
                let api = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
                let object = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
                api.create(&Default::default(), &object).await.expect("the bench namespace")
            });
            let backend = Arc::new(KubeBackend::new(client.clone(), KubeOptions::default().orchestrator_namespace(ns.clone())));
            bench_backend(c, "kube", &rt, backend, &ns);
            rt.block_on(async {
                let api = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client);
                let _ = api.delete(&ns, &Default::default()).await;
            });
        }
        None => eprintln!("deploy/kube: skipped (set JAC_ORC_TEST_KUBECONFIG, e.g. scripts/k8s-test-cluster.sh run -- cargo bench --bench deploy)"),
    }
}

criterion_group! { name = deploy_benches; config = Criterion::default().sample_size(20); targets = benches }
criterion_main!(deploy_benches);
