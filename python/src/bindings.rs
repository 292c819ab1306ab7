//! The Python methods of `Client` and the `ModuleServer` class: thin wrappers that convert
//! arguments while attached, wait detached (`blocking.rs`), and convert results back. What a
//! session holds lives in `handle.rs`, how its calls are sent in `calls.rs`.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::access::{Access, CallToken};
use crate::blocking::wait_for;
use crate::client::{new_session_id, Connection, Options, Route};
use crate::deadline;
use crate::direct::{self, Direct};
use crate::errors::{chain, client_to_pyerr, Peer};
use crate::handle::Client;
use crate::host::{RunningServer, ServerConfig};
use crate::pending::PendingCall;
use crate::pipeline;
use crate::proto::{Deployment, EnsureModuleRequest, ProxyTarget};
use crate::runtime::{rt, SLICE};
use crate::server::{tls_acceptor, Security};

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (target, *, token=None, ca=None, heartbeat_seconds=Some(10.0), max_message_bytes=1<<30, channels=2, connect_timeout_seconds=5.0, call_timeout_seconds=None))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one each
    fn new(
        py: Python<'_>,
        target: String,
        token: Option<String>,
        ca: Option<Vec<u8>>,
        heartbeat_seconds: Option<f64>,
        max_message_bytes: usize,
        channels: usize,
        connect_timeout_seconds: f64,
        call_timeout_seconds: Option<f64>,
    ) -> PyResult<Self> {
        let call_timeout =
            deadline::from_seconds(call_timeout_seconds, "call_timeout").map_err(PyValueError::new_err)?;
        let peer = Peer { address: &target, token_sent: token.is_some(), via: None };
        let options = Options {
            token: token.clone(),
            ca,
            max_message_bytes,
            channels,
            connect_timeout: Duration::try_from_secs_f64(connect_timeout_seconds)
                .map_err(|e| PyValueError::new_err(e.to_string()))?,
        };
        let heartbeat = heartbeat_seconds
            .map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let connection = {
            let _guard = rt().enter();
            Connection::new(&target, &options).map_err(|e| client_to_pyerr(py, &e, peer))?
        };
        let route = Route::new(connection.clone(), new_session_id(), None);
        let _guard = rt().enter();
        route.spawn_background(heartbeat);
        let settings =
            direct::Settings { max_message_bytes, channels, connect_timeout: options.connect_timeout, heartbeat };
        Ok(Self {
            connection,
            route,
            heartbeat,
            target,
            call_timeout,
            direct: None,
            settings,
            pipeline: Arc::default(),
        })
    }

    /// A direct session of jac-orc's `deployment` (`GetModuleAccess`): calls go to its module
    /// servers themselves. Access is asked now (its errors raise here). With
    /// `probe_timeout_seconds`, None when the session's module server does not accept a
    /// connection within it (unreachable from here: use `via_proxy`). `module`, the Python
    /// module it serves, lets a deployment scaled to zero be woken (`EnsureModule`).
    #[pyo3(signature = (deployment, namespace, *, module=String::new(), probe_timeout_seconds=None))]
    fn direct(
        &self,
        py: Python<'_>,
        deployment: String,
        namespace: String,
        module: String,
        probe_timeout_seconds: Option<f64>,
    ) -> PyResult<Option<Self>> {
        self.check_open(py)?;
        let probe =
            deadline::from_seconds(probe_timeout_seconds, "probe_timeout_seconds").map_err(PyValueError::new_err)?;
        let target = ProxyTarget { deployment, namespace };
        let direct = Direct::new(self.connection.clone(), target, module, new_session_id(), self.settings.clone());
        let session = direct.clone();
        let route =
            wait_for(py, async move { session.route().await })?.map_err(|e| client_to_pyerr(py, &e, self.peer()))?;
        if let Some(timeout) = probe {
            let session = direct.clone();
            if !wait_for(py, async move { session.reachable(timeout).await })? {
                let session = direct.clone();
                wait_for(py, async move { session.close().await })?;
                return Ok(None);
            }
        }
        Ok(Some(self.sibling(route, Some(direct))))
    }

    /// How calls travel: "direct" (a jac-orc deployment's module servers, reached directly),
    /// "proxy" (through jac-orc's ModuleProxy) or "server" (the module server connected to).
    #[getter]
    fn route_kind(&self) -> &'static str {
        match (&self.direct, self.route.via()) {
            (Some(_), _) => "direct",
            (None, Some(_)) => "proxy",
            (None, None) => "server",
        }
    }

    /// The module server a direct session is on now (None for other routes).
    #[getter]
    fn endpoint(&self) -> Option<String> {
        self.direct.as_ref().and_then(|d| d.endpoint())
    }

    /// The default timeout of every call in seconds (None: none).
    #[getter]
    fn call_timeout(&self) -> Option<f64> {
        self.call_timeout.map(|t| t.as_secs_f64())
    }

    /// A client for `deployment`'s module server through jac-orc's `ModuleProxy` (new session).
    fn via_proxy(&self, py: Python<'_>, deployment: String, namespace: String) -> PyResult<Self> {
        self.check_open(py)?;
        let _guard = rt().enter();
        Ok(self.with_route(Some(ProxyTarget { deployment, namespace })))
    }

    /// Closes the connection this client shares with its `via_proxy` clients: every session's
    /// references are released on the servers (what cannot be, they free when the session's
    /// lease ends), heartbeats stop, the sockets close, and every later call through any of
    /// them raises `ClosedError`. Closing again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let connection = self.connection.clone();
        let direct = self.direct.clone();
        wait_for(py, async move {
            connection.close().await;
            if let Some(d) = direct {
                d.close().await;
            }
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.connection.is_closed()
    }

    /// What serves the target, from its gRPC health service: "orchestrator" (jac-orc) or
    /// "module-server"; anything else raises, naming the address.
    fn server_kind(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.check_open(py)?;
        let connection = self.connection.clone();
        let kind = wait_for(py, async move { connection.server_kind().await })?
            .map_err(|e| client_to_pyerr(py, &e, self.peer()))?;
        Ok(kind.as_str())
    }

    /// Sends `token` (`authorization: Bearer <token>`) with every request from now on, on this
    /// client and every client sharing its connection (`via_proxy`).
    fn set_token(&self, py: Python<'_>, token: &str) -> PyResult<()> {
        self.connection.set_token(token).map_err(|e| client_to_pyerr(py, &e, self.peer()))
    }

    /// Whether requests carry a token.
    #[getter]
    fn has_token(&self) -> bool {
        self.connection.has_token()
    }

    #[getter]
    fn session(&self) -> String {
        self.route.session().to_owned()
    }

    #[getter]
    fn target(&self) -> String {
        self.target.clone()
    }

    #[getter]
    fn deployment(&self) -> Option<(String, String)> {
        let via = self.direct.as_ref().map(|d| d.target()).or(self.route.via());
        via.map(|v| (v.deployment.clone(), v.namespace.clone()))
    }

    /// Reads `target.path`: plain data by value, anything else as a `RemoteRef`. `timeout`
    /// (seconds) overrides the client's `call_timeout`.
    #[pyo3(signature = (target, path, *, timeout=None))]
    fn get_attr(&self, py: Python<'_>, target: String, path: Vec<String>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.check_open(py)?;
        let timeout = self.timeout(timeout)?;
        let mut route = self.current_route(py, timeout)?;
        let mut response = self.get_attr_on(py, &route, &target, &path, timeout)?;
        if self.again(&response) {
            route = self.current_route(py, timeout)?;
            response = self.get_attr_on(py, &route, &target, &path, timeout)?;
        }
        self.decode_response(py, &route, response)
    }

    /// Calls `target.path(*args, **kwargs)` on the module server. `timeout` (seconds)
    /// overrides the client's `call_timeout`.
    #[pyo3(signature = (target, path, args, kwargs=None, *, timeout=None))]
    fn call(
        &self,
        py: Python<'_>,
        target: String,
        path: Vec<String>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        self.check_open(py)?;
        let timeout = self.timeout(timeout)?;
        let mut route = self.current_route(py, timeout)?;
        let mut response = self.call_on(py, &route, self.call_request(&target, &path, args, kwargs)?, timeout)?;
        if self.again(&response) {
            route = self.current_route(py, timeout)?;
            response = self.call_on(py, &route, self.call_request(&target, &path, args, kwargs)?, timeout)?;
        }
        self.decode_response(py, &route, response)
    }

    /// Sends `target.path(*args, **kwargs)` without waiting: `done(True, value)` or
    /// `done(False, exception)` is called (on a runtime thread, attached) when it completes.
    /// The returned `PendingCall` can abandon it.
    #[pyo3(signature = (target, path, args, kwargs, timeout, done))]
    #[allow(clippy::too_many_arguments)] // the Python arguments, one each
    fn call_async(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        target: String,
        path: Vec<String>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        timeout: Option<f64>,
        done: Py<PyAny>,
    ) -> PyResult<PendingCall> {
        let this = slf.get();
        this.check_open(py)?;
        let timeout = this.timeout(timeout)?;
        let request = this.call_request(&target, &path, args, kwargs)?;
        Ok(pipeline::submit(slf.clone().unbind(), request, timeout, done))
    }

    /// Releases `ids` now; returns (released, remaining). An empty list is the heartbeat.
    fn release(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<(u32, u32)> {
        self.check_open(py)?;
        let route = self.placed();
        let response = wait_for(py, async move { route.release(ids).await })?;
        let response = response.map_err(|s| self.status_error(py, &s))?;
        Ok((response.released, response.remaining))
    }

    /// Queues `id` for the next batched release (safe to call from a GC callback).
    fn release_later(&self, id: String) {
        self.placed().release_later(id);
    }

    /// Sends the queued releases now.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.check_open(py)?;
        let route = self.placed();
        wait_for(py, async move { route.flush().await })?.map_err(|s| self.status_error(py, &s))
    }

    /// The module server's description as a dict.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.check_open(py)?;
        let route = self.current_route(py, None)?;
        let d = wait_for(py, async move { route.describe().await })?.map_err(|s| self.status_error(py, &s))?;
        let out = PyDict::new(py);
        out.set_item("module", d.module)?;
        out.set_item("module_version", d.module_version)?;
        out.set_item("python_version", d.python_version)?;
        out.set_item("pid", d.pid)?;
        out.set_item("server_version", d.server_version)?;
        out.set_item("session_refs", d.session_refs)?;
        out.set_item("total_refs", d.total_refs)?;
        out.set_item("sessions", d.sessions)?;
        out.set_item("lease_seconds", d.lease_seconds)?;
        out.set_item("idle_seconds", d.idle_seconds)?;
        Ok(out)
    }

    /// jac-orc's deployments (namespace, module filters; empty matches all) as dicts.
    #[pyo3(signature = (namespace=String::new(), module=String::new()))]
    fn list_deployments<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        module: String,
    ) -> PyResult<Bound<'py, PyList>> {
        self.check_open(py)?;
        let connection = self.connection.clone();
        let response = wait_for(py, async move { connection.list_deployments(namespace, module).await })?
            .map_err(|s| self.status_error(py, &s))?;
        let out = PyList::empty(py);
        for d in response.deployments {
            out.append(deployment_dict(py, d)?)?;
        }
        Ok(out)
    }

    /// jac-orc's python-module deployment serving `module` (the `list_deployments` dict, plus
    /// `deployed`: whether this call deployed it), deployed and awaited first when none does.
    /// `idle_timeout` is seconds or a duration string ("90s", "10m"); empty values and 0 take
    /// the server's defaults.
    /// `progress`, when given, is called with each line of the deploy's progress as it happens
    /// (from another thread, holding the GIL); its exceptions are reported as unraisable.
    #[pyo3(signature = (module, *, namespace=String::new(), packages=Vec::new(), cpu=String::new(), cpu_limit=String::new(), memory=String::new(), replicas=0, idle_timeout=String::new(), wait_timeout_seconds=0, progress=None))]
    #[allow(clippy::too_many_arguments)] // one per field of the request, all keyword-only
    fn ensure_module<'py>(
        &self,
        py: Python<'py>,
        module: String,
        namespace: String,
        packages: Vec<String>,
        cpu: String,
        cpu_limit: String,
        memory: String,
        replicas: u32,
        idle_timeout: String,
        wait_timeout_seconds: u32,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let connection = self.connection.clone();
        let request = EnsureModuleRequest {
            module,
            packages,
            cpu,
            memory,
            replicas,
            idle_timeout,
            namespace,
            wait_timeout_seconds,
            cpu_limit,
        };
        let answer = match progress {
            None => wait_for(py, async move { connection.ensure_module(request).await })?,
            Some(callback) => {
                let say = move |line: String| {
                    Python::attach(|py| {
                        if let Err(e) = callback.call1(py, (line,)) {
                            e.write_unraisable(py, None);
                        }
                    });
                };
                wait_for(py, async move { connection.ensure_module_progress(request, say).await })?
            }
        };
        let response = answer.map_err(|s| self.status_error(py, &s))?;
        let item = deployment_dict(py, response.deployment.unwrap_or_default())?;
        item.set_item("deployed", response.deployed)?;
        item.set_item("differences", response.differences)?;
        Ok(item)
    }
}

