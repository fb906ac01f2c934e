//! SPEC section 9: guarding sessions. Client binding, rate limits, URL ids,
//! cookieless floods, request hygiene.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

fn other_client() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

async fn owned_cookie(addr: std::net::SocketAddr, ua: &str) -> (String, String) {
    let r = plain_get(addr, "/", &[("user-agent", ua)]).await;
    let c = r.cookie_value("tether_sid").unwrap();
    // Its second request stores it.
    let again = plain_get(
        addr,
        "/",
        &[("user-agent", ua), ("cookie", &format!("tether_sid={c}"))],
    )
    .await;
    assert_eq!(again.state(), "continued");
    (c, again.backend())
}

#[tokio::test]
async fn ip_binding_treats_a_cookie_from_another_address_as_new() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config("bind_to = [\"ip\"]", &[&a, &b])).await;
    let (c, home) = owned_cookie(t.addr(), "ua").await;
    let stolen = plain_get_from(
        other_client(),
        t.addr(),
        "/",
        &[("cookie", &format!("tether_sid={c}"))],
    )
    .await;
    assert_eq!(stolen.state(), "new");
    assert_ne!(stolen.cookie_value("tether_sid").unwrap(), c);
    // The owner's session is untouched.
    let owner = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={c}"))]).await;
    assert_eq!(owner.state(), "continued");
    assert_eq!(owner.backend(), home);
}

#[tokio::test]
async fn prefix_binding_follows_the_client_within_its_network() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config("bind_to = [\"ip_prefix\"]", &[&a, &b])).await;
    let (c, home) = owned_cookie(t.addr(), "ua").await;
    let moved = plain_get_from(
        other_client(),
        t.addr(),
        "/",
        &[("cookie", &format!("tether_sid={c}"))],
    )
    .await;
    assert_eq!(
        moved.state(),
        "continued",
        "127.0.0.2 is in 127.0.0.1's /24"
    );
    assert_eq!(moved.backend(), home);
}

#[tokio::test]
async fn reject_mismatch_gets_403_and_the_owner_continues() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config(
        "bind_to = [\"ip\"]\non_mismatch = \"reject\"",
        &[&a, &b],
    ))
    .await;
    let adm_cfg = t.running().shared().clone();
    let (c, home) = owned_cookie(t.addr(), "ua").await;
    let hits = a.hits() + b.hits();
    let stolen = plain_get_from(
        other_client(),
        t.addr(),
        "/",
        &[("cookie", &format!("tether_sid={c}"))],
    )
    .await;
    assert_eq!(stolen.status, 403);
    assert_eq!(
        a.hits() + b.hits(),
        hits,
        "a rejected request never reaches a backend"
    );
    let owner = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={c}"))]).await;
    assert_eq!(
        (owner.state().as_str(), owner.backend()),
        ("continued", home)
    );
    let metrics = adm_cfg.metrics.render(&[], 0, 0.0);
    assert!(
        metrics.contains("tether_binding_mismatches_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn user_agent_binding() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&config("bind_to = [\"user_agent\"]", &[&a, &b])).await;
    let (c, home) = owned_cookie(t.addr(), "Firefox/140").await;
    let cookie = format!("tether_sid={c}");
    let other = plain_get(
        t.addr(),
        "/",
        &[("cookie", &cookie), ("user-agent", "curl/8")],
    )
    .await;
    assert_eq!(other.state(), "new");
    let owner = plain_get(
        t.addr(),
        "/",
        &[("cookie", &cookie), ("user-agent", "Firefox/140")],
    )
    .await;
    assert_eq!(
        (owner.state().as_str(), owner.backend()),
        ("continued", home)
    );
}

