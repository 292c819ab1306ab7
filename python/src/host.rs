//! The served module behind `server.rs`: `ModuleService` over one imported Python module and the
//! objects handed out to sessions. Each request's Python work runs under `Python::attach` in
//! `server::run_blocking` (on the connection thread for a lane, else on the blocking pool), so
//! the network threads never hold the GIL and calls run concurrently (as far as the served code
//! releases the GIL).
//!
//! What may be reached is narrowed twice: `surface.rs` refuses helpers and dunder names from the
//! request alone, and here no attribute step or result may be a module outside the served one
//! (`mod.os`, `mod.sys.modules`...) or interpreter internals (frames, code, tracebacks: a
//! generator's `gi_frame.f_globals` holds `__builtins__`). Both answer PERMISSION_DENIED.
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple, PyType};
use tonic::{Request, Response, Status};

use crate::codec::{self, DecodeError};
use crate::deadline;
use crate::errors::{chain, remote_error};
use crate::proto::module_service_server::{ModuleService, ModuleServiceServer};
use crate::proto::RemoteRef as WireRef;
use crate::proto::{
    call_result, value_response, CallBatchRequest, CallBatchResponse, CallFailure, CallRequest, CallResult,
    DescribeRequest, DescribeResponse, GetAttrRequest, ReleaseRequest, ReleaseResponse, Value, ValueResponse,
};
use crate::refs::RefTable;
use crate::server::{self, from_lane, run_blocking, Security, ServerHandle};
use crate::surface::{self, Refused};
use crate::wire::{BUILTINS, MAX_BATCH_CALLS, OPERATOR, SPLICE};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub lease: Duration,
    pub max_message_bytes: usize,
    pub security: Security,
}

/// The served module and the objects handed out to sessions.
struct Host {
    module: Py<PyAny>,
    name: String,
    version: String,
    table: RefTable<Py<PyAny>>,
    /// `types.FrameType`, `CodeType`, `TracebackType`: never walked into nor handed out.
    internals: Vec<Py<PyType>>,
    last_call: crate::idle::LastCall,
}

/// Why a request's Python work ended without a value.
enum Failure {
    /// Raised by the served code (or the attribute lookup): sent back as a `RemoteError`.
    Python(PyErr),
    /// Not served: PERMISSION_DENIED.
    Refused(Refused),
}

impl From<PyErr> for Failure {
    fn from(err: PyErr) -> Self {
        Self::Python(err)
    }
}

impl From<Refused> for Failure {
    fn from(refused: Refused) -> Self {
        Self::Refused(refused)
    }
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

    /// Refuses `obj`, reached as `name`, if it is a module other than the served one (or its
    /// submodules) or interpreter internals.
    fn guard(&self, name: &str, obj: &Bound<'_, PyAny>) -> Result<(), Failure> {
        if let Ok(module) = obj.cast::<PyModule>() {
            let module = module.name()?.to_string();
            let inside = module == self.name
                || module.strip_prefix(self.name.as_str()).is_some_and(|rest| rest.starts_with('.'));
            if !inside {
                return Err(Refused::ForeignModule { name: name.to_owned(), module, served: self.name.clone() }.into());
            }
        }
        for internal in &self.internals {
            if obj.is_instance(internal.bind(obj.py()))? {
                return Err(Refused::Internals { name: name.to_owned(), kind: codec::type_name(obj)? }.into());
            }
        }
        Ok(())
    }

