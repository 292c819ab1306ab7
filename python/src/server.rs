//! The module server's transport, with no Python in it: it binds, accepts connections and gives
//! each its own thread (like a threaded server), reports gRPC health, and runs each request's
//! blocking work either on that connection's thread (a lane's request: the connection carries
//! nothing else meanwhile) or on the blocking pool (so a multiplexed connection keeps serving
//! its other streams). Before a request reaches the routes it must pass the server's `Access`
//! (the call token, see `access.rs`), and with TLS configured every connection is a TLS one.
//! `host.rs` puts the Python module behind it.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_rustls::rustls;
use tonic::{Request, Status};

use crate::access::Access;
use crate::wire::{is_oversize, CONNECTION_WINDOW, LANE_HEADER, MAX_FRAME, MODULE_SERVICE, STREAM_WINDOW};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the server runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {host}:{port}")]
    Bind {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a server thread")]
    Thread(#[source] std::io::Error),
    #[error("the server thread ended abruptly")]
    ThreadEnded,
    #[error("the connection's call was dropped")]
    CallDropped,
    #[error("request task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot read the TLS {what}")]
    TlsPem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate file holds no certificate")]
    NoCertificate,
    #[error("the TLS certificate and key do not make a server configuration")]
    TlsConfig(#[source] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps the whole life of a connection thread (the host attaches it to Python once, see
/// `host.rs`); `|run| run()` when there is nothing to set up.
pub type ThreadScope = fn(Box<dyn FnOnce() + Send + '_>);

/// Work that runs beside the server on its runtime until it stops (the host's lease reaper).
pub type Background = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a connection must show before its requests are served: the call token (or nothing, for
/// an open server) and, if set, TLS.
#[derive(Clone)]
pub struct Security {
    pub access: Access,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("access", &self.access).field("tls", &self.tls.is_some()).finish()
    }
}

impl Security {
    /// No token, no TLS: for the transport tests.
    #[cfg(test)]
    pub fn open() -> Self {
        Self { access: Access::Open, tls: None }
    }
}

/// A TLS acceptor for `cert_pem` (the server's certificate chain, leaf first) and `key_pem` (its
/// private key), speaking only HTTP/2 (gRPC clients insist on ALPN `h2`).
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::TlsPem { what: "certificate", source })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| Error::TlsPem { what: "private key", source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsConfig)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::TlsConfig)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A client that never finishes its TLS handshake gives its connection thread back after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a request came over a client lane (see `wire::LANE_HEADER`).
pub fn from_lane<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(LANE_HEADER)
}

/// Blocking work handed from a request to its connection thread's loop.
type Job = Box<dyn FnOnce() + Send>;

std::thread_local! {
    /// On a connection thread: where its loop picks up jobs to run outside the runtime.
    static INLINE: std::cell::RefCell<Option<tokio::sync::mpsc::UnboundedSender<Job>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs blocking work: for a lane's request (`inline`) on this connection's thread, else on the
/// blocking pool.
///
/// On the connection thread the work runs *between* turns of its runtime, not inside one: served
/// code may block on a runtime of its own (a jac-splice client, any tokio-based library), which
/// is not allowed from within a runtime.
pub async fn run_blocking<T: Send + 'static>(inline: bool, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let sender = if inline { INLINE.with(|c| c.borrow().clone()) } else { None };
    let Some(sender) = sender else {
        return tokio::task::spawn_blocking(f).await.map_err(Error::Task);
    };
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    if let Err(unsent) = sender.send(job) {
        // The loop is gone (shutting down): run it here rather than fail the call.
        (unsent.0)();
    }
    rx.await.map_err(|_| Error::CallDropped)
}

/// Rewrites tonic's OUT_OF_RANGE "message length too large" into gRPC's RESOURCE_EXHAUSTED.
fn oversize_to_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let oversize = headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some("11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| is_oversize(&Status::out_of_range(percent_decode(m))));
    if oversize {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

fn percent_decode(text: &str) -> String {
    text.replace("%20", " ")
}

/// A running server; `stop` ends it.
#[derive(Debug)]
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<()>>>,
}

/// Binds `host:port`, then serves `routes` (plus gRPC health: SERVING for "", "ModuleService"
/// and `MODULE_SERVICE`) to the callers `security` lets in until `stop`: a thread accepts
/// connections and gives each its own thread, wrapped in `scope`; `background` runs beside it
/// on the accepting thread's runtime.
pub fn start(
    host: &str,
    port: u16,
    routes: tonic::service::Routes,
    security: Security,
    scope: ThreadScope,
    background: Background,
) -> Result<ServerHandle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("jac-splice-call")
        .build()
        .map_err(Error::Runtime)?;
    let listener = rt.block_on(tokio::net::TcpListener::bind((host, port))).map_err(|source| Error::Bind {
        host: host.to_owned(),
        port,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { host: host.to_owned(), port, source })?;
    let (tx, rx) = oneshot::channel::<()>();
    let serve = async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in ["", "ModuleService", MODULE_SERVICE] {
            reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
        let routes = routes.add_service(health);
        let background = tokio::spawn(background);
        let result = accept_loop(listener, routes, security, scope, async {
            let _ = rx.await;
        })
        .await;
        background.abort();
        result
    };
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("jac-splice-server".into())
        .spawn(move || {
            let result = rt.block_on(serve);
            // Calls still running in the blocking pool finish on their own.
            rt.shutdown_background();
            let _ = done_tx.send(result);
        })
        .map_err(Error::Thread)?;
    Ok(ServerHandle { addr, shutdown: Some(tx), done: Some(done) })
}

impl ServerHandle {
    /// Waits up to `timeout` for the server to end; `Ok(true)` once it has.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let Some(done) = self.done.as_mut() else {
            return Ok(true);
        };
        let rt = crate::runtime::rt();
        match rt.block_on(async { tokio::time::timeout(timeout, done).await }) {
            Err(_) => Ok(false),
            Ok(ended) => {
                self.done = None;
                ended.map_err(|_| Error::ThreadEnded)?.map(|()| true)
            }
        }
    }

    /// Asks the server to stop: it stops accepting, in-flight calls finish, then it ends.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

type Routes = tower::util::MapResponse<
    tonic::service::Routes,
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

/// Accepts connections until `shutdown`, then closes them gracefully (in-flight calls finish)
/// and returns once all are closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    security: Security,
    scope: ThreadScope,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let routes: Routes = tower::util::MapResponse::new(routes, oversize_to_resource_exhausted);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(stream, _)| {
                    stream.set_nodelay(true)?;
                    stream.into_std()
                }) {
                    Ok(stream) => stream,
                    Err(_) => {
                        // Out of file descriptors and the like: back off a little.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (routes, security) = (routes.clone(), security.clone());
                let (stop, alive) = (stop_rx.clone(), alive_tx.clone());
                std::thread::Builder::new()
                    .name("jac-splice-conn".into())
                    .spawn(move || serve_connection(stream, routes, security, scope, stop, alive))
                    .map_err(Error::Thread)?;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// Serves one connection on this thread (a lane's calls run right here; calls from multiplexing
/// clients go to the blocking pool of this thread's runtime).
fn serve_connection(
    stream: std::net::TcpStream,
    routes: Routes,
    security: Security,
    scope: ThreadScope,
    mut stop: tokio::sync::watch::Receiver<()>,
    _alive: tokio::sync::mpsc::Sender<()>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    scope(Box::new(|| {
        let _context = rt.enter();
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        match &security.tls {
            None => serve_on(&rt, stream, routes, security.access, &mut stop),
            Some(acceptor) => {
                let handshake = rt.block_on(tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)));
                // A failed or stalled handshake (a plaintext client, an untrusting one) just closes.
                if let Ok(Ok(stream)) = handshake {
                    serve_on(&rt, stream, routes, security.access, &mut stop);
                }
            }
        }
    }));
    // Calls still running in the blocking pool finish on their own.
    rt.shutdown_background();
}

