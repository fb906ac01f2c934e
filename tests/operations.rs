//! Operating the pool: health checks, passive detection, drain, disable,
//! failover under load, the admin API, metrics, the status page, reload,
//! certificate renewal.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use support::*;

const FAST_HEALTH: &str =
    "\n[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";

fn with_admin(cfg: String) -> String {
    cfg + FAST_HEALTH + "\n[admin]\nbind = \"127.0.0.1:0\"\n"
}

fn admin_addr(t: &Tether) -> SocketAddr {
    t.running().admin_addr().expect("admin listener")
}

/// A backend whose /healthz answers what `healthy` says.
struct Flaky {
    addr: SocketAddr,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

async fn flaky(name: &'static str) -> Flaky {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let task = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ok = h.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let status = if req.uri().path() == "/healthz" && !ok {
                            500
                        } else {
                            200
                        };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Flaky {
        addr,
        healthy,
        _task: task,
    }
}

#[tokio::test]
async fn a_failing_health_check_marks_down_and_rise_brings_it_back() {
    let f = flaky("flaky").await;
    let other = Backend::start("steady").await;
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nsecret = \"{SECRET}\"\n[log]\naccess = false\n\
         [[backend]]\nname = \"flaky\"\naddress = \"{}\"\n[[backend]]\nname = \"steady\"\naddress = \"{}\"\n",
        f.addr, other.addr
    );
    let t = Tether::start(&with_admin(cfg)).await;
    let a = admin_addr(&t);
    wait_state(a, "flaky", "up").await;
    f.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    wait_state(a, "flaky", "down").await;
    // interval x fall = 100 ms; allow scheduling slack.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..20 {
        assert_eq!(
            plain_get(t.addr(), "/", &[]).await.backend(),
            "steady",
            "a down backend takes no new session"
        );
    }
    f.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_state(a, "flaky", "up").await;
}

#[tokio::test]
async fn passive_failures_mark_a_backend_down() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    // Slow active checks, so only passive detection can act in time.
    let cfg = config("", &[&a, &b])
        + "\n[health]\ninterval = \"60s\"\nfall = 2\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let t = Tether::start(&cfg).await;
    a.kill().await;
    for _ in 0..10 {
        assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
    }
    wait_state(admin_addr(&t), "app1", "down").await;
}

#[tokio::test]
async fn drain_keeps_old_sessions_and_sends_new_ones_elsewhere() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    // Bounded load off: only app1's sessions return, which would make it look full.
    let t = Tether::start(&with_admin(config("balance_factor = 0.0", &[&a, &b, &c]))).await;
    let adm = admin_addr(&t);
    let mut on_app1 = vec![];
    while on_app1.len() < 5 {
        let mut s = Session::new(t.addr());
        if s.get("/").await.backend() == "app1" {
            s.get("/").await;
            on_app1.push(s);
        }
    }
    let (st, body) = admin(adm, "GET", "/api/backends/app1/drained", None).await;
    assert_eq!(st, 409, "not draining yet: {body}");
    let (st, body) = admin(adm, "POST", "/api/backends/app1/drain", None).await;
    assert_eq!(st, 200);
    assert!(body.contains("\"state\":\"draining\""), "{body}");
    for s in &mut on_app1 {
        let r = s.get("/").await;
        assert_eq!(r.backend(), "app1", "a draining backend keeps its sessions");
        assert_eq!(r.state(), "continued");
    }
    for _ in 0..100 {
        assert_ne!(
            plain_get(t.addr(), "/", &[]).await.backend(),
            "app1",
            "no new session on a draining backend"
        );
    }
    let (st, _) = admin(adm, "GET", "/api/backends/app1/drained", None).await;
    assert_eq!(st, 409, "still holds live sessions");
    for s in &mut on_app1 {
        assert!(s
            .get("/control/end")
            .await
            .set_cookie("tether_sid")
            .unwrap()
            .contains("Max-Age=0"));
    }
    let (st, body) = admin(adm, "GET", "/api/backends/app1/drained", None).await;
    assert_eq!(st, 200, "drained once its last session ended: {body}");
    let (st, _) = admin(adm, "POST", "/api/backends/app1/enable", None).await;
    assert_eq!(st, 200);
    wait_state(adm, "app1", "up").await;
}

