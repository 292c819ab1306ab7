//! Errors at the edge: a Python exception raised by the served module becomes a `RemoteError`
//! message, and a client error (a gRPC status, a `RemoteError` received, a failed probe) becomes
//! a Python exception from `jac_splice.exceptions` (the one place that defines the exception
//! classes). Causes travel as `#[source]` chains and are spelled out once, here, by `chain`.
use std::fmt::Write as _;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use tonic::{Code, Status};

use crate::client;
use crate::proto::{ProxyTarget, RemoteError};
use crate::wire::is_oversize;

/// `module.QualName` of a type (`QualName` alone for builtins): how errors and values name types.
pub fn qualified_name(ty: &Bound<'_, PyType>) -> PyResult<String> {
    let module: String = ty.getattr("__module__")?.extract()?;
    let qualname: String = ty.getattr("__qualname__")?.extract()?;
    Ok(if module == "builtins" { qualname } else { format!("{module}.{qualname}") })
}

/// `err` and its causes, outermost first, joined by ": " (a status as "CODE message").
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        match e.downcast_ref::<Status>() {
            Some(status) => {
                let _ = write!(out, "{} {}", code_name(status.code()), status.message());
            }
            None => {
                let _ = write!(out, "{e}");
            }
        }
        next = e.source();
    }
    out
}

/// Describes a Python exception for the wire: type, message, formatted traceback and the builtin
/// exception classes in its MRO (most specific first, without `BaseException`/`object`).
pub fn remote_error(py: Python<'_>, err: &PyErr) -> RemoteError {
    let describe = || -> PyResult<RemoteError> {
        let ty = err.get_type(py);
        let value = err.value(py);
        let traceback = py
            .import("traceback")?
            .call_method1("format_exception", (&ty, value, err.traceback(py)))?
            .extract::<Vec<String>>()?
            .concat();
        let mut builtin_bases = Vec::new();
        for base in ty.getattr("__mro__")?.try_iter()? {
            let base = base?.cast_into::<PyType>()?;
            let module: String = base.getattr("__module__")?.extract()?;
            let name: String = base.getattr("__qualname__")?.extract()?;
            if module == "builtins" && name != "BaseException" && name != "object" {
                builtin_bases.push(name);
            }
        }
        Ok(RemoteError { r#type: qualified_name(&ty)?, message: value.str()?.to_string(), traceback, builtin_bases })
    };
    describe().unwrap_or_else(|e| RemoteError {
        r#type: "Exception".into(),
        message: format!("{err} (and describing it failed: {e})"),
        traceback: String::new(),
        builtin_bases: vec!["Exception".into()],
    })
}

/// gRPC code names as in the gRPC spec ("NOT_FOUND").
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn exceptions(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("jac_splice.exceptions")
}

/// Where a call went, so its error can name it (and say what to do about a refusal).
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub address: &'a str,
    pub token_sent: bool,
    /// The jac-orc python-module deployment a routed call was for.
    pub via: Option<&'a ProxyTarget>,
}

impl Peer<'_> {
    /// `message`, led by where the call went unless it already says: the deployment and jac-orc
    /// for a routed call, else the address.
    fn locate(&self, message: &str) -> String {
        match self.via {
            Some(via) => format!("{} through jac-orc at {}: {message}", deployment_name(via), self.address),
            None if message.contains(self.address) => message.to_owned(),
            None => format!("{}: {message}", self.address),
        }
    }
}

/// "python-module deployment NS/NAME" ("NAME in jac-orc's default namespace" without one).
pub fn deployment_name(via: &ProxyTarget) -> String {
    if via.namespace.is_empty() {
        format!("python-module deployment {} (jac-orc's default namespace)", via.deployment)
    } else {
        format!("python-module deployment {}/{}", via.namespace, via.deployment)
    }
}

/// A gRPC status as a `jac_splice.TransportError` (subclass chosen by code).
pub fn status_to_pyerr(py: Python<'_>, status: &Status, peer: Peer<'_>) -> PyErr {
    status_in_context(py, status, None, peer)
}

/// A call on a closed connection: `jac_splice.ClosedError`, naming where it went.
pub fn closed_error(py: Python<'_>, peer: Peer<'_>) -> PyErr {
    let message = peer.locate(&format!(
        "this connection to {} was closed (Splice.close()); connect again with jac_splice.connect()",
        peer.address
    ));
    exception(py, "ClosedError", &message)
}

/// `what` arrived and numpy cannot be imported: `jac_splice.NumpyRequiredError` (an
/// `ImportError`) naming the extra that installs it, caused by the import's error.
pub fn numpy_required(py: Python<'_>, what: &str, cause: PyErr) -> PyErr {
    let executable = py
        .import("sys")
        .and_then(|sys| sys.getattr("executable"))
        .and_then(|e| e.extract::<String>())
        .unwrap_or_else(|_| "this Python".to_owned());
    let message = format!(
        "{what} arrived, but numpy cannot be imported by {executable} ({cause}); install it with: pip install \
         'jac-splice[numpy]'"
    );
    let err = exception(py, "NumpyRequiredError", &message);
    err.set_cause(py, Some(cause));
    err
}