    /// `obj.path[0].path[1]...`, each step guarded.
    fn walk<'py>(&self, mut obj: Bound<'py, PyAny>, path: &[String]) -> Result<Bound<'py, PyAny>, Failure> {
        for name in path {
            obj = obj.getattr(name.as_str())?;
            self.guard(name, &obj)?;
        }
        Ok(obj)
    }

    /// Plain data by value, anything else (if served) as a reference stored for `session`.
    fn encode_result(&self, session: &str, obj: &Bound<'_, PyAny>) -> Result<Value, Failure> {
        if let Some(value) = codec::encode(obj, &mut |_| Ok(None))? {
            return Ok(value);
        }
        self.guard("the result", obj)?;
        let r = WireRef { type_name: codec::type_name(obj)?, callable: obj.is_callable(), id: String::new() };
        let id = self.table.insert(session, obj.clone().unbind());
        Ok(Value { kind: Some(crate::proto::value::Kind::Ref(WireRef { id, ..r })) })
    }

    fn finish(&self, py: Python<'_>, session: &str, result: Result<Bound<'_, PyAny>, Failure>) -> Outcome {
        let result = result.and_then(|obj| self.encode_result(session, &obj));
        let result = match result {
            Ok(value) => value_response::Result::Value(value),
            Err(Failure::Python(err)) => value_response::Result::Error(remote_error(py, &err)),
            Err(Failure::Refused(refused)) => return Err(refused.into()),
        };
        Ok(ValueResponse { result: Some(result) })
    }

    fn get_attr(&self, py: Python<'_>, request: GetAttrRequest) -> Outcome {
        let target = self.resolve(py, &request.session, &request.target)?;
        let result = self.walk(target, &request.path);
        self.finish(py, &request.session, result)
    }

    fn call(&self, py: Python<'_>, request: CallRequest) -> Outcome {
        let session = request.session.as_str();
        let target = match request.target.as_str() {
            SPLICE => None,
            target => Some(self.resolve(py, session, target)?),
        };
        // Arguments are references the session holds (or the served module, ""); the reserved
        // targets are not references, or `builtins` itself could be passed to served code.
        let mut lookup = |r: WireRef| match r.id.as_str() {
            id if surface::is_reserved(id) => Err(DecodeError::UnknownRef(r.id)),
            id => self.resolve(py, session, id).map_err(|_| DecodeError::UnknownRef(r.id)),
        };
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
            Err(err) => return self.finish(py, session, Err(err.into_pyerr(py).into())),
        }
        let Some(target) = target else {
            // `@splice`: `surface::check_call` let only `describe` through.
            let result = match (args.as_slice(), kwargs.is_empty()) {
                ([obj], true) => describe(obj).map_err(Failure::from),
                _ => Err(PyTypeError::new_err("@splice.describe takes exactly one argument").into()),
            };
            return self.finish(py, session, result);
        };
        let result = self.walk(target, &request.path).and_then(|callee| {
            let args = PyTuple::new(py, args)?;
            Ok(callee.call(args, Some(&kwargs))?)
        });
        self.finish(py, session, result)
    }

    /// The calls of a batch in order, under the one attachment of the batch: each as `call`
    /// would run it (refused, unknown reference or past the deadline fails only that call).
    fn call_batch(&self, py: Python<'_>, deadline: Option<Instant>, request: CallBatchRequest) -> CallBatchResponse {
        let session = request.session;
        let results = request
            .calls
            .into_iter()
            .map(|mut call| {
                call.session.clone_from(&session);
                let outcome = surface::check_call(&call)
                    .map_err(Status::from)
                    .and_then(|()| deadline::check(deadline))
                    .and_then(|()| self.call(py, call));
                let result = match outcome {
                    Ok(response) => call_result::Result::Response(response),
                    Err(status) => call_result::Result::Failure(CallFailure {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        details: status.details().to_vec().into(),
                    }),
                };
                CallResult { result: Some(result) }
            })
            .collect();
        CallBatchResponse { results }
    }
}