#[tokio::test]
async fn disable_fails_sessions_over_at_once() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let t = Tether::start(&with_admin(config("", &[&a, &b, &c]))).await;
    let adm = admin_addr(&t);
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    s.get("/").await;
    let (st, _) = admin(adm, "POST", &format!("/api/backends/{home}/disable"), None).await;
    assert_eq!(st, 200);
    let r = s.get("/").await;
    assert_eq!(r.state(), "failover");
    assert_ne!(r.backend(), home);
    let new_home = r.backend();
    admin(adm, "POST", &format!("/api/backends/{home}/enable"), None).await;
    assert_eq!(s.get("/").await.backend(), new_home, "does not move back");
}

#[tokio::test]
async fn killing_one_of_three_moves_only_its_own_sessions() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    // Generous probe timeouts: on a loaded machine a slow probe must not mark a
    // *surviving* backend down (that would move sessions this test says stay).
    let cfg = config("", &[&a, &b, &c])
        + "\n[health]\ninterval = \"100ms\"\ntimeout = \"2s\"\nfall = 3\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let t = Tether::start(&cfg).await;
    let mut sessions = Vec::new();
    for _ in 0..100 {
        let mut s = Session::new(t.addr());
        let home = s.get("/").await.backend();
        sessions.push((s, home));
    }
    let victim = sessions[0].1.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for (mut s, home) in sessions {
        let (stop, done) = (stop.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = s.get("/").await;
                if r.status == 200 {
                    seen.push(r.backend());
                } else {
                    errors += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (home, seen, errors)
        }));
    }
    // 100 clients loop; kill the victim mid-traffic, then let every client
    // make several more requests.
    eventually("300 requests before the kill", || {
        done.load(Ordering::SeqCst) >= 300
    })
    .await;
    let mut pool: HashMap<String, Backend> =
        [a, b, c].into_iter().map(|b| (b.name.clone(), b)).collect();
    pool.remove(&victim).unwrap().kill().await;
    let at_kill = done.load(Ordering::SeqCst);
    eventually("600 requests after the kill", || {
        done.load(Ordering::SeqCst) >= at_kill + 600
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (mut victims, mut errors) = (0, 0);
    for l in loops {
        let (home, seen, e) = l.await.unwrap();
        errors += e;
        if home == victim {
            victims += 1;
            let last = seen.last().unwrap();
            assert_ne!(*last, victim, "a dead backend's session found a new home");
            let first_move = seen.iter().position(|b| *b != victim).unwrap();
            assert!(
                seen[first_move..].iter().all(|b| b == last),
                "moved once and stayed: {seen:?}"
            );
        } else {
            assert!(
                seen.iter().all(|b| *b == home),
                "a session on a surviving backend moved: {home} -> {seen:?}"
            );
        }
    }
    assert!(victims > 0);
    assert_eq!(errors, 0, "clients saw errors");
}

#[tokio::test]
async fn admin_api_objects_404_and_token() {
    let a = Backend::start("app1").await;
    let token_file = std::env::temp_dir().join(format!("tether-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let cfg = config("", &[&a])
        + &format!(
            "\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        );
    let t = Tether::start(&cfg).await;
    let adm = admin_addr(&t);
    assert_eq!(admin(adm, "GET", "/api/backends", None).await.0, 401);
    assert_eq!(
        admin(adm, "GET", "/api/backends", Some("wrong")).await.0,
        401
    );
    let (st, body) = admin(adm, "GET", "/api/backends/app1", Some("s3cret-token")).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "app1");
    assert_eq!(v["address"], a.addr.to_string());
    assert_eq!(v["weight"], 1);
    assert_eq!(v["state"], "up");
    assert_eq!(v["sessions"], 0);
    assert_eq!(
        admin(adm, "GET", "/api/backends/nope", Some("s3cret-token"))
            .await
            .0,
        404
    );
    assert_eq!(
        admin(
            adm,
            "POST",
            "/api/backends/nope/drain",
            Some("s3cret-token")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        admin(adm, "GET", "/nothing", Some("s3cret-token")).await.0,
        404
    );
}

#[tokio::test]
async fn sessions_per_backend_are_live_and_exact() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&with_admin(config("", &[&a, &b]))).await;
    let adm = admin_addr(&t);
    let mut per: HashMap<String, u64> = HashMap::new();
    let mut all = vec![];
    for _ in 0..30 {
        let mut s = Session::new(t.addr());
        let home = s.get("/").await.backend();
        s.get("/").await; // returning cookie: now a live stored session
        *per.entry(home).or_default() += 1;
        all.push(s);
    }
    for (name, _, sessions) in backends(adm).await {
        assert_eq!(sessions, per.get(&name).copied().unwrap_or(0), "{name}");
    }
    for s in &mut all {
        s.get("/control/end").await;
    }
    for (name, _, sessions) in backends(adm).await {
        assert_eq!(sessions, 0, "{name}");
    }
}

#[tokio::test]
async fn metrics_count_upstream_connections_opened_and_pooled() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(config("", &[&a]))).await;
    let adm = admin_addr(&t);
    // One request after another: the first opens a connection to the
    // backend, the rest reuse it from the pool.
    for _ in 0..4 {
        assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
    }
    let connects = r#"tether_upstream_connects_total{backend="app1"}"#;
    let idle = r#"tether_upstream_idle_connections{backend="app1"}"#;
    assert_eq!(metric(adm, connects).await, 1.0);
    assert_eq!(metric(adm, idle).await, 1.0);
}

