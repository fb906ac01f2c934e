//! SPEC section 5: what crosses the proxy, both ways.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let r = plain_get(
        t.addr(),
        "/",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "203.0.113.7"),
            ("tether-session-state", "continued"),
            ("x-app", "kept"),
        ],
    )
    .await;
    for gone in ["x-private", "keep-alive", "te", "proxy-connection"] {
        assert!(r.seen(gone).is_empty(), "{gone} reached the backend");
    }
    assert_eq!(r.seen("x-app"), vec!["kept"]);
    assert_eq!(r.seen("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.1"]);
    assert_eq!(r.seen("x-forwarded-proto"), vec!["http"]);
    assert_eq!(r.seen("x-forwarded-host"), vec!["localhost"]);
    assert_eq!(
        r.seen("tether-session-state"),
        vec!["new"],
        "a client's own state header is replaced"
    );
}

#[tokio::test]
async fn tethers_cookie_is_stripped_upstream_unless_told_not_to() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let mut s = Session::new(t.addr());
    s.get("/").await;
    let c = s.cookie.clone().unwrap();
    let r = plain_get(
        t.addr(),
        "/",
        &[("cookie", &format!("pref=dark; tether_sid={c}; lang=en"))],
    )
    .await;
    assert_eq!(r.state(), "continued");
    assert_eq!(r.seen("cookie"), vec!["pref=dark; lang=en"]);

    let only = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={c}"))]).await;
    assert!(
        only.seen("cookie").is_empty(),
        "an emptied Cookie header is dropped"
    );

    let keep = Tether::start(&config("strip_cookie = false", &[&a])).await;
    let mut s = Session::new(keep.addr());
    s.get("/").await;
    let r = s.get("/").await;
    assert_eq!(
        r.seen("cookie"),
        vec![format!("tether_sid={}", s.cookie.unwrap())]
    );
}

#[tokio::test]
async fn response_keeps_the_apps_cookie_beside_tethers_and_drops_control() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let r = plain_get(t.addr(), "/set-cookie/cart/42", &[]).await;
    assert!(r.set_cookie("cart").is_some());
    assert!(r.set_cookie("tether_sid").is_some());
    let r = plain_get(t.addr(), "/control/nonsense", &[]).await;
    assert!(r.headers.get("tether-session-control").is_none());
}

#[tokio::test]
async fn cookie_attributes_on_tls_and_plain() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config_tls("", &[&a])).await;
    let (tls, plain) = (t.addrs[0], t.addrs[1]);
    let r = send(
        tls,
        Proto::TlsH1,
        get("/").body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    let c = r.set_cookie("tether_sid").unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(c.contains(attr), "TLS cookie lacks {attr}: {c}");
    }
    assert!(
        !c.contains("Max-Age") && !c.contains("Expires"),
        "a session cookie: {c}"
    );
    assert_eq!(r.seen("x-forwarded-proto"), vec!["https"]);
    let r = plain_get(plain, "/", &[]).await;
    let c = r.set_cookie("tether_sid").unwrap();
    assert!(
        !c.contains("Secure"),
        "secure = auto leaves Secure off plain listeners: {c}"
    );
    assert!(c.contains("HttpOnly"));

    let strict = Tether::start(&config(
        "same_site = \"strict\"\nsecure = \"always\"\nhttp_only = false\npath = \"/app\"\ndomain = \"example.com\"",
        &[&a],
    ))
    .await;
    let c = plain_get(strict.addr(), "/", &[])
        .await
        .set_cookie("tether_sid")
        .unwrap();
    for attr in [
        "Secure",
        "SameSite=Strict",
        "Path=/app",
        "Domain=example.com",
    ] {
        assert!(c.contains(attr), "{attr} missing: {c}");
    }
    assert!(!c.contains("HttpOnly"), "{c}");
}

/// CHIPS: an embedded (third-party) app keeps its session only with a partitioned cookie,
/// which browsers accept only with `Secure` and `SameSite=None`.
#[tokio::test]
async fn partitioned_cookie_on_tls_is_secure_and_same_site_none() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config_tls(
        "same_site = \"none\"\nsecure = \"always\"\npartitioned = true",
        &[&a],
    ))
    .await;
    let r = send(
        t.addrs[0],
        Proto::TlsH1,
        get("/").body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    let c = r.set_cookie("tether_sid").unwrap();
    for attr in [
        "Partitioned",
        "Secure",
        "SameSite=None",
        "HttpOnly",
        "Path=/",
    ] {
        assert!(c.contains(attr), "partitioned cookie lacks {attr}: {c}");
    }
}

