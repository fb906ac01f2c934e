//! SPEC section 4: rotate mode.

mod support;

use support::*;

#[tokio::test]
async fn weights_are_honoured_and_no_cookie_is_issued() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    let c = Backend::start("app3").await;
    let mut cfg = config("mode = \"rotate\"", &[&a, &b, &c]);
    cfg = cfg.replacen(
        &format!("name = \"app1\"\naddress = \"{}\"\n", a.addr),
        &format!("name = \"app1\"\naddress = \"{}\"\nweight = 3\n", a.addr),
        1,
    );
    let t = Tether::start(&cfg).await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..50 {
        let r = plain_get(t.addr(), "/", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.state(), "rotated");
        assert!(
            r.set_cookie("tether_sid").is_none(),
            "rotate mode sets no cookie"
        );
        *seen.entry(r.backend()).or_insert(0) += 1;
    }
    // Smooth WRR is exact over whole cycles: 10 cycles of 3+1+1.
    assert_eq!(seen["app1"], 30, "{seen:?}");
    assert_eq!(seen["app2"], 10, "{seen:?}");
    assert_eq!(seen["app3"], 10, "{seen:?}");
}

#[tokio::test]
async fn a_refused_connection_rotates_to_the_next_backend() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    let t = Tether::start(&config("mode = \"rotate\"", &[&a, &b])).await;
    a.kill().await;
    for _ in 0..6 {
        let r = plain_get(t.addr(), "/", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "app2");
    }
}
