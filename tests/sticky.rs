//! SPEC section 3: the session lifecycle, one test per state and control value.

mod support;

use support::*;

async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    )
}

#[tokio::test]
async fn new_then_continued_on_the_same_backend() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config("", &[&a, &b, &c])).await;
    let mut s = Session::new(t.addr());
    let first = s.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.state(), "new");
    let cookie = s
        .cookie
        .clone()
        .expect("a new session sets tether's cookie");
    assert!(cookie.len() >= 22, "id carries >= 128 bits: {cookie}");
    let home = first.backend();
    for _ in 0..20 {
        let r = s.get("/").await;
        assert_eq!(r.backend(), home);
        assert_eq!(r.state(), "continued");
        assert!(
            r.set_cookie("tether_sid").is_none(),
            "no Set-Cookie while the cookie is fresh"
        );
    }
    assert_eq!(s.cookie.as_deref(), Some(cookie.as_str()));
}

#[tokio::test]
async fn cookies_tether_did_not_issue_start_a_new_session() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config("", &[&a, &b, &c])).await;
    let mut s = Session::new(t.addr());
    s.get("/").await;
    let good = s.cookie.clone().unwrap();
    let mut tampered = good.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = {
        // A cookie minted by a tether with another secret.
        let other =
            Tether::start(&config("", &[&a]).replace(SECRET, "another-secret-0123456789")).await;
        let mut o = Session::new(other.addr());
        o.get("/").await;
        o.cookie.unwrap()
    };
    for bad in [
        tampered.as_str(),
        &good[..good.len() - 3],
        "garbage",
        "",
        foreign.as_str(),
    ] {
        let r = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={bad}"))]).await;
        assert_eq!(r.state(), "new", "cookie {bad:?}");
        let fresh = r.cookie_value("tether_sid").expect("a fresh cookie");
        assert_ne!(fresh, bad);
    }
}

#[tokio::test]
async fn idle_timeout_expires_the_session_with_a_fresh_id() {
    let (a, b, c) = three().await;
    let clock = manual_clock();
    let t = Tether::start_on(
        &config("idle_timeout = \"300ms\"", &[&a, &b, &c]),
        clock.clone(),
    )
    .await;
    let mut s = Session::new(t.addr());
    s.get("/").await;
    assert_eq!(s.get("/").await.state(), "continued");
    // Idle one millisecond short of idle_timeout: the same session, and its
    // idle clock starts again.
    clock.advance_ms(299);
    assert_eq!(s.get("/").await.state(), "continued");
    let old = s.cookie.clone().unwrap();
    // Idle for exactly idle_timeout: over.
    clock.advance_ms(300);
    let r = s.get("/").await;
    assert_eq!(r.state(), "expired");
    assert_ne!(s.cookie.clone().unwrap(), old, "never the old id");
    assert_eq!(s.get("/").await.state(), "continued");
}

#[tokio::test]
async fn absolute_timeout_expires_an_active_session() {
    let (a, b, c) = three().await;
    let clock = manual_clock();
    let t = Tether::start_on(
        &config(
            "idle_timeout = \"10s\"\nabsolute_timeout = \"500ms\"",
            &[&a, &b, &c],
        ),
        clock.clone(),
    )
    .await;
    let mut s = Session::new(t.addr());
    assert_eq!(s.get("/").await.state(), "new");
    // Active all along, up to one millisecond short of absolute_timeout.
    for step in [100, 100, 100, 100, 99] {
        clock.advance_ms(step);
        assert_eq!(s.get("/").await.state(), "continued");
    }
    // absolute_timeout after it began: over, however active.
    clock.advance_ms(1);
    assert_eq!(s.get("/").await.state(), "expired");
    assert_eq!(s.get("/").await.state(), "continued");
}

