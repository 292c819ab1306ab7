//! The gRPC edge of `jac.splice.v1.ModuleProxy`, written by hand because the generated server
//! would decode every request into `Value`s: this one hands the raw request bytes to
//! [`crate::proxy::ModuleProxy::forward`] and returns the module server's response bytes.
//! Errors of the proxy itself go through the one error table ([`super::status`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Body as HttpBody;
use tonic::server::NamedService;
use tonic::Status;

use super::status::proxy_status;
use crate::proxy::{Method, ModuleProxy};

/// Serves `ModuleProxy`; cheap to clone (it shares one [`ModuleProxy`]).
#[derive(Debug, Clone)]
pub struct ModuleProxyServer {
    proxy: Arc<ModuleProxy>,
}

impl ModuleProxyServer {
    pub fn new(proxy: Arc<ModuleProxy>) -> Self {
        ModuleProxyServer { proxy }
    }
}

impl NamedService for ModuleProxyServer {
    const NAME: &'static str = "jac.splice.v1.ModuleProxy";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower::Service<http::Request<B>> for ModuleProxyServer
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().strip_prefix("/jac.splice.v1.ModuleProxy/").and_then(Method::from_name);
        let Some(method) = method else {
            let path = req.uri().path().to_string();
            return Box::pin(async move { Ok(Status::unimplemented(format!("unknown method {path}")).into_http()) });
        };
        let proxy = self.proxy.clone();
        let req = req.map(Body::new);
        Box::pin(async move { Ok(proxy.forward_http(method, req, proxy_status).await) })
    }
}
