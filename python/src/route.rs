//! One session's route to one module server (directly or through jac-orc's `ModuleProxy`):
//! its calls, batched releases, the heartbeat, and what `Connection::close` releases. Split
//! from `client.rs`, which holds the shared connection these routes run over.
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::Connection;
use crate::proto::{
    CallBatchRequest, CallBatchResponse, CallRequest, DescribeRequest, DescribeResponse, GetAttrRequest,
    ProxyCallBatchRequest, ProxyCallRequest, ProxyDescribeRequest, ProxyGetAttrRequest, ProxyReleaseRequest,
    ProxyTarget, ReleaseRequest, ReleaseResponse, ValueResponse,
};
use crate::runtime::rt;

/// Releases queued by garbage-collected proxies are sent in batches of at most this many ids.
const RELEASE_BATCH: usize = 512;
/// How often queued releases are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// `request` with `timeout` as its `grpc-timeout`, if any.
fn within<T>(mut request: tonic::Request<T>, timeout: Option<Duration>) -> tonic::Request<T> {
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    request
}

/// One session's view of one module server, directly or through jac-orc's `ModuleProxy`.
#[derive(Debug)]
pub struct Route {
    connection: Arc<Connection>,
    session: String,
    via: Option<ProxyTarget>,
    pending: Mutex<Vec<String>>,
    /// Ids handed to this client and not yet queued for release: what `close` releases.
    live: Mutex<HashSet<String>>,
}

impl Route {
    pub fn new(connection: Arc<Connection>, session: String, via: Option<ProxyTarget>) -> Arc<Self> {
        let route = Arc::new(Self {
            connection,
            session,
            via,
            pending: Mutex::new(Vec::new()),
            live: Mutex::new(HashSet::new()),
        });
        route.connection.register(&route);
        route
    }

