//! What crosses the proxy under stress: HTTP/2 cookie crumbs, slow uploads,
//! retries of new sessions, and backends that close idle connections.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

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
