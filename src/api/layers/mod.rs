//! Tower layers of the HTTP edge that run before authentication and before any route: the
//! checks of a request's head ([`head`]: URI length, and `Host` on a loopback listener against
//! DNS rebinding) and the browser rules ([`cors`]: cross-origin requests only from the
//! `--cors-origin` allowlist, preflights answered for those origins only). Preflights carry no
//! credentials, so these sit outside the authentication layer:
//!
//! ```text
//! EdgeLayer (HeadCheck → Cors) → AuthLayer → router / ModuleProxy
//! ```
//!
//! Refusals are [`RequestError`]s, answered through the one table (`api/status.rs`): a JSON
//! body, or a trailers-only gRPC status for gRPC and grpc-web requests.
//!
//! [`RequestError`]: super::status::RequestError

pub mod cors;
pub mod head;

pub use cors::{parse_origin, Cors, CorsLayer, InvalidOrigin};
pub use head::{HeadCheck, HeadCheckLayer};

use crate::config::EdgeConfig;

/// Both edge layers in their order: [`HeadCheckLayer`] outside, then [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    head: HeadCheckLayer,
    cors: CorsLayer,
}

impl EdgeLayer {
    pub fn new(config: &EdgeConfig) -> Self {
        EdgeLayer { head: HeadCheckLayer::new(config.max_uri_bytes), cors: CorsLayer::new(&config.cors_origins) }
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = HeadCheck<Cors<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.head.layer(self.cors.layer(inner))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;
