//! The module server: serves `ModuleService` and gRPC health for one imported Python module.
//! Tonic runs on the server's own single-threaded runtime; each request's Python work runs in
//! `spawn_blocking` under `Python::attach`, so the network thread never holds the GIL and calls
//! run concurrently (as far as the served code releases the GIL).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::client::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use crate::codec::{self, DecodeError};
use crate::errors::{is_oversize, remote_error};
use crate::proto::module_service_server::{ModuleService, ModuleServiceServer};
use crate::proto::RemoteRef as WireRef;
use crate::proto::{
    value_response, CallRequest, DescribeRequest, DescribeResponse, GetAttrRequest, ReleaseRequest, ReleaseResponse,
    Value, ValueResponse,
};
use crate::refs::RefTable;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub lease: Duration,
    pub max_message_bytes: usize,
}

/// The served module and the objects handed out to sessions.
struct Host {
    module: Py<PyAny>,
    name: String,
    version: String,
    table: RefTable<Py<PyAny>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What a request's Python work produced: a value, or a protocol error for the status.
type Outcome = Result<ValueResponse, Status>;

impl Host {
    fn resolve<'py>(&self, py: Python<'py>, session: &str, target: &str) -> Result<Bound<'py, PyAny>, Status> {
        match target {
            "" => return Ok(self.module.bind(py).clone()),
            BUILTINS => return py.import("builtins").map(Bound::into_any).map_err(internal),
            OPERATOR => return py.import("operator").map(Bound::into_any).map_err(internal),
            _ => {}
        }
        self.table.get(session, target, |obj| obj.clone_ref(py).into_bound(py)).ok_or_else(|| unknown_ref(target))
    }

    /// Plain data by value, anything else as a reference stored for `session`.
    fn encode_result(&self, session: &str, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
        if let Some(value) = codec::encode(obj, &mut |_| Ok(None))? {
            return Ok(value);
        }
        let r = WireRef { type_name: codec::type_name(obj)?, callable: obj.is_callable(), id: String::new() };
        let id = self.table.insert(session, obj.clone().unbind());
        Ok(Value { kind: Some(crate::proto::value::Kind::Ref(WireRef { id, ..r })) })
    }

    fn finish(&self, py: Python<'_>, session: &str, result: PyResult<Bound<'_, PyAny>>) -> ValueResponse {
        let result = result.and_then(|obj| self.encode_result(session, &obj));
        ValueResponse {
            result: Some(match result {
                Ok(value) => value_response::Result::Value(value),
                Err(err) => value_response::Result::Error(remote_error(py, &err)),
            }),
        }
    }

    fn get_attr(&self, py: Python<'_>, request: GetAttrRequest) -> Outcome {
        let target = self.resolve(py, &request.session, &request.target)?;
        let result = walk(target, &request.path);
        Ok(self.finish(py, &request.session, result))
    }

    fn call(&self, py: Python<'_>, request: CallRequest) -> Outcome {
        let session = request.session.as_str();
        let target = self.resolve(py, session, &request.target)?;
        let mut lookup = |r: WireRef| self.resolve(py, session, &r.id).map_err(|_| DecodeError::UnknownRef(r.id));
        let mut args = Vec::with_capacity(request.args.len());
        let kwargs = PyDict::new(py);
        let decoded: Result<(), DecodeError> = (|| {
            for arg in request.args {
                args.push(codec::decode(py, arg, &mut lookup)?);
            }
            for kwarg in request.kwargs {
                let value = kwarg.value.ok_or(DecodeError::Malformed("kwarg without a value"))?;
                kwargs.set_item(kwarg.name, codec::decode(py, value, &mut lookup)?)?;
            }
            Ok(())
        })();
        match decoded {
            Ok(()) => {}
            Err(DecodeError::UnknownRef(id)) => return Err(unknown_ref(&id)),
            Err(DecodeError::Malformed(what)) => return Err(Status::invalid_argument(what)),
            Err(DecodeError::Python(err)) => return Ok(self.finish(py, session, Err(err))),
        }
        let result = walk(target, &request.path).and_then(|callee| {
            let args = PyTuple::new(py, args)?;
            callee.call(args, Some(&kwargs))
        });
        Ok(self.finish(py, session, result))
    }
}

/// Targets naming the server's standard modules, used by proxies for protocols (`len`, `+`, ...).
const BUILTINS: &str = "@builtins";
const OPERATOR: &str = "@operator";

fn internal(err: PyErr) -> Status {
    Status::internal(err.to_string())
}

fn walk<'py>(mut obj: Bound<'py, PyAny>, path: &[String]) -> PyResult<Bound<'py, PyAny>> {
    for name in path {
        obj = obj.getattr(name.as_str())?;
    }
    Ok(obj)
}

fn unknown_ref(id: &str) -> Status {
    Status::not_found(format!("unknown reference id {id:?} (released, expired, or from another session)"))
}