#[tokio::test]
async fn session_rate_limit_429_then_served_again() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[limits]\nsession_rate = 10\nsession_burst = 10\n";
    let t = Tether::start(&cfg).await;
    let (c, _) = owned_cookie(t.addr(), "ua").await; // 1 of the burst used
    let cookie = format!("tether_sid={c}");
    // Rapid requests: the bucket admits its burst plus what refills meanwhile
    // (10/s), never more, and then says 429.
    let started = std::time::Instant::now();
    let mut ok = 1; // owned_cookie's second request
    let mut limited = 0;
    for _ in 0..30 {
        match plain_get(t.addr(), "/", &[("cookie", &cookie)])
            .await
            .status
            .as_u16()
        {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as u32;
    assert!(
        ok <= 10 + refilled + 1,
        "{ok} admitted, burst 10 + {refilled} refilled"
    );
    assert!(ok >= 10, "the burst of 10 is admitted: {ok}");
    assert!(limited > 0);
    // A limited request gets 429 with Retry-After and never reaches a
    // backend. (On a loaded machine a token may refill between two
    // requests, so the next one is not assumed limited: the first 429 is.)
    let mut refused = false;
    for _ in 0..30 {
        let hits = a.hits();
        let r = plain_get(t.addr(), "/", &[("cookie", &cookie)]).await;
        if r.status == 429 {
            assert_eq!(r.headers["retry-after"], "1");
            assert_eq!(a.hits(), hits, "a limited request never reaches a backend");
            refused = true;
            break;
        }
    }
    assert!(refused, "the bucket stays empty under rapid requests");
    // One token comes back every 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        plain_get(t.addr(), "/", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    // Another session is not affected.
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
}

#[tokio::test]
async fn new_session_rate_limits_minting_per_client_ip() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[limits]\nnew_session_rate = 5\n";
    let t = Tether::start(&cfg).await;
    let started = std::time::Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..20 {
        match plain_get(t.addr(), "/", &[]).await.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as u32;
    assert!(
        ok <= 5 + refilled + 1,
        "{ok} sessions minted; burst 5 + {refilled}"
    );
    assert!(limited > 0);
    // Another address has its own budget.
    assert_eq!(
        plain_get_from(other_client(), t.addr(), "/", &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn query_source_pins_by_the_url_parameter() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let t = Tether::start(&config(
        "source = \"query\"\nquery_param = \"sid\"",
        &[&a, &b, &c],
    ))
    .await;
    for i in 0..10 {
        let path = format!("/page?x=1&sid=user{i}");
        let first = plain_get(t.addr(), &path, &[]).await;
        assert_eq!(first.state(), "new");
        assert!(first.set_cookie("tether_sid").is_none());
        for _ in 0..3 {
            let r = plain_get(t.addr(), &format!("/other?sid=user{i}"), &[]).await;
            assert_eq!(r.backend(), first.backend());
            assert_eq!(r.state(), "continued");
        }
    }
}

#[tokio::test]
async fn a_cookieless_flood_evicts_nobody_and_stays_bounded() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let cfg = config("", &[&a, &b]) + "\n[store]\nmax_sessions = 1000\n";
    let t = Tether::start(&cfg).await;
    let mut users = vec![];
    for _ in 0..100 {
        let mut s = Session::new(t.addr());
        let home = s.get("/").await.backend();
        s.get("/").await;
        users.push((s, home));
    }
    // 5,000 requests that never return the cookie (five times the store's
    // bound), over a few connections.
    let addr = t.addr();
    let mut flood = vec![];
    for _ in 0..4 {
        flood.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut s, c) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(c);
            for _ in 0..1250 {
                let req = http::Request::get("/")
                    .header("host", "x")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let r = s.send_request(req).await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
            }
        }));
    }
    for f in flood {
        f.await.unwrap();
    }
    let store = &t.running().shared().store;
    assert!(tether::store::SessionStore::len(store) <= 1000);
    assert_eq!(
        tether::store::SessionStore::live(store),
        100,
        "the flood stored nothing"
    );
    for (s, home) in &mut users {
        let r = s.get("/").await;
        assert_eq!(r.state(), "continued");
        assert_eq!(&r.backend(), home);
    }
}

/// Sends a raw request head (and body) and returns what came back; the
/// connection must be closed by tether.
async fn framing(t: &Tether, bytes: &[u8]) -> String {
    raw(t.addr(), bytes).await
}

#[tokio::test]
async fn ambiguous_framing_gets_400_closes_and_never_reaches_a_backend() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding then Content-Length, after a clean request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
        (
            "differing Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "invalid Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
        ),
        (
            "CR not followed by LF",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
        ),
        ("no Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        (
            "Transfer-Encoding not chunked last",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let r = framing(&t, bytes).await;
        // The 400 ends the connection (a clean request before it may have
        // been answered first).
        assert!(
            r.trim_start_matches(|_| false)
                .contains("HTTP/1.1 400 Bad Request")
                && r.matches("HTTP/1.1 ").count() <= 3,
            "{what}: {r:?}"
        );
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 200"),
            "{what}: {r:?}"
        );
    }
    assert_eq!(
        a.hits(),
        1,
        "only the one clean request reached the backend"
    );
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_chunked_body_that_breaks_mid_stream_gets_400_not_502() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let r = framing(
        &t,
        b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
}