/// An instance of the `jac_splice.exceptions` class `name` with `message`.
fn exception(py: Python<'_>, name: &str, message: &str) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let exc = exceptions(py)?.getattr(name)?.call1((message,))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// What a refused call's exception says: who refused, why, and what to do.
fn refused_message(status: &Status, peer: Peer<'_>) -> String {
    let Peer { address, token_sent, .. } = peer;
    let reason = status.message();
    match (status.code(), token_sent) {
        (Code::Unauthenticated, false) => format!(
            "{address} refused the call: {reason}. No token was sent: pass jac_splice.connect(url, token=...) or set \
             JAC_SPLICE_TOKEN (a module server's call token) or JAC_ORC_TOKEN (jac-orc's); a module server started by \
             hand prints its token and the file holding it when it starts"
        ),
        (Code::Unauthenticated, true) => format!(
            "{address} refused the token: {reason}. A module server started by hand makes a new token each start (it \
             prints where); a jac-orc deployment's call token comes from jac-orc, jac-orc's own from its data dir"
        ),
        _ => format!("{address} refused the call: {reason}"),
    }
}

/// Like `status_to_pyerr`, the message after `context` if given.
fn status_in_context(py: Python<'_>, status: &Status, context: Option<&str>, peer: Peer<'_>) -> PyErr {
    if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) {
        return transport_error(py, status.code(), &peer.locate(&refused_message(status, peer)));
    }
    let broken = status.code() == Code::Unknown && status.message().contains("transport error");
    let code = if is_oversize(status) {
        Code::ResourceExhausted
    } else if broken {
        // The connection broke mid-call (e.g. the module server died).
        Code::Unavailable
    } else {
        status.code()
    };
    let mut message = context.map(|c| format!("{c}: ")).unwrap_or_default();
    if broken {
        message.push_str("connection to the server broke during the call: ");
    }
    message.push_str(status.message());
    if code == Code::Unavailable || code == Code::Unknown {
        if let Some(source) = std::error::Error::source(status) {
            let _ = write!(message, " ({})", chain(source));
        }
    }
    transport_error(py, code, &peer.locate(&message))
}

fn transport_error(py: Python<'_>, code: Code, message: &str) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let exc = exceptions(py)?.call_method1("_transport_error", (code_name(code), message))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// The one conversion of a client error into a Python exception.
pub fn client_to_pyerr(py: Python<'_>, err: &client::Error, peer: Peer<'_>) -> PyErr {
    use client::Error as E;
    match err {
        E::BadTarget { .. } | E::BadToken(_) | E::CaWithoutTls { .. } | E::Tls { .. } => {
            PyValueError::new_err(chain(err))
        }
        E::Lane(_) => transport_error(py, Code::Internal, &peer.locate(&chain(err))),
        E::Rpc(status) => status_to_pyerr(py, status, peer),
        E::Unreachable { address, source } => {
            let mut context = format!("cannot reach {address}");
            if address.starts_with("https://") && chain(source).contains("certificate") {
                context.push_str(" (TLS: is the server's certificate signed by a CA you trust? pass ca= its PEM)");
            }
            status_in_context(py, source, Some(&context), peer)
        }
        E::HealthCheck { address, source } => {
            status_in_context(py, source, Some(&format!("{address}: the health check failed")), peer)
        }
        E::NotServing { .. } => transport_error(py, Code::Unavailable, &chain(err)),
        E::NotSplice { .. } => exception(py, "NotASpliceServerError", &chain(err)),
        E::Closed => closed_error(py, peer),
    }
}

/// A `RemoteError` message as a `jac_splice.RemoteError` that is also the matching builtin exception.
pub fn remote_to_pyerr(py: Python<'_>, err: RemoteError) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let exc = exceptions(py)?
            .call_method1("_remote_error", (err.r#type, err.message, err.traceback, err.builtin_bases))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_lead_with_the_deployment_and_jac_orc_or_the_address() {
        let via = ProxyTarget { deployment: "numpy".into(), namespace: "default".into() };
        let routed = Peer { address: "127.0.0.1:8000", token_sent: true, via: Some(&via) };
        assert_eq!(
            routed.locate("cannot reach 127.0.0.1:8000: refused"),
            "python-module deployment default/numpy through jac-orc at 127.0.0.1:8000: cannot reach 127.0.0.1:8000: \
             refused"
        );
        let direct = Peer { address: "127.0.0.1:5", token_sent: false, via: None };
        assert_eq!(direct.locate("unknown reference id"), "127.0.0.1:5: unknown reference id");
        assert_eq!(direct.locate("cannot reach 127.0.0.1:5"), "cannot reach 127.0.0.1:5", "said once");
        let unnamed = ProxyTarget { deployment: "calc".into(), namespace: String::new() };
        assert_eq!(deployment_name(&unnamed), "python-module deployment calc (jac-orc's default namespace)");
    }

    #[test]
    fn a_chain_names_every_cause_and_spells_statuses_as_code_and_message() {
        let err = client::Error::Unreachable {
            address: "127.0.0.1:9".into(),
            source: Status::from_error(Box::new(std::io::Error::other("connection refused"))),
        };
        let text = chain(&err);
        assert!(text.starts_with("cannot reach 127.0.0.1:9: UNKNOWN "), "{text}");
        assert!(text.ends_with(": connection refused"), "{text}");
        let plain =
            client::Error::NotSplice { address: "h:1".into(), source: Some(Status::unimplemented("no health")) };
        assert!(chain(&plain).ends_with(": UNIMPLEMENTED no health"), "{}", chain(&plain));
    }
}
