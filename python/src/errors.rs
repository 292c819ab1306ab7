//! Errors at the edge: a Python exception raised by the served module becomes a `RemoteError`
//! message, and a gRPC status or `RemoteError` received by a client becomes a Python exception
//! from `jac_splice.exceptions` (the one place that defines the exception classes).
use pyo3::prelude::*;
use pyo3::types::PyType;
use tonic::{Code, Status};

use crate::codec::qualified_name;
use crate::proto::RemoteError;

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

/// tonic reports a message over the size limit as OUT_OF_RANGE; gRPC's convention is RESOURCE_EXHAUSTED.
pub fn is_oversize(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

fn exceptions(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("jac_splice.exceptions")
}

/// A gRPC status as a `jac_splice.TransportError` (subclass chosen by code).
pub fn status_to_pyerr(py: Python<'_>, status: &Status) -> PyErr {
    let broken = status.code() == Code::Unknown && status.message().contains("transport error");
    let code = if is_oversize(status) {
        Code::ResourceExhausted
    } else if broken {
        // The connection broke mid-call (e.g. the module server died).
        Code::Unavailable
    } else {
        status.code()
    };
    let mut message = if broken {
        format!("connection to the server broke during the call: {}", status.message())
    } else {
        status.message().to_owned()
    };
    if code == Code::Unavailable || code == Code::Unknown {
        let source = std::error::Error::source(status).map(|s| format!(" ({s})")).unwrap_or_default();
        message.push_str(&source);
    }
    let build = || -> PyResult<PyErr> {
        let exc = exceptions(py)?.call_method1("_transport_error", (code_name(code), message.as_str()))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
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
