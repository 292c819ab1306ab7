//! Dry-run speed: in-process (target ≤ 1 ms for the seed's mongodb example) and end to end over
//! REST and gRPC on loopback (the original answered the same request in 23 ms, HTTP p50).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use jac_splice_orc::auth::{admin_token, token_file::TokenFile, AuthConfig, AuthLayer, Authenticator, Caller};
use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb;
use jac_splice_orc::service::{DeploymentRequest, Service, Settings};
use serde_json::json;

fn service(dir: &std::path::Path) -> Arc<Service> {
    let backend = Arc::new(
        LocalBackend::open(LocalOptions {
            data_dir: dir.to_path_buf(),
            python: "python3".into(),
            ..Default::default()
        })
        .unwrap(),
    );
    Arc::new(Service::new(Arc::new(Catalog::builtin()), backend, Settings::default()))
}

/// The bench's one token (an admin).
const TOKEN: &str = "bench-admin-token-0123456789";

fn server_options() -> jac_splice_orc::server::Options {
    let tokens = TokenFile::single(TOKEN, admin_token::admin_identity());
    jac_splice_orc::server::Options::new(AuthLayer::new(
        Authenticator::new().with_tokens(tokens),
        AuthConfig::default(),
    ))
}

/// A dry run as the operator, outside any runtime (nothing in it waits).
fn dry(svc: &Service, req: &DeploymentRequest) -> jac_splice_orc::service::DryRunView {
    futures::executor::block_on(svc.dry_run(&Caller::Operator, req)).unwrap()
}

fn seed() -> DeploymentRequest {
    DeploymentRequest {
        module: "mongodb".into(),
        version: None,
        config: json!({"name": "testing-db", "namespace": "testing"}).as_object().unwrap().clone(),
    }
}

fn in_process(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path());
    dry(&svc, &seed());
    c.bench_function("dry_run/in_process/mongodb_seed", |b| b.iter(|| dry(&svc, &seed())));
    let redis = DeploymentRequest { module: "redis".into(), ..Default::default() };
    c.bench_function("dry_run/in_process/redis", |b| b.iter(|| dry(&svc, &redis)));
    let store = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/upstream-template-store");
    if store.is_dir() {
        let legacy = Arc::new(Service::new(
            Arc::new(Catalog::directory_only(&store).unwrap()),
            Arc::new(
                LocalBackend::open(LocalOptions {
                    data_dir: tmp.path().join("l"),
                    python: "python3".into(),
                    ..Default::default()
                })
                .unwrap(),
            ),
            Settings::default(),
        ));
        c.bench_function("dry_run/in_process/mongodb_seed_legacy_store", |b| b.iter(|| dry(&legacy, &seed())));
    }
}

fn over_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path());
    let (addr, stop) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(jac_splice_orc::server::serve(listener, svc, server_options(), async {
            let _ = rx.await;
        }));
        (addr, tx)
    });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/deployment/dry_run");
    let body = json!({"module": "mongodb", "config": {"name": "testing-db", "namespace": "testing"}});
    c.bench_function("dry_run/rest/mongodb_seed", |b| {
        b.to_async(&rt).iter(|| async {
            let r = http.post(&url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap()
        })
    });
    let mut grpc = rt.block_on(pb::orchestrator_client::OrchestratorClient::connect(format!("http://{addr}"))).unwrap();
    let req = pb::DryRunRequest {
        module: "mongodb".into(),
        version: String::new(),
        config: Some(jac_splice_orc::api::convert::to_struct(body["config"].as_object().unwrap())),
    };
    c.bench_function("dry_run/grpc/mongodb_seed", |b| {
        b.to_async(&rt).iter(|| {
            let mut g = grpc.clone();
            let mut req = tonic::Request::new(req.clone());
            req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            async move { g.dry_run(req).await.unwrap() }
        })
    });
    let _ = stop.send(());
    let _ = &mut grpc;
}

criterion_group!(benches, in_process, over_loopback);
criterion_main!(benches);
