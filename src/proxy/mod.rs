//! `ModuleProxy`: forwards module calls (GetAttr, Call, Release, Describe) to the module server
//! of a python-module deployment, without decoding the `Value` payloads.
//!
//! A `Proxy*Request` carries the module server's request unchanged in field 2; [`codec::split`]
//! cuts it out as bytes, and those bytes go to `/jac.splice.v1.ModuleService/<Method>` over a
//! pooled HTTP/2 channel ([`pool`]) to an endpoint chosen by [`resolve`]. The response bytes come
//! back unchanged. The caller's `grpc-timeout` ([`deadline`]) and `authorization` are forwarded,
//! and dropping the caller's call (cancellation) drops the forwarded one.
//!
//! The gRPC edge that serves this is [`crate::api::module_proxy`].

pub mod codec;
pub mod deadline;
pub mod pool;
pub mod resolve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::metadata::MetadataMap;

use crate::backend::{self, Backend};
use crate::plan::DeploymentId;

/// The template whose deployments the proxy reaches.
pub const PYTHON_MODULE: &str = "python-module";

/// Default limit on one proxied request or response: numpy arrays of hundreds of MiB are
/// ordinary payloads here, and the module server's own default is the same 1 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Malformed(#[from] codec::MalformedRequest),
    #[error("the proxy target names no deployment (set ProxyTarget.deployment)")]
    NoDeployment,
    #[error("python-module deployment {0} not found")]
    NotFound(DeploymentId),
    #[error("deployment {deployment} has no ready module server{}", known_suffix(.known))]
    NoReadyEndpoint { deployment: DeploymentId, known: Vec<String> },
    #[error("module server {endpoint} of deployment {deployment} is unavailable: {reason}")]
    Unreachable { endpoint: String, deployment: DeploymentId, reason: String },
    #[error("deadline of {}ms exceeded{}", .timeout.as_millis(), endpoint_suffix(.endpoint))]
    DeadlineExceeded { timeout: Duration, endpoint: Option<String> },
    #[error("module server endpoint `{endpoint}` is not a valid address: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("cannot resolve the module servers: {0}")]
    Backend(#[source] backend::Error),
    /// The module server answered with an error status: passed to the caller unchanged.
    #[error("{}", .0.message())]
    Upstream(Box<tonic::Status>),
}

fn known_suffix(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (it serves on {} when up)", known.join(", "))
    }
}

fn endpoint_suffix(endpoint: &Option<String>) -> String {
    endpoint.as_ref().map(|e| format!(" waiting for module server {e}")).unwrap_or_default()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tuning of the proxy: limits, caching and HTTP/2 flow control towards module servers.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub max_message_bytes: usize,
    /// How long a resolved endpoint list is reused before asking the backend again.
    pub resolve_ttl: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// HTTP/2 windows: large, so a 64 MiB ndarray is not throttled by WINDOW_UPDATE round trips.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Let hyper size the windows from measured bandwidth-delay (overrides the fixed ones).
    pub adaptive_window: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            resolve_ttl: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(20),
            stream_window: 16 << 20,
            connection_window: 64 << 20,
            adaptive_window: false,
        }
    }
}

impl ProxyConfig {
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    #[must_use]
    pub fn resolve_ttl(mut self, ttl: Duration) -> Self {
        self.resolve_ttl = ttl;
        self
    }

    #[must_use]
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.adaptive_window = enabled;
        self
    }
}

/// The four forwarded RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    GetAttr,
    Call,
    Release,
    Describe,
}

impl Method {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "GetAttr" => Method::GetAttr,
            "Call" => Method::Call,
            "Release" => Method::Release,
            "Describe" => Method::Describe,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::GetAttr => "GetAttr",
            Method::Call => "Call",
            Method::Release => "Release",
            Method::Describe => "Describe",
        }
    }

    /// The module server's path for this RPC.
    pub fn upstream_path(self) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(match self {
            Method::GetAttr => "/jac.splice.v1.ModuleService/GetAttr",
            Method::Call => "/jac.splice.v1.ModuleService/Call",
            Method::Release => "/jac.splice.v1.ModuleService/Release",
            Method::Describe => "/jac.splice.v1.ModuleService/Describe",
        })
    }
}

/// Resolution, channel pool and forwarding; shared by every proxied call.
#[derive(Debug)]
pub struct ModuleProxy {
    config: ProxyConfig,
    default_namespace: String,
    resolver: resolve::Resolver,
    pool: pool::Pool,
}

impl ModuleProxy {
    pub fn new(backend: Arc<dyn Backend>, default_namespace: String, config: ProxyConfig) -> Self {
        ModuleProxy {
            resolver: resolve::Resolver::new(backend, config.resolve_ttl),
            pool: pool::Pool::new(config.clone()),
            default_namespace,
            config,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Forwards one encoded `Proxy*Request` and returns the module server's encoded response.
    pub async fn forward(&self, method: Method, request: Bytes, metadata: &MetadataMap) -> Result<Bytes> {
        let started = Instant::now();
        let timeout = deadline::from_metadata(metadata);
        let codec::Split { target, inner } = codec::split(request)?;
        let id = self.deployment_id(target)?;
        let forward = self.forward_to(method, &id, inner, metadata, timeout, started);
        match timeout {
            None => forward.await,
            Some(t) => match tokio::time::timeout(t, forward).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded { timeout: t, endpoint: None }),
            },
        }
    }

