//! SPEC section 12 on the admin listener: readiness and liveness, and a
//! drain with a deadline after which the sessions left fail over.

mod support;

use std::net::SocketAddr;

use support::*;

fn with_admin(cfg: String) -> String {
    cfg + "\n[admin]\nbind = \"127.0.0.1:0\"\n"
}

fn admin_of(t: &Tether) -> SocketAddr {
    t.running().admin_addr().expect("admin listener")
}

async fn metric(adm: SocketAddr, line_start: &str) -> Option<String> {
    let (_, body) = admin(adm, "GET", "/metrics", None).await;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

async fn backend_json(adm: SocketAddr, name: &str) -> serde_json::Value {
    let (st, body) = admin(adm, "GET", &format!("/api/backends/{name}"), None).await;
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn ready_follows_the_backends_and_live_stays_200() {
    let a = Backend::start("app1").await;
    let cfg = with_admin(config("", &[&a]))
        + "\n[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nfall = 1\nrise = 1\n";
    let t = Tether::start(&cfg).await;
    let adm = admin_of(&t);
    assert_eq!(admin(adm, "GET", "/ready", None).await.0, 200);
    assert_eq!(admin(adm, "GET", "/live", None).await.0, 200);

    let addr = a.kill().await;
    wait_state(adm, "app1", "down").await;
    let (st, body) = admin(adm, "GET", "/ready", None).await;
    assert_eq!(st, 503, "no backend up: not ready ({body})");
    assert!(body.contains("no backend is up"), "{body}");
    assert_eq!(admin(adm, "GET", "/live", None).await.0, 200, "still alive");

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _a = Backend::on("app1", listener);
    wait_state(adm, "app1", "up").await;
    assert_eq!(admin(adm, "GET", "/ready", None).await.0, 200);
}

#[tokio::test]
async fn a_drain_deadline_moves_the_sessions_left_when_it_passes() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let clock = manual_clock();
    let t = Tether::start_on(&with_admin(config("", &[&a, &b, &c])), clock.clone()).await;
    let adm = admin_of(&t);
    // Twelve sessions, each stored (a cookie's second request stores it).
    let mut sessions = Vec::new();
    for _ in 0..12 {
        let mut s = Session::new(t.addr());
        let home = s.get("/").await.backend();
        assert_eq!(s.get("/").await.backend(), home);
        sessions.push((s, home));
    }
    let target = sessions[0].1.clone();
    let on_target = sessions.iter().filter(|(_, h)| *h == target).count() as u64;

    let (st, body) = admin(
        adm,
        "POST",
        &format!("/api/backends/{target}/drain?deadline=10m"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(o["state"], "draining");
    assert_eq!(o["sessions"], on_target);
    assert_eq!(o["drain_deadline_secs_left"], 600.0);
    // The SPEC's `drain_deadline`: when the deadline falls, in UTC.
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(clock.now_ms() + 600_000);
    assert_eq!(
        o["drain_deadline"],
        humantime::format_rfc3339_seconds(at).to_string(),
        "{o}"
    );
    let gauge = format!("tether_backend_drain_seconds_left{{backend=\"{target}\"}} ");
    assert_eq!(metric(adm, &gauge).await, Some(format!("{gauge}600")));
    assert_eq!(
        admin(adm, "GET", &format!("/api/backends/{target}/drained"), None)
            .await
            .0,
        409,
        "sessions are left and the deadline is ahead"
    );

    // A millisecond before the deadline, everyone is still home.
    clock.advance_ms(600_000 - 1);
    for (s, home) in &mut sessions {
        let r = s.get("/").await;
        assert_eq!(
            (r.backend(), r.state()),
            (home.clone(), "continued".to_string())
        );
    }
    let left = backend_json(adm, &target).await;
    assert_eq!(left["drain_deadline_secs_left"], 0.001);

    // At the deadline the sessions left move, each once, with their own reason.
    clock.advance_ms(1);
    let lost = "tether_session_pins_lost_total{reason=\"drain_deadline\"} ";
    assert_eq!(metric(adm, lost).await, Some(format!("{lost}0")));
    for (s, home) in &mut sessions {
        let r = s.get("/").await;
        if *home == target {
            assert_ne!(r.backend(), target, "moved off the drained backend");
            assert_eq!(r.state(), "failover");
            let moved = r.backend();
            assert_eq!(
                s.get("/").await.backend(),
                moved,
                "and stays where it moved"
            );
        } else {
            assert_eq!(r.backend(), *home, "sessions elsewhere do not move");
        }
    }
    assert_eq!(metric(adm, lost).await, Some(format!("{lost}{on_target}")));
    assert_eq!(
        admin(adm, "GET", &format!("/api/backends/{target}/drained"), None)
            .await
            .0,
        200,
        "past the deadline the backend may be stopped"
    );

    // Enabling it again clears the deadline.
    let (st, _) = admin(adm, "POST", &format!("/api/backends/{target}/enable"), None).await;
    assert_eq!(st, 200);
    let o = backend_json(adm, &target).await;
    assert_eq!(o["state"], "up");
    assert!(o.get("drain_deadline_secs_left").is_none(), "{o}");
    assert!(o.get("drain_deadline").is_none(), "{o}");
}

#[tokio::test]
async fn a_drain_deadline_must_be_a_duration() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(config("", &[&a]))).await;
    let adm = admin_of(&t);
    for bad in ["soon", "0s", "8d"] {
        let (st, body) = admin(
            adm,
            "POST",
            &format!("/api/backends/app1/drain?deadline={bad}"),
            None,
        )
        .await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body.contains("deadline"), "{body}");
    }
    assert_eq!(
        backend_json(adm, "app1").await["state"],
        "up",
        "a refused drain changes nothing"
    );
}
