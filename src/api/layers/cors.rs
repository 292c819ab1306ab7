//! [`CorsLayer`] + [`Cors`]: what browsers may do across origins. Off by default: no origin is
//! allowed until the operator lists it (`--cors-origin https://app.example`, repeatable).
//!
//! - A request without `Origin` (CLIs, SDKs, servers) passes untouched.
//! - A same-origin request (its `Origin` names the host it was sent to, as the server's own
//!   `/docs` page sends) passes.
//! - A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is
//!   answered here (204) with the methods and headers REST and grpc-web use; from any other
//!   origin it is refused (403 `ORIGIN_NOT_ALLOWED`).
//! - Any other request from an origin that is not allowed is refused the same way, before it
//!   reaches authentication or a route, so a page elsewhere cannot make the server act even
//!   with requests a browser sends without a preflight. Allowed ones get
//!   `Access-Control-Allow-Origin` and the gRPC headers grpc-web clients read.
//!
//! No credentials mode (cookies) is offered: callers authenticate with bearer tokens.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{BoxError, BoxFuture};
use crate::api::status::RequestError;

const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, x-grpc-web, x-user-agent, grpc-timeout, grpc-accept-encoding";
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, content-type";
const MAX_AGE: &str = "600";

/// An `--cors-origin` value that is not `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an origin: write scheme://host[:port] (http or https, no path), e.g. https://app.example")]
pub struct InvalidOrigin(String);

/// Parses an allowed origin into the form browsers send (`https://app.example:8443`, lowercase,
/// no trailing slash, default ports dropped).
pub fn parse_origin(text: &str) -> Result<String, InvalidOrigin> {
    let bad = || InvalidOrigin(text.to_string());
    let lower = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return Err(bad()),
    };
    let authority: http::uri::Authority = rest.parse().map_err(|_| bad())?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || authority.host().is_empty() {
        return Err(bad());
    }
    let rest = rest.strip_suffix(default_port).unwrap_or(rest);
    Ok(format!("{scheme}://{rest}"))
}

// === impl CorsLayer ===

#[derive(Debug, Clone)]
pub struct CorsLayer {
    allowed: std::sync::Arc<[String]>,
}

impl CorsLayer {
    /// `origins` as [`parse_origin`] returns them.
    pub fn new(origins: &[String]) -> Self {
        CorsLayer { allowed: origins.iter().cloned().collect() }
    }
}

impl<S> tower::Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner, allowed: self.allowed.clone() }
    }
}

// === impl Cors ===

#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    allowed: std::sync::Arc<[String]>,
}

/// What to do with a request, by its `Origin`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// No `Origin`, or same-origin: nothing to add.
    Pass,
    /// An allowed cross-origin preflight: answer it.
    Preflight(HeaderValue),
    /// An allowed cross-origin request: add the CORS response headers.
    Allow(HeaderValue),
    Refuse(String),
}

impl<S> Cors<S> {
    fn verdict<B>(&self, req: &Request<B>) -> Verdict {
        let Some(origin) = req.headers().get(header::ORIGIN) else { return Verdict::Pass };
        let text = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        let listed = self.allowed.contains(&text);
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (listed, preflight) {
            (true, true) => Verdict::Preflight(origin.clone()),
            (true, false) => Verdict::Allow(origin.clone()),
            (false, false) if same_origin(&text, req) => Verdict::Pass,
            _ => Verdict::Refuse(RequestError::quoted(origin.as_bytes())),
        }
    }
}

/// `Origin` names the authority the request was sent to (scheme aside: the layer does not know
/// whether the connection is TLS, and the authority is what a page can choose).
fn same_origin<B>(origin: &str, req: &Request<B>) -> bool {
    let Some((scheme, host)) = origin.split_once("://") else { return false };
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase));
    let Some(target) = target else { return false };
    let strip = |a: &str| -> String {
        let default = if scheme == "https" { ":443" } else { ":80" };
        a.strip_suffix(default).unwrap_or(a).to_string()
    };
    strip(host) == strip(&target)
}

fn add_allow_headers(headers: &mut http::HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn preflight_response(origin: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    add_allow_headers(h, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    response
}

impl<S, B, ResBody> tower::Service<Request<B>> for Cors<S>
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
        let allow = match self.verdict(&req) {
            Verdict::Pass => None,
            Verdict::Preflight(origin) => {
                let response = preflight_response(origin);
                return Box::pin(async move { Ok(response) });
            }
            Verdict::Allow(origin) => Some(origin),
            Verdict::Refuse(origin) => {
                tracing::debug!(%origin, path = req.uri().path(), "cross-origin request refused");
                let refusal = RequestError::OriginNotAllowed { origin };
                let response = refusal.respond(req.headers().get(header::CONTENT_TYPE));
                return Box::pin(async move { Ok(response) });
            }
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut response = call.await?.map(Body::new);
            if let Some(origin) = allow {
                let h = response.headers_mut();
                add_allow_headers(h, origin);
                h.insert(
                    HeaderName::from_static("access-control-expose-headers"),
                    HeaderValue::from_static(EXPOSE_HEADERS),
                );
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_to_what_browsers_send() {
        assert_eq!(parse_origin("https://App.Example/").unwrap(), "https://app.example");
        assert_eq!(parse_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        assert_eq!(parse_origin("https://a.example:443").unwrap(), "https://a.example");
        assert_eq!(parse_origin("http://[::1]:80").unwrap(), "http://[::1]");
        for bad in ["*", "null", "app.example", "ftp://a", "https://", "https://a/path", "https://u@a", "https://a?q"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    fn cors(allowed: &[&str]) -> Cors<()> {
        Cors { inner: (), allowed: allowed.iter().map(|s| s.to_string()).collect() }
    }

    fn req(method: Method, host: &str, origin: Option<&str>, preflight: bool) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/deployment").header(header::HOST, host);
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if preflight {
            b = b.header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn verdicts_by_origin() {
        let c = cors(&["https://app.example"]);
        let host = "orc.example:8000";
        assert_eq!(c.verdict(&req(Method::POST, host, None, false)), Verdict::Pass);
        assert_eq!(c.verdict(&req(Method::POST, host, Some("http://orc.example:8000"), false)), Verdict::Pass);
        let allowed = HeaderValue::from_static("https://app.example");
        assert_eq!(
            c.verdict(&req(Method::OPTIONS, host, Some("https://app.example"), true)),
            Verdict::Preflight(allowed.clone())
        );
        assert_eq!(c.verdict(&req(Method::POST, host, Some("https://app.example"), false)), Verdict::Allow(allowed));
        for (method, origin, preflight) in [
            (Method::OPTIONS, "https://evil.example", true),
            (Method::POST, "https://evil.example", false),
            (Method::GET, "null", false),
            (Method::OPTIONS, "http://orc.example:8000", true),
        ] {
            assert!(matches!(c.verdict(&req(method, host, Some(origin), preflight)), Verdict::Refuse(_)), "{origin}");
        }
        assert!(matches!(
            cors(&[]).verdict(&req(Method::OPTIONS, host, Some("https://app.example"), true)),
            Verdict::Refuse(_)
        ));
    }
}