/// How long a stopping connection with nothing in flight is still driven before it is closed.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// What ended one turn of a connection thread's runtime.
enum Turn {
    Job(Job),
    Stop,
    Idle,
    Done,
}

/// The requests a connection has in flight, from arrival to the end of the response body.
///
/// Stopping needs it: hyper's graceful shutdown of an HTTP/2 connection waits for the client to
/// answer a PING, and an idle client lane answers nothing (its runtime runs only during a call),
/// so a connection with nothing in flight is closed at once instead.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One request in flight; dropped with the response body (or the request, if it never got one).
#[derive(Debug)]
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Self(in_flight.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// A response body that holds its request's place in `InFlight` until it is sent (or dropped).
#[derive(Debug)]
struct Guarded {
    body: tonic::body::Body,
    _guard: InFlightGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection thread's loop: drive the connection until a lane's request has blocking work,
/// run that work outside the runtime, resume. Asked to stop, it stops taking new streams and ends
/// once nothing is in flight.
fn serve_on<S>(
    rt: &tokio::runtime::Runtime,
    stream: S,
    routes: Routes,
    access: Access,
    stop: &mut tokio::sync::watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (jobs_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
    INLINE.with(|c| *c.borrow_mut() = Some(jobs_tx));
    let in_flight = Arc::new(InFlight::default());
    let counted = in_flight.clone();
    let service = hyper_util::service::TowerToHyperService::new(tower::service_fn(
        move |request: http::Request<hyper::body::Incoming>| {
            let guard = InFlightGuard::new(&counted);
            // Refused here, on the headers: the body is never decoded and no Python runs.
            let call = access
                .check(&request)
                .map(|()| tower::ServiceExt::oneshot(routes.clone(), request.map(tonic::body::Body::new)));
            async move {
                let response = match call {
                    Ok(call) => call.await?,
                    Err(status) => status.into_http(),
                };
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| tonic::body::Body::new(Guarded { body, _guard: guard })),
                )
            }
        },
    ));
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    let mut connection = std::pin::pin!(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    let mut stopping = false;
    loop {
        let turn = rt.block_on(async {
            tokio::select! {
                biased;
                job = jobs.recv() => job.map_or(Turn::Done, Turn::Job),
                _ = &mut connection => Turn::Done,
                _ = stop.changed(), if !stopping => Turn::Stop,
                () = in_flight.idle.notified(), if stopping => Turn::Idle,
            }
        });
        match turn {
            Turn::Job(job) => job(),
            Turn::Stop => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            Turn::Idle => {}
            Turn::Done => break,
        }
        // The idle notification may be stale (from before the stop): only a real zero ends it.
        if stopping && in_flight.count.load(Ordering::Acquire) == 0 {
            // Let the last answers leave; a client in a call acks the shutdown and the
            // connection ends sooner, an idle lane never does.
            let _ = rt.block_on(tokio::time::timeout(CLOSE_GRACE, &mut connection));
            break;
        }
    }
    INLINE.with(|c| c.borrow_mut().take());
    // Jobs queued meanwhile (none normally) still run, so no caller waits forever.
    while let Ok(job) = jobs.try_recv() {
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Error as ClientError, Route};
    use crate::proto::CallRequest;
    use crate::runtime::rt;
    use crate::testing::{connect, connect_with, never, Recorder, Rendezvous, TestModuleServer, BOUND};

    fn grpc_error(code: &str, message: &str) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::empty());
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_str(code).unwrap());
        response.headers_mut().insert("grpc-message", http::HeaderValue::from_str(message).unwrap());
        response
    }

    fn status_of(response: &http::Response<tonic::body::Body>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[test]
    fn oversize_answers_become_resource_exhausted_and_others_stay() {
        let oversize = grpc_error("11", "Error,%20message%20length%20too%20large:%20found%202097157%20bytes");
        assert_eq!(status_of(&oversize_to_resource_exhausted(oversize)), "8");
        let other = grpc_error("11", "index%20out%20of%20range");
        assert_eq!(status_of(&oversize_to_resource_exhausted(other)), "11");
        let not_found = grpc_error("5", "message%20length%20too%20large");
        assert_eq!(status_of(&oversize_to_resource_exhausted(not_found)), "5");
    }

    #[test]
    fn only_requests_with_the_lane_marker_are_from_a_lane() {
        let mut request = Request::new(());
        assert!(!from_lane(&request));
        request.metadata_mut().insert(LANE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        assert!(from_lane(&request));
    }

    #[test]
    fn inline_work_off_a_connection_thread_runs_on_the_blocking_pool() {
        let caller = std::thread::current().id();
        let ran_on = rt()
            .block_on(async { tokio::time::timeout(BOUND, run_blocking(true, || std::thread::current().id())).await })
            .unwrap()
            .unwrap();
        assert_ne!(ran_on, caller);
    }

    #[test]
    fn a_busy_port_is_a_bind_error_naming_it() {
        let server = TestModuleServer::start(Recorder::default());
        let routes = tonic::service::Routes::new(crate::proto::module_service_server::ModuleServiceServer::new(
            Recorder::default(),
        ));
        let port = server.addr().port();
        let err = start("127.0.0.1", port, routes, Security::open(), |run| run(), Box::pin(std::future::pending()))
            .unwrap_err();
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains(&port.to_string()) && std::error::Error::source(&err).is_some());
    }

    fn call_through(connection: &std::sync::Arc<crate::client::Connection>) -> Result<(), ClientError> {
        let route = Route::new(connection.clone(), crate::client::new_session_id(), None);
        let answered =
            connection.block_on_call(|channel, lane| route.call(channel, lane, CallRequest::default()), never);
        answered.unwrap_or_else(|never| match never {}).map(drop)
    }

    fn token_security(token: &str) -> Security {
        Security { access: Access::Token(crate::access::CallToken::new(token).unwrap()), tls: None }
    }

    fn code_of(result: Result<(), ClientError>) -> tonic::Code {
        match result {
            Err(ClientError::Rpc(status)) => status.code(),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[test]
    fn a_server_with_a_call_token_serves_only_calls_carrying_it() {
        let recorder = Recorder::default();
        let server = TestModuleServer::start_with(recorder.clone(), token_security("the-call-token"));
        let target = server.addr().to_string();
        let anonymous = connect_with(&target, None, None);
        assert_eq!(code_of(call_through(&anonymous)), tonic::Code::Unauthenticated);
        let wrong = connect_with(&target, Some("not-the-call-token"), None);
        assert_eq!(code_of(call_through(&wrong)), tonic::Code::Unauthenticated);
        assert!(recorder.seen().is_empty(), "refused calls never reach the service");
        let caller = connect_with(&target, Some("the-call-token"), None);
        call_through(&caller).expect("the call token is let in");
        assert_eq!(recorder.seen().len(), 1);
    }

    #[test]
    fn health_stays_open_on_a_server_with_a_call_token() {
        let server = TestModuleServer::start_with(Recorder::default(), token_security("the-call-token"));
        let anonymous = connect_with(&server.addr().to_string(), None, None);
        let kind = rt().block_on(async { tokio::time::timeout(BOUND, anonymous.server_kind()).await }).unwrap();
        assert_eq!(kind.unwrap(), crate::client::ServerKind::ModuleServer);
    }

    /// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
    fn self_signed() -> (String, String) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn a_tls_server_is_reached_with_its_ca_and_refused_without_it() {
        let (cert, key) = self_signed();
        let tls = tls_acceptor(cert.as_bytes(), key.as_bytes()).unwrap();
        let security = Security { tls: Some(tls), ..token_security("the-call-token") };
        let server = TestModuleServer::start_with(Recorder::default(), security);
        let url = format!("https://127.0.0.1:{}", server.addr().port());
        let trusting = connect_with(&url, Some("the-call-token"), Some(cert.as_bytes()));
        call_through(&trusting).expect("a client trusting the certificate calls over TLS");
        // Over TLS the token is still required.
        let anonymous = connect_with(&url, None, Some(cert.as_bytes()));
        assert_eq!(code_of(call_through(&anonymous)), tonic::Code::Unauthenticated);
        // The system's roots do not know a self-signed certificate.
        let untrusting = connect_with(&url, Some("the-call-token"), None);
        let err = call_through(&untrusting).unwrap_err();
        assert!(crate::errors::chain(&err).contains("certificate"), "{}", crate::errors::chain(&err));
        // Plaintext to a TLS port gets no answer.
        let plain = connect_with(&server.addr().to_string(), Some("the-call-token"), None);
        assert!(call_through(&plain).is_err());
    }

    #[test]
    fn tls_setup_names_what_is_wrong() {
        let (cert, key) = self_signed();
        assert!(matches!(tls_acceptor(b"", key.as_bytes()), Err(Error::NoCertificate)));
        let err = tls_acceptor(cert.as_bytes(), b"not a key").err();
        assert!(matches!(err, Some(Error::TlsPem { what: "private key", .. })), "{err:?}");
        let (_, other_key) = self_signed();
        assert!(matches!(tls_acceptor(cert.as_bytes(), other_key.as_bytes()), Err(Error::TlsConfig(_))));
    }

    #[test]
    fn stopping_does_not_wait_for_an_idle_client_lane() {
        // A lane's connection is driven only during its calls, so it never acks the shutdown.
        let mut server = TestModuleServer::start(Recorder::default());
        let connection = connect(server.addr());
        let route = Route::new(connection.clone(), crate::client::new_session_id(), None);
        let answered =
            connection.block_on_call(|channel, lane| route.call(channel, lane, CallRequest::default()), never);
        answered.unwrap_or_else(|never| match never {}).unwrap();
        server.handle.stop();
        assert!(server.handle.wait(BOUND).unwrap(), "the server ended with the idle lane still connected");
    }

    #[test]
    fn stopping_lets_the_call_in_flight_finish_then_refuses_new_connections() {
        let recorder =
            Recorder { meet: Some(Rendezvous::new(2)), then: Some(Rendezvous::new(2)), ..Recorder::default() };
        let mut server = TestModuleServer::start(recorder.clone());
        let addr = server.addr();
        let connection = connect(addr);
        let route = Route::new(connection.clone(), crate::client::new_session_id(), None);
        std::thread::scope(|s| {
            let caller = s.spawn(|| {
                connection.block_on_call(|channel, lane| route.call(channel, lane, CallRequest::default()), never)
            });
            assert!(recorder.meet.as_ref().unwrap().arrive(), "the call reached the server");
            server.handle.stop();
            assert!(recorder.then.as_ref().unwrap().arrive());
            let answered: Result<_, ClientError> = caller.join().unwrap().unwrap_or_else(|never| match never {});
            answered.expect("the call in flight was answered");
        });
        assert!(server.handle.wait(BOUND).unwrap(), "the server ended");
        let late = connect(addr);
        let refused = rt().block_on(async { tokio::time::timeout(BOUND, late.server_kind()).await }).unwrap();
        assert!(matches!(refused, Err(ClientError::Unreachable { .. })), "{refused:?}");
    }
}