/// A deployment as a dict: namespace, module, name, status (as REST spells it), endpoints and
/// the string values of its config.
fn deployment_dict(py: Python<'_>, d: Deployment) -> PyResult<Bound<'_, PyDict>> {
    let item = PyDict::new(py);
    item.set_item("namespace", d.namespace)?;
    item.set_item("module", d.module)?;
    item.set_item("name", d.name)?;
    // The enum's name without its prefix, as REST spells it ("deployed").
    let status = crate::proto::DeploymentStatus::try_from(d.status).unwrap_or_default().as_str_name();
    let status = status.trim_start_matches("DEPLOYMENT_STATUS_").to_ascii_lowercase();
    item.set_item("status", status)?;
    item.set_item("endpoints", d.endpoints)?;
    item.set_item("message", d.message)?;
    let config = PyDict::new(py);
    for (key, value) in d.config.map(|s| s.fields).unwrap_or_default() {
        if let Some(prost_types::value::Kind::StringValue(s)) = value.kind {
            config.set_item(key, s)?;
        }
    }
    item.set_item("config", config)?;
    Ok(item)
}

/// A module server running on the shared runtime.
#[pyclass(frozen, module = "jac_splice._native", name = "ModuleServer")]
#[derive(Debug)]
pub struct ModuleServer {
    inner: Mutex<RunningServer>,
    host: String,
    port: u16,
}

#[pymethods]
impl ModuleServer {
    /// `call_token` has no default: None (anyone who reaches the port may call) must be asked
    /// for. `tls_cert`/`tls_key` (PEM) make every connection TLS.
    #[new]
    #[pyo3(signature = (module, *, call_token, host="127.0.0.1".to_owned(), port=0, lease_seconds=60.0, max_message_bytes=1<<30, tls_cert=None, tls_key=None))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one each
    fn new(
        py: Python<'_>,
        module: Bound<'_, PyAny>,
        call_token: Option<String>,
        host: String,
        port: u16,
        lease_seconds: f64,
        max_message_bytes: usize,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        let lease = Duration::try_from_secs_f64(lease_seconds).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let access = match call_token {
            Some(token) => Access::Token(CallToken::new(&token).map_err(|e| PyValueError::new_err(chain(&e)))?),
            None => Access::Open,
        };
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key).map_err(|e| PyValueError::new_err(chain(&e)))?),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("TLS needs both tls_cert and tls_key")),
        };
        let security = Security { access, tls };
        let config = ServerConfig { host: host.clone(), port, lease, max_message_bytes, security };
        let server = RunningServer::start(py, module, &config)?;
        let port = server.port();
        Ok(Self { inner: Mutex::new(server), host, port })
    }

    #[getter]
    fn host(&self) -> String {
        self.host.clone()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Blocks until the server stops (or `timeout` seconds pass: returns False); Ctrl-C raises.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let finished = py.detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).wait(SLICE));
            if finished.map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(chain(&e)))? {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Stops serving and frees every reference.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let freed = py.detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).stop());
        drop(freed);
        self.wait(py, Some(10.0)).map(|_| ())
    }
}