/// `@splice.describe(obj)`: what a proxy shows as the object's own, as plain data only (the
/// text of a signature, never the `Signature` with its defaults and annotations):
/// `kind` ("module", "class", "function" for any routine, else "object"), `doc`, `name`,
/// `qualname`, `module` (`None` when absent or not text), `signature` (`str(inspect.signature(obj))`
/// of a callable) or `signature_error` (why there is none), and `type_level`: whether the
/// object's doc is its type's and it has no name of its own, so a client may reuse the answer
/// for every instance of the type.
fn describe<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let inspect = py.import("inspect")?;
    let is = |predicate: &str| -> PyResult<bool> { inspect.call_method1(predicate, (obj,))?.is_truthy() };
    let kind = if is("ismodule")? {
        "module"
    } else if is("isclass")? {
        "class"
    } else if is("isroutine")? {
        "function"
    } else {
        "object"
    };
    // A failing property reads as "absent": the answer is for display, and one odd attribute
    // must not hide the others.
    let text = |name: &str| -> Option<String> {
        obj.getattr(name).ok().and_then(|value| value.cast_into::<PyString>().ok()).map(|s| s.to_string())
    };
    let doc = obj.getattr("__doc__").ok();
    let out = PyDict::new(py);
    out.set_item("kind", kind)?;
    out.set_item("doc", doc.as_ref().and_then(|d| d.cast::<PyString>().ok()).map(|s| s.to_string()))?;
    let (name, qualname) = (text("__name__"), text("__qualname__"));
    let type_doc = obj.get_type().getattr("__doc__").ok();
    let doc_is_the_types = match (&doc, &type_doc) {
        (Some(doc), Some(type_doc)) => doc.is(type_doc),
        (None, None) => true,
        _ => false,
    };
    let type_level = kind == "object" && !obj.is_callable() && doc_is_the_types && name.is_none() && qualname.is_none();
    out.set_item("name", name)?;
    out.set_item("qualname", qualname)?;
    out.set_item("module", text("__module__"))?;
    out.set_item("type_level", type_level)?;
    let (signature, signature_error) = if obj.is_callable() {
        match inspect.call_method1("signature", (obj,)).and_then(|sig| sig.str()) {
            Ok(sig) => (Some(sig.to_string()), None),
            Err(err) => (None, Some(format!("{}: {}", codec::type_name(err.value(py))?, err.value(py).str()?))),
        }
    } else {
        (None, Some("not callable".to_owned()))
    };
    out.set_item("signature", signature)?;
    out.set_item("signature_error", signature_error)?;
    Ok(out.into_any())
}

/// Importing `builtins` or `operator` failed: the interpreter itself is broken.
fn internal(err: PyErr) -> Status {
    Status::internal(err.to_string())
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
        let deadline = deadline::of(&request);
        let request = request.into_inner();
        check_session(&request.session)?;
        surface::check_get_attr(&request.target, &request.path)?;
        self.host.table.touch(&request.session);
        let _running = self.host.last_call.begin();
        let host = self.host.clone();
        let work = run_python(inline, move |py| {
            deadline::check(deadline)?;
            host.get_attr(py, request)
        });
        deadline::serve(deadline, async { work.await? }).await.map(Response::new)
    }

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<ValueResponse>, Status> {
        let inline = from_lane(&request);
        let deadline = deadline::of(&request);
        let request = request.into_inner();
        check_session(&request.session)?;
        surface::check_call(&request)?;
        self.host.table.touch(&request.session);
        let _running = self.host.last_call.begin();
        let host = self.host.clone();
        let work = run_python(inline, move |py| {
            deadline::check(deadline)?;
            host.call(py, request)
        });
        deadline::serve(deadline, async { work.await? }).await.map(Response::new)
    }

    /// Every call of the batch in one blocking hop and one `Python::attach` (what makes
    /// pipelined calls cheap): the token was checked once for the request, as for `Call`.
    async fn call_batch(&self, request: Request<CallBatchRequest>) -> Result<Response<CallBatchResponse>, Status> {
        let inline = from_lane(&request);
        let deadline = deadline::of(&request);
        let request = request.into_inner();
        check_session(&request.session)?;
        if request.calls.len() > MAX_BATCH_CALLS {
            return Err(Status::invalid_argument(format!(
                "calls: a batch holds at most {MAX_BATCH_CALLS} calls, got {}",
                request.calls.len()
            )));
        }
        self.host.table.touch(&request.session);
        let _running = self.host.last_call.begin();
        let host = self.host.clone();
        let work = run_python(inline, move |py| host.call_batch(py, deadline, request));
        deadline::serve(deadline, work).await.map(Response::new)
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
            idle_seconds: self.host.last_call.idle().as_secs_f64(),
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
        let types = py.import("types")?;
        let internals = ["FrameType", "CodeType", "TracebackType"]
            .into_iter()
            .map(|name| Ok(types.getattr(name)?.cast_into::<PyType>()?.unbind()))
            .collect::<PyResult<Vec<_>>>()?;
        let table = RefTable::new(config.lease);
        let last_call = crate::idle::LastCall::new();
        let host = Arc::new(Host { module: module.unbind(), name, version, table, internals, last_call });
        let service = ModuleServiceServer::new(Service { host: host.clone() })
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let routes = tonic::service::Routes::new(service);
        let reaper = Box::pin(reap(host.clone()));
        let server = py
            .detach(|| server::start(&config.host, config.port, routes, config.security.clone(), python_thread, reaper))
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