    /// Records a reference id received in a response (released by `close` unless queued first).
    pub fn track(&self, id: &str) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned());
    }

    /// Releases every reference this session holds or has queued, in batches.
    pub(crate) async fn release_all(&self) -> Result<(), Status> {
        let live: Vec<String> = self.live.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(live);
        self.flush().await
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

    /// `GetAttr` over `channel` (a lane's if `lane`), carrying `timeout` as its deadline.
    pub async fn get_attr(
        &self,
        channel: Channel,
        lane: bool,
        target: String,
        path: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        let request = GetAttrRequest { session: self.session.clone(), target, path };
        let response = match &self.via {
            None => {
                let request = within(c.direct_request(request, lane), timeout);
                c.module_on(channel).get_attr(request).await?
            }
            Some(via) => {
                let proxied = ProxyGetAttrRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy_on(channel).get_attr(within(c.request(proxied), timeout)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// `Call` over `channel` (a lane's if `lane`), with no deadline.
    #[cfg(test)]
    pub async fn call(&self, channel: Channel, lane: bool, request: CallRequest) -> Result<ValueResponse, Status> {
        self.call_within(channel, lane, request, None).await
    }

    /// `Call` over `channel` (a lane's if `lane`), carrying `timeout` as its deadline
    /// (`grpc-timeout`, which ModuleProxy forwards and the module server honours).
    pub async fn call_within(
        &self,
        channel: Channel,
        lane: bool,
        mut request: CallRequest,
        timeout: Option<Duration>,
    ) -> Result<ValueResponse, Status> {
        let c = &self.connection;
        request.session = self.session.clone();
        let response = match &self.via {
            None => {
                let request = within(c.direct_request(request, lane), timeout);
                c.module_on(channel).call(request).await?
            }
            Some(via) => {
                let proxied = ProxyCallRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy_on(channel).call(within(c.request(proxied), timeout)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// `CallBatch` of `calls` (run in order, in this session) over a pooled channel, carrying
    /// `timeout` as its deadline. The calls' own sessions are left empty: the batch's applies.
    pub async fn call_batch(
        &self,
        channel: Channel,
        calls: Vec<CallRequest>,
        timeout: Option<Duration>,
    ) -> Result<CallBatchResponse, Status> {
        let c = &self.connection;
        let request = CallBatchRequest { session: self.session.clone(), calls };
        let response = match &self.via {
            None => c.module_on(channel).call_batch(within(c.request(request), timeout)).await?,
            Some(via) => {
                let proxied = ProxyCallBatchRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy_on(channel).call_batch(within(c.request(proxied), timeout)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn release(&self, ids: Vec<String>) -> Result<ReleaseResponse, Status> {
        let c = &self.connection;
        let request = ReleaseRequest { session: self.session.clone(), ids };
        let response = match &self.via {
            None => c.module()?.release(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyReleaseRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy()?.release(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    pub async fn describe(&self) -> Result<DescribeResponse, Status> {
        let c = &self.connection;
        let request = DescribeRequest { session: self.session.clone() };
        let response = match &self.via {
            None => c.module()?.describe(c.request(request)).await?,
            Some(via) => {
                let proxied = ProxyDescribeRequest { target: Some(via.clone()), request: Some(request) };
                c.proxy()?.describe(c.request(proxied)).await?
            }
        };
        Ok(response.into_inner())
    }

    /// Queues an id for the next batched `Release` (cheap; safe from a GC callback). Once the
    /// connection is closed there is nothing to release: `close` released every id.
    pub fn release_later(&self, id: String) {
        if self.connection.is_closed() {
            return;
        }
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
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
    /// `heartbeat`, until the route is dropped or its connection closed.
    pub fn spawn_background(self: &Arc<Self>, heartbeat: Option<Duration>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        rt().spawn(async move {
            let mut since_beat = Duration::ZERO;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                since_beat += FLUSH_EVERY;
                let Some(route) = weak.upgrade() else { return };
                if route.connection.is_closed() {
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{new_session_id, Error};
    use crate::testing::{connect, dead_address, never, Recorder, TestModuleServer, BOUND};

    fn direct(connection: &Arc<Connection>) -> Arc<Route> {
        Route::new(connection.clone(), new_session_id(), None)
    }

    fn call(connection: &Connection, route: &Route) -> Result<ValueResponse, Error> {
        connection
            .block_on_call(|channel, lane| route.call(channel, lane, CallRequest::default()), never)
            .unwrap_or_else(|never| match never {})
    }

    #[test]
    fn a_calls_timeout_reaches_the_module_server_as_its_grpc_timeout() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        let timeout = Some(Duration::from_secs(5));
        connection
            .block_on_call(|channel, lane| route.call_within(channel, lane, CallRequest::default(), timeout), never)
            .unwrap_or_else(|never| match never {})
            .unwrap();
        connection
            .block_on_call(|channel, lane| route.get_attr(channel, lane, String::new(), vec![], timeout), never)
            .unwrap_or_else(|never| match never {})
            .unwrap();
        call(&connection, &route).unwrap();
        let seen = recorder.deadlines.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        for carried in &seen[..2] {
            let carried = crate::deadline::parse(carried.as_deref().expect("a grpc-timeout")).unwrap();
            assert!(carried <= Duration::from_secs(5) && carried > Duration::ZERO, "{carried:?}");
        }
        assert_eq!(seen[2], None, "no timeout, no deadline");
    }

    #[test]
    fn a_call_batch_carries_the_session_once_and_is_answered_in_order() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        let calls: Vec<CallRequest> =
            ["a", "b", "c"].iter().map(|t| CallRequest { target: (*t).into(), ..Default::default() }).collect();
        let channel = connection.channel().unwrap();
        let sent = rt().block_on(async { tokio::time::timeout(BOUND, route.call_batch(channel, calls, None)).await });
        let answered: Vec<String> = sent
            .unwrap()
            .unwrap()
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(crate::proto::call_result::Result::Response(ValueResponse {
                    result: Some(crate::proto::value_response::Result::Value(v)),
                })) => match v.kind {
                    Some(crate::proto::value::Kind::StrValue(s)) => s,
                    other => panic!("expected text, got {other:?}"),
                },
                other => panic!("expected a value, got {other:?}"),
            })
            .collect();
        assert_eq!(answered, ["a", "b", "c"]);
        let batches = recorder.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![(route.session().to_owned(), vec!["a".into(), "b".into(), "c".into()])]);
    }

    #[test]
    fn queued_releases_go_out_in_batches() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let route = direct(&connection);
        for i in 0..(2 * RELEASE_BATCH + 76) {
            route.release_later(format!("r{i}"));
        }
        rt().block_on(async { tokio::time::timeout(BOUND, route.flush()).await }).unwrap().unwrap();
        assert_eq!(*recorder.releases.lock().unwrap(), vec![RELEASE_BATCH, RELEASE_BATCH, 76]);
        assert!(route.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn closing_releases_every_sessions_references_then_refuses_calls() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start(recorder.clone());
        let connection = connect(server.addr());
        let (first, second) = (direct(&connection), direct(&connection));
        for id in ["r1", "r2", "r3"] {
            first.track(id);
        }
        first.release_later("r3".into()); // queued, so released once, not twice
        second.track("r9");
        rt().block_on(async { tokio::time::timeout(BOUND, connection.close()).await }).unwrap();
        let mut released = recorder.releases.lock().unwrap().clone();
        released.sort_unstable();
        assert_eq!(released, vec![1, 3], "one batch per session");
        assert!(matches!(connection.check_open(), Err(Error::Closed)));
        assert!(matches!(call(&connection, &first), Err(Error::Rpc(s)) if s.code() == Code::Cancelled));
        first.release_later("r4".into());
        assert!(first.pending.lock().unwrap().is_empty(), "nothing is queued after close");
        rt().block_on(async { tokio::time::timeout(BOUND, connection.close()).await }).unwrap();
        assert_eq!(recorder.releases.lock().unwrap().len(), 2, "a second close sends nothing");
    }

    #[test]
    fn closing_with_the_server_gone_still_closes() {
        let connection = connect(dead_address());
        let route = direct(&connection);
        route.track("r1");
        rt().block_on(async { tokio::time::timeout(BOUND, connection.close()).await }).unwrap();
        assert!(connection.is_closed());
    }

    #[test]
    fn releases_that_cannot_be_sent_are_kept_for_the_next_flush() {
        let connection = connect(dead_address());
        let route = direct(&connection);
        route.release_later("r1".into());
        route.release_later("r2".into());
        let sent = rt().block_on(async { tokio::time::timeout(BOUND, route.flush()).await }).unwrap();
        assert_eq!(sent.unwrap_err().code(), Code::Unavailable);
        assert_eq!(*route.pending.lock().unwrap(), vec!["r1".to_owned(), "r2".to_owned()]);
    }
}
