//! How a connection that ends after its answer ends on the wire: the
//! answer's last bytes leave with the FIN, one segment where there would be
//! two, and nothing is held back while tether waits for anything else.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::*;

/// Longest a step below may take; each is an event on loopback.
const LIMIT: Duration = Duration::from_secs(3);

/// Bytes a socket holds back for more leave by themselves only when the
/// kernel's probe timer fires, 200 ms (its minimum RTO) after they were
/// written: bytes that take longer than this to come were held.
const PROMPT: Duration = Duration::from_millis(150);

/// From a socket's `TCP_INFO`: segments it has received, and bytes it has
/// sent that are not acknowledged yet.
fn tcp_info(fd: RawFd) -> (u32, u32) {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            len: *mut u32,
        ) -> c_int;
    }
    // IPPROTO_TCP, TCP_INFO: `tcpi_unacked` is the u32 at byte 24,
    // `tcpi_segs_in` the one at byte 140 (Linux 4.2 and later).
    let mut info = [0u8; 256];
    let mut len = info.len() as u32;
    let got = unsafe { getsockopt(fd, 6, 11, info.as_mut_ptr().cast(), &mut len) };
    assert!(got == 0 && len >= 144, "TCP_INFO");
    let at = |i: usize| u32::from_ne_bytes(info[i..i + 4].try_into().unwrap());
    (at(140), at(24))
}

/// A backend that answers `/healthz` at once and anything else in two
/// parts: `first` as soon as the request head is in (then `got` is
/// notified), `rest` once `go` is.
struct Gated {
    addr: SocketAddr,
    got: Arc<Notify>,
    go: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Gated {
    async fn start(first: &'static [u8], rest: &'static [u8]) -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (g, o) = (got.clone(), go.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (g, o) = (g.clone(), o.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        if head.starts_with(b"GET /healthz") {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            let _ = s.write_all(ok).await;
                            continue;
                        }
                        let _ = s.write_all(first).await;
                        g.notify_one();
                        o.notified().await;
                        let _ = s.write_all(rest).await;
                    }
                });
            }
        });
        Gated {
            addr,
            got,
            go,
            task,
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// tether in front of `b`, a plain listener first and a TLS one second (no
/// resumption: no ticket arrives after the handshake).
fn tether_for(b: SocketAddr) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\ntls = true\n\n\
         [tls]\ncert = \"certs/localhost.crt\"\nkey = \"certs/localhost.key\"\n\
         session_resumption = false\n\n\
         [session]\nsecret = \"{SECRET}\"\n\n[log]\naccess = false\n\n\
         [[backend]]\nname = \"gated\"\naddress = \"{b}\"\n"
    )
}

/// Reads until the peer closes; fails if that takes longer than `LIMIT`.
async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .expect("closed within LIMIT")
        .expect("readable");
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `request` on `s` (whose socket is `fd`), lets the backend answer
/// once the request has been acknowledged, and reads to the end: the
/// segments that brought the answer and the end, and what was read.
async fn answer_segments<S>(s: &mut S, fd: RawFd, request: &[u8], b: &Gated) -> (u32, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(request).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::timeout(LIMIT, b.got.notified())
        .await
        .expect("the request reached the backend");
    // Whatever acknowledged the request (a bare ACK) has come in before
    // the count starts.
    eventually("the request acknowledged", || tcp_info(fd).1 == 0).await;
    let before = tcp_info(fd).0;
    b.go.notify_one();
    let read = read_to_end(s).await;
    (tcp_info(fd).0 - before, read)
}

/// An answer to a request that ends its connection (`Connection: close`,
/// HTTP/1.0, over TLS its close_notify too, any request with keep-alive
/// off) reaches the client in one segment with the FIN, where it took two:
/// the answer, then the FIN.
#[tokio::test]
async fn an_answer_that_ends_its_connection_leaves_with_the_fin() {
    let b = Gated::start(b"", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let t = Tether::start(&tether_for(b.addr)).await;
    // With keep-alive off every answer ends its connection, whatever the
    // request asked.
    let off = Tether::start(&(tether_for(b.addr) + "\n[timeouts]\nkeepalive = \"0s\"\n")).await;
    let cases: &[(&str, SocketAddr, &[u8])] = &[
        (
            "close",
            t.addrs[0],
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        ("HTTP/1.0", t.addrs[0], b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
        (
            "keep-alive off",
            off.addrs[0],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (what, addr, request) in cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let fd = s.as_raw_fd();
        let (segments, read) = answer_segments(&mut s, fd, request, &b).await;
        assert!(read.ends_with("\r\n\r\nok"), "{what}: {read}");
        assert_eq!(segments, 1, "{what}: the answer and the FIN in one segment");
    }
    let tcp = TcpStream::connect(t.addrs[1]).await.unwrap();
    let fd = tcp.as_raw_fd();
    let handshake = tls_connector(&[b"http/1.1"]).connect("localhost".try_into().unwrap(), tcp);
    let mut s = tokio::time::timeout(LIMIT, handshake)
        .await
        .expect("TLS handshake within LIMIT")
        .expect("TLS handshake");
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (segments, read) = answer_segments(&mut s, fd, request, &b).await;
    assert!(read.ends_with("\r\n\r\nok"), "TLS: {read}");
    assert_eq!(
        segments, 1,
        "TLS: the answer, close_notify and the FIN in one segment"
    );
    t.stop().await;
    off.stop().await;
}

/// An answer that ends its connection but streams is not held back while
/// the rest is awaited: its first chunk reaches the client at once, while
/// the backend still holds the last.
#[tokio::test]
async fn a_streaming_answer_that_ends_its_connection_is_not_held_back() {
    let first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    let b = Gated::start(first, b"4\r\nlast\r\n0\r\n\r\n").await;
    let t = Tether::start(&tether_for(b.addr)).await;
    let mut s = TcpStream::connect(t.addrs[0]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, b.got.notified())
        .await
        .expect("the backend answered");
    let due = tokio::time::Instant::now() + PROMPT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"first") {
        let n = tokio::time::timeout_at(due, s.read(&mut buf))
            .await
            .expect("the first chunk, not held back, while the backend holds the last")
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    b.go.notify_one();
    let rest = read_to_end(&mut s).await;
    assert!(rest.contains("last"), "{rest}");
    t.stop().await;
}

/// A request that ends its connection and expects `100 Continue` gets it
/// before it sends its body: the interim answer is not held back for a FIN
/// that comes only after the body. (It is written as the body is first
/// asked for, when the request's head goes to the backend.)
#[tokio::test]
async fn a_100_continue_on_a_connection_that_ends_is_not_held_back() {
    let b = Gated::start(b"", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let t = Tether::start(&tether_for(b.addr)).await;
    let mut s = TcpStream::connect(t.addrs[0]).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::timeout(LIMIT, b.got.notified())
        .await
        .expect("the request's head reached the backend");
    let due = tokio::time::Instant::now() + PROMPT;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout_at(due, s.read(&mut byte))
            .await
            .expect("100 Continue, not held back, before the body is sent")
            .unwrap();
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"hello").await.unwrap();
    b.go.notify_one();
    let rest = read_to_end(&mut s).await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nok"), "{rest}");
    t.stop().await;
}
