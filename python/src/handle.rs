//! The `Client` handle and the `RemoteRef`s it hands out: what one session holds (its
//! connection, route, direct access and defaults), how a Python argument is encoded for it
//! (remote objects travel as references, and only within their own session), how a response
//! becomes a Python value, and which peer its errors name. It neither waits nor sends: the
//! calls (`calls.rs`) and the Python methods (`bindings.rs`) build on it.
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use tonic::Status;

use crate::client::{self, new_session_id, Connection, Route};
use crate::codec::{self, DecodeError};
use crate::direct::{self, Direct};
use crate::errors::{client_to_pyerr, remote_to_pyerr, status_to_pyerr, Peer};
use crate::pending::Pipeline;
use crate::proto::{value, value_response, ProxyTarget, RemoteRef as WireRef, Value, ValueResponse};

/// A reference to an object held by a module server for one client session.
#[pyclass(frozen, module = "jac_splice._native", name = "RemoteRef")]
#[derive(Debug)]
pub struct RemoteRef {
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    type_name: String,
    #[pyo3(get)]
    callable: bool,
    #[pyo3(get)]
    session: String,
}

#[pymethods]
impl RemoteRef {
    fn __repr__(&self) -> String {
        format!("RemoteRef(id={:?}, type_name={:?}, callable={})", self.id, self.type_name, self.callable)
    }
}

/// A client session with one module server, directly or through jac-orc's `ModuleProxy`.
#[pyclass(frozen, module = "jac_splice._native", name = "Client")]
#[derive(Debug)]
pub struct Client {
    /// The target's connection (jac-orc's, for routed and direct sessions).
    pub(crate) connection: Arc<Connection>,
    /// The session's route; a direct session's current one comes from `direct`.
    pub(crate) route: Arc<Route>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) target: String,
    /// Default timeout of every call (`connect(call_timeout=...)`).
    pub(crate) call_timeout: Option<Duration>,
    /// A direct session of a jac-orc deployment (`GetModuleAccess`): its route follows the access.
    pub(crate) direct: Option<Arc<Direct>>,
    /// How module-server connections of direct sessions are made.
    pub(crate) settings: direct::Settings,
    /// The session's pipelined calls (`jac_splice.spawn`, `acall`), batched on the wire.
    pub(crate) pipeline: Arc<Pipeline>,
}

impl Client {
    /// A client sharing this one's connection and settings, on a new session (`via_proxy`).
    pub(crate) fn with_route(&self, via: Option<ProxyTarget>) -> Self {
        let route = Route::new(self.connection.clone(), new_session_id(), via);
        route.spawn_background(self.heartbeat);
        self.sibling(route, None)
    }

    /// A client sharing this one's connection and settings, on `route`.
    pub(crate) fn sibling(&self, route: Arc<Route>, direct: Option<Arc<Direct>>) -> Self {
        Self {
            connection: self.connection.clone(),
            route,
            heartbeat: self.heartbeat,
            target: self.target.clone(),
            call_timeout: self.call_timeout,
            direct,
            settings: self.settings.clone(),
            pipeline: Arc::default(),
        }
    }

    /// A Python argument as a `Value`; remote objects travel as references, and only within
    /// this session (another session's server would not know them).
    pub(crate) fn encode_arg(&self, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
        let session = self.route.session();
        let mut leaf = |o: &Bound<'_, PyAny>| -> PyResult<Option<Value>> {
            let holder = match o.cast::<RemoteRef>() {
                Ok(r) => Some(r.clone()),
                Err(_) => match o.getattr_opt("_jac_splice_ref")? {
                    Some(r) if r.is_none() => {
                        // A proxy of the served module itself: the empty target.
                        let client = o.getattr("_jac_splice_client")?;
                        let client = client.cast::<Client>()?;
                        if client.get().route.session() != session {
                            return Err(PyValueError::new_err(
                                "that remote module belongs to another module server session",
                            ));
                        }
                        return Ok(Some(Value { kind: Some(value::Kind::Ref(WireRef::default())) }));
                    }
                    Some(r) => r.cast_into::<RemoteRef>().ok(),
                    None => None,
                },
            };
            let Some(r) = holder else {
                return Err(PyTypeError::new_err(format!(
                    "cannot send a {} to a module server: only plain data, numpy arrays and remote objects travel",
                    codec::type_name(o)?
                )));
            };
            let r = r.get();
            if r.session != session {
                return Err(PyValueError::new_err(format!(
                    "remote object {} belongs to another module server session",
                    r.id
                )));
            }
            Ok(Some(Value {
                kind: Some(value::Kind::Ref(WireRef {
                    id: r.id.clone(),
                    type_name: r.type_name.clone(),
                    callable: r.callable,
                })),
            }))
        };
        Ok(codec::encode(obj, &mut leaf)?.expect("the client leaf always encodes or fails"))
    }

    pub(crate) fn peer(&self) -> Peer<'_> {
        let via = self.direct.as_ref().map(|d| d.target()).or(self.route.via());
        Peer { address: self.connection.address(), token_sent: self.connection.has_token(), via }
    }

    /// `ClosedError` once the connection was closed.
    pub(crate) fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        self.connection.check_open().map_err(|e| client_to_pyerr(py, &e, self.peer()))
    }

    pub(crate) fn status_error(&self, py: Python<'_>, status: &Status) -> PyErr {
        status_to_pyerr(py, status, self.peer())
    }

    /// A response of `route` as a Python value (or the exception it stands for).
    pub(crate) fn decode_response(
        &self,
        py: Python<'_>,
        route: &Route,
        response: Result<ValueResponse, client::Error>,
    ) -> PyResult<Py<PyAny>> {
        let response = response.map_err(|e| client_to_pyerr(py, &e, self.peer_on(route)))?;
        match response.result {
            Some(value_response::Result::Value(value)) => {
                let session = route.session().to_owned();
                let mut refs = |r: WireRef| -> Result<Bound<'_, PyAny>, DecodeError> {
                    route.track(&r.id);
                    let obj =
                        RemoteRef { id: r.id, type_name: r.type_name, callable: r.callable, session: session.clone() };
                    Ok(Bound::new(py, obj)?.into_any())
                };
                codec::decode(py, value, &mut refs).map(Bound::unbind).map_err(|e| e.into_pyerr(py))
            }
            Some(value_response::Result::Error(err)) => Err(remote_to_pyerr(py, err)),
            None => Err(PyValueError::new_err("empty response from the module server")),
        }
    }
}