/// The cookie carries when it was last seen, re-issued once a tenth of
/// `idle_timeout` has passed: often enough that an instance judging by the
/// cookie alone errs by at most that much, rarely enough that most
/// responses carry no Set-Cookie.
#[tokio::test]
async fn the_cookie_is_refreshed_every_tenth_of_idle_timeout() {
    let (a, b, c) = three().await;
    let clock = manual_clock();
    let t = Tether::start_on(
        &config("idle_timeout = \"1s\"", &[&a, &b, &c]),
        clock.clone(),
    )
    .await;
    let mut s = Session::new(t.addr());
    assert!(s.get("/").await.set_cookie("tether_sid").is_some());
    clock.advance_ms(99);
    let r = s.get("/").await;
    assert_eq!(r.state(), "continued");
    assert_eq!(r.set_cookie("tether_sid"), None, "refreshed too soon");
    clock.advance_ms(1);
    let r = s.get("/").await;
    assert_eq!(r.state(), "continued");
    assert!(r.set_cookie("tether_sid").is_some(), "never refreshed");
    // The refresh restarts the granule.
    clock.advance_ms(99);
    assert_eq!(s.get("/").await.set_cookie("tether_sid"), None);
}

#[tokio::test]
async fn failover_repins_and_does_not_move_back() {
    let (a, b, c) = three().await;
    let backends = [a, b, c];
    let t = Tether::start(&config("", &backends.iter().collect::<Vec<_>>())).await;
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    let [a, b, c] = backends;
    let (dead, mut alive): (Vec<_>, Vec<_>) = [a, b, c].into_iter().partition(|x| x.name == home);
    let dead = dead.into_iter().next().unwrap();
    let port = dead.kill().await;

    let r = s.get("/").await;
    assert_eq!(
        r.status, 200,
        "the request that found the backend dead is retried"
    );
    assert_eq!(r.state(), "failover");
    let new_home = r.backend();
    assert_ne!(new_home, home);
    assert!(
        r.set_cookie("tether_sid").is_some(),
        "the cookie follows the new pin"
    );

    // The old backend returns on the same port: the session stays where it is.
    let listener = tokio::net::TcpListener::bind(port).await.unwrap();
    alive.push(Backend::on(&home, listener));
    for _ in 0..5 {
        let r = s.get("/").await;
        assert_eq!(r.backend(), new_home);
        assert_eq!(r.state(), "continued");
    }
}

#[tokio::test]
async fn a_session_from_another_instance_is_adopted() {
    let (a, b, c) = three().await;
    let cfg = config("", &[&a, &b, &c]);
    let one = Tether::start(&cfg).await;
    let mut s = Session::new(one.addr());
    let home = s.get("/").await.backend();
    let two = Tether::start(&cfg).await;
    s.addr = two.addr();
    for _ in 0..5 {
        let r = s.get("/").await;
        assert_eq!(r.state(), "continued");
        assert_eq!(r.backend(), home);
    }
}

#[tokio::test]
async fn end_clears_the_cookie_and_the_old_id_stays_dead() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config("", &[&a, &b, &c])).await;
    let mut s = Session::new(t.addr());
    s.get("/").await;
    s.get("/").await; // the store now knows the session
    let old = s.cookie.clone().unwrap();
    let r = s.get("/control/end").await;
    let sc = r.set_cookie("tether_sid").expect("end clears the cookie");
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert!(
        r.headers.get("tether-session-control").is_none(),
        "control never reaches the client"
    );
    let replay = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={old}"))]).await;
    assert_eq!(replay.state(), "expired");
    assert_ne!(replay.cookie_value("tether_sid").unwrap(), old);
}

