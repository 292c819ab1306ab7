//! Connection limits of `jac-orc serve` (the binary): idle connections cannot exhaust its file
//! descriptors (the attack: 300 idle connections against `ulimit -n 256` took /healthz down), and
//! a client that never finishes its request headers or its TLS handshake is cut off.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::served::Served;
use crate::support::T;

/// Waits (bounded) until the server closes `stream` (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let ended = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(T, ended).await.expect("the server closes the connection");
}

/// `GET /healthz` on a new connection; the status line.
async fn healthz(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_idle_connections_under_256_open_files_are_closed_and_healthz_keeps_answering() {
    let mut served =
        Served::start(&["prlimit", "--nofile=256:256", "--"], &["--idle-timeout", "2", "--header-read-timeout", "2"])
            .await;
    let addr = served.addr.clone();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&addr).await.expect("the kernel accepts into the backlog"));
    }
    // Whatever the server accepted first is closed by the idle timeout, then the rest; meanwhile
    // (bounded) a fresh /healthz is answered.
    let status = tokio::time::timeout(T, healthz(&addr)).await.expect("/healthz answers");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for stream in &mut idle {
        closed_by_server(stream).await;
    }
    assert_eq!(tokio::time::timeout(T, healthz(&addr)).await.unwrap(), "HTTP/1.1 200 OK");
    assert!(served.is_running(), "the server is still up");
    let log = served.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("connection limit reached"), "the cap (256 files - reserve) was what held: {log}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_request_headers_and_tls_handshakes_are_cut_off_by_the_header_read_timeout() {
    // The idle timeout is far beyond the bounded waits below: only the header-read timeout can
    // close these connections in time.
    let served = Served::start(&[], &["--header-read-timeout", "1", "--idle-timeout", "600"]).await;
    let mut slow = TcpStream::connect(&served.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: local").await.unwrap();
    closed_by_server(&mut slow).await;
    // A whole request on another connection is answered as usual.
    assert_eq!(healthz(&served.addr).await, "HTTP/1.1 200 OK");
    served.stop().await;

    let served =
        Served::start(&[], &["--tls-self-signed", "--header-read-timeout", "1", "--idle-timeout", "600"]).await;
    let mut stalled = TcpStream::connect(&served.addr).await.unwrap();
    // The first bytes of a TLS ClientHello record, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    closed_by_server(&mut stalled).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_its_last_response() {
    let served = Served::start(&[], &["--idle-timeout", "1"]).await;
    let mut s = TcpStream::connect(&served.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "kept alive after the answer");
    closed_by_server(&mut s).await;
    served.stop().await;
}
