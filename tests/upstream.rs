//! SPEC section 11: backends over TLS (verified, resumed, probed over the
//! same transport) and over HTTP/2 (h2c and ALPN h2, multiplexed, trailers
//! both ways), from HTTP/1.1 and HTTP/2 clients alike.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use support::*;

// ---------------------------------------------------------------- the backend

/// What a test backend counts.
#[derive(Default)]
struct Counts {
    /// TCP connections accepted.
    conns: AtomicU64,
    /// TLS handshakes completed, and how many of them resumed a session.
    handshakes: AtomicU64,
    resumed: AtomicU64,
    /// Requests for `/healthz`.
    probes: AtomicU64,
    /// The connections (numbered as accepted) that carried other requests.
    traffic: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Counts {
    fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// How the backend listens.
#[derive(Clone)]
struct Serve {
    /// `Some`: TLS with the dev certificate, offering these ALPN protocols.
    tls: Option<Vec<&'static [u8]>>,
    /// HTTP/1.1 connections close after one response.
    close: bool,
}

const PLAIN: Serve = Serve {
    tls: None,
    close: false,
};

/// TLS with the dev certificate, offering `alpn`, keeping connections.
fn tls_serve(alpn: &'static [u8]) -> Serve {
    Serve {
        tls: Some(vec![alpn]),
        close: false,
    }
}

/// A backend's keys for TLS verified against the dev certificate.
const VERIFIED: &str = "tls = true\nsni = \"localhost\"\nca_file = \"certs/localhost.crt\"";

/// A backend that names itself and reports what it saw: the HTTP version,
/// the URI and `Host` as it arrived, the request body's length and its
/// trailers. `/trailers` answers with a trailer of its own.
struct Upstream {
    name: &'static str,
    addr: SocketAddr,
    counts: Arc<Counts>,
    _task: Task,
}

struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Upstream {
    async fn start(name: &'static str, serve: Serve) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let acceptor = serve.tls.as_ref().map(|alpn| acceptor(alpn));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let id = c.conns.fetch_add(1, Ordering::SeqCst);
                let (c, acceptor, serve) = (c.clone(), acceptor.clone(), serve.clone());
                conns.spawn(async move {
                    match acceptor {
                        None => serve_conn(name, id, TokioIo::new(tcp), &c, &serve).await,
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else {
                                return;
                            };
                            c.handshakes.fetch_add(1, Ordering::SeqCst);
                            if tls.get_ref().1.handshake_kind()
                                == Some(rustls::HandshakeKind::Resumed)
                            {
                                c.resumed.fetch_add(1, Ordering::SeqCst);
                            }
                            serve_conn(name, id, TokioIo::new(tls), &c, &serve).await
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Upstream {
            name,
            addr,
            counts,
            _task: Task(task),
        }
    }

    fn count(&self, c: fn(&Counts) -> &AtomicU64) -> u64 {
        self.counts.get(c(&self.counts))
    }
}

async fn serve_conn<I>(name: &'static str, id: u64, io: TokioIo<I>, c: &Arc<Counts>, serve: &Serve)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let c = c.clone();
    let svc = service_fn(move |req| {
        let c = c.clone();
        async move { Ok::<_, Infallible>(answer(name, id, &c, req).await) }
    });
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().keep_alive(!serve.close);
    let _ = b.serve_connection(io, svc).await;
}

fn acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(repo().join("certs/localhost.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_file(repo().join("certs/localhost.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

type Reply = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(name: &str, conn: u64, c: &Counts, req: Request<Incoming>) -> Response<Reply> {
    if req.uri().path() == "/healthz" {
        c.probes.fetch_add(1, Ordering::SeqCst);
        return Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
    }
    c.traffic.lock().unwrap().insert(conn);
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let len = collected.map_or(0, |c| c.to_bytes().len());
    let report = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "uri": parts.uri.to_string(),
        "host": parts.headers.get("host").and_then(|h| h.to_str().ok()),
        "body": len,
        "trailer": trailers.as_ref().and_then(|t| t.get("x-client-trailer")).and_then(|v| v.to_str().ok()),
    });
    let body = Full::new(Bytes::from(report.to_string()));
    let body = if parts.uri.path() == "/trailers" {
        let mut t = HeaderMap::new();
        t.insert("x-backend-trailer", "done".parse().unwrap());
        WithTrailers::new(Bytes::from(report.to_string()), t).boxed()
    } else {
        body.boxed()
    };
    Response::builder()
        .header("x-backend", name)
        .body(body)
        .unwrap()
}

/// A body of one data frame followed by trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl WithTrailers {
    fn new(data: Bytes, trailers: HeaderMap) -> WithTrailers {
        WithTrailers {
            data: Some(data),
            trailers: Some(trailers),
        }
    }
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

// ---------------------------------------------------------------- helpers

/// A tether config with one plain listener and `backends`, each line of
/// `extra` added to every `[[backend]]` table.
fn cfg(backends: &[&Upstream], extra: &str, more: &str) -> String {
    let mut s = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\nsource = \"header\"\nheader = \"x-session\"\n\n[log]\naccess = false\n{more}\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\naddress = \"{}\"\n{extra}\n",
            b.name, b.addr
        ));
    }
    s
}

/// An HTTP/2 (h2c) connection to tether.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    s
}

type ClientBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Reads a response whole: its head, body and trailers.
async fn read_all(resp: Response<Incoming>) -> (http::response::Parts, Bytes, Option<HeaderMap>) {
    let (parts, body) = resp.into_parts();
    let c = tokio::time::timeout(HANG, body.collect())
        .await
        .expect("body hung")
        .expect("body reads");
    let trailers = c.trailers().cloned();
    (parts, c.to_bytes(), trailers)
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(b)))
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn a_tls_backend_is_verified_against_its_ca_file_and_served() {
    let up = Upstream::start("app1", tls_serve(b"http/1.1")).await;
    let t = Tether::start(&cfg(&[&up], VERIFIED, "")).await;
    let r = plain_get(t.addr(), "/x", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "app1");
    assert_eq!(json(&r.body)["version"], "HTTP/1.1");
    assert!(
        up.count(|c| &c.handshakes) >= 1,
        "the request came over TLS"
    );
}

