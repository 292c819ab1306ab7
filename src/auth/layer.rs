//! The authentication layer in front of every surface (REST, gRPC, grpc-web, ModuleProxy):
//! [`AuthLayer`] + [`Auth`]. It reads `authorization: Bearer <token>` (the same header carries
//! gRPC metadata), asks the [`Authenticator`], inserts the [`Identity`] into the request
//! extensions, removes the `authorization` header (so no caller's token travels further, e.g.
//! to a module server), and answers refused requests itself:
//!
//! - gRPC and grpc-web (`content-type: application/grpc*`): a trailers-only response with
//!   `grpc-status` 16 UNAUTHENTICATED (14 UNAVAILABLE when the token could not be checked) and an
//!   `ErrorInfo` reason, as `api/status.rs` does for the service's errors;
//! - everything else: HTTP 401 with `{"detail", "field": null, "reason": "UNAUTHENTICATED"}` and
//!   `WWW-Authenticate: Bearer` (503 and `AUTHENTICATION_UNAVAILABLE` when it could not be checked).
//!
//! Open without a token ([`access`]): `/healthz`, `/readyz`, gRPC health, `/openapi.json`,
//! `/docs` and `/redoc` (and paths below them); `/metrics` from a loopback peer, elsewhere per
//! [`AuthConfig::metrics_auth`]; reflection per [`AuthConfig::reflection`] (default: open when
//! the listener is loopback). Peer and listener addresses come from the [`ConnectionInfo`]
//! extension the accept loop inserts; without it the request counts as remote.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::authenticate::Authenticator;
use crate::auth::Identity;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request came in; the accept loop inserts it into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address (`TcpStream::local_addr`).
    pub local: SocketAddr,
}

pub use crate::config::ReflectionAccess;

/// Settings of [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Whether `/metrics` needs a token from peers that are not loopback (loopback peers never
    /// need one). Default: `true`.
    pub metrics_auth: bool,
    /// Reflection access; `None` (default): open when the listener is loopback, else `Auth`.
    pub reflection: Option<ReflectionAccess>,
    /// Appended to "authentication required" messages, e.g. where the admin token is.
    pub hint: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { metrics_auth: true, reflection: None, hint: None }
    }
}

impl AuthConfig {
    #[must_use]
    pub fn metrics_auth(mut self, required: bool) -> Self {
        self.metrics_auth = required;
        self
    }

    #[must_use]
    pub fn reflection(mut self, access: ReflectionAccess) -> Self {
        self.reflection = Some(access);
        self
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Whether a request needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Authenticate,
}

/// The access rule for `path` (exact paths, no normalisation: the router matches the same way).
pub fn access(path: &str, connection: Option<&ConnectionInfo>, config: &AuthConfig) -> Access {
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    let open = match path {
        "/healthz" | "/readyz" | "/openapi.json" => true,
        _ if path.starts_with("/grpc.health.v1.Health/") => true,
        _ if under("/docs") || under("/redoc") => true,
        "/metrics" => !config.metrics_auth || connection.is_some_and(|c| is_loopback(c.peer.ip())),
        _ if path.starts_with("/grpc.reflection.") => {
            let listener_loopback = connection.is_some_and(|c| is_loopback(c.local.ip()));
            let access = config.reflection.unwrap_or(if listener_loopback {
                ReflectionAccess::Open
            } else {
                ReflectionAccess::Auth
            });
            access == ReflectionAccess::Open
        }
        _ => false,
    };
    if open {
        Access::Open
    } else {
        Access::Authenticate
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

// === impl AuthLayer ===

/// Builds [`Auth`] services sharing one authenticator and config.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    authenticator: Authenticator,
    config: AuthConfig,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator, config: AuthConfig) -> Self {
        AuthLayer { shared: Arc::new(Shared { authenticator, config }) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, shared: self.shared.clone() }
    }
}

// === impl Auth ===

/// Authenticates each request before `S` sees it; see the module docs.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Auth<S> {
    pub fn new(inner: S, authenticator: Authenticator, config: AuthConfig) -> Self {
        Auth { inner, shared: Arc::new(Shared { authenticator, config }) }
    }

    pub fn layer(authenticator: Authenticator, config: AuthConfig) -> AuthLayer {
        AuthLayer::new(authenticator, config)
    }
}

