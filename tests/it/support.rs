//! Test harness: a real server on 127.0.0.1:0 with a temporary data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::backend::Backend;
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::{self, orchestrator_client::OrchestratorClient};
use jac_splice_orc::service::{Service, Settings};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Bound on every await in tests.
pub(crate) const T: Duration = Duration::from_secs(60);

pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    backend: Arc<LocalBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub(crate) struct Options {
    pub catalog: Option<Catalog>,
    pub settings: Settings,
    pub data_dir: Option<PathBuf>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub(crate) async fn start_with(opts: Options) -> Self {
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

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn grpc(&self) -> OrchestratorClient<Channel> {
        within(OrchestratorClient::connect(self.url())).await.expect("connect")
    }

    pub(crate) fn http(&self) -> reqwest::Client {
        reqwest::Client::builder().timeout(T).build().expect("http client")
    }

    /// Stops the server and every workload it started.
    pub(crate) async fn stop(mut self) {
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
pub(crate) fn upstream_store() -> Option<PathBuf> {
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
pub(crate) fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).expect("valid yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn struct_of(v: serde_json::Value) -> prost_types::Struct {
    jac_splice_orc::api::convert::to_struct(v.as_object().expect("object"))
}

/// Sends PING to a Redis server and returns the first reply line.
pub(crate) async fn redis_ping(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

pub(crate) fn redis_available() -> bool {
    std::process::Command::new("redis-server").arg("--version").output().is_ok()
}

/// Serves any service (e.g. over the Kubernetes backend) on 127.0.0.1:0; drop the sender to stop.
pub(crate) async fn serve(service: Arc<Service>) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
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

/// `jac-orc serve --backend kube` (the real binary) against the test API server, in a namespace
/// of its own, with its log lines collected. `None` (after saying why) when no test API server
/// is configured, unless `JAC_ORC_REQUIRE_K8S=1`.
pub(crate) struct KubeServe {
    pub(crate) addr: String,
    pub(crate) namespace: String,
    client: kube::Client,
    child: std::process::Child,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl KubeServe {
    pub(crate) async fn start(tag: &str) -> Option<KubeServe> {
        use k8s_openapi::api::core::v1::Namespace;
        use std::io::BufRead;
        let Some(path) = std::env::var_os("JAC_ORC_TEST_KUBECONFIG").filter(|v| !v.is_empty()) else {
            assert_ne!(std::env::var("JAC_ORC_REQUIRE_K8S").as_deref(), Ok("1"), "JAC_ORC_TEST_KUBECONFIG is not set");
            eprintln!("skipping: no test API server (scripts/k8s-test-cluster.sh run -- cargo test ...)");
            return None;
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("readable kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kubeconfig");
        let client = kube::Client::try_from(config).expect("client");
        let namespace = format!("jo-{tag}-{}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
        within(kube::Api::<Namespace>::all(client.clone()).create(&Default::default(), &ns)).await.expect("namespace");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
            .args(["serve", "--backend", "kube", "--listen", "127.0.0.1:0", "--namespace", &namespace])
            .arg("--kubeconfig")
            .arg(&path)
            .env("JAC_ORC_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("jac-orc starts");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (lines, sink) = (std::io::BufReader::new(child.stderr.take().unwrap()).lines(), log.clone());
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        let mut server = KubeServe { addr: String::new(), namespace, client, child, log };
        let line = server.wait_for_log("jac-orc listening on ").await;
        server.addr = line.split("jac-orc listening on ").nth(1).and_then(|r| r.split(' ').next()).unwrap().into();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until the server logs a line containing `want`, and returns it.
    pub(crate) async fn wait_for_log(&self, want: &str) -> String {
        let found = async {
            loop {
                if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(want)) {
                    break l.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(T, found).await {
            Ok(line) => line,
            Err(_) => panic!("`{want}` never logged: {:#?}", self.log.lock().unwrap()),
        }
    }

    /// Waits (bounded) until the deployment's record satisfies `done`, and returns it.
    pub(crate) async fn wait_for_record(&self, name: &str, done: impl Fn(&pb::Deployment) -> bool) -> pb::Deployment {
        let mut c = within(OrchestratorClient::connect(self.url())).await.expect("connect");
        let req =
            pb::GetDeploymentRequest { namespace: self.namespace.clone(), module: "redis".into(), name: name.into() };
        let mut last = None;
        for _ in 0..600 {
            if let Ok(d) = within(c.get_deployment(req.clone())).await {
                let d = d.into_inner();
                if done(&d) {
                    return d;
                }
                last = Some(d);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the record of {name} never got there: {last:#?}")
    }

    /// Stops the server (SIGTERM) and deletes its namespace.
    pub(crate) async fn stop(mut self) {
        use k8s_openapi::api::core::v1::Namespace;
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = tokio::task::block_in_place(|| self.child.wait());
        let api = kube::Api::<Namespace>::all(self.client.clone());
        let _ = within(api.delete(&self.namespace, &Default::default())).await;
    }
}

impl Drop for KubeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