#[tokio::test]
async fn end_on_the_first_response_also_kills_the_id() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config("", &[&a, &b, &c])).await;
    let r = plain_get(t.addr(), "/control/end", &[]).await;
    // A new session ended on its very first response: tether may omit the
    // cookie entirely or clear it; either way no live id escapes.
    if let Some(v) = r.cookie_value("tether_sid") {
        assert!(
            r.set_cookie("tether_sid").unwrap().contains("Max-Age=0"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn regenerate_issues_a_new_id_on_the_same_backend() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config("", &[&a, &b, &c])).await;
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    let old = s.cookie.clone().unwrap();
    let r = s.get("/control/regenerate").await;
    let new = s.cookie.clone().unwrap();
    assert_ne!(new, old);
    assert_eq!(r.backend(), home);
    let next = s.get("/").await;
    assert_eq!(next.state(), "continued");
    assert_eq!(next.backend(), home);
    let replay = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={old}"))]).await;
    assert_eq!(replay.state(), "expired", "the old id is invalidated");
}

#[tokio::test]
async fn app_cookie_pins_where_the_app_set_it() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config(
        "source = \"app_cookie\"\napp_cookie = \"JSESSIONID\"",
        &[&a, &b, &c],
    ))
    .await;
    let mut homes = std::collections::BTreeSet::new();
    for i in 0..12 {
        let value = format!("app-session-{i}");
        let r = plain_get(t.addr(), &format!("/set-cookie/JSESSIONID/{value}"), &[]).await;
        assert_eq!(r.state(), "new");
        assert!(
            r.set_cookie("tether_sid").is_none(),
            "app_cookie mode issues no cookie"
        );
        let home = r.backend();
        homes.insert(home.clone());
        for _ in 0..3 {
            let r = plain_get(t.addr(), "/", &[("cookie", &format!("JSESSIONID={value}"))]).await;
            assert_eq!(r.backend(), home, "pinned to the backend that set it");
            assert_eq!(r.state(), "continued");
            assert_eq!(
                r.seen("cookie"),
                vec![format!("JSESSIONID={value}")],
                "the app's cookie is forwarded"
            );
        }
    }
    assert!(homes.len() >= 2, "sessions spread over the pool: {homes:?}");
}

#[tokio::test]
async fn header_source_pins_by_the_header_value() {
    let (a, b, c) = three().await;
    let t = Tether::start(&config(
        "source = \"header\"\nheader = \"X-Session-Id\"",
        &[&a, &b, &c],
    ))
    .await;
    for i in 0..10 {
        let key = format!("user-{i}");
        let first = plain_get(t.addr(), "/", &[("x-session-id", &key)]).await;
        assert_eq!(first.state(), "new");
        for _ in 0..3 {
            let r = plain_get(t.addr(), "/", &[("x-session-id", &key)]).await;
            assert_eq!(r.backend(), first.backend());
            assert_eq!(r.state(), "continued");
        }
    }
}

#[tokio::test]
async fn adding_a_backend_moves_no_session() {
    let (a, b, c) = three().await;
    let d = Backend::start("app4").await;
    // Bounded load off: this test is about the ring alone.
    let session = "balance_factor = 0.0";
    let t = Tether::start(&config(session, &[&a, &b, &c])).await;
    let mut sessions = vec![];
    for _ in 0..60 {
        let mut s = Session::new(t.addr());
        let home = s.get("/").await.backend();
        sessions.push((s, home));
    }
    let grown = tether::config::from_str(
        &config(session, &[&a, &b, &c, &d]),
        &repo().join("t.toml"),
        None,
    )
    .unwrap();
    t.running().apply(grown).expect("reload applies");
    for (s, home) in &mut sessions {
        let r = s.get("/").await;
        assert_eq!(&r.backend(), home, "a pin moved when a backend was added");
        assert_eq!(r.state(), "continued");
    }
    let mut fresh_on_d = 0;
    for _ in 0..200 {
        if plain_get(t.addr(), "/", &[]).await.backend() == "app4" {
            fresh_on_d += 1;
        }
    }
    assert!(
        (20..=90).contains(&fresh_on_d),
        "the new backend takes about a quarter of new sessions: {fresh_on_d}/200"
    );
}