fn check_session(session: &str) -> Result<(), Status> {
    if session.is_empty() {
        Err(Status::invalid_argument("a session id is required"))
    } else {
        Ok(())
    }
}

/// Request metadata of a client lane: the connection carries one call at a time (see
/// `client::Lane`), so the connection's own thread runs the call (no hand-off to a pool thread).
pub const LANE_HEADER: &str = "jac-splice-lane";

fn from_lane<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(LANE_HEADER)
}

/// Python work handed from a request to its connection thread's loop.
type Job = Box<dyn FnOnce() + Send>;

std::thread_local! {
    /// On a connection thread: where its loop picks up jobs to run outside the runtime.
    static INLINE: std::cell::RefCell<Option<tokio::sync::mpsc::UnboundedSender<Job>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs Python work: for a lane's request on this connection's thread (it has nothing else to
/// do meanwhile), else on the blocking pool so the connection keeps serving other streams.
///
/// On the connection thread the work runs *between* turns of its runtime, not inside one: served
/// code may block on a runtime of its own (a jac-splice client, any tokio-based library), which
/// is not allowed from within a runtime.
async fn run_python<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce(Python<'_>) -> T + Send + 'static,
) -> Result<T, Status> {
    let sender = if inline { INLINE.with(|c| c.borrow().clone()) } else { None };
    let Some(sender) = sender else {
        return blocking(f).await;
    };
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(Python::attach(f));
    });
    if let Err(unsent) = sender.send(job) {
        // The loop is gone (shutting down): run it here rather than fail the call.
        (unsent.0)();
    }
    rx.await.map_err(|_| Status::internal("the connection's call was dropped"))
}

/// Runs Python work off the network threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce(Python<'_>) -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || Python::attach(f))
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))
}

/// Drops Python objects with the GIL held, so their memory is freed now.
async fn drop_objects(objects: Vec<Py<PyAny>>) {
    if !objects.is_empty() {
        let _ = blocking(move |_py| drop(objects)).await;
    }
}

#[derive(Debug, Clone)]
struct Service {
    host: Arc<Host>,
}

#[tonic::async_trait]
impl ModuleService for Service {
    async fn get_attr(&self, request: Request<GetAttrRequest>) -> Result<Response<ValueResponse>, Status> {
        let inline = from_lane(&request);
        let request = request.into_inner();
        check_session(&request.session)?;
        self.host.table.touch(&request.session);
        let host = self.host.clone();
        run_python(inline, move |py| host.get_attr(py, request)).await?.map(Response::new)
    }

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<ValueResponse>, Status> {
        let inline = from_lane(&request);
        let request = request.into_inner();
        check_session(&request.session)?;
        self.host.table.touch(&request.session);
        let host = self.host.clone();
        run_python(inline, move |py| host.call(py, request)).await?.map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let request = request.into_inner();
        check_session(&request.session)?;
        self.host.table.touch(&request.session);
        let (freed, remaining) = self.host.table.remove(&request.session, &request.ids);
        let released = u32::try_from(freed.len()).unwrap_or(u32::MAX);
        drop_objects(freed).await;
        Ok(Response::new(ReleaseResponse { released, remaining }))
    }

    async fn describe(&self, request: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let request = request.into_inner();
        check_session(&request.session)?;
        self.host.table.touch(&request.session);
        let counts = self.host.table.counts(&request.session);
        let python_version = Python::version_str().to_owned();
        Ok(Response::new(DescribeResponse {
            module: self.host.name.clone(),
            module_version: self.host.version.clone(),
            python_version,
            pid: i64::from(std::process::id()),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            session_refs: counts.session_refs,
            total_refs: counts.total_refs,
            sessions: counts.sessions,
            lease_seconds: self.host.table.lease().as_secs_f64(),
        }))
    }
}

