//! The transport half of a client: pooled tonic channels, session metadata, batched releases and
//! the session heartbeat. No Python types here.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::coalesce::Connector;
use crate::proto::module_proxy_client::ModuleProxyClient;
use crate::proto::module_service_client::ModuleServiceClient;
use crate::proto::orchestrator_client::OrchestratorClient;
use crate::proto::{
    CallRequest, DescribeRequest, DescribeResponse, GetAttrRequest, ListDeploymentsRequest, ListDeploymentsResponse,
    ProxyCallRequest, ProxyDescribeRequest, ProxyGetAttrRequest, ProxyReleaseRequest, ProxyTarget, ReleaseRequest,
    ReleaseResponse, ValueResponse,
};
use crate::server::LANE_HEADER;

/// HTTP/2 flow-control windows and frame size, shared with the module server: a big array
/// streams through without waiting for window updates, in few large frames.
pub const STREAM_WINDOW: u32 = 128 << 20;
pub const CONNECTION_WINDOW: u32 = 256 << 20;
pub const MAX_FRAME: u32 = 4 << 20;

/// Releases queued by garbage-collected proxies are sent in batches of at most this many ids.
const RELEASE_BATCH: usize = 512;
/// How often queued releases are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Options {
    pub token: Option<String>,
    pub max_message_bytes: usize,
    pub channels: usize,
    pub connect_timeout: Duration,
}

/// Idle lanes kept per endpoint.
const MAX_IDLE_LANES: usize = MAX_BUSY_LANES;
/// Calls in flight on lanes at once; further concurrent calls share the pooled channels, where
/// HTTP/2 carries many calls per segment and the server runs them on its pool (see
/// `Connection::take_lane`).
const MAX_BUSY_LANES: usize = 2;
/// A lane idle for longer first lets its connection notice a close (e.g. a restarted server),
/// so the call redials instead of failing on the dead connection.
const STALE_AFTER: Duration = Duration::from_millis(50);

/// A connection driven by the thread that calls through it: its own single-threaded runtime and
/// one HTTP/2 connection. A call writes, waits in `epoll` and reads on the calling thread, with
/// no hand-off to runtime worker threads. One call at a time uses a lane; concurrent callers
/// take further lanes (like one socket per thread), so they never queue behind each other.
#[derive(Debug)]
pub struct Lane {
    channel: Channel,
    runtime: Option<tokio::runtime::Runtime>,
    idle_since: Instant,
}

impl Lane {
    fn new(endpoint: &Endpoint, connector: &Connector) -> Result<Self, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Status::internal(format!("cannot build a client runtime: {e}")))?;
        let channel = {
            let _guard = runtime.enter();
            endpoint.connect_with_connector_lazy(connector.clone())
        };
        Ok(Self { channel, runtime: Some(runtime), idle_since: Instant::now() })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs `fut` to completion on this thread (the caller must not be inside a runtime).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        let runtime = self.runtime.as_ref().expect("a lane always has its runtime");
        runtime.block_on(fut)
    }

    fn refresh_if_stale(&self) {
        if self.idle_since.elapsed() > STALE_AFTER {
            // Two scheduler turns: the connection task reads whatever arrived while idle.
            self.block_on(async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            });
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so a lane may be dropped anywhere (even inside another runtime).
            runtime.shutdown_background();
        }
    }
}

