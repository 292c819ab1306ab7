//! The transport half of a client: pooled tonic channels, session metadata, batched releases and
//! the session heartbeat. No Python types here.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::proto::module_proxy_client::ModuleProxyClient;
use crate::proto::module_service_client::ModuleServiceClient;
use crate::proto::orchestrator_client::OrchestratorClient;
use crate::proto::{
    CallRequest, DescribeRequest, DescribeResponse, GetAttrRequest, ListDeploymentsRequest,
    ListDeploymentsResponse, ProxyCallRequest, ProxyDescribeRequest, ProxyGetAttrRequest,
    ProxyReleaseRequest, ProxyTarget, ReleaseRequest, ReleaseResponse, ValueResponse,
};

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

/// Channels to one endpoint (a module server or jac-orc), shared by every route through it.
#[derive(Debug)]
pub struct Connection {
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
        let endpoint = Endpoint::from_shared(endpoint_uri(target))
            .map_err(|e| Status::invalid_argument(format!("bad target {target:?}: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20));
        let channels = (0..options.channels.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        let auth = match &options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Status::invalid_argument("token is not valid header text"))?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            channels,
            next: AtomicUsize::new(0),
            auth,
            max_message_bytes: options.max_message_bytes,
        }))
    }

    fn channel(&self) -> Channel {
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

    fn module(&self) -> ModuleServiceClient<Channel> {
        ModuleServiceClient::new(self.channel())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    fn proxy(&self) -> ModuleProxyClient<Channel> {
        ModuleProxyClient::new(self.channel())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    pub async fn list_deployments(
        &self,
        namespace: String,
        module: String,
    ) -> Result<ListDeploymentsResponse, Status> {
        let mut client = OrchestratorClient::new(self.channel());
        let response = client
            .list_deployments(self.request(ListDeploymentsRequest { namespace, module }))
            .await?;
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
    pub fn new(
        connection: Arc<Connection>,
        session: String,
        via: Option<ProxyTarget>,
    ) -> Arc<Self> {
        Arc::new(Self {
            connection,
            session,
            via,
            pending: Mutex::new(Vec::new()),
        })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn via(&self) -> Option<&ProxyTarget> {
        self.via.as_ref()
    }

    pub async fn get_attr(
        &self,
        target: String,
        path: Vec<String>,
    ) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        let request = GetAttrRequest {
            session: self.session.clone(),
            target,
            path,
        };
        let response = match &self.via {
            None => c.module().get_attr(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyGetAttrRequest {
                    target: Some(via.clone()),
                    request: Some(request),
                };
                c.proxy().get_attr(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn call(&self, mut request: CallRequest) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        request.session = self.session.clone();
        let response = match &self.via {
            None => c.module().call(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyCallRequest {
                    target: Some(via.clone()),
                    request: Some(request),
                };
                c.proxy().call(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn release(&self, ids: Vec<String>) -> Result<ReleaseResponse, Status> {
        let c = &self.connection;
        let request = ReleaseRequest {
            session: self.session.clone(),
            ids,
        };
        let response = match &self.via {
            None => c.module().release(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyReleaseRequest {
                    target: Some(via.clone()),
                    request: Some(request),
                };
                c.proxy().release(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn describe(&self) -> Result<DescribeResponse, Status> {
        let c = &self.connection;
        let request = DescribeRequest {
            session: self.session.clone(),
        };
        let response = match &self.via {
            None => c.module().describe(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyDescribeRequest {
                    target: Some(via.clone()),
                    request: Some(request),
                };
                c.proxy().describe(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// Queues an id for the next batched `Release` (cheap; safe from a GC callback).
    pub fn release_later(&self, id: String) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
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
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch);
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
