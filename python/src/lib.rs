//! `jac_splice._native`: the transport and value codec behind the `jac_splice` package.
//! This module only exports names; the logic lives in the modules below.
mod access;
mod affinity;
#[cfg(target_os = "linux")]
mod alloc;
mod batch;
mod bindings;
mod blocking;
mod calls;
mod client;
mod coalesce;
mod codec;
mod deadline;
mod direct;
mod errors;
mod handle;
mod host;
mod idle;
mod lane;
mod pending;
mod pipeline;
mod proto;
mod refs;
mod route;
mod runtime;
mod server;
mod surface;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod testing_orchestrator;
mod wire;

use pyo3::prelude::*;

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator::new();

/// Uses `module` as numpy for encoding and decoding arrays (see `jac_splice.importer`).
#[pyfunction]
fn use_numpy(module: &Bound<'_, PyAny>) -> PyResult<()> {
    codec::use_numpy(module)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // What module servers serve beyond the module (`surface.rs`); the proxies ask for no more.
    m.add("BUILTIN_HELPERS", surface::BUILTIN_HELPERS.to_vec())?;
    m.add("OPERATOR_HELPERS", surface::OPERATOR_HELPERS.to_vec())?;
    m.add("SPLICE_HELPERS", surface::SPLICE_HELPERS.to_vec())?;
    m.add("PROTOCOL_ATTRIBUTES", surface::PROTOCOL_ATTRIBUTES.to_vec())?;
    m.add_class::<handle::Client>()?;
    m.add_class::<handle::RemoteRef>()?;
    m.add_class::<bindings::ModuleServer>()?;
    m.add_class::<pending::PendingCall>()?;
    m.add_function(wrap_pyfunction!(use_numpy, m)?)?;
    Ok(())
}
