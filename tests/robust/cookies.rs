//! tether's own cookie presented again and again on one client connection,
//! as a browser does on a kept-alive connection: a value that changes, or
//! keys that a reload changes, are judged afresh, never as the value that
//! came before them on the connection.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::*;

/// One HTTP/1.1 connection, opened once: a request that finds it gone
/// fails the test rather than quietly opening another.
struct OneConn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl OneConn {
    async fn open(addr: SocketAddr) -> OneConn {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(c);
        OneConn(s)
    }

    /// GET / carrying `tether_sid=<cookie>` when given.
    async fn get(&mut self, cookie: Option<&str>) -> Resp {
        let mut b = Request::get("/").header("host", "localhost");
        if let Some(c) = cookie {
            b = b.header("cookie", format!("tether_sid={c}"));
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        tokio::time::timeout(HANG, async {
            self.0.ready().await.expect("the connection stays open");
            Resp::read(self.0.send_request(req).await.unwrap()).await
        })
        .await
        .expect("request hung")
    }
}

/// `cookie` with one character of its session id changed: the same length
/// and alphabet, a MAC that no longer matches.
fn tampered(cookie: &str) -> String {
    let mut b = cookie.as_bytes().to_vec();
    b[8] = if b[8] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// (state, backend, the cookie the response sets if any).
fn seen(r: &Resp) -> (String, String, Option<String>) {
    assert_eq!(r.status, 200);
    (r.state(), r.backend(), r.cookie_value("tether_sid"))
}

/// SPEC 3 `new`: a cookie tether did not issue is new, also when the same
/// connection presented a good one just before: a value is honoured for
/// what it is, not for what came earlier on its connection.
#[tokio::test]
async fn a_tampered_cookie_after_a_good_one_on_one_connection_is_new() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config("", &[&a, &b])).await;
    let mut c = OneConn::open(t.addr()).await;

    let (state, home, cookie) = seen(&c.get(None).await);
    assert_eq!(state, "new");
    let good = cookie.expect("a new session gets a cookie");
    for round in 0..3 {
        let (state, backend, _) = seen(&c.get(Some(&good)).await);
        assert_eq!((state.as_str(), &backend), ("continued", &home), "{round}");

        let forged = tampered(&good);
        let (state, _, fresh) = seen(&c.get(Some(&forged)).await);
        assert_eq!(state, "new", "round {round}: a tampered cookie is new");
        let fresh = fresh.expect("a new session gets a cookie");
        assert_ne!(fresh, good, "never the old id");

        let truncated = &good[..good.len() - 1];
        let (state, _, _) = seen(&c.get(Some(truncated)).await);
        assert_eq!(state, "new", "round {round}: a truncated cookie is new");
    }
    t.stop().await;
}

/// The same over HTTP/2 (h2c), where the requests of one connection run at
/// once: good and tampered cookies interleaved on one connection, each
/// judged for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_tampered_cookies_at_once_on_one_h2_connection_are_each_judged() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config("", &[&a, &b])).await;
    let first = plain_get(t.addr(), "/", &[]).await;
    let good = first.cookie_value("tether_sid").expect("a cookie");
    let home = first.backend();
    let forged = tampered(&good);

    let tcp = TcpStream::connect(t.addr()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut all = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut send = send.clone();
        let value = if i % 3 == 2 { &forged } else { &good };
        let req = Request::get(format!("http://localhost:{}/", t.addr().port()))
            .header("cookie", format!("tether_sid={value}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        all.spawn(async move {
            send.ready().await.expect("the connection stays open");
            let r = Resp::read(send.send_request(req).await.unwrap()).await;
            (i, r)
        });
    }
    let answers = tokio::time::timeout(HANG, all.join_all())
        .await
        .expect("requests hung");
    for (i, r) in answers {
        let (state, backend, _) = seen(&r);
        if i % 3 == 2 {
            assert_eq!(state, "new", "request {i}: tampered");
        } else {
            assert_eq!((state.as_str(), &backend), ("continued", &home), "{i}");
        }
    }
    t.stop().await;
}

fn secret_file(name: &str, secret: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cookies-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, secret).unwrap();
    path
}

/// SPEC 2 `previous_secret_files`: a cookie verifies under the keys of the
/// config in force when it arrives. On a connection that has presented it
/// all along, it survives a rotation that keeps its secret as a previous
/// one, and is new once a reload drops that secret.
#[tokio::test]
async fn a_reload_that_drops_a_secret_ends_its_cookie_on_an_open_connection() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let cfg = config("", &[&a, &b]);
    let t = Tether::start(&cfg).await;
    let mut c = OneConn::open(t.addr()).await;
    let (_, home, cookie) = seen(&c.get(None).await);
    let old = cookie.expect("a cookie");
    for _ in 0..2 {
        let (state, backend, _) = seen(&c.get(Some(&old)).await);
        assert_eq!((state.as_str(), &backend), ("continued", &home));
    }

    let kept = secret_file("reload", SECRET);
    let rotate = |previous: &str| {
        let text = cfg.replace(
            &format!("secret = \"{SECRET}\""),
            &format!("secret = \"a-brand-new-secret-0123456789\"\n{previous}"),
        );
        let next = tether::config::from_str(&text, &repo().join("test.toml"), None).unwrap();
        t.running().apply(next).expect("the reload applies");
    };
    rotate(&format!("previous_secret_files = [\"{}\"]", kept.display()));
    for _ in 0..2 {
        let (state, backend, _) = seen(&c.get(Some(&old)).await);
        assert_eq!(
            (state.as_str(), &backend),
            ("continued", &home),
            "the old secret is still a previous one"
        );
    }

    rotate("");
    let (state, _, fresh) = seen(&c.get(Some(&old)).await);
    assert_eq!(
        state, "new",
        "the old secret is gone: its cookie is not honoured"
    );
    assert_ne!(fresh.expect("a new cookie"), old);
    let (state, _, _) = seen(&c.get(Some(&old)).await);
    assert_eq!(state, "new", "nor the next time on the same connection");
    let _ = std::fs::remove_dir_all(kept.parent().unwrap());
    t.stop().await;
}
