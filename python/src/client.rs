//! The transport half of a client: pooled tonic channels and lanes to one endpoint, telling a
//! module server from jac-orc, session metadata, batched releases, the session heartbeat, and
//! closing (every session's references released, connections dropped). No Python types here.
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::coalesce::Connector;
use crate::lane::{self, Lanes};
use crate::proto::module_proxy_client::ModuleProxyClient;
use crate::proto::module_service_client::ModuleServiceClient;
use crate::proto::orchestrator_client::OrchestratorClient;
use crate::proto::{
    ensure_module_event, EnsureModuleRequest, EnsureModuleResponse, GetModuleAccessRequest, ListDeploymentsRequest,
    ListDeploymentsResponse, ModuleAccess,
};
pub use crate::route::Route;
use crate::runtime::{block_on_interruptible, rt};
use crate::wire::{CONNECTION_WINDOW, LANE_HEADER, MAX_FRAME, MODULE_SERVICE, ORCHESTRATOR_SERVICE, STREAM_WINDOW};

/// How long `Connection::close` spends releasing references; what it could not release the
/// server frees when the session's lease ends.
const CLOSE_RELEASES_WITHIN: Duration = Duration::from_secs(10);

/// What can go wrong on the client's side of a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad target {target:?}")]
    BadTarget {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the token is not valid header text")]
    BadToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    #[error("{target:?} is not an https:// URL: a CA is only used for TLS")]
    CaWithoutTls { target: String },
    #[error("cannot set up TLS for {target:?}")]
    Tls {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Lane(#[from] lane::Error),
    /// The server answered with an error status (or the call failed in transport).
    #[error(transparent)]
    Rpc(#[from] Status),
    #[error("cannot reach {address}")]
    Unreachable {
        address: String,
        #[source]
        source: Status,
    },
    #[error("{address} is neither jac-orc nor a jac-splice module server (its gRPC health service knows neither {ORCHESTRATOR_SERVICE:?} nor {MODULE_SERVICE:?})")]
    NotSplice {
        address: String,
        #[source]
        source: Option<Status>,
    },
    #[error("{address} reports {status} for {service}")]
    NotServing { address: String, service: &'static str, status: &'static str },
    #[error("{address}: the health check failed")]
    HealthCheck {
        address: String,
        #[source]
        source: Status,
    },
    /// The connection was closed (`Connection::close`).
    #[error("the connection was closed")]
    Closed,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub token: Option<String>,
    /// PEM certificates to trust for an https:// target instead of the system's roots.
    pub ca: Option<Vec<u8>>,
    pub max_message_bytes: usize,
    pub channels: usize,
    pub connect_timeout: Duration,
}

/// What serves an address: told by one health `Check` (see `wire::ORCHESTRATOR_SERVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// jac-orc: module calls go through its `ModuleProxy`.
    Orchestrator,
    /// A module server: `ModuleService` is called directly.
    ModuleServer,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orchestrator => "orchestrator",
            Self::ModuleServer => "module-server",
        }
    }
}

/// Channels to one endpoint (a module server or jac-orc), shared by every route through it.
#[derive(Debug)]
pub struct Connection {
    address: String,
    pub(crate) lanes: Lanes,
    /// Emptied by `close`, which drops the connections behind them.
    channels: RwLock<Vec<Channel>>,
    next: AtomicUsize,
    closed: AtomicBool,
    /// Every route (session) over this connection, so `close` can release their references.
    routes: Mutex<Vec<Weak<Route>>>,
    /// Connections opened on this one's behalf (direct access to module servers), closed with it.
    children: Mutex<Vec<Weak<Connection>>>,
    /// `Bearer <token>`: set at creation, or later once the server's kind tells which token
    /// applies (`jac_splice.connect` finds it then).
    auth: RwLock<Option<MetadataValue<tonic::metadata::Ascii>>>,
    max_message_bytes: usize,
}

/// Normalises "host:port" to "http://host:port".
pub fn endpoint_uri(target: &str) -> String {
    if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    }
}

