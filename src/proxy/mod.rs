//! `ModuleProxy`: forwards module calls (GetAttr, Call, CallBatch, Release, Describe) to the module server
//! of a python-module deployment, without decoding the `Value` payloads.
//!
//! A `Proxy*Request` carries the module server's request unchanged in field 2; [`codec::split`]
//! cuts it out as bytes, and those bytes go to `/jac.splice.v1.ModuleService/<Method>` over a
//! pooled HTTP/2 channel ([`pool`]) to an endpoint chosen by [`resolve`]. The response bytes come
//! back unchanged. The caller's `grpc-timeout` ([`deadline`]) is forwarded, and dropping the
//! caller's call (cancellation) drops the forwarded one.
//!
//! Who may call: once the target is known, the caller must be allowed `call` on `modules` named
//! by the deployment ([`Authorizer::permit`]). The caller's own `authorization` never travels on
//! (the auth layer has already removed it); the forwarded call carries the deployment's call
//! token instead (`authorization: Bearer <call-token>`, the [`CALL_TOKEN`] placeholder its
//! module servers were started with), so module servers answer only through jac-orc or callers
//! holding that token.
//!
//! Replicas: every call of one client session (field 1 of the module server's request) goes to
//! the same replica while it lives ([`sessions`], placed by [`affinity`]); the endpoint set
//! follows the backend's watch ([`resolve`]). When a session's replica went away, the new
//! replica's NotFound for an old reference becomes [`Error::ReplicaGone`].
//!
//! The gRPC edge that serves this is [`crate::api::module_proxy`].

pub mod affinity;
pub mod codec;
pub mod deadline;
pub mod pool;
pub mod resolve;
pub mod sessions;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{self, Authorizer, Caller, Resource, Verb};
use crate::backend::{self, Backend};
use crate::plan::DeploymentId;

/// The template whose deployments the proxy reaches.
pub const PYTHON_MODULE: &str = "python-module";

/// The secret placeholder holding a python-module deployment's call token; its module servers
/// get it as `JAC_SPLICE_CALL_TOKEN`.
pub const CALL_TOKEN: &str = "call-token";

/// Default limit on one proxied request or response: numpy arrays of hundreds of MiB are
/// ordinary payloads here, and the module server's own default is the same 1 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Default limit on what the proxy buffers of one request before it knows the target: requests
/// in the usual field order stream, so only an out-of-order one (field 2 before field 1, a
/// repeated field 2, fields after it) is held whole, and never more than this.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 8 << 20;

/// Default time a session stays bound to its replica after its last call: longer than the
/// module server's reference lease, so no live reference outlives its binding.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);

/// How long a call without a deadline waits for a sleeping deployment to wake.
pub const WAKE_WITHOUT_DEADLINE: Duration = Duration::from_secs(120);

