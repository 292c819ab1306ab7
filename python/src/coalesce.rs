//! A client transport that sends what HTTP/2 writes in one scheduler turn as one segment.
//!
//! hyper writes a request's HEADERS frame, then (after the connection assigns the stream send
//! capacity, one task hop later) its DATA frame, each flushed on its own: two writes, two
//! segments, and two wake-ups of the server per call. Deferring a flush by one turn of the
//! runtime (no syscall; the connection task is simply polled again) lets both frames go out in a
//! single `write`. Large writes (array payloads) go straight to the socket.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Writes at least this large skip the buffer when it is empty.
const DIRECT: usize = 64 << 10;

/// `inner` with writes buffered until the second consecutive flush.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    deferred: bool,
}

impl<T: Write + Unpin> Coalesce<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Read + Unpin> Read for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > DIRECT {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.is_empty() && data.len() >= DIRECT {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() && !this.deferred {
            // Give the tasks woken meanwhile (a request body) one turn to add their frames.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Dials TCP (no delay) and wraps the stream in `Coalesce`.
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpConnector,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        Self { http }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Coalesce<TokioIo<TcpStream>>, tower::BoxError>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = Coalesce<TokioIo<TcpStream>>;
    type Error = tower::BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower::Service::call(&mut self.http, uri);
        Box::pin(async move { Ok(Coalesce { inner: connecting.await?, buf: Vec::new(), deferred: false }) })
    }
}
