//! SPEC section 5's error table, and the request-head limits.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

#[tokio::test]
async fn status_400_for_a_malformed_request() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let r = raw(t.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "missing Host: {r}");
    let r = raw(t.addr(), b"GARBAGE\x01\x02 nonsense\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");
    assert_eq!(a.hits(), 0, "nothing malformed reaches the backend");
}

#[tokio::test]
async fn status_431_for_a_head_over_max_header_bytes() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[limits]\nmax_header_bytes = 4096\n";
    let t = Tether::start(&cfg).await;
    let big = "v".repeat(5000);
    let r = plain_get(t.addr(), "/", &[("x-big", &big)]).await;
    assert_eq!(r.status, 431);
    let huge = "v".repeat(40_000);
    let r = raw(
        t.addr(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(80)]);
    assert_eq!(a.hits(), 0);
    assert_eq!(
        plain_get(t.addr(), "/", &[("x-small", "ok")]).await.status,
        200
    );
}

#[tokio::test]
async fn status_502_after_a_safe_retry_finds_nobody() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    let t = Tether::start(&config("", &[&a, &b])).await;
    a.kill().await;
    b.kill().await;
    let r = plain_get(t.addr(), "/", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn status_502_when_the_backend_answers_garbage() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"this is not http\r\n\r\n").await;
            });
        }
    });
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nsecret = \"{SECRET}\"\n[[backend]]\nname = \"junk\"\naddress = \"{addr}\"\n"
    );
    let t = Tether::start(&cfg).await;
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 502);
}

#[tokio::test]
async fn status_503_with_retry_after_when_no_backend_is_eligible() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    // The operator's switch (the admin API flips the same atomic).
    t.running().shared().snapshot.load().backends[0].set_state(tether::backends::State::Disabled);
    let r = plain_get(t.addr(), "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn status_504_when_the_backend_is_too_slow() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nresponse = \"200ms\"\n";
    let t = Tether::start(&cfg).await;
    let started = Instant::now();
    let r = plain_get(t.addr(), "/slow/3000", &[]).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(plain_get(t.addr(), "/slow/10", &[]).await.status, 200);
}

/// A kept-alive upstream connection carries its response deadline from one
/// request to the next: each request gets the full `response` time, and no
/// more, whether the previous deadline is still ahead or has passed while
/// the connection sat in the pool.
#[tokio::test]
async fn each_request_on_a_pooled_connection_gets_its_own_response_deadline() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nresponse = \"200ms\"\nupstream_idle = \"10s\"\n";
    let t = Tether::start(&cfg).await;
    let connects = || t.running().shared().snapshot.load().upstreams[0].connects();
    let slow_504 = || async {
        let started = Instant::now();
        assert_eq!(plain_get(t.addr(), "/slow/3000", &[]).await.status, 504);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "cut early: {took:?}");
        assert!(took < Duration::from_millis(2500), "not cut: {took:?}");
    };
    // Deadline still ahead: 150 ms of the first request's 200 remain.
    assert_eq!(plain_get(t.addr(), "/slow/50", &[]).await.status, 200);
    slow_504().await;
    assert_eq!(
        connects(),
        1,
        "the slow request went out on the pooled connection"
    );
    // Deadline passed while pooled: the timer fired with nobody waiting.
    assert_eq!(plain_get(t.addr(), "/slow/10", &[]).await.status, 200);
    assert_eq!(connects(), 2, "a timed-out connection is not reused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow_504().await;
    assert_eq!(
        connects(),
        2,
        "the slow request went out on the pooled connection"
    );
}

#[tokio::test]
async fn a_slow_head_is_cut_off_and_others_are_unaffected() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nclient_header = \"300ms\"\n";
    let t = Tether::start(&cfg).await;
    let addr = t.addr();
    let slow = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .chain(b"a".repeat(100).iter())
        {
            if tcp.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest)).await;
        started.elapsed()
    });
    // Meanwhile a normal client is served.
    for _ in 0..5 {
        assert_eq!(plain_get(addr, "/", &[]).await.status, 200);
    }
    let took = slow.await.unwrap();
    assert!(
        took < Duration::from_secs(3),
        "the slow client was not cut off: {took:?}"
    );
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn max_connections_caps_concurrent_clients() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[limits]\nmax_connections = 1\n";
    let t = Tether::start(&cfg).await;
    // The first connection holds the only slot.
    let mut hold = TcpStream::connect(t.addr()).await.unwrap();
    hold.write_all(b"GET /slow/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(HANG, hold.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second one is not served while the first stays open...
    let addr = t.addr();
    let second = tokio::spawn(async move { plain_get(addr, "/", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served beyond max_connections"
    );
    // ...and is once the first closes.
    drop(hold);
    assert_eq!(
        tokio::time::timeout(HANG, second).await.unwrap().unwrap(),
        200
    );
}
