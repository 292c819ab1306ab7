//! Test support, with no Python: a module server made of `server.rs` and a recording
//! `ModuleService` (and `ModuleProxy`), and stand-ins for other gRPC servers, all on
//! 127.0.0.1:0. Every server here is stopped when its guard is dropped.
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::client::{Connection, Options};
use crate::proto::module_proxy_server::{ModuleProxy, ModuleProxyServer};
use crate::proto::module_service_server::{ModuleService, ModuleServiceServer};
use crate::proto::{
    call_result, value, value_response, CallBatchRequest, CallBatchResponse, CallRequest, CallResult, DescribeRequest,
    DescribeResponse, GetAttrRequest, ProxyCallBatchRequest, ProxyCallRequest, ProxyDescribeRequest,
    ProxyGetAttrRequest, ProxyReleaseRequest, ReleaseRequest, ReleaseResponse, Value, ValueResponse,
};
use crate::runtime::rt;
use crate::server::{self, from_lane, run_blocking, Security, ServerHandle};

/// How long a test waits for something that should happen at once: generous, so a slow machine
/// never fails a test; a wait that runs out means the behaviour is wrong.
pub const BOUND: Duration = Duration::from_secs(30);

/// Where a call ran on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub lane: bool,
    pub thread: ThreadId,
    pub thread_name: Option<String>,
}

impl Seen {
    pub fn on_connection_thread(&self) -> bool {
        self.thread_name.as_deref() == Some("jac-splice-conn")
    }
}

/// `n` parties meet: each `arrive` returns once all have arrived (true), or after `BOUND`
/// (false: the others never came, so they were not running at the same time).
#[derive(Debug)]
pub struct Rendezvous {
    n: usize,
    arrived: Mutex<usize>,
    all: Condvar,
}

impl Rendezvous {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self { n, arrived: Mutex::new(0), all: Condvar::new() })
    }

    pub fn arrive(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let (_arrived, waited) = self.all.wait_timeout_while(arrived, BOUND, |a| *a < self.n).unwrap();
        !waited.timed_out()
    }
}

/// A `CallBatch` as received: its session and its calls' targets.
pub type SeenBatch = (String, Vec<String>);

/// A `ModuleService` (and `ModuleProxy`) that records each call: `Call` answers with the name of
/// the thread it ran on, after meeting the others at `meet` and then at `then` if set; `Release`
/// records the batch size.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub releases: Arc<Mutex<Vec<usize>>>,
    /// The session and the calls' targets of every `CallBatch`, as received.
    pub batches: Arc<Mutex<Vec<SeenBatch>>>,
    /// The `grpc-timeout` of every `Call` and `GetAttr`, as received.
    pub deadlines: Arc<Mutex<Vec<Option<String>>>>,
    pub meet: Option<Arc<Rendezvous>>,
    pub then: Option<Arc<Rendezvous>>,
}