    fn deployment_id(&self, target: crate::pb::ProxyTarget) -> Result<DeploymentId> {
        if target.deployment.is_empty() {
            return Err(Error::NoDeployment);
        }
        let namespace = if target.namespace.is_empty() { self.default_namespace.clone() } else { target.namespace };
        Ok(DeploymentId { namespace, module: PYTHON_MODULE.into(), name: target.deployment })
    }

    async fn forward_to(
        &self,
        method: Method,
        id: &DeploymentId,
        inner: Bytes,
        metadata: &MetadataMap,
        timeout: Option<Duration>,
        started: Instant,
    ) -> Result<Bytes> {
        let endpoint = self.resolver.pick(id).await?;
        let channel = self.pool.get(&endpoint)?;
        let mut request = tonic::Request::new(inner);
        if let Some(auth) = metadata.get("authorization") {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        if let Some(t) = timeout {
            // What is left after resolution, so the module server gives up when the caller does.
            request.set_timeout(t.saturating_sub(started.elapsed()));
        }
        // Transport errors are wrapped in a type of ours before tonic turns them into a
        // `Status`, so they can be told apart from the module server's own error statuses.
        let channel = tower::util::MapErr::new(channel, TransportFailure::from_transport);
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);
        if let Err(e) = grpc.ready().await {
            return Err(self.transport_failure(id, &endpoint, &e, timeout));
        }
        match grpc.unary(request, method.upstream_path(), codec::RawCodec).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.classify_failure(id, &endpoint, status, timeout, started)),
        }
    }

    /// Tells a module server's own error status (passed through) from a failure to reach it.
    fn classify_failure(
        &self,
        id: &DeploymentId,
        endpoint: &str,
        status: tonic::Status,
        timeout: Option<Duration>,
        started: Instant,
    ) -> Error {
        // The channel enforces the forwarded grpc-timeout too and reports it as CANCELLED; past
        // the caller's deadline, any such ending is the deadline.
        if let Some(t) = timeout {
            let late = started.elapsed() >= t;
            if late && matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) {
                return Error::DeadlineExceeded { timeout: t, endpoint: Some(endpoint.to_string()) };
            }
        }
        let transport = std::error::Error::source(&status).and_then(|s| s.downcast_ref::<TransportFailure>());
        match transport {
            Some(failure) => self.transport_failure(id, endpoint, failure, timeout),
            // A connection that broke mid-response surfaces as UNAVAILABLE from the body.
            None if status.code() == tonic::Code::Unavailable => {
                self.unreachable(id, endpoint, status.message().to_string())
            }
            None => Error::Upstream(Box::new(status)),
        }
    }

    fn transport_failure(
        &self,
        id: &DeploymentId,
        endpoint: &str,
        failure: &TransportFailure,
        timeout: Option<Duration>,
    ) -> Error {
        match failure {
            TransportFailure::Timeout => {
                Error::DeadlineExceeded { timeout: timeout.unwrap_or_default(), endpoint: Some(endpoint.to_string()) }
            }
            TransportFailure::Broken(reason) => self.unreachable(id, endpoint, reason.clone()),
        }
    }

    fn unreachable(&self, id: &DeploymentId, endpoint: &str, reason: String) -> Error {
        self.resolver.invalidate(id);
        self.pool.remove(endpoint);
        tracing::warn!(deployment = %id, endpoint, %reason, "module server unreachable");
        Error::Unreachable { endpoint: endpoint.to_string(), deployment: id.clone(), reason }
    }
}

/// A failure of the channel to a module server. It deliberately has no `source()`: tonic would
/// otherwise find the `ConnectError` or `TimeoutExpired` inside and turn it into a plain
/// UNAVAILABLE or CANCELLED status, indistinguishable from one the module server sent.
#[derive(Debug)]
enum TransportFailure {
    /// The channel enforced the forwarded `grpc-timeout` (the module server is slow, not gone).
    Timeout,
    /// Connect refused, connection reset, HTTP/2 error: the endpoint is unusable.
    Broken(String),
}

impl TransportFailure {
    fn from_transport(e: tonic::transport::Error) -> Self {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = next {
            if err.is::<tonic::TimeoutExpired>() {
                return TransportFailure::Timeout;
            }
            next = err.source();
        }
        TransportFailure::Broken(error_chain(&e))
    }
}

impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportFailure::Timeout => f.write_str("timeout expired"),
            TransportFailure::Broken(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for TransportFailure {}

/// "a: b: c" from an error and its sources, skipping repeats (tonic nests the same text).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
