//! HTTP/2 channels to module servers, one per endpoint, created lazily (the first call dials)
//! and shared by every call to that endpoint. A channel that failed is dropped, so the next call
//! dials afresh: a restarted module server (same address, new process) is picked up at once.

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::transport::{Channel, Endpoint};

use super::{Error, ProxyConfig, Result};

/// HTTP/2 frame size towards module servers (they accept 4 MiB; 16 KiB frames would cost a
/// frame header and a wakeup per 16 KiB of a large ndarray).
const MAX_FRAME: u32 = 1 << 20;

#[derive(Debug)]
pub struct Pool {
    config: ProxyConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Pool {
    pub fn new(config: ProxyConfig) -> Self {
        Pool { config, channels: Mutex::default() }
    }

    /// The channel to `endpoint` ("host:port"), creating it on first use.
    pub fn get(&self, endpoint: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().expect("pool lock");
        if let Some(c) = channels.get(endpoint) {
            return Ok(c.clone());
        }
        let channel = self.endpoint(endpoint)?.connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        tracing::debug!(endpoint, "new channel to module server");
        Ok(channel)
    }

    /// Drops the channel to `endpoint` (after a connection error).
    pub fn remove(&self, endpoint: &str) {
        if self.channels.lock().expect("pool lock").remove(endpoint).is_some() {
            tracing::debug!(endpoint, "dropped channel to module server");
        }
    }

    fn endpoint(&self, endpoint: &str) -> Result<Endpoint> {
        let c = &self.config;
        let e = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| Error::BadEndpoint { endpoint: endpoint.to_string(), reason: e.to_string() })?
            .connect_timeout(c.connect_timeout)
            .tcp_nodelay(true)
            // Notices a module server that vanished without closing the connection (a pod
            // deleted with its node) instead of waiting for the caller's deadline.
            .http2_keep_alive_interval(c.keepalive)
            .keep_alive_timeout(c.keepalive)
            .initial_stream_window_size(c.stream_window)
            .initial_connection_window_size(c.connection_window)
            .max_frame_size(MAX_FRAME)
            .http2_adaptive_window(c.adaptive_window);
        Ok(e)
    }
}
