//! SPEC section 12, PROXY protocol: on a `[[listener]]` with
//! `proxy_protocol = true` every connection begins with a v1 (text) or v2
//! (binary) header from an L4 balancer, and the client it names is the
//! client everywhere tether looks at one (X-Forwarded-For, `bind_to`, rate
//! limits, the access log). A connection without a valid header is closed
//! unanswered, and reading the header is bounded by `client_header`.
//!
//! Headers are written by hand here, byte by byte from the protocol text,
//! so the parser is checked against the format rather than against itself.

mod support;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use support::*;

/// `timeouts.client_header` on every tether here.
const CLIENT_HEADER: Duration = Duration::from_millis(300);

/// Longest a close under test may take to show: a connection still open
/// this long after it should have been closed never will be.
const LIMIT: Duration = Duration::from_secs(3);

/// The v2 signature (12 bytes).
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the balancer says it accepted on (the destination in a header).
fn dst4() -> SocketAddr {
    "192.0.2.10:443".parse().unwrap()
}

fn dst6() -> SocketAddr {
    "[2001:db8::10]:443".parse().unwrap()
}

/// A v1 header: `PROXY TCP4|TCP6 src dst sport dport\r\n`.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` command over TCP naming `src` (and `dst`), then `tlvs`.
fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addrs = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addrs.extend(s.ip().octets());
            addrs.extend(d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            addrs.extend(s.ip().octets());
            addrs.extend(d.ip().octets());
            0x21
        }
        _ => panic!("src and dst of one family"),
    };
    addrs.extend(src.port().to_be_bytes());
    addrs.extend(dst.port().to_be_bytes());
    addrs.extend(tlvs);
    v2_raw(0x21, fam, &addrs)
}

/// A v2 header from its parts: version/command byte, family/protocol byte,
/// payload (addresses and TLVs).
fn v2_raw(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
    h.extend(payload);
    h
}

/// The listener(s) of `cfg` with `proxy_protocol = true`, and
/// `client_header` short.
fn with_proxy_protocol(cfg: String) -> String {
    cfg.replace("tls = false\n", "tls = false\nproxy_protocol = true\n")
        .replace("tls = true\n", "tls = true\nproxy_protocol = true\n")
        + &format!(
            "\n[timeouts]\nclient_header = \"{}ms\"\n",
            CLIENT_HEADER.as_millis()
        )
}

/// A plain tether whose listener requires the header.
async fn tether(b: &Backend, extra: &str) -> Tether {
    Tether::start(&(with_proxy_protocol(config("", &[b])) + extra)).await
}

/// A client socket whose first write carries `header` in front of whatever
/// the client writes first (the request, or the TLS ClientHello): header and
/// request leave in one write, as a balancer that has both at hand sends
/// them, so tether's first read holds bytes past the header.
struct Prefixed {
    io: TcpStream,
    header: Option<Vec<u8>>,
}