#[tokio::test]
async fn http2_over_tls() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config_tls("", &[&a])).await;
    let r = send(
        t.addrs[0],
        Proto::TlsH2,
        get("/h2").body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.state(), "new");
    assert_eq!(r.json()["path"], "/h2");
    assert_eq!(
        r.seen("host"),
        vec![format!("localhost:{}", t.addrs[0].port())]
    );
    let cookie = r.cookie_value("tether_sid").unwrap();
    let again = send(
        t.addrs[0],
        Proto::TlsH2,
        get("/")
            .header("cookie", format!("tether_sid={cookie}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(again.state(), "continued");
}

/// The server's suite order decides (AES-128-GCM first, so the TLS 1.3 key
/// schedule runs on SHA-256; see `tls::provider`), even against a client that lists
/// AES-256-GCM first, as rustls and browsers do; and only TLS 1.2 and 1.3.
#[tokio::test]
async fn the_server_picks_aes_128_gcm_over_the_clients_first_choice() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256};
    let a = Backend::start("app1").await;
    let t = Tether::start(&config_tls("", &[&a])).await;
    let client_first = rustls::crypto::aws_lc_rs::default_provider().cipher_suites[0].suite();
    assert_eq!(client_first, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    for (versions, want) in [
        (&[&rustls::version::TLS13][..], TLS13_AES_128_GCM_SHA256),
        (
            &[&rustls::version::TLS12][..],
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let tcp = TcpStream::connect(t.addrs[0]).await.unwrap();
        let tls = tls_connector_versions(versions)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, want);
    }
}

const BIG: usize = 64 * 1024 * 1024;

#[tokio::test]
async fn a_64_mib_upload_streams_through() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let body = Repeat {
        chunk: Bytes::from(vec![b'u'; 64 * 1024]),
        left: BIG / (64 * 1024),
    };
    let req = Request::post("/count")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let tcp = TcpStream::connect(t.addr()).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let resp = tokio::time::timeout(HANG, s.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, BIG.to_string());
}

/// A body of `left` frames of `chunk`, produced lazily (never held whole).
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn a_64_mib_download_streams_through() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let tcp = TcpStream::connect(t.addr()).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let req = Request::get(format!("/bytes/{BIG}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(HANG, s.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = tokio::time::timeout(HANG, body.frame()).await.unwrap() {
        n += f.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(n, BIG);
}

/// Both directions over TLS, each many records and more than the stream
/// keeps unsent: the upload reaches the backend whole, the download the
/// client.
#[tokio::test]
async fn large_bodies_cross_tls_whole_both_ways() {
    const SIZE: usize = 4 * 1024 * 1024;
    let a = Backend::start("app1").await;
    let t = Tether::start(&config_tls("", &[&a])).await;
    let mut s = h1_over_tls(TcpStream::connect(t.addrs[0]).await.unwrap()).await;

    let up = Request::post("/count")
        .header("host", "localhost")
        .body(Repeat {
            chunk: Bytes::from(vec![b'u'; 50_000]),
            left: SIZE / 50_000,
        })
        .unwrap();
    let resp = tokio::time::timeout(HANG, s.send_request(up))
        .await
        .unwrap()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (SIZE / 50_000 * 50_000).to_string());

    // The same connection, so the upload left nothing behind in it.
    let down = Request::get(format!("/bytes/{SIZE}"))
        .header("host", "localhost")
        .body(Repeat {
            chunk: Bytes::new(),
            left: 0,
        })
        .unwrap();
    let resp = tokio::time::timeout(HANG, s.send_request(down))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = tokio::time::timeout(HANG, body.frame()).await.unwrap() {
        let d = f.unwrap().into_data().unwrap_or_default();
        assert!(d.iter().all(|&b| b == b'x'), "the download's bytes changed");
        n += d.len();
    }
    assert_eq!(n, SIZE);
}

#[tokio::test]
async fn websocket_upgrade_is_spliced_to_the_pinned_backend() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    let t = Tether::start(&config("", &[&a, &b])).await;
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    let cookie = s.cookie.clone().unwrap();

    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Cookie: tether_sid={cookie}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(
        text.contains(&format!("x-backend: {}", home.to_lowercase())),
        "pinned backend answers: {text}"
    );
    for msg in [&b"hello through tether"[..], b"and again"] {
        tcp.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(HANG, tcp.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
}