impl Connection {
    /// Prepares lazily connecting channels (the first request dials; a broken connection
    /// redials). Must be called inside a runtime context (the channels' tasks spawn on it).
    pub fn new(target: &str, options: &Options) -> Result<Arc<Self>, Error> {
        let mut endpoint = Endpoint::from_shared(endpoint_uri(target))
            .map_err(|source| Error::BadTarget { target: target.to_owned(), source })?;
        let tls = endpoint.uri().scheme_str() == Some("https");
        if tls {
            // The server's name is the URL's host (tonic's default); a CA replaces the system roots.
            let config = match &options.ca {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint =
                endpoint.tls_config(config).map_err(|source| Error::Tls { target: target.to_owned(), source })?;
        } else if options.ca.is_some() {
            return Err(Error::CaWithoutTls { target: target.to_owned() });
        }
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .max_frame_size(Some(MAX_FRAME));
        let pinging = endpoint
            .clone()
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let connector = Connector::new(options.connect_timeout);
        let channels =
            (0..options.channels.max(1)).map(|_| pinging.connect_with_connector_lazy(connector.clone())).collect();
        let auth = options.token.as_deref().map(bearer).transpose()?;
        Ok(Arc::new(Self {
            address: target.to_owned(),
            lanes: Lanes::new(endpoint, connector),
            channels: RwLock::new(channels),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            routes: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            auth: RwLock::new(auth),
            max_message_bytes: options.max_message_bytes,
        }))
    }

    /// The target as given ("127.0.0.1:50051", "https://jac-orc.example").
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `token` with every request from now on.
    pub fn set_token(&self, token: &str) -> Result<(), Error> {
        let auth = bearer(token)?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Some(auth);
        Ok(())
    }

    /// Whether requests carry a token (errors say which of "none sent" and "refused" it was).
    pub fn has_token(&self) -> bool {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// One of the pooled channels, in turn (none once closed).
    pub fn channel(&self) -> Result<Channel, Status> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        if channels.is_empty() {
            return Err(Status::cancelled("the connection was closed"));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % channels.len();
        Ok(channels[i].clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `Err(Closed)` once `close` has begun.
    pub fn check_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Closes the connection: from now on every call through it fails with `Error::Closed`;
    /// each route's references are released (within `CLOSE_RELEASES_WITHIN`, errors ignored:
    /// the server frees the rest when the session's lease ends, as no heartbeat renews it), and
    /// the channels and lanes are dropped. A second call does nothing.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let routes: Vec<Arc<Route>> = std::mem::take(&mut *self.routes.lock().unwrap_or_else(|e| e.into_inner()))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let releases = async {
            for route in routes {
                if route.release_all().await.is_err() {
                    break; // the server is gone or refuses: the others would fare no better
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_RELEASES_WITHIN, releases).await;
        let children: Vec<Arc<Connection>> =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()))
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
        for child in children {
            Box::pin(child.close()).await;
        }
        self.lanes.close();
        let channels = std::mem::take(&mut *self.channels.write().unwrap_or_else(|e| e.into_inner()));
        drop(channels);
    }

    /// Closes `child` when this connection closes.
    pub(crate) fn adopt(&self, child: &Arc<Connection>) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(child));
    }

