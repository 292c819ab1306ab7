//! Test harness: a real server on 127.0.0.1:0 with a temporary data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::backend::Backend;
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::orchestrator_client::OrchestratorClient;
use jac_splice_orc::service::{Service, Settings};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Bound on every await in tests.
pub const T: Duration = Duration::from_secs(60);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    backend: Arc<LocalBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub struct Options {
    pub catalog: Option<Catalog>,
    pub settings: Settings,
    pub data_dir: Option<PathBuf>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
        let backend =
            Arc::new(LocalBackend::open(LocalOptions { data_dir: data_dir.clone(), python }).expect("backend"));
        backend.restore().await;
        let catalog = Arc::new(opts.catalog.unwrap_or_else(Catalog::builtin));
        let service = Arc::new(Service::new(catalog, backend.clone() as Arc<dyn Backend>, opts.settings));
        let (addr, tx, handle) = serve(service.clone()).await;
        TestServer { addr, service, backend, shutdown: Some(tx), handle: Some(handle), _tmp: tmp }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn grpc(&self) -> OrchestratorClient<Channel> {
        within(OrchestratorClient::connect(self.url())).await.expect("connect")
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder().timeout(T).build().expect("http client")
    }

    /// Stops the server and every workload it started.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = within(h).await;
        }
        within(self.backend.shutdown()).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Workloads outlive a dropped backend (as they outlive a crash): a test that panics
        // before calling stop() kills them here.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
            self.backend.kill_all_now();
        }
    }
}

/// The original template store: `UPSTREAM_STORE`, else `../shared/reference/upstream-template-store`
/// beside the crate. `None` (after printing why) when it is not there, so a fresh clone without
/// the project's references still passes; `JAC_ORC_REQUIRE_UPSTREAM=1` (CI) makes that a failure.
pub fn upstream_store() -> Option<PathBuf> {
    use std::io::Write;
    let (path, from) = match std::env::var_os("UPSTREAM_STORE").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), "from UPSTREAM_STORE"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/upstream-template-store"),
            "beside the crate; set UPSTREAM_STORE to use another",
        ),
    };
    if path.is_dir() {
        return Some(path);
    }
    let reason = format!("the original template store {} ({from}) is not a directory", path.display());
    if std::env::var("JAC_ORC_REQUIRE_UPSTREAM").as_deref() == Ok("1") {
        panic!("JAC_ORC_REQUIRE_UPSTREAM=1 but {reason}");
    }
    // Written to the stream itself: the harness captures `eprintln!` and shows it only for
    // failing tests, and a skip must be visible in an ordinary run.
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
    None
}

/// Parses multi-document YAML into JSON values, skipping empty documents.
pub fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).expect("valid yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn struct_of(v: serde_json::Value) -> prost_types::Struct {
    jac_splice_orc::api::convert::to_struct(v.as_object().expect("object"))
}

/// Sends PING to a Redis server and returns the first reply line.
pub async fn redis_ping(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

pub fn redis_available() -> bool {
    std::process::Command::new("redis-server").arg("--version").output().is_ok()
}

/// Serves any service (e.g. over the Kubernetes backend) on 127.0.0.1:0; drop the sender to stop.
pub async fn serve(service: Arc<Service>) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        jac_splice_orc::server::serve(listener, service, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    (addr, tx, handle)
}