/// Rewrites tonic's OUT_OF_RANGE "message length too large" into gRPC's RESOURCE_EXHAUSTED.
fn oversize_to_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let oversize = headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some("11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| is_oversize(&Status::out_of_range(percent_decode(m))));
    if oversize {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

fn percent_decode(text: &str) -> String {
    text.replace("%20", " ")
}

/// A running module server.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<(), String>>>,
    host: Arc<Host>,
}

impl RunningServer {
    /// Binds, then serves until `stop`: a thread accepts connections and gives each its own
    /// thread (see `serve_connection`); leases are reaped on the accepting thread.
    pub fn start(py: Python<'_>, module: Bound<'_, PyAny>, config: &ServerConfig) -> PyResult<Self> {
        let name: String = module.getattr("__name__")?.extract()?;
        let version = match module.getattr_opt("__version__")? {
            Some(v) => v.str()?.to_string(),
            None => String::new(),
        };
        let host = Arc::new(Host { module: module.unbind(), name, version, table: RefTable::new(config.lease) });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("jac-splice-call")
            .build()
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        let bind_to = (config.host.clone(), config.port);
        let listener = py.detach(|| rt.block_on(tokio::net::TcpListener::bind(bind_to))).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("cannot listen on {}:{}: {e}", config.host, config.port))
        })?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let service = ModuleServiceServer::new(Service { host: host.clone() })
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let lease_host = host.clone();
        let routes = tonic::service::Routes::new(service);
        let serve = async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<ModuleServiceServer<Service>>().await;
            for name in ["", "ModuleService"] {
                reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
            }
            let routes = routes.add_service(health);
            let reaper = tokio::spawn(reap(lease_host));
            let result = accept_loop(listener, routes, async {
                let _ = rx.await;
            })
            .await;
            reaper.abort();
            result
        };
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new().name("jac-splice-server".into()).spawn(move || {
            let result = rt.block_on(serve);
            // Calls still running in the blocking pool finish on their own.
            rt.shutdown_background();
            let _ = done_tx.send(result);
        })?;
        Ok(Self { addr, shutdown: Some(tx), done: Some(done), host })
    }

    /// Waits up to `timeout` for the server to end; `Ok(true)` once it has.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, String> {
        let Some(done) = self.done.as_mut() else {
            return Ok(true);
        };
        let rt = crate::runtime::rt();
        match rt.block_on(async { tokio::time::timeout(timeout, done).await }) {
            Err(_) => Ok(false),
            Ok(ended) => {
                self.done = None;
                ended.map_err(|_| "the server thread ended abruptly".to_owned())?.map(|()| true)
            }
        }
    }

    /// Asks the server to stop (in-flight requests finish) and frees every reference.
    pub fn stop(&mut self) -> Vec<Py<PyAny>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.host.table.clear()
    }
}

type Routes = tower::util::MapResponse<
    tonic::service::Routes,
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

/// Accepts connections until `shutdown`, then closes them gracefully (in-flight calls finish)
/// and returns once all are closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let routes: Routes = tower::util::MapResponse::new(routes, oversize_to_resource_exhausted);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(stream, _)| {
                    stream.set_nodelay(true)?;
                    stream.into_std()
                }) {
                    Ok(stream) => stream,
                    Err(_) => {
                        // Out of file descriptors and the like: back off a little.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (routes, stop, alive) = (routes.clone(), stop_rx.clone(), alive_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name("jac-splice-conn".into())
                    .spawn(move || serve_connection(stream, routes, stop, alive));
                if let Err(e) = spawned {
                    return Err(format!("cannot start a connection thread: {e}"));
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// Serves one connection on this thread (like a threaded server: a lane's calls run right here;
/// calls from multiplexing clients go to the blocking pool of this thread's runtime).
fn serve_connection(
    stream: std::net::TcpStream,
    routes: Routes,
    mut stop: tokio::sync::watch::Receiver<()>,
    _alive: tokio::sync::mpsc::Sender<()>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    // Attach once and detach for the life of the connection: the thread keeps its Python thread
    // state, so each call's `Python::attach` only takes the GIL (a thread state would otherwise
    // be created and destroyed per call).
    Python::attach(|py| py.detach(|| serve_on(&rt, stream, routes, &mut stop)));
    // Calls still running in the blocking pool finish on their own.
    rt.shutdown_background();
}

/// What ended one turn of a connection thread's runtime.
enum Turn {
    Job(Job),
    Stop,
    Done,
}

/// The connection thread's loop: drive the connection until a lane's request has Python work,
/// run that work outside the runtime, resume.
fn serve_on(
    rt: &tokio::runtime::Runtime,
    stream: std::net::TcpStream,
    routes: Routes,
    stop: &mut tokio::sync::watch::Receiver<()>,
) {
    let _context = rt.enter();
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let (jobs_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
    INLINE.with(|c| *c.borrow_mut() = Some(jobs_tx));
    let service = hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
        routes,
        |request: http::Request<hyper::body::Incoming>| request.map(tonic::body::Body::new),
    ));
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    let mut connection = std::pin::pin!(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    let mut stopping = false;
    loop {
        let turn = rt.block_on(async {
            tokio::select! {
                biased;
                job = jobs.recv() => job.map_or(Turn::Done, Turn::Job),
                _ = &mut connection => Turn::Done,
                _ = stop.changed(), if !stopping => Turn::Stop,
            }
        });
        match turn {
            Turn::Job(job) => job(),
            Turn::Stop => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            Turn::Done => break,
        }
    }
    INLINE.with(|c| c.borrow_mut().take());
    // Jobs queued meanwhile (none normally) still run, so no caller waits forever.
    while let Ok(job) = jobs.try_recv() {
        job();
    }
}

/// Frees the references of sessions whose lease ended.
async fn reap(host: Arc<Host>) {
    let every = (host.table.lease() / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        drop_objects(host.table.expire(Instant::now())).await;
    }
}
