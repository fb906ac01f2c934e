//! Connection lifecycle: silent connections, keep-alive vs head deadlines,
//! HTTP/2 idle GOAWAY, idle tunnels, and an exact `max_connections`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Longest a lifecycle deadline under test may take to show: every timeout
/// below is in the hundreds of milliseconds, so a test that waits longer
/// than this has found a connection that is never closed.
const LIMIT: Duration = Duration::from_secs(3);

/// The plain listener first, with `[timeouts]` and `[limits]` lines added.
fn plain(a: &Backend, timeouts: &str, limits: &str) -> String {
    config("", &[a]) + &format!("\n[timeouts]\n{timeouts}\n\n[limits]\n{limits}\n")
}

/// A TLS listener first (then a plain one), with `[timeouts]` and `[limits]`.
fn tls(a: &Backend, timeouts: &str, limits: &str) -> String {
    config_tls("", &[a]) + &format!("\n[timeouts]\n{timeouts}\n\n[limits]\n{limits}\n")
}

/// Reads (and drops) whatever comes until the peer closes; how long that
/// took. Fails when the connection is still open after `LIMIT`.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S, what: &str) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {LIMIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One GET on a new plain connection; fails if not answered within `LIMIT`.
async fn served(addr: SocketAddr, what: &str) -> u16 {
    tokio::time::timeout(LIMIT, plain_get(addr, "/", &[]))
        .await
        .unwrap_or_else(|_| panic!("{what}: not served within {LIMIT:?}"))
        .status
        .as_u16()
}

/// Reads one HTTP/1.1 response head (and a `Content-Length` body) off a
/// kept-alive connection; returns the status line.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, s.read(&mut byte))
            .await
            .expect("a response")
            .expect("readable");
        assert_eq!(n, 1, "closed before a whole response head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(LIMIT, s.read_exact(&mut body))
        .await
        .expect("a body")
        .expect("readable");
    head.lines().next().unwrap_or("").to_string()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Opens a WebSocket through tether to the backend's echo; returns the
/// upgraded stream.
async fn websocket(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let status = read_response(&mut tcp).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    tcp
}

async fn echo(ws: &mut TcpStream, bytes: &[u8]) {
    ws.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(LIMIT, ws.read_exact(&mut back))
        .await
        .expect("echoed")
        .expect("readable");
    assert_eq!(back, bytes);
}

async fn tls_connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = tls_connector(alpn).connect("localhost".try_into().unwrap(), tcp);
    tokio::time::timeout(LIMIT, handshake)
        .await
        .expect("TLS handshake within LIMIT")
        .expect("TLS handshake")
}

