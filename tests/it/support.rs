//! Test harness: a real server on 127.0.0.1:0 with a temporary data dir, which authenticates
//! like production: three static tokens ([`ADMIN`], [`VIEWER`], [`CALLER`], the local backend's
//! groups), so every client here sends one ([`TestServer::grpc`], [`TestServer::http`]) unless a
//! test means not to ([`grpc_client`] / [`http_client`] with `None`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jac_splice_orc::auth::token_file::TokenFile;
use jac_splice_orc::auth::{AuthConfig, AuthLayer, Authenticator};
use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::backend::Backend;
use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::{self, module_proxy_client::ModuleProxyClient, orchestrator_client::OrchestratorClient};
use jac_splice_orc::service::{Service, Settings};
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Bound on every await in tests.
pub(crate) const T: Duration = Duration::from_secs(60);

pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// Token of `admin` (`jac-orc:admins`: everything).
pub(crate) const ADMIN: &str = "test-admin-token-0123456789abcdef";
/// Token of `vera` (`jac-orc:viewers`: get, list, templates).
pub(crate) const VIEWER: &str = "test-viewer-token-0123456789abcdef";
/// Token of `carl` (`jac-orc:callers`: read, and call modules).
pub(crate) const CALLER: &str = "test-caller-token-0123456789abcdef";

/// The token file of every test server.
pub(crate) fn token_file_text() -> String {
    format!("{ADMIN},admin,jac-orc:admins\n{VIEWER},vera,jac-orc:viewers\n{CALLER},carl,jac-orc:callers\n")
}

