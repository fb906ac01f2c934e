//! What crosses the proxy under stress: HTTP/2 cookie crumbs, slow uploads,
//! retries of new sessions, and backends that close idle connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

// ---------------------------------------------------------------- helpers

/// The metrics text from tether's admin listener.
async fn metrics(t: &Tether) -> String {
    let adm = t.running().admin_addr().expect("admin listener");
    let (s, body) = admin(adm, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    body
}

/// Field `field` of backend `name` in `GET /api/backends`.
async fn backend_field(t: &Tether, name: &str, field: &str) -> serde_json::Value {
    let adm = t.running().admin_addr().expect("admin listener");
    let (s, body) = admin(adm, "GET", "/api/backends", None).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name}: {body}"))[field]
        .clone()
}

const ADMIN: &str = "\n[admin]\nbind = \"127.0.0.1:0\"\n";

// ---------------------------------------------------------------- HTTP/2 → HTTP/1.1

/// RFC 9113 section 8.2.3: an HTTP/2 client may split its cookies into
/// crumbs, one field each; an HTTP/1.1 backend must get them back as one
/// `Cookie` line joined with "; " (a WSGI server joins repeated lines with a
/// comma and reads `a` as `1,b=2`). tether's own cookie leaves the joined
/// line; `:authority` is the one `Host`, whatever `host` fields came along.
#[tokio::test]
async fn h2_cookie_crumbs_reach_an_http1_backend_as_one_line_and_authority_as_one_host() {
    let a = Backend::start("a").await;
    let t = Tether::start(&config_tls("", &[&a])).await;
    let req = Request::get("/crumbs")
        .header("cookie", "a=1")
        .header("cookie", "tether_sid=not-a-real-one")
        .header("cookie", "b=2")
        .header("host", "one.example")
        .header("host", "two.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.addr(), Proto::TlsH2, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("cookie"), vec!["a=1; b=2"], "{:?}", r.json());
    let authority = format!("localhost:{}", t.addr().port());
    assert_eq!(r.seen("host"), vec![authority.clone()], "{:?}", r.json());
    assert_eq!(r.seen("x-forwarded-host"), vec![authority]);

    // A lone crumb that is tether's cookie leaves no Cookie line at all.
    let req = Request::get("/")
        .header("cookie", "tether_sid=x")
        .header("cookie", "tether_sid=y")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(t.addr(), Proto::TlsH2, req).await;
    assert_eq!(r.seen("cookie"), Vec::<String>::new());
    t.stop().await;
}

// ---------------------------------------------------------------- new stays new

/// A brand-new session whose first backend refused the connection is still
/// `new` on the next one: `failover` is only for a live session's pin, and
/// no pin was lost.
#[tokio::test]
async fn a_new_session_retried_on_another_backend_stays_new() {
    for source in ["", "source = \"app_cookie\"\napp_cookie = \"JSESSIONID\""] {
        let dead = Backend::start("dead").await;
        let live = Backend::start("live").await;
        // A high `fall` keeps the dead one a candidate for every request.
        let cfg = config(source, &[&dead, &live]) + ADMIN + "\n[health]\nfall = 1000\n";
        let t = Tether::start(&cfg).await;
        dead.kill().await;

        let mut retried = 0;
        for _ in 0..40 {
            let r = plain_get(t.addr(), "/", &[]).await;
            assert_eq!(r.status, 200, "{source}");
            assert_eq!(r.backend(), "live");
            assert_eq!(r.state(), "new", "{source}");
            retried = backend_field(&t, "dead", "failures")
                .await
                .as_u64()
                .unwrap();
            if retried >= 3 {
                break;
            }
        }
        assert!(
            retried >= 3,
            "{source}: the dead backend was never tried first"
        );
        let m = metrics(&t).await;
        assert!(
            m.contains(r#"tether_session_pins_lost_total{reason="backend_down"} 0"#),
            "{source}: {m}"
        );
        assert!(
            m.contains(r#"tether_session_events_total{state="failover"} 0"#),
            "{source}: {m}"
        );
        t.stop().await;
    }
}

// ---------------------------------------------------------------- slow uploads

/// A request body the test feeds chunk by chunk, at its own pace.
struct Trickle(mpsc::Receiver<Bytes>);

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// POSTs `chunks` pieces of `size` bytes to `path`, pausing `pause` before
/// each; returns the response and when the last piece was handed over.
async fn trickle_post(
    addr: SocketAddr,
    path: &str,
    chunks: usize,
    size: usize,
    pause: Duration,
) -> (Resp, Instant) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let (tx, rx) = mpsc::channel(1);
    let req = Request::post(path)
        .header("host", "localhost")
        .body(Trickle(rx))
        .unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..chunks {
            tokio::time::sleep(pause).await;
            if tx.send(Bytes::from(vec![b'u'; size])).await.is_err() {
                break;
            }
        }
        Instant::now()
    });
    let resp = tokio::time::timeout(HANG, s.send_request(req))
        .await
        .expect("upload hung")
        .unwrap();
    let resp = Resp::read(resp).await;
    (resp, feeder.await.unwrap())
}

/// A backend that reads the whole request body, then waits `ms`
/// milliseconds (from the path, `/drain-then/MS`), then answers with the
/// body's length.
async fn drain_then_answer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let ms: u64 = req
                            .uri()
                            .path()
                            .rsplit('/')
                            .next()
                            .and_then(|m| m.parse().ok())
                            .unwrap_or(0);
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            n.to_string(),
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// `timeouts.response` is the backend's time: a client trickling its body
/// for longer than `response` (each pause under `client_body`) is served;
/// a backend that then takes longer than `response` after the body's end
/// still gets 504, counted from that end, and so does one that stops taking
/// the body.
#[tokio::test]
async fn response_timeout_counts_from_the_end_of_the_request_body() {
    let (addr, backend) = drain_then_answer().await;
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\n\n\
         [timeouts]\nresponse = \"300ms\"\nclient_body = \"1s\"\n\n\
         [[backend]]\nname = \"a\"\naddress = \"{addr}\"\n"
    );
    let t = Tether::start(&cfg).await;

    // ~300 KB over ~1 s, in 10 pieces 100 ms apart.
    let (r, _) = trickle_post(
        t.addr(),
        "/drain-then/0",
        10,
        30_000,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(&r.body[..], b"300000");

    // The backend reads it all, then sits on it past `response`.
    let (r, body_end) = trickle_post(
        t.addr(),
        "/drain-then/2000",
        5,
        10_000,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    let after = body_end.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1500),
        "504 came {after:?} after the body's end"
    );
    t.stop().await;
    backend.abort();

    // A backend that stops taking the body is the backend's time too: 504,
    // not a hang, however fast the client sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stuck = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.read(&mut [0u8; 1024]).await;
        std::future::pending::<()>().await;
        drop(s);
    });
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\n\n\
         [timeouts]\nresponse = \"300ms\"\nshutdown_grace = \"100ms\"\n\n\
         [health]\ninterval = \"60s\"\n\n\
         [[backend]]\nname = \"a\"\naddress = \"{addr}\"\n"
    );
    let t = Tether::start(&cfg).await;
    let req = Request::post("/")
        .body(Full::new(Bytes::from(vec![b'u'; 64 << 20])))
        .unwrap();
    let r = send(t.addr(), Proto::Plain, req).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    t.stop().await;
    stuck.abort();
}
