//! HTTP/2 connections to module servers, one per endpoint, dialled by the first call and shared
//! by every call to that endpoint. hyper's `SendRequest` is used directly (no tonic `Channel`,
//! whose buffer worker adds a task hop to every call). A connection that failed or closed is
//! dropped, so the next call dials afresh: a restarted module server (same address, new
//! process) is picked up at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::OnceCell;

use super::ProxyConfig;

/// HTTP/2 frame size towards module servers (they accept 4 MiB; 16 KiB frames would cost a
/// frame header and a wakeup per 16 KiB of a large ndarray).
const MAX_FRAME: u32 = 1 << 20;

pub type Sender = SendRequest<tonic::body::Body>;

#[derive(Debug)]
pub struct Pool {
    config: ProxyConfig,
    conns: Mutex<HashMap<String, Arc<OnceCell<Sender>>>>,
}

impl Pool {
    pub fn new(config: ProxyConfig) -> Self {
        Pool { config, conns: Mutex::default() }
    }

    /// A sender on the connection to `endpoint` ("host:port"), dialling it if needed, or why
    /// it cannot be reached.
    pub async fn get(&self, endpoint: &str) -> Result<Sender, String> {
        let cell = {
            let mut conns = self.conns.lock().expect("pool lock");
            match conns.get(endpoint) {
                Some(cell) if !cell.get().is_some_and(SendRequest::is_closed) => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    conns.insert(endpoint.to_string(), cell.clone());
                    cell
                }
            }
        };
        cell.get_or_try_init(|| self.connect(endpoint)).await.cloned()
    }

    /// Drops the connection to `endpoint` (after a connection error).
    pub fn remove(&self, endpoint: &str) {
        if self.conns.lock().expect("pool lock").remove(endpoint).is_some() {
            tracing::debug!(endpoint, "dropped connection to module server");
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Sender, String> {
        let c = &self.config;
        let stream = match tokio::time::timeout(c.connect_timeout, tokio::net::TcpStream::connect(endpoint)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => return Err("connect timed out".into()),
        };
        // Small gRPC messages would otherwise wait on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Notices a module server that vanished without closing the connection (a pod
            // deleted with its node) instead of waiting for the caller's deadline.
            .keep_alive_interval(c.keepalive)
            .keep_alive_timeout(c.keepalive)
            .initial_stream_window_size(c.stream_window)
            .initial_connection_window_size(c.connection_window)
            .max_frame_size(MAX_FRAME)
            .adaptive_window(c.adaptive_window);
        let (sender, conn) = builder.handshake(TokioIo::new(stream)).await.map_err(|e| super::error_chain(&e))?;
        let endpoint = endpoint.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint, error = %e, "connection to module server ended");
            }
        });
        tracing::debug!("new connection to module server");
        Ok(sender)
    }
}
