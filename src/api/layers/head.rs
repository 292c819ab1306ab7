//! [`HeadCheckLayer`] + [`HeadCheck`]: refuses a request on its head alone, before anything else
//! reads it.
//!
//! - A URI (path and query) longer than the limit → 414 `URI_TOO_LONG` with a JSON body (hyper
//!   answers far longer ones itself, without a body, before any layer runs).
//! - On a loopback listener (from the [`ConnectionInfo`] the accept loop inserts), a `Host` or
//!   `:authority` that is not a loopback name → 421 `HOST_NOT_ALLOWED`. A browser page on
//!   `http://evil.example:8000` whose name an attacker re-points at 127.0.0.1 (DNS rebinding) is
//!   same-origin with that name, so CORS never applies; the name it sends does. Loopback names:
//!   `localhost` and `*.localhost`, IPv4 literals in 127.0.0.0/8, `[::1]`, with any port. A
//!   request without either header (not a browser) passes.

use std::net::{IpAddr, Ipv6Addr};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};

use super::{BoxError, BoxFuture};
use crate::api::status::RequestError;
use crate::auth::ConnectionInfo;

// === impl HeadCheckLayer ===

#[derive(Debug, Clone, Copy)]
pub struct HeadCheckLayer {
    max_uri_bytes: usize,
}

impl HeadCheckLayer {
    pub fn new(max_uri_bytes: usize) -> Self {
        HeadCheckLayer { max_uri_bytes }
    }
}

impl<S> tower::Layer<S> for HeadCheckLayer {
    type Service = HeadCheck<S>;

    fn layer(&self, inner: S) -> HeadCheck<S> {
        HeadCheck { inner, max_uri_bytes: self.max_uri_bytes }
    }
}

// === impl HeadCheck ===

#[derive(Debug, Clone)]
pub struct HeadCheck<S> {
    inner: S,
    max_uri_bytes: usize,
}

impl<S> HeadCheck<S> {
    fn check<B>(&self, req: &Request<B>) -> Result<(), RequestError> {
        let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if len > self.max_uri_bytes {
            return Err(RequestError::UriTooLong { len, limit: self.max_uri_bytes });
        }
        let listener_loopback = req.extensions().get::<ConnectionInfo>().is_some_and(|c| c.local.ip().is_loopback());
        if listener_loopback {
            let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
            let host = req.headers().get(http::header::HOST).map(|h| h.as_bytes());
            for name in [authority, host].into_iter().flatten() {
                if !is_loopback_name(name) {
                    return Err(RequestError::ForeignHost { host: RequestError::quoted(name) });
                }
            }
        }
        Ok(())
    }
}

impl<S, B, ResBody> tower::Service<Request<B>> for HeadCheck<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Err(refusal) = self.check(&req) {
            tracing::debug!(error = %refusal, "request refused on its head");
            let response = refusal.respond(req.headers().get(http::header::CONTENT_TYPE));
            return Box::pin(async move { Ok(response) });
        }
        let call = self.inner.call(req);
        Box::pin(async move { call.await.map(|r| r.map(Body::new)) })
    }
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or `[::1]`, with an optional port.
pub fn is_loopback_name(authority: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(authority) else { return false };
    let host = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || is_port(port) => {
                return ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
            }
            _ => return false,
        },
        None => match text.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => text,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() && ip.is_ipv4())
}

fn is_port(s: &str) -> bool {
    let digits = s.strip_prefix(':').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_any_port_and_nothing_else() {
        for ok in ["localhost", "localhost:8000", "LOCALHOST", "app.localhost:1", "127.0.0.1", "127.0.0.1:8000"] {
            assert!(is_loopback_name(ok.as_bytes()), "{ok}");
        }
        for ok in ["127.1.2.3:9", "[::1]", "[::1]:8000", "localhost."] {
            assert!(is_loopback_name(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]",
            "[::1]x",
            "::1",
            "localhost:abc",
            "",
            "0.0.0.0:8000",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!is_loopback_name(bad.as_bytes()), "{bad}");
        }
    }
}
