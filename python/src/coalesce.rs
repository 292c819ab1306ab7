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

impl<T> Coalesce<T> {
    fn new(inner: T) -> Self {
        Self { inner, buf: Vec::new(), deferred: false }
    }
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
        Box::pin(async move { Ok(Coalesce::new(connecting.await?)) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// What the fake socket does with its next `poll_write`.
    #[derive(Debug)]
    enum Step {
        /// Accept at most this many bytes.
        Take(usize),
        Pending,
        Fail(io::ErrorKind),
    }

    /// A socket that records each write (one segment each) and follows a script; with the script
    /// used up it accepts everything.
    #[derive(Debug, Default)]
    struct Socket {
        script: VecDeque<Step>,
        segments: Vec<Vec<u8>>,
        flushes: usize,
        shutdowns: usize,
    }

    impl Socket {
        fn scripted(steps: impl IntoIterator<Item = Step>) -> Self {
            Self { script: steps.into_iter().collect(), ..Self::default() }
        }
    }

    impl Write for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            let n = match self.script.pop_front() {
                None => data.len(),
                Some(Step::Take(n)) => n.min(data.len()),
                Some(Step::Pending) => return Poll::Pending,
                Some(Step::Fail(kind)) => return Poll::Ready(Err(kind.into())),
            };
            if n > 0 {
                self.segments.push(data[..n].to_vec());
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shutdowns += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Debug, Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A stream over `socket`, and a context whose wake-ups are counted.
    struct Harness {
        io: Coalesce<Socket>,
        wakes: Arc<Wakes>,
        waker: Waker,
    }

    impl Harness {
        fn new(socket: Socket) -> Self {
            let wakes = Arc::new(Wakes::default());
            Self { io: Coalesce::new(socket), waker: Waker::from(wakes.clone()), wakes }
        }

        fn write(&mut self, data: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(&mut Context::from_waker(&self.waker), data)
        }

        fn flush(&mut self) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(&mut Context::from_waker(&self.waker))
        }

        fn shutdown(&mut self) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(&mut Context::from_waker(&self.waker))
        }

        fn segments(&self) -> Vec<Vec<u8>> {
            self.io.inner.segments.clone()
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    fn ok<T: std::fmt::Debug>(poll: Poll<io::Result<T>>) -> T {
        match poll {
            Poll::Ready(Ok(value)) => value,
            other => panic!("expected Ready(Ok), got {other:?}"),
        }
    }

    #[test]
    fn frames_written_between_two_flushes_leave_as_one_segment() {
        let mut h = Harness::new(Socket::default());
        assert_eq!(ok(h.write(b"HEADERS")), 7);
        // The first flush defers by one turn and wakes the task so it comes back.
        assert!(h.flush().is_pending());
        assert_eq!(h.wakes(), 1);
        assert!(h.segments().is_empty());
        assert_eq!(ok(h.write(b"DATA")), 4);
        ok(h.flush());
        assert_eq!(h.segments(), vec![b"HEADERSDATA".to_vec()]);
        assert_eq!(h.io.inner.flushes, 1);
        // The next round defers again.
        ok(h.write(b"x"));
        assert!(h.flush().is_pending());
    }

    #[test]
    fn a_flush_with_nothing_buffered_goes_straight_to_the_socket() {
        let mut h = Harness::new(Socket::default());
        ok(h.flush());
        assert_eq!((h.wakes(), h.io.inner.flushes), (0, 1));
    }

    #[test]
    fn a_large_write_on_an_empty_buffer_is_not_copied() {
        let mut h = Harness::new(Socket::default());
        let big = vec![7u8; DIRECT];
        assert_eq!(ok(h.write(&big)), DIRECT);
        assert_eq!(h.segments(), vec![big]);
        assert!(h.io.buf.is_empty());
        ok(h.flush()); // nothing buffered: not deferred
        assert_eq!(h.wakes(), 0);
    }

    #[test]
    fn buffered_bytes_go_out_before_a_write_that_would_overflow_the_buffer() {
        let mut h = Harness::new(Socket::default());
        ok(h.write(b"head"));
        let big = vec![1u8; DIRECT];
        assert_eq!(ok(h.write(&big)), DIRECT);
        assert_eq!(h.segments(), vec![b"head".to_vec(), big]);
    }

    #[test]
    fn small_writes_up_to_the_threshold_stay_together() {
        let mut h = Harness::new(Socket::default());
        ok(h.write(&vec![1u8; DIRECT - 1]));
        ok(h.write(&[2u8]));
        assert!(h.segments().is_empty(), "exactly DIRECT bytes still fit the buffer");
        assert!(h.flush().is_pending());
        ok(h.flush());
        let mut expected = vec![1u8; DIRECT - 1];
        expected.push(2);
        assert_eq!(h.segments(), vec![expected]);
    }

    #[test]
    fn short_writes_are_resumed_in_order_until_the_buffer_is_empty() {
        let mut h = Harness::new(Socket::scripted([Step::Take(3), Step::Take(2)]));
        ok(h.write(b"abcdefgh"));
        assert!(h.flush().is_pending());
        ok(h.flush());
        assert_eq!(h.segments(), vec![b"abc".to_vec(), b"de".to_vec(), b"fgh".to_vec()]);
    }

    #[test]
    fn a_busy_socket_keeps_the_bytes_for_the_next_flush() {
        let mut h = Harness::new(Socket::scripted([Step::Pending]));
        ok(h.write(b"keep"));
        assert!(h.flush().is_pending()); // deferred
        assert!(h.flush().is_pending()); // the socket is busy
        ok(h.flush());
        assert_eq!(h.segments(), vec![b"keep".to_vec()]);
        assert_eq!(h.io.inner.flushes, 1);
    }

    #[test]
    fn a_socket_that_takes_nothing_is_a_write_zero_error() {
        let mut h = Harness::new(Socket::scripted([Step::Take(0)]));
        ok(h.write(b"lost"));
        assert!(h.flush().is_pending());
        match h.flush() {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
            other => panic!("expected WriteZero, got {other:?}"),
        }
    }

    #[test]
    fn socket_errors_reach_the_writer() {
        let mut h = Harness::new(Socket::scripted([Step::Fail(io::ErrorKind::BrokenPipe)]));
        match h.write(&vec![0u8; DIRECT]) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected BrokenPipe on the direct write, got {other:?}"),
        }
        let mut h = Harness::new(Socket::scripted([Step::Fail(io::ErrorKind::ConnectionReset)]));
        ok(h.write(b"small"));
        match h.shutdown() {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected ConnectionReset on the drain, got {other:?}"),
        }
        assert_eq!(h.io.inner.shutdowns, 0, "no shutdown after a failed drain");
    }

    #[test]
    fn shutdown_sends_what_is_buffered_first() {
        let mut h = Harness::new(Socket::default());
        ok(h.write(b"bye"));
        ok(h.shutdown());
        assert_eq!((h.segments(), h.io.inner.shutdowns), (vec![b"bye".to_vec()], 1));
    }

    #[test]
    fn the_connector_dials_tcp_and_carries_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let echo = tokio::spawn(async move {
                let (mut peer, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4];
                peer.read_exact(&mut buf).await.unwrap();
                peer.write_all(&buf).await.unwrap();
            });
            let bound = Duration::from_secs(30);
            let uri: Uri = format!("http://{addr}").parse().unwrap();
            let mut connector = Connector::new(bound);
            let stream = tokio::time::timeout(bound, tower::Service::call(&mut connector, uri)).await.unwrap().unwrap();
            let mut stream = TokioIo::new(stream);
            stream.write_all(b"ping").await.unwrap();
            tokio::time::timeout(bound, stream.flush()).await.unwrap().unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(bound, stream.read_exact(&mut back)).await.unwrap().unwrap();
            assert_eq!(&back, b"ping");
            echo.await.unwrap();
        });
    }
}