/// RFC 9112 §7.1.1 allows tokens, quoted strings and HTAB in a chunk
/// extension; a control byte there (which hyper would pass over) breaks the
/// body like an invalid size: 400, in the first chunk line or a later one.
/// A well-formed extension is ignored and the request served.
#[tokio::test]
async fn a_control_byte_in_a_chunk_size_line_gets_400() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let head = "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    for (body, want) in [
        ("5;\0\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 400"),
        ("5\r\nhello\r\n3;x\x01\r\nabc\r\n0\r\n\r\n", "HTTP/1.1 400"),
        ("5;a=\"b\tc\" ; d\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 200"),
    ] {
        let r = framing(&t, format!("{head}{body}").as_bytes()).await;
        assert!(r.starts_with(want), "{body:?}: {r:?}");
    }
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_stalled_body_is_cut_at_client_body() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nclient_body = \"300ms\"\n";
    let t = Tether::start(&cfg).await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-some")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_idle_connection_is_cut_at_keepalive() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nkeepalive = \"300ms\"\n";
    let t = Tether::start(&cfg).await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = std::time::Instant::now();
    let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn host_prefix_with_secure_never_fails_check() {
    let dir = std::env::temp_dir().join(format!("tether-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("tether.toml");
    std::fs::write(
        &p,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\ncookie = \"__Host-sid\"\nsecure = \"never\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tether.toml:") && err.contains("__Host-"),
        "{err}"
    );
}

/// Rotates `t`'s secret: a new one current, the old one (the test secret)
/// in `previous_secret_files`, the rest of `cfg` unchanged.
fn rotate_secret(t: &Tether, cfg: &str, name: &str) {
    let dir = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("old-secret");
    std::fs::write(&old, SECRET).unwrap();
    let rotated = cfg.replace(
        &format!("secret = \"{SECRET}\""),
        &format!(
            "secret = \"a-brand-new-secret-0123456789\"\nprevious_secret_files = [\"{}\"]",
            old.display()
        ),
    );
    let next = tether::config::from_str(&rotated, &repo().join("test.toml"), None).unwrap();
    t.running().apply(next).expect("the rotation applies");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rotating the secret (the new one current, the old one in
/// `previous_secret_files`) keeps bound sessions: a cookie bound under the
/// old secret still matches its own client, and still no other.
#[tokio::test]
async fn a_bound_session_survives_a_secret_rotation() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let bound = "bind_to = [\"ip\", \"user_agent\"]\non_mismatch = \"reject\"";
    let t = Tether::start(&config(bound, &[&a, &b])).await;
    let (cookie, home) = owned_cookie(t.addr(), "ua/1").await;

    rotate_secret(&t, &config(bound, &[&a, &b]), "rotate");

    let jar = format!("tether_sid={cookie}");
    let r = plain_get(t.addr(), "/", &[("user-agent", "ua/1"), ("cookie", &jar)]).await;
    assert_eq!(r.status, 200, "its own client is not refused");
    assert_eq!((r.state(), r.backend()), ("continued".to_string(), home));
    let thief = plain_get_from(
        other_client(),
        t.addr(),
        "/",
        &[("user-agent", "ua/1"), ("cookie", &jar)],
    )
    .await;
    assert_eq!(thief.status, 403, "another client still is");
    t.stop().await;
}

/// After a rotation, app-key pins learned under the old secret are still
/// found (their store keys are digests under it): the session stays put.
#[tokio::test]
async fn app_key_pins_survive_a_secret_rotation() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let source = "source = \"app_cookie\"\napp_cookie = \"JSESSIONID\"";
    let t = Tether::start(&config(source, &[&a, &b, &c])).await;
    let mut homes = vec![];
    for i in 0..6 {
        let value = format!("rotating-{i}");
        let r = plain_get(t.addr(), &format!("/set-cookie/JSESSIONID/{value}"), &[]).await;
        homes.push((value, r.backend()));
    }
    rotate_secret(&t, &config(source, &[&a, &b, &c]), "rotate-app");
    for (value, home) in &homes {
        for _ in 0..2 {
            let jar = format!("JSESSIONID={value}");
            let r = plain_get(t.addr(), "/", &[("cookie", &jar)]).await;
            assert_eq!((r.state(), &r.backend()), ("continued".to_string(), home));
        }
    }
    t.stop().await;
}