impl Prefixed {
    async fn connect(addr: SocketAddr, header: &[u8]) -> Prefixed {
        let io = tokio::time::timeout(HANG, TcpStream::connect(addr))
            .await
            .expect("connect hung")
            .unwrap();
        Prefixed {
            io,
            header: Some(header.to_vec()),
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        while let Some(header) = this.header.as_mut() {
            let both = [header.as_slice(), buf].concat();
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &both))?;
            if n > header.len() {
                let of_buf = n - header.len();
                this.header = None;
                return Poll::Ready(Ok(of_buf));
            }
            header.drain(..n);
            if header.is_empty() {
                this.header = None;
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// GET `/` over HTTP/1.1 on a new connection that starts with `header`.
async fn get_behind(addr: SocketAddr, header: &[u8]) -> Resp {
    get_behind_with(addr, header.to_vec(), &[]).await
}

/// [`get_behind`] with extra request headers.
async fn get_behind_with(addr: SocketAddr, header: Vec<u8>, headers: &[(&str, &str)]) -> Resp {
    let io = Prefixed::connect(addr, &header).await;
    let mut req = get("/").header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(HANG, async {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(c);
        Resp::read(s.send_request(req).await.unwrap()).await
    })
    .await
    .expect("request hung")
}

/// GET `/` over TLS (HTTP/1.1) on a new connection that starts with
/// `header`, sent in one write with the ClientHello.
async fn tls_get_behind(addr: SocketAddr, header: &[u8]) -> Resp {
    let io = Prefixed::connect(addr, header).await;
    let req = get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(HANG, async {
        Resp::read(h1_over_tls(io).await.send_request(req).await.unwrap()).await
    })
    .await
    .expect("request hung")
}

/// Reads until the peer closes (a reset counts); what came, and how long
/// after `since` the close was seen. Fails when still open after `LIMIT`.
async fn until_closed(s: &mut TcpStream, since: Instant, what: &str) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {LIMIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, since.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` on a new connection; what came back before it closed.
async fn answer_to(addr: SocketAddr, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let since = Instant::now();
    // tether may close (and reset) before taking it all: that is the point.
    let _ = tcp.write_all(bytes).await;
    until_closed(&mut tcp, since, what).await.0
}

/// The single X-Forwarded-For the backend saw.
fn forwarded_for(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.seen("x-forwarded-for");
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen[0].clone()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_v1_header_names_the_client_tcp4_and_tcp6() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let src4: SocketAddr = "203.0.113.7:56324".parse().unwrap();
    let src6: SocketAddr = "[2001:db8::7]:56324".parse().unwrap();
    let r = get_behind(t.addr(), &v1(src4, dst4())).await;
    assert_eq!(forwarded_for(&r), "203.0.113.7");
    let r = get_behind(t.addr(), &v1(src6, dst6())).await;
    assert_eq!(forwarded_for(&r), "2001:db8::7");
    // v1 UNKNOWN: the balancer could not say; the TCP peer is the client.
    let r = get_behind(t.addr(), b"PROXY UNKNOWN\r\n").await;
    assert_eq!(forwarded_for(&r), "127.0.0.1");
}

#[tokio::test]
async fn a_v2_header_names_the_client_ipv4_and_ipv6() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let src4: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let src6: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
    let r = get_behind(t.addr(), &v2(src4, dst4(), &[])).await;
    assert_eq!(forwarded_for(&r), "203.0.113.9");
    let r = get_behind(t.addr(), &v2(src6, dst6(), &[])).await;
    assert_eq!(forwarded_for(&r), "2001:db8::9");
    // TLVs (here an AWS NLB-like VPC endpoint id, type 0xEA) are skipped.
    let mut tlv = vec![0xEA, 0x00, 0x16, 0x01];
    tlv.extend(b"vpce-0123456789abcdef");
    let r = get_behind(t.addr(), &v2(src4, dst4(), &tlv)).await;
    assert_eq!(forwarded_for(&r), "203.0.113.9");
}

#[tokio::test]
async fn a_v2_local_header_leaves_the_real_peer() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    // LOCAL (a balancer's own health check), with or without addresses.
    let r = get_behind(t.addr(), &v2_raw(0x20, 0x00, &[])).await;
    assert_eq!(forwarded_for(&r), "127.0.0.1");
    let mut addrs = vec![203, 0, 113, 7, 192, 0, 2, 10];
    addrs.extend([0x9c, 0x40, 0x01, 0xbb]);
    let r = get_behind(t.addr(), &v2_raw(0x20, 0x11, &addrs)).await;
    assert_eq!(forwarded_for(&r), "127.0.0.1");
    // PROXY over AF_UNSPEC: nothing to name either.
    let r = get_behind(t.addr(), &v2_raw(0x21, 0x00, &[])).await;
    assert_eq!(forwarded_for(&r), "127.0.0.1");
}

#[tokio::test]
async fn bytes_after_the_header_in_the_same_write_reach_the_backend() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let src: SocketAddr = "203.0.113.7:56324".parse().unwrap();
    for header in [v1(src, dst4()), v2(src, dst4(), &[])] {
        let mut one_write = header.clone();
        one_write.extend_from_slice(
            b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
        );
        one_write.extend_from_slice(&[b'x'; 1000]);
        let got = answer_to(t.addr(), &one_write, "header + POST in one write").await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        assert!(got.ends_with("\r\n\r\n1000"), "the backend counted: {got}");
    }
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_handshake() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_proxy_protocol(config_tls("", &[&a]))).await;
    let src: SocketAddr = "203.0.113.11:50000".parse().unwrap();
    // The header and the ClientHello in one write.
    let r = tls_get_behind(t.addrs[0], &v2(src, dst4(), &[])).await;
    assert_eq!(forwarded_for(&r), "203.0.113.11");
    assert_eq!(r.seen("x-forwarded-proto"), ["https"]);
    let r = tls_get_behind(t.addrs[0], &v1(src, dst4())).await;
    assert_eq!(forwarded_for(&r), "203.0.113.11");
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_unanswered() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let src: SocketAddr = "203.0.113.7:56324".parse().unwrap();
    let mut too_long = v2(src, dst4(), &[]);
    too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut bad_version = v2(src, dst4(), &[]);
    bad_version[12] = 0x11;
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "no header: a plain GET",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("garbage", b"HELLO tether\r\n\r\n".to_vec()),
        (
            "v1 with a bad address",
            b"PROXY TCP4 203.0.113.999 192.0.2.10 1 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
                .to_vec(),
        ),
        (
            "v1 with an IPv6 address under TCP4",
            b"PROXY TCP4 2001:db8::1 192.0.2.10 1 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
                .to_vec(),
        ),
        (
            "v1 past 107 bytes without CRLF",
            [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 200]].concat(),
        ),
        ("v2 version 1", bad_version),
        ("v2 naming 64 KiB of TLVs", too_long),
    ];
    for (what, bytes) in cases {
        let got = answer_to(t.addr(), &bytes, what).await;
        assert!(
            got.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(a.hits(), 0, "nothing reaches a backend");
    // The listener still serves a well-formed connection.
    assert_eq!(
        forwarded_for(&get_behind(t.addr(), &v1(src, dst4())).await),
        "203.0.113.7"
    );
}

#[tokio::test]
async fn a_slow_or_silent_header_is_cut_at_client_header() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let src: SocketAddr = "203.0.113.7:56324".parse().unwrap();
    let v1_line = v1(src, dst4());
    let v2_bin = v2(src, dst4(), &[]);
    // Pieces written 100 ms apart: a header a byte at a time, which cannot
    // end in time; a whole header and then nothing (the client behind the
    // balancer is silent); nothing at all.
    let bytes = |h: &[u8]| -> Vec<Vec<u8>> { h.chunks(1).map(<[u8]>::to_vec).collect() };
    let cases = [
        ("v1, a byte every 100 ms", bytes(&v1_line)),
        ("v2, a byte every 100 ms", bytes(&v2_bin)),
        ("a whole v1 header, then silence", vec![v1_line.clone()]),
        ("silence", vec![]),
    ];
    for (what, pieces) in cases {
        let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
        let since = Instant::now();
        let (mut rd, mut wr) = tcp.split();
        let trickle = async {
            for piece in &pieces {
                if wr.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::future::pending::<()>().await
        };
        let closed = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return (got, since.elapsed()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let (got, lived) = tokio::time::timeout(LIMIT, async {
            tokio::select! {
                r = closed => r,
                () = trickle => unreachable!(),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {LIMIT:?}"));
        drop(tcp);
        assert!(
            got.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            lived >= CLIENT_HEADER - Duration::from_millis(50)
                && lived < CLIENT_HEADER + Duration::from_millis(1200),
            "{what}: lived {lived:?} with client_header = {CLIENT_HEADER:?}"
        );
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_listener_without_proxy_protocol_answers_a_proxy_line_400() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let src: SocketAddr = "203.0.113.7:56324".parse().unwrap();
    let mut bytes = v1(src, dst4());
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = answer_to(t.addr(), &bytes, "a PROXY line on a plain listener").await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn new_session_rate_counts_the_client_the_header_names() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "\n[limits]\nnew_session_rate = 1\n").await;
    let seven: SocketAddr = "203.0.113.7:1000".parse().unwrap();
    let eight: SocketAddr = "203.0.113.8:1000".parse().unwrap();
    // Every connection comes from 127.0.0.1; the header tells them apart.
    assert_eq!(
        get_behind(t.addr(), &v2(seven, dst4(), &[])).await.status,
        200
    );
    assert_eq!(get_behind(t.addr(), &v1(eight, dst4())).await.status, 200);
    let again = get_behind(t.addr(), &v1(seven, dst4())).await;
    assert_eq!(again.status, 429, "203.0.113.7 spent its one new session");
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn bind_to_ip_binds_the_session_to_the_client_the_header_names() {
    let a = Backend::start("app1").await;
    let t = Tether::start(
        &(with_proxy_protocol(config(
            "bind_to = [\"ip\"]\non_mismatch = \"reject\"",
            &[&a],
        ))),
    )
    .await;
    let seven: SocketAddr = "203.0.113.7:1000".parse().unwrap();
    let eight: SocketAddr = "203.0.113.8:1000".parse().unwrap();
    let first = get_behind(t.addr(), &v1(seven, dst4())).await;
    assert_eq!(first.status, 200);
    let cookie = format!("tether_sid={}", first.cookie_value("tether_sid").unwrap());
    let with_cookie = [("cookie", cookie.as_str())];
    let same = get_behind_with(t.addr(), v1(seven, dst4()), &with_cookie).await;
    assert_eq!(
        (same.status.as_u16(), same.state()),
        (200, "continued".into())
    );
    let other = get_behind_with(t.addr(), v1(eight, dst4()), &with_cookie).await;
    assert_eq!(
        other.status, 403,
        "a cookie bound to 203.0.113.7 from 203.0.113.8"
    );
}

// ------------------------------------------------------------------ HAProxy

/// A real HAProxy (TCP mode) run as a child; killed and reaped on drop.
struct Haproxy {
    child: Child,
    config: std::path::PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

const HAPROXY: &str = "/usr/sbin/haproxy";

/// A loopback port free right now. HAProxy binds it itself a moment later;
/// another process taking it in between fails the start loudly, not
/// silently.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts HAProxy with one TCP frontend per `(server option)` (e.g.
/// `send-proxy-v2`), each forwarding to `to`; their addresses once they
/// accept. `None` when HAProxy is not installed.
async fn haproxy(to: SocketAddr, options: &[&str]) -> Option<(Haproxy, Vec<SocketAddr>)> {
    if !std::path::Path::new(HAPROXY).exists() {
        return None;
    }
    let mut cfg = String::from(
        "global\n    maxconn 64\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n",
    );
    let mut fronts = Vec::new();
    for (i, opt) in options.iter().enumerate() {
        let front: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        cfg.push_str(&format!(
            "\nlisten l{i}\n    bind {front}\n    server tether {to} {opt}\n"
        ));
        fronts.push(front);
    }
    let path = std::env::temp_dir().join(format!(
        "tether-pp-haproxy-{}-{}.cfg",
        std::process::id(),
        to.port()
    ));
    std::fs::write(&path, &cfg).unwrap();
    let check = Command::new(HAPROXY)
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy refused its config:\n{cfg}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut h = Haproxy {
        child,
        config: path,
    };
    let started = Instant::now();
    for front in &fronts {
        while TcpStream::connect(front).await.is_err() {
            assert!(h.child.try_wait().unwrap().is_none(), "haproxy exited");
            assert!(
                started.elapsed() < HANG,
                "haproxy never accepted on {front}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Some((h, fronts))
}

#[tokio::test]
async fn behind_haproxy_send_proxy_v2_and_send_proxy() {
    let a = Backend::start("app1").await;
    let t = tether(&a, "").await;
    let Some((_haproxy, fronts)) = haproxy(t.addr(), &["send-proxy-v2", "send-proxy"]).await else {
        eprintln!("skipped: {HAPROXY} is not installed");
        return;
    };
    // Direct, without the header: closed, unanswered.
    let got = answer_to(
        t.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "a direct GET",
    )
    .await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(a.hits(), 0);
    // Through HAProxy from 127.0.0.2: served, and that client is named
    // upstream, though tether's TCP peer is HAProxy on 127.0.0.1.
    let client = std::net::IpAddr::from([127, 0, 0, 2]);
    for (front, how) in fronts.iter().zip(["send-proxy-v2", "send-proxy"]) {
        let r = plain_get_from(client, *front, "/", &[]).await;
        assert_eq!(r.status, 200, "through HAProxy {how}");
        assert_eq!(forwarded_for(&r), "127.0.0.2", "through HAProxy {how}");
    }
    assert_eq!(a.hits(), 2);
}