/// Default time a `GetModuleAccess` answer (endpoints and call token) is valid for.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Malformed(#[from] codec::MalformedRequest),
    #[error("the proxy target names no deployment (set ProxyTarget.deployment)")]
    NoDeployment,
    /// An out-of-order request larger than what the proxy buffers to find its target.
    #[error("the request needs {needed} bytes buffered before its target is known (fields out of order); the limit is {limit} bytes: send the target (field 1) before the request (field 2)")]
    BufferLimit { needed: usize, limit: usize },
    /// The module server could not decode the forwarded request: the caller sent bad protobuf.
    #[error("{0}")]
    Undecodable(String),
    #[error("python-module deployment {0} not found")]
    NotFound(DeploymentId),
    #[error("deployment {deployment} has no ready module server{}", known_suffix(.known))]
    NoReadyEndpoint { deployment: DeploymentId, known: Vec<String> },
    #[error("module server {endpoint} of deployment {deployment} is unavailable: {reason}")]
    Unreachable { endpoint: String, deployment: DeploymentId, reason: String },
    #[error("deadline of {}ms exceeded{}", .timeout.as_millis(), endpoint_suffix(.endpoint))]
    DeadlineExceeded { timeout: Duration, endpoint: Option<String> },
    /// The session's replica went away and its objects with it: the reference is unknown to the
    /// replica now serving the session.
    #[error("the replica of deployment {deployment} that held this session ({lost}) went away, and the objects of the session went with it ({message}); new calls of the session go to another replica")]
    ReplicaGone { deployment: Box<DeploymentId>, lost: String, message: String },
    /// The deployment slept (idle timeout) since the session's last call: its objects went with
    /// the module servers that were stopped.
    #[error("deployment {deployment} was scaled to zero after its idle timeout since this session's last call, and the objects of the session went with it ({message}); new calls start afresh")]
    ScaledAway { deployment: Box<DeploymentId>, message: String },
    /// The caller's deadline passed while the call waited for a sleeping deployment.
    #[error("deadline of {}ms exceeded while deployment {deployment} was waking from zero", .timeout.as_millis())]
    WakeDeadline { deployment: Box<DeploymentId>, timeout: Duration },
    /// Waking the deployment failed (its module server did not start).
    #[error("deployment {deployment} could not be woken from zero: {source}")]
    WakeFailed {
        deployment: Box<DeploymentId>,
        #[source]
        source: backend::Error,
    },
    #[error("module server endpoint `{endpoint}` is not a valid address: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("cannot resolve the module servers: {0}")]
    Backend(#[source] backend::Error),
    /// The module server answered with an error status: passed to the caller unchanged.
    #[error("{}", .0.message())]
    Upstream(Box<tonic::Status>),
    /// The caller may not call this deployment (or it could not be decided).
    #[error(transparent)]
    Authorization(auth::authorize::Error),
    /// The record holds no usable call token (deployed before module servers had one).
    #[error("deployment {0} has no call token for its module servers; deploy it again to give it one")]
    NoCallToken(DeploymentId),
    /// The module server refused the deployment's call token (it was started with another).
    #[error(
        "module server {endpoint} of deployment {deployment} refused the deployment's call token; deploy it again"
    )]
    CallTokenRefused { endpoint: String, deployment: DeploymentId },
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
    /// Most bytes of one request held before its target is known ([`DEFAULT_MAX_BUFFERED_BYTES`]).
    pub max_buffered_bytes: usize,
    /// How long a resolved endpoint list is reused before asking the backend again.
    pub resolve_ttl: Duration,
    /// How long a session stays bound to its replica after its last call.
    pub session_ttl: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// HTTP/2 windows: large, so a 64 MiB ndarray is not throttled by WINDOW_UPDATE round trips.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Let hyper size the windows from measured bandwidth-delay (overrides the fixed ones).
    pub adaptive_window: bool,
    /// How long a `GetModuleAccess` answer is valid for (clients ask again after it).
    pub access_ttl: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            resolve_ttl: Duration::from_secs(1),
            session_ttl: DEFAULT_SESSION_TTL,
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(20),
            stream_window: 64 << 20,
            connection_window: 256 << 20,
            adaptive_window: false,
            access_ttl: DEFAULT_ACCESS_TTL,
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
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    #[must_use]
    pub fn resolve_ttl(mut self, ttl: Duration) -> Self {
        self.resolve_ttl = ttl;
        self
    }

    #[must_use]
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    #[must_use]
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }

    #[must_use]
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.adaptive_window = enabled;
        self
    }
}

/// The forwarded RPCs. `CallBatch` goes exactly as `Call` does (same permission, wake-up and
/// replica): its session is field 1 of the module server's request like every other one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    GetAttr,
    Call,
    CallBatch,
    Release,
    Describe,
}

impl Method {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "GetAttr" => Method::GetAttr,
            "Call" => Method::Call,
            "CallBatch" => Method::CallBatch,
            "Release" => Method::Release,
            "Describe" => Method::Describe,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::GetAttr => "GetAttr",
            Method::Call => "Call",
            Method::CallBatch => "CallBatch",
            Method::Release => "Release",
            Method::Describe => "Describe",
        }
    }

    /// The module server's path for this RPC.
    pub fn upstream_path(self) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(match self {
            Method::GetAttr => "/jac.splice.v1.ModuleService/GetAttr",
            Method::Call => "/jac.splice.v1.ModuleService/Call",
            Method::CallBatch => "/jac.splice.v1.ModuleService/CallBatch",
            Method::Release => "/jac.splice.v1.ModuleService/Release",
            Method::Describe => "/jac.splice.v1.ModuleService/Describe",
        })
    }
}

