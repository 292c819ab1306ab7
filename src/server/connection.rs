//! One accepted connection, in its own task: the TLS handshake (bounded by the header-read
//! timeout, so the accept loop never waits on it), then HTTP/1 or HTTP/2 through the one stack
//! every request takes, in this order:
//!
//! 1. [`ConnectionInfo`] (peer and listener address) into the request's extensions;
//! 2. [`Track`]: the request counts as in flight until its response body is done, which is what
//!    the idle timeout watches ([`Activity`]);
//! 3. [`crate::api::layers::EdgeLayer`]: the request head (URI length, `Host` on loopback) and
//!    the browser rules (CORS), before credentials are looked at (preflights carry none);
//! 4. [`crate::auth::AuthLayer`]: authentication for every surface;
//! 5. the [`App`]: `ModuleProxy` calls straight to their service (the hot path), everything else
//!    (REST, the other gRPC services, grpc-web) through the router.
//!
//! The task ends the connection when the server stops (graceful first: in-flight requests
//! finish, HTTP/2 gets GOAWAY), when it has had no request in flight for the idle timeout, or
//! when the server gives up draining.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Limits;
use crate::api::layers::EdgeLayer;
use crate::api::module_proxy::ModuleProxyServer;
use crate::auth::{AuthLayer, ConnectionInfo};

/// How long an idle connection told to close (HTTP/2 GOAWAY) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What every connection task shares.
pub(super) struct Shared {
    pub(super) router: Router,
    pub(super) module_proxy: ModuleProxyServer,
    pub(super) edge: EdgeLayer,
    pub(super) auth: AuthLayer,
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(super) builder: Builder<TokioExecutor>,
    pub(super) limits: Limits,
    /// The listener's address, when a stream cannot tell its own.
    pub(super) local: SocketAddr,
    /// Cancelled when the server stops: connections close gracefully.
    pub(super) stop: CancellationToken,
    /// Cancelled when the drain period is over: connections are dropped.
    pub(super) kill: CancellationToken,
}

/// Serves one connection to its end; `_permit` is its place under the connection cap.
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    let info = ConnectionInfo { peer, local: stream.local_addr().unwrap_or(shared.local) };
    let io = match &shared.tls {
        None => Either::Right(stream),
        Some(acceptor) => {
            let handshake = tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(stream));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => Either::Left(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                () = shared.stop.cancelled() => return,
            }
        }
    };
    let activity = Arc::new(Activity::new());
    let app = App { router: shared.router.clone(), module_proxy: shared.module_proxy.clone() };
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(info);
            req
        })
        .layer_fn(|inner| Track { inner, activity: activity.clone() })
        .layer(shared.edge.clone())
        .layer(shared.auth.clone())
        .service(app);
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(svc))
        .into_owned();
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let give_up = closing.unwrap_or_else(|| Instant::now() + CLOSE_GRACE);
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shared.kill.cancelled() => return,
            () = shared.stop.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                // Bounded by the server's drain, which cancels `kill`.
                closing = Some(Instant::now() + Duration::from_secs(3600));
            }
            () = activity.idle_for(shared.limits.idle_timeout), if closing.is_none() => {
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(give_up), if closing.is_some() => return,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The surfaces: `ModuleProxy` calls (the hot path) straight to their service, everything else
/// (REST, the other gRPC services, grpc-web) through the router.
#[derive(Debug, Clone)]
struct App {
    router: Router,
    module_proxy: ModuleProxyServer,
}

impl tower::Service<http::Request<Incoming>> for App {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        if is_module_proxy_call(&req) {
            let call = tower::Service::call(&mut self.module_proxy, req.map(tonic::body::Body::new));
            Box::pin(async move { call.await.map(|r| r.map(Body::new)) })
        } else {
            Box::pin(self.router.clone().oneshot(req.map(Body::new)))
        }
    }
}

/// A plain gRPC (not grpc-web) request to `ModuleProxy`.
fn is_module_proxy_call<B>(req: &http::Request<B>) -> bool {
    let grpc = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;")
    });
    grpc && req.uri().path().starts_with("/jac.splice.v1.ModuleProxy/")
}

// === impl Activity ===

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    state: watch::Sender<Idle>,
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    in_flight: usize,
    since: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity { state: watch::Sender::new(Idle { in_flight: 0, since: Instant::now() }) }
    }

    /// Counts a request in flight until the returned guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.state.send_modify(|s| s.in_flight += 1);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.state.subscribe();
        loop {
            let now = *changes.borrow_and_update();
            if now.in_flight == 0 {
                tokio::select! {
                    () = tokio::time::sleep_until(now.since + timeout) => return,
                    _ = changes.changed() => {}
                }
            } else if changes.changed().await.is_err() {
                // The sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One request in flight; dropped with its response body.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.since = Instant::now();
            }
        });
    }
}

// === impl Track ===

/// Marks each request in flight from its call until its response body ends or is dropped.
#[derive(Debug, Clone)]
struct Track<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> tower::Service<http::Request<B>> for Track<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = self.activity.begin();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| Body::new(TrackedBody { inner: body, _in_flight: guard })))
        })
    }
}

/// A response body holding its request's [`InFlight`] guard.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let idle = Duration::from_secs(10);
        let request = activity.begin();
        // With a request in flight, no amount of time makes the connection idle.
        let waited = tokio::time::timeout(Duration::from_secs(60), activity.idle_for(idle)).await;
        assert!(waited.is_err(), "idle while a request was in flight");
        drop(request);
        let ended = Instant::now();
        activity.idle_for(idle).await;
        assert!(ended.elapsed() >= idle, "idle before the timeout");
        // A new request restarts the clock once it ends.
        drop(activity.begin());
        let again = Instant::now();
        activity.idle_for(idle).await;
        assert!(again.elapsed() >= idle);
    }
}