/// Channels to one endpoint (a module server or jac-orc), shared by every route through it.
#[derive(Debug)]
pub struct Connection {
    endpoint: Endpoint,
    busy_lanes: AtomicUsize,
    connector: Connector,
    lanes: Mutex<Vec<Lane>>,
    channels: Vec<Channel>,
    next: AtomicUsize,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
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
    /// Prepares lazily connecting channels (the first request dials; a broken connection redials).
    pub fn new(target: &str, options: &Options) -> Result<Arc<Self>, Status> {
        // Lanes send no HTTP/2 pings: a module server runs a lane's call on the connection's
        // thread and answers pings only between calls. A dead server still shows as a closed
        // connection (and TCP keepalive covers a silent peer).
        let endpoint = Endpoint::from_shared(endpoint_uri(target))
            .map_err(|e| Status::invalid_argument(format!("bad target {target:?}: {e}")))?
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
        let auth = match &options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Status::invalid_argument("token is not valid header text"))?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            endpoint,
            busy_lanes: AtomicUsize::new(0),
            connector,
            lanes: Mutex::new(Vec::new()),
            channels,
            next: AtomicUsize::new(0),
            auth,
            max_message_bytes: options.max_message_bytes,
        }))
    }

    /// An idle lane (the most recently used one) or a new one; `None` when `MAX_BUSY_LANES`
    /// calls already run on lanes. A lane is the fastest path for one call at a time; many
    /// concurrent callers do better sharing the pooled channels (fewer segments, wake-ups and
    /// server threads per call).
    pub fn take_lane(&self) -> Result<Option<Lane>, Status> {
        let busy = self.busy_lanes.fetch_add(1, Ordering::AcqRel);
        if busy >= MAX_BUSY_LANES {
            self.busy_lanes.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let idle = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lane = match idle {
            Some(lane) => {
                lane.refresh_if_stale();
                Ok(lane)
            }
            None => Lane::new(&self.endpoint, &self.connector),
        };
        if lane.is_err() {
            self.busy_lanes.fetch_sub(1, Ordering::AcqRel);
        }
        lane.map(Some)
    }

    /// Returns a lane after a call.
    pub fn put_lane(&self, mut lane: Lane) {
        self.busy_lanes.fetch_sub(1, Ordering::AcqRel);
        lane.idle_since = Instant::now();
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.len() < MAX_IDLE_LANES {
            lanes.push(lane);
        } else {
            drop(lanes);
            drop(lane);
        }
    }

    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }

    /// A request sent directly to a module server; over a lane it is marked so the server runs
    /// it on the connection's thread.
    fn direct_request<T>(&self, message: T, lane: bool) -> Request<T> {
        let mut request = self.request(message);
        if lane {
            request.metadata_mut().insert(LANE_HEADER, MetadataValue::from_static("1"));
        }
        request
    }

    fn module(&self) -> ModuleServiceClient<Channel> {
        self.module_on(self.channel())
    }

    fn module_on(&self, channel: Channel) -> ModuleServiceClient<Channel> {
        ModuleServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    fn proxy(&self) -> ModuleProxyClient<Channel> {
        self.proxy_on(self.channel())
    }

    fn proxy_on(&self, channel: Channel) -> ModuleProxyClient<Channel> {
        ModuleProxyClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    pub async fn list_deployments(&self, namespace: String, module: String) -> Result<ListDeploymentsResponse, Status> {
        let mut client = OrchestratorClient::new(self.channel());
        let response = client.list_deployments(self.request(ListDeploymentsRequest { namespace, module })).await?;
        Ok(response.into_inner())
    }
}

/// One session's view of one module server, directly or through jac-orc's `ModuleProxy`.
#[derive(Debug)]
pub struct Route {
    connection: Arc<Connection>,
    session: String,
    via: Option<ProxyTarget>,
    pending: Mutex<Vec<String>>,
}

impl Route {
    pub fn new(connection: Arc<Connection>, session: String, via: Option<ProxyTarget>) -> Arc<Self> {
        Arc::new(Self { connection, session, via, pending: Mutex::new(Vec::new()) })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn via(&self) -> Option<&ProxyTarget> {
        self.via.as_ref()
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// `GetAttr` over `channel` (a lane's if `lane`).
    pub async fn get_attr(
        &self,
        channel: Channel,
        lane: bool,
        target: String,
        path: Vec<String>,
    ) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        let request = GetAttrRequest { session: self.session.clone(), target, path };
        let response = match &self.via {
            None => {
                let request = c.direct_request(request, lane);
                c.module_on(channel).get_attr(request).await?
            }
            Some(via) => {
                let proxied = ProxyGetAttrRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy_on(channel).get_attr(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// `Call` over `channel` (a lane's if `lane`).
    pub async fn call(&self, channel: Channel, lane: bool, mut request: CallRequest) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        request.session = self.session.clone();
        let response = match &self.via {
            None => {
                let request = c.direct_request(request, lane);
                c.module_on(channel).call(request).await?
            }
            Some(via) => {
                let proxied = ProxyCallRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy_on(channel).call(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn release(&self, ids: Vec<String>) -> Result<ReleaseResponse, Status> {
        let c = &self.connection;
        let request = ReleaseRequest { session: self.session.clone(), ids };
        let response = match &self.via {
            None => c.module().release(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyReleaseRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy().release(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn describe(&self) -> Result<DescribeResponse, Status> {
        let c = &self.connection;
        let request = DescribeRequest { session: self.session.clone() };
        let response = match &self.via {
            None => c.module().describe(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyDescribeRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy().describe(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// Queues an id for the next batched `Release` (cheap; safe from a GC callback).
    pub fn release_later(&self, id: String) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// Sends every queued release now.
    pub async fn flush(&self) -> Result<(), Status> {
        loop {
            let batch: Vec<String> = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let n = pending.len().min(RELEASE_BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            if let Err(status) = self.release(batch.clone()).await {
                // Keep them for the next attempt unless the server cannot hold them any more.
                if status.code() == Code::Unavailable {
                    self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(batch);
                }
                return Err(status);
            }
        }
    }

    /// Flushes releases every 200 ms and sends the heartbeat (an empty `Release`) every
    /// `heartbeat`, until the route is dropped.
    pub fn spawn_background(self: &Arc<Self>, heartbeat: Option<Duration>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        crate::runtime::rt().spawn(async move {
            let mut since_beat = Duration::ZERO;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                since_beat += FLUSH_EVERY;
                let Some(route) = weak.upgrade() else { return };
                let _ = route.flush().await;
                if let Some(every) = heartbeat {
                    if since_beat >= every {
                        since_beat = Duration::ZERO;
                        let _ = route.release(Vec::new()).await;
                    }
                }
            }
        });
    }
}