/// When a proxied call started and how long its caller gives it (`grpc-timeout`).
#[derive(Debug, Clone, Copy)]
struct Budget {
    started: Instant,
    timeout: Option<Duration>,
}

/// Resolution, channel pool and forwarding; shared by every proxied call.
#[derive(Debug)]
pub struct ModuleProxy {
    config: ProxyConfig,
    default_namespace: String,
    resolver: resolve::Resolver,
    pool: pool::Pool,
    authorizer: Arc<Authorizer>,
}

impl ModuleProxy {
    pub fn new(
        backend: Arc<dyn Backend>,
        default_namespace: String,
        config: ProxyConfig,
        authorizer: Arc<Authorizer>,
    ) -> Self {
        ModuleProxy {
            resolver: resolve::Resolver::new(backend, config.resolve_ttl, config.session_ttl),
            pool: pool::Pool::new(config.clone()),
            default_namespace,
            config,
            authorizer,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Forwards one `Proxy*Request` HTTP/2 request, streaming: the request is re-framed as it
    /// arrives ([`stream::plan`]) and the module server's response body and trailers are passed
    /// back frame by frame. Errors of the proxy itself are gRPC statuses (`to_status`).
    pub async fn forward_http(
        self: Arc<Self>,
        method: Method,
        request: http::Request<tonic::body::Body>,
        to_status: fn(Error) -> tonic::Status,
    ) -> http::Response<tonic::body::Body> {
        let started = Instant::now();
        let caller = Caller::from_extensions(request.extensions());
        let (parts, body) = request.into_parts();
        let timeout = parts.headers.get(deadline::HEADER).and_then(|v| v.to_str().ok()).and_then(deadline::parse);
        let mut id = None;
        let budget = Budget { started, timeout };
        let forward = self.clone().forward_streaming(method, caller, body, budget, to_status, &mut id);
        let result = match timeout {
            None => forward.await,
            Some(t) => match tokio::time::timeout(t, forward).await {
                Ok(r) => r,
                // Out of time while the deployment wakes (this call's wake-up or another's).
                Err(_) => Err(to_status(match id.as_ref().filter(|id| self.resolver.is_waking(id)) {
                    Some(id) => Error::WakeDeadline { deployment: Box::new(id.clone()), timeout: t },
                    None => Error::DeadlineExceeded { timeout: t, endpoint: None },
                })),
            },
        };
        let target = id.map(|id| format!("{}/{}", id.namespace, id.name)).unwrap_or_default();
        // The code known at the response head: the proxy's own error, a trailers-only status, or
        // OK for a response that streams (its end is the module server's).
        let code = match &result {
            Err(status) => status.code(),
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32),
        };
        crate::metrics::global().proxy_call(&target, code, started.elapsed());
        result.unwrap_or_else(|status| status.into_http())
    }

    async fn forward_streaming(
        self: Arc<Self>,
        method: Method,
        caller: Caller,
        mut body: tonic::body::Body,
        budget: Budget,
        to_status: fn(Error) -> tonic::Status,
        target_id: &mut Option<DeploymentId>,
    ) -> Result<http::Response<tonic::body::Body>, tonic::Status> {
        let Budget { started, timeout } = budget;
        use http_body_util::BodyExt;
        let limit = self.config.max_message_bytes;
        let buffer_limit = self.config.max_buffered_bytes;
        let over_buffer = |needed: usize| to_status(Error::BufferLimit { needed, limit: buffer_limit });
        let mut head = bytes::BytesMut::new();
        let (target, session, upstream_body) = loop {
            match stream::plan(&head).map_err(|e| to_status(e.into()))? {
                stream::Plan::NeedMore if head.len() > buffer_limit => {
                    // A huge field before field 2 (or an unfinished field 1).
                    return Err(over_buffer(head.len()));
                }
                stream::Plan::NeedMore => {}
                stream::Plan::Stream { target, prefix, inner_len } => {
                    if inner_len > limit {
                        return Err(too_large(inner_len, limit));
                    }
                    let session = match sessions::session_field(&head[prefix..], inner_len) {
                        sessions::SessionField::NeedMore if head.len() > buffer_limit => {
                            return Err(over_buffer(head.len()));
                        }
                        sessions::SessionField::NeedMore => None,
                        sessions::SessionField::Found(s) => Some(s),
                        sessions::SessionField::Absent => Some(String::new()),
                    };
                    if let Some(session) = session {
                        let head = head.freeze();
                        let already = head.len() - prefix;
                        let rest = head.slice(prefix..);
                        let remaining = inner_len.saturating_sub(already);
                        let rest = if already > inner_len { rest.slice(..inner_len) } else { rest };
                        let body =
                            stream::ForwardBody::new([stream::frame_header(inner_len), rest], Some(body), remaining);
                        break (target, session, body);
                    }
                }
                stream::Plan::Whole { len } => {
                    if len > limit {
                        return Err(too_large(len, limit));
                    }
                    if len > buffer_limit {
                        // Refused before reading it: the body is dropped, not buffered.
                        return Err(over_buffer(len));
                    }
                    if head.len() >= stream::FRAME_HEADER + len {
                        let message = head.freeze().slice(stream::FRAME_HEADER..stream::FRAME_HEADER + len);
                        let codec::Split { target, inner } = codec::split(message).map_err(|e| to_status(e.into()))?;
                        let session = match sessions::session_field(&inner, inner.len()) {
                            sessions::SessionField::Found(s) => s,
                            _ => String::new(),
                        };
                        let body = stream::ForwardBody::new([stream::frame_header(inner.len()), inner], None, 0);
                        break (target, session, body);
                    }
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None => return Err(to_status(codec::MalformedRequest::new("truncated request").into())),
            }
        };
        let id = self.deployment_id(target).map_err(to_status)?;
        *target_id = Some(id.clone());
        self.authorizer
            .permit(&caller, Verb::Call, Resource::Modules, Some(&id.namespace), Some(&id.name))
            .await
            .map_err(|e| to_status(Error::Authorization(e)))?;
        // A sleeping deployment is woken within what is left of the deadline.
        let within = timeout.map_or(WAKE_WITHOUT_DEADLINE, |t| t.saturating_sub(started.elapsed()));
        let mut replay = upstream_body.replayable();
        let mut upstream_body = Some(upstream_body);
        let mut woken: Option<resolve::Pick> = None;
        let mut rewoken = false;
        let (endpoint, lost, scaled_away, parts, body) = loop {
            let picked = match woken.take() {
                Some(pick) => pick,
                None => self.resolver.pick_waking(&id, &session, within).await.map_err(to_status)?,
            };
            let resolve::Pick { endpoint, call_token, lost, scaled_away } = picked;
            let mut sender = match self.pool.get(&endpoint).await {
                Ok(s) => s,
                // The endpoint set can lag a scale to zero by a moment: a call that finds its
                // module server gone while the deployment sleeps wakes it, as one that found none
                // would (nothing was sent yet).
                Err(_) if !rewoken && self.resolver.is_asleep(&id).await => {
                    rewoken = true;
                    let left = timeout.map_or(WAKE_WITHOUT_DEADLINE, |t| t.saturating_sub(started.elapsed()));
                    woken = Some(self.resolver.wake_and_pick(&id, &session, left).await.map_err(to_status)?);
                    continue;
                }
                Err(reason) => return Err(to_status(self.unreachable(&id, &endpoint, reason))),
            };
            let upstream = upstream_body.take().expect("a body for every attempt");
            let mut request = http::Request::new(tonic::body::Body::new(upstream));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = http::Uri::builder()
                .scheme("http")
                .authority(endpoint.as_str())
                .path_and_query(method.upstream_path())
                .build()
                .map_err(|e| to_status(Error::BadEndpoint { endpoint: endpoint.clone(), reason: e.to_string() }))?;
            let h = request.headers_mut();
            h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
            h.insert(http::header::AUTHORIZATION, call_token);
            if let Some(t) = timeout {
                // What is left after resolution, so the module server gives up when the caller does.
                h.insert(deadline::HEADER, deadline::encode(t.saturating_sub(started.elapsed())));
            }
            let sent = async {
                sender.ready().await?;
                sender.send_request(request).await
            };
            let response = match sent.await {
                Ok(r) => r,
                Err(e) => return Err(to_status(self.unreachable(&id, &endpoint, error_chain(&e)))),
            };
            let (parts, body) = response.into_parts();
            if parts.headers.get("grpc-status").is_some_and(|s| s == "16") {
                // Trailers-only UNAUTHENTICATED: the module server refused our call token, which
                // says nothing about the caller (already authorized), so it is not passed on as
                // such. The cached token may be an earlier deployment's under this name (undeployed
                // and deployed again within the cache's lifetime): ask the backend again and send
                // a buffered request once more; the module server refused it before running it.
                self.resolver.invalidate(&id);
                if let Some(again) = replay.take() {
                    tracing::debug!(deployment = %id, %endpoint, "call token refused: resolving again");
                    upstream_body = Some(again);
                    continue;
                }
                tracing::warn!(deployment = %id, %endpoint, "module server refused the deployment's call token");
                return Err(to_status(Error::CallTokenRefused { endpoint, deployment: id }));
            }
            break (endpoint, lost, scaled_away, parts, body);
        };
        if let Some(lost) = lost {
            if let Some(message) = not_found(&parts.headers) {
                let deployment = Box::new(id);
                return Err(to_status(if scaled_away {
                    Error::ScaledAway { deployment, message }
                } else {
                    Error::ReplicaGone { deployment, lost: lost.address, message }
                }));
            }
        }
        if let Some(message) = undecodable(&parts.headers) {
            return Err(to_status(Error::Undecodable(message)));
        }
        let proxy = self.clone();
        let on_error = move |status: tonic::Status| {
            let status = match TransportFailure::from_status(&status) {
                Some(failure) => proxy.transport_failure(&id, &endpoint, &failure, timeout),
                None => proxy.classify_failure(&id, &endpoint, status, timeout, started),
            };
            to_status(status)
        };
        Ok(http::Response::from_parts(
            parts,
            tonic::body::Body::new(stream::ResponseBody::new(tonic::body::Body::new(body), on_error)),
        ))
    }

    fn deployment_id(&self, target: crate::pb::ProxyTarget) -> Result<DeploymentId> {
        if target.deployment.is_empty() {
            return Err(Error::NoDeployment);
        }
        let namespace = if target.namespace.is_empty() { self.default_namespace.clone() } else { target.namespace };
        Ok(DeploymentId { namespace, module: PYTHON_MODULE.into(), name: target.deployment })
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

/// The message of a trailers-only INTERNAL status with which tonic's decoder answers a request
/// it cannot parse ("failed to decode Protobuf message: ..."): the request was the caller's, so
/// the proxy answers InvalidArgument instead.
fn undecodable(headers: &http::HeaderMap) -> Option<String> {
    let status = tonic::Status::from_header_map(headers)?;
    let decode = status.code() == tonic::Code::Internal && status.message().starts_with("failed to decode Protobuf");
    decode.then(|| status.message().to_string())
}

/// The message of a trailers-only NOT_FOUND (the module server does not know a reference).
fn not_found(headers: &http::HeaderMap) -> Option<String> {
    let status = tonic::Status::from_header_map(headers)?;
    (status.code() == tonic::Code::NotFound).then(|| status.message().to_string())
}

fn too_large(len: usize, limit: usize) -> tonic::Status {
    tonic::Status::out_of_range(format!(
        "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
    ))
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
    /// A body error of the channel: an h2/hyper failure wrapped in a status.
    fn from_status(status: &tonic::Status) -> Option<Self> {
        let source = std::error::Error::source(status)?;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(err) = next {
            if err.is::<tonic::TimeoutExpired>() {
                return Some(TransportFailure::Timeout);
            }
            next = err.source();
        }
        Some(TransportFailure::Broken(error_chain(source)))
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