#[tokio::test]
async fn tls_sessions_to_a_backend_are_resumed() {
    // The backend closes every connection after one response, so each
    // request needs a new handshake.
    let up = Upstream::start(
        "app1",
        Serve {
            tls: Some(vec![b"http/1.1"]),
            close: true,
        },
    )
    .await;
    let t = Tether::start(&cfg(&[&up], VERIFIED, "")).await;
    for _ in 0..4 {
        let r = plain_get(t.addr(), "/x", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let (full, resumed) = (up.count(|c| &c.handshakes), up.count(|c| &c.resumed));
    assert!(full >= 4, "one handshake per request: {full}");
    assert!(
        resumed >= 3,
        "every handshake after the first resumes: {resumed} of {full}"
    );
}

// Multi-threaded: the test blocks on tether's log while the backend serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_certificate_does_not_verify_is_down_with_a_clear_log_line() {
    let up = Upstream::start("app1", tls_serve(b"http/1.1")).await;
    let dir = std::env::temp_dir().join(format!("tether-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (case, keys, what_to_set) in [
        // No ca_file: the system's roots do not know the dev certificate.
        (
            "unknown-issuer",
            "tls = true\nsni = \"localhost\"",
            "ca_file",
        ),
        // A trusted certificate for another name.
        (
            "wrong-name",
            "tls = true\nsni = \"wrong.example\"\nca_file = \"certs/localhost.crt\"",
            "sni",
        ),
    ] {
        let path = dir.join(format!("{case}.toml"));
        let text = cfg(
            &[&up],
            keys,
            "[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 1\n\n[admin]\nbind = \"127.0.0.1:0\"",
        )
        .replace("certs/", &format!("{}/certs/", repo().display()));
        std::fs::write(&path, text).unwrap();
        let (_p, addrs, logs) = spawn_tether(&path, 2);
        let down = loop {
            let line = logs.recv_timeout(HANG).expect("a log line saying why");
            if line.contains("backend is down") {
                break line;
            }
        };
        assert!(down.contains("app1"), "{case}: {down}");
        assert!(
            down.contains("invalid peer certificate")
                && down.contains(&format!("set the backend's {what_to_set}")),
            "{case}: the line says what is wrong and what to do: {down}"
        );
        wait_state(addrs[1], "app1", "down").await;
        let r = plain_get(addrs[0], "/x", &[]).await;
        assert_eq!(r.status, 503, "{case}: never silently trusted: {r:?}");
    }
    assert_eq!(up.count(|c| &c.handshakes), 0, "no handshake completed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_checks_use_the_backends_transport() {
    // Speaks only HTTP/2 over TLS: a plain or HTTP/1.1 probe would fail.
    let up = Upstream::start("app1", tls_serve(b"h2")).await;
    let extra = format!("protocol = \"h2\"\n{VERIFIED}");
    let more = "[health]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nfall = 1";
    let t = Tether::start(&cfg(&[&up], &extra, more)).await;
    eventually("three probes answered over TLS", || {
        up.count(|c| &c.probes) >= 3
    })
    .await;
    assert!(up.count(|c| &c.handshakes) >= 1);
    let r = plain_get(t.addr(), "/x", &[]).await;
    assert_eq!(r.status, 200, "still up and serving: {r:?}");
}

// ---------------------------------------------------------------- HTTP/2

#[tokio::test]
async fn an_http1_client_reaches_an_h2c_backend() {
    let up = Upstream::start("app1", PLAIN).await;
    let t = Tether::start(&cfg(&[&up], "protocol = \"h2\"", "")).await;
    let r = plain_get(t.addr(), "/a/b?c=d", &[("host", "shop.example")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = json(&r.body);
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["uri"], "http://shop.example/a/b?c=d", "{seen}");
}

#[tokio::test]
async fn an_h2_backend_over_tls_is_reached_by_alpn() {
    let up = Upstream::start("app1", tls_serve(b"h2")).await;
    let extra = format!("protocol = \"h2\"\n{VERIFIED}");
    let t = Tether::start(&cfg(&[&up], &extra, "")).await;
    let r = plain_get(t.addr(), "/x", &[("host", "shop.example")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = json(&r.body);
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["uri"], "https://shop.example/x", "{seen}");
}

#[tokio::test]
async fn an_http2_client_reaches_an_http1_backend_and_an_h2_backend() {
    let h1 = Upstream::start("app1", PLAIN).await;
    let h2 = Upstream::start("app2", PLAIN).await;
    for (up, extra, want) in [
        (&h1, "", "HTTP/1.1"),
        (&h2, "protocol = \"h2\"", "HTTP/2.0"),
    ] {
        let t = Tether::start(&cfg(&[up], extra, "")).await;
        let mut s = h2c(t.addr()).await;
        let req = Request::get(format!("http://shop.example:{}/y", t.addr().port()))
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        let (head, body, _) = read_all(s.send_request(req).await.unwrap()).await;
        assert_eq!(head.status, 200);
        assert_eq!(json(&body)["version"], want);
    }
}

#[tokio::test]
async fn streams_to_an_h2_backend_share_one_connection() {
    let up = Upstream::start("app1", PLAIN).await;
    let t = Tether::start(&cfg(&[&up], "protocol = \"h2\"", "")).await;
    let mut calls = JoinSet::new();
    for i in 0..40 {
        let addr = t.addr();
        calls.spawn(async move { plain_get(addr, &format!("/n/{i}"), &[]).await.status });
    }
    while let Some(st) = calls.join_next().await {
        assert_eq!(st.unwrap(), 200);
    }
    assert_eq!(
        up.counts.traffic.lock().unwrap().len(),
        1,
        "40 concurrent requests from 40 client connections, one backend connection"
    );
}

#[tokio::test]
async fn trailers_cross_an_h2_backend_both_ways() {
    let up = Upstream::start("app1", PLAIN).await;
    let t = Tether::start(&cfg(&[&up], "protocol = \"h2\"", "")).await;
    let mut s = h2c(t.addr()).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", "sent".parse().unwrap());
    let body = WithTrailers::new(Bytes::from_static(b"hello"), trailers);
    let req = Request::post(format!("http://localhost:{}/trailers", t.addr().port()))
        .header("te", "trailers")
        .body(body.boxed())
        .unwrap();
    let (head, body, trailers) = read_all(s.send_request(req).await.unwrap()).await;
    assert_eq!(head.status, 200);
    let seen = json(&body);
    assert_eq!(seen["body"], 5);
    assert_eq!(
        seen["trailer"], "sent",
        "the request's trailer reached the backend"
    );
    let trailers = trailers.expect("the response's trailers reached the client");
    assert_eq!(trailers["x-backend-trailer"], "done");
}

#[tokio::test]
async fn a_session_sticks_to_its_h2_backend() {
    let (a, b, c) = (
        Upstream::start("app1", PLAIN).await,
        Upstream::start("app2", PLAIN).await,
        Upstream::start("app3", PLAIN).await,
    );
    let t = Tether::start(&cfg(&[&a, &b, &c], "protocol = \"h2\"", "")).await;
    let mut s = h2c(t.addr()).await;
    for id in ["alpha", "bravo", "charlie", "delta"] {
        let mut homes = std::collections::HashSet::new();
        for _ in 0..5 {
            let req = Request::get(format!("http://localhost:{}/", t.addr().port()))
                .header("x-session", id)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap();
            let (head, _, _) = read_all(s.send_request(req).await.unwrap()).await;
            homes.insert(head.headers["x-backend"].to_str().unwrap().to_string());
        }
        assert_eq!(
            homes.len(),
            1,
            "session {id} stayed on one backend: {homes:?}"
        );
    }
}

/// HTTP/2 has no `Upgrade`: a WebSocket handshake to an h2 backend reaches
/// it as a plain GET without the hop-by-hop upgrade headers, and the client
/// gets the backend's answer instead of 101 (no hang, no error from tether).
#[tokio::test]
async fn an_upgrade_to_an_h2_backend_arrives_as_a_plain_request() {
    let up = Upstream::start("app1", PLAIN).await;
    let t = Tether::start(&cfg(&[&up], "protocol = \"h2\"", "")).await;
    let ws = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = plain_get(t.addr(), "/ws", &ws).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json(&r.body)["version"], "HTTP/2.0");
}

/// A reload that changes how a backend is reached (same name, same
/// address) drops the old connections: the next request speaks the new
/// protocol instead of reusing a pooled connection of the old one.
#[tokio::test]
async fn a_reload_that_changes_a_backends_protocol_stops_using_its_old_connections() {
    let up = Upstream::start("app1", PLAIN).await;
    let t = Tether::start(&cfg(&[&up], "", "")).await;
    let r = plain_get(t.addr(), "/x", &[]).await;
    assert_eq!(json(&r.body)["version"], "HTTP/1.1", "{r:?}");
    let next = tether::config::from_str(
        &cfg(&[&up], "protocol = \"h2\"", ""),
        &repo().join("test.toml"),
        None,
    )
    .unwrap();
    t.running().apply(next).expect("reload applies");
    let r = plain_get(t.addr(), "/x", &[]).await;
    assert_eq!(
        json(&r.body)["version"],
        "HTTP/2.0",
        "not the pooled HTTP/1.1 connection: {r:?}"
    );
}