    pub(crate) fn register(&self, route: &Arc<Route>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|r| r.strong_count() > 0);
        routes.push(Arc::downgrade(route));
    }

    /// Runs one call to completion on this thread: on a free lane (this thread drives the
    /// connection itself), else over a pooled channel on the shared runtime. `make` gets the
    /// channel and whether it is a lane's. `interrupt` runs every `runtime::SLICE` while the
    /// call is pending; its error abandons the call and is returned as the outer error.
    pub fn block_on_call<T, E, F>(
        &self,
        make: impl FnOnce(Channel, bool) -> F,
        interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<Result<T, Error>, E>
    where
        F: Future<Output = Result<T, Status>>,
    {
        let lane = match self.lanes.take() {
            Ok(lane) => lane,
            Err(e) => return Ok(Err(e.into())),
        };
        let result = match &lane {
            Some(lane) => block_on_interruptible(lane, make(lane.channel(), true), interrupt),
            None => match self.channel() {
                Ok(channel) => block_on_interruptible(rt(), make(channel, false), interrupt),
                Err(status) => Ok(Err(status)),
            },
        };
        // A call abandoned on a lane (interrupted, or past its deadline) may still run on the
        // server's thread of that connection, which would hold the next call back: the lane goes.
        let abandoned = match &result {
            Err(_) => true,
            Ok(Err(status)) => status.code() == Code::DeadlineExceeded,
            Ok(Ok(_)) => false,
        };
        if let Some(lane) = lane {
            if abandoned {
                self.lanes.discard(lane);
            } else {
                self.lanes.put(lane);
            }
        }
        result.map(|r| r.map_err(Error::from))
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(auth) = &*self.auth.read().unwrap_or_else(|e| e.into_inner()) {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }

    /// A request sent directly to a module server; over a lane it is marked so the server runs
    /// it on the connection's thread.
    pub(crate) fn direct_request<T>(&self, message: T, lane: bool) -> Request<T> {
        let mut request = self.request(message);
        if lane {
            request.metadata_mut().insert(LANE_HEADER, MetadataValue::from_static("1"));
        }
        request
    }

    pub(crate) fn module(&self) -> Result<ModuleServiceClient<Channel>, Status> {
        Ok(self.module_on(self.channel()?))
    }

    pub(crate) fn module_on(&self, channel: Channel) -> ModuleServiceClient<Channel> {
        ModuleServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    pub(crate) fn proxy(&self) -> Result<ModuleProxyClient<Channel>, Status> {
        Ok(self.proxy_on(self.channel()?))
    }

    pub(crate) fn proxy_on(&self, channel: Channel) -> ModuleProxyClient<Channel> {
        ModuleProxyClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    pub async fn list_deployments(&self, namespace: String, module: String) -> Result<ListDeploymentsResponse, Status> {
        let mut client = OrchestratorClient::new(self.channel()?);
        let response = client
            .list_deployments(self.request(ListDeploymentsRequest { namespace, module, on_demand: false }))
            .await?;
        Ok(response.into_inner())
    }

    /// jac-orc's python-module deployment serving a module, deployed first when none does; the
    /// call lasts until it is ready (the server bounds that wait).
    pub async fn ensure_module(&self, request: EnsureModuleRequest) -> Result<EnsureModuleResponse, Status> {
        let mut client = OrchestratorClient::new(self.channel()?);
        Ok(client.ensure_module(self.request(request)).await?.into_inner())
    }

    /// [`Self::ensure_module`] through `EnsureModuleProgress`, handing each line of the deploy's
    /// progress (`deployment.apps/numpy created`, `... ready`) to `on_line` as it happens. A
    /// jac-orc without that RPC gets the plain call (no progress).
    pub async fn ensure_module_progress(
        &self,
        request: EnsureModuleRequest,
        mut on_line: impl FnMut(String) + Send,
    ) -> Result<EnsureModuleResponse, Status> {
        let mut client = OrchestratorClient::new(self.channel()?);
        let mut stream = match client.ensure_module_progress(self.request(request.clone())).await {
            Ok(answer) => answer.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => return self.ensure_module(request).await,
            Err(s) => return Err(s),
        };
        while let Some(item) = stream.message().await? {
            match item.event {
                Some(ensure_module_event::Event::Object(ev)) if ev.message.is_empty() => on_line(ev.line),
                Some(ensure_module_event::Event::Object(ev)) => on_line(format!("{} ({})", ev.line, ev.message)),
                Some(ensure_module_event::Event::Done(answer)) => return Ok(answer),
                None => {}
            }
        }
        Err(Status::unavailable("jac-orc ended EnsureModuleProgress without an answer"))
    }

    /// jac-orc's direct access to a python-module deployment: its ready module servers and the
    /// call token they accept (`GetModuleAccess`).
    pub async fn module_access(&self, namespace: String, deployment: String) -> Result<ModuleAccess, Status> {
        let mut client = OrchestratorClient::new(self.channel()?);
        let request = self.request(GetModuleAccessRequest { namespace, deployment });
        Ok(client.get_module_access(request).await?.into_inner())
    }

    async fn health(&self, service: &str) -> Result<ServingStatus, Status> {
        let mut client = HealthClient::new(self.channel()?);
        let request = self.request(HealthCheckRequest { service: service.to_owned() });
        let response = client.check(request).await?.into_inner();
        Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
    }

    /// Asks the server's gRPC health service what it is: jac-orc reports SERVING for
    /// `ORCHESTRATOR_SERVICE`, a module server answers NOT_FOUND for that and SERVING for
    /// `MODULE_SERVICE`. Anything else is an error naming the address.
    pub async fn server_kind(&self) -> Result<ServerKind, Error> {
        for (service, kind) in
            [(ORCHESTRATOR_SERVICE, ServerKind::Orchestrator), (MODULE_SERVICE, ServerKind::ModuleServer)]
        {
            match self.health(service).await {
                Ok(ServingStatus::Serving) => return Ok(kind),
                Ok(status) => {
                    return Err(Error::NotServing {
                        address: self.address.clone(),
                        service,
                        status: status.as_str_name(),
                    })
                }
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => return Err(self.health_check_failed(status)),
            }
        }
        Err(Error::NotSplice { address: self.address.clone(), source: None })
    }

    fn health_check_failed(&self, status: Status) -> Error {
        let address = self.address.clone();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Error::Unreachable { address, source: status }
            }
            // No health service at all, or a peer that does not speak gRPC.
            Code::Unimplemented | Code::Unknown | Code::Internal => Error::NotSplice { address, source: Some(status) },
            // The server answered (e.g. UNAUTHENTICATED): its answer stands.
            _ => Error::HealthCheck { address, source: status },
        }
    }
}

fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Error> {
    format!("Bearer {token}").parse().map_err(Error::BadToken)
}

/// A fresh session id: 32 hex digits, unique per process and call.
pub fn new_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut parts = [0u64; 2];
    for part in &mut parts {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        *part = h.finish();
    }
    format!("{:016x}{:016x}", parts[0], parts[1])
}