// ------------------------------------------------------- raw HTTP/2 frames

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET /` on stream 1, HPACK from the static table (RFC 7541 appendix A):
/// :method GET, :scheme https, :path /, then :authority as a literal.
fn h2_get() -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)
}

/// Reads one frame: (type, flags, stream, payload); `None` at EOF.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    match tokio::time::timeout(LIMIT, s.read_exact(&mut head)).await {
        Err(_) => panic!("no HTTP/2 frame and no close within {LIMIT:?}"),
        Ok(Err(_)) => return None,
        Ok(Ok(_)) => {}
    }
    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// Reads frames, acknowledging the server's SETTINGS and PINGs, until `want`
/// says stop.
async fn frames_until<S>(s: &mut S, mut want: impl FnMut(u8, u8, u32) -> bool) -> Option<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let (kind, flags, stream, payload) = read_frame(s).await?;
        if kind == SETTINGS && flags & ACK == 0 {
            s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.ok()?;
        }
        if kind == PING && flags & ACK == 0 {
            s.write_all(&frame(PING, ACK, 0, &payload)).await.ok()?;
        }
        if want(kind, flags, stream) {
            return Some(kind);
        }
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_silent_connection_is_closed_after_client_header_and_frees_its_slot() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(
        &a,
        "client_header = \"500ms\"",
        "max_connections = 4",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(t.addr()).await.unwrap());
    }
    let opened = Instant::now();
    // The fifth client waits for a slot, and gets one when the silent ones go.
    let fifth = tokio::spawn(served(t.addr(), "the fifth client"));
    for s in &mut silent {
        closed_after(s, "a silent plain connection").await;
    }
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(400) && lived < Duration::from_millis(1500),
        "silent connections lived {lived:?} with client_header = 500ms"
    );
    assert_eq!(fifth.await.unwrap(), 200);
}

/// `defer_accept`: the kernel keeps a connection until it speaks, so a
/// silent one holds no slot (the next client is served at once, with
/// `max_connections = 1`), and is still handed over (after the kernel's
/// first SYN-ACK retransmission, about a second) and closed at
/// `client_header`.
#[tokio::test]
async fn with_defer_accept_a_silent_connection_holds_no_slot_and_still_ends() {
    let a = Backend::start("app1").await;
    let conf = plain(&a, "client_header = \"300ms\"", "max_connections = 1").replacen(
        "tls = false\n",
        "tls = false\ndefer_accept = true\n",
        1,
    );
    let t = Tether::start(&conf).await;
    let mut silent = TcpStream::connect(t.addr()).await.unwrap();
    // Without defer_accept the silent connection takes the one slot and this
    // request waits for client_header; with it, it is served at once.
    let quick = tokio::time::timeout(Duration::from_millis(250), plain_get(t.addr(), "/", &[]))
        .await
        .expect("served while a silent connection is open");
    assert_eq!(quick.status, 200);
    closed_after(&mut silent, "a silent connection on a deferring listener").await;
    // One that speaks late is served.
    let mut late = TcpStream::connect(t.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    late.write_all(GET).await.unwrap();
    assert!(read_response(&mut late).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_silent_tls_connection_is_closed_after_client_header_and_frees_its_slot() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&tls(&a, "client_header = \"500ms\"", "max_connections = 2")).await;
    // Handshakes done, one per ALPN choice, then nothing.
    let mut h2 = tls_connect(t.addr(), &[b"h2"]).await;
    let mut h1 = tls_connect(t.addr(), &[b"http/1.1"]).await;
    let third = tokio::spawn(served(t.addrs[1], "a third client"));
    let lived_h2 = closed_after(&mut h2, "a silent TLS connection (ALPN h2)").await;
    let lived_h1 = closed_after(&mut h1, "a silent TLS connection (ALPN http/1.1)").await;
    for lived in [lived_h2, lived_h1] {
        assert!(lived < Duration::from_millis(1500), "lived {lived:?}");
    }
    assert_eq!(third.await.unwrap(), 200);
}

#[tokio::test]
async fn an_idle_keepalive_connection_outlives_client_header_and_ends_at_keepalive() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(
        &a,
        "client_header = \"300ms\"\nkeepalive = \"1s\"",
        "",
    ))
    .await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    // Idle for twice client_header: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let idle = closed_after(&mut tcp, "an idle keep-alive connection").await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
        "closed after {idle:?} idle with keepalive = 1s"
    );
    assert_eq!(a.hits(), 2);
}

/// A client may shut its sending side once its request is out (`nc -N`,
/// scripts that send and wait): it still gets its answer, with or without a
/// body in the request, and then the end of the connection. Over TLS the
/// client's close_notify is that end.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&tls(&a, "", "")).await;
    let post = b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    for request in [GET, &post[..]] {
        let mut tcp = TcpStream::connect(t.addrs[1]).await.unwrap();
        tcp.write_all(request).await.unwrap();
        tcp.shutdown().await.unwrap();
        let status = read_response(&mut tcp).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        closed_after(&mut tcp, "a half-closed connection, answered").await;

        let mut tls = tls_connect(t.addr(), &[b"http/1.1"]).await;
        tls.write_all(request).await.unwrap();
        tls.shutdown().await.unwrap();
        let status = read_response(&mut tls).await;
        assert!(status.starts_with("HTTP/1.1 200"), "TLS: {status}");
        closed_after(&mut tls, "a half-closed TLS connection, answered").await;
    }
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn a_slow_head_gets_client_header_not_keepalive() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(
        &a,
        "client_header = \"1s\"\nkeepalive = \"300ms\"",
        "",
    ))
    .await;
    // A head trickled over ~600 ms (past keepalive, within client_header) is served.
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    for chunk in GET.chunks(5) {
        tcp.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = read_response(&mut tcp).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[tokio::test]
async fn slowloris_a_head_that_never_ends_is_closed_after_client_header() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(
        &a,
        "client_header = \"800ms\"\nkeepalive = \"300ms\"",
        "",
    ))
    .await;
    let (mut rd, mut wr) = TcpStream::connect(t.addr()).await.unwrap().into_split();
    // A byte every 100 ms of a header line that never ends.
    let trickle = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let lived = closed_after(&mut rd, "a head that never ends").await;
    trickle.abort();
    assert!(
        lived >= Duration::from_millis(700) && lived < Duration::from_millis(1600),
        "a never-ending head lived {lived:?} with client_header = 800ms"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn an_idle_h2_connection_gets_goaway_after_keepalive() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&tls(
        &a,
        "client_header = \"300ms\"\nkeepalive = \"700ms\"",
        "",
    ))
    .await;
    let mut s = tls_connect(t.addr(), &[b"h2"]).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s.write_all(&h2_get()).await.unwrap();
    // The response ends the only stream...
    let ended = frames_until(&mut s, |kind, flags, stream| {
        stream == 1 && matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0
    })
    .await;
    assert!(ended.is_some(), "closed before the response ended");
    assert_eq!(a.hits(), 1);
    // ...then, idle past client_header, the connection gets GOAWAY at keepalive.
    let idle = Instant::now();
    let kind = frames_until(&mut s, |kind, _, _| kind == GOAWAY).await;
    let took = idle.elapsed();
    assert_eq!(kind, Some(GOAWAY), "closed without GOAWAY after {took:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2000),
        "GOAWAY after {took:?} idle with keepalive = 700ms"
    );
    closed_after(&mut s, "an h2 connection after GOAWAY").await;
}

#[tokio::test]
async fn websockets_hold_their_slots_until_they_close() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(&a, "", "max_connections = 3")).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut ws = websocket(t.addr()).await;
        echo(&mut ws, b"hello").await;
        open.push(ws);
    }
    let addr = t.addr();
    let fourth = tokio::spawn(async move { plain_get(addr, "/", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth client was served while three WebSockets held max_connections = 3"
    );
    // The others still work; closing one frees its slot.
    echo(&mut open[1], b"still").await;
    drop(open.remove(0));
    let status = tokio::time::timeout(LIMIT, fourth)
        .await
        .expect("served once a WebSocket closed")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_and_a_busy_one_is_not() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&plain(&a, "tunnel = \"500ms\"", "")).await;
    let mut ws = websocket(t.addr()).await;
    // Traffic every 200 ms for over twice the limit keeps it open.
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_millis(1100) {
        echo(&mut ws, b"ping").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    echo(&mut ws, b"ping").await;
    let idle = closed_after(&mut ws, "an idle tunnel").await;
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_millis(1500),
        "an idle tunnel closed after {idle:?} with tunnel = 500ms"
    );
}

#[tokio::test]
async fn max_connections_is_exact_with_two_listeners() {
    let a = Backend::start("app1").await;
    let two = "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n".to_string()
        + &plain(&a, "", "max_connections = 2");
    let t = Tether::start(&two).await;
    let (first, second) = (t.addrs[0], t.addrs[1]);
    // Both slots on one listener: kept-alive connections that were served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(first).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        let status = tokio::time::timeout(LIMIT, read_response(&mut tcp))
            .await
            .expect("both slots of max_connections = 2 are usable on one listener");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(tcp);
    }
    // A third, on the other listener, waits for a slot.
    let third = tokio::spawn(async move { plain_get(second, "/", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections = 2"
    );
    drop(held.pop());
    let status = tokio::time::timeout(LIMIT, third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn alpn_picks_the_protocol_on_tls_not_the_first_bytes() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&tls(&a, "", "")).await;
    // ALPN h2 is served as HTTP/2.
    let r = send(
        t.addr(),
        Proto::TlsH2,
        get("/").body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.version), (200, http::Version::HTTP_2));
    // ALPN http/1.1 then an HTTP/2 preface: not HTTP/2 (no SETTINGS back).
    let mut s = tls_connect(t.addr(), &[b"http/1.1"]).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut out))
        .await
        .expect("the connection is closed");
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 4"),
        "an http/1.1 connection answered an HTTP/2 preface with {:?}",
        &out[..out.len().min(32)]
    );
    assert_eq!(a.hits(), 1);
    // ALPN http/1.0 alone (`curl --http1.0`) is served as HTTP/1.x.
    let mut s = tls_connect(t.addr(), &[b"http/1.0"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .expect("readable");
    assert!(
        out.starts_with(b"HTTP/1.0 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.hits(), 2);
}

fn with_admin(toml: String) -> String {
    toml + "\n[admin]\nbind = \"127.0.0.1:0\"\n"
}

/// Waits until `tether_parked_connections` reads `n`.
async fn parked(t: &Tether, n: u32) {
    let adm = t.running().admin_addr().expect("admin listener");
    let want = format!("tether_parked_connections {n}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (_, body) = admin(adm, "GET", "/metrics", None).await;
        if body.lines().any(|l| l == want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_parked_and_serves_on_from_its_next_bytes() {
    // A connection idle past a second gives hyper's state up and keeps only
    // the socket; the next request, pipelined ones included, is served by a
    // fresh hyper connection, and the parked one still ends at keepalive.
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(plain(
        &a,
        "client_header = \"300ms\"\nkeepalive = \"4s\"",
        "",
    )))
    .await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    parked(&t, 1).await;
    // Two requests in one write, the second split from the first's end.
    let two = [GET, GET].concat();
    tcp.write_all(&two[..GET.len() + 3]).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    parked(&t, 0).await;
    tcp.write_all(&two[GET.len() + 3..]).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    parked(&t, 1).await;
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn a_parked_connection_still_ends_at_keepalive() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(plain(
        &a,
        "client_header = \"300ms\"\nkeepalive = \"1500ms\"",
        "",
    )))
    .await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    parked(&t, 1).await;
    closed_after(&mut tcp, "parked connection").await;
    let lasted = idle.elapsed();
    assert!(
        lasted >= Duration::from_millis(1400) && lasted < Duration::from_millis(2500),
        "closed {lasted:?} after going idle, keepalive is 1.5s"
    );
    parked(&t, 0).await;
}