impl Recorder {
    pub fn meeting(n: usize) -> Self {
        Self { meet: Some(Rendezvous::new(n)), ..Self::default() }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn record<T>(&self, request: &Request<T>) -> Result<Response<ValueResponse>, Status> {
        let lane = from_lane(request);
        let deadline = request.metadata().get(crate::deadline::HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.deadlines.lock().unwrap().push(deadline);
        let (meet, then) = (self.meet.clone(), self.then.clone());
        let (seen, met) = run_blocking(lane, move || {
            let met = meet.is_none_or(|m| m.arrive()) && then.is_none_or(|m| m.arrive());
            let thread = std::thread::current();
            (Seen { lane, thread: thread.id(), thread_name: thread.name().map(str::to_owned) }, met)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        self.seen.lock().unwrap().push(seen.clone());
        if !met {
            return Err(Status::deadline_exceeded("the other callers never arrived"));
        }
        let name = Value { kind: Some(value::Kind::StrValue(seen.thread_name.unwrap_or_default())) };
        Ok(Response::new(ValueResponse { result: Some(value_response::Result::Value(name)) }))
    }
}

#[tonic::async_trait]
impl ModuleService for Recorder {
    async fn get_attr(&self, request: Request<GetAttrRequest>) -> Result<Response<ValueResponse>, Status> {
        self.record(&request).await
    }

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<ValueResponse>, Status> {
        self.record(&request).await
    }

    /// Answers each call with its target as text, in order.
    async fn call_batch(&self, request: Request<CallBatchRequest>) -> Result<Response<CallBatchResponse>, Status> {
        let CallBatchRequest { session, calls } = request.into_inner();
        let targets: Vec<String> = calls.into_iter().map(|c| c.target).collect();
        self.batches.lock().unwrap().push((session, targets.clone()));
        let results = targets
            .into_iter()
            .map(|target| {
                let value = Value { kind: Some(value::Kind::StrValue(target)) };
                let response = ValueResponse { result: Some(value_response::Result::Value(value)) };
                CallResult { result: Some(call_result::Result::Response(response)) }
            })
            .collect();
        Ok(Response::new(CallBatchResponse { results }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let ids = request.into_inner().ids;
        self.releases.lock().unwrap().push(ids.len());
        Ok(Response::new(ReleaseResponse { released: u32::try_from(ids.len()).unwrap(), remaining: 0 }))
    }

    async fn describe(&self, _: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse { module: "recorder".into(), ..DescribeResponse::default() }))
    }
}

#[tonic::async_trait]
impl ModuleProxy for Recorder {
    async fn get_attr(&self, request: Request<ProxyGetAttrRequest>) -> Result<Response<ValueResponse>, Status> {
        self.record(&request).await
    }

    async fn call(&self, request: Request<ProxyCallRequest>) -> Result<Response<ValueResponse>, Status> {
        self.record(&request).await
    }

    async fn call_batch(&self, _: Request<ProxyCallBatchRequest>) -> Result<Response<CallBatchResponse>, Status> {
        Err(Status::unimplemented("not needed by the tests"))
    }

    async fn release(&self, _: Request<ProxyReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        Err(Status::unimplemented("not needed by the tests"))
    }

    async fn describe(&self, _: Request<ProxyDescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        Err(Status::unimplemented("not needed by the tests"))
    }
}

fn plain_thread(run: Box<dyn FnOnce() + Send + '_>) {
    run();
}

/// A module server (`server::start`) serving `recorder`; stopped on drop.
#[derive(Debug)]
pub struct TestModuleServer {
    pub handle: ServerHandle,
}

impl TestModuleServer {
    pub fn start(recorder: Recorder) -> Self {
        Self::start_with(recorder, Security::open())
    }

    /// Serving only the callers `security` lets in.
    pub fn start_with(recorder: Recorder, security: Security) -> Self {
        let routes = tonic::service::Routes::new(ModuleServiceServer::new(recorder));
        let handle =
            server::start("127.0.0.1", 0, routes, security, plain_thread, Box::pin(std::future::pending())).unwrap();
        Self { handle }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }
}

impl Drop for TestModuleServer {
    fn drop(&mut self) {
        self.handle.stop();
        let ended = self.handle.wait(BOUND);
        if !std::thread::panicking() {
            assert!(ended.unwrap(), "the module server did not stop");
        }
    }
}

/// Some other gRPC server on the shared runtime (tonic's own server); stopped on drop.
#[derive(Debug)]
pub struct Stub {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Stub {
    /// Serves `routes`, plus a health service reporting `health` if given.
    pub fn start(routes: tonic::service::Routes, health: Option<&[(&str, ServingStatus)]>) -> Self {
        let health: Option<Vec<(String, ServingStatus)>> =
            health.map(|h| h.iter().map(|(name, status)| ((*name).to_owned(), *status)).collect());
        rt().block_on(async move {
            let mut routes = routes;
            if let Some(statuses) = health {
                let (reporter, service) = tonic_health::server::health_reporter();
                for (name, status) in statuses {
                    reporter.set_service_status(name, status).await;
                }
                routes = routes.add_service(service);
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = tokio::spawn(
                tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }),
            );
            Self { addr, shutdown: Some(tx), served: Some(served) }
        })
    }

    /// A server whose only service is `ModuleProxy` (a recorder), with `health`.
    pub fn proxy(recorder: Recorder, health: Option<&[(&str, ServingStatus)]>) -> Self {
        Self::start(tonic::service::Routes::new(ModuleProxyServer::new(recorder)), health)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            let ended = rt().block_on(async { tokio::time::timeout(BOUND, served).await });
            if !std::thread::panicking() {
                assert!(matches!(ended, Ok(Ok(Ok(())))), "the stub server did not stop cleanly: {ended:?}");
            }
        }
    }
}

/// A free loopback address that nothing listens on (bound, then released).
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A client connection to `addr`.
pub fn connect(addr: SocketAddr) -> Arc<Connection> {
    connect_with(&addr.to_string(), None, None)
}

/// A client connection to `target` sending `token`, trusting `ca` for https.
pub fn connect_with(target: &str, token: Option<&str>, ca: Option<&[u8]>) -> Arc<Connection> {
    let options = Options {
        token: token.map(str::to_owned),
        ca: ca.map(<[u8]>::to_vec),
        max_message_bytes: 4 << 20,
        channels: 2,
        connect_timeout: BOUND,
    };
    let _runtime = rt().enter();
    Connection::new(target, &options).unwrap()
}

/// Never interrupts a blocked call.
pub fn never() -> Result<(), std::convert::Infallible> {
    Ok(())
}
