//! The served module behind `server.rs`: `ModuleService` over one imported Python module and the
//! objects handed out to sessions. Each request's Python work runs under `Python::attach` in
//! `server::run_blocking` (on the connection thread for a lane, else on the blocking pool), so
//! the network threads never hold the GIL and calls run concurrently (as far as the served code
//! releases the GIL).
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tonic::{Request, Response, Status};

use crate::codec::{self, DecodeError};
use crate::errors::{chain, remote_error};
use crate::proto::module_service_server::{ModuleService, ModuleServiceServer};
use crate::proto::RemoteRef as WireRef;
use crate::proto::{
    value_response, CallRequest, DescribeRequest, DescribeResponse, GetAttrRequest, ReleaseRequest, ReleaseResponse,
    Value, ValueResponse,
};
use crate::refs::RefTable;
use crate::server::{self, from_lane, run_blocking, ServerHandle};
use crate::wire::{BUILTINS, OPERATOR};

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

/// Importing `builtins` or `operator` failed: the interpreter itself is broken.
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

/// Runs `f` attached to Python through `server::run_blocking`.
async fn run_python<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce(Python<'_>) -> T + Send + 'static,
) -> Result<T, Status> {
    run_blocking(inline, move || Python::attach(f)).await.map_err(|e| Status::internal(chain(&e)))
}

/// Drops Python objects with the GIL held, so their memory is freed now.
async fn drop_objects(objects: Vec<Py<PyAny>>) {
    if !objects.is_empty() {
        let _ = run_python(false, move |_py| drop(objects)).await;
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

/// Attaches each connection thread to Python once and detaches for the life of the connection:
/// the thread keeps its Python thread state, so each call's `Python::attach` only takes the GIL
/// (a thread state would otherwise be created and destroyed per call).
fn python_thread(run: Box<dyn FnOnce() + Send + '_>) {
    Python::attach(|py| py.detach(run));
}

/// A module being served.
#[derive(Debug)]
pub struct RunningServer {
    server: ServerHandle,
    host: Arc<Host>,
}

impl RunningServer {
    /// Imports nothing: serves `module` (already imported) on `config.host:config.port`.
    pub fn start(py: Python<'_>, module: Bound<'_, PyAny>, config: &ServerConfig) -> PyResult<Self> {
        let name: String = module.getattr("__name__")?.extract()?;
        let version = match module.getattr_opt("__version__")? {
            Some(v) => v.str()?.to_string(),
            None => String::new(),
        };
        let host = Arc::new(Host { module: module.unbind(), name, version, table: RefTable::new(config.lease) });
        let service = ModuleServiceServer::new(Service { host: host.clone() })
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let routes = tonic::service::Routes::new(service);
        let reaper = Box::pin(reap(host.clone()));
        let server = py
            .detach(|| server::start(&config.host, config.port, routes, python_thread, reaper))
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(chain(&e)))?;
        Ok(Self { server, host })
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// Waits up to `timeout` for the server to end; `Ok(true)` once it has.
    pub fn wait(&mut self, timeout: Duration) -> server::Result<bool> {
        self.server.wait(timeout)
    }

    /// Asks the server to stop (in-flight requests finish) and frees every reference: the
    /// objects are returned so the caller drops them with the GIL held.
    pub fn stop(&mut self) -> Vec<Py<PyAny>> {
        self.server.stop();
        self.host.table.clear()
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
