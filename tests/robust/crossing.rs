//! What crosses the proxy under stress: HTTP/2 cookie crumbs, slow uploads,
//! retries of new sessions, and backends that close idle connections.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

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
