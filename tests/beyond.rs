//! SPEC section 11: strict sessions and the answers gRPC clients get from
//! tether itself.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use support::*;

fn with_admin(cfg: String) -> String {
    cfg + "\n[admin]\nbind = \"127.0.0.1:0\"\n"
}

fn admin_addr(t: &Tether) -> SocketAddr {
    t.running().admin_addr().expect("admin listener")
}

async fn set_enabled(adm: SocketAddr, name: &str, enabled: bool) {
    let verb = if enabled { "enable" } else { "disable" };
    let (st, body) = admin(adm, "POST", &format!("/api/backends/{name}/{verb}"), None).await;
    assert_eq!(st, 200, "{verb} {name}: {body}");
}

/// A refusal of a strict session: 503 with `Retry-After`, and no new cookie.
fn assert_refused(r: &Resp, cookie: &str) {
    assert_eq!(r.status, 503, "strict session refused, not moved: {r:?}");
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    assert_eq!(r.set_cookie(cookie), None, "no new cookie: {r:?}");
}

#[tokio::test]
async fn strict_session_is_refused_while_its_backend_is_disabled_and_stays_pinned() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&with_admin(config("strict = true", &[&a, &b]))).await;
    let adm = admin_addr(&t);
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    let cookie = s.cookie.clone();
    assert!(cookie.is_some(), "a session was minted");
    assert_eq!(s.get("/").await.backend(), home);
    let hits = a.hits() + b.hits();

    set_enabled(adm, &home, false).await;
    for _ in 0..3 {
        assert_refused(&s.get("/").await, "tether_sid");
    }
    assert_eq!(
        a.hits() + b.hits(),
        hits,
        "no backend saw the refused requests"
    );
    assert_eq!(s.cookie, cookie, "the client keeps its cookie");

    set_enabled(adm, &home, true).await;
    let r = s.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), home, "back on the same backend");
    assert_eq!(r.state(), "continued", "the session never moved");

    // A new session is placed as usual while a backend is off.
    set_enabled(adm, &home, false).await;
    let r = plain_get(t.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.backend(), home);
}

#[tokio::test]
async fn strict_header_session_is_refused_while_its_backend_is_down() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let cfg = config(
        "source = \"header\"\nheader = \"X-Session-Id\"\nstrict = true",
        &[&a, &b],
    );
    let t = Tether::start(&with_admin(cfg)).await;
    let adm = admin_addr(&t);
    let h = [("x-session-id", "agent-7")];
    // The second sighting stores the key on the backend the ring chose.
    let home = plain_get(t.addr(), "/", &h).await.backend();
    assert_eq!(plain_get(t.addr(), "/", &h).await.backend(), home);

    set_enabled(adm, &home, false).await;
    let r = plain_get(t.addr(), "/", &h).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.contains_key("retry-after"), "{r:?}");

    set_enabled(adm, &home, true).await;
    let r = plain_get(t.addr(), "/", &h).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, home));
}

#[tokio::test]
async fn strict_session_is_refused_while_its_backend_is_stopped() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let cfg = config("strict = true", &[&a, &b])
        + "\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let t = Tether::start(&with_admin(cfg)).await;
    let adm = admin_addr(&t);
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    let cookie = s.cookie.clone();
    let (stopped, other) = if home == "app1" { (a, b) } else { (b, a) };
    let addr = stopped.kill().await;

    // Refused whether or not the health checks have noticed yet: the
    // connection refusal is not retried elsewhere either.
    for _ in 0..3 {
        assert_refused(&s.get("/").await, "tether_sid");
    }
    assert_eq!(other.hits(), 0, "the session never reached another backend");
    assert_eq!(s.cookie, cookie);

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _back = Backend::on(&home, listener);
    wait_state(adm, &home, "up").await;
    let r = s.get("/").await;
    assert_eq!(
        (r.status.as_u16(), r.backend()),
        (200, home.clone()),
        "{r:?}"
    );
    assert_eq!(r.state(), "continued");
}

/// A gRPC call with no eligible backend (its only backend disabled).
async fn grpc_call(addr: SocketAddr, proto: Proto, content_type: &str) -> Resp {
    let req = Request::post("/helloworld.Greeter/SayHello")
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    send(addr, proto, req).await
}

#[tokio::test]
async fn grpc_request_tether_answers_gets_200_with_grpc_status() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(config_tls("", &[&a]))).await;
    set_enabled(admin_addr(&t), "app1", false).await;
    let (tls, plain) = (t.addrs[0], t.addrs[1]);

    for (addr, proto, ct) in [
        (tls, Proto::TlsH2, "application/grpc"),
        (tls, Proto::TlsH2, "application/grpc+proto"),
        (plain, Proto::Plain, "application/grpc"),
    ] {
        let r = grpc_call(addr, proto, ct).await;
        assert_eq!(r.status, 200, "{proto:?} {ct}: {r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc", "{r:?}");
        assert_eq!(r.headers["grpc-status"], "14", "UNAVAILABLE: {r:?}");
        assert!(r.headers.contains_key("grpc-message"), "{r:?}");
        assert!(r.body.is_empty(), "trailers-only: {r:?}");
    }
    assert_eq!(a.hits(), 0);

    // Anything else still gets the plain 503.
    let r = grpc_call(plain, Proto::Plain, "application/json").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(!r.headers.contains_key("grpc-status"), "{r:?}");
}
