//! Ready module-server endpoints as a stream ([`super::Backend::watch_endpoints`]): the proxy
//! follows a deployment's replicas as they come and go instead of asking again and again.

use futures::stream::BoxStream;

/// One ready module server of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub address: String,
    /// Which process (local: pid and start time) or pod (kube: its uid) serves there, so a
    /// replica restarted on the same address is known to be another one (its sessions are
    /// gone). Empty when the backend cannot tell.
    pub instance: String,
}

impl Endpoint {
    pub fn new(address: impl Into<String>, instance: impl Into<String>) -> Self {
        Endpoint { address: address.into(), instance: instance.into() }
    }
}

/// Every item is the whole ready set after a change (the first one: the set now). An error
/// item is followed by the next set when the backend recovers; after
/// [`super::Error::NotFound`] (the deployment is gone) the stream ends.
pub type EndpointStream = BoxStream<'static, super::Result<Vec<Endpoint>>>;