#[cfg(test)]
mod tests {
    use tonic_health::ServingStatus as Report;

    use super::*;
    use crate::lane::MAX_BUSY_LANES;
    use crate::proto::{value, value_response, CallRequest, ProxyTarget, Value, ValueResponse};
    use crate::testing::{connect, dead_address, never, Recorder, Stub, TestModuleServer, BOUND};

    fn call(connection: &Connection, route: &Route) -> Result<ValueResponse, Error> {
        connection
            .block_on_call(|channel, lane| route.call(channel, lane, CallRequest::default()), never)
            .unwrap_or_else(|never| match never {})
    }

    fn answer(response: ValueResponse) -> String {
        match response.result {
            Some(value_response::Result::Value(Value { kind: Some(value::Kind::StrValue(s)) })) => s,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn direct(connection: &Arc<Connection>) -> Arc<Route> {
        Route::new(connection.clone(), new_session_id(), None)
    }

    #[test]
    fn a_lone_caller_takes_a_lane_and_its_call_runs_on_the_connection_thread() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        assert_eq!(answer(call(&connection, &route).unwrap()), "jac-splice-conn");
        let seen = recorder.seen();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].lane && seen[0].on_connection_thread(), "{seen:?}");
    }

    #[test]
    fn with_every_lane_busy_a_call_goes_over_a_pooled_channel_to_the_blocking_pool() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        let held: Vec<_> = (0..MAX_BUSY_LANES).map(|_| connection.lanes.take().unwrap().unwrap()).collect();
        assert_ne!(answer(call(&connection, &route).unwrap()), "jac-splice-conn");
        let seen = recorder.seen();
        assert!(!seen[0].lane && !seen[0].on_connection_thread(), "{seen:?}");
        for lane in held {
            connection.lanes.put(lane);
        }
        call(&connection, &route).unwrap();
        assert!(recorder.seen()[1].lane, "a freed lane is used again");
    }

    #[test]
    fn concurrent_callers_beyond_the_lanes_all_run_at_once() {
        // Every call waits on the server until all have arrived: they finish only if none waits
        // for another (a lane each, or the pooled channels and the server's blocking pool).
        const CALLERS: usize = MAX_BUSY_LANES + 2;
        let recorder = Recorder::meeting(CALLERS);
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        std::thread::scope(|s| {
            let callers: Vec<_> = (0..CALLERS).map(|_| s.spawn(|| call(&connection, &route))).collect();
            for caller in callers {
                caller.join().unwrap().expect("every caller met the others");
            }
        });
        let seen = recorder.seen();
        let on_lanes: Vec<&crate::testing::Seen> = seen.iter().filter(|s| s.lane).collect();
        assert_eq!(on_lanes.len(), MAX_BUSY_LANES, "{seen:?}");
        assert!(on_lanes.iter().all(|s| s.on_connection_thread()));
        assert_ne!(on_lanes[0].thread, on_lanes[1].thread, "each lane is its own connection and thread");
        assert!(seen.iter().filter(|s| !s.lane).all(|s| !s.on_connection_thread()));
    }

    #[test]
    fn calls_through_jac_orc_never_carry_the_lane_marker() {
        // jac-orc's ModuleProxy forwards to a module server over its own pool: a lane marker
        // from the client would make that server run the call on a shared connection's thread.
        let recorder = Recorder::default();
        let orchestrator = Stub::proxy(recorder.clone(), None);
        let connection = connect(orchestrator.addr);
        let via = ProxyTarget { deployment: "d".into(), namespace: "default".into() };
        let route = Route::new(connection.clone(), new_session_id(), Some(via));
        call(&connection, &route).unwrap();
        assert!(!recorder.seen()[0].lane);
    }

    fn kind(addr: std::net::SocketAddr) -> Result<ServerKind, Error> {
        let connection = connect(addr);
        rt().block_on(async { tokio::time::timeout(BOUND, connection.server_kind()).await }).unwrap()
    }

    #[test]
    fn a_module_server_is_told_by_its_health_service() {
        let server = TestModuleServer::start(Recorder::default());
        assert_eq!(kind(server.addr()).unwrap(), ServerKind::ModuleServer);
    }

    #[test]
    fn jac_orc_is_told_by_its_health_service_not_by_a_failing_call() {
        // A stand-in that serves no ModuleService at all: only what its health service says
        // makes it jac-orc.
        let orchestrator =
            Stub::proxy(Recorder::default(), Some(&[("", Report::Serving), (ORCHESTRATOR_SERVICE, Report::Serving)]));
        assert_eq!(kind(orchestrator.addr).unwrap(), ServerKind::Orchestrator);
    }

    #[test]
    fn a_server_whose_health_service_knows_neither_name_is_not_a_splice_server() {
        let other = Stub::proxy(Recorder::default(), Some(&[("", Report::Serving)]));
        let err = kind(other.addr).unwrap_err();
        assert!(matches!(err, Error::NotSplice { .. }), "{err:?}");
        assert!(err.to_string().contains(&other.addr.to_string()), "{err}");
    }

    #[test]
    fn a_server_without_a_health_service_is_not_a_splice_server() {
        let other = Stub::proxy(Recorder::default(), None);
        let err = kind(other.addr).unwrap_err();
        match &err {
            Error::NotSplice { source: Some(status), .. } => assert_eq!(status.code(), Code::Unimplemented),
            other => panic!("expected NotSplice with the UNIMPLEMENTED answer, got {other:?}"),
        }
    }

    #[test]
    fn jac_orc_that_is_not_serving_says_so() {
        let orchestrator = Stub::proxy(Recorder::default(), Some(&[(ORCHESTRATOR_SERVICE, Report::NotServing)]));
        let err = kind(orchestrator.addr).unwrap_err();
        assert!(matches!(err, Error::NotServing { status: "NOT_SERVING", .. }), "{err:?}");
    }

    #[test]
    fn an_address_nobody_listens_on_is_unreachable() {
        let addr = dead_address();
        let err = kind(addr).unwrap_err();
        assert!(matches!(&err, Error::Unreachable { source, .. } if source.code() == Code::Unavailable), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn bad_targets_and_tokens_are_refused_with_their_cause() {
        let options = |token: Option<&str>| Options {
            token: token.map(str::to_owned),
            ca: None,
            max_message_bytes: 1 << 20,
            channels: 1,
            connect_timeout: BOUND,
        };
        let _runtime = rt().enter();
        let err = Connection::new("http://bad host:1", &options(None)).unwrap_err();
        assert!(matches!(err, Error::BadTarget { .. }) && std::error::Error::source(&err).is_some(), "{err:?}");
        let err = Connection::new("127.0.0.1:1", &options(Some("line\nbreak"))).unwrap_err();
        assert!(matches!(err, Error::BadToken(_)) && std::error::Error::source(&err).is_some(), "{err:?}");
    }

    #[test]
    fn session_ids_are_32_hex_digits_and_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_session_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