impl<S, B, ResBody> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready yet; the instance that is goes into the future (tower's recipe).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            if access(req.uri().path(), req.extensions().get(), &shared.config) == Access::Authenticate {
                match shared.authenticate(&mut req).await {
                    Ok(identity) => {
                        req.extensions_mut().insert(identity);
                    }
                    Err(refusal) => {
                        crate::metrics::global().auth_denial(refusal.denial());
                        return Ok(refusal.response(&req, &shared.config));
                    }
                }
            }
            inner.call(req).await.map(|r| r.map(Body::new))
        })
    }
}

impl Shared {
    /// Takes the `authorization` header off the request (so it goes no further) and asks the
    /// authenticator about its token. Nothing borrowed from `req` is held across the await.
    async fn authenticate<B>(&self, req: &mut Request<B>) -> Result<Identity, Refusal> {
        let header = take_authorization(req)?;
        let token = bearer_token(&header)?;
        match self.authenticator.authenticate(token).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => {
                tracing::debug!(path = req.uri().path(), peer = ?peer(req), "unknown bearer token");
                Err(Refusal::Invalid)
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), path = req.uri().path(), "cannot verify a bearer token");
                Err(Refusal::Unavailable)
            }
        }
    }
}

fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions().get::<ConnectionInfo>().map(|c| c.peer)
}

/// Removes the `authorization` header; exactly one must be there.
fn take_authorization<B>(req: &mut Request<B>) -> Result<HeaderValue, Refusal> {
    let count = req.headers().get_all(AUTHORIZATION).iter().count();
    let value = req.headers_mut().remove(AUTHORIZATION).ok_or(Refusal::Missing)?;
    if count > 1 {
        return Err(Refusal::Malformed);
    }
    Ok(value)
}

/// The token of `Bearer <token>` (scheme case-insensitive, one token without spaces).
fn bearer_token(value: &HeaderValue) -> Result<&str, Refusal> {
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Invalid,
    /// The token could not be checked (TokenReview failed).
    Unavailable,
}

impl Refusal {
    fn denial(self) -> crate::metrics::Denial {
        use crate::metrics::Denial;
        match self {
            Refusal::Missing => Denial::MissingToken,
            Refusal::Malformed => Denial::Malformed,
            Refusal::Invalid => Denial::InvalidToken,
            Refusal::Unavailable => Denial::Unverifiable,
        }
    }

    fn message(self, config: &AuthConfig) -> String {
        let hint = config.hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default();
        match self {
            Refusal::Missing => {
                format!("authentication required: send the header `authorization: Bearer <token>`{hint}")
            }
            Refusal::Malformed => "malformed authorization header: expected `authorization: Bearer <token>`".into(),
            Refusal::Invalid => format!("the bearer token is not valid (unknown, expired or revoked){hint}"),
            Refusal::Unavailable => {
                "cannot verify the bearer token right now (the Kubernetes API server did not answer); try again".into()
            }
        }
    }

