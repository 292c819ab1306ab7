//! How a `Client` sends a call: on its current route (a direct session's follows its access,
//! see `direct.rs`), with its deadline, once more when a direct session's first attempt never
//! reached the served code. Calls sent without waiting (`call_async`, behind `jac_splice.spawn`
//! and `jac_splice.acall`) go through `pipeline.rs` and are handed back as a `PendingCall`.
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::blocking::{wait_for, wait_on_lane};
use crate::client::{self, Route};
use crate::deadline;
use crate::errors::{client_to_pyerr, Peer};
use crate::handle::Client;
use crate::proto::{CallRequest, Kwarg, ValueResponse};

type Response = Result<ValueResponse, client::Error>;

impl Client {
    /// The timeout of one call: the one given (seconds), else the client's `call_timeout`.
    pub(crate) fn timeout(&self, given: Option<f64>) -> PyResult<Option<Duration>> {
        match deadline::from_seconds(given, "timeout").map_err(PyValueError::new_err)? {
            Some(t) => Ok(Some(t)),
            None => Ok(self.call_timeout),
        }
    }

    /// The route the next call takes: a direct session asks jac-orc for access when it
    /// expired, within the call's `timeout`.
    pub(crate) fn current_route(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Arc<Route>> {
        let Some(direct) = &self.direct else {
            return Ok(self.route.clone());
        };
        if let Some(route) = direct.fresh() {
            return Ok(route);
        }
        let session = direct.clone();
        let asked = async move { deadline::bounded(timeout, async { Ok(session.route().await) }).await };
        match wait_for(py, asked)? {
            Ok(Ok(route)) => Ok(route),
            Ok(Err(e)) => Err(client_to_pyerr(py, &e, self.peer())),
            Err(expired) => Err(client_to_pyerr(py, &client::Error::Rpc(expired), self.peer())),
        }
    }

    /// The route the session is on, without asking for anything (releases, GC callbacks).
    pub(crate) fn placed(&self) -> Arc<Route> {
        self.direct.as_ref().and_then(|d| d.fresh()).unwrap_or_else(|| self.route.clone())
    }

    /// Where a call on `route` went, for its error: a direct session's module server.
    pub(crate) fn peer_on<'a>(&'a self, route: &'a Route) -> Peer<'a> {
        if self.direct.is_some() {
            let c = route.connection();
            return Peer { address: c.address(), token_sent: c.has_token(), via: None };
        }
        self.peer()
    }

    /// After a failed attempt: whether to send it again (a direct session whose access changed
    /// and whose call never reached the served code).
    pub(crate) fn again(&self, response: &Response) -> bool {
        match (&self.direct, response) {
            (Some(direct), Err(e)) => direct.failed(e),
            _ => false,
        }
    }

    /// `target.path(*args, **kwargs)` as a request (arguments encoded while attached).
    pub(crate) fn call_request(
        &self,
        target: &str,
        path: &[String],
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<CallRequest> {
        let mut request = CallRequest { target: target.to_owned(), path: path.to_vec(), ..Default::default() };
        for arg in args.iter() {
            request.args.push(self.encode_arg(&arg)?);
        }
        if let Some(kwargs) = kwargs {
            for (name, value) in kwargs.iter() {
                request.kwargs.push(Kwarg { name: name.extract()?, value: Some(self.encode_arg(&value)?) });
            }
        }
        Ok(request)
    }

    /// One `Call` attempt on `route`, detached, on a lane when one is free.
    pub(crate) fn call_on(
        &self,
        py: Python<'_>,
        route: &Route,
        request: CallRequest,
        timeout: Option<Duration>,
    ) -> PyResult<Response> {
        wait_on_lane(py, route.connection(), |channel, lane| {
            deadline::bounded(timeout, route.call_within(channel, lane, request, timeout))
        })
    }

    /// One `GetAttr` attempt on `route`.
    pub(crate) fn get_attr_on(
        &self,
        py: Python<'_>,
        route: &Route,
        target: &str,
        path: &[String],
        timeout: Option<Duration>,
    ) -> PyResult<Response> {
        let (target, path) = (target.to_owned(), path.to_vec());
        wait_on_lane(py, route.connection(), |channel, lane| {
            deadline::bounded(timeout, route.get_attr(channel, lane, target, path, timeout))
        })
    }
}