#[tokio::test]
async fn pooled_upstream_connections_close_after_upstream_idle_without_traffic() {
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nupstream_idle = \"200ms\"\n";
    let t = Tether::start(&with_admin(cfg)).await;
    let adm = admin_addr(&t);
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200);
    let idle = r#"tether_upstream_idle_connections{backend="app1"}"#;
    assert_eq!(metric(adm, idle).await, 1.0);
    // No request comes again: the pool lets the connection go by itself.
    let deadline = tokio::time::Instant::now() + HANG;
    while metric(adm, idle).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle upstream connection stayed pooled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of the admin listener's `/metrics`.
async fn metric(adm: SocketAddr, key: &str) -> f64 {
    let (_, text) = admin(adm, "GET", "/metrics", None).await;
    parse_prometheus(&text)
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&with_admin(config("", &[&a]))).await;
    let adm = admin_addr(&t);
    let before = admin(adm, "GET", "/metrics", None).await.1;
    let mut s = Session::new(t.addr());
    for _ in 0..5 {
        s.get("/").await;
    }
    plain_get(t.addr(), "/status/503", &[]).await;
    let (st, text) = admin(adm, "GET", "/metrics", None).await;
    assert_eq!(st, 200);
    let samples = parse_prometheus(&text);
    let get = |k: &str| {
        samples
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("no sample {k} in\n{text}"))
    };
    assert_eq!(
        get(r#"tether_requests_total{backend="app1",class="2xx"}"#),
        5.0
    );
    assert_eq!(
        get(r#"tether_requests_total{backend="app1",class="5xx"}"#),
        1.0
    );
    assert_eq!(get(r#"tether_session_events_total{state="new"}"#), 2.0);
    assert_eq!(
        get(r#"tether_session_events_total{state="continued"}"#),
        4.0
    );
    assert_eq!(get(r#"tether_backend_sessions{backend="app1"}"#), 1.0);
    assert_eq!(
        get(r#"tether_backend_state{backend="app1",state="up"}"#),
        1.0
    );
    assert_eq!(
        get(r#"tether_upstream_response_seconds_count{backend="app1"}"#),
        6.0
    );
    assert!(get("tether_open_connections") >= 0.0);
    assert!(!before.contains(r#"class="2xx"} 5"#));
}

/// Parses Prometheus text format: every sample line is `name{labels} value`,
/// and every family has `# TYPE` before its samples.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            typed.insert(it.next().unwrap().to_string());
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "duplicate series {series}"
        );
    }
    out
}

#[tokio::test]
async fn the_status_page_names_every_backend_with_state_and_sessions() {
    let (a, b) = (Backend::start("app1").await, Backend::start("app2").await);
    let t = Tether::start(&with_admin(config("", &[&a, &b]))).await;
    let adm = admin_addr(&t);
    admin(adm, "POST", "/api/backends/app2/drain", None).await;
    let (st, html) = admin(adm, "GET", "/", None).await;
    assert_eq!(st, 200);
    assert!(html.contains("app1") && html.contains("app2"));
    assert!(html.contains("draining") && html.contains("up"));
    assert!(html.contains("http-equiv=\"refresh\""));
}

#[tokio::test]
async fn reload_adding_a_backend_moves_no_pin_and_a_broken_file_keeps_serving() {
    let (a, b, c) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let d = Backend::start("app4").await;
    let dir = std::env::temp_dir().join(format!("tether-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(&path, config("", &[&a, &b, &c])).unwrap();
    let cfg = tether::config::load(&path).unwrap();
    let running = tether::server::start(cfg, tether::clock::Clock::system())
        .await
        .unwrap();
    let addr = running.addrs()[0];
    let mut sessions = vec![];
    for _ in 0..200 {
        let mut s = Session::new(addr);
        let home = s.get("/").await.backend();
        sessions.push((s, home));
    }
    std::fs::write(&path, config("", &[&a, &b, &c, &d])).unwrap();
    running.reload().expect("valid file reloads");
    let mut moved = 0;
    for (s, home) in &mut sessions {
        if s.get("/").await.backend() != *home {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "pins moved when a backend was added");
    assert!(running.shared().snapshot.load().backends.len() == 4);

    std::fs::write(&path, "[[listener]]\nbind = nonsense\n").unwrap();
    let err = running.reload().expect_err("a broken file is refused");
    assert!(err.to_string().contains("tether.toml:2:"), "{err}");
    assert_eq!(
        running.shared().snapshot.load().backends.len(),
        4,
        "old config stays"
    );
    for (s, home) in sessions.iter_mut().take(20) {
        assert_eq!(s.get("/").await.backend(), *home);
    }
    running.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_signal() {
    let a = Backend::start("app1").await;
    let dir = std::env::temp_dir().join(format!("tether-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("certs/localhost.crt"), dir.join("tls.crt")).unwrap();
    std::fs::copy(repo().join("certs/localhost.key"), dir.join("tls.key")).unwrap();
    let cfg = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = true\n[tls]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\n{1}",
        dir.display(),
        config("", &[&a]).replacen("[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n", "", 1)
    );
    let t = Tether::start(&cfg).await;
    let served = |addr| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector_any()
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let original = served(t.addr()).await;
    // A renewed certificate: a fresh self-signed pair made for this test.
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.join("new.key"))
        .arg("-out")
        .arg(dir.join("new.crt"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::rename(dir.join("new.key"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("new.crt"), dir.join("tls.crt")).unwrap();
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if served(t.addr()).await != original {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS client that accepts any certificate (to observe which one is served).
fn tls_connector_any() -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn shutdown_closes_websockets_at_the_end_of_grace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("app1").await;
    let cfg = config("", &[&a]) + "\n[timeouts]\nshutdown_grace = \"300ms\"\n";
    let t = Tether::start(&cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(t.stop());
    // The socket stays usable during the grace period...
    tcp.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(HANG, tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"still here");
    // ...and is closed when it ends.
    let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed at the end of grace");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(HANG, stopping).await.unwrap().unwrap();
}

/// A shutdown that begins while a keep-alive request is with the backend:
/// the answer still comes, says `Connection: close`, and the connection
/// ends after it.
#[tokio::test]
async fn shutdown_during_a_request_answers_it_with_connection_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    let mut tcp = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the request reached the backend", || a.hits() == 1).await;
    let stopping = tokio::spawn(t.stop());
    let mut got = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.starts_with("http/1.1 200"), "{got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    tokio::time::timeout(HANG, stopping).await.unwrap().unwrap();
}
