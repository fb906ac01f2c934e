//! What crosses the proxy under stress: HTTP/2 cookie crumbs, slow uploads,
//! retries of new sessions, and backends that close idle connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

// ---------------------------------------------------------------- dropped unanswered

/// A backend that reads a request head and closes without a byte of answer,
/// as a crashing server does; it counts the heads it read.
async fn dropper() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicU64::new(0));
    let h = heads.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                // Health probes are not requests.
                if !got.starts_with(b"GET /healthz") {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, heads, task)
}

/// A GET the backend read and then dropped unanswered is sent again, as it
/// was written, to the next backend: the client gets the answer, not a 502.
#[tokio::test]
async fn a_get_its_backend_dropped_unanswered_is_replayed_on_the_next_one() {
    let (addr, heads, task) = dropper().await;
    let live = Backend::start("live").await;
    // A high `fall` keeps the dropping one a candidate for every request.
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[session]\nsecret = \"{SECRET}\"\n\n\
         [health]\nfall = 1000\n\n\
         [[backend]]\nname = \"dropper\"\naddress = \"{addr}\"\n\n\
         [[backend]]\nname = \"live\"\naddress = \"{}\"\n",
        live.addr
    );
    let t = Tether::start(&cfg).await;
    for _ in 0..40 {
        let r = plain_get(t.addr(), "/a?b=c", &[("x-kept", "one"), ("x-kept", "two")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), "live");
        assert_eq!(r.json()["path"], "/a");
        assert_eq!(r.seen("x-kept"), ["one", "two"]);
        if heads.load(Ordering::SeqCst) >= 3 {
            break;
        }
    }
    assert!(
        heads.load(Ordering::SeqCst) >= 3,
        "the dropping backend was never tried first"
    );
    t.stop().await;
    task.abort();
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

// ---------------------------------------------------------------- idle upstream connections

/// A plain HTTP/1.1 backend, written on raw TCP so its keep-alive timer is
/// exact: a connection idle for `idle` is the server's to close. Like a real
/// server under load, it notices late: the FIN leaves only after `fin_after`,
/// and a request arriving in between has crossed that FIN on the wire, so
/// the connection is dropped unread (which the client sees as a reset).
struct IdleCloser {
    addr: SocketAddr,
    /// Requests answered.
    served: Arc<AtomicU64>,
    /// Requests that arrived on a connection already timed out, dropped unread.
    crossed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl IdleCloser {
    async fn start(idle: Duration, fin_after: Duration) -> IdleCloser {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, crossed) = (Arc::default(), Arc::default());
        let (s, c) = (Arc::clone(&served), Arc::clone(&crossed));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, c) = (Arc::clone(&s), Arc::clone(&c));
                tokio::spawn(Self::serve(stream, idle, fin_after, s, c));
            }
        });
        IdleCloser {
            addr,
            served,
            crossed,
            task,
        }
    }

    async fn serve(
        mut stream: TcpStream,
        idle: Duration,
        fin_after: Duration,
        served: Arc<AtomicU64>,
        crossed: Arc<AtomicU64>,
    ) {
        let mut answered_at: Option<Instant> = None;
        let mut buf = Vec::new();
        loop {
            if let Some(at) = answered_at {
                // Between requests: the keep-alive timer runs.
                let mut first = [0u8; 1];
                match tokio::time::timeout(fin_after, stream.peek(&mut first)).await {
                    Err(_) => return,                 // timed out: close (FIN)
                    Ok(Ok(0)) | Ok(Err(_)) => return, // tether closed its side
                    Ok(Ok(_)) => {}
                }
                if at.elapsed() >= idle {
                    crossed.fetch_add(1, Ordering::SeqCst);
                    return; // the request crossed our close: dropped unread (a reset)
                }
            }
            // Read one request head, then its Content-Length body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + len);
            if head.contains(" /healthz ") {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let body = n.to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            answered_at = Some(Instant::now());
        }
    }
}

impl Drop for IdleCloser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that closes idle keep-alive connections never costs a 502, a
/// second delivery of a POST, or a passive failure: tether lets a pooled
/// connection go after `timeouts.upstream_idle`, before the backend's own
/// timer, and a connection found closed before the request was written
/// counts as never sent.
#[tokio::test]
async fn backends_that_close_idle_connections_cost_no_502_and_no_failure() {
    let backend = IdleCloser::start(Duration::from_millis(300), Duration::from_millis(600)).await;
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\n\n\
         [timeouts]\nupstream_idle = \"200ms\"\n\n\
         [health]\ninterval = \"60s\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[backend]]\nname = \"a\"\naddress = \"{}\"\n",
        backend.addr
    );
    let t = Tether::start(&cfg).await;

    // One client connection, POSTs with bodies spaced around the backend's
    // idle time: well under, just under, across and well past it.
    let tcp = TcpStream::connect(t.addr()).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let gaps = [0, 50, 150, 250, 320, 400, 100, 500, 650, 280, 180, 700, 350];
    for (i, gap) in gaps.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        let req = Request::post("/order")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(format!("order {i}"))))
            .unwrap();
        let r = tokio::time::timeout(HANG, s.send_request(req))
            .await
            .expect("request hung")
            .unwrap();
        let r = Resp::read(r).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "POST {i} after {gap} ms: {:?}",
            r.body
        );
        assert_eq!(
            r.body,
            (i + 1).to_string(),
            "POST {i} after {gap} ms reached the backend more than once (or not at all)"
        );
    }
    assert_eq!(backend.served.load(Ordering::SeqCst), gaps.len() as u64);
    assert_eq!(
        backend.crossed.load(Ordering::SeqCst),
        0,
        "tether wrote on a connection the backend had timed out"
    );
    assert_eq!(backend_field(&t, "a", "state").await, "up");
    assert_eq!(backend_field(&t, "a", "failures").await, 0);
    t.stop().await;
}

/// When tether is told to keep connections longer than the backend does, a
/// POST can cross the backend's close on the wire. It may have been read, so
/// it is not replayed (502), but the backend did nothing wrong: no passive
/// failure, even with `fall = 1`, and the next request is served.
#[tokio::test]
async fn a_request_crossing_the_backends_idle_close_is_no_backend_failure() {
    let backend = IdleCloser::start(Duration::from_millis(150), Duration::from_secs(5)).await;
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\n\n\
         [timeouts]\nupstream_idle = \"10s\"\n\n\
         [health]\ninterval = \"60s\"\nfall = 1\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[backend]]\nname = \"a\"\naddress = \"{}\"\n",
        backend.addr
    );
    let t = Tether::start(&cfg).await;
    let post = || {
        Request::post("/order")
            .body(Full::new(Bytes::from_static(b"order")))
            .unwrap()
    };
    assert_eq!(send(t.addr(), Proto::Plain, post()).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = send(t.addr(), Proto::Plain, post()).await;
    assert_eq!(backend.crossed.load(Ordering::SeqCst), 1, "{:?}", r.body);
    assert_eq!(
        r.status, 502,
        "a POST that may have been read is not replayed"
    );
    assert_eq!(backend.served.load(Ordering::SeqCst), 1);
    assert_eq!(backend_field(&t, "a", "state").await, "up");
    assert_eq!(send(t.addr(), Proto::Plain, post()).await.status, 200);
    assert_eq!(backend.served.load(Ordering::SeqCst), 2);
    t.stop().await;
}