/// The auth layer of every test server: the three tokens above.
pub(crate) fn auth_layer() -> AuthLayer {
    let tokens = TokenFile::parse(&token_file_text(), "test tokens").expect("test tokens");
    AuthLayer::new(Authenticator::new().with_tokens(tokens), AuthConfig::default())
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    pub(crate) fn new(token: Option<&str>) -> Self {
        Bearer(token.map(|t| format!("Bearer {t}").parse().expect("a header value")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type Grpc = OrchestratorClient<InterceptedService<Channel, Bearer>>;
pub(crate) type Proxy = ModuleProxyClient<InterceptedService<Channel, Bearer>>;

/// An Orchestrator client of `url` sending `token` (none: unauthenticated).
pub(crate) async fn grpc_client(url: &str, token: Option<&str>) -> Grpc {
    within(try_grpc_client(url, token)).await.expect("connect")
}

/// [`grpc_client`] that may fail to connect.
pub(crate) async fn try_grpc_client(url: &str, token: Option<&str>) -> Result<Grpc, tonic::transport::Error> {
    let channel = Channel::from_shared(url.to_string()).expect("url").connect().await?;
    Ok(OrchestratorClient::with_interceptor(channel, Bearer::new(token)))
}

/// A ModuleProxy client of `url` sending `token`, for large messages.
pub(crate) async fn proxy_client(url: &str, token: Option<&str>) -> Proxy {
    let channel = within(Channel::from_shared(url.to_string()).expect("url").connect()).await.expect("connect");
    ModuleProxyClient::with_interceptor(channel, Bearer::new(token))
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

/// An HTTP client sending `token` with every request (none: unauthenticated).
pub(crate) fn http_client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).expect("a header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().timeout(T).default_headers(headers).build().expect("http client")
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    backend: Arc<LocalBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    idle: Option<jac_splice_orc::reconcile::IdleScaler>,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub(crate) struct Options {
    pub catalog: Option<Catalog>,
    pub settings: Settings,
    pub data_dir: Option<PathBuf>,
    /// How the server serves (default: [`auth_layer`], plaintext, default limits).
    pub server: Option<jac_splice_orc::server::Options>,
    /// Startup state (default: started, nothing pending).
    pub readiness: Option<jac_splice_orc::service::Readiness>,
    /// Run the idle scaler with passes this often (as `serve` does every second).
    pub idle_scaler: Option<std::time::Duration>,
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
        let backend = Arc::new(
            LocalBackend::open(LocalOptions { data_dir: data_dir.clone(), python, ..Default::default() })
                .expect("backend"),
        );
        backend.restore().await;
        let catalog = Arc::new(opts.catalog.unwrap_or_else(Catalog::builtin));
        let mut service = Service::new(catalog, backend.clone() as Arc<dyn Backend>, opts.settings);
        if let Some(r) = opts.readiness {
            service = service.with_readiness(r);
        }
        let service = Arc::new(service);
        let server = opts.server.unwrap_or_else(|| jac_splice_orc::server::Options::new(auth_layer()));
        let (addr, tx, handle) = serve_with(service.clone(), server).await;
        let idle = opts.idle_scaler.map(|every| {
            jac_splice_orc::reconcile::IdleScaler::start(backend.clone() as Arc<dyn Backend>, every, None)
        });
        TestServer { addr, service, backend, shutdown: Some(tx), handle: Some(handle), idle, _tmp: tmp }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC client authenticated as `admin`.
    pub(crate) async fn grpc(&self) -> Grpc {
        grpc_client(&self.url(), Some(ADMIN)).await
    }

    /// A gRPC client sending `token` (none: unauthenticated).
    pub(crate) async fn grpc_as(&self, token: Option<&str>) -> Grpc {
        grpc_client(&self.url(), token).await
    }

    /// A ModuleProxy client sending `token`.
    pub(crate) async fn proxy_as(&self, token: Option<&str>) -> Proxy {
        proxy_client(&self.url(), token).await
    }

    /// An HTTP client authenticated as `admin`.
    pub(crate) fn http(&self) -> reqwest::Client {
        http_client(Some(ADMIN))
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
        if let Some(idle) = self.idle.take() {
            within(idle.stop()).await;
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

/// A dry run as the operator, outside any runtime: nothing in it waits (the operator is never
/// reviewed).
pub(crate) fn dry_run_now(
    service: &Service,
    req: &jac_splice_orc::service::DeploymentRequest,
) -> jac_splice_orc::service::Result<jac_splice_orc::service::DryRunView> {
    futures::executor::block_on(service.dry_run(&jac_splice_orc::auth::Caller::Operator, req))
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

/// Sends `AUTH password` to a Redis server; the first reply line.
pub(crate) async fn redis_auth(addr: &str, password: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("AUTH {password}\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

pub(crate) fn redis_available() -> bool {
    std::process::Command::new("redis-server").arg("--version").output().is_ok()
}

/// Serves any service (e.g. over the Kubernetes backend) on 127.0.0.1:0 with the test tokens
/// ([`auth_layer`]); drop the sender to stop.
pub(crate) async fn serve(service: Arc<Service>) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    serve_with(service, jac_splice_orc::server::Options::new(auth_layer())).await
}

/// [`serve`] with the given server options.
pub(crate) async fn serve_with(
    service: Arc<Service>,
    options: jac_splice_orc::server::Options,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        jac_splice_orc::server::serve(listener, service, options, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    (addr, tx, handle)
}

/// The bearer token of a kubeconfig's user (the test API server's static admin token, which
/// TokenReview accepts: user `admin` in `system:masters`).
pub(crate) fn kubeconfig_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("readable kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(|t| t.trim().trim_matches(['"', '\'']).to_string()))
        .expect("the test kubeconfig has a bearer token")
}

/// `jac-orc serve --backend kube` (the real binary) against the test API server, in a namespace
/// of its own, with its log lines collected. `None` (after saying why) when no test API server
/// is configured, unless `JAC_ORC_REQUIRE_K8S=1`.
pub(crate) struct KubeServe {
    pub(crate) addr: String,
    pub(crate) namespace: String,
    /// The kubeconfig's bearer token, which the server's TokenReview accepts as `admin`.
    pub(crate) token: String,
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
        // Deployments are JacDeployments: the served API writes them.
        crate::kube::install_crd(&client).await;
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
        let token = kubeconfig_token(Path::new(&path));
        let mut server = KubeServe { addr: String::new(), namespace, token, client, child, log };
        let line = server.wait_for_log("jac-orc listening on ").await;
        server.addr = line.split("jac-orc listening on ").nth(1).and_then(|r| r.split(' ').next()).unwrap().into();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An HTTP client authenticated with the kubeconfig's token.
    pub(crate) fn http(&self) -> reqwest::Client {
        http_client(Some(&self.token))
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
        let mut c = grpc_client(&self.url(), Some(&self.token)).await;
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

/// Reads a Deploy, Undeploy or Rollback stream to its end: the object events and the summary (or
/// the error status).
pub(crate) async fn run(
    stream: tonic::Streaming<pb::DeployEvent>,
) -> (Vec<pb::ObjectEvent>, Result<pb::DeploySummary, tonic::Status>) {
    let mut stream = stream;
    let mut events = Vec::new();
    let mut summary = None;
    while let Some(item) = within(tokio_stream::StreamExt::next(&mut stream)).await {
        match item {
            Ok(pb::DeployEvent { event: Some(pb::deploy_event::Event::Object(o)) }) => events.push(o),
            Ok(pb::DeployEvent { event: Some(pb::deploy_event::Event::Summary(s)) }) => summary = Some(Ok(s)),
            Ok(_) => {}
            Err(s) => summary = Some(Err(s)),
        }
    }
    (events, summary.expect("stream ended without summary or error"))
}