    fn response<B>(self, req: &Request<B>, config: &AuthConfig) -> Response<Body> {
        let (code, http, reason) = match self {
            Refusal::Unavailable => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "AUTHENTICATION_UNAVAILABLE"),
            _ => (Code::Unauthenticated, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        };
        let message = self.message(config);
        let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if content_type.starts_with("application/grpc") {
            let mut details = ErrorDetails::new();
            details.set_error_info(reason, "jac-orc", std::collections::HashMap::new());
            let mut response = tonic::Status::with_error_details(code, message, details).into_http::<Body>();
            if content_type.starts_with("application/grpc-web") {
                if let Ok(v) = HeaderValue::from_str(content_type) {
                    response.headers_mut().insert(CONTENT_TYPE, v);
                }
            }
            return response;
        }
        let body = serde_json::json!({"detail": message, "field": null, "reason": reason});
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = http;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let challenge = match self {
            Refusal::Missing => Some(r#"Bearer realm="jac-orc""#),
            Refusal::Malformed | Refusal::Invalid => Some(r#"Bearer realm="jac-orc", error="invalid_token""#),
            Refusal::Unavailable => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// `{:#}`-style rendering of an error and its sources, for one log field.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::auth::authenticate::{TokenReviewConfig, TokenReviewer};
    use crate::auth::token_file::TokenFile;

    const STEP: Duration = Duration::from_secs(5);

    /// The inner service: answers with the identity it saw and whether `authorization` reached it.
    async fn echo<B>(req: Request<B>) -> Result<Response<Body>, Infallible> {
        let user = Identity::of(&req).map_or_else(|| "-".to_string(), |i| format!("{}:{}", i.user, i.groups.join("+")));
        let mut response = Response::new(Body::from(user));
        let saw = if req.headers().contains_key(AUTHORIZATION) { "yes" } else { "no" };
        response.headers_mut().insert("x-saw-authorization", HeaderValue::from_static(saw));
        Ok(response)
    }

    fn tokens() -> Authenticator {
        let file = TokenFile::parse("admin-t,admin,jac-orc:admins\nviewer-t,vera,jac-orc:viewers\n", "t").unwrap();
        Authenticator::new().with_tokens(file)
    }

    fn remote() -> ConnectionInfo {
        ConnectionInfo { peer: "10.1.2.3:5555".parse().unwrap(), local: "0.0.0.0:8000".parse().unwrap() }
    }

    fn local() -> ConnectionInfo {
        ConnectionInfo { peer: "127.0.0.1:5555".parse().unwrap(), local: "127.0.0.1:8000".parse().unwrap() }
    }

    fn request(path: &str, content_type: &str, authorization: &[&str], conn: Option<ConnectionInfo>) -> Request<Body> {
        let mut builder = Request::builder().method("POST").uri(path).header(CONTENT_TYPE, content_type);
        for a in authorization {
            builder = builder.header(AUTHORIZATION, *a);
        }
        let mut req = builder.body(Body::empty()).unwrap();
        if let Some(c) = conn {
            req.extensions_mut().insert(c);
        }
        req
    }

    async fn send_with(auth: Authenticator, config: AuthConfig, req: Request<Body>) -> (Response<()>, Bytes) {
        let svc = ServiceBuilder::new().layer(AuthLayer::new(auth, config)).service_fn(echo);
        let response = tokio::time::timeout(STEP, svc.oneshot(req)).await.expect("timed out").unwrap();
        let (parts, body) = response.into_parts();
        let bytes = tokio::time::timeout(STEP, body.collect()).await.expect("timed out").unwrap().to_bytes();
        (Response::from_parts(parts, ()), bytes)
    }

    async fn send(req: Request<Body>) -> (Response<()>, Bytes) {
        send_with(tokens(), AuthConfig::default(), req).await
    }

    fn assert_401_json(response: &Response<()>, body: &[u8], detail_has: &str) {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert!(response.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"), "{response:?}");
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!((&body["field"], &body["reason"]), (&Value::Null, &Value::from("UNAUTHENTICATED")));
        assert!(body["detail"].as_str().unwrap().contains(detail_has), "{body}");
    }

    fn assert_grpc_status(response: &Response<()>, body: &[u8], code: Code, content_type: &str) {
        assert_eq!(response.status(), StatusCode::OK, "gRPC errors travel as grpc-status");
        assert_eq!(response.headers()[CONTENT_TYPE], content_type);
        let status = tonic::Status::from_header_map(response.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), code, "{status:?}");
        let reason = status.get_error_details().error_info().map(|i| i.reason.clone());
        let expected = if code == Code::Unavailable { "AUTHENTICATION_UNAVAILABLE" } else { "UNAUTHENTICATED" };
        assert_eq!(reason.as_deref(), Some(expected));
        assert!(body.is_empty(), "trailers-only: no body");
    }

    #[tokio::test]
    async fn rest_without_a_token_gets_401_json_naming_how_to_authenticate() {
        let config = AuthConfig::default().hint("the admin token is in /data/token");
        let (response, body) = send_with(tokens(), config, request("/deployment", "application/json", &[], None)).await;
        assert_401_json(&response, &body, "authorization: Bearer <token>");
        assert!(String::from_utf8_lossy(&body).contains("/data/token"), "the hint is included");
    }

    #[tokio::test]
    async fn malformed_authorization_headers_get_401() {
        for bad in [
            &["Basic YWRtaW46eA=="][..],
            &["Bearer"],
            &["Bearer   "],
            &["admin-t"],
            &["Bearer a b"],
            &["Bearer admin-t", "Bearer admin-t"],
        ] {
            let (response, body) = send(request("/deployment", "application/json", bad, None)).await;
            assert_401_json(&response, &body, "malformed");
        }
    }

    #[tokio::test]
    async fn a_wrong_token_gets_401_with_invalid_token() {
        let (response, body) = send(request("/deployment", "application/json", &["Bearer admin-tX"], None)).await;
        assert_401_json(&response, &body, "not valid");
        assert!(response.headers()[WWW_AUTHENTICATE].to_str().unwrap().contains("invalid_token"));
        assert!(!String::from_utf8_lossy(&body).contains("admin-tX"), "the token is not echoed");
    }

    #[tokio::test]
    async fn grpc_without_or_with_a_wrong_token_gets_unauthenticated() {
        let path = "/jac.splice.v1.Orchestrator/Deploy";
        let (response, body) = send(request(path, "application/grpc", &[], None)).await;
        assert_grpc_status(&response, &body, Code::Unauthenticated, "application/grpc");
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert!(status.message().contains("authorization: Bearer"), "{status:?}");
        let (response, body) = send(request(path, "application/grpc+proto", &["Bearer nope"], None)).await;
        assert_grpc_status(&response, &body, Code::Unauthenticated, "application/grpc");
        let proxy = "/jac.splice.v1.ModuleProxy/Call";
        let (response, body) = send(request(proxy, "application/grpc", &[], None)).await;
        assert_grpc_status(&response, &body, Code::Unauthenticated, "application/grpc");
    }

    #[tokio::test]
    async fn grpc_web_refusals_keep_the_grpc_web_content_type() {
        for ct in ["application/grpc-web+proto", "application/grpc-web-text"] {
            let (response, body) = send(request("/jac.splice.v1.Orchestrator/List", ct, &[], None)).await;
            assert_grpc_status(&response, &body, Code::Unauthenticated, ct);
        }
    }

    #[tokio::test]
    async fn the_right_token_lets_the_identity_through_without_the_header() {
        for header in ["Bearer admin-t", "bearer admin-t", "BEARER  admin-t "] {
            let (response, body) = send(request("/deployment", "application/json", &[header], None)).await;
            assert_eq!(response.status(), StatusCode::OK, "{header}");
            assert_eq!(&body[..], b"admin:jac-orc:admins");
            assert_eq!(response.headers()["x-saw-authorization"], "no", "the caller's token goes no further");
        }
        let (_, body) =
            send(request("/jac.splice.v1.ModuleProxy/Call", "application/grpc", &["Bearer viewer-t"], None)).await;
        assert_eq!(&body[..], b"vera:jac-orc:viewers");
    }

    #[tokio::test]
    async fn open_paths_pass_without_a_token_and_without_an_identity() {
        let open = [
            ("/healthz", "application/json"),
            ("/readyz", "application/json"),
            ("/openapi.json", "application/json"),
            ("/docs", "text/html"),
            ("/docs/oauth2-redirect", "text/html"),
            ("/redoc", "text/html"),
            ("/grpc.health.v1.Health/Check", "application/grpc"),
            ("/grpc.health.v1.Health/Watch", "application/grpc"),
        ];
        for (path, ct) in open {
            let (response, body) = send(request(path, ct, &[], Some(remote()))).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert!(response.headers().get("grpc-status").is_none(), "{path}");
            assert_eq!(&body[..], b"-", "{path}");
        }
        for closed in ["/docsx", "/healthz/x", "/healthzz", "/grpc.health.v1.Healthy/Check", "/", "/templates"] {
            let (response, _) = send(request(closed, "application/json", &[], Some(local()))).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{closed}");
        }
    }

    #[test]
    fn metrics_are_open_on_loopback_and_elsewhere_per_the_setting() {
        let required = AuthConfig::default();
        let open = AuthConfig::default().metrics_auth(false);
        assert_eq!(access("/metrics", Some(&local()), &required), Access::Open);
        assert_eq!(access("/metrics", Some(&remote()), &required), Access::Authenticate);
        assert_eq!(access("/metrics", None, &required), Access::Authenticate, "unknown peer counts as remote");
        assert_eq!(access("/metrics", Some(&remote()), &open), Access::Open);
        let mapped = ConnectionInfo { peer: "[::ffff:127.0.0.1]:1".parse().unwrap(), local: remote().local };
        assert_eq!(access("/metrics", Some(&mapped), &required), Access::Open);
    }

    #[test]
    fn reflection_is_open_on_a_loopback_listener_by_default() {
        let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        let default = AuthConfig::default();
        assert_eq!(access(path, Some(&local()), &default), Access::Open);
        assert_eq!(access(alpha, Some(&local()), &default), Access::Open);
        assert_eq!(access(path, Some(&remote()), &default), Access::Authenticate);
        assert_eq!(access(path, None, &default), Access::Authenticate);
        let auth = AuthConfig::default().reflection(ReflectionAccess::Auth);
        assert_eq!(access(path, Some(&local()), &auth), Access::Authenticate);
        let open = AuthConfig::default().reflection(ReflectionAccess::Open);
        assert_eq!(access(alpha, Some(&remote()), &open), Access::Open);
    }

    #[tokio::test]
    async fn reflection_through_the_layer_follows_the_setting() {
        let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let (response, body) = send(request(path, "application/grpc", &[], Some(remote()))).await;
        assert_grpc_status(&response, &body, Code::Unauthenticated, "application/grpc");
        let (response, body) = send(request(path, "application/grpc", &[], Some(local()))).await;
        assert_eq!((response.status(), &body[..]), (StatusCode::OK, &b"-"[..]));
    }

    #[tokio::test]
    async fn an_unverifiable_token_is_unavailable_not_unauthenticated() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let reviewer = TokenReviewer::new(kube::Client::new(svc, "default"), TokenReviewConfig::default());
        let auth = tokens().with_token_review(reviewer);
        let api = tokio::spawn(async move {
            for _ in 0..2 {
                let (_, send) = handle.next_request().await.expect("a TokenReview");
                send.send_error(std::io::Error::other("connection refused"));
            }
        });
        let (response, body) = send_with(
            auth.clone(),
            AuthConfig::default(),
            request("/deployment", "application/json", &["Bearer sa"], None),
        )
        .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "AUTHENTICATION_UNAVAILABLE");
        let grpc = request("/jac.splice.v1.Orchestrator/List", "application/grpc", &["Bearer sa"], None);
        let (response, body) = send_with(auth, AuthConfig::default(), grpc).await;
        assert_grpc_status(&response, &body, Code::Unavailable, "application/grpc");
        tokio::time::timeout(STEP, api).await.expect("mock hung").unwrap();
    }

    /// The accept-loop shape of `crate::server` (its connection task), over a real loopback connection:
    /// `ConnectionInfo` inserted per request, then the layer, then the app, under hyper.
    #[tokio::test]
    async fn the_layer_serves_real_connections_with_their_connection_info() {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let layer = AuthLayer::new(tokens(), AuthConfig::default());
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let (stream, peer) = listener.accept().await.unwrap();
                let conn = ConnectionInfo { peer, local: stream.local_addr().unwrap() };
                let svc = ServiceBuilder::new()
                    .map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(conn);
                        req
                    })
                    .layer(layer.clone())
                    .service_fn(echo);
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.serve_connection(TokioIo::new(stream), svc).await.unwrap();
            }
        });
        let get = |path: &'static str, auth: &'static str| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        };
        let denied = tokio::time::timeout(STEP, get("/deployment", "")).await.unwrap();
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        let allowed =
            tokio::time::timeout(STEP, get("/deployment", "authorization: Bearer viewer-t\r\n")).await.unwrap();
        assert!(allowed.starts_with("HTTP/1.1 200") && allowed.ends_with("vera:jac-orc:viewers"), "{allowed}");
        let metrics = tokio::time::timeout(STEP, get("/metrics", "")).await.unwrap();
        assert!(metrics.starts_with("HTTP/1.1 200"), "a loopback peer reads /metrics: {metrics}");
        tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn auth_new_wraps_a_service_directly() {
        let svc = Auth::new(tower::service_fn(echo), tokens(), AuthConfig::default());
        let req = request("/deployment", "application/json", &["Bearer viewer-t"], None);
        let response = tokio::time::timeout(STEP, svc.oneshot(req)).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _layer: AuthLayer = Auth::<()>::layer(tokens(), AuthConfig::default());
    }
}
