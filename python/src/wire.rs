//! What the client and the module server must agree on beyond the proto files: HTTP/2 sizing,
//! the lane marker, the health service names that tell servers apart, and the reserved targets.
//! Both sides import it; neither imports the other.

/// HTTP/2 flow-control windows and frame size, the same on both ends: a big array streams
/// through without waiting for window updates, in few large frames.
pub const STREAM_WINDOW: u32 = 128 << 20;
pub const CONNECTION_WINDOW: u32 = 256 << 20;
pub const MAX_FRAME: u32 = 4 << 20;

/// Request metadata of a client lane: the connection carries one call at a time (see
/// `client::Lane`), so the server runs the call on the connection's own thread (no hand-off to a
/// pool thread).
pub const LANE_HEADER: &str = "jac-splice-lane";

/// The health service name a module server reports SERVING for (it also registers "" and the
/// short "ModuleService").
pub use crate::proto::module_service_server::SERVICE_NAME as MODULE_SERVICE;
/// The gRPC health service name jac-orc reports SERVING for ("jac.splice.v1.Orchestrator",
/// taken from the generated code so it cannot drift from the proto). Module servers do not
/// register it (they answer NOT_FOUND), so one health `Check` tells the two apart.
pub use crate::proto::orchestrator_server::SERVICE_NAME as ORCHESTRATOR_SERVICE;

/// Targets naming the server's standard modules, used by proxies for protocols (`len`, `+`, ...).
/// `jac_splice/proxy.py` sends the same strings.
pub const BUILTINS: &str = "@builtins";
pub const OPERATOR: &str = "@operator";
/// The target of the server's own helpers (no Python module behind it): `describe`, what
/// proxies show as an object's name, docs and signature (`host.rs`).
pub const SPLICE: &str = "@splice";

/// Most calls one `CallBatch` may carry (the module server refuses more, naming `calls`); clients
/// send smaller batches (`batch.rs`).
pub const MAX_BATCH_CALLS: usize = 1024;

/// tonic reports a message over the size limit as OUT_OF_RANGE "message length too large" (on
/// either side); gRPC's convention is RESOURCE_EXHAUSTED, which the server sends instead and the
/// client reports instead.
pub fn is_oversize(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange && status.message().contains("message length too large")
}
